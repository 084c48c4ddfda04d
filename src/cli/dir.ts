/** `mkbase dir PATH`: a root filesystem directory (or a live system's `/`) into an image. */
import { realpath } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import type { Command } from "commander";
import { formatPlatform } from "../image/platform.js";
import {
  CHOWN_HELP,
  addImageOptions,
  parseChown,
  platformFromFlags,
  type ImageFlags,
} from "./image-options.js";
import type { CommandContext } from "./run-build.js";

interface DirFlags extends ImageFlags {
  readonly system?: boolean;
  readonly crossMounts?: boolean;
  readonly chown?: string;
}

/**
 * Where the file outputs go, symlinks resolved (an output that does not exist yet: its directory), so
 * that the walk can leave out one that lies inside the tree. Called once the outputs were checked.
 */
async function outputPaths(flags: ImageFlags): Promise<string[]> {
  const { parseOutputs } = await import("./outputs.js");
  const paths: string[] = [];
  for (const spec of parseOutputs(flags.output, flags.push)) {
    if (!("dest" in spec) || spec.dest === undefined || spec.dest === "-") continue;
    const dest = spec.dest;
    paths.push(
      await realpath(dest).catch(async () =>
        join(await realpath(dirname(dest)).catch(() => resolve(dirname(dest))), basename(dest)),
      ),
    );
  }
  return paths;
}

export function registerDirCommand(
  program: Command,
  context: () => CommandContext,
  done: (code: number) => void,
): void {
  const command = program
    .command("dir")
    .argument("<path>", "root filesystem directory (use / to capture this system)")
    .summary("build an image from a root filesystem directory")
    .description(
      "Build an image from a root filesystem directory. The tree is walked in sorted order and packed faithfully: " +
        "files, directories, symlinks (never followed), hardlinks, devices, FIFOs, setuid/setgid/sticky bits, any " +
        "uid/gid, xattrs such as file capabilities, long and non-UTF-8 names. Sockets are skipped with a warning.\n\n" +
        "With / (or --system) the contents of /proc, /sys, /dev, /run and /tmp are left out, and other mounted " +
        "filesystems are not crossed unless --cross-mounts is given.",
    )
    .option(
      "--system",
      "treat PATH as a live system: keep /proc, /sys, /dev, /run, /tmp empty (implied for /)",
    )
    .option("--cross-mounts", "descend into filesystems mounted below PATH")
    .option("--chown <uid[:gid]>", CHOWN_HELP);
  addImageOptions(command)
    .addHelpText(
      "after",
      `
Examples:
  mkbase dir ./rootfs -t corp/base:1.0 --cmd /bin/sh
  sudo mkbase dir / -t snapshot:today --exclude var/lib/docker
  IMAGE_ID=$(mkbase dir ./rootfs -t x:1 --quiet)
  mkbase dir ./rootfs -t x:1 --via import -c 'ENV LANG=C.UTF-8' -m "nightly"
  mkbase dir ./rootfs-built-in-ci -t x:1 --chown 0:0
  mkbase dir ./rootfs -t x:1 -o type=docker,dest=- | ssh builder docker load`,
    )
    .action(async (path: string, flags: DirFlags) => {
      const { runBuild } = await import("./run-build.js");
      const { RootfsDirSource } = await import("../sources/rootfs-dir.js");
      const { loadPathFilter } = await import("../tar/exclude.js");
      const { withOwner } = await import("../tar/normalize.js");
      const owner = flags.chown === undefined ? undefined : parseChown(flags.chown, undefined);
      const filter = await loadPathFilter(flags.exclude, flags.excludeFrom);
      done(
        await runBuild(
          context(),
          flags,
          async (onProgress) => {
            const source = await RootfsDirSource.open({
              path,
              filter,
              system: flags.system,
              crossMounts: flags.crossMounts,
              outputs: await outputPaths(flags),
              onProgress,
            });
            // A tree for another machine, recorded as this one's, fails only when a container starts.
            // Only the architecture decides: a program does not say which amd64 level (v2, v3) or
            // arm64 version it needs, and the kernel runs it whatever variant the image claims.
            const recorded = platformFromFlags(flags);
            const shell = await source.shellPlatform();
            if (shell !== undefined && shell.architecture !== recorded.architecture) {
              const whose = flags.platform === undefined ? " (this machine's)" : "";
              onProgress({
                kind: "warning",
                message: `${path}/bin/sh is a ${formatPlatform(shell)} program, but the image is recorded as ${formatPlatform(recorded)}${whose}: its containers would fail with "exec format error". Pass --platform ${formatPlatform(shell)} if the tree is for that platform.`,
              });
            }
            return owner === undefined ? source : withOwner(source, owner);
          },
          "mkbase dir",
        ),
      );
    });
}
