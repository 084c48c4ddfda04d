/**
 * The cleanup profile applied to a bootstrapped root filesystem before it is packed: runtime state,
 * package caches and indexes, logs and everything that identifies the build host go; `--slim` also drops
 * documentation and translations and adds the usual container settings.
 *
 * Every path is resolved inside the root without following symlinks: a rootfs may hold `var/run -> /run`,
 * and following it would delete the host's files.
 */
import { lstat, readFile, readdir, rm, truncate as truncateFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { errnoCode } from "../../errors.js";

export type Distribution = "debian" | "arch" | "alpine";

export interface CleanupOptions {
  readonly distribution: Distribution;
  /** Also drop man pages, docs and non-C translations, and write the container settings. */
  readonly slim: boolean;
  /** The build epoch (seconds): dates inside files that are later than it are brought back to it. */
  readonly epoch?: number;
}

/**
 * `rel` joined to `root` when every component before the last is a real directory (not a symlink), so an
 * operation on the result stays inside the root; undefined when it does not exist or would leave it.
 */
async function insideRoot(root: string, rel: string): Promise<string | undefined> {
  const parts = rel.split("/").filter((p) => p !== "");
  let current = root;
  for (const part of parts.slice(0, -1)) {
    current = join(current, part);
    const info = await lstat(current).catch(() => undefined);
    if (info?.isDirectory() !== true) return undefined;
  }
  return join(current, parts.at(-1) ?? "");
}

async function lstatOrUndefined(path: string) {
  try {
    return await lstat(path);
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return undefined;
    throw error;
  }
}

/** Removes the children of the directory `rel` for which `keep` is false. */
async function removeChildren(root: string, rel: string, keep: (name: string) => boolean = () => false) {
  const dir = await insideRoot(root, rel);
  if (dir === undefined || (await lstatOrUndefined(dir))?.isDirectory() !== true) return;
  for (const name of await readdir(dir)) {
    if (!keep(name)) await rm(join(dir, name), { recursive: true, force: true });
  }
}

/**
 * Removes regular files (and symlinks, sockets…) anywhere below `rel`, keeping the directories; the
 * regular files named in `truncate` (paths relative to the root) are emptied instead, keeping their owner
 * and mode.
 */
async function removeFilesBelow(
  root: string,
  rel: string,
  truncate: ReadonlySet<string> = new Set(),
): Promise<void> {
  const dir = await insideRoot(root, rel);
  if (dir === undefined || (await lstatOrUndefined(dir))?.isDirectory() !== true) return;
  for (const name of await readdir(dir)) {
    const info = await lstat(join(dir, name));
    if (info.isDirectory()) await removeFilesBelow(root, `${rel}/${name}`, truncate);
    else if (info.isFile() && truncate.has(`${rel}/${name}`)) await truncateFile(join(dir, name), 0);
    else await rm(join(dir, name), { force: true });
  }
}

/**
 * The login records that packages create once, at their first install, with the owner and mode they
 * need (`btmp` readable by root and group utmp only): emptied, not removed, as the distributions' own
 * images have them. Without them `lastlog` and `faillog` fail, and nothing would create them again.
 */
const LOGIN_RECORDS: ReadonlySet<string> = new Set([
  "var/log/btmp",
  "var/log/wtmp",
  "var/log/lastlog",
  "var/log/faillog",
]);

async function removePath(root: string, rel: string): Promise<void> {
  const path = await insideRoot(root, rel);
  if (path !== undefined) await rm(path, { recursive: true, force: true });
}

/**
 * Replaces a regular file (or creates it when `always`) with `content`. A symlink is left alone: it came
 * from the distribution (systemd's resolv.conf stub), whereas the host's contents are copied as files.
 */
async function replaceFile(root: string, rel: string, content: string, always = false): Promise<void> {
  const path = await insideRoot(root, rel);
  if (path === undefined) return;
  const info = await lstatOrUndefined(path);
  if (info === undefined ? !always : !info.isFile()) return;
  await rm(path, { force: true });
  await writeFile(path, content, { mode: 0o644, flag: "wx" });
}

/** Writes a new configuration file whose directory exists (skipped otherwise). */
async function addConfig(root: string, rel: string, content: string): Promise<void> {
  const path = await insideRoot(root, rel);
  if (path === undefined) return;
  const parent = await lstatOrUndefined(join(path, ".."));
  if (parent?.isDirectory() !== true) return;
  await rm(path, { force: true });
  await writeFile(path, content, { mode: 0o644, flag: "wx" });
}

/** Directories whose contents are runtime state of the machine that built the tree. */
const RUNTIME_DIRS = ["proc", "sys", "dev", "run", "tmp", "var/tmp"];

/** What each distribution's package manager leaves that a container image should not carry. */
const PACKAGE_STATE: Readonly<
  Record<Distribution, readonly (readonly [string, (name: string) => boolean])[]>
> = {
  debian: [
    // The empty `partial` directories belong to the apt package: without them `dpkg -V` reports apt's
    // files as missing.
    ["var/lib/apt/lists", (name) => name === "partial"],
    ["var/lib/apt/lists/partial", () => false],
    ["var/cache/apt", (name) => name === "archives"],
    ["var/cache/apt/archives", (name) => name === "partial"],
    ["var/cache/apt/archives/partial", () => false],
    ["var/cache/debconf", (name) => !name.endsWith("-old")],
    ["var/lib/dpkg", (name) => !name.endsWith("-old")],
  ],
  arch: [
    ["var/cache/pacman/pkg", () => false],
    ["var/lib/pacman/sync", () => false],
  ],
  alpine: [["var/cache/apk", () => false]],
};

/** Single files that identify the build or the host. */
const HOST_FILES = [
  "var/cache/ldconfig/aux-cache",
  "var/lib/dbus/machine-id",
  "etc/apt/apt.conf.d/99mmdebstrap",
  "etc/dpkg/dpkg.cfg.d/99mmdebstrap",
  // debootstrap's own working files, left by a `--foreign` first stage.
  "debootstrap",
];

/**
 * The parts of a pacman keyring that must never ship: the local master key's secret half, its revocation
 * certificate, gpg-agent sockets and the random seed (the same in every container would be no seed).
 */
const PACMAN_KEYRING_SECRETS = [
  "etc/pacman.d/gnupg/private-keys-v1.d",
  "etc/pacman.d/gnupg/secring.gpg",
  "etc/pacman.d/gnupg/openpgp-revocs.d",
  "etc/pacman.d/gnupg/random_seed",
];

/** Debian's container settings (written with --slim), the same choices the official images make. */
const DEBIAN_SLIM_CONFIG: readonly (readonly [string, string])[] = [
  [
    "etc/apt/apt.conf.d/docker-no-recommends",
    'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n',
  ],
  [
    "etc/apt/apt.conf.d/docker-gzip-indexes",
    'Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n',
  ],
  [
    "etc/apt/apt.conf.d/docker-clean",
    [
      "# Package files are removed after every install, and the binary caches are not kept:",
      "# a container image has no use for either.",
      'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };',
      'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };',
      'Dir::Cache::pkgcache "";',
      'Dir::Cache::srcpkgcache "";',
      "",
    ].join("\n"),
  ],
  [
    "etc/dpkg/dpkg.cfg.d/docker-excludes",
    [
      "# Documentation and translations are not installed into this image.",
      "path-exclude /usr/share/doc/*",
      "path-include /usr/share/doc/*/copyright",
      "path-exclude /usr/share/man/*",
      "path-exclude /usr/share/info/*",
      "path-exclude /usr/share/locale/*",
      "path-include /usr/share/locale/locale.alias",
      "",
    ].join("\n"),
  ],
];

/**
 * Removes what must never ship, with or without the cleanup profile (`--no-clean` keeps the tree as the
 * tool made it, not its secrets): the pacman keyring's secret half, which every container would share.
 */
export async function removeSecrets(root: string, distribution: Distribution): Promise<void> {
  if (distribution !== "arch") return;
  for (const secret of PACMAN_KEYRING_SECRETS) await removePath(root, secret);
}

/**
 * What mmdebstrap's own cleanup removes and mkbase tells it to keep (`--skip=cleanup/apt`, for the
 * Release date and the cache): the index files, the package files (with a cache dir, every package the
 * cache held) and apt's binary caches; and its `99mmdebstrap` files, which hold only mkbase's options
 * (apt downloading as root; with `--insecure`, unsigned repositories allowed). Done with or without the
 * cleanup profile, so that `--no-clean` gives the tree mmdebstrap itself would have left.
 */
export async function removeMmdebstrapLeftovers(root: string): Promise<void> {
  const keep = (name: string): boolean => name === "lock" || name === "partial";
  await removeChildren(root, "var/lib/apt/lists", keep);
  await removeChildren(root, "var/lib/apt/lists/partial");
  await removeChildren(root, "var/cache/apt/archives", keep);
  await removeChildren(root, "var/cache/apt/archives/partial");
  await removeChildren(root, "var/cache/apt", (name) => !name.endsWith(".bin"));
  await removePath(root, "etc/apt/apt.conf.d/99mmdebstrap");
}

/**
 * Removes runtime state, package caches and indexes, logs and host traces from the tree at `root`, and
 * with `slim` documentation and translations too. Must run while nothing is mounted below `root`.
 */
export async function cleanRootfs(root: string, options: CleanupOptions): Promise<void> {
  for (const dir of RUNTIME_DIRS) await removeChildren(root, dir);
  for (const [dir, keep] of PACKAGE_STATE[options.distribution]) await removeChildren(root, dir, keep);
  await removeFilesBelow(root, "var/log", LOGIN_RECORDS);
  for (const file of HOST_FILES) await removePath(root, file);
  await removeSecrets(root, options.distribution);
  if (options.distribution === "arch") {
    await removeChildren(root, "etc/pacman.d/gnupg", (name) => !name.startsWith("S."));
  }
  // Emptied rather than removed: systemd treats an empty machine-id as "generate one at first boot".
  await replaceFile(root, "etc/machine-id", "", true);
  // The bootstrappers copy these two from the host.
  await replaceFile(root, "etc/resolv.conf", "", true);
  await replaceFile(root, "etc/hostname", "localhost\n", true);

  if (options.epoch !== undefined) await clampShadowDates(root, options.epoch);

  if (!options.slim) return;
  await removeChildren(root, "usr/share/man");
  await removeChildren(root, "usr/share/info");
  await removeChildren(root, "usr/share/locale", (name) => name === "locale.alias");
  await removeDocsKeepingCopyright(root);
  if (options.distribution === "debian") {
    for (const [path, content] of DEBIAN_SLIM_CONFIG) await addConfig(root, path, content);
  }
}

/**
 * `/etc/shadow` records the day each password last changed; the tools that create accounts write the
 * day of the build unless SOURCE_DATE_EPOCH is set, which a bootstrapper cannot know before it has
 * fetched the Release file. So a day after the epoch's day is set to the epoch's day, as
 * SOURCE_DATE_EPOCH would have made it: two builds from the same archive state on different days then
 * give the same file.
 */
async function clampShadowDates(root: string, epoch: number): Promise<void> {
  const path = await insideRoot(root, "etc/shadow");
  if (path === undefined || (await lstatOrUndefined(path))?.isFile() !== true) return;
  const epochDay = Math.floor(epoch / 86400);
  const text = await readFile(path, "utf8");
  const clamped = text
    .split("\n")
    .map((line) => {
      const fields = line.split(":");
      const day = fields[2];
      if (day === undefined || !/^\d+$/.test(day) || Number(day) <= epochDay) return line;
      fields[2] = String(epochDay);
      return fields.join(":");
    })
    .join("\n");
  // Rewritten in place, so the file keeps its owner and its restrictive mode.
  if (clamped !== text) await writeFile(path, clamped);
}

/** `usr/share/doc/*` goes, except the copyright files the licences require to ship with the binaries. */
async function removeDocsKeepingCopyright(root: string): Promise<void> {
  const docs = await insideRoot(root, "usr/share/doc");
  if (docs === undefined || (await lstatOrUndefined(docs))?.isDirectory() !== true) return;
  for (const name of await readdir(docs)) {
    const info = await lstat(join(docs, name));
    if (info.isDirectory()) await removeChildren(root, `usr/share/doc/${name}`, (n) => n === "copyright");
    else await rm(join(docs, name), { force: true });
  }
}
