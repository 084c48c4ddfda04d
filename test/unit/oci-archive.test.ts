/**
 * The tar headers of an OCI archive whose layer was compressed straight into it: each has one block of
 * room, kept before the layer's size and the build time are known, so a size or time too large for
 * ustar's octal fields must still fit in that block.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { open, truncate } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ArchiveFile } from "../../src/sinks/oci-archive.js";
import { checksumMatches } from "../../src/tar/read.js";
import { temporaryDirectory } from "../support/temporary-directory.js";

/** The blocks of `path` at `offsets`. */
async function headerBlocks(path: string, offsets: readonly number[]): Promise<Buffer[]> {
  const file = await open(path);
  try {
    return await Promise.all(
      offsets.map(async (offset) => (await file.read(Buffer.alloc(512), 0, 512, offset)).buffer),
    );
  } finally {
    await file.close();
  }
}

/** `tar -tv --full-time` of `path`, as GNU tar lists it in UTC: size, date, time and name of each entry. */
function listed(path: string): string[][] {
  return execFileSync("tar", ["--full-time", "-tvf", path], {
    encoding: "utf8",
    env: { ...process.env, TZ: "UTC" },
  })
    .trim()
    .split("\n")
    .map((line) => line.split(/\s+/).slice(2));
}

describe("an OCI archive's own headers beyond ustar's octal fields", () => {
  const scratch = temporaryDirectory("mkbase-unit-oci-archive-");

  it("gives a layer of 8 GiB or more its size in its one header block", async () => {
    const dest = join(scratch.path, "big.tar");
    const archive = new ArchiveFile(dest);
    const size = 2 ** 33 + 1;
    const digest = `sha256:${"a".repeat(64)}`;
    const target = await archive.open();
    // One byte is written; the rest of the layer becomes a hole below, so that no 8 GiB are written.
    await target.write(Buffer.from("x"));
    await target.complete(digest, size);
    await archive.finish([], 1_700_000_000, new AbortController().signal);
    // Directories, the layer's header, its bytes and padding, the end blocks.
    await truncate(dest, 3 * 512 + size + 511 + 2 * 512);
    const [header] = await headerBlocks(dest, [1024]);
    assert.ok(header !== undefined && checksumMatches(header), "the layer's header has a valid checksum");
    assert.deepEqual(listed(dest), [
      ["0", "2023-11-14", "22:13:20", "blobs/"],
      ["0", "2023-11-14", "22:13:20", "blobs/sha256/"],
      [String(size), "2023-11-14", "22:13:20", `blobs/sha256/${"a".repeat(64)}`],
    ]);
  });

  it("writes a build time after 2242 into the header blocks it kept room for", async () => {
    const dest = join(scratch.path, "late.tar");
    const archive = new ArchiveFile(dest);
    const data = Buffer.from("layer bytes");
    const digest = `sha256:${createHash("sha256").update(data).digest("hex")}`;
    const target = await archive.open();
    await target.write(data);
    await target.complete(digest, data.length);
    // 2300-01-01, past the largest time the octal field holds (2242-03-16).
    await archive.finish([], 10_413_792_000, new AbortController().signal);
    for (const header of await headerBlocks(dest, [0, 512, 1024])) assert.ok(checksumMatches(header));
    assert.deepEqual(listed(dest), [
      ["0", "2300-01-01", "00:00:00", "blobs/"],
      ["0", "2300-01-01", "00:00:00", "blobs/sha256/"],
      [String(data.length), "2300-01-01", "00:00:00", `blobs/sha256/${digest.slice(7)}`],
    ]);
    const content = execFileSync("tar", ["-xOf", dest, `blobs/sha256/${digest.slice(7)}`]);
    assert.deepEqual(content, data);
  });
});
