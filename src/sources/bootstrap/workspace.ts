/**
 * The private temp dir a bootstrapper works in, and its mount-safe removal. Bootstrappers mount /proc,
 * /sys and /dev (often the host's, bound) inside the target; a recursive delete that runs while one of
 * them is still mounted deletes the host's files through it. So removal reads the mount table first,
 * unmounts everything below the dir deepest first, and refuses to delete while anything stays mounted.
 */
import { spawn, spawnSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { mkdir, readFile, rename, rm, stat, statfs } from "node:fs/promises";
import { freemem, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { ToolError, UsageError, errnoCode } from "../../errors.js";
import { makePrivateDirectory, onForcedExit } from "../../forced-exit.js";
import { formatBytes } from "../../progress.js";

/** The mount points listed in a `/proc/PID/mountinfo` text, octal escapes decoded. */
export function parseMountPoints(mountinfo: string): string[] {
  const points: string[] = [];
  for (const line of mountinfo.split("\n")) {
    // Field 5 is the mount point; space, tab, newline and backslash are written as \ooo.
    const field = line.split(" ")[4];
    if (field === undefined) continue;
    points.push(
      field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))),
    );
  }
  return points;
}

/**
 * The mount points at or below `dir` in `mountinfo`, deepest first (the order they must be unmounted
 * in; the same path mounted twice is listed twice, and stacked mounts come off the top first).
 */
export function mountPointsUnder(dir: string, mountinfo: string): string[] {
  const base = resolve(dir);
  const prefix = base.endsWith("/") ? base : `${base}/`;
  const under = parseMountPoints(mountinfo).filter((p) => p === base || p.startsWith(prefix));
  // Stable sort by depth: for equal paths the later (upper) mount stays later, so reverse afterwards.
  return under
    .map((path, index) => ({ path, index, depth: path.split("/").length }))
    .sort((a, b) => b.depth - a.depth || b.index - a.index)
    .map((m) => m.path);
}

async function readMountInfo(): Promise<string> {
  return readFile("/proc/self/mountinfo", "utf8");
}

/** Runs a command with no output of interest; true when it exited 0. */
export function succeeds(command: string, args: readonly string[]): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const child = spawn(command, [...args], { stdio: "ignore" });
    child.once("error", () => resolvePromise(false));
    child.once("exit", (code) => resolvePromise(code === 0));
  });
}

/**
 * Unmounts everything mounted at or below `dir`, deepest first. A mount that is busy is detached lazily:
 * once detached it is no longer reachable through `dir`, which is all a later delete needs.
 *
 * @throws ToolError when something is still mounted below `dir` afterwards.
 */
export async function unmountUnder(dir: string): Promise<void> {
  for (const mountPoint of mountPointsUnder(dir, await readMountInfo())) {
    if (!(await succeeds("umount", [mountPoint]))) await succeeds("umount", ["--lazy", mountPoint]);
  }
  const remaining = mountPointsUnder(dir, await readMountInfo());
  if (remaining.length > 0) {
    throw new ToolError(`still mounted below ${dir}: ${remaining.join(", ")}`, {
      hint: `Unmount them by hand (umount PATH) before removing ${dir}; mkbase left it in place.`,
    });
  }
}

/**
 * Removes `dir` recursively after {@link unmountUnder}: never while anything below it is mounted, so the
 * host's `/dev` or `/proc` can never be deleted through a bind mount.
 */
export async function removeSafely(dir: string): Promise<void> {
  await unmountUnder(dir);
  await rm(dir, { recursive: true, force: true });
}

/**
 * {@link removeSafely} for a forced exit, synchronous: every mount is detached lazily at once (a
 * bootstrapper killed a moment ago may still hold it), and the dir is deleted only when nothing below it
 * is mounted any more.
 */
function removeSafelyNow(dir: string): void {
  for (const mountPoint of mountPointsUnder(dir, readFileSync("/proc/self/mountinfo", "utf8"))) {
    spawnSync("umount", ["--lazy", mountPoint], { stdio: "ignore" });
  }
  const remaining = mountPointsUnder(dir, readFileSync("/proc/self/mountinfo", "utf8"));
  if (remaining.length > 0) throw new Error(`still mounted: ${remaining.join(", ")}`);
  rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
}

/** `--tmpfs`: whether the tree is built in memory, on a private tmpfs mounted over the workspace. */
export type TmpfsChoice = "auto" | "always" | "never";

/** What decides where the workspace lives. */
export interface WorkspaceFacts {
  readonly root: boolean;
  /** Memory the process may still use: free memory, or its cgroup's limit when that is lower. */
  readonly memoryBytes: number;
  /** TMPDIR is a tmpfs already: the tree is in memory without a mount of ours. */
  readonly tmpdirInMemory: boolean;
}

/** Where the workspace lives: `tmpfsBytes` set means a tmpfs of that size is mounted over it. */
export interface WorkspacePlan {
  readonly tmpfsBytes: number | undefined;
  /** `--tmpfs always`: a failed mount is an error, not a reason to work on disk. */
  readonly tmpfsRequired: boolean;
  /** For the plan and the progress display. */
  readonly description: string;
}

/** The workspace as a plain directory in TMPDIR. */
function diskPlan(note = ""): WorkspacePlan {
  return { tmpfsBytes: undefined, tmpfsRequired: false, description: `on disk, in ${tmpdir()}${note}` };
}

/**
 * Auto mounts a tmpfs only when it can hold at least this much. A bookworm minbase tree is 200 MB, a
 * `standard` one about 1 GB; below this the disk is the safer place.
 */
const AUTO_TMPFS_MIN_BYTES = 2 * 1024 * 1024 * 1024;

const TMPFS_MAGIC = 0x01021994;

/**
 * Where the tree is built. dpkg, pacman and apk write every file with fsync and rename; on a tmpfs a
 * bookworm minbase mmdebstrap run takes 9 s instead of 15-18 s on this disk. The tmpfs may fill half of the
 * memory left (it takes only what the tree uses); auto falls back to the disk when that is under 2 GiB
 * or mkbase is not root (mounting needs it).
 */
export function planWorkspace(choice: TmpfsChoice, facts: WorkspaceFacts): WorkspacePlan {
  if (facts.tmpdirInMemory) {
    return { tmpfsBytes: undefined, tmpfsRequired: false, description: `in memory (${tmpdir()} is a tmpfs)` };
  }
  if (choice === "never") return diskPlan();
  // Whole MiB: the size is given to mount(8) as `size=Nm`.
  const size = Math.floor(facts.memoryBytes / 2 / 1024 / 1024) * 1024 * 1024;
  if (choice === "always" && !facts.root) {
    throw new UsageError("--tmpfs always needs root: mounting a tmpfs is a privileged operation", {
      hint: "Run mkbase as root, or use --tmpfs never.",
    });
  }
  if (choice === "auto" && (!facts.root || size < AUTO_TMPFS_MIN_BYTES)) return diskPlan();
  return {
    tmpfsBytes: size,
    tmpfsRequired: choice === "always",
    description: `in memory, on a private tmpfs of up to ${formatBytes(size)}`,
  };
}

/** The facts of this machine for {@link planWorkspace}. */
export async function workspaceFacts(): Promise<WorkspaceFacts> {
  // No cgroup limit reads as a huge number (or 0 on some kernels): only a real limit counts.
  const limit = process.constrainedMemory();
  const memoryBytes = limit > 0 ? Math.min(freemem(), limit) : freemem();
  const tmpdirInMemory = await statfs(tmpdir()).then(
    (info) => info.type === TMPFS_MAGIC,
    () => false,
  );
  return { root: process.geteuid?.() === 0, memoryBytes, tmpdirInMemory };
}

/** A private (0700) temp dir holding the target root filesystem and the bootstrapper's other files. */
export class BootstrapWorkspace {
  /** The target root filesystem (`DIR/rootfs`, 0755 as the top of a root filesystem should be). */
  readonly rootfs: string;
  private disposed = false;
  private readonly forgetUndo: () => void;

  private constructor(
    readonly dir: string,
    /** Where it ended up: a tmpfs that could not be mounted under auto leaves it on disk. */
    readonly plan: WorkspacePlan,
  ) {
    this.rootfs = join(dir, "rootfs");
    this.forgetUndo = onForcedExit(dir, () => removeSafelyNow(dir));
  }

  /**
   * Makes a new private dir under the system temp dir (`TMPDIR`), with a tmpfs mounted over it when the
   * plan says so. Disposing unmounts it with everything else mounted below the dir.
   */
  static async create(plan: WorkspacePlan = diskPlan()): Promise<BootstrapWorkspace> {
    // Private (0700): other users cannot look into the tree while it is built.
    const dir = await makePrivateDirectory("mkbase-bootstrap-");
    let workspace = new BootstrapWorkspace(dir, plan);
    try {
      if (plan.tmpfsBytes !== undefined) {
        const options = `mode=0700,size=${plan.tmpfsBytes / 1024 / 1024}m`;
        if (!(await succeeds("mount", ["-t", "tmpfs", "-o", options, "mkbase", dir]))) {
          if (plan.tmpfsRequired) {
            throw new ToolError(`could not mount a tmpfs on ${dir}`, {
              hint: "Run where mounting is allowed (a container needs CAP_SYS_ADMIN), or use --tmpfs never.",
            });
          }
          workspace.forgetUndo();
          workspace = new BootstrapWorkspace(dir, diskPlan(" (a tmpfs could not be mounted)"));
        }
      }
      await mkdir(workspace.rootfs, { mode: 0o755 });
    } catch (error) {
      await workspace.dispose();
      throw error;
    }
    return workspace;
  }

  /**
   * True when the filesystem the workspace is on (its own tmpfs, or TMPDIR's) has (almost) no room left:
   * a bootstrapper's failure then most likely means the tree did not fit. The tools rarely say so
   * themselves: debootstrap writes "No space left on device" only into its log inside the tree.
   */
  async isFull(): Promise<boolean> {
    const info = await statfs(this.dir).catch(() => undefined);
    if (info === undefined) return false;
    // What a failed package install leaves free: less than 64 MiB, or 5 % of a small filesystem. The
    // blocks reserved for root count as free: the bootstrappers run as root and write into them.
    const nearlyFull = Math.min(64 * 1024 * 1024, info.blocks * info.bsize * 0.05);
    return info.bfree * info.bsize < nearlyFull;
  }

  /** A path for a helper file or directory next to the rootfs. */
  path(name: string): string {
    return join(this.dir, name);
  }

  /**
   * Moves the finished rootfs to `dest` (which must not exist yet) instead of deleting it: a rename on the
   * same filesystem, a faithful copy otherwise.
   */
  async keepRootfs(dest: string): Promise<void> {
    await unmountUnder(this.rootfs);
    try {
      await rename(this.rootfs, dest);
    } catch (error) {
      if (errnoCode(error) !== "EXDEV") throw error;
      // GNU cp -a keeps owners, devices, hardlinks and xattrs; node's fs.cp keeps none of them.
      if (!(await succeeds("cp", ["-a", "--", this.rootfs, dest]))) {
        throw new ToolError(`could not copy the root filesystem to ${dest}`, {
          hint: "Check free space and permissions there, or give a --keep-rootfs path on the same filesystem as TMPDIR.",
        });
      }
    }
  }

  /** Unmounts what the bootstrapper left below the dir and removes it; safe to call twice. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    await removeSafely(this.dir);
    this.disposed = true;
    this.forgetUndo();
  }
}

/** Checks a `--keep-rootfs DIR` before any work: DIR must not exist, its parent must. */
export async function checkKeepRootfsTarget(dest: string): Promise<string> {
  const full = resolve(dest);
  const exists = await stat(full).then(
    () => true,
    (error: unknown) => (errnoCode(error) === "ENOENT" ? false : Promise.reject(error)),
  );
  if (exists) {
    throw new UsageError(`--keep-rootfs ${dest}: already exists`, {
      hint: "Name a directory that does not exist yet; mkbase creates it.",
    });
  }
  const parent = await stat(dirname(full)).catch(() => undefined);
  if (parent?.isDirectory() !== true) {
    throw new UsageError(`--keep-rootfs ${dest}: ${dirname(full)} is not a directory`);
  }
  return full;
}
