import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  createWriteStream,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, Readable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { gzipSync } from "node:zlib";
import { InterruptedError, SourceError, ToolError, UsageError } from "../../src/errors.js";
import type { ProgressEvent } from "../../src/progress.js";
import { RootfsTarballSource, type RootfsTarballOptions } from "../../src/sources/rootfs-tarball.js";
import { decompress, detectCompression } from "../../src/tar/decompress.js";

const signal = new AbortController().signal;

let work: string;
let tree: string;
let plainTar: string;
let server: Server;
let baseUrl: string;

function run(command: string, args: string[], cwd?: string): void {
  execFileSync(command, args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

/** `command < input > output`. */
function filter(command: string, args: string[], input: string, output: string): void {
  writeFileSync(output, execFileSync(command, args, { input: readFileSync(input), maxBuffer: 1 << 30 }));
}

function sha256(file: string): string {
  return createHash("sha256").update(readFileSync(file)).digest("hex");
}

/** Every entry as one line holding every field and a digest of the content. */
async function summarize(options: RootfsTarballOptions): Promise<string[]> {
  const source = await RootfsTarballSource.create(options);
  const lines: string[] = [];
  for await (const entry of source.entries(signal)) {
    let content = "";
    if (entry.content?.kind === "stream") {
      const hash = createHash("sha256");
      for await (const chunk of entry.content.chunks) hash.update(chunk);
      content = hash.digest("hex").slice(0, 16);
    }
    const xattrs = [...(entry.xattrs ?? new Map<string, Buffer>())].map(
      ([k, v]) => `${k}=${v.toString("hex")}`,
    );
    lines.push(
      [
        entry.path.toString("latin1"),
        entry.type,
        entry.mode.toString(8),
        entry.uid,
        entry.gid,
        entry.mtime,
        entry.size,
        entry.linkname?.toString("latin1") ?? "",
        entry.devmajor ?? "",
        entry.devminor ?? "",
        xattrs.join(","),
        content,
      ].join(" "),
    );
  }
  return lines;
}

function assertSourceError(message: RegExp): (error: unknown) => boolean {
  return (error: unknown) => {
    assert.ok(error instanceof SourceError, String(error));
    assert.match(error.message, message);
    assert.ok(error.hint);
    return true;
  };
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), "mkbase-rootfs-tarball-"));
  tree = join(work, "tree");
  mkdirSync(join(tree, "etc"), { recursive: true });
  mkdirSync(join(tree, "usr/bin"), { recursive: true });
  writeFileSync(join(tree, "etc/hostname"), "box\n");
  writeFileSync(join(tree, "usr/bin/tool"), randomBytes(1024 * 1024 + 17), { mode: 0o755 });
  run("setcap", ["cap_net_raw+ep", join(tree, "usr/bin/tool")]);
  linkSync(join(tree, "usr/bin/tool"), join(tree, "usr/bin/tool2"));
  symlinkSync("usr/bin", join(tree, "bin"));
  run("mknod", [join(tree, "etc/null"), "c", "1", "3"]);
  plainTar = join(work, "rootfs.tar");
  run("tar", ["--xattrs", "--format=posix", "-C", tree, "-cf", plainTar, "."]);

  server = createServer((request, response) => {
    const name = request.url?.slice(1) ?? "";
    if (name === "loop") {
      response.writeHead(302, { location: "/loop" }).end();
      return;
    }
    if (name === "cut.tar.gz") {
      // Promise more than is sent, then drop the connection.
      const data = readFileSync(join(work, "rootfs.tar.gz"));
      response.writeHead(200, { "content-length": String(data.length) });
      response.write(data.subarray(0, data.length >> 1), () => response.destroy());
      return;
    }
    let data: Buffer;
    try {
      data = readFileSync(join(work, name));
    } catch {
      response.writeHead(404).end("not found");
      return;
    }
    response.writeHead(200, { "content-length": String(data.length) }).end(data);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  filter("gzip", ["-c"], plainTar, join(work, "rootfs.tar.gz"));
  const data = readFileSync(plainTar);
  const half = join(work, "half");
  writeFileSync(`${half}.1`, data.subarray(0, data.length >> 1));
  writeFileSync(`${half}.2`, data.subarray(data.length >> 1));
  filter("gzip", ["-c"], `${half}.1`, `${half}.1.gz`);
  filter("gzip", ["-c"], `${half}.2`, `${half}.2.gz`);
  writeFileSync(
    join(work, "multi.tar.gz"),
    Buffer.concat([readFileSync(`${half}.1.gz`), readFileSync(`${half}.2.gz`)]),
  );
  filter("pigz", ["-c"], plainTar, join(work, "pigz.tar.gz"));
  filter("bzip2", ["-c"], plainTar, join(work, "rootfs.tar.bz2"));
  filter("xz", ["-c", "-T1"], plainTar, join(work, "rootfs.tar.xz"));
  filter("zstd", ["-c", "-q"], plainTar, join(work, "rootfs.tar.zst"));
  // Read from a pipe, zstd --long=31 records a window of 2 GiB: plain `zstd -d` refuses anything over 128 MiB.
  filter("zstd", ["-c", "-q", "--long=31"], plainTar, join(work, "long.tar.zst"));
  // pzstd puts a skippable frame (magic 0x184D2A50, a length, that many bytes) before each frame.
  const skippable = Buffer.from([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
  writeFileSync(
    join(work, "skippable.tar.zst"),
    Buffer.concat([skippable, readFileSync(join(work, "rootfs.tar.zst")), skippable]),
  );
});

after(async () => {
  await new Promise((resolve) => server.close(resolve));
  rmSync(work, { recursive: true, force: true });
});

describe("compression", () => {
  test("gzip, multi-member gzip, pigz, bzip2, xz, zstd (with skippable frames, with a 2 GiB window) and plain give identical entries", async () => {
    const expected = await summarize({ input: plainTar });
    assert.ok(expected.some((line) => /^usr\/bin\/tool2? file 755 .*security\.capability=01/.test(line)));
    assert.ok(expected.some((line) => /^usr\/bin\/tool2? hardlink /.test(line)));
    assert.ok(expected.some((line) => line.startsWith("etc/null char ")));

    for (const name of [
      "rootfs.tar.gz",
      "multi.tar.gz",
      "pigz.tar.gz",
      "rootfs.tar.bz2",
      "rootfs.tar.xz",
      "rootfs.tar.zst",
      "skippable.tar.zst",
      "long.tar.zst",
    ]) {
      assert.deepEqual(await summarize({ input: join(work, name) }), expected, name);
    }
  });

  test("detectCompression reads magic bytes, not names", () => {
    const tarHead = readFileSync(plainTar).subarray(0, 512);
    assert.equal(detectCompression(tarHead), "none");
    assert.equal(detectCompression(Buffer.alloc(1024)), "none", "an empty archive is zero blocks");
    assert.equal(detectCompression(readFileSync(join(work, "rootfs.tar.gz"))), "gzip");
    assert.equal(detectCompression(Buffer.from("BZh91AY&SY")), "bzip2");
    assert.equal(detectCompression(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0x00])), "xz");
    assert.equal(detectCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00])), "zstd");
    assert.throws(() => detectCompression(Buffer.alloc(600, 0x41)), assertSourceError(/^not a tar archive/));
    assert.equal(detectCompression(Buffer.from([0x5e, 0x2a, 0x4d, 0x18, 0, 0, 0, 0])), "zstd");
    assert.throws(
      () => detectCompression(Buffer.from([0x04, 0x22, 0x4d, 0x18, 1, 2])),
      assertSourceError(/lz4/),
    );
  });

  test("7z, cpio, ar and SquashFS inputs are named, also inside gzip", async () => {
    const formats: [string, Buffer][] = [
      ["a 7z archive", Buffer.from([0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c, 0, 4])],
      ["a cpio archive", Buffer.from("07070100000001000041ed", "latin1")],
      ["a cpio archive", Buffer.from("070707000001000002", "latin1")],
      ["a cpio archive", Buffer.from([0xc7, 0x71, 0, 0xfe, 1, 0])],
      ["an ar archive (a Debian package?)", Buffer.from("!<arch>\ndebian-binary   ", "latin1")],
      ["a SquashFS image", Buffer.from("hsqs\x05\x00\x00\x00", "latin1")],
    ];
    for (const [name, head] of formats) {
      const data = Buffer.concat([head, Buffer.alloc(2048, 0x31)]);
      const expected = { name: "SourceError", message: `not a tar archive: it is ${name}`, hint: /\S/ };
      assert.throws(() => detectCompression(data), expected);
      const file = join(work, "other.gz");
      writeFileSync(file, gzipSync(data));
      await assert.rejects(summarize({ input: file }), expected, name);
    }
  });

  test("truncated and corrupt compressed archives are SourceErrors, never shorter archives", async () => {
    const cases: [string, Buffer][] = [];
    for (const name of ["rootfs.tar.gz", "rootfs.tar.bz2", "rootfs.tar.xz", "rootfs.tar.zst"]) {
      const data = readFileSync(join(work, name));
      cases.push([`${name} cut in half`, data.subarray(0, data.length >> 1)]);
      cases.push([`${name} without its last 4 bytes`, data.subarray(0, data.length - 4)]);
      const flipped = Buffer.from(data);
      flipped.writeUInt8((flipped.readUInt8(data.length >> 1) ^ 0xff) & 0xff, data.length >> 1);
      cases.push([`${name} with a flipped byte`, flipped]);
    }
    for (const [label, data] of cases) {
      const file = join(work, "broken");
      writeFileSync(file, data);
      await assert.rejects(summarize({ input: file }), (error: unknown) => {
        assert.ok(error instanceof SourceError, `${label}: ${String(error)}`);
        // A decompressor emits a damaged block before it checks it, so the tar reader may see the
        // damage first; either way the read fails.
        if (!label.includes("flipped")) assert.match(error.message, /corrupt|truncated/, label);
        return true;
      });
    }
  });

  test("a truncated archive is reported with the decompressor's reason in one line", async () => {
    const reasons: [string, string][] = [
      ["rootfs.tar.xz", "xz: Unexpected end of input"],
      ["rootfs.tar.bz2", "bzip2: Compressed file ends unexpectedly"],
      ["rootfs.tar.zst", "zstd: Read error (39) : premature end"],
    ];
    for (const [name, reason] of reasons) {
      const data = readFileSync(join(work, name));
      const file = join(work, "cut");
      writeFileSync(file, data.subarray(0, data.length >> 1));
      await assert.rejects(summarize({ input: file }), (error: unknown) => {
        assert.ok(error instanceof SourceError, `${name}: ${String(error)}`);
        assert.equal(error.message, `the archive is corrupt or truncated (${reason})`, name);
        return true;
      });
    }
  });

  test("gzip of something that is not a tar archive", async () => {
    const file = join(work, "text.gz");
    writeFileSync(join(work, "text"), "hello, this is not an archive\n".repeat(100));
    filter("gzip", ["-c"], join(work, "text"), file);
    await assert.rejects(summarize({ input: file }), assertSourceError(/^not a tar archive/));
    await assert.rejects(summarize({ input: join(work, "text") }), assertSourceError(/^not a tar archive/));
  });

  test("an archive compressed twice, and an HTML page, are named as such", async () => {
    const twice = join(work, "rootfs.tar.gz.xz");
    filter("xz", ["-c"], join(work, "rootfs.tar.gz"), twice);
    await assert.rejects(summarize({ input: twice }), (error: unknown) => {
      assert.ok(error instanceof SourceError, String(error));
      assert.equal(error.message, "the archive is compressed twice: gzip inside xz");
      assert.match(error.hint ?? "", /xz -dc FILE/);
      return true;
    });
    const page = join(work, "page.html");
    writeFileSync(
      page,
      `\n<!DOCTYPE html>\n<html><head><title>Sign in</title></head>${" ".repeat(600)}</html>\n`,
    );
    await assert.rejects(
      summarize({ input: page }),
      assertSourceError(/^not a tar archive: it is an HTML page$/),
    );
  });

  test("a missing decompressor is a ToolError naming the Debian package", async () => {
    const savedPath = process.env.PATH;
    const emptyBin = join(work, "empty-bin");
    mkdirSync(emptyBin, { recursive: true });
    process.env.PATH = emptyBin;
    try {
      await assert.rejects(summarize({ input: join(work, "rootfs.tar.xz") }), (error: unknown) => {
        assert.ok(error instanceof ToolError, String(error));
        assert.match(error.hint ?? "", /xz-utils/);
        return true;
      });
    } finally {
      process.env.PATH = savedPath;
    }
  });

  test("decompress stops its child when the consumer goes away, and honours the signal", async () => {
    const data = readFileSync(join(work, "rootfs.tar.zst"));
    const children = (): string =>
      execFileSync("ps", ["-o", "comm=", "--ppid", String(process.pid)], { encoding: "utf8" });
    for await (const chunk of decompress(Readable.from([data]), signal)) {
      assert.ok(chunk.length > 0);
      assert.match(children(), /zstd/);
      break;
    }
    for (let i = 0; i < 50 && /zstd/.test(children()); i++)
      await new Promise((resolve) => setTimeout(resolve, 20));
    assert.doesNotMatch(children(), /zstd/);
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(async () => {
      for await (const chunk of decompress(Readable.from([data]), controller.signal)) assert.ok(chunk);
    }, InterruptedError);
  });
});

describe("inputs and validation", () => {
  test("stdin, with and without --sha256", async () => {
    const expected = await summarize({ input: plainTar });
    const gz = join(work, "rootfs.tar.gz");
    assert.deepEqual(await summarize({ input: "-", stdin: Readable.from([readFileSync(gz)]) }), expected);
    assert.deepEqual(
      await summarize({
        input: "-",
        stdin: Readable.from([readFileSync(gz)]),
        sha256: `sha256:${sha256(gz).toUpperCase()}`,
      }),
      expected,
    );
    await assert.rejects(
      summarize({ input: "-", stdin: Readable.from([readFileSync(gz)]), sha256: "0".repeat(64) }),
      assertSourceError(/SHA-256 mismatch/),
    );
    const terminal = Object.assign(Readable.from([]), { isTTY: true });
    await assert.rejects(RootfsTarballSource.create({ input: "-", stdin: terminal }), UsageError);
  });

  test(
    "an interrupt ends a read from stdin or a FIFO whose writer has stalled",
    { timeout: 10_000 },
    async () => {
      const fifo = join(work, "stalled.fifo");
      run("mkfifo", [fifo]);
      for (const sent of [Buffer.alloc(0), readFileSync(plainTar).subarray(0, 512 + 100)]) {
        // Written and never ended: a producer that hangs mid-archive (ssh host tar -c … | mkbase tar -, or
        // mkbase tar <(ssh host tar -c …)).
        const stdin = new PassThrough();
        const writer = createWriteStream(fifo);
        for (const [input, stream] of [
          ["-", stdin],
          [fifo, writer],
        ] as const) {
          stream.write(sent);
          const controller = new AbortController();
          const source = await RootfsTarballSource.create({ input, stdin });
          const reading = (async () => {
            for await (const entry of source.entries(controller.signal)) {
              if (entry.content?.kind === "stream")
                for await (const chunk of entry.content.chunks) assert.ok(chunk);
            }
          })();
          setTimeout(() => controller.abort(new Error("SIGINT")), 50);
          await assert.rejects(reading, InterruptedError, `${input} after ${sent.length} bytes`);
        }
        assert.ok(stdin.destroyed);
        writer.destroy();
      }
    },
  );

  test("a file's sha256 is checked over all its bytes, including what follows the archive's end", async () => {
    const padded = join(work, "padded.tar");
    writeFileSync(padded, Buffer.concat([readFileSync(plainTar), Buffer.alloc(20480)]));
    assert.ok((await summarize({ input: padded, sha256: sha256(padded) })).length > 0);
    await assert.rejects(
      summarize({ input: padded, sha256: sha256(plainTar) }),
      assertSourceError(/SHA-256 mismatch/),
    );
  });

  test("missing files, directories and bad flags fail before any work", async () => {
    await assert.rejects(
      RootfsTarballSource.create({ input: join(work, "nope.tar") }),
      assertSourceError(/nope\.tar does not exist/),
    );
    await assert.rejects(RootfsTarballSource.create({ input: tree }), assertSourceError(/is a directory/));
    assert.throws(() => new RootfsTarballSource({ input: plainTar, sha256: "abc" }), UsageError);
    assert.throws(
      () => new RootfsTarballSource({ input: `${baseUrl}/rootfs.tar.gz` }),
      (error: unknown) => {
        assert.ok(error instanceof UsageError);
        assert.match(error.message, /refusing to download .* without --sha256/);
        assert.match(error.hint ?? "", /--insecure/);
        return true;
      },
    );
    assert.throws(
      () => new RootfsTarballSource({ input: "ftp://example.invalid/x.tar", insecure: true }),
      UsageError,
    );
    // --insecure only lets a download go unchecked: without a URL it does nothing, and says so.
    assert.throws(() => new RootfsTarballSource({ input: plainTar, insecure: true }), {
      name: "UsageError",
      message: `--insecure applies to a URL, and ${plainTar} is not one`,
    });
    assert.throws(() => new RootfsTarballSource({ input: "-", insecure: true }), {
      name: "UsageError",
      message: "--insecure applies to a URL, and standard input is not one",
    });
    assert.equal(new RootfsTarballSource({ input: plainTar }).description, "tarball rootfs.tar");
  });

  test("unsafe archives made by GNU tar are refused, naming the entry", async () => {
    const scratch = join(work, "unsafe");
    mkdirSync(join(scratch, "dir"), { recursive: true });
    mkdirSync(join(scratch, "sub"));
    writeFileSync(join(scratch, "a"), "a");
    linkSync(join(scratch, "a"), join(scratch, "b"));
    symlinkSync("dir", join(scratch, "lnk"));
    writeFileSync(join(scratch, "dir/file"), "f");
    const cases: [string, string[], RegExp][] = [
      ["dotdot.tar", ["-P", "-C", join(scratch, "sub"), "-cf", "OUT", "../a"], /unsafe entry "\.\.\/a"/],
      ["dup.tar", ["-C", scratch, "-cf", "OUT", "dir", "dir"], /"dir" appears more than once/],
      [
        "under.tar",
        ["-C", scratch, "-cf", "OUT", "--transform=s,^dir/,lnk/,", "lnk", "dir/file"],
        /"lnk\/file" is below "lnk", which is a symbolic link/,
      ],
      [
        "hardlink.tar",
        ["-C", scratch, "-cf", "OUT", "--transform=s,^a$,moved,H", "a", "b"],
        /hard link "b" points to "a", which is not an earlier entry/,
      ],
    ];
    for (const [name, args, message] of cases) {
      const file = join(work, name);
      run(
        "tar",
        args.map((arg) => (arg === "OUT" ? file : arg)),
      );
      await assert.rejects(summarize({ input: file }), assertSourceError(message), name);
    }
  });

  test("an image archive (docker save, OCI layout) is refused; a rootfs that holds such names is not", async () => {
    const scratch = join(work, "image-archive");
    mkdirSync(join(scratch, "blobs", "sha256"), { recursive: true });
    writeFileSync(join(scratch, "blobs", "sha256", "0".repeat(64)), "layer");
    writeFileSync(join(scratch, "manifest.json"), "[]");
    writeFileSync(join(scratch, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}');
    writeFileSync(join(scratch, "index.json"), "{}");
    const image = join(work, "saved-image.tar");
    run("tar", ["-C", scratch, "-cf", image, "."]);
    await assert.rejects(
      summarize({ input: image }),
      assertSourceError(/saved-image\.tar is a container image archive .*not a root filesystem/),
    );
    const wrapped = join(work, "saved-image-dir.tar");
    run("tar", ["-C", work, "-cf", wrapped, "image-archive"]);
    await assert.rejects(
      summarize({ input: wrapped }),
      assertSourceError(/saved-image-dir\.tar is a container image archive/),
    );
    // The same names beside a root filesystem's own directories are just files.
    mkdirSync(join(scratch, "etc"));
    const rootfs = join(work, "rootfs-with-manifest.tar");
    run("tar", ["-C", scratch, "-cf", rootfs, "."]);
    assert.ok((await summarize({ input: rootfs })).some((line) => line.startsWith("manifest.json file ")));
  });

  test("a tree archived by its directory instead of its content is packed, with a warning", async () => {
    const file = join(work, "wrapped.tar");
    run("tar", ["-C", work, "-cf", file, "tree"]);
    const events: ProgressEvent[] = [];
    const lines = await summarize({ input: file, onProgress: (event) => events.push(event) });
    assert.ok(lines.some((line) => line.startsWith("tree/etc/hostname file ")));
    const warnings = events.flatMap((event) => (event.kind === "warning" ? [event.message] : []));
    assert.equal(warnings.length, 1, warnings.join("\n"));
    assert.match(warnings[0] ?? "", /below "tree\/", which holds bin, etc, usr: .*tar -C tree -c \./);

    events.length = 0;
    await summarize({ input: plainTar, onProgress: (event) => events.push(event) });
    assert.deepEqual(
      events.filter((event) => event.kind === "warning"),
      [],
    );
  });

  test("absolute paths are made relative with one warning", async () => {
    const file = join(work, "absolute.tar");
    run("tar", ["-P", "-cf", file, join(tree, "etc/hostname"), join(tree, "usr/bin")]);
    const events: ProgressEvent[] = [];
    const lines = await summarize({ input: file, onProgress: (event) => events.push(event) });
    const relativeTree = tree.replace(/^\/+/, "");
    assert.ok(
      lines.some((line) => line.startsWith(`${relativeTree}/etc/hostname file `)),
      lines.join("\n"),
    );
    assert.ok(lines.every((line) => !line.startsWith("/")));
    assert.equal(events.filter((event) => event.kind === "warning").length, 1);
  });
});

describe("downloads", () => {
  test("the right sha256 is accepted", async () => {
    const url = `${baseUrl}/rootfs.tar.gz`;
    const events: ProgressEvent[] = [];
    const lines = await summarize({
      input: url,
      sha256: sha256(join(work, "rootfs.tar.gz")),
      onProgress: (e) => events.push(e),
    });
    assert.deepEqual(lines, await summarize({ input: plainTar }));
    assert.deepEqual(events, []);
    assert.equal(
      new RootfsTarballSource({ input: url, insecure: true }).description,
      "tarball rootfs.tar.gz",
    );
  });

  test("a wrong sha256 fails the entry stream before it ends", async () => {
    const source = await RootfsTarballSource.create({
      input: `${baseUrl}/rootfs.tar.gz`,
      sha256: "a".repeat(64),
    });
    const iterator = source.entries(signal);
    let yielded = 0;
    let outcome: unknown;
    while (true) {
      let result: IteratorResult<unknown>;
      try {
        result = await iterator.next();
      } catch (error) {
        outcome = error;
        break;
      }
      if (result.done) {
        outcome = "ended";
        break;
      }
      yielded++;
    }
    assert.ok(outcome instanceof SourceError, String(outcome));
    assert.match(outcome.message, /SHA-256 mismatch/);
    assert.ok(yielded > 0);
  });

  test("--insecure downloads with one warning", async () => {
    const events: ProgressEvent[] = [];
    const lines = await summarize({
      input: `${baseUrl}/rootfs.tar.gz`,
      insecure: true,
      onProgress: (e) => events.push(e),
    });
    assert.ok(lines.length > 0);
    assert.equal(events.length, 1);
    assert.equal(events[0]?.kind, "warning");
  });

  test("a redirect loop is named in the error, not only the URL", async () => {
    await assert.rejects(
      summarize({ input: `${baseUrl}/loop`, insecure: true }),
      assertSourceError(
        /^could not download http:\/\/127\.0\.0\.1:\d+\/loop: .* redirects more than 20 times$/,
      ),
    );
  });

  test("HTTP errors and cut downloads are SourceErrors", async () => {
    await assert.rejects(
      summarize({ input: `${baseUrl}/missing.tar.gz`, insecure: true }),
      assertSourceError(/HTTP 404/),
    );
    await assert.rejects(
      summarize({ input: `${baseUrl}/cut.tar.gz`, sha256: sha256(join(work, "rootfs.tar.gz")) }),
      (error: unknown) => error instanceof SourceError,
    );
  });
});
