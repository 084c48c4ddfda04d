import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type { TarEntry } from "../../src/tar/entry.js";
import { encodeHeader } from "../../src/tar/header.js";
import { ChunkBuffers, packTar } from "../../src/tar/pack.js";

const work = mkdtempSync(join(tmpdir(), "mkbase-header-test-"));
after(() => rmSync(work, { recursive: true, force: true }));

async function packToBuffer(entries: TarEntry[]): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of packTar(entries, { signal: new AbortController().signal })) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** Reads an archive with Python's tarfile, a reader nobody here wrote, and returns its members. */
function readWithPython(archive: Buffer): Record<string, unknown>[] {
  const file = join(work, `a-${Math.random().toString(36).slice(2)}.tar`);
  writeFileSync(file, archive);
  const script = `
import json, sys, tarfile
out = []
with tarfile.open(sys.argv[1], format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape") as t:
    for m in t.getmembers():
        data = t.extractfile(m).read().hex() if m.isfile() else None
        out.append({"name": m.name.encode("utf-8", "surrogateescape").hex(), "type": m.type.decode(), "mode": m.mode,
            "uid": m.uid, "gid": m.gid, "size": m.size, "mtime": m.mtime,
            "linkname": m.linkname.encode("utf-8", "surrogateescape").hex(), "devmajor": m.devmajor, "devminor": m.devminor,
            "pax": {k: v.encode("utf-8", "surrogateescape").hex() for k, v in m.pax_headers.items()}, "data": data,
            "uname": m.uname, "gname": m.gname})
print(json.dumps(out))
`;
  return JSON.parse(execFileSync("python3", ["-c", script, file], { encoding: "utf8" })) as Record<
    string,
    unknown
  >[];
}

const base = { mode: 0o644, uid: 0, gid: 0, mtime: 1_700_000_000, size: 0 } as const;
const hex = (b: Buffer | string): string => Buffer.from(b).toString("hex");

describe("tar header encoding", () => {
  it("writes every entry kind so an independent reader sees the same fields", async () => {
    const capability = Buffer.from("0100000200200000000000000000000000000000", "hex"); // has NUL bytes
    const longName = Buffer.from(`dir/${"n".repeat(150)}`);
    const rawName = Buffer.from([0x66, 0xff, 0x2e, 0x62, 0x69, 0x6e]);
    const longTarget = Buffer.from(`/${"t".repeat(120)}`);
    const entries: TarEntry[] = [
      { ...base, path: Buffer.from("dir"), type: "directory", mode: 0o2775 },
      {
        ...base,
        path: Buffer.from("dir/cap"),
        type: "file",
        mode: 0o4755,
        uid: 300001,
        gid: 3_000_000,
        size: 5,
        xattrs: new Map([["security.capability", capability]]),
        content: { kind: "bytes", data: Buffer.from("hello") },
      },
      { ...base, path: longName, type: "file", size: 0 },
      { ...base, path: rawName, type: "file", size: 1, content: { kind: "bytes", data: Buffer.from("x") } },
      { ...base, path: Buffer.from("dir/hard"), type: "hardlink", linkname: Buffer.from("dir/cap") },
      { ...base, path: Buffer.from("link"), type: "symlink", mode: 0o777, linkname: longTarget },
      { ...base, path: Buffer.from("null"), type: "char", devmajor: 1, devminor: 3 },
      { ...base, path: Buffer.from("loop"), type: "block", devmajor: 7, devminor: 200 },
      { ...base, path: Buffer.from("fifo"), type: "fifo", mode: 0o1600 },
    ];
    const members = readWithPython(await packToBuffer(entries));
    assert.equal(members.length, entries.length);
    const byName = new Map(members.map((m) => [m.name as string, m]));
    assert.deepEqual(
      [...byName.keys()],
      entries.map((e) => hex(e.path)),
    );
    const cap = byName.get(hex("dir/cap"));
    assert.equal(cap?.mode, 0o4755);
    assert.equal(cap?.uid, 300001);
    assert.equal(cap?.gid, 3_000_000);
    assert.equal(cap?.data, hex("hello"));
    assert.equal(cap?.uname, "");
    assert.equal(
      (cap?.pax as Record<string, string>)["SCHILY.xattr.security.capability"],
      capability.toString("hex"),
    );
    assert.equal(byName.get(hex("dir"))?.mode, 0o2775);
    assert.equal(byName.get(hex("dir/hard"))?.type, "1");
    assert.equal(byName.get(hex("dir/hard"))?.linkname, hex("dir/cap"));
    assert.equal(byName.get(hex("link"))?.linkname, hex(longTarget));
    assert.deepEqual([byName.get(hex("null"))?.devmajor, byName.get(hex("null"))?.devminor], [1, 3]);
    assert.deepEqual([byName.get(hex("loop"))?.type, byName.get(hex("loop"))?.devminor], ["4", 200]);
    assert.equal(byName.get(hex("fifo"))?.mode, 0o1600);
    assert.equal(byName.get(hex(rawName))?.data, hex("x"));
    for (const member of members) assert.equal(member.mtime, 1_700_000_000);
  });

  it("uses PAX for sizes over 8 GiB and negative or huge mtimes", () => {
    const size = 9 * 1024 ** 3;
    const header = encodeHeader({ ...base, path: Buffer.from("big"), type: "file", size, mtime: -5 });
    const text = header.toString("latin1");
    assert.match(text, new RegExp(` size=${size}\n`));
    assert.match(text, / mtime=-5\n/);
    assert.equal(header.length % 512, 0);
  });

  it("gives identical bytes for identical entries", async () => {
    const entries: TarEntry[] = [
      {
        ...base,
        path: Buffer.from(`${"p".repeat(300)}`),
        type: "file",
        size: 3,
        content: { kind: "bytes", data: Buffer.from("abc") },
      },
    ];
    assert.deepEqual(await packToBuffer(entries), await packToBuffer(entries));
  });

  it("writes the same bytes when it reuses its buffers", async () => {
    const onDisk = join(work, "big.bin");
    writeFileSync(onDisk, Buffer.alloc(3_500_000, 7));
    const entries: TarEntry[] = [
      {
        ...base,
        path: Buffer.from("disk"),
        type: "file",
        size: 3_500_000,
        content: { kind: "path", path: Buffer.from(onDisk) },
      },
      ...Array.from({ length: 3000 }, (_, i): TarEntry => {
        const data = Buffer.from(`entry ${i} `.repeat(i % 50));
        return {
          ...base,
          path: Buffer.from(`f${i}`),
          type: "file",
          size: data.length,
          content: { kind: "bytes", data },
        };
      }),
    ];
    const copied: Buffer[] = [];
    const backing = new Set<ArrayBufferLike>();
    const buffers = new ChunkBuffers();
    for await (const chunk of packTar(entries, { signal: new AbortController().signal, buffers })) {
      copied.push(Buffer.from(chunk));
      backing.add(chunk.buffer);
      // No one else reads the chunk: its buffer is given back at once.
      buffers.share(chunk, []);
    }
    assert.ok(copied.length > 3, "the archive spans several chunks");
    assert.ok(backing.size < copied.length, "no buffer was filled again");
    assert.deepEqual(Buffer.concat(copied), await packToBuffer(entries));
  });

  it("closes the file it is reading and ends its source when the consumer stops early", async () => {
    const onDisk = join(work, "large-for-early-stop");
    writeFileSync(onDisk, Buffer.alloc(3_000_000, 7));
    const openFiles = (): number => readdirSync("/proc/self/fd").length;
    let sourceEnded = false;
    async function* source(): AsyncGenerator<TarEntry> {
      try {
        yield {
          ...base,
          path: Buffer.from("large"),
          type: "file",
          size: 3_000_000,
          content: { kind: "path", path: Buffer.from(onDisk) },
        };
        yield { ...base, path: Buffer.from("never"), type: "directory" };
      } finally {
        sourceEnded = true;
      }
    }
    const before = openFiles();
    let chunks = 0;
    for await (const chunk of packTar(source(), { signal: new AbortController().signal })) {
      assert.ok(chunk.length > 0);
      chunks += 1;
      // Mid-file: the first chunk is full, two more megabytes are still to be read.
      if (chunks === 1) break;
    }
    assert.equal(openFiles(), before, "no descriptor left open");
    assert.equal(sourceEnded, true, "the source was ended");
  });

  it("fails on a file that is longer or shorter than the walk saw, also where a chunk ends", async () => {
    const fileOf = (name: string, actual: number, announced: number): TarEntry => {
      const onDisk = join(work, name);
      writeFileSync(onDisk, Buffer.alloc(actual, 5));
      return {
        ...base,
        path: Buffer.from(name),
        type: "file",
        size: announced,
        content: { kind: "path", path: Buffer.from(onDisk) },
      };
    };
    // After its 512-byte header, a file of 1 MiB - 512 bytes fills the first chunk exactly: whether it
    // goes on is only seen by a read into the next one.
    const chunkFill = 1024 * 1024 - 512;
    for (const [name, actual, announced, how] of [
      ["small-grew", 10, 5, /grew while being read \(expected 5 bytes\)/],
      ["small-shrank", 10, 20, /shrank while being read \(expected 20 bytes\)/],
      ["fill-grew", chunkFill + 1, chunkFill, /grew while being read/],
      ["large-shrank", 3_000_000, 3_000_001, /shrank while being read/],
    ] as const) {
      await assert.rejects(packToBuffer([fileOf(name, actual, announced)]), how, name);
    }
    const exact = await packToBuffer([fileOf("fill-exact", chunkFill, chunkFill)]);
    assert.equal(exact.length, 512 + chunkFill + 1024, "header, content and the end-of-archive blocks");
  });

  it("is read back by GNU tar with the same names", async () => {
    const file = join(work, "gnu.tar");
    const entries: TarEntry[] = [
      { ...base, path: Buffer.from("a"), type: "directory", mode: 0o755 },
      {
        ...base,
        path: Buffer.from(`a/${"x".repeat(200)}`),
        type: "file",
        size: 2,
        content: { kind: "bytes", data: Buffer.from("hi") },
      },
    ];
    writeFileSync(file, await packToBuffer(entries));
    const listing = execFileSync("tar", ["-tf", file], { encoding: "utf8" }).trim().split("\n");
    assert.deepEqual(listing, ["a/", `a/${"x".repeat(200)}`]);
  });
});
