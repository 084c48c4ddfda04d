/** The temporary directory most test files and describe blocks work in. */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";

/**
 * A directory for the tests of the enclosing describe block (or file): made before they run, removed
 * with everything in it after them. Its `path` is set once the hook has run: read it in tests and hooks.
 */
export function temporaryDirectory(prefix: string): { readonly path: string } {
  const directory = { path: "" };
  before(async () => {
    directory.path = await mkdtemp(join(tmpdir(), prefix));
  });
  after(async () => {
    await rm(directory.path, { recursive: true, force: true });
  });
  return directory;
}
