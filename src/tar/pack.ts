/**
 * Turns tar entries into tar bytes, in large chunks.
 *
 * File content on disk is read synchronously straight into the output buffer: on page-cache hits an
 * awaited fs call costs ~150 µs of thread-pool handoff per call, which made an async packer 8× more CPU
 * hungry than GNU tar. The generator yields a chunk whenever the buffer is full, which is where the
 * consumer's backpressure (an HTTP request, a file, a compressor) gets to act.
 */
import { closeSync, constants, openSync, readSync } from "node:fs";
import { SourceError, throwIfAborted } from "../errors.js";
import type { ProgressListener } from "../progress.js";
import { displayPath, type TarEntry } from "./entry.js";
import { END_OF_ARCHIVE, encodeHeader, paddingFor } from "./header.js";
import { unreadablePathError } from "./walk.js";

/** 1 MiB: large enough that per-chunk costs vanish (the design measured 1 MiB+ reads as fast), small enough to keep memory flat. */
const CHUNK_SIZE = 1024 * 1024;
const PROGRESS_EVERY_ENTRIES = 500;

export interface PackOptions {
  readonly signal: AbortSignal;
  readonly onProgress?: ProgressListener;
  /**
   * The consumer is done with a chunk by the time it asks for the next one (it hashes it and awaits a
   * file write, say), so its buffer may be filled again. Saves an allocation per chunk and the garbage
   * collection that follows. Never set it for a consumer that queues chunks (an HTTP request body).
   */
  readonly reuseBuffers?: boolean;
}

class ChunkWriter {
  private buffer: Buffer = Buffer.allocUnsafe(CHUNK_SIZE);
  private used = 0;
  /** Filled chunks waiting to be yielded, with the buffer they live in when it is ours to reuse. */
  readonly ready: { readonly chunk: Buffer; readonly owned: Buffer | undefined }[] = [];
  /** Buffers handed out and given back, ready to be filled again. */
  private readonly spare: Buffer[] = [];

  constructor(private readonly reuse: boolean) {}

  /** Yields the ready chunks; with reuse, a chunk's buffer is recycled once the consumer asks for more. */
  *drain(): Generator<Buffer> {
    for (let next = this.ready.shift(); next !== undefined; next = this.ready.shift()) {
      yield next.chunk;
      if (this.reuse && next.owned !== undefined) this.spare.push(next.owned);
    }
  }

  /** Copies `bytes`; large inputs pass through without a copy once the current chunk is flushed. */
  write(bytes: Buffer): void {
    if (bytes.length >= CHUNK_SIZE / 2) {
      this.flush();
      this.ready.push({ chunk: bytes, owned: undefined });
      return;
    }
    if (this.used + bytes.length > this.buffer.length) this.flush();
    bytes.copy(this.buffer, this.used);
    this.used += bytes.length;
  }

  zeros(count: number): void {
    if (this.used + count > this.buffer.length) this.flush();
    this.buffer.fill(0, this.used, this.used + count);
    this.used += count;
  }

  /** Free space at the end of the current chunk, for direct reads into it. */
  space(): { buffer: Buffer; offset: number; length: number } {
    if (this.used === this.buffer.length) this.flush();
    return { buffer: this.buffer, offset: this.used, length: this.buffer.length - this.used };
  }

  advance(count: number): void {
    this.used += count;
  }

  flush(): void {
    if (this.used === 0) return;
    this.ready.push({ chunk: this.buffer.subarray(0, this.used), owned: this.buffer });
    // Without reuse, a new buffer every time: the consumer may still hold the previous one (a pending
    // socket write).
    this.buffer = this.spare.pop() ?? Buffer.allocUnsafe(CHUNK_SIZE);
    this.used = 0;
  }
}

const probe = Buffer.alloc(1);

function openForReading(path: Buffer): number {
  try {
    // O_NOFOLLOW: if the file was replaced by a symlink since the walk saw it, refuse rather than follow.
    return openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (error) {
    throw unreadablePathError(path, error);
  }
}

function changedWhileRead(path: Buffer, how: "shrank" | "grew", size: number): SourceError {
  return new SourceError(`${displayPath(path)} ${how} while being read (expected ${size} bytes)`, {
    path: displayPath(path),
    hint: "Stop whatever is writing to the tree (or leave the path out with --exclude) and run again.",
  });
}

/**
 * Reads exactly `size` bytes of `path` into the writer, yielding (so full chunks can be handed on)
 * every time the writer fills up. A file that changed size while being read is an error, never a
 * silently shorter or longer archive.
 */
function* copyFile(path: Buffer, size: number, writer: ChunkWriter, signal: AbortSignal): Generator<void> {
  const fd = openForReading(path);
  try {
    let remaining = size;
    while (remaining > 0) {
      const space = writer.space();
      const n = readSync(fd, space.buffer, space.offset, Math.min(space.length, remaining), null);
      if (n === 0) throw changedWhileRead(path, "shrank", size);
      writer.advance(n);
      remaining -= n;
      if (writer.ready.length > 0) {
        yield;
        throwIfAborted(signal);
      }
    }
    if (readSync(fd, probe, 0, 1, null) !== 0) throw changedWhileRead(path, "grew", size);
  } finally {
    closeSync(fd);
  }
}

/**
 * Packs `entries` into a tar archive, yielding chunks of up to 1 MiB (larger streamed content passes
 * through as it comes). Unless `reuseBuffers` is set, the chunks are fresh buffers the consumer may keep.
 * Stops with an {@link InterruptedError} when `signal` is aborted.
 */
export async function* packTar(
  entries: Iterable<TarEntry> | AsyncIterable<TarEntry>,
  options: PackOptions,
): AsyncGenerator<Buffer> {
  const writer = new ChunkWriter(options.reuseBuffers === true);
  let count = 0;
  let bytes = 0;
  for await (const entry of entries) {
    throwIfAborted(options.signal);
    const header = encodeHeader(entry);
    writer.write(header);
    bytes += header.length;
    if (entry.type === "file" && entry.size > 0) {
      const content = entry.content;
      if (content === undefined) throw new Error(`entry ${displayPath(entry.path)} has no content`);
      if (content.kind === "path") {
        for (const _ of copyFile(content.path, entry.size, writer, options.signal)) {
          yield* writer.drain();
        }
      } else if (content.kind === "bytes") {
        if (content.data.length !== entry.size)
          throw new Error(`entry ${displayPath(entry.path)}: size mismatch`);
        writer.write(content.data);
      } else {
        let seen = 0;
        for await (const chunk of content.chunks) {
          seen += chunk.length;
          if (seen > entry.size) break;
          writer.write(chunk);
          yield* writer.drain();
        }
        if (seen !== entry.size) {
          throw new SourceError(
            `${displayPath(entry.path)}: expected ${entry.size} bytes of content, got ${seen}`,
            {
              path: displayPath(entry.path),
            },
          );
        }
      }
      writer.zeros(paddingFor(entry.size));
      bytes += entry.size + paddingFor(entry.size);
    }
    count += 1;
    if (count % PROGRESS_EVERY_ENTRIES === 0) options.onProgress?.({ kind: "pack", entries: count, bytes });
    yield* writer.drain();
  }
  throwIfAborted(options.signal);
  writer.write(END_OF_ARCHIVE);
  bytes += END_OF_ARCHIVE.length;
  writer.flush();
  options.onProgress?.({ kind: "pack", entries: count, bytes });
  yield* writer.drain();
}
