/** `mkdir -p` that returns where node's own recursive mkdir never does. */
import assert from "node:assert/strict";
import { stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { makeDirectories } from "../../src/make-directories.js";
import { temporaryDirectory } from "../support/temporary-directory.js";

describe("makeDirectories", () => {
  const scratch = temporaryDirectory("mkbase-unit-mkdir-");

  it("makes the missing parents and returns the first one it made, or undefined", async () => {
    const deep = join(scratch.path, "a", "b", "c");
    assert.equal(await makeDirectories(deep, 0o700), join(scratch.path, "a"));
    assert.ok((await stat(deep)).isDirectory());
    assert.equal((await stat(join(scratch.path, "a", "b"))).mode & 0o777, 0o700);
    assert.equal(await makeDirectories(deep), undefined);
  });

  it("fails below a file, and below /proc, where node's recursive mkdir never returns", async () => {
    const file = join(scratch.path, "file");
    await writeFile(file, "");
    await assert.rejects(makeDirectories(join(file, "x")), { code: "ENOTDIR" });
    await assert.rejects(makeDirectories("/proc/mkbase-no-such-dir/x"), { code: "ENOENT" });
  });
});
