import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { InterruptedError, SourceError } from "../../src/errors.js";
import { sparseFileWarning, type EntryType, type TarEntry } from "../../src/tar/entry.js";
import { PathFilter, excludeEntries } from "../../src/tar/exclude.js";
import { EntryNormalizer } from "../../src/tar/normalize.js";
import { ArchiveEntryChecker, readTar } from "../../src/tar/read.js";

const signal = new AbortController().signal;

interface ReadEntry {
  entry: TarEntry;
  data: Buffer | undefined;
  /** How many chunks the content arrived in. */
  contentChunks: number;
}

async function* chunksOf(data: Buffer, size: number | (() => number)): AsyncGenerator<Buffer> {
  let offset = 0;
  while (offset < data.length) {
    const length = typeof size === "number" ? size : size();
    yield data.subarray(offset, offset + length);
    offset += length;
  }
}

async function readAll(chunks: AsyncIterable<Buffer>): Promise<ReadEntry[]> {
  const entries: ReadEntry[] = [];
  for await (const entry of readTar(chunks, signal)) {
    let data: Buffer | undefined;
    let contentChunks = 0;
    if (entry.content?.kind === "stream") {
      const parts: Buffer[] = [];
      for await (const chunk of entry.content.chunks) {
        parts.push(chunk);
        contentChunks++;
      }
      data = Buffer.concat(parts);
    }
    entries.push({ entry, data, contentChunks });
  }
  return entries;
}

function readArchive(file: string, chunkSize = 1024 * 1024): Promise<ReadEntry[]> {
  return readAll(chunksOf(readFileSync(file), chunkSize));
}

function byPath(entries: ReadEntry[]): Map<string, ReadEntry> {
  return new Map(entries.map((read) => [read.entry.path.toString("latin1"), read]));
}

// ---------------------------------------------------------------------------------------------------
// Hand-written archives, for the cases no tar program writes.

interface HeaderFields {
  name: string | Buffer;
  type?: string;
  size?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  linkname?: string;
  prefix?: string;
  devmajor?: number;
  devminor?: number;
}

function octal(block: Buffer, offset: number, length: number, value: number): void {
  block.write(`${value.toString(8).padStart(length - 1, "0")}\0`, offset, "latin1");
}

function header(fields: HeaderFields): Buffer {
  const block = Buffer.alloc(512);
  (typeof fields.name === "string" ? Buffer.from(fields.name) : fields.name).copy(block, 0);
  octal(block, 100, 8, fields.mode ?? 0o644);
  octal(block, 108, 8, fields.uid ?? 0);
  octal(block, 116, 8, fields.gid ?? 0);
  octal(block, 124, 12, fields.size ?? 0);
  octal(block, 136, 12, fields.mtime ?? 1_000_000);
  block.write(fields.type ?? "0", 156, "latin1");
  block.write(fields.linkname ?? "", 157, "latin1");
  block.write("ustar\0", 257, "latin1");
  block.write("00", 263, "latin1");
  octal(block, 329, 8, fields.devmajor ?? 0);
  octal(block, 337, 8, fields.devminor ?? 0);
  block.write(fields.prefix ?? "", 345, "latin1");
  return withChecksum(block);
}

function withChecksum(block: Buffer): Buffer {
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return block;
}

function padded(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

function member(fields: HeaderFields, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([header({ ...fields, size: fields.size ?? data.length }), padded(data)]);
}

function paxRecords(records: [string, string | Buffer][]): Buffer {
  return Buffer.concat(
    records.map(([key, value]) => {
      const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.from(value), Buffer.from("\n")]);
      let length = body.length + 1;
      while (String(length).length + body.length !== length) length++;
      return Buffer.concat([Buffer.from(String(length)), body]);
    }),
  );
}

function pax(type: "x" | "g", records: [string, string | Buffer][]): Buffer {
  return member({ name: "PaxHeader", type }, paxRecords(records));
}

/** An old GNU sparse member (type `S`, GNU magic) with its map in the header: up to 4 regions. */
function oldGnuSparse(name: string, realSize: number, regions: [number, number][], data: Buffer): Buffer {
  const block = header({ name, type: "S", size: data.length });
  block.write("ustar  \0", 257, "latin1");
  block.fill(0, 345, 500);
  regions.forEach(([offset, length], slot) => {
    octal(block, 386 + 24 * slot, 12, offset);
    octal(block, 398 + 24 * slot, 12, length);
  });
  octal(block, 483, 12, realSize);
  return Buffer.concat([withChecksum(block), padded(data)]);
}

const END = Buffer.alloc(1024);

function archive(...members: Buffer[]): Buffer {
  return Buffer.concat([...members, END]);
}

// ---------------------------------------------------------------------------------------------------
// A tree with every kind of entry, archived by GNU tar and bsdtar in several formats.

const CAPABILITY_HEX = "0100000200200000000000000000000000000000";
const LONG_NAME = "n".repeat(150);
const NON_UTF8_NAME = Buffer.from([0x66, 0xff, 0x2e, 0x74, 0x78, 0x74]);

let work: string;
let root: string;
let ustarRoot: string;
/** Keys are latin1 paths relative to the root. */
let expected: Map<string, ExpectedEntry>;

interface ExpectedEntry {
  type: Exclude<EntryType, "hardlink">;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size: number;
  linkname?: Buffer;
  devmajor?: number;
  devminor?: number;
  ino: bigint;
  data?: Buffer;
}

function run(command: string, args: string[], cwd?: string): string {
  return execFileSync(command, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function floorSeconds(nanoseconds: bigint): number {
  const seconds = nanoseconds / 1_000_000_000n;
  return Number(nanoseconds < 0n && seconds * 1_000_000_000n !== nanoseconds ? seconds - 1n : seconds);
}

/** What lstat says about every path under `dir`, names read as bytes. */
function describeTree(dir: Buffer, relative: Buffer | undefined, into: Map<string, ExpectedEntry>): void {
  for (const name of readdirSync(dir, { encoding: "buffer" })) {
    const full = Buffer.concat([dir, Buffer.from("/"), name]);
    const path = relative === undefined ? name : Buffer.concat([relative, Buffer.from("/"), name]);
    const stats = lstatSync(full, { bigint: true });
    const common = {
      mode: Number(stats.mode & 0o7777n),
      uid: Number(stats.uid),
      gid: Number(stats.gid),
      mtime: floorSeconds(stats.mtimeNs),
      ino: stats.ino,
    };
    const key = path.toString("latin1");
    if (stats.isDirectory()) {
      into.set(key, { ...common, type: "directory", size: 0 });
      describeTree(full, path, into);
    } else if (stats.isSymbolicLink()) {
      into.set(key, {
        ...common,
        type: "symlink",
        size: 0,
        linkname: readlinkSync(full, { encoding: "buffer" }),
      });
    } else if (stats.isFile()) {
      const data = readFileSync(full);
      into.set(key, { ...common, type: "file", size: data.length, data });
    } else if (stats.isCharacterDevice() || stats.isBlockDevice()) {
      const rdev = Number(stats.rdev);
      into.set(key, {
        ...common,
        type: stats.isCharacterDevice() ? "char" : "block",
        size: 0,
        devmajor: ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) * 0x1000),
        devminor: (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
      });
    } else if (stats.isFIFO()) {
      into.set(key, { ...common, type: "fifo", size: 0 });
    }
  }
}

function xattrHex(file: string, name: string): string {
  const output = run("getfattr", ["--absolute-names", "-e", "hex", "-n", name, file]);
  const match = new RegExp(`${name.replace(/\./g, "\\.")}=0x([0-9a-f]+)`).exec(output);
  assert.ok(match, `getfattr printed no ${name} for ${file}`);
  return match[1] ?? "";
}

/** Compares what was read with what is on disk, field by field. */
function assertMatchesTree(entries: ReadEntry[], options: { xattrs: boolean }): void {
  const read = byPath(entries);
  const paths = [...read.keys()].filter((path) => path !== ".").sort();
  assert.deepEqual(paths, [...expected.keys()].sort());
  const firstByInode = new Map<bigint, string>();
  for (const { entry, data } of entries) {
    const key = entry.path.toString("latin1");
    if (key === ".") continue;
    const want = expected.get(key);
    assert.ok(want, key);
    const label = `${key} (${entry.type})`;
    if (entry.type === "hardlink") {
      const target = entry.linkname?.toString("latin1") ?? "";
      assert.equal(firstByInode.get(want.ino), target, `${label} links to the first path of its inode`);
      assert.equal(entry.size, 0, label);
    } else {
      firstByInode.set(want.ino, key);
      assert.equal(entry.type, want.type, label);
      assert.equal(entry.size, want.size, label);
      if (want.type === "file") assert.deepEqual(data ?? Buffer.alloc(0), want.data, `${label} content`);
      assert.deepEqual(entry.linkname, want.linkname, label);
      assert.equal(entry.devmajor, want.devmajor, label);
      assert.equal(entry.devminor, want.devminor, label);
    }
    assert.equal(entry.mode, want.mode, `${label} mode`);
    assert.equal(entry.uid, want.uid, `${label} uid`);
    assert.equal(entry.gid, want.gid, `${label} gid`);
    assert.equal(entry.mtime, want.mtime, `${label} mtime`);
    if (options.xattrs && key === "bin/ping") {
      assert.equal(entry.xattrs?.get("security.capability")?.toString("hex"), CAPABILITY_HEX);
      assert.equal(CAPABILITY_HEX, xattrHex(join(root, "bin/ping"), "security.capability"));
    } else {
      assert.equal(entry.xattrs, undefined, `${label} has no xattrs`);
    }
  }
}

before(() => {
  work = mkdtempSync(join(tmpdir(), "mkbase-tar-read-"));
  root = join(work, "root");
  mkdirSync(join(root, "bin"), { recursive: true });
  mkdirSync(join(root, "home/user"), { recursive: true });
  mkdirSync(join(root, "dev"));
  mkdirSync(join(root, "links"));
  writeFileSync(join(root, "bin/ping"), "ping\n");
  run("setcap", ["cap_net_raw+ep", join(root, "bin/ping")]);
  writeFileSync(join(root, "bin/su"), "su\n", { mode: 0o4755 });
  run("chmod", ["4755", join(root, "bin/su")]);
  writeFileSync(join(root, "home/user/owned"), "mine\n");
  chownSync(join(root, "home/user/owned"), 300001, 300002);
  chownSync(join(root, "home/user"), 300001, 300002);
  writeFileSync(join(root, LONG_NAME), "long\n");
  writeFileSync(Buffer.concat([Buffer.from(`${root}/`), NON_UTF8_NAME]), "x");
  writeFileSync(join(root, "links/a"), "linked\n");
  linkSync(join(root, "links/a"), join(root, "links/b"));
  run("mkfifo", [join(root, "dev/fifo")]);
  run("mknod", [join(root, "dev/null"), "c", "1", "3"]);
  run("mknod", [join(root, "dev/loop9"), "b", "7", "9"]);
  symlinkSync("/etc/target", join(root, "sym"));
  writeFileSync(join(root, "big"), randomBytes(3 * 1024 * 1024 + 123));
  writeFileSync(join(root, "empty"), "");
  mkdirSync(join(root, "tmp"), { mode: 0o1777 });
  run("chmod", ["1777", join(root, "tmp")]);
  writeFileSync(join(root, "fraction"), "f");
  utimesSync(join(root, "fraction"), 1_700_000_000.75, 1_700_000_000.75);
  writeFileSync(join(root, "old"), "o");
  utimesSync(join(root, "old"), -1000, -1000);
  // Directory mtimes last, after their contents were written.
  for (const dir of ["bin", "home/user", "home", "dev", "links", "tmp", "."]) {
    utimesSync(join(root, dir), 1_600_000_000, 1_600_000_000);
  }
  expected = new Map();
  describeTree(Buffer.from(root), undefined, expected);

  // ustar cannot hold a 150-byte name, devices are fine; a path of 151 bytes needs the prefix field.
  ustarRoot = join(work, "ustar");
  mkdirSync(join(ustarRoot, "d".repeat(60)), { recursive: true });
  writeFileSync(join(ustarRoot, "d".repeat(60), "f".repeat(90)), "prefixed\n");
  // bsdtar's ustar writer skips owners above 262143 (six octal digits).
  chownSync(join(ustarRoot, "d".repeat(60), "f".repeat(90)), 200001, 200002);
});

after(() => {
  rmSync(work, { recursive: true, force: true });
});

describe("readTar on archives written by GNU tar and bsdtar", () => {
  const formats: [string, string, string[]][] = [
    ["GNU tar, default format with --xattrs", "tar", ["--xattrs"]],
    ["GNU tar, posix format", "tar", ["--xattrs", "--format=posix"]],
    ["bsdtar, pax format", "bsdtar", ["--xattrs", "--format=pax"]],
    ["bsdtar, default format", "bsdtar", ["--xattrs"]],
  ];
  for (const [label, program, flags] of formats) {
    test(`${label}: every field matches the tree`, async () => {
      const file = join(work, `${label.replace(/\W+/g, "-")}.tar`);
      run(program, [...flags, "-C", root, "-cf", file, "."]);
      const entries = await readArchive(file);
      assertMatchesTree(entries, { xattrs: true });
      // Contents are handed on as slices of the input chunks, not as 512-byte copies.
      const big = entries.find((read) => read.entry.path.toString() === "big");
      assert.ok(big !== undefined && big.contentChunks <= 5, `big arrived in ${big?.contentChunks} chunks`);
    });
  }

  test("GNU tar without --xattrs: long names through GNU L records, no xattrs", async () => {
    const file = join(work, "gnu-plain.tar");
    run("tar", ["--format=gnu", "-C", root, "-cf", file, "."]);
    assert.match(readFileSync(file).toString("latin1"), /@LongLink/);
    assertMatchesTree(await readArchive(file), { xattrs: false });
  });

  test("the same archive read in chunks of odd sizes gives the same entries", async () => {
    const file = join(work, "odd-chunks.tar");
    run("tar", ["--xattrs", "--format=posix", "-C", root, "-cf", file, "."]);
    const sizes = [1, 7, 511, 512, 513, 4099];
    let next = 0;
    const entries = await readAll(chunksOf(readFileSync(file), () => sizes[next++ % sizes.length] ?? 1));
    assertMatchesTree(entries, { xattrs: true });
  });

  test("ustar prefix field", async () => {
    for (const program of ["tar", "bsdtar"]) {
      const file = join(work, `${program}-ustar.tar`);
      run(program, ["--format=ustar", "-C", ustarRoot, "-cf", file, "."]);
      const entries = byPath(await readArchive(file));
      const read = entries.get(`${"d".repeat(60)}/${"f".repeat(90)}`);
      assert.ok(read, `${program}: ${[...entries.keys()].join(", ")}`);
      assert.equal(read.data?.toString(), "prefixed\n");
      assert.equal(read.entry.uid, 200001);
      assert.equal(read.entry.gid, 200002);
      assert.equal(entries.get("d".repeat(60))?.entry.type, "directory");
    }
  });

  test("v7 archives (no magic field)", async () => {
    const file = join(work, "v7.tar");
    run("tar", ["--format=v7", "-C", join(ustarRoot, "d".repeat(60)), "-cf", file, "."]);
    const entries = byPath(await readArchive(file));
    assert.deepEqual([...entries.keys()], [".", "f".repeat(90)]);
    assert.equal(entries.get(".")?.entry.type, "directory");
    assert.equal(entries.get("f".repeat(90))?.data?.toString(), "prefixed\n");
    assert.equal(entries.get("f".repeat(90))?.entry.uid, 200001);
  });

  test("GNU incremental dumps (tar -g): directories with their lists skipped, and a warning for what a later level leaves out", async () => {
    for (const format of ["gnu", "posix"]) {
      const dir = join(work, `incremental-${format}`);
      mkdirSync(join(dir, "a"), { recursive: true });
      writeFileSync(join(dir, "a/one"), "1");
      writeFileSync(join(dir, "a/two"), "2");
      const snapshot = join(work, `incremental-${format}.snar`);
      const read = async (level: number): Promise<{ entries: string[]; warnings: string[] }> => {
        const file = join(work, `incremental-${format}-${level}.tar`);
        run("tar", [`--format=${format}`, `--listed-incremental=${snapshot}`, "-C", dir, "-cf", file, "."]);
        const warnings: string[] = [];
        const entries: string[] = [];
        for await (const entry of readTar(chunksOf(readFileSync(file), 700), signal, (w) =>
          warnings.push(w),
        )) {
          let data = "";
          if (entry.content?.kind === "stream")
            for await (const chunk of entry.content.chunks) data += chunk.toString();
          entries.push(`${entry.path.toString()} ${entry.type} ${data}`);
        }
        return { entries, warnings };
      };
      // Level 0 holds the whole tree: GNU tar marks its directories 'D' (GNU format) or gives them a
      // GNU.dumpdir record (POSIX format).
      const full = await read(0);
      assert.deepEqual(
        full.entries,
        [". directory ", "a directory ", "a/one file 1", "a/two file 2"],
        format,
      );
      assert.deepEqual(full.warnings, [], format);
      writeFileSync(join(dir, "a/three"), "3");
      const changes = await read(1);
      assert.deepEqual(changes.entries, [". directory ", "a directory ", "a/three file 3"], format);
      assert.equal(changes.warnings.length, 1, format);
      assert.match(
        changes.warnings[0] ?? "",
        /^the archive is a GNU incremental dump \(tar -g\) that leaves out 2 entries of its directories \(first: "a\/one"\)/,
        format,
      );
    }
  });

  test("GNU base-256 numbers for owners that do not fit in octal", async () => {
    const file = join(work, "base256.tar");
    run("tar", ["--format=gnu", "--owner=:5000000", "--group=:6000000", "-C", ustarRoot, "-cf", file, "."]);
    for (const { entry } of await readArchive(file)) {
      assert.equal(entry.uid, 5000000);
      assert.equal(entry.gid, 6000000);
    }
  });

  test("GNU sparse files, in each of GNU tar's formats and bsdtar's, become whole files with zeros in the holes", async () => {
    const dir = join(work, "sparse");
    mkdirSync(dir);
    // 30 regions: more than an old GNU header's 4 and its first extension block's 21. The first starts
    // the file, the others follow holes, and a hole ends it.
    const many = join(dir, "many");
    writeFileSync(many, "");
    for (let i = 0; i < 30; i++) {
      const offset = i * 65536 + (i === 0 ? 0 : 1000);
      run("dd", [
        "if=/dev/urandom",
        `of=${many}`,
        "bs=3000",
        "count=1",
        `seek=${offset}`,
        "oflag=seek_bytes",
        "conv=notrunc",
        "status=none",
      ]);
    }
    run("truncate", ["-s", String(30 * 65536 + 500000), many]);
    // A file that is one hole, and a normal file after both.
    run("truncate", ["-s", "3000000", join(dir, "hole")]);
    writeFileSync(join(dir, "plain"), "plain\n");
    const archives: [string, string[]][] = [
      ["gnu", ["tar", "--format=gnu", "-S"]],
      ["0.0", ["tar", "--format=posix", "--sparse-version=0.0", "-S"]],
      ["0.1", ["tar", "--format=posix", "--sparse-version=0.1", "-S"]],
      ["1.0", ["tar", "--format=posix", "--sparse-version=1.0", "-S"]],
      ["bsdtar", ["bsdtar", "--format=pax"]],
    ];
    for (const [label, [command, ...flags]] of archives) {
      const file = join(work, `sparse-${label}.tar`);
      run(command as string, [...flags, "-C", dir, "-cf", file, "."]);
      // The archive really stores the files sparse: far less than their 5 MB.
      assert.ok(readFileSync(file).length < 300_000, `${label}: ${readFileSync(file).length} bytes`);
      const entries = byPath(await readArchive(file, 700));
      assert.deepEqual([...entries.keys()].sort(), [".", "hole", "many", "plain"], label);
      for (const name of ["many", "hole", "plain"]) {
        const read = entries.get(name);
        const content = readFileSync(join(dir, name));
        assert.equal(read?.entry.type, "file", `${label} ${name}`);
        assert.equal(read?.entry.size, content.length, `${label} ${name}`);
        assert.ok(read?.data?.equals(content), `${label} ${name}: content differs`);
      }
    }
  });
});

describe("readTar on hand-written archives", () => {
  test("a large sparse file that is mostly holes is reported, a small or mostly full one is not", async () => {
    const gib = 1024 * 1024 * 1024;
    const sparseMember = (name: string, size: number, data: Buffer): Buffer[] => [
      pax("x", [
        ["GNU.sparse.map", `0,${data.length}`],
        ["GNU.sparse.size", String(size)],
      ]),
      member({ name }, data),
    ];
    const data = archive(
      ...sparseMember("var/log/lastlog", 3 * gib, Buffer.from("x")),
      ...sparseMember("small", 1024 * 1024, Buffer.from("x")),
    );
    const warnings: string[] = [];
    const seen: [string, number][] = [];
    // The contents are not read: 3 GiB of zeros are skipped, not produced.
    for await (const entry of readTar(chunksOf(data, 512), signal, (message) => warnings.push(message))) {
      seen.push([entry.path.toString(), entry.size]);
    }
    assert.deepEqual(seen, [
      ["var/log/lastlog", 3 * gib],
      ["small", 1024 * 1024],
    ]);
    assert.equal(warnings.length, 1, warnings.join("\n"));
    assert.match(
      warnings[0] ?? "",
      /^var\/log\/lastlog is a sparse file of 3\.00 GiB holding 1 B of data.*--exclude var\/log\/lastlog$/,
    );
    // The thresholds: from 1 GiB, with at most half of it data.
    const path = Buffer.from("f");
    assert.equal(sparseFileWarning(path, gib - 1, 0), undefined);
    assert.equal(sparseFileWarning(path, 2 * gib, gib + 1), undefined);
    assert.match(
      sparseFileWarning(path, 2 * gib, gib) ?? "",
      /^f is a sparse file of 2\.00 GiB holding 1\.00 GiB/,
    );
  });

  test("PAX records: binary and base64 xattrs (no SELinux label), global records, fractional and negative mtimes", async () => {
    const capability = Buffer.from(CAPABILITY_HEX, "hex");
    const data = archive(
      pax("g", [
        ["uid", "4242"],
        ["SCHILY.xattr.user.global", "g"],
      ]),
      member({ name: "a", uid: 1 }, Buffer.from("A")),
      pax("x", [
        ["path", Buffer.from([0x62, 0xff, 0x0a, 0x3d])],
        ["SCHILY.xattr.security.capability", capability],
        ["SCHILY.xattr.security.selinux", "system_u:object_r:bin_t:s0"],
        ["LIBARCHIVE.xattr.user.a%3Db", Buffer.from([0, 1, 2, 0xff]).toString("base64")],
        ["mtime", "-1000.25"],
        ["uid", ""],
        ["hdrcharset", "BINARY"],
        ["size", "3"],
      ]),
      member({ name: "ignored-by-pax", size: 3 }, Buffer.from("BBB")),
      pax("g", [["uid", ""]]),
      pax("x", [
        ["mtime", "1700000000.999999999"],
        ["gid", "4000000000"],
      ]),
      member({ name: "c", uid: 7 }),
    );
    const [a, b, c] = await readAll(chunksOf(data, 100));
    assert.equal(a?.entry.uid, 4242);
    assert.equal(a?.entry.xattrs?.get("user.global")?.toString(), "g");
    assert.deepEqual(b?.entry.path, Buffer.from([0x62, 0xff, 0x0a, 0x3d]));
    assert.equal(b?.entry.uid, 0, "an empty x record cancels the global uid");
    assert.equal(b?.entry.mtime, -1001);
    assert.deepEqual(b?.entry.xattrs?.get("security.capability"), capability);
    assert.deepEqual(b?.entry.xattrs?.get("user.a=b"), Buffer.from([0, 1, 2, 0xff]));
    assert.equal(b?.entry.xattrs?.has("security.selinux"), false, "the host's SELinux label is not carried");
    assert.equal(b?.data?.toString(), "BBB");
    assert.equal(c?.entry.uid, 7, "a global record removed by an empty value no longer applies");
    assert.equal(c?.entry.mtime, 1700000000);
    assert.equal(c?.entry.gid, 4000000000);
    assert.equal(c?.entry.xattrs?.get("user.global")?.toString(), "g");
  });

  test("GNU L and K records give long names and long link targets", async () => {
    const longTarget = `${"t".repeat(120)}/target`;
    const data = archive(
      member({ name: "././@LongLink", type: "L" }, Buffer.from(`./${LONG_NAME}/\0`)),
      member({ name: "truncated", type: "5", mode: 0o755 }),
      member({ name: "././@LongLink", type: "K" }, Buffer.from(`${longTarget}\0`)),
      member({ name: "link", type: "2", linkname: "short" }),
    );
    const [dir, link] = await readAll(chunksOf(data, 4096));
    assert.equal(dir?.entry.path.toString(), LONG_NAME);
    assert.equal(dir?.entry.type, "directory");
    assert.equal(link?.entry.linkname?.toString(), longTarget);
  });

  test("every type flag, devices, hardlink data skipped, old-style directories", async () => {
    const data = archive(
      member({ name: "./", type: "5", mode: 0o755 }),
      member({ name: "./file0", type: "0" }, Buffer.from("zero")),
      member({ name: "nul", type: "\0" }, Buffer.from("nul")),
      member({ name: "contiguous", type: "7" }, Buffer.from("seven")),
      member({ name: "old-dir/", type: "\0", mode: 0o750 }),
      member({ name: "hard", type: "1", linkname: "./file0" }, Buffer.from("data carried by a pax hardlink")),
      member({ name: "char", type: "3", devmajor: 1, devminor: 3 }),
      member({ name: "block", type: "4", devmajor: 259, devminor: 65537 }),
      member({ name: "dir//", type: "5", mode: 0o2775 }),
      member({ name: "fifo", type: "6" }),
      member({ name: "after", type: "0" }, Buffer.from("after")),
    );
    const read = await readAll(chunksOf(data, 333));
    const summary = read.map(({ entry, data: content }) => [
      entry.path.toString(),
      entry.type,
      entry.mode.toString(8),
      entry.size,
      entry.linkname?.toString(),
      entry.devmajor,
      entry.devminor,
      content?.toString(),
    ]);
    assert.deepEqual(summary, [
      [".", "directory", "755", 0, undefined, undefined, undefined, undefined],
      ["file0", "file", "644", 4, undefined, undefined, undefined, "zero"],
      ["nul", "file", "644", 3, undefined, undefined, undefined, "nul"],
      ["contiguous", "file", "644", 5, undefined, undefined, undefined, "seven"],
      ["old-dir", "directory", "750", 0, undefined, undefined, undefined, undefined],
      ["hard", "hardlink", "644", 0, "file0", undefined, undefined, undefined],
      ["char", "char", "644", 0, undefined, 1, 3, undefined],
      ["block", "block", "644", 0, undefined, 259, 65537, undefined],
      ["dir", "directory", "2775", 0, undefined, undefined, undefined, undefined],
      ["fifo", "fifo", "644", 0, undefined, undefined, undefined, undefined],
      ["after", "file", "644", 5, undefined, undefined, undefined, "after"],
    ]);
  });

  test("base-256 numbers, negative mtime, signed checksums", async () => {
    const block = header({ name: "n\xff\xfe", size: 2 });
    block.fill(0, 136, 148);
    block[136] = 0xff;
    block.fill(0xff, 137, 147);
    block[147] = 0x9c; // -100
    block.fill(0, 108, 116);
    block[108] = 0x80;
    block.writeUInt32BE(3_000_000_000, 112);
    // Sum the bytes as signed chars, as some historic writers did.
    block.fill(0x20, 148, 156);
    let signedSum = 0;
    for (const byte of block) signedSum += byte >= 0x80 ? byte - 0x100 : byte;
    block.write(`${signedSum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
    const [entry] = await readAll(chunksOf(Buffer.concat([block, padded(Buffer.from("ok")), END]), 512));
    assert.equal(entry?.entry.mtime, -100);
    assert.equal(entry?.entry.uid, 3_000_000_000);
    assert.equal(entry?.data?.toString(), "ok");
  });

  test("a consumer that skips contents still gets every entry; late reads fail", async () => {
    const big = randomBytes(300_000);
    const data = archive(
      member({ name: "skipped" }, big),
      member({ name: "partly" }, big),
      member({ name: "last" }, Buffer.from("end")),
    );
    const seen: string[] = [];
    let stale: AsyncIterable<Buffer> | undefined;
    for await (const entry of readTar(chunksOf(data, 65536), signal)) {
      seen.push(entry.path.toString());
      if (entry.path.toString() === "partly" && entry.content?.kind === "stream") {
        stale = entry.content.chunks;
        for await (const chunk of entry.content.chunks) {
          assert.ok(chunk.length > 0);
          break;
        }
      }
      if (entry.path.toString() === "last" && entry.content?.kind === "stream") {
        const parts: Buffer[] = [];
        for await (const chunk of entry.content.chunks) parts.push(chunk);
        assert.equal(Buffer.concat(parts).toString(), "end");
      }
    }
    assert.deepEqual(seen, ["skipped", "partly", "last"]);
    assert.ok(stale);
    await assert.rejects(async () => {
      for await (const chunk of stale ?? []) assert.ok(chunk);
    }, /only once/);
  });

  test("the input is read to its end after the end-of-archive marker, and closed on early exit", async () => {
    let reachedEnd = false;
    async function* input(data: Buffer): AsyncGenerator<Buffer> {
      yield* chunksOf(data, 512);
      reachedEnd = true;
    }
    const data = Buffer.concat([archive(member({ name: "a" }, Buffer.from("a"))), Buffer.alloc(10240)]);
    assert.equal((await readAll(input(data))).length, 1);
    assert.ok(reachedEnd);

    let closed = false;
    async function* endless(): AsyncGenerator<Buffer> {
      try {
        for (let i = 0; ; i++) yield member({ name: `f${i}` }, Buffer.from("x"));
      } finally {
        closed = true;
      }
    }
    for await (const entry of readTar(endless(), signal)) {
      if (entry.path.toString() === "f3") break;
    }
    assert.ok(closed);
  });

  test("a 10 GiB file streams through with flat memory", async () => {
    const size = 10 * 1024 ** 3;
    const block = header({ name: "huge" });
    // GNU base-256: a size that does not fit in 11 octal digits.
    block.fill(0, 124, 136);
    block[124] = 0x80;
    block.writeBigUInt64BE(BigInt(size), 128);
    withChecksum(block);
    async function* input(): AsyncGenerator<Buffer> {
      yield block;
      const chunk = Buffer.alloc(1024 * 1024, 7);
      for (let sent = 0; sent < size; sent += chunk.length) yield chunk;
      yield END;
    }
    const before = process.memoryUsage().rss;
    let bytes = 0;
    let peak = 0;
    for await (const entry of readTar(input(), signal)) {
      assert.equal(entry.size, size);
      assert.equal(entry.content?.kind, "stream");
      if (entry.content?.kind !== "stream") continue;
      for await (const chunk of entry.content.chunks) {
        bytes += chunk.length;
        if (bytes % (256 * 1024 * 1024) === 0) peak = Math.max(peak, process.memoryUsage().rss);
      }
    }
    assert.equal(bytes, size);
    assert.ok(peak - before < 64 * 1024 * 1024, `rss grew by ${peak - before} bytes`);
  });

  test("a single zero block followed by the end of input ends the archive", async () => {
    const data = Buffer.concat([member({ name: "a" }, Buffer.from("a")), Buffer.alloc(512)]);
    assert.equal((await readAll(chunksOf(data, 512))).length, 1);
    // git archive starts with a global header; an archive may hold nothing else.
    assert.equal((await readAll(chunksOf(archive(pax("g", [["comment", "0123abcd"]])), 512))).length, 0);
  });

  test("zeros and then other data are not a tar archive (an ext4 or ISO image); zeros alone are empty", async () => {
    assert.equal((await readAll(chunksOf(Buffer.alloc(10240), 700))).length, 0);
    const images = [
      Buffer.concat([Buffer.alloc(1024), Buffer.from([0xef, 0x53]), Buffer.alloc(2048)]),
      Buffer.concat([Buffer.alloc(32768), Buffer.from("\x01CD001\x01")]),
      Buffer.concat([Buffer.alloc(512), member({ name: "a" }), END]),
    ];
    for (const data of images) {
      await assert.rejects(readAll(chunksOf(data, 700)), (error: unknown) => {
        assert.ok(error instanceof SourceError, String(error));
        assert.match(error.message, /^not a tar archive: .*zero bytes/);
        assert.match(error.hint ?? "", /mount -o loop,ro/);
        return true;
      });
    }
  });

  test("a GNU volume label (tar -V) is skipped, with the extended header that describes it", async () => {
    const data = archive(
      pax("x", [["path", "label-path"]]),
      member({ name: "MYROOT", type: "V" }),
      member({ name: "a" }, Buffer.from("a")),
    );
    const entries = await readAll(chunksOf(data, 700));
    assert.deepEqual(
      entries.map((read) => [read.entry.path.toString(), read.data?.toString()]),
      [["a", "a"]],
    );
  });

  test("truncated, corrupt and unsupported archives are SourceErrors", async () => {
    const good = archive(member({ name: "a" }, randomBytes(2000)), member({ name: "b" }, Buffer.from("b")));
    const cases: [string, Buffer, RegExp][] = [
      ["cut inside content", good.subarray(0, 1000), /^truncated archive/],
      ["cut inside a header", good.subarray(0, 2560 + 100), /^truncated archive/],
      ["cut before the end marker", good.subarray(0, 3584), /^truncated archive.*end-of-archive/],
      ["cut after an extended header", pax("x", [["path", "p"]]), /^truncated archive/],
      ["empty", Buffer.alloc(0), /^not a tar archive/],
      ["not a tar at all", Buffer.alloc(2048, 0x41), /^not a tar archive/],
      [
        "zero block followed by data",
        Buffer.concat([member({ name: "a" }), Buffer.alloc(512), member({ name: "b" }), END]),
        /zero block/,
      ],
      ["unknown type", archive(member({ name: "weird", type: "X" })), /"weird" has the entry type 'X'/],
      [
        "a volume after the first of a multi-volume archive",
        archive(member({ name: "big", type: "M" })),
        /^"big" continues a file from the previous volume of a multi-volume archive \(tar -M\)$/,
      ],
      [
        "sparse region past the real size",
        archive(oldGnuSparse("holes", 10, [[8, 5]], Buffer.from("01234"))),
        /sparse map has a region out of order or past the file's 10 bytes/,
      ],
      [
        "sparse map covering less than is stored",
        archive(
          pax("x", [
            ["GNU.sparse.map", "0,2"],
            ["GNU.sparse.size", "10"],
          ]),
          member({ name: "holes" }, Buffer.from("012")),
        ),
        /sparse map covers 2 bytes, but the archive stores 3/,
      ],
      [
        "sparse map in the data past the data",
        archive(
          pax("x", [
            ["GNU.sparse.major", "1"],
            ["GNU.sparse.minor", "0"],
            ["GNU.sparse.realsize", "10"],
          ]),
          member({ name: "holes" }, Buffer.from("5\n0\n")),
        ),
        /sparse map runs past the entry's data/,
      ],
      [
        "sparse format of an unknown version",
        archive(
          pax("x", [
            ["GNU.sparse.major", "2"],
            ["GNU.sparse.minor", "0"],
          ]),
          member({ name: "holes" }),
        ),
        /"holes" .* is a GNU sparse file of format 2\.0/,
      ],
      [
        "bad PAX record",
        archive(pax("x", [["path", "p"]]).fill(0x41, 512, 514), member({ name: "a" })),
        /PAX/,
      ],
      ["bad PAX number", archive(pax("x", [["uid", "12a"]]), member({ name: "a" })), /uid "12a"/],
      [
        "uid above 32 bits",
        archive(pax("x", [["uid", String(2 ** 40 + 5)]]), member({ name: "a" })),
        /the uid 1099511627781 is out of range .*"a"/,
      ],
      [
        "negative base-256 gid",
        archive(
          (() => {
            const block = header({ name: "a" });
            block.fill(0xff, 116, 124);
            return withChecksum(block);
          })(),
        ),
        /the gid -1 is out of range .*"a"/,
      ],
    ];
    // Each extended header is under the limit of 16 MiB; together they are over it.
    const nineMiB = "v".repeat(9 * 1024 * 1024);
    cases.push([
      "extended headers adding up to more than 16 MiB",
      archive(pax("x", [["a", nineMiB]]), pax("x", [["b", nineMiB]]), member({ name: "a" })),
      /the extended header at byte 9438208 claims 9437195 bytes, after 9437195 bytes of other extended headers/,
    ]);
    cases.push([
      "global headers adding up to more than 16 MiB",
      archive(
        pax("g", [["a", nineMiB]]),
        member({ name: "a" }),
        pax("g", [["b", nineMiB]]),
        member({ name: "b" }),
      ),
      /claims 9437195 bytes, after 9437195 bytes of global extended headers/,
    ]);
    const sparseHeader = Buffer.from(oldGnuSparse("holes", 10, [[0, 0]], Buffer.alloc(0)));
    sparseHeader[482] = 1;
    const extension = Buffer.alloc(512);
    extension[504] = 1;
    cases.push([
      "an old GNU sparse map with endless extension blocks",
      Buffer.concat([
        withChecksum(sparseHeader),
        Buffer.concat(Array<Buffer>(32 * 1024 + 1).fill(extension)),
      ]),
      /the map of the sparse file at byte 0 runs past 16777216 bytes/,
    ]);
    const corrupted = Buffer.from(good);
    corrupted[2560 + 10] = 0x5a; // a byte of the second header's name
    cases.push(["checksum", corrupted, /header at byte 2560 has a wrong checksum/]);
    const badOctal = Buffer.from(good);
    badOctal.write("9", 2560 + 124, "latin1");
    withChecksum(badOctal.subarray(2560, 3072));
    cases.push(["non-octal size", badOctal, /size field .* is not an octal number/]);

    for (const [label, data, message] of cases) {
      await assert.rejects(readAll(chunksOf(data, 700)), (error: unknown) => {
        assert.ok(error instanceof SourceError, `${label}: ${String(error)}`);
        assert.match(error.message, message, label);
        assert.ok(error.hint, label);
        return true;
      });
    }
  });

  test("an aborted signal stops the reader", async () => {
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(async () => {
      for await (const entry of readTar(chunksOf(archive(member({ name: "a" })), 512), controller.signal)) {
        assert.ok(entry);
      }
    }, InterruptedError);
  });
});

describe("ArchiveEntryChecker", () => {
  function entry(path: string | Buffer, type: EntryType = "file", linkname?: string): TarEntry {
    return {
      path: typeof path === "string" ? Buffer.from(path) : path,
      type,
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtime: 0,
      size: 0,
      ...(linkname === undefined ? {} : { linkname: Buffer.from(linkname) }),
    };
  }

  function check(entries: TarEntry[], warnings: string[] = []): string[] {
    const checker = new ArchiveEntryChecker((message) => warnings.push(message));
    const out: string[] = [];
    for (const item of entries) {
      const checked = checker.check(item);
      if (checked === undefined) continue;
      out.push(
        checked.linkname === undefined
          ? checked.path.toString("latin1")
          : `${checked.path.toString("latin1")} -> ${checked.linkname.toString("latin1")}`,
      );
    }
    return out;
  }

  function assertRefused(entries: TarEntry[], message: RegExp, path: string): void {
    assert.throws(
      () => check(entries),
      (error: unknown) => {
        assert.ok(error instanceof SourceError);
        assert.match(error.message, message);
        assert.equal(error.path, path);
        assert.ok(error.hint);
        return true;
      },
    );
  }

  test("accepts a normal tree, drops the root, canonicalises paths and hardlink targets", () => {
    const warnings: string[] = [];
    const out = check(
      [
        entry(".", "directory"),
        entry("etc", "directory"),
        entry("etc//passwd"),
        entry("etc/./group"),
        entry("etc/group-", "hardlink", "./etc/group"),
        entry("sbin", "symlink", "usr/sbin"),
        entry("usr/sbin/ping", "symlink", "../../etc/passwd"),
        entry(Buffer.from([0x66, 0xff])),
      ],
      warnings,
    );
    assert.deepEqual(out, [
      "etc",
      "etc/passwd",
      "etc/group",
      "etc/group- -> etc/group",
      "sbin -> usr/sbin",
      "usr/sbin/ping -> ../../etc/passwd",
      "f\xff",
    ]);
    assert.deepEqual(warnings, []);
  });

  test("absolute paths become relative with one warning for the archive", () => {
    const warnings: string[] = [];
    const out = check([entry("/", "directory"), entry("/etc", "directory"), entry("/etc/passwd")], warnings);
    assert.deepEqual(out, ["etc", "etc/passwd"]);
    assert.deepEqual(check([entry("/a"), entry("/b", "hardlink", "/a")]), ["a", "b -> a"]);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0] ?? "", /absolute paths \(first: "\/etc"\)/);
  });

  test("refuses unsafe entries, naming them", () => {
    assertRefused([entry("../etc/passwd")], /unsafe entry "..\/etc\/passwd".*"\.\."/, "../etc/passwd");
    assertRefused([entry("a/../../b")], /\.\./, "a/../../b");
    assertRefused(
      [entry("lib", "symlink", "/usr/lib"), entry("lib/x")],
      /"lib\/x" is below "lib", which is a symbolic link/,
      "lib/x",
    );
    assertRefused(
      [entry("lib", "symlink", "/usr/lib"), entry("lib/a/b/c", "directory")],
      /below "lib", which is a symbolic link/,
      "lib/a/b/c",
    );
    assertRefused([entry("f"), entry("f/g")], /below "f", which is a file, not a directory/, "f/g");
    assertRefused(
      [entry("b", "hardlink", "a")],
      /hard link "b" points to "a", which is not an earlier entry/,
      "b",
    );
    assertRefused(
      [entry("a"), entry("b", "hardlink", "/a")],
      /hard link "b" has the unsafe target "\/a"/,
      "b",
    );
    assertRefused([entry("a"), entry("b", "hardlink", "x/../a")], /unsafe target/, "b");
    assertRefused([entry("d", "directory"), entry("b", "hardlink", "d")], /points to the directory "d"/, "b");
    assertRefused([entry("a"), entry("./a")], /"\.\/a" appears more than once/, "./a");
    assertRefused(
      [entry("etc", "directory"), entry("etc/", "directory")],
      /"etc\/" appears more than once/,
      "etc/",
    );
    assertRefused([entry(".", "file")], /root entry/, ".");
    // Linux allows 255 bytes in a name (UTF-8 bytes, not characters); the engine cannot unpack more.
    const long = `d/${"é".repeat(128)}`;
    assertRefused(
      [entry("d", "directory"), entry(long)],
      /has a name of 256 bytes, longer than the 255/,
      long,
    );
    assert.doesNotThrow(() => check([entry("d", "directory"), entry(`d/${"é".repeat(127)}x`)]));
    assertRefused(
      [entry("l", "symlink", "/a".repeat(2048))],
      /symbolic link "l" has a target of 4096 bytes, longer than the 4095/,
      "l",
    );
    assert.doesNotThrow(() => check([entry("l", "symlink", `${"/a".repeat(2047)}b`)]));
  });

  test("refuses a non-directory at a path that earlier entries lie below, naming both", () => {
    // Extracted, the file replaces the directory: "a/secret" would be missing from the image.
    assertRefused(
      [entry("a/secret"), entry("a")],
      /^"a" is a file, but the earlier entry "a\/secret" is below it in the archive$/,
      "a",
    );
    // The hard link's target would be reached through the symlink, outside the image.
    assertRefused(
      [entry("a/b"), entry("a", "symlink", "/etc"), entry("h", "hardlink", "a/b")],
      /^"a" is a symbolic link, but the earlier entry "a\/b" is below it in the archive$/,
      "a",
    );
    assertRefused(
      [entry("x"), entry("./a/b"), entry("a/", "hardlink", "x")],
      /^"a\/" is a hard link, but the earlier entry "a\/b" is below it/,
      "a/",
    );
    assertRefused(
      [entry("dev", "directory"), entry("dev/d/e/f"), entry("dev/d/e", "char")],
      /^"dev\/d\/e" is a character device, but the earlier entry "dev\/d\/e\/f" is below it/,
      "dev/d/e",
    );
    assertRefused(
      [entry("d/e/f"), entry("d/e", "directory"), entry("d", "fifo")],
      /^"d" is a FIFO, but the earlier entry "d\/e\/f" is below it/,
      "d",
    );
    assertRefused(
      [entry("/abs/f"), entry("/abs", "block")],
      /^"\/abs" is a block device, but the earlier entry "abs\/f" is below it/,
      "/abs",
    );
  });

  test("accepts directories listed after their contents (tar --no-recursion), once each", () => {
    const listedLate = [
      entry("a/b/c"),
      entry("a/b/d", "symlink", "c"),
      entry("a/b", "directory"),
      entry("a", "directory"),
      entry("a/e", "hardlink", "a/b/c"),
    ];
    assert.deepEqual(check(listedLate), ["a/b/c", "a/b/d -> c", "a/b", "a", "a/e -> a/b/c"]);
    // Once the directory has its entry, another entry at its path is a duplicate, whatever its type.
    assertRefused([...listedLate, entry("a/b")], /"a\/b" appears more than once/, "a/b");
    // An implicit directory stays one until its own entry comes, however many entries lie below it.
    assertRefused(
      [entry("a/b/c"), entry("a/b", "directory"), entry("a/x"), entry("a", "symlink", "/")],
      /^"a" is a symbolic link, but the earlier entry "a\/b\/c" is below it/,
      "a",
    );
  });

  test("passes overlay whiteouts on: the normaliser refuses them after --exclude", () => {
    assert.deepEqual(check([entry("var/.wh.cache"), entry("var/.wh..wh..opq")]), [
      "var/.wh.cache",
      "var/.wh..wh..opq",
    ]);
  });
});

describe("an archive's entries through the checker, --exclude and the normaliser", () => {
  /** What `mkbase tar` does with an archive's entries before they are packed. */
  async function build(data: Buffer, patterns: string[] = []): Promise<string[]> {
    const checker = new ArchiveEntryChecker(() => {});
    async function* checked(): AsyncGenerator<TarEntry> {
      for await (const read of readTar(chunksOf(data, 4096), signal)) {
        const entry = checker.check(read);
        if (entry !== undefined) yield entry;
      }
    }
    const normalizer = new EntryNormalizer(undefined);
    const paths: string[] = [];
    for await (const entry of normalizer.apply(excludeEntries(checked(), new PathFilter(patterns)))) {
      paths.push(entry.path.toString("latin1"));
    }
    return paths;
  }

  const withWhiteouts = archive(
    member({ name: "etc/", type: "5", mode: 0o755 }),
    member({ name: "etc/.wh.keep" }),
    member({ name: "etc/hosts" }, Buffer.from("127.0.0.1 localhost\n")),
    member({ name: "opq/", type: "5", mode: 0o755 }),
    member({ name: "opq/.wh..wh..opq" }),
  );

  test("a whiteout is refused, with the --exclude that leaves it out", async () => {
    await assert.rejects(build(withWhiteouts), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.equal(
        error.message,
        '"etc/.wh.keep" is an overlay whiteout (a ".wh." name), not a file of a root filesystem',
      );
      assert.equal(error.path, "etc/.wh.keep");
      assert.match(error.hint ?? "", /leave it out with --exclude 'etc\/\.wh\.keep'/);
      return true;
    });
    await assert.rejects(
      build(withWhiteouts, ["etc/.wh.keep"]),
      (error: unknown) => error instanceof SourceError && error.path === "opq/.wh..wh..opq",
    );
  });

  test("--exclude leaves whiteouts out, and the rest of the archive is packed", async () => {
    assert.deepEqual(await build(withWhiteouts, ["etc/.wh.keep", "opq/.wh..wh..opq"]), [
      "etc",
      "etc/hosts",
      "opq",
    ]);
    assert.deepEqual(await build(withWhiteouts, ["**/.wh.*"]), ["etc", "etc/hosts", "opq"]);
  });

  test("a file that a later entry replaces with a symlink is refused before the hard link to it", async () => {
    const replaced = archive(
      member({ name: "a/b" }, Buffer.from("b")),
      member({ name: "a", type: "2", linkname: "/etc" }),
      member({ name: "h", type: "1", linkname: "a/b" }),
    );
    await assert.rejects(
      build(replaced),
      (error: unknown) =>
        error instanceof SourceError &&
        error.path === "a" &&
        /the earlier entry "a\/b" is below it/.test(error.message),
    );
  });
});
