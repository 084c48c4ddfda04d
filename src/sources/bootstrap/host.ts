/**
 * Facts about the machine that decide how a bootstrap runs: its dpkg architecture, whether a foreign
 * architecture's programs can run here (qemu-user through binfmt_misc), and the image platform that an
 * architecture name means.
 */
import { access } from "node:fs/promises";
import { ToolError, UsageError } from "../../errors.js";
import { parsePlatform, type Platform } from "../../image/platform.js";

/** Node's `process.arch` in dpkg's spelling. */
const DPKG_ARCH_OF_NODE: Readonly<Record<string, string>> = {
  x64: "amd64",
  ia32: "i386",
  arm64: "arm64",
  arm: "armhf",
  ppc64: "ppc64el",
  s390x: "s390x",
  riscv64: "riscv64",
};

/** The dpkg architecture of this machine. */
export function hostDpkgArchitecture(arch: string = process.arch): string {
  const name = DPKG_ARCH_OF_NODE[arch];
  if (name === undefined)
    throw new UsageError(`unsupported host architecture ${arch}`, { hint: "Pass --arch." });
  return name;
}

/** dpkg / pacman / apk architecture names → OCI platform. */
const PLATFORM_OF_ARCH: Readonly<Record<string, string>> = {
  amd64: "linux/amd64",
  x86_64: "linux/amd64",
  arm64: "linux/arm64",
  aarch64: "linux/arm64",
  armhf: "linux/arm/v7",
  armv7: "linux/arm/v7",
  armel: "linux/arm/v5",
  i386: "linux/386",
  x86: "linux/386",
  ppc64el: "linux/ppc64le",
  ppc64le: "linux/ppc64le",
  s390x: "linux/s390x",
  riscv64: "linux/riscv64",
  mips64el: "linux/mips64le",
};

/** The image platform of a distribution architecture name. */
export function platformOfArchitecture(arch: string): Platform {
  const text = PLATFORM_OF_ARCH[arch];
  if (text === undefined) throw new UsageError(`unknown architecture ${JSON.stringify(arch)}`);
  return parsePlatform(text);
}

/** qemu's name for an architecture, as in `/proc/sys/fs/binfmt_misc/qemu-NAME`. */
const QEMU_NAME: Readonly<Record<string, string>> = {
  amd64: "x86_64",
  arm64: "aarch64",
  armhf: "arm",
  armel: "arm",
  i386: "i386",
  ppc64el: "ppc64le",
  s390x: "s390x",
  riscv64: "riscv64",
  mips64el: "mips64el",
  loong64: "loongarch64",
};

/** Whether programs of `arch` run on this machine without emulation. */
export function runsNatively(arch: string, host: string = hostDpkgArchitecture()): boolean {
  return arch === host || (host === "amd64" && arch === "i386") || (host === "arm64" && arch === "armhf");
}

/**
 * Throws unless programs of `arch` can run here: natively, or through a registered qemu-user binfmt
 * handler (maintainer scripts run inside the foreign tree).
 *
 * @param arch dpkg's name of the architecture
 * @param shownAs the name the user gave (Alpine's `armv7` is dpkg's `armhf`, its `armhf` dpkg's `armel`)
 */
export async function requireEmulation(
  arch: string,
  binfmtDir = "/proc/sys/fs/binfmt_misc",
  shownAs = arch,
): Promise<void> {
  if (runsNatively(arch)) return;
  const qemu = QEMU_NAME[arch];
  const registered =
    qemu !== undefined &&
    (await access(`${binfmtDir}/qemu-${qemu}`).then(
      () => true,
      () => false,
    ));
  if (!registered) {
    throw new ToolError(
      `programs for ${shownAs} cannot run on this machine (no qemu-${qemu ?? arch} binfmt handler)`,
      {
        hint: "Install the Debian package qemu-user-static (apt-get install qemu-user-static) and make sure binfmt_misc is mounted and the handler registered.",
      },
    );
  }
}
