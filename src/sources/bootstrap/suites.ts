/**
 * Debian and Ubuntu suites: which distribution a codename or alias belongs to, and what that implies
 * (keyring, components, architectures, where the mirror comes from). No archive host is named here:
 * Debian builds use the bootstrapper's default mirror or the machine's apt sources, Ubuntu builds need
 * `--mirror` or an Ubuntu entry in the machine's apt sources.
 */
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { UsageError, errnoCode } from "../../errors.js";

export type DebianFamily = "debian" | "ubuntu";

export interface SuiteInfo {
  readonly family: DebianFamily;
  /** The name given, passed to the tool unchanged (an alias stays an alias: the archive resolves it). */
  readonly suite: string;
  /** Release version where the codename fixes one (`12` for bookworm), for the plan and labels. */
  readonly version?: string;
}

export interface FamilyDefaults {
  readonly displayName: string;
  /** Keyring files tried in order. */
  readonly keyrings: readonly string[];
  /** The Debian package that installs the keyring. */
  readonly keyringPackage: string;
  readonly components: readonly string[];
  readonly architectures: ReadonlySet<string>;
}

export const FAMILY_DEFAULTS: Readonly<Record<DebianFamily, FamilyDefaults>> = {
  debian: {
    displayName: "Debian",
    keyrings: [
      "/usr/share/keyrings/debian-archive-keyring.pgp",
      "/usr/share/keyrings/debian-archive-keyring.gpg",
    ],
    keyringPackage: "debian-archive-keyring",
    components: ["main"],
    architectures: new Set([
      "amd64",
      "arm64",
      "armel",
      "armhf",
      "i386",
      "mips64el",
      "ppc64el",
      "riscv64",
      "s390x",
    ]),
  },
  ubuntu: {
    displayName: "Ubuntu",
    keyrings: ["/usr/share/keyrings/ubuntu-archive-keyring.gpg"],
    keyringPackage: "ubuntu-keyring",
    components: ["main"],
    // amd64 and i386 live on the main archive, the others on the ports archive: the mirror tells which.
    architectures: new Set(["amd64", "arm64", "armhf", "i386", "ppc64el", "riscv64", "s390x"]),
  },
};

const DEBIAN_CODENAMES: Readonly<Record<string, string | undefined>> = {
  jessie: "8",
  stretch: "9",
  buster: "10",
  bullseye: "11",
  bookworm: "12",
  trixie: "13",
  forky: "14",
  duke: "15",
  sid: undefined,
};
const DEBIAN_ALIASES = ["oldoldstable", "oldstable", "stable", "testing", "unstable"];

const UBUNTU_CODENAMES: Readonly<Record<string, string>> = {
  xenial: "16.04",
  bionic: "18.04",
  focal: "20.04",
  jammy: "22.04",
  lunar: "23.04",
  mantic: "23.10",
  noble: "24.04",
  oracular: "24.10",
  plucky: "25.04",
  questing: "25.10",
  resolute: "26.04",
};

/** Looks up a suite; unknown names are a usage error listing what is known. */
export function lookupSuite(name: string): SuiteInfo {
  if (Object.hasOwn(DEBIAN_CODENAMES, name)) {
    const version = DEBIAN_CODENAMES[name];
    return { family: "debian", suite: name, ...(version === undefined ? {} : { version }) };
  }
  if (DEBIAN_ALIASES.includes(name)) return { family: "debian", suite: name };
  const ubuntu = UBUNTU_CODENAMES[name];
  if (ubuntu !== undefined) return { family: "ubuntu", suite: name, version: ubuntu };
  throw new UsageError(`unknown suite ${JSON.stringify(name)}`, {
    hint: `Give a Debian codename or alias (${[...Object.keys(DEBIAN_CODENAMES), ...DEBIAN_ALIASES].join(", ")}) or an Ubuntu codename (${Object.keys(UBUNTU_CODENAMES).join(", ")}).`,
  });
}

/** Checks `arch` against the family's architectures (dpkg names). */
export function checkArchitecture(arch: string, family: DebianFamily): void {
  const defaults = FAMILY_DEFAULTS[family];
  if (defaults.architectures.has(arch)) return;
  throw new UsageError(`unknown architecture ${JSON.stringify(arch)} for ${defaults.displayName}`, {
    hint: `Use one of ${[...defaults.architectures].join(", ")} (dpkg's names: amd64, arm64, armhf…).`,
  });
}

/** One `deb` entry of the machine's apt sources. */
export interface AptSource {
  readonly uri: string;
  readonly suites: readonly string[];
}

/** The `deb` entries of a one-line-style `sources.list`. */
export function parseOneLineSources(text: string): AptSource[] {
  const sources: AptSource[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*$/, "").trim();
    // deb [options] uri suite [component...]
    const match = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
    if (match !== null) sources.push({ uri: match[1] as string, suites: [match[2] as string] });
  }
  return sources;
}

/** The `Types: deb` stanzas of a deb822 `.sources` file. */
export function parseDeb822Sources(text: string): AptSource[] {
  const sources: AptSource[] = [];
  const withoutComments = text
    .split("\n")
    .filter((line) => !line.trimStart().startsWith("#"))
    .join("\n");
  for (const stanza of withoutComments.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const match of stanza.matchAll(/^([A-Za-z-]+):[ \t]*(.*)$/gm)) {
      fields.set((match[1] as string).toLowerCase(), (match[2] as string).trim());
    }
    if (!(fields.get("types") ?? "").split(/\s+/).includes("deb")) continue;
    if ((fields.get("enabled") ?? "yes").toLowerCase() === "no") continue;
    const suites = (fields.get("suites") ?? "").split(/\s+/).filter((s) => s !== "");
    for (const uri of (fields.get("uris") ?? "").split(/\s+/).filter((u) => u !== "")) {
      sources.push({ uri, suites });
    }
  }
  return sources;
}

/** Reads `/etc/apt/sources.list` and `sources.list.d/*.{list,sources}` under `etcApt`. */
export async function readAptSources(etcApt = "/etc/apt"): Promise<AptSource[]> {
  const read = (path: string): Promise<string> =>
    readFile(path, "utf8").catch((error: unknown) =>
      errnoCode(error) === "ENOENT" || errnoCode(error) === "EACCES" ? "" : Promise.reject(error),
    );
  const sources = parseOneLineSources(await read(join(etcApt, "sources.list")));
  const partsDir = join(etcApt, "sources.list.d");
  const parts = await readdir(partsDir).catch(() => [] as string[]);
  for (const name of parts.sort()) {
    if (name.endsWith(".list")) sources.push(...parseOneLineSources(await read(join(partsDir, name))));
    else if (name.endsWith(".sources")) sources.push(...parseDeb822Sources(await read(join(partsDir, name))));
  }
  return sources;
}

/**
 * The mirror of the first apt source that serves a plain release suite of `family` (not `-security` or
 * `-updates`, which often live elsewhere), or undefined.
 */
export function mirrorFromSources(sources: readonly AptSource[], family: DebianFamily): string | undefined {
  const known =
    family === "debian"
      ? [...Object.keys(DEBIAN_CODENAMES), ...DEBIAN_ALIASES]
      : Object.keys(UBUNTU_CODENAMES);
  const found = sources.find(
    (source) => /^(https?|file):/.test(source.uri) && source.suites.some((suite) => known.includes(suite)),
  );
  return found?.uri;
}

/** An archive pocket to install from beside the release itself: `bookworm-security` at its URI. */
export interface Pocket {
  readonly uri: string;
  readonly suite: string;
}

/** Suites that have no `-updates` or `-security` pocket: packages reach them directly. */
const DEVELOPMENT_SUITES = new Set(["sid", "unstable", "experimental"]);

/** Whether `suite` has `-updates` and `-security` pockets (a development suite has none). */
export function hasPockets(suite: string): boolean {
  return !DEVELOPMENT_SUITES.has(suite);
}

/**
 * The `-updates` and `-security` pockets of `suite`, laid out as the machine's apt sources lay out those
 * of its own release: `-updates` when they list one at `mirror`, `-security` at the URI where they list
 * one (Debian serves it from another archive than the mirror, Ubuntu from the same). Without them an
 * image holds the release as first published, without the security fixes since, and its apt never
 * sees any. None for a development suite, which has no such pockets.
 */
export function pocketsFromSources(
  sources: readonly AptSource[],
  family: DebianFamily,
  mirror: string,
  suite: string,
): Pocket[] {
  if (!hasPockets(suite)) return [];
  const known =
    family === "debian"
      ? [...Object.keys(DEBIAN_CODENAMES), ...DEBIAN_ALIASES]
      : Object.keys(UBUNTU_CODENAMES);
  const listed = (pocket: string) =>
    sources.find((source) =>
      source.suites.some((listedSuite) => {
        const base = listedSuite.slice(0, -`-${pocket}`.length);
        return listedSuite.endsWith(`-${pocket}`) && known.includes(base);
      }),
    );
  const sameUri = (a: string, b: string): boolean => a.replace(/\/+$/, "") === b.replace(/\/+$/, "");
  const pockets: Pocket[] = [];
  const updates = listed("updates");
  if (updates !== undefined && sameUri(updates.uri, mirror))
    pockets.push({ uri: mirror, suite: `${suite}-updates` });
  const security = listed("security");
  if (security !== undefined) pockets.push({ uri: security.uri, suite: `${suite}-security` });
  return pockets;
}

/**
 * The `Date:` of a Release or InRelease file as seconds since 1970, or undefined when it has none. It is
 * the moment the archive published this state of the suite: the natural build epoch.
 */
export function releaseDate(text: string): number | undefined {
  const match = /^Date:[ \t]*(.+)$/m.exec(text);
  if (match === null) return undefined;
  const millis = Date.parse((match[1] as string).trim());
  return Number.isFinite(millis) ? Math.floor(millis / 1000) : undefined;
}
