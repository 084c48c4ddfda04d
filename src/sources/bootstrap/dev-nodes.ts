/**
 * The minimal `/dev` of a container root filesystem, as the Arch image script makes it with mknod. The
 * nodes are added as tar entries rather than created on disk: node's fs has no mknod, and the image is
 * what needs them (the engine mounts a tmpfs over /dev at run time anyway, so they matter for tools that
 * read the image, such as chroot-based builders).
 */
import type { EntrySource, TarEntry } from "../../tar/entry.js";

interface NodeSpec {
  readonly name: string;
  readonly type: "char" | "directory" | "symlink" | "fifo";
  readonly mode: number;
  readonly major?: number;
  readonly minor?: number;
  readonly target?: string;
}

/** Sorted by name, the order they follow `dev` in the archive. */
export const DEV_NODES: readonly NodeSpec[] = [
  { name: "console", type: "char", mode: 0o600, major: 5, minor: 1 },
  { name: "fd", type: "symlink", mode: 0o777, target: "/proc/self/fd" },
  { name: "full", type: "char", mode: 0o666, major: 1, minor: 7 },
  { name: "initctl", type: "fifo", mode: 0o600 },
  { name: "null", type: "char", mode: 0o666, major: 1, minor: 3 },
  { name: "ptmx", type: "char", mode: 0o666, major: 5, minor: 2 },
  { name: "pts", type: "directory", mode: 0o755 },
  { name: "random", type: "char", mode: 0o666, major: 1, minor: 8 },
  { name: "shm", type: "directory", mode: 0o1777 },
  { name: "stderr", type: "symlink", mode: 0o777, target: "/proc/self/fd/2" },
  { name: "stdin", type: "symlink", mode: 0o777, target: "/proc/self/fd/0" },
  { name: "stdout", type: "symlink", mode: 0o777, target: "/proc/self/fd/1" },
  { name: "tty", type: "char", mode: 0o666, major: 5, minor: 0 },
  { name: "tty0", type: "char", mode: 0o666, major: 4, minor: 0 },
  { name: "urandom", type: "char", mode: 0o666, major: 1, minor: 9 },
  { name: "zero", type: "char", mode: 0o666, major: 1, minor: 5 },
];

function nodeEntry(spec: NodeSpec, mtime: number): TarEntry {
  const base = { path: Buffer.from(`dev/${spec.name}`), mode: spec.mode, uid: 0, gid: 0, mtime, size: 0 };
  switch (spec.type) {
    case "char":
      return { ...base, type: "char", devmajor: spec.major ?? 0, devminor: spec.minor ?? 0 };
    case "symlink":
      return { ...base, type: "symlink", linkname: Buffer.from(spec.target ?? "") };
    default:
      return { ...base, type: spec.type };
  }
}

const DEV = Buffer.from("dev");

function* withNodes(entry: TarEntry): Generator<TarEntry> {
  yield entry;
  if (entry.type === "directory" && entry.path.equals(DEV)) {
    for (const spec of DEV_NODES) yield nodeEntry(spec, entry.mtime);
  }
}

/**
 * Wraps a source whose `dev` directory is empty and adds the minimal node set right after it, keeping
 * the archive sorted (an empty `dev` is followed directly by the next top-level name).
 */
export class DevNodesSource implements EntrySource {
  readonly description: string;

  constructor(private readonly inner: EntrySource) {
    this.description = inner.description;
  }

  /** Stays synchronous when the inner source is (the packer is faster on synchronous sources). */
  entries(signal: AbortSignal): Iterable<TarEntry> | AsyncIterable<TarEntry> {
    const inner = this.inner.entries(signal);
    if (Symbol.asyncIterator in inner) {
      return (async function* () {
        for await (const entry of inner) yield* withNodes(entry);
      })();
    }
    return (function* () {
      for (const entry of inner) yield* withNodes(entry);
    })();
  }
}
