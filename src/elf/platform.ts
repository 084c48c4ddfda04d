/**
 * The OCI platform an ELF program runs on. Architecture and variant names follow the OCI image index
 * specification, which uses Go's GOARCH values; parsing `--platform` lives in src/image/platform.ts.
 */
import { SourceError } from "../errors.js";
import type { Platform } from "../image/platform.js";
import { ElfMachine, type ElfInfo } from "./read.js";

export type { Platform };

/**
 * The platform an ELF program needs.
 *
 * @throws SourceError for machines that have no OCI platform (big-endian PowerPC64, 31-bit S/390, x32, …)
 */
export function platformOfElf(info: ElfInfo, name = "the program"): Platform {
  const is64 = info.class === 64;
  switch (info.machine) {
    case ElfMachine.x86_64:
      if (is64) return { os: "linux", architecture: "amd64" };
      break;
    case ElfMachine.i386:
      if (!is64) return { os: "linux", architecture: "386" };
      break;
    case ElfMachine.aarch64:
      if (is64 && info.endianness === "little") return { os: "linux", architecture: "arm64", variant: "v8" };
      break;
    case ElfMachine.arm:
      if (!is64 && info.endianness === "little") {
        return { os: "linux", architecture: "arm", variant: armVariant(info.armCpuArch) };
      }
      break;
    case ElfMachine.ppc64:
      if (is64 && info.endianness === "little") return { os: "linux", architecture: "ppc64le" };
      break;
    case ElfMachine.s390:
      if (is64) return { os: "linux", architecture: "s390x" };
      break;
    case ElfMachine.riscv:
      if (is64) return { os: "linux", architecture: "riscv64" };
      break;
  }
  const endian = info.endianness === "big" ? "big-endian" : "little-endian";
  return unsupported(`${name} is a ${info.class}-bit ${endian} ${info.machineName} program`, name);
}

function unsupported(what: string, name: string): never {
  throw new SourceError(`${what}, which has no OCI platform mkbase can build for`, {
    path: name,
    hint: "supported: linux/amd64, linux/386, linux/arm64, linux/arm (v6, v7, v8), linux/ppc64le, linux/s390x, linux/riscv64",
  });
}

/**
 * The OCI variant for a 32-bit ARM `Tag_CPU_arch` value (ARM IHI 0045). Without the attribute (stripped
 * section headers) the answer is v7: that is what armhf distributions target and what the Docker Engine
 * assumes for `arm` without a variant.
 */
function armVariant(cpuArch: number | undefined): string {
  if (cpuArch === undefined) return "v7";
  if (cpuArch <= 5) return "v5"; // pre-v4 … v5TEJ
  if (cpuArch === 10 || cpuArch === 13) return "v7"; // v7, v7E-M
  if (cpuArch >= 14) return "v8"; // v8-A, v8-R, v8-M and later
  return "v6"; // v6, v6KZ, v6T2, v6K, v6-M, v6S-M
}
