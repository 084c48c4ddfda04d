import assert from "node:assert/strict";
import { mkdir, readFile, readdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, it } from "node:test";
import { cacheFileOf, loadBundle } from "../../src/cli/launcher.js";
import { temporaryDirectory } from "../support/temporary-directory.js";

/** A CommonJS bundle like the CLI's: exports main, imports an ES module on demand. */
const bundleSource = (tag: string): string => `
"use strict";
const helper = (argv) => argv.map((arg) => arg.toUpperCase());
exports.main = async (argv) => {
  const { sep } = require("node:path");
  return helper(argv).join(sep) === "A/B" ? 0 : ${JSON.stringify(tag)}.length;
};
`;

describe("the launcher's code cache", () => {
  const scratch = temporaryDirectory("mkbase-unit-launcher-");

  it("is written after a run without one, then used, and follows the bundle", async () => {
    const bundle = join(scratch.path, "main.cjs");
    await writeFile(bundle, bundleSource("first"));
    const first = loadBundle(bundle, "scratch");
    assert.equal(first.cacheUsed, false);
    assert.equal(await first.main(["a", "b"]), 0);
    first.saveCache();
    const cacheFile = cacheFileOf(bundle, "scratch");
    const written = await stat(cacheFile);
    assert.ok(written.size > 0);

    const second = loadBundle(bundle, "scratch");
    assert.equal(second.cacheUsed, true);
    assert.equal(await second.main(["a", "b"]), 0);
    second.saveCache();
    assert.equal((await stat(cacheFile)).mtimeMs, written.mtimeMs, "a used cache is not rewritten");

    assert.equal(loadBundle(bundle, "scratch.path").cacheUsed, false, "each command has its own cache");

    // A rebuilt bundle has another size or mtime, hence another cache.
    await writeFile(bundle, bundleSource("second, longer"));
    const rebuilt = loadBundle(bundle, "scratch");
    assert.equal(rebuilt.cacheUsed, false);
    assert.equal(await rebuilt.main(["x"]), "second, longer".length);
  });

  it("runs a bundle without import(), which functions taken from a cache could not do", async () => {
    // Compiled code from a cache lost the script's dynamic-import handler: an `import()` in a run that
    // used the cache failed (a TLS engine's https module, the spinner on a terminal).
    const built = fileURLToPath(new URL("../../bundle/cli/main.cjs", import.meta.url));
    assert.doesNotMatch(await readFile(built, "utf8"), /\bimport\(/);
  });

  it("replaces a cache that V8 refuses", async () => {
    const bundle = join(scratch.path, "refused.cjs");
    await writeFile(bundle, bundleSource("refused"));
    const cacheFile = cacheFileOf(bundle, "tar");
    await writeFile(cacheFile, Buffer.alloc(4096, 0x5a));
    const refused = loadBundle(bundle, "tar");
    assert.equal(refused.cacheUsed, false);
    assert.equal(await refused.main(["a", "b"]), 0);
    refused.saveCache();
    assert.equal(loadBundle(bundle, "tar").cacheUsed, true);
  });

  it("leaves nothing behind when the cache cannot be written", async () => {
    const sub = join(scratch.path, "unwritable");
    await mkdir(sub);
    const bundle = join(sub, "main.cjs");
    await writeFile(bundle, bundleSource("unwritable"));
    // A directory where the cache file would go: the rename fails (as on a read-only install).
    await mkdir(join(cacheFileOf(bundle, "scratch.path"), "occupied"), { recursive: true });
    const loaded = loadBundle(bundle, "scratch.path");
    assert.equal(await loaded.main(["a", "b"]), 0);
    loaded.saveCache();
    assert.deepEqual(
      (await readdir(sub)).filter((name) => name.endsWith(".tmp")),
      [],
    );
    assert.ok((await stat(cacheFileOf(bundle, "scratch.path"))).isDirectory());
  });
});
