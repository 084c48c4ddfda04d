/**
 * The private temp dir a bootstrapper works in, and its mount-safe removal. Bootstrappers mount /proc,
 * /sys and /dev (often the host's, bound) inside the target; a recursive delete that runs while one of
 * them is still mounted deletes the host's files through it. So removal reads the mount table first,
 * unmounts everything below the dir deepest first, and refuses to delete while anything stays mounted.
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rename, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { ToolError, UsageError, errnoCode } from "../../errors.js";

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
  const under = parseMountPoints(mountinfo).filter((p) => p === base || p.startsWith(`${base}/`));
  // Stable sort by depth: for equal paths the later (upper) mount stays later, so reverse afterwards.
  return under
    .map((path, index) => ({ path, index, depth: path.split("/").length }))
    .sort((a, b) => b.depth - a.depth || b.index - a.index)
    .map((m) => m.path);
}

async function readMountInfo(): Promise<string> {
  return readFile("/proc/self/mountinfo", "utf8");
}

function runUmount(args: readonly string[]): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const child = spawn("umount", [...args], { stdio: "ignore" });
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
    if (!(await runUmount([mountPoint]))) await runUmount(["--lazy", mountPoint]);
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

/** A private (0700) temp dir holding the target root filesystem and the bootstrapper's other files. */
export class BootstrapWorkspace {
  /** The target root filesystem (`DIR/rootfs`, 0755 as the top of a root filesystem should be). */
  readonly rootfs: string;
  private disposed = false;

  private constructor(readonly dir: string) {
    this.rootfs = join(dir, "rootfs");
  }

  /** Makes a new private dir under the system temp dir (`TMPDIR`). */
  static async create(): Promise<BootstrapWorkspace> {
    // mkdtemp creates the directory 0700: other users cannot look into the tree while it is built.
    const dir = await mkdtemp(join(tmpdir(), "mkbase-bootstrap-"));
    const workspace = new BootstrapWorkspace(dir);
    await mkdir(workspace.rootfs, { mode: 0o755 });
    return workspace;
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
      const copied = await new Promise<boolean>((resolvePromise) => {
        const child = spawn("cp", ["-a", "--", this.rootfs, dest], { stdio: "ignore" });
        child.once("error", () => resolvePromise(false));
        child.once("exit", (code) => resolvePromise(code === 0));
      });
      if (!copied) {
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
