/**
 * Files written by the file outputs: always to a temporary name in the destination's directory first,
 * renamed into place only when complete, so a failure (disk full, Ctrl-C) never leaves a half-written
 * archive or blob under the name a reader trusts. Temporary files are removed on failure. A destination
 * that exists and is not a regular file (`/dev/null`, a FIFO, a terminal) is written directly instead:
 * a rename would replace the device node itself with a file. So is `-`, standard output, where a failure
 * shows as a short stream and a non-zero exit.
 */
import { randomBytes } from "node:crypto";
import { rmSync, type Stats } from "node:fs";
import { open, readlink, realpath, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { SinkError, errnoCode } from "../errors.js";
import { onForcedExit } from "../forced-exit.js";
import { makeDirectories } from "../make-directories.js";

/** Prefix of every temporary file the outputs write; nothing else starts with it. */
export const TEMP_PREFIX = ".mkbase-tmp-";

/** A temporary path in `dir`, unique to this write. */
export function tempPathIn(dir: string, purpose: string): string {
  return join(dir, `${TEMP_PREFIX}${purpose}-${process.pid}-${randomBytes(6).toString("hex")}`);
}

/** `dest` as messages name it: `-` is standard output. */
export function shownDest(dest: string): string {
  return dest === "-" ? "stdout" : dest;
}

/** `names`, in their order, for a message: all of them, or the first `max` and how many more. */
export function listedNames(names: readonly string[], max = 3): string {
  const shown = names.slice(0, max).join(", ");
  return names.length > max ? `${shown} and ${names.length - max} more` : shown;
}

/**
 * A {@link SinkError} for a failed write of a private temporary file (a spooled layer): the fix is in
 * `$TMPDIR`, not in the dest. `room` says what the disk must hold.
 */
export function temporaryFileError(what: string, room: string, error: unknown): SinkError {
  const cause = error instanceof SinkError && error.cause !== undefined ? error.cause : error;
  const code = errnoCode(cause);
  return new SinkError(`cannot write ${what} to the temporary directory: ${(cause as Error).message}`, {
    cause,
    hint:
      code === "ENOSPC" || code === "EDQUOT"
        ? `The disk is full: free space or point TMPDIR at a larger disk (${room}).`
        : "Check TMPDIR and its permissions.",
  });
}

/** A {@link SinkError} for a failed write of `what`, with a hint that fits the errno. */
export function fileWriteError(what: string, error: unknown): SinkError {
  if (error instanceof SinkError) return error;
  return new SinkError(`cannot write ${what}: ${(error as Error).message}`, {
    cause: error,
    hint: fileWriteHint(error),
  });
}

/** What to do about a failed file write, for the errnos a user can act on. */
function fileWriteHint(error: unknown): string | undefined {
  const code = errnoCode(error);
  return code === "ENOSPC" || code === "EDQUOT"
    ? "The disk is full: free space there or choose another path; nothing partial was left behind."
    : code === "EACCES" || code === "EPERM" || code === "EROFS"
      ? "Choose a path you can write to."
      : code === "ENOENT" || code === "ENOTDIR"
        ? "Create the parent directory first, or choose another path."
        : code === "EPIPE"
          ? "The program reading stdout exited before the archive was complete; its own message says why."
          : undefined;
}

/** What an {@link AtomicFile} writes through: an open file, or standard output. */
interface Output {
  write(
    buffer: Buffer,
    offset: number,
    length: number,
    position: number | null,
  ): Promise<{ bytesWritten: number }>;
  truncate?(length: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * Standard output as an {@link Output}. Through `process.stdout`, not its descriptor: node has made a pipe
 * there non-blocking, so writes of our own would fail with EAGAIN whenever the reader falls behind. Its
 * error listener tells the CLI that a closed pipe is this output's failure to report, not a reader that
 * has seen enough (`mkbase --help | head`); it stays for the rest of the command, since the stream may
 * report the error after the write that failed.
 */
function standardOutput(): Output {
  let failure: Error | undefined;
  process.stdout.on("error", (error: Error) => {
    failure ??= error;
  });
  return {
    write: (buffer, offset, length) =>
      new Promise((resolve, reject) => {
        if (failure !== undefined) {
          reject(failure);
          return;
        }
        process.stdout.write(buffer.subarray(offset, offset + length), (error) =>
          error ? reject(error) : resolve({ bytesWritten: length }),
        );
      }),
    close: async () => {
      if (failure !== undefined) throw failure;
    },
  };
}

/**
 * A descriptor appending to an {@link AtomicFile}, through which another process (a compressor) writes
 * the next bytes itself.
 */
export interface Appender {
  /** Open for reading too, so that what was appended can be hashed through it. */
  readonly fd: number;
  /** Where the appended bytes start in the file. */
  readonly start: number;
  /** Closes the descriptor and counts what was appended as written; returns how many bytes that was. */
  close(): Promise<number>;
  /** The error for a failed write through the descriptor (`cause` carries the errno), as for {@link AtomicFile.write}. */
  error(cause: unknown): Error;
}

/**
 * A file being written under a temporary name; {@link commit} renames it into place. One opened with
 * {@link AtomicFile.direct} writes straight into its destination: nothing to rename, nothing to remove.
 */
export class AtomicFile {
  private bytes = 0;
  private done = false;
  private appending: FileHandle | undefined;

  /** Forgets the temporary file's removal on a forced exit, once it is renamed or removed. */
  private readonly forgetUndo: () => void;

  private constructor(
    /** The temporary path the bytes go to (for a direct file, the destination). */
    readonly tempPath: string,
    private readonly handle: Output,
    private readonly what: string,
    private readonly isDirect = false,
  ) {
    this.forgetUndo = isDirect
      ? () => undefined
      : onForcedExit(tempPath, () => rmSync(tempPath, { force: true }));
  }

  /**
   * Starts writing `what` in `dir` (a temporary name there). `mode` is the final file's mode; spools
   * of image content use 0600 since they hold every file of the tree. A file it will replace,
   * `replacing`, gives it its mode and owner instead (see {@link takeOwnerAndMode}).
   */
  static async create(dir: string, what: string, mode = 0o644, replacing?: Stats): Promise<AtomicFile> {
    const tempPath = tempPathIn(dir, basename(what).replace(/[^\w.-]/g, "_"));
    let handle: FileHandle;
    try {
      handle = await open(tempPath, "wx", mode);
    } catch (error) {
      const code = errnoCode(error);
      // Said of the directory: the system's message names the temporary file, not one the user chose.
      if (code === "ENOENT" || code === "ENOTDIR") {
        throw new SinkError(`cannot write ${what}: there is no directory ${resolve(dir)}`, {
          cause: error,
          hint: "Create it first (mkdir -p), or choose another path.",
        });
      }
      throw new SinkError(
        `cannot write ${what}: no file can be made in ${resolve(dir)} (${code ?? String(error)})`,
        {
          cause: error,
          hint: fileWriteHint(error),
        },
      );
    }
    const file = new AtomicFile(tempPath, handle, what);
    if (replacing !== undefined) {
      try {
        await takeOwnerAndMode(handle, replacing);
      } catch (error) {
        await file.discard();
        throw fileWriteError(what, error);
      }
    }
    return file;
  }

  /** Writes straight into `path`, which exists and is not a regular file (a device or a FIFO). */
  static async direct(path: string, what: string): Promise<AtomicFile> {
    try {
      return new AtomicFile(path, await open(path, "w"), what, true);
    } catch (error) {
      throw fileWriteError(what, error);
    }
  }

  /** Writes to standard output (`dest=-`): nothing to rename, nothing that could be removed. */
  static stdout(what: string): AtomicFile {
    return new AtomicFile("-", standardOutput(), what, true);
  }

  /** Bytes written so far: where the next {@link write} goes. */
  get size(): number {
    return this.bytes;
  }

  /** Appends `chunk`. Writers that need a digest hash the bytes themselves: most need none. */
  async write(chunk: Buffer): Promise<void> {
    const start = this.bytes;
    this.bytes += chunk.length;
    // A temporary file is written at explicit positions, so that it can be cut back (truncate); a
    // direct destination (a FIFO, stdout) only takes bytes in order.
    await this.put(chunk, this.isDirect ? null : start);
  }

  /**
   * Overwrites bytes already written, at `position` (a header whose content was unknown before the data
   * that follows it). Temporary files only: a direct destination cannot go back.
   */
  async writeAt(chunk: Buffer, position: number): Promise<void> {
    if (this.isDirect || position + chunk.length > this.bytes)
      throw new Error(`${this.what}: cannot write at ${position}`);
    await this.put(chunk, position);
  }

  /** Cuts a temporary file back to `size` bytes; the next {@link write} goes there. */
  async truncate(size: number): Promise<void> {
    if (this.isDirect || this.handle.truncate === undefined || size > this.bytes)
      throw new Error(`${this.what}: cannot truncate to ${size}`);
    try {
      await this.handle.truncate(size);
    } catch (error) {
      throw fileWriteError(this.what, error);
    }
    this.bytes = size;
  }

  private async put(chunk: Buffer, position: number | null): Promise<void> {
    try {
      let offset = 0;
      while (offset < chunk.length) {
        const at = position === null ? null : position + offset;
        const { bytesWritten } = await this.handle.write(chunk, offset, chunk.length - offset, at);
        offset += bytesWritten;
      }
    } catch (error) {
      throw fileWriteError(this.what, error);
    }
  }

  /**
   * Opens a second descriptor on the temporary file that appends at its end, so that another process can
   * write the next bytes itself; nothing else may write until it is closed. Undefined for a direct
   * destination (a FIFO, stdout), which takes bytes in order through {@link write} only.
   */
  async openAppender(): Promise<Appender | undefined> {
    if (this.isDirect) return undefined;
    let handle: FileHandle;
    try {
      handle = await open(this.tempPath, "a+");
    } catch (error) {
      throw fileWriteError(this.what, error);
    }
    this.appending = handle;
    const start = this.bytes;
    return {
      fd: handle.fd,
      start,
      close: async () => {
        this.appending = undefined;
        try {
          this.bytes = (await handle.stat()).size;
        } catch (error) {
          throw fileWriteError(this.what, error);
        } finally {
          await handle.close();
        }
        return this.bytes - start;
      },
      error: (cause) => fileWriteError(this.what, cause),
    };
  }

  /** Closes the file and returns the size of what was written (still under the temp name). */
  async finish(): Promise<{ size: number }> {
    try {
      await this.handle.close();
    } catch (error) {
      throw fileWriteError(this.what, error);
    }
    this.done = true;
    return { size: this.bytes };
  }

  /** Renames the finished file to `path` (in the same directory as the temp file, or on the same filesystem). */
  async commit(path: string): Promise<void> {
    if (this.isDirect) return;
    try {
      await rename(this.tempPath, path);
    } catch (error) {
      await this.discard();
      throw fileWriteError(this.what, error);
    }
    this.forgetUndo();
  }

  /** Removes the temporary file (after a failure); never throws. */
  async discard(): Promise<void> {
    await this.appending?.close().catch(() => undefined);
    this.appending = undefined;
    if (!this.done) await this.handle.close().catch(() => undefined);
    this.done = true;
    if (!this.isDirect) await rm(this.tempPath, { force: true }).catch(() => undefined);
    this.forgetUndo();
  }
}

/**
 * Gives the file open as `handle` the mode of `like`, the file it replaces, and its owner as far as this
 * process may set it, as a shell's `>` keeps both when it overwrites a file in place.
 */
async function takeOwnerAndMode(handle: FileHandle, like: Stats): Promise<void> {
  // Only root gives a file away; others can still give their own file one of their groups.
  const mayNot = (error: unknown): boolean => errnoCode(error) === "EPERM" || errnoCode(error) === "EINVAL";
  try {
    await handle.chown(like.uid, like.gid);
  } catch (error) {
    if (!mayNot(error)) throw error;
    await handle.chown(-1, like.gid).catch((again: unknown) => {
      if (!mayNot(again)) throw again;
    });
  }
  // After chown, which clears the set-ID bits; not through open, whose mode the umask cuts.
  await handle.chmod(like.mode & 0o7777);
}

/**
 * `path` with the symlinks at its end followed, also to a file that does not exist yet, which a shell's
 * `>` would make through a dangling link. Any other failure is left to the write, which says why.
 */
async function followLinks(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch (error) {
    // ENOENT, not ELOOP: the links lead somewhere, so following them one by one ends.
    const target = errnoCode(error) === "ENOENT" ? await readlink(path).catch(() => undefined) : undefined;
    return target === undefined ? path : followLinks(resolve(dirname(path), target));
  }
}

/**
 * Opens the destination a user named (`dest=`) for writing: a temporary file next to it when it is new
 * or a regular file (next to the file a symlink points to, so the link stays a link), the destination
 * itself when it is a device, FIFO or terminal, and standard output for `-`. A file it replaces keeps its
 * mode and owner. `path` is what to {@link AtomicFile.commit} to.
 */
export async function openDestination(
  dest: string,
  what: string,
  mode = 0o644,
): Promise<{ file: AtomicFile; path: string }> {
  switch (await destinationKind(dest)) {
    case "stdout":
      return { file: AtomicFile.stdout(what), path: dest };
    case "directory":
      throw new SinkError(`cannot write ${what}: ${dest} is a directory`, {
        hint: "Name a file in it (DIR/NAME), or choose another path.",
      });
    case "in place":
      return { file: await AtomicFile.direct(dest, what), path: dest };
    default: {
      // A symlink's target is replaced (or made), not the link; a new name has nothing to resolve.
      const path = await followLinks(dest);
      const replaced = await stat(path).catch(() => undefined);
      return { file: await AtomicFile.create(dirname(path), what, mode, replaced), path };
    }
  }
}

/**
 * Fails now if `dest` could not be written later. For files written only once the image exists
 * (`--iidfile`, `--metadata-file`), which would otherwise fail after the image was made and tagged.
 */
export async function checkDestination(dest: string, what: string): Promise<void> {
  // A FIFO or a terminal is opened only when written: opening it now could end its reader.
  const kind = await destinationKind(dest);
  if (kind === "in place" || kind === "stdout") return;
  // The real test (a directory, permissions, a read-only or special filesystem): the temporary file the
  // write will make beside it, made and removed at once.
  const { file } = await openDestination(dest, what);
  await file.discard();
}

/**
 * How {@link openDestination} writes `dest`: `file` (new, or a regular file) under a temporary name it
 * renames into place, so it can also go back and write at any position; `in place` (a device, a FIFO,
 * a terminal) and `stdout` only in order; a `directory` not at all.
 */
export async function destinationKind(dest: string): Promise<"file" | "in place" | "stdout" | "directory"> {
  if (dest === "-") return "stdout";
  const existing = await stat(dest).catch(() => undefined);
  if (existing === undefined || existing.isFile()) return "file";
  return existing.isDirectory() ? "directory" : "in place";
}

/**
 * A directory an output makes for its files, with any missing parents. After a failure, {@link discard}
 * removes what was made (never a directory that was there before), unless {@link keep} said the output
 * is complete.
 */
export class OutputDirectory {
  private made: string | undefined;
  private kept = false;
  private forgetUndo: () => void = () => undefined;

  constructor(
    readonly path: string,
    private readonly what: string,
  ) {}

  async make(): Promise<void> {
    if (this.made !== undefined) return;
    try {
      const made = await makeDirectories(this.path);
      if (made === undefined) return;
      this.made = made;
      this.forgetUndo = onForcedExit(made, () => rmSync(made, { recursive: true, force: true }));
    } catch (error) {
      throw fileWriteError(this.what, error);
    }
  }

  keep(): void {
    this.kept = true;
    this.forgetUndo();
  }

  async discard(): Promise<void> {
    if (!this.kept && this.made !== undefined) await rm(this.made, { recursive: true, force: true });
    this.forgetUndo();
  }
}

/**
 * Writes `chunks` to `path` atomically and returns the number of bytes. On any failure the
 * temporary file is removed and `path` is left as it was.
 */
export async function writeFileAtomically(
  path: string,
  what: string,
  chunks: AsyncIterable<Buffer> | Iterable<Buffer>,
  mode = 0o644,
): Promise<{ size: number }> {
  const { file, path: finalPath } = await openDestination(path, what, mode);
  try {
    for await (const chunk of chunks) await file.write(chunk);
    const written = await file.finish();
    await file.commit(finalPath);
    return written;
  } catch (error) {
    await file.discard();
    throw error;
  }
}
