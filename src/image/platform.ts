/**
 * OCI platforms (`os/architecture[/variant]`): the host's, and the ones users write on the command line
 * (`--platform linux/arm64`). Names follow the OCI image index specification (Go's GOARCH values).
 */
import { UsageError } from "../errors.js";

export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string;
}

/** Node's `process.arch` names in GOARCH spelling. */
const NODE_ARCHES: Readonly<Record<string, string>> = {
  x64: "amd64",
  ia32: "386",
  arm64: "arm64",
  arm: "arm",
  ppc64: "ppc64le",
  s390x: "s390x",
  riscv64: "riscv64",
  mips64el: "mips64le",
  loong64: "loong64",
};

/** The platform of the machine mkbase runs on. */
export function hostPlatform(arch: string = process.arch): Platform {
  const name = NODE_ARCHES[arch];
  if (name === undefined)
    throw new UsageError(`unsupported host architecture ${arch}`, { hint: "Pass --platform." });
  return parsePlatform(`linux/${name}`);
}

/** Architecture spellings people use, mapped to the GOARCH name and the variant they imply. */
const architectureAliases = new Map<string, { architecture: string; variant?: string }>([
  ["amd64", { architecture: "amd64" }],
  ["x86_64", { architecture: "amd64" }],
  ["x86-64", { architecture: "amd64" }],
  ["x64", { architecture: "amd64" }],
  ["386", { architecture: "386" }],
  ["i386", { architecture: "386" }],
  ["i486", { architecture: "386" }],
  ["i586", { architecture: "386" }],
  ["i686", { architecture: "386" }],
  ["x86", { architecture: "386" }],
  ["arm64", { architecture: "arm64" }],
  ["aarch64", { architecture: "arm64" }],
  ["arm", { architecture: "arm" }],
  // Debian's port names: armhf is ARMv7 hard-float, armel is ARMv5/v6 soft-float (Docker calls it arm/v6).
  ["armhf", { architecture: "arm", variant: "v7" }],
  ["armel", { architecture: "arm", variant: "v6" }],
  ["armv5", { architecture: "arm", variant: "v5" }],
  ["armv5l", { architecture: "arm", variant: "v5" }],
  ["armv6", { architecture: "arm", variant: "v6" }],
  ["armv6l", { architecture: "arm", variant: "v6" }],
  ["armv7", { architecture: "arm", variant: "v7" }],
  ["armv7l", { architecture: "arm", variant: "v7" }],
  ["armv7hl", { architecture: "arm", variant: "v7" }],
  ["armv8", { architecture: "arm", variant: "v8" }],
  ["armv8l", { architecture: "arm", variant: "v8" }],
  ["ppc64le", { architecture: "ppc64le" }],
  ["ppc64el", { architecture: "ppc64le" }],
  ["powerpc64le", { architecture: "ppc64le" }],
  ["s390x", { architecture: "s390x" }],
  ["riscv64", { architecture: "riscv64" }],
  // Ports Debian (mips64el, loong64) and Alpine (loongarch64) build, and the engine runs under qemu-user.
  ["mips64le", { architecture: "mips64le" }],
  ["mips64el", { architecture: "mips64le" }],
  ["loong64", { architecture: "loong64" }],
  ["loongarch64", { architecture: "loong64" }],
]);

/** Every spelling of `architecture` (a GOARCH name) that {@link parsePlatform} understands. */
export function spellingsOf(architecture: string): string[] {
  return [...architectureAliases]
    .filter(([, alias]) => alias.architecture === architecture)
    .map(([name]) => name);
}

const allowedVariants = new Map<string, readonly string[]>([
  ["amd64", ["v1", "v2", "v3", "v4"]],
  ["arm64", ["v8", "v8.0", "v8.1", "v8.2", "v8.3", "v8.4", "v8.5", "v8.6", "v8.7", "v8.8", "v8.9", "v9"]],
  ["arm", ["v5", "v6", "v7", "v8"]],
]);

/** What an architecture means without a variant: Docker and containerd fill in these. */
const defaultVariants = new Map<string, string>([
  ["amd64", "v1"],
  ["arm64", "v8"],
  ["arm", "v7"],
]);

/**
 * Parses `os/arch[/variant]` (or a bare `arch`, meaning linux) as given to `--platform`, normalising the
 * usual aliases: `x86_64` → amd64, `aarch64` → arm64, `armhf` → arm/v7, `armel` → arm/v6.
 * The default variant is filled in for arm64 (v8) and arm (v7), as the Docker Engine does.
 *
 * @throws UsageError when the text is not a platform mkbase can build
 */
export function parsePlatform(text: string): Platform {
  const hint = "write the platform as os/arch[/variant], e.g. linux/amd64, linux/arm64 or linux/arm/v7";
  // buildx takes `--platform linux/amd64,linux/arm64`; here one image is one platform.
  if (text.includes(",")) {
    throw new UsageError(`${JSON.stringify(text)} lists several platforms where one is expected`, {
      hint:
        "an image built from a rootfs or by a bootstrapper has one platform: run mkbase once per platform. " +
        "mkbase scratch builds a multi-platform index from one --platform OS/ARCH=BINARY per binary",
    });
  }
  const parts = text.trim().toLowerCase().split("/");
  if (parts.some((part) => part === "") || parts.length > 3) {
    throw new UsageError(`invalid platform ${JSON.stringify(text)}`, { hint });
  }
  const [first, second, third] = parts as [string, string?, string?];
  const os = second === undefined ? "linux" : first;
  const arch = second ?? first;
  if (os !== "linux") {
    throw new UsageError(`unsupported platform ${JSON.stringify(text)}: mkbase builds Linux images`, {
      hint,
    });
  }
  const alias = architectureAliases.get(arch);
  if (alias === undefined) {
    throw new UsageError(`unknown architecture ${JSON.stringify(arch)} in platform ${JSON.stringify(text)}`, {
      hint: `known architectures: ${[...new Set([...architectureAliases.values()].map((a) => a.architecture))].join(", ")}`,
    });
  }
  let variant = third ?? alias.variant;
  if (third !== undefined && alias.variant !== undefined && third !== alias.variant) {
    throw new UsageError(`platform ${JSON.stringify(text)} names two different variants`, { hint });
  }
  if (variant !== undefined) {
    const allowed = allowedVariants.get(alias.architecture) ?? [];
    if (!allowed.includes(variant)) {
      throw new UsageError(`unknown variant ${JSON.stringify(variant)} for ${alias.architecture}`, {
        hint:
          allowed.length === 0
            ? `${alias.architecture} has no variants; write linux/${alias.architecture}`
            : `variants of ${alias.architecture}: ${allowed.join(", ")}`,
      });
    }
  }
  // amd64/v1 is the baseline; write it the way images do, without a variant.
  if (alias.architecture === "amd64" && variant === "v1") variant = undefined;
  variant ??= alias.architecture === "amd64" ? undefined : defaultVariants.get(alias.architecture);
  return variant === undefined
    ? { os: "linux", architecture: alias.architecture }
    : { os: "linux", architecture: alias.architecture, variant };
}

/** `os/arch[/variant]`, the way `--platform` and `docker inspect` write it. */
export function formatPlatform(platform: Platform): string {
  const base = `${platform.os}/${platform.architecture}`;
  return platform.variant === undefined ? base : `${base}/${platform.variant}`;
}

/**
 * Whether two platforms name the same thing, treating an absent variant as the architecture's default
 * (`linux/arm64` matches `linux/arm64/v8`, `linux/arm` matches `linux/arm/v7`).
 */
export function platformsMatch(a: Platform, b: Platform): boolean {
  if (a.os !== b.os || a.architecture !== b.architecture) return false;
  const fallback = defaultVariants.get(a.architecture);
  return (a.variant ?? fallback) === (b.variant ?? fallback);
}
