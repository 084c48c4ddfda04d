/**
 * Decompression of an input tarball, chosen by the magic bytes at its start (never by its file name:
 * stdin and URLs have none, and names lie). gzip runs in node:zlib; bzip2, xz and zstd run as Debian's
 * command-line tools, which are faster than any JavaScript port and use a second core.
 */
import { spawn } from "node:child_process";
import type { Readable, Writable } from "node:stream";
import { createGunzip } from "node:zlib";
import {
  errnoCode,
  InterruptedError,
  MkbaseError,
  SourceError,
  throwIfAborted,
  ToolError,
} from "../errors.js";
import { checksumMatches } from "./read.js";

export type Compression = "gzip" | "bzip2" | "xz" | "zstd" | "none";

/** Bytes needed to recognise a plain tar archive (one header block). */
const DETECT_BYTES = 512;
/** Output chunks of 1 MiB keep the per-chunk overhead of the tar reader and the hashing consumer low. */
const OUTPUT_CHUNK = 1024 * 1024;

interface MagicFormat {
  readonly magic: readonly number[];
  readonly compression: Exclude<Compression, "none">;
}

const MAGIC: readonly MagicFormat[] = [
  { magic: [0x1f, 0x8b], compression: "gzip" },
  { magic: [0x42, 0x5a, 0x68], compression: "bzip2" },
  { magic: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], compression: "xz" },
  { magic: [0x28, 0xb5, 0x2f, 0xfd], compression: "zstd" },
];

/** Compressors we recognise only to say so, instead of "not a tar archive". */
const UNSUPPORTED_MAGIC: readonly { magic: readonly number[]; name: string; tool: string }[] = [
  { magic: [0x04, 0x22, 0x4d, 0x18], name: "lz4", tool: "lz4 -dc" },
  { magic: [0x4c, 0x5a, 0x49, 0x50], name: "lzip", tool: "lzip -dc" },
  { magic: [0x1f, 0x9d], name: "compress (.Z)", tool: "gzip -dc" },
  { magic: [0x50, 0x4b, 0x03, 0x04], name: "zip", tool: "bsdtar -cf - @FILE" },
];

const CONVERT_WITH_BSDTAR = "convert it to a tar archive first: `bsdtar -cf - @FILE | mkbase tar -`";

/**
 * Other archives and images a root filesystem comes in, named instead of "not a tar archive". Checked
 * only when the input does not start like a tar header, raw or decompressed (a `.cpio.gz`).
 */
const OTHER_FORMATS: readonly { magic: readonly number[]; name: string; hint: string }[] = [
  { magic: [0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c], name: "a 7z archive", hint: CONVERT_WITH_BSDTAR },
  // cpio: new ASCII (initramfs, Buildroot's rootfs.cpio), with CRC, old ASCII, old binary either way.
  ...["070701", "070702", "070707"].map((magic) => ({
    magic: [...Buffer.from(magic, "latin1")],
    name: "a cpio archive",
    hint: CONVERT_WITH_BSDTAR,
  })),
  { magic: [0xc7, 0x71], name: "a cpio archive", hint: CONVERT_WITH_BSDTAR },
  { magic: [0x71, 0xc7], name: "a cpio archive", hint: CONVERT_WITH_BSDTAR },
  {
    magic: [...Buffer.from("!<arch>\n", "latin1")],
    name: "an ar archive (a Debian package?)",
    hint: "a .deb keeps its files in a tar archive inside: `dpkg-deb --fsys-tarfile FILE | mkbase tar -`",
  },
  {
    magic: [...Buffer.from("hsqs", "latin1")],
    name: "a SquashFS image",
    hint: "mount it (mount -o loop,ro IMAGE DIR) and use `mkbase dir DIR`, or convert it with `sqfs2tar IMAGE | mkbase tar -`",
  },
];

/** What `head`, which is no tar header, is when it is another kind of archive or image. */
function otherFormat(head: Buffer): SourceError | undefined {
  const format = OTHER_FORMATS.find((candidate) => startsWith(head, candidate.magic));
  if (format === undefined) return undefined;
  return new SourceError(`not a tar archive: it is ${format.name}`, { hint: format.hint });
}

/**
 * Whether `head` starts with a zstd skippable frame (magic 0x184D2A50 to 0x184D2A5F, little-endian):
 * pzstd, zstd's parallel compressor, writes one before each frame, and zstd -d skips them.
 */
function isZstdSkippableFrame(head: Buffer): boolean {
  return (
    head.length >= 4 &&
    (head[0] ?? 0) >> 4 === 0x5 &&
    head[1] === 0x2a &&
    head[2] === 0x4d &&
    head[3] === 0x18
  );
}

interface DecompressTool {
  readonly command: string;
  /** Arguments that decompress stdin to stdout. */
  readonly args: readonly string[];
  /** The Debian package that has the command. */
  readonly package: string;
}

/** Debian's command-line decompressors and the package that has each. */
const TOOLS: Readonly<Record<"bzip2" | "xz" | "zstd", DecompressTool>> = {
  bzip2: { command: "bzip2", args: ["-dc"], package: "bzip2" },
  xz: { command: "xz", args: ["-dc"], package: "xz-utils" },
  // zstd decodes windows up to 128 MiB unless told more: `zstd --long=31` (and -19 --long) archives of a
  // large tree need up to 2 GiB, and would fail as "Frame requires too much memory for decoding".
  zstd: { command: "zstd", args: ["-dc", "--long=31"], package: "zstd" },
};

function startsWith(head: Buffer, magic: readonly number[]): boolean {
  return head.length >= magic.length && magic.every((byte, i) => head[i] === byte);
}

/**
 * The compression of a stream that starts with `head` (the first bytes, at least 512 unless the input
 * is shorter).
 *
 * @throws SourceError when the input is neither compressed in a known way nor a tar archive.
 */
export function detectCompression(head: Buffer): Compression {
  for (const format of MAGIC) {
    if (startsWith(head, format.magic)) return format.compression;
  }
  if (isZstdSkippableFrame(head)) return "zstd";
  for (const format of UNSUPPORTED_MAGIC) {
    if (startsWith(head, format.magic)) {
      throw new SourceError(`the input is compressed with ${format.name}, which mkbase does not read`, {
        hint: `convert it first, e.g. with \`${format.tool}\`, and pass the tar archive`,
      });
    }
  }
  if (head.length === 0) {
    throw new SourceError("not a tar archive: the input is empty", {
      hint: "give a tar archive, optionally compressed with gzip, bzip2, xz or zstd",
    });
  }
  // A web page where the archive was expected: a login or error page, or a link to a project page.
  if (/^\s*<(!doctype html|html|head|body)\b/i.test(head.toString("latin1", 0, 256))) {
    throw new SourceError("not a tar archive: it is an HTML page", {
      hint: "a URL that serves a web page (a login, an error or a project page) gives this: use the link to the file itself",
    });
  }
  if (!looksLikeTarHeader(head)) {
    const other = otherFormat(head);
    if (other !== undefined) throw other;
    throw new SourceError(
      "not a tar archive: it is neither compressed with gzip, bzip2, xz or zstd nor a tar header",
      {
        hint: "give a tar archive, optionally compressed with gzip, bzip2, xz or zstd",
      },
    );
  }
  return "none";
}

/**
 * Whether `block` starts like a tar archive: the `ustar` magic at offset 257, a valid header checksum
 * (pre-POSIX archives have no magic), or a zero block (an empty archive).
 */
export function looksLikeTarHeader(block: Buffer): boolean {
  if (block.length < DETECT_BYTES) return false;
  if (block.toString("latin1", 257, 262) === "ustar") return true;
  return block.subarray(0, DETECT_BYTES).every((byte) => byte === 0) || checksumMatches(block);
}

/**
 * The decompressed bytes of `chunks`, whatever their compression (plain tar passes through untouched).
 *
 * @throws SourceError when the input is not a (compressed) tar archive, or the compressed stream is
 *   corrupt or truncated. A truncated stream always fails; it never ends as a shorter archive.
 * @throws ToolError when the decompressor for bzip2, xz or zstd is not installed.
 * @throws InterruptedError when `signal` is aborted.
 * Errors thrown by `chunks` itself (a failed download, a digest mismatch) are passed on unchanged.
 */
export async function* decompress(
  chunks: AsyncIterable<Buffer>,
  signal: AbortSignal,
): AsyncGenerator<Buffer> {
  const source = chunks[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let headLength = 0;
  let done = false;
  try {
    while (headLength < DETECT_BYTES) {
      const result = await source.next();
      if (result.done) {
        done = true;
        break;
      }
      head.push(result.value);
      headLength += result.value.length;
    }
    const compression = detectCompression(head.length === 1 ? (head[0] as Buffer) : Buffer.concat(head));
    const input = resume(head, source, done);
    done = true;
    switch (compression) {
      case "none":
        yield* input;
        return;
      case "gzip":
        yield* notCompressedAgain(gunzip(input, signal), compression);
        return;
      default:
        yield* notCompressedAgain(decompressWithTool(TOOLS[compression], input, signal), compression);
    }
  } finally {
    if (!done) await source.return?.();
  }
}

/**
 * The decompressed `chunks`, refused when they start compressed again (a `.tar.gz.gz`) or are another
 * kind of archive (a `.cpio.gz`): the tar reader would call them "not a tar archive" without saying why.
 */
async function* notCompressedAgain(
  chunks: AsyncIterable<Buffer>,
  outer: Exclude<Compression, "none">,
): AsyncGenerator<Buffer> {
  let first = true;
  for await (const chunk of chunks) {
    if (first) {
      first = false;
      const inner = MAGIC.find((format) => startsWith(chunk, format.magic));
      if (inner !== undefined) {
        throw new SourceError(`the archive is compressed twice: ${inner.compression} inside ${outer}`, {
          hint: `decompress the outer ${outer} first (e.g. \`${outer === "gzip" ? "gzip" : TOOLS[outer].command} -dc FILE > FILE.inner\`) and pass the result`,
        });
      }
      const other = looksLikeTarHeader(chunk) ? undefined : otherFormat(chunk);
      if (other !== undefined) throw other;
    }
    yield chunk;
  }
}

/** The chunks read for detection followed by the rest of the source. */
async function* resume(
  head: Buffer[],
  source: AsyncIterator<Buffer>,
  ended: boolean,
): AsyncGenerator<Buffer> {
  let finished = ended;
  try {
    for (const chunk of head) yield chunk;
    while (!finished) {
      const result = await source.next();
      if (result.done) {
        finished = true;
        return;
      }
      yield result.value;
    }
  } finally {
    if (!finished) await source.return?.();
  }
}

function corruptArchive(cause: unknown, detail?: string): SourceError {
  return new SourceError(`the archive is corrupt or truncated${detail === undefined ? "" : ` (${detail})`}`, {
    cause,
    // Also when --sha256 was given: a damaged stream fails here, before its digest is complete.
    hint: "download or create it again (`sha256sum FILE` against the published checksum shows a damaged download)",
  });
}

/**
 * Writes `input` into `sink` with backpressure. When the sink breaks (the decompressor stopped
 * reading), the rest of the input is still read and discarded so that a digest computed over it sees
 * every byte; `cancel` stops everything (the consumer went away).
 */
class Pump {
  private inputError: { error: unknown } | undefined;
  readonly done: Promise<void>;
  private sinkBroken = false;
  private readonly cancel = new AbortController();

  constructor(
    input: AsyncIterable<Buffer>,
    private readonly sink: Writable,
    onInputError: () => void,
  ) {
    sink.on("error", () => {
      this.sinkBroken = true;
    });
    sink.on("close", () => {
      this.sinkBroken = true;
    });
    this.done = this.run(input).catch((error: unknown) => {
      if (this.inputError === undefined) throw error;
      onInputError();
    });
    // The outcome is read through `inputError`; an unawaited rejection must not crash the process.
    this.done.catch(() => {});
  }

  /** Set when the input itself failed; that error is what the caller must report. */
  inputFailure(): { error: unknown } | undefined {
    return this.inputError;
  }

  stop(): void {
    this.cancel.abort();
  }

  private async run(input: AsyncIterable<Buffer>): Promise<void> {
    const tagged = this.tagErrors(input);
    for await (const chunk of tagged) {
      if (this.cancel.signal.aborted) return;
      if (this.sinkBroken || this.sink.destroyed) continue;
      if (!this.sink.write(chunk)) await this.drained();
    }
    if (!this.sinkBroken && !this.sink.destroyed) this.sink.end();
  }

  private async *tagErrors(input: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    try {
      yield* input;
    } catch (error) {
      this.inputError = { error };
      throw error;
    }
  }

  /** Resolves on `drain`, or when the sink breaks, or on cancel. */
  private drained(): Promise<void> {
    return new Promise((resolve) => {
      if (this.sinkBroken || this.sink.destroyed || this.cancel.signal.aborted) {
        resolve();
        return;
      }
      const done = (): void => {
        this.sink.off("drain", done);
        this.sink.off("error", done);
        this.sink.off("close", done);
        this.cancel.signal.removeEventListener("abort", done);
        resolve();
      };
      this.sink.on("drain", done);
      this.sink.on("error", done);
      this.sink.on("close", done);
      this.cancel.signal.addEventListener("abort", done);
    });
  }
}

/** gzip in node:zlib, which decodes concatenated members (pigz, parallel gzip) like gzip does. */
async function* gunzip(input: AsyncIterable<Buffer>, signal: AbortSignal): AsyncGenerator<Buffer> {
  const zlib = createGunzip({ chunkSize: OUTPUT_CHUNK });
  const pump = new Pump(input, zlib, () => zlib.destroy(pump.inputFailure()?.error as Error));
  const onAbort = (): void => {
    zlib.destroy(new InterruptedError("interrupted", { cause: signal.reason }));
  };
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    try {
      for await (const chunk of zlib as AsyncIterable<Buffer>) yield chunk;
    } catch (error) {
      const failure = pump.inputFailure();
      if (failure !== undefined) throw failure.error;
      throwIfAborted(signal);
      if (error instanceof MkbaseError || !errnoCode(error)?.startsWith("Z_")) throw error;
      throw corruptArchive(error, "gzip: " + (error as Error).message);
    }
    await pump.done;
  } finally {
    signal.removeEventListener("abort", onAbort);
    pump.stop();
    zlib.destroy();
  }
}

/**
 * What a decompressor says went wrong, in one line: the first line it printed, without its own name and
 * the input's (`xz: (stdin): Unexpected end of input` → `Unexpected end of input`). The first line is
 * the reason; bzip2 follows it with paragraphs of advice, and its last line was what got shown.
 */
function firstComplaint(stderr: string, command: string): string | undefined {
  const line = stderr
    .split("\n")
    .map((text) => text.trim())
    .find((text) => text !== "");
  if (line === undefined) return undefined;
  return line
    .replace(new RegExp(`^${command}: `), "")
    .replace(/^(\(stdin\)|\/\*stdin\*\\)\s*:\s*/, "")
    .replace(/;$/, "");
}

/** Runs the decompressor with the input on its stdin and yields its stdout. */
async function* decompressWithTool(
  tool: DecompressTool,
  input: AsyncIterable<Buffer>,
  signal: AbortSignal,
): AsyncGenerator<Buffer> {
  throwIfAborted(signal);
  const child = spawn(tool.command, tool.args, { stdio: ["pipe", "pipe", "pipe"], signal });
  let spawnError: unknown;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on("error", (error) => {
      spawnError ??= error;
    });
    child.on("close", (code, exitSignal) => resolve({ code, signal: exitSignal }));
  });
  const stdin = child.stdin as Writable;
  const stdout = child.stdout as Readable;
  let stderr = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (text: string) => {
    if (stderr.length < 4096) stderr += text;
  });
  const pump = new Pump(input, stdin, () => child.kill());
  let finished = false;
  try {
    for await (const chunk of stdout as AsyncIterable<Buffer>) yield chunk;
    const status = await exited;
    const failure = pump.inputFailure();
    if (failure !== undefined) throw failure.error;
    throwIfAborted(signal);
    if (spawnError !== undefined) {
      if (errnoCode(spawnError) === "ENOENT") {
        throw new ToolError(`${tool.command} is not installed; it is needed to decompress this archive`, {
          cause: spawnError,
          hint: `install the Debian package ${tool.package} (apt-get install ${tool.package})`,
        });
      }
      throw new ToolError(`could not run ${tool.command}`, { cause: spawnError });
    }
    if (status.code !== 0) {
      const detail = firstComplaint(stderr, tool.command);
      throw corruptArchive(
        undefined,
        `${tool.command}: ${detail || `exit status ${status.code ?? status.signal}`}`,
      );
    }
    // The tool may stop reading before the end (bzip2 ignores trailing garbage): the pump still reads
    // the rest so that a digest over the input is complete, and reports the input's own failure.
    await pump.done;
    const lateFailure = pump.inputFailure();
    if (lateFailure !== undefined) throw lateFailure.error;
    finished = true;
  } finally {
    if (!finished) {
      pump.stop();
      if (child.exitCode === null && child.signalCode === null) child.kill();
    }
    stdout.destroy();
  }
}
