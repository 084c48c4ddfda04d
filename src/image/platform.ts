/** OCI platforms (`os/architecture[/variant]`). */
import { UsageError } from "../errors.js";

export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string;
}

const ARCH_ALIASES: Record<string, Platform> = {
  amd64: { os: "linux", architecture: "amd64" },
  x86_64: { os: "linux", architecture: "amd64" },
  x64: { os: "linux", architecture: "amd64" },
  "386": { os: "linux", architecture: "386" },
  i386: { os: "linux", architecture: "386" },
  ia32: { os: "linux", architecture: "386" },
  arm64: { os: "linux", architecture: "arm64" },
  aarch64: { os: "linux", architecture: "arm64" },
  arm: { os: "linux", architecture: "arm", variant: "v7" },
  armhf: { os: "linux", architecture: "arm", variant: "v7" },
  armel: { os: "linux", architecture: "arm", variant: "v6" },
  ppc64le: { os: "linux", architecture: "ppc64le" },
  ppc64: { os: "linux", architecture: "ppc64le" },
  s390x: { os: "linux", architecture: "s390x" },
  riscv64: { os: "linux", architecture: "riscv64" },
};

const KNOWN_VARIANTS: Record<string, readonly string[]> = {
  arm: ["v5", "v6", "v7", "v8"],
  arm64: ["v8", "v9"],
  amd64: ["v1", "v2", "v3", "v4"],
};

/** The platform of the machine mkbase runs on. */
export function hostPlatform(arch: string = process.arch): Platform {
  const platform = ARCH_ALIASES[arch];
  if (platform === undefined)
    throw new UsageError(`unsupported host architecture ${arch}`, { hint: "Pass --platform." });
  return platform;
}

/** Parses `os/arch[/variant]` (aliases such as `x86_64`, `aarch64`, `armhf` accepted). */
export function parsePlatform(text: string): Platform {
  const parts = text.trim().toLowerCase().split("/");
  const [os, arch, variant, ...rest] = parts;
  const hint = "Use os/arch[/variant], e.g. linux/amd64, linux/arm64 or linux/arm/v7.";
  if (os !== "linux" || arch === undefined || rest.length > 0) {
    throw new UsageError(`invalid platform "${text}": only linux/<arch>[/<variant>] images can be built`, {
      hint,
    });
  }
  const base = ARCH_ALIASES[arch];
  if (base === undefined)
    throw new UsageError(`unknown architecture "${arch}" in platform "${text}"`, { hint });
  if (variant === undefined) return base;
  if (!(KNOWN_VARIANTS[base.architecture] ?? []).includes(variant)) {
    throw new UsageError(`unknown variant "${variant}" for architecture ${base.architecture}`, { hint });
  }
  return { os: base.os, architecture: base.architecture, variant };
}

/** `linux/arm/v7` form. */
export function formatPlatform(platform: Platform): string {
  return [platform.os, platform.architecture, platform.variant].filter((p) => p !== undefined).join("/");
}
