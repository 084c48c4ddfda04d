/**
 * Layer compression: gzip members compressed in worker threads must decompress to the input, be the same
 * bytes whatever the chunking of the input or the number of threads, and carry a fixed header (MTIME 0,
 * OS 255); zstd through the CLI must round-trip and be reproducible.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createCipheriv } from "node:crypto";
import { mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { gunzipSync } from "node:zlib";
import { createCompressor, type CompressorOptions } from "../../src/compress/compressor.js";
import {
  describeCompression,
  layerMediaType,
  makeCompression,
  parseCompressionAlgorithm,
  type Compression,
} from "../../src/compress/compression.js";
import { GZIP_OS_BYTE, type MemberRequest, type MemberResult } from "../../src/compress/gzip-member.js";
import { UsageError, errnoCode } from "../../src/errors.js";

/** Half incompressible, half text: both kinds of deflate blocks. */
function sample(size: number): Buffer {
  const cipher = createCipheriv("aes-256-ctr", Buffer.alloc(32), Buffer.alloc(16));
  const random = Buffer.concat([cipher.update(Buffer.alloc(size / 2)), cipher.final()]);
  const text = Buffer.from("mkbase layer compression test line\n".repeat(Math.ceil(size / 2 / 35))).subarray(
    0,
    size - random.length,
  );
  return Buffer.concat([random, text]);
}

async function compress(
  compression: Compression,
  input: Buffer,
  chunkSize: number,
  options: Partial<CompressorOptions> = {},
): Promise<Buffer> {
  const out: Buffer[] = [];
  const compressor = createCompressor(
    compression,
    async (chunk) => {
      out.push(chunk);
    },
    { signal: new AbortController().signal, ...options },
  );
  for (let offset = 0; offset < input.length; offset += chunkSize) {
    await compressor.write(input.subarray(offset, offset + chunkSize));
  }
  await compressor.end();
  return Buffer.concat(out);
}

/** Offsets of every gzip member header (1f 8b 08) that a member boundary produced. */
function memberHeaders(data: Buffer, count: number): Buffer[] {
  const headers: Buffer[] = [];
  let offset = 0;
  for (let i = 0; i < count; i++) {
    headers.push(data.subarray(offset, offset + 10));
    // Walk to the next member by decompressing one: gunzipSync reads all members, so find the trailer
    // by searching for the next header after the current one.
    const next = data.indexOf(Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0]), offset + 10);
    if (next < 0) break;
    offset = next;
  }
  return headers;
}

const gzip6: Compression = { algorithm: "gzip", level: 6 };

describe("parallel gzip", () => {
  const input = sample(5 * 64 * 1024 + 123);

  it("decompresses to the input across several members", async () => {
    const output = await compress(gzip6, input, 10_000, { memberSize: 64 * 1024, threads: 2 });
    assert.deepEqual(gunzipSync(output), input);
  });

  it("stays correct over many members, as the threads give their inputs back to be refilled", async () => {
    const long = sample(40 * 16 * 1024 + 5);
    const threaded = await compress(gzip6, long, 5_000, { memberSize: 16 * 1024, threads: 2 });
    const single = await compress(gzip6, long, 5_000, { memberSize: 16 * 1024, threads: 1 });
    assert.deepEqual(gunzipSync(threaded), long);
    assert.ok(threaded.equals(single), "2 threads and 1 thread differ");
  });

  it("a worker thread survives many small members (whose buffers lie in node's shared pool)", async () => {
    const worker = new Worker(new URL("../../src/compress/gzip-worker.js", import.meta.url));
    try {
      for (let id = 0; id < 50; id++) {
        const input = Buffer.from(`member ${id} `.repeat(id + 1));
        const request: MemberRequest = { id, input: new Uint8Array(input).buffer, level: 6 };
        const result = await new Promise<MemberResult>((resolve, reject) => {
          worker.once("message", resolve);
          worker.once("error", reject);
          worker.postMessage(request, [request.input]);
        });
        assert.equal(result.id, id);
        assert.deepEqual(gunzipSync(Buffer.from(result.output, 0, result.length)), input);
      }
    } finally {
      await worker.terminate();
    }
  });

  it("gives the same bytes whatever the chunking and the number of threads", async () => {
    const a = await compress(gzip6, input, 7_777, { memberSize: 64 * 1024, threads: 2 });
    const b = await compress(gzip6, input, 300_000, { memberSize: 64 * 1024, threads: 1 });
    const c = await compress(gzip6, input, 1, { memberSize: 64 * 1024, threads: 3 });
    assert.ok(a.equals(b), "2 threads and 1 thread differ");
    assert.ok(a.equals(c), "byte-sized chunks differ");
  });

  it("writes MTIME 0 and the fixed OS byte in every member header", async () => {
    const output = await compress(gzip6, input, 65_536, { memberSize: 64 * 1024, threads: 2 });
    const headers = memberHeaders(output, 6);
    assert.equal(headers.length, 6, "expected six members (five full ones and the rest)");
    for (const header of headers) {
      assert.deepEqual([...header.subarray(0, 4)], [0x1f, 0x8b, 0x08, 0x00]);
      assert.equal(header.readUInt32LE(4), 0, "MTIME must be 0");
      assert.equal(header[9], GZIP_OS_BYTE);
    }
  });

  it("depends on the level, so the level is part of the result", async () => {
    const fast = await compress({ algorithm: "gzip", level: 1 }, input, 65_536, { memberSize: 64 * 1024 });
    const best = await compress({ algorithm: "gzip", level: 9 }, input, 65_536, { memberSize: 64 * 1024 });
    assert.ok(!fast.equals(best));
    assert.deepEqual(gunzipSync(best), input);
  });

  it("makes a valid gzip file of an empty input", async () => {
    const output = await compress(gzip6, Buffer.alloc(0), 1);
    assert.equal(gunzipSync(output).length, 0);
  });

  it("rejects when the output fails, and does not hang", async () => {
    const compressor = createCompressor(
      gzip6,
      () => Promise.reject(Object.assign(new Error("no space left on device"), { code: "ENOSPC" })),
      { signal: new AbortController().signal, memberSize: 1024, threads: 2 },
    );
    await assert.rejects(async () => {
      for (let i = 0; i < 64; i++) await compressor.write(sample(1024));
      await compressor.end();
    }, /no space left/);
  });
});

describe("zstd", () => {
  const input = sample(3 * 1024 * 1024);

  it("round-trips through Debian's zstd and is reproducible", async () => {
    const zstd3: Compression = { algorithm: "zstd", level: 3 };
    const a = await compress(zstd3, input, 100_000);
    const b = await compress(zstd3, input, 1_000_000);
    assert.deepEqual([...a.subarray(0, 4)], [0x28, 0xb5, 0x2f, 0xfd]);
    assert.ok(a.equals(b), "two runs differ");
    const decoded = spawnSync("zstd", ["-dc"], { input: a, maxBuffer: 64 * 1024 * 1024 });
    assert.equal(decoded.status, 0, decoded.stderr.toString());
    assert.ok(decoded.stdout.equals(input));
  });
});

describe("zstd writing the output file itself", () => {
  const input = sample(3 * 1024 * 1024);
  const zstd3: Compression = { algorithm: "zstd", level: 3 };

  async function compressInto(path: string, mapError: (cause: unknown) => Error): Promise<Buffer[]> {
    const passed: Buffer[] = [];
    const file = await open(path, "a");
    try {
      const compressor = createCompressor(
        zstd3,
        async (chunk) => {
          passed.push(chunk);
        },
        { signal: new AbortController().signal, appendTo: { fd: file.fd, error: mapError } },
      );
      for (let offset = 0; offset < input.length; offset += 100_000) {
        await compressor.write(input.subarray(offset, offset + 100_000));
      }
      await compressor.end();
    } finally {
      await file.close();
    }
    return passed;
  }

  it("appends the same bytes as through the pipe, and passes none back", async () => {
    const dir = await mkdtemp(join(tmpdir(), "mkbase-zstd-test-"));
    try {
      const path = join(dir, "out.zst");
      await writeFile(path, "head");
      const passed = await compressInto(path, (cause) => cause as Error);
      assert.deepEqual(passed, []);
      const written = await readFile(path);
      assert.equal(written.subarray(0, 4).toString(), "head", "appended after what was there");
      assert.ok(written.subarray(4).equals(await compress(zstd3, input, 1_000_000)));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("reports a full disk as the file's own error, with the errno", async () => {
    // /dev/full fails every write with ENOSPC, as a full filesystem does.
    await assert.rejects(
      compressInto("/dev/full", (cause) => new Error(`the file's words: ${errnoCode(cause)}`)),
      /the file's words: ENOSPC/,
    );
  });
});

describe("no compression", () => {
  it("passes the bytes through", async () => {
    const input = sample(100_000);
    assert.ok((await compress({ algorithm: "none", level: 0 }, input, 333)).equals(input));
  });
});

describe("compression settings", () => {
  it("has defaults and media types", () => {
    assert.deepEqual(makeCompression("gzip", undefined, "-o"), { algorithm: "gzip", level: 6 });
    assert.deepEqual(makeCompression("zstd", "19", "-o"), { algorithm: "zstd", level: 19 });
    assert.equal(
      layerMediaType({ algorithm: "zstd", level: 3 }),
      "application/vnd.oci.image.layer.v1.tar+zstd",
    );
    assert.equal(layerMediaType({ algorithm: "none", level: 0 }), "application/vnd.oci.image.layer.v1.tar");
    assert.equal(describeCompression({ algorithm: "gzip", level: 9 }), "gzip-9");
    assert.equal(describeCompression({ algorithm: "none", level: 0 }), "uncompressed");
    assert.equal(parseCompressionAlgorithm("uncompressed", "-o"), "none");
  });

  it("refuses levels out of range and unknown algorithms", () => {
    assert.throws(() => makeCompression("gzip", "10", "-o"), UsageError);
    assert.throws(() => makeCompression("zstd", "0", "-o"), UsageError);
    assert.throws(() => makeCompression("gzip", "fast", "-o"), UsageError);
    assert.throws(() => makeCompression("none", "1", "-o"), UsageError);
    assert.throws(() => parseCompressionAlgorithm("xz", "-o"), UsageError);
  });
});
