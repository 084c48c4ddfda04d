/**
 * The unit that flows through the pipeline: one tar entry, described completely, with a way to get its
 * content. Sources produce these; the normaliser and the packer consume them. Every field a tar header
 * carries is set here, so no library default ever decides an mtime, a mode or an owner.
 */
import { formatBytes } from "../progress.js";

/**
 * Extended attributes never carried, from a tree or an archive: SELinux labels belong to the policy of
 * the host that made them, and copying them would stamp its contexts onto every file of the image.
 */
export const HOST_ONLY_XATTRS: ReadonlySet<string> = new Set(["security.selinux"]);

export type EntryType = "file" | "directory" | "symlink" | "hardlink" | "char" | "block" | "fifo";

/** Where a regular file's bytes come from. There must be exactly `size` bytes. */
export type EntryContent =
  /** A file on disk, read by the packer synchronously (page-cache reads are faster than awaited ones). */
  | { readonly kind: "path"; readonly path: Buffer }
  /** Bytes already in memory (generated files such as `/etc/passwd`). */
  | { readonly kind: "bytes"; readonly data: Buffer }
  /** A stream read once, in order (an entry of an input tarball). */
  | { readonly kind: "stream"; readonly chunks: AsyncIterable<Buffer> };

export interface TarEntry {
  /** Path relative to the image root as raw bytes: no leading `/` or `./`, no trailing `/`. */
  readonly path: Buffer;
  readonly type: EntryType;
  /** Permission bits including setuid, setgid and sticky (`& 0o7777`). */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** Modification time in whole seconds since 1970 (may be negative). */
  readonly mtime: number;
  /** Content length for `file`; 0 for every other type. */
  readonly size: number;
  /** Symlink target (verbatim, never resolved) or hardlink target (an earlier path of the same archive). */
  readonly linkname?: Buffer;
  readonly devmajor?: number;
  readonly devminor?: number;
  /** Extended attributes by name, values byte-exact (`security.capability` is binary). */
  readonly xattrs?: ReadonlyMap<string, Buffer>;
  /** Required for `file` entries with `size > 0`. */
  readonly content?: EntryContent;
}

/** Something that yields tar entries in the order they must be written (sorted, parents first). */
export interface EntrySource {
  /** Short description for progress lines, e.g. `directory ./rootfs`. */
  readonly description: string;
  entries(signal: AbortSignal): Iterable<TarEntry> | AsyncIterable<TarEntry>;
}

/** `path` as text for messages: invalid UTF-8 bytes are shown escaped rather than replaced. */
export function displayPath(path: Buffer): string {
  const text = path.toString("utf8");
  if (Buffer.from(text, "utf8").equals(path)) return text;
  return [...path]
    .map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`))
    .join("");
}

/** Files from this size on that are mostly holes get {@link sparseFileWarning}. */
const LARGE_SPARSE_FILE = 1024 * 1024 * 1024;

/**
 * The warning for a large file that is mostly holes, or undefined. A layer cannot hold holes: every zero
 * is packed, hashed, compressed and unpacked again. The classic case is /var/log/lastlog or faillog
 * after `useradd` with a large uid, which makes them hundreds of gigabytes of holes.
 *
 * @param data the bytes the file really holds: allocated on disk, or stored in a sparse archive entry
 */
export function sparseFileWarning(path: Buffer, size: number, data: number): string | undefined {
  if (size < LARGE_SPARSE_FILE || 2 * data > size) return undefined;
  const shown = displayPath(path);
  return (
    `${shown} is a sparse file of ${formatBytes(size)} holding ${formatBytes(data)} of data: the image stores ` +
    `it whole, its holes as zeros. If it is not needed (a lastlog or faillog after useradd with a large uid ` +
    `often is not), leave it out with --exclude ${shown}`
  );
}

/** A root-owned regular file whose content is already in memory (generated files, JSON documents). */
export function bytesEntry(path: string, data: Buffer, mode: number, mtime: number): TarEntry {
  return {
    path: Buffer.from(path),
    type: "file",
    mode,
    uid: 0,
    gid: 0,
    mtime,
    size: data.length,
    content: { kind: "bytes", data },
  };
}

/** A root-owned directory. */
export function directoryEntry(path: string, mode: number, mtime: number): TarEntry {
  return { path: Buffer.from(path), type: "directory", mode, uid: 0, gid: 0, mtime, size: 0 };
}
