/**
 * Files written by the file outputs: always to a temporary name in the destination's directory first,
 * renamed into place only when complete, so a failure (disk full, Ctrl-C) never leaves a half-written
 * archive or blob under the name a reader trusts. Temporary files are removed on failure.
 */
import { createHash, randomBytes, type Hash } from "node:crypto";
import { open, rename, rm, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { SinkError, errnoCode } from "../errors.js";

/** Prefix of every temporary file the outputs write; nothing else starts with it. */
export const TEMP_PREFIX = ".mkbase-tmp-";

/** A temporary path in `dir`, unique to this write. */
export function tempPathIn(dir: string, purpose: string): string {
  return join(dir, `${TEMP_PREFIX}${purpose}-${process.pid}-${randomBytes(6).toString("hex")}`);
}

/** A {@link SinkError} for a failed write of `what`, with a hint that fits the errno. */
export function fileWriteError(what: string, error: unknown): SinkError {
  if (error instanceof SinkError) return error;
  const code = errnoCode(error);
  const hint =
    code === "ENOSPC" || code === "EDQUOT"
      ? "The disk is full: free space there or choose another dest; nothing partial was left behind."
      : code === "EACCES" || code === "EPERM" || code === "EROFS"
        ? "Choose a dest you can write to."
        : code === "ENOENT" || code === "ENOTDIR"
          ? "Create the parent directory first, or choose another dest."
          : undefined;
  return new SinkError(`cannot write ${what}: ${(error as Error).message}`, { cause: error, hint });
}

/** A file being written under a temporary name; {@link commit} renames it into place. */
export class AtomicFile {
  private readonly hash: Hash = createHash("sha256");
  private bytes = 0;
  private done = false;

  private constructor(
    /** The temporary path the bytes go to. */
    readonly tempPath: string,
    private readonly handle: FileHandle,
    private readonly what: string,
  ) {}

  /**
   * Starts writing `what` in `dir` (a temporary name there). `mode` is the final file's mode; spools
   * of image content use 0600 since they hold every file of the tree.
   */
  static async create(dir: string, what: string, mode = 0o644): Promise<AtomicFile> {
    const tempPath = tempPathIn(dir, basename(what).replace(/[^\w.-]/g, "_"));
    try {
      return new AtomicFile(tempPath, await open(tempPath, "wx", mode), what);
    } catch (error) {
      throw fileWriteError(what, error);
    }
  }

  /** Appends `chunk`; the bytes are hashed on the way. */
  async write(chunk: Buffer): Promise<void> {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    try {
      let offset = 0;
      while (offset < chunk.length) {
        const { bytesWritten } = await this.handle.write(chunk, offset, chunk.length - offset);
        offset += bytesWritten;
      }
    } catch (error) {
      throw fileWriteError(this.what, error);
    }
  }

  /** Closes the file and returns the digest and size of what was written (still under the temp name). */
  async finish(): Promise<{ digest: string; size: number }> {
    try {
      await this.handle.close();
    } catch (error) {
      throw fileWriteError(this.what, error);
    }
    this.done = true;
    return { digest: `sha256:${this.hash.digest("hex")}`, size: this.bytes };
  }

  /** Renames the finished file to `path` (in the same directory as the temp file, or on the same filesystem). */
  async commit(path: string): Promise<void> {
    try {
      await rename(this.tempPath, path);
    } catch (error) {
      await this.discard();
      throw fileWriteError(this.what, error);
    }
  }

  /** Removes the temporary file (after a failure); never throws. */
  async discard(): Promise<void> {
    if (!this.done) await this.handle.close().catch(() => undefined);
    this.done = true;
    await rm(this.tempPath, { force: true }).catch(() => undefined);
  }
}

/**
 * Writes `chunks` to `path` atomically and returns the digest and size of the bytes. On any failure the
 * temporary file is removed and `path` is left as it was.
 */
export async function writeFileAtomically(
  path: string,
  what: string,
  chunks: AsyncIterable<Buffer> | Iterable<Buffer>,
  mode = 0o644,
): Promise<{ digest: string; size: number }> {
  const file = await AtomicFile.create(dirname(path), what, mode);
  try {
    for await (const chunk of chunks) await file.write(chunk);
    const written = await file.finish();
    await file.commit(path);
    return written;
  } catch (error) {
    await file.discard();
    throw error;
  }
}
