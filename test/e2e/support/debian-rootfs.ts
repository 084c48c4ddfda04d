/**
 * A real Debian root filesystem for end-to-end tests, built once per machine with
 * `debootstrap --variant=minbase bookworm` and kept under the temp dir. debootstrap picks its own
 * default mirror: no archive host is named here.
 */
import { readFile, mkdir, mkdtemp, rename, rm, chmod, access } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { errnoCode } from "../../../src/errors.js";
import { describeResult, runCommand } from "./cli.js";

/** Where the finished rootfs is kept between test runs. Tests must treat it as read-only. */
export const debianRootfsCacheDir: string = join(tmpdir(), "mkbase-test-cache", "bookworm-minbase");

let building: Promise<string> | undefined;

/**
 * The path of a `debootstrap --variant=minbase bookworm` rootfs, building it on first use (about 30 s
 * with network access to the Debian archive). The build runs in a sibling temp dir that is renamed into
 * place only when debootstrap succeeded, so an interrupted build is never taken for a finished one.
 * Throws with debootstrap's output (and its log) when it fails; nothing is skipped.
 */
export function debianRootfs(): Promise<string> {
  building ??= findOrBuild().catch((error: unknown) => {
    building = undefined;
    throw error;
  });
  return building;
}

async function findOrBuild(): Promise<string> {
  if (await isComplete(debianRootfsCacheDir)) return debianRootfsCacheDir;
  const parent = join(debianRootfsCacheDir, "..");
  await mkdir(parent, { recursive: true });
  const partial = await mkdtemp(join(parent, "bookworm-minbase.partial-"));
  try {
    const result = await runCommand("debootstrap", ["--variant=minbase", "bookworm", partial], {
      timeoutMs: 20 * 60_000,
    });
    if (result.code !== 0) {
      const log = await readFile(join(partial, "debootstrap", "debootstrap.log"), "utf8").catch(() => "");
      throw new Error(
        `debootstrap --variant=minbase bookworm failed: ${describeResult(result)}\n--- debootstrap.log ---\n${log}`,
      );
    }
    // mkdtemp made the directory 0700; a root filesystem's top directory is 0755.
    await chmod(partial, 0o755);
    try {
      await rename(partial, debianRootfsCacheDir);
    } catch (error) {
      // Another process finished first: its tree is as good as ours.
      const code = errnoCode(error);
      if ((code !== "ENOTEMPTY" && code !== "EEXIST") || !(await isComplete(debianRootfsCacheDir)))
        throw error;
      await removeBuildDir(partial);
    }
    return debianRootfsCacheDir;
  } catch (error) {
    await removeBuildDir(partial).catch(() => undefined);
    throw error;
  }
}

/** A finished tree has a dpkg status file; only a completed build is ever renamed to the cache path. */
async function isComplete(dir: string): Promise<boolean> {
  try {
    await access(join(dir, "var", "lib", "dpkg", "status"));
    return true;
  } catch {
    return false;
  }
}

/**
 * Removes a build dir, first unmounting what debootstrap may have left mounted inside it (a killed run
 * can leave /proc or /sys mounted in the target), deepest first, so the removal never goes through a
 * mount into the host's own files. Refuses to remove anything while a mount remains.
 */
async function removeBuildDir(dir: string): Promise<void> {
  const mounted = (await mountPointsUnder(dir)).sort((a, b) => b.length - a.length);
  for (const mountPoint of mounted) {
    await runCommand("umount", [mountPoint]);
  }
  const remaining = await mountPointsUnder(dir);
  if (remaining.length > 0) {
    throw new Error(`not removing ${dir}: still mounted inside it: ${remaining.join(", ")}`);
  }
  await rm(dir, { recursive: true, force: true });
}

/** Mount points at or below `dir`, from `/proc/self/mountinfo`. */
export async function mountPointsUnder(dir: string): Promise<string[]> {
  const mountinfo = await readFile("/proc/self/mountinfo", "utf8");
  const points: string[] = [];
  for (const line of mountinfo.split("\n")) {
    // Field 5 is the mount point, with space, tab, newline and backslash written as octal escapes.
    const field = line.split(" ")[4];
    if (field === undefined) continue;
    const mountPoint = field.replace(/\\([0-7]{3})/g, (_, octal: string) =>
      String.fromCharCode(parseInt(octal, 8)),
    );
    if (mountPoint === dir || mountPoint.startsWith(`${dir}/`)) points.push(mountPoint);
  }
  return points;
}
