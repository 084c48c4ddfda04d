/**
 * What a bootstrapped tree has installed, read from the package manager's own database (dpkg status,
 * pacman's local db, apk's installed db): for the package-list label and `--package-list FILE`, and for
 * the distribution's own date, which is the default build epoch.
 */
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { errnoCode } from "../../errors.js";
import type { Distribution } from "./cleanup.js";

export interface InstalledPackage {
  readonly name: string;
  readonly version: string;
  readonly architecture: string;
  /** Build time in seconds since 1970, where the database records one (pacman, apk). */
  readonly buildTime?: number;
}

function byName(a: InstalledPackage, b: InstalledPackage): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : a.architecture < b.architecture ? -1 : 1;
}

/**
 * Packages of a dpkg `status` file whose state (the third word of `Status:`) is `installed`: a purged
 * package can stay listed as `purge ok not-installed`, a broken one as `half-installed`.
 */
export function parseDpkgStatus(text: string): InstalledPackage[] {
  const packages: InstalledPackage[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const match of stanza.matchAll(/^([A-Za-z-]+):[ \t]*(.*)$/gm)) {
      fields.set((match[1] as string).toLowerCase(), (match[2] as string).trim());
    }
    const name = fields.get("package");
    if (name === undefined || (fields.get("status") ?? "").split(/\s+/)[2] !== "installed") continue;
    packages.push({
      name,
      version: fields.get("version") ?? "",
      architecture: fields.get("architecture") ?? "",
    });
  }
  return packages.sort(byName);
}

/** One pacman `desc` file (`%NAME%\nvalue\n\n%VERSION%…`). */
export function parsePacmanDesc(text: string): InstalledPackage | undefined {
  const fields = new Map<string, string>();
  for (const block of text.split(/\n\n/)) {
    const [key, ...values] = block.trim().split("\n");
    if (key !== undefined && /^%[A-Z0-9]+%$/.test(key)) fields.set(key, values.join("\n"));
  }
  const name = fields.get("%NAME%");
  if (name === undefined) return undefined;
  const buildDate = Number(fields.get("%BUILDDATE%"));
  return {
    name,
    version: fields.get("%VERSION%") ?? "",
    architecture: fields.get("%ARCH%") ?? "",
    ...(Number.isFinite(buildDate) && buildDate > 0 ? { buildTime: buildDate } : {}),
  };
}

/** apk's `lib/apk/db/installed` (stanzas of `P:name`, `V:version`, `A:arch`, `t:buildtime`). */
export function parseApkInstalled(text: string): InstalledPackage[] {
  const packages: InstalledPackage[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const line of stanza.split("\n")) {
      if (line.length > 2 && line[1] === ":") fields.set(line[0] as string, line.slice(2));
    }
    const name = fields.get("P");
    if (name === undefined) continue;
    const buildTime = Number(fields.get("t"));
    packages.push({
      name,
      version: fields.get("V") ?? "",
      architecture: fields.get("A") ?? "",
      ...(Number.isFinite(buildTime) && buildTime > 0 ? { buildTime } : {}),
    });
  }
  return packages.sort(byName);
}

async function readIfPresent(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return undefined;
    throw error;
  }
}

/** The packages installed in the tree at `root`, sorted by name. */
export async function readInstalledPackages(
  root: string,
  distribution: Distribution,
): Promise<InstalledPackage[]> {
  switch (distribution) {
    case "debian":
      return parseDpkgStatus((await readIfPresent(join(root, "var/lib/dpkg/status"))) ?? "");
    case "alpine":
      return parseApkInstalled((await readIfPresent(join(root, "lib/apk/db/installed"))) ?? "");
    case "arch": {
      const local = join(root, "var/lib/pacman/local");
      const names = await readdir(local).catch(() => [] as string[]);
      const packages: InstalledPackage[] = [];
      for (const name of names) {
        const desc = await readIfPresent(join(local, name, "desc"));
        const parsed = desc === undefined ? undefined : parsePacmanDesc(desc);
        if (parsed !== undefined) packages.push(parsed);
      }
      return packages.sort(byName);
    }
  }
}

/** `--package-list FILE`: one `name<TAB>version<TAB>architecture` line per package. */
export function formatPackageList(packages: readonly InstalledPackage[]): string {
  return packages.map((p) => `${p.name}\t${p.version}\t${p.architecture}\n`).join("");
}

/** The label value: `name=version` pairs separated by commas, sorted by name. */
export function packageListLabel(packages: readonly InstalledPackage[]): string {
  return packages.map((p) => `${p.name}=${p.version}`).join(",");
}

/** The newest build time among the packages, the distribution's own date for pacman and apk trees. */
export function newestBuildTime(packages: readonly InstalledPackage[]): number | undefined {
  let newest: number | undefined;
  for (const p of packages)
    if (p.buildTime !== undefined && (newest === undefined || p.buildTime > newest)) newest = p.buildTime;
  return newest;
}
