/**
 * Streaming compressors for layers. Each takes uncompressed chunks with backpressure and hands the
 * compressed bytes, in order, to an output callback (a file writer that also hashes them).
 *
 * - gzip: the input is cut into members of a fixed size, compressed in worker threads and concatenated.
 *   A gzip file may hold several members (RFC 1952 §2.2) and every reader decompresses them as one
 *   stream. Member boundaries depend only on the input offset, so the output is the same for the same
 *   input and level whatever the number of cores or the chunking of the input. Node's zlib runs in one
 *   thread; independent members are what lets the compression use both cores of these machines.
 * - zstd: Debian's `zstd` CLI with `-T0` (Node 20's zlib has no zstd). Its multi-threaded output does
 *   not depend on the number of threads. Given a descriptor of the output file ({@link
 *   CompressorOptions.appendTo}), it writes there itself.
 * - none: the bytes as they are.
 */
import { spawn, type ChildProcessByStdio } from "node:child_process";
import { once } from "node:events";
import { availableParallelism } from "node:os";
import type { Readable, Writable } from "node:stream";
import { Worker } from "node:worker_threads";
import { InterruptedError, SinkError, ToolError, errnoCode } from "../errors.js";
import type { Compression } from "./compression.js";
import { gzipMember, type MemberRequest, type MemberResult } from "./gzip-member.js";

/** Takes uncompressed bytes and produces compressed ones through the output callback. */
export interface Compressor {
  /**
   * Takes one chunk; resolves when the next one may be written. zstd's stdin queues the chunk, so it may
   * be read after that: `release` is called once the compressor is done with it.
   */
  write(chunk: Buffer, release?: () => void): Promise<void>;
  /** No more input: resolves when every compressed byte was handed to the output callback. */
  end(): Promise<void>;
  /** Stops at once and releases threads and processes (after a failure elsewhere). */
  destroy(): void;
}

/** Receives compressed bytes in order, done with them once it resolves; the compressor waits for it. */
export type CompressedOutput = (chunk: Buffer) => Promise<void>;

export interface CompressorOptions {
  readonly signal: AbortSignal;
  /** gzip only: uncompressed bytes per member (default {@link GZIP_MEMBER_SIZE}). */
  readonly memberSize?: number;
  /** gzip only: worker threads (default: the number of cores). */
  readonly threads?: number;
  /**
   * The file the output goes to, as a descriptor that appends to it (see {@link startCompressor}). zstd, which
   * runs as another process, then writes there itself and the output callback sees none of its bytes:
   * passing them back through mkbase (a pipe, a stream, a promise and a file write per 64 KiB) cost ~0.3 s
   * of CPU for the bookworm tree, taken from zstd's own threads.
   */
  readonly appendTo?: OutputFile;
}

/** A file that a compressor running as another process writes itself. */
export interface OutputFile {
  readonly fd: number;
  /** The error for a failed write to the file (`cause` carries the errno), as its owner words it. */
  error(cause: unknown): Error;
}

/**
 * Starts the compressor for `compression`, writing through `output`. zstd, which runs as another process,
 * writes the file itself through a descriptor of its own from `openAppender`, when the file has one (a
 * direct destination such as stdout has none); the descriptor is returned for the caller to close.
 */
export async function startCompressor<A extends OutputFile>(
  compression: Compression,
  output: CompressedOutput,
  openAppender: () => Promise<A | undefined>,
  signal: AbortSignal,
): Promise<{ readonly compressor: Compressor; readonly appender: A | undefined }> {
  const appender = compression.algorithm === "zstd" ? await openAppender() : undefined;
  return { compressor: createCompressor(compression, output, { signal, appendTo: appender }), appender };
}

/**
 * 1 MiB members: large enough that the ratio is within a fraction of a percent of one deflate stream
 * (deflate's window is 32 KiB), small enough that two workers start early and stay busy.
 */
export const GZIP_MEMBER_SIZE = 1024 * 1024;

/** Creates a compressor for `compression` that writes to `output`. */
export function createCompressor(
  compression: Compression,
  output: CompressedOutput,
  options: CompressorOptions,
): Compressor {
  switch (compression.algorithm) {
    case "gzip":
      return new ParallelGzipCompressor(compression.level, output, options);
    case "zstd":
      return new ZstdCompressor(compression.level, output, options.signal, options.appendTo);
    default:
      return {
        write: async (chunk, release) => {
          await output(chunk);
          release?.();
        },
        end: () => Promise.resolve(),
        destroy: () => undefined,
      };
  }
}

interface Job {
  readonly resolve: (output: Buffer) => void;
  readonly reject: (error: unknown) => void;
}

/** A few worker threads that each compress one gzip member at a time. */
class GzipWorkerPool {
  private readonly idle: Worker[] = [];
  private readonly workers: Worker[] = [];
  private readonly queue: MemberRequest[] = [];
  private readonly jobs = new Map<number, Job>();
  private readonly busy = new Map<Worker, number>();
  /** Inputs the threads gave back once compressed, to be filled with later members. */
  private readonly returned: ArrayBuffer[] = [];
  private failure: unknown;
  private closed = false;

  constructor(private readonly size: number) {}

  compress(request: MemberRequest): Promise<Buffer> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new Error("the gzip worker pool is closed"));
    const result = new Promise<Buffer>((resolve, reject) => this.jobs.set(request.id, { resolve, reject }));
    this.queue.push(request);
    this.schedule();
    return result;
  }

  /** A buffer of `size` bytes for the next member: an input a thread gave back, or a new one. */
  memberBuffer(size: number): Buffer {
    const reused = this.returned.pop();
    // allocUnsafeSlow: a buffer that owns its ArrayBuffer, so it can be transferred without a copy.
    return reused?.byteLength === size ? Buffer.from(reused) : Buffer.allocUnsafeSlow(size);
  }

  private schedule(): void {
    while (this.queue.length > 0) {
      let worker = this.idle.pop();
      if (worker === undefined && this.workers.length < this.size) worker = this.startWorker();
      if (worker === undefined) return;
      const request = this.queue.shift() as MemberRequest;
      this.busy.set(worker, request.id);
      worker.postMessage(request, [request.input]);
    }
  }

  private startWorker(): Worker {
    const worker = new Worker(new URL("./gzip-worker.js", import.meta.url));
    this.workers.push(worker);
    worker.on("message", (result: MemberResult) => {
      this.busy.delete(worker);
      const job = this.jobs.get(result.id);
      this.jobs.delete(result.id);
      job?.resolve(Buffer.from(result.output, 0, result.length));
      this.returned.push(result.input);
      this.idle.push(worker);
      this.schedule();
    });
    worker.on("error", (error) => this.fail(error));
    worker.on("exit", (code) => {
      if (this.busy.has(worker)) this.fail(new Error(`a gzip worker thread exited with code ${code}`));
    });
    return worker;
  }

  private fail(error: unknown): void {
    this.failure ??= error;
    for (const job of this.jobs.values()) job.reject(error);
    this.jobs.clear();
    this.queue.length = 0;
  }

  close(): void {
    this.closed = true;
    // Members still queued or in a thread will never finish: settle their promises so no one waits.
    for (const job of this.jobs.values()) job.reject(new Error("the gzip worker pool was closed"));
    this.jobs.clear();
    this.queue.length = 0;
    this.busy.clear();
    for (const worker of this.workers) void worker.terminate();
    this.workers.length = 0;
    this.idle.length = 0;
  }
}

class ParallelGzipCompressor implements Compressor {
  private readonly memberSize: number;
  private readonly threads: number;
  private pool: GzipWorkerPool | undefined;
  private member: Buffer;
  private used = 0;
  private members = 0;
  /** Resolves when the latest member was handed to the output; each one waits for the one before. */
  private delivered: Promise<void> = Promise.resolve();
  private readonly inFlight: Promise<void>[] = [];

  constructor(
    private readonly level: number,
    private readonly output: CompressedOutput,
    private readonly options: CompressorOptions,
  ) {
    this.memberSize = options.memberSize ?? GZIP_MEMBER_SIZE;
    this.threads = Math.max(1, options.threads ?? availableParallelism());
    this.member = Buffer.allocUnsafeSlow(this.memberSize);
  }

  async write(chunk: Buffer, release?: () => void): Promise<void> {
    let offset = 0;
    while (offset < chunk.length) {
      const n = Math.min(chunk.length - offset, this.memberSize - this.used);
      chunk.copy(this.member, this.used, offset, offset + n);
      this.used += n;
      offset += n;
      if (this.used === this.memberSize) {
        this.dispatch(this.member, this.used);
        this.member = this.pool?.memberBuffer(this.memberSize) ?? Buffer.allocUnsafeSlow(this.memberSize);
        this.used = 0;
        // Two members per thread in flight keep every worker busy while memory stays bounded.
        while (this.inFlight.length >= 2 * this.threads) await this.inFlight.shift();
      }
    }
    // Every byte was copied into a member.
    release?.();
  }

  private dispatch(buffer: Buffer, length: number): void {
    const id = this.members++;
    let compressed: Promise<Buffer>;
    if (this.threads === 1 || (id === 0 && length < this.memberSize)) {
      // One member in all (a small layer), or one core: starting a thread would only cost time.
      compressed = Promise.resolve().then(() => gzipMember(buffer.subarray(0, length), this.level));
    } else {
      this.pool ??= new GzipWorkerPool(this.threads);
      // Member buffers own their ArrayBuffer, so it can be transferred without a copy.
      const whole = buffer.buffer as ArrayBuffer;
      const input = length === buffer.length ? whole : whole.slice(0, length);
      compressed = this.pool.compress({ id, input, level: this.level });
    }
    compressed.catch(() => undefined);
    const previous = this.delivered;
    this.delivered = (async () => {
      await previous;
      this.options.signal.throwIfAborted();
      await this.output(await compressed);
    })();
    // A failed member fails the whole stream: stop the threads at once rather than when destroyed.
    this.delivered.catch(() => this.pool?.close());
    this.inFlight.push(this.delivered);
  }

  async end(): Promise<void> {
    try {
      // An empty input still makes one (empty) member: a valid gzip file.
      if (this.used > 0 || this.members === 0) this.dispatch(this.member, this.used);
      await this.delivered;
    } finally {
      this.pool?.close();
    }
  }

  destroy(): void {
    this.pool?.close();
  }
}

/** Bytes queued for zstd's stdin before a write waits for it to drain. */
const ZSTD_QUEUE_BYTES = 8 * 1024 * 1024;

class ZstdCompressor implements Compressor {
  /** stdout is null when zstd writes the output file itself. */
  private readonly child: ChildProcessByStdio<Writable, Readable | null, Readable>;
  private readonly finished: Promise<void>;
  private stderr = "";

  constructor(
    level: number,
    output: CompressedOutput,
    signal: AbortSignal,
    private readonly appendTo: OutputFile | undefined,
  ) {
    const child = spawn("zstd", [`-${level}`, "-T0", "-q", "-c", "--no-progress"], {
      stdio: ["pipe", appendTo?.fd ?? "pipe", "pipe"],
      signal,
    }) as ChildProcessByStdio<Writable, Readable | null, Readable>;
    this.child = child;
    const spawned = new Promise<void>((resolve, reject) => {
      child.once("spawn", resolve);
      child.once("error", (error) => reject(this.spawnError(error, signal)));
    });
    child.stderr.on("data", (chunk: Buffer) => (this.stderr += chunk.toString("utf8")));
    child.stdin.on("error", () => undefined);
    const exited = (async () => {
      await spawned;
      const [code] = (await once(child, "close")) as [number | null];
      if (signal.aborted) throw new InterruptedError("interrupted", { cause: signal.reason });
      if (code !== 0) throw this.exitError(code);
    })();
    exited.catch(() => undefined);
    this.finished = (async () => {
      if (child.stdout !== null) for await (const chunk of child.stdout) await output(chunk as Buffer);
      await exited;
    })();
    this.finished.catch(() => undefined);
  }

  /**
   * Why zstd failed. Writing the file itself, it reports a full disk in its own words: that becomes the
   * file's own error for a failed write, with the errno, as if mkbase had written the bytes.
   */
  private exitError(code: number | null): Error {
    const said = this.stderr.trim();
    const errno = /No space left on device/.test(said)
      ? "ENOSPC"
      : /Disk quota exceeded/.test(said)
        ? "EDQUOT"
        : undefined;
    if (errno !== undefined && this.appendTo !== undefined) {
      // "zstd: error 70 : Write error : cannot write block : No space left on device": the last part.
      const reason = said.split(" : ").pop() as string;
      return this.appendTo.error(Object.assign(new Error(`zstd: ${reason}`), { code: errno }));
    }
    return new ToolError(`zstd exited with ${String(code)} while compressing the layer: ${said}`, {
      hint: "Check that Debian's zstd package works (`zstd --version`).",
    });
  }

  private spawnError(error: unknown, signal: AbortSignal): Error {
    if (signal.aborted) return new InterruptedError("interrupted", { cause: signal.reason });
    if (errnoCode(error) === "ENOENT") {
      return new ToolError("zstd is not installed: compression=zstd runs Debian's zstd command", {
        cause: error,
        hint: "Install it with `apt-get install zstd`, or use compression=gzip.",
      });
    }
    return new ToolError(`cannot start zstd: ${(error as Error).message}`, { cause: error });
  }

  async write(chunk: Buffer, release?: () => void): Promise<void> {
    // A pipe's stream says "full" at 16 KiB; waiting then would make packing and compressing take turns
    // (the packer yields 1 MiB chunks). Keep up to 8 MiB queued so that both cores stay busy.
    const stdin = this.child.stdin;
    // A broken pipe (zstd exited: a full disk, say) is reported by how zstd exited, not as EPIPE.
    if (stdin.destroyed) await this.exitedEarly(new Error("zstd's input is closed"));
    // Written into the pipe: done with the chunk. After an error (zstd gone) it may still be queued.
    stdin.write(chunk, (error) => {
      if (error === null || error === undefined) release?.();
    });
    if (stdin.writableLength < ZSTD_QUEUE_BYTES) return;
    // zstd stopped reading: either drain, or its exit (or the output failing) explains why.
    await Promise.race([once(stdin, "drain"), this.finished.then(() => this.stoppedEarly())]).catch(
      (error: unknown) => this.exitedEarly(error),
    );
  }

  /** Fails with zstd's own reason when it has one (its exit, or the output failing), else with `error`. */
  private async exitedEarly(error: unknown): Promise<never> {
    await this.finished;
    throw error;
  }

  private stoppedEarly(): never {
    throw new SinkError("zstd stopped reading the layer before it was complete", {
      hint: "Run again; if it repeats, check `zstd --version`.",
    });
  }

  async end(): Promise<void> {
    this.child.stdin.end();
    await this.finished;
  }

  destroy(): void {
    this.child.kill("SIGKILL");
  }
}
