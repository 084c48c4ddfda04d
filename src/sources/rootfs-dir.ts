/**
 * `mkbase dir PATH`: a directory on disk, including `/` of a live system, as image entries.
 */
import { readFile, readdir, realpath, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { platformOfElf } from "../elf/platform.js";
import { inspectElfFile } from "../elf/read.js";
import { walkInRoot } from "../elf/resolve.js";
import { SourceError, errnoCode } from "../errors.js";
import type { Platform } from "../image/platform.js";
import type { ProgressListener } from "../progress.js";
import { TEMP_PREFIX, listedNames } from "../sinks/atomic-file.js";
import type { EntrySource, TarEntry } from "../tar/entry.js";
import type { PathFilter } from "../tar/exclude.js";
import { SYSTEM_RUNTIME_DIRS, walkTree } from "../tar/walk.js";
import { mountPointsUnder } from "./bootstrap/workspace.js";
import { isImageArchive } from "./image-archive.js";

export interface RootfsDirOptions {
  readonly path: string;
  readonly filter?: PathFilter;
  /**
   * Capture a live system: keep `/proc`, `/sys`, `/dev`, `/run`, `/tmp` as empty directories.
   * Implied when the path is `/`.
   */
  readonly system?: boolean;
  readonly crossMounts?: boolean;
  /**
   * Where the command's file outputs go (absolute paths, symlinks resolved). One inside the tree is left
   * out of it, with the temporary files written next to it, as GNU tar leaves out its own archive.
   */
  readonly outputs?: readonly string[];
  readonly onProgress: ProgressListener;
}

/** The mount points strictly below `realRoot`, relative to it; none where there is no mount table. */
async function mountPointsBelow(realRoot: string): Promise<Set<string>> {
  const table = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  const prefix = realRoot.endsWith("/") ? realRoot : `${realRoot}/`;
  return new Set(
    mountPointsUnder(realRoot, table)
      .filter((point) => point.length > prefix.length)
      .map((point) => point.slice(prefix.length)),
  );
}

/** How many names a warning lists before it says "and N more". */
const NAMES_IN_WARNING = 5;

export class RootfsDirSource implements EntrySource {
  readonly description: string;
  private readonly root: string;

  private constructor(
    private readonly options: RootfsDirOptions,
    /** The root with symlinks resolved, as the outputs' paths are. */
    private readonly realRoot: string,
    private readonly mountPoints: ReadonlySet<string>,
  ) {
    this.root = resolve(options.path);
    this.description = `directory ${options.path}`;
  }

  /** Checks that `path` is a readable directory before anything else starts. */
  static async open(options: RootfsDirOptions): Promise<RootfsDirSource> {
    let info;
    try {
      info = await stat(options.path);
    } catch (error) {
      const code = errnoCode(error);
      throw new SourceError(
        code === "ENOENT"
          ? `${options.path} does not exist`
          : `cannot read ${options.path}: ${(error as Error).message}`,
        {
          path: options.path,
          cause: error,
          hint:
            code === "ENOENT"
              ? "Check the path of the root filesystem directory."
              : "Run as a user who can read it (often root).",
        },
      );
    }
    if (!info.isDirectory()) {
      throw new SourceError(`${options.path} is not a directory`, {
        path: options.path,
        hint: "`mkbase dir` takes a root filesystem directory; use `mkbase tar` for a tarball or `mkbase scratch` for a single binary.",
      });
    }
    // An unreadable directory is reported by the walk, with its own advice.
    if (isImageArchive(new Set(await readdir(options.path).catch(() => [])))) {
      throw new SourceError(
        `${options.path} is a container image (an OCI layout or an unpacked docker save), not a root filesystem`,
        {
          path: options.path,
          hint: `Load it with \`skopeo copy oci:${options.path} docker-daemon:NAME:TAG\` (an unpacked docker save: \`tar -C ${options.path} -c . | docker load\`). To flatten an image into a rootfs, \`docker export\` a container made from it and give that to mkbase tar.`,
        },
      );
    }
    const realRoot = await realpath(options.path);
    return new RootfsDirSource(options, realRoot, await mountPointsBelow(realRoot));
  }

  /**
   * The platform of the tree's `/bin/sh` (symlinks followed inside the tree, as in a container), or
   * undefined when there is no such program or it is no ELF file mkbase knows.
   */
  async shellPlatform(): Promise<Platform | undefined> {
    const shell = await walkInRoot(this.root, "/bin/sh").catch(() => undefined);
    if (shell?.kind !== "file") return undefined;
    try {
      return platformOfElf(await inspectElfFile(join(this.root, shell.realPath)));
    } catch {
      // A shell script, a truncated file, a machine with no OCI platform: nothing to compare with.
      return undefined;
    }
  }

  /** Whether the walk leaves out the contents of the live-system runtime directories. */
  get isSystemCapture(): boolean {
    return this.options.system === true || this.root === "/";
  }

  /** The walk's {@link WalkOptions.leaveOut} for the outputs inside the tree, if any is. */
  private outputsInside(): ((full: Buffer) => boolean) | undefined {
    const real = this.realRoot.endsWith("/") ? this.realRoot : `${this.realRoot}/`;
    // The walk names paths from the root as given: an output is matched under that name.
    const inside = new Set(
      (this.options.outputs ?? [])
        .filter((output) => output.startsWith(real))
        .map((output) => join(this.root, output.slice(real.length))),
    );
    if (inside.size === 0) return undefined;
    const directories = new Set([...inside].map((output) => dirname(output)));
    return (full) => {
      const path = full.toString();
      return inside.has(path) || (basename(path).startsWith(TEMP_PREFIX) && directories.has(dirname(path)));
    };
  }

  *entries(signal: AbortSignal): Generator<TarEntry> {
    const sockets: string[] = [];
    const mounts: string[] = [];
    const outputs: string[] = [];
    const skipped = { socket: sockets, mount: mounts, output: outputs };
    yield* walkTree(this.root, {
      signal,
      filter: this.options.filter,
      contentsExcluded: this.isSystemCapture ? SYSTEM_RUNTIME_DIRS : [],
      crossMounts: this.options.crossMounts,
      mountPoints: this.mountPoints,
      leaveOut: this.outputsInside(),
      onSkip: (kind, path) => skipped[kind].push(path),
      onWarning: (message) => this.options.onProgress({ kind: "warning", message }),
    });
    // The temporary files are not worth a word: they exist only while this command writes them.
    const named = outputs.filter((path) => !basename(path).startsWith(TEMP_PREFIX));
    if (named.length > 0) {
      this.options.onProgress({
        kind: "warning",
        message: `left out ${listedNames(named, NAMES_IN_WARNING)}: ${named.length === 1 ? "an output" : "outputs"} of this command inside the tree`,
      });
    }
    if (sockets.length > 0) {
      this.options.onProgress({
        kind: "warning",
        message: `skipped ${sockets.length} socket${sockets.length === 1 ? "" : "s"} (an image cannot hold one): ${listedNames(sockets, NAMES_IN_WARNING)}`,
      });
    }
    const otherMounts = this.isSystemCapture
      ? mounts.filter((m) => !SYSTEM_RUNTIME_DIRS.includes(m))
      : mounts;
    if (otherMounts.length > 0) {
      this.options.onProgress({
        kind: "warning",
        message: `did not descend into other filesystems mounted at ${listedNames(otherMounts, NAMES_IN_WARNING)} (use --cross-mounts to include them)`,
      });
    }
  }
}
