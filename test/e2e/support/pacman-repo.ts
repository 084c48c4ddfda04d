/**
 * A local pacman repository for end-to-end tests, built from scratch because Arch mirrors are not
 * reachable and Debian's repo-add is broken: a package is a `.pkg.tar.zst` holding `.PKGINFO` and its
 * files (made with bsdtar), and the sync database `NAME.db` is a tar.gz of `NAME-VERSION/desc` files.
 *
 * The `busybox` package carries the static busybox of the machine (package busybox-static), so the
 * bootstrapped tree really runs; a `filesystem` package gives it the usual top-level layout; and a
 * `pacman-key` stand-in records its arguments and, like the real one, leaves a private key behind on
 * `--init`, so a test can see that mkbase initialised the keyring and then removed the secret.
 */
import { createHash } from "node:crypto";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { runChecked } from "./cli.js";

/** A fixed build date, so the repository (and the images built from it) are the same every run. */
export const pacmanRepoBuildDate = 1_700_000_000;

interface PackageFile {
  readonly path: string;
  readonly content?: Buffer | string;
  /** Copy this file from the host instead of `content`. */
  readonly hostPath?: string;
  readonly symlink?: string;
  readonly directory?: boolean;
  readonly mode?: number;
}

interface PackageSpec {
  readonly name: string;
  readonly version: string;
  readonly files: readonly PackageFile[];
  readonly depends?: readonly string[];
}

export interface PacmanRepo {
  /** The directory holding `NAME/` with the database and the packages. */
  readonly root: string;
  /** The repository's name (the `[section]` of pacman.conf). */
  readonly name: string;
  /** A `Server =` value: `file://ROOT/$repo`. */
  readonly server: string;
  readonly packages: readonly string[];
  /** With `sign`: an OpenPGP keyring file holding the public key that signed every package. */
  readonly keyring: string | undefined;
  dispose(): Promise<void>;
}

const PACMAN_KEY_STANDIN = `#!/usr/bin/busybox sh
# Stand-in for pacman-key: records its arguments; --init leaves a secret key as the real one does.
echo "$*" >> /var/log/pacman-key.args
case "$1" in
  --init)
    mkdir -p /etc/pacman.d/gnupg/private-keys-v1.d
    echo "secret key material" > /etc/pacman.d/gnupg/private-keys-v1.d/0123ABCD.key
    echo "public keys" > /etc/pacman.d/gnupg/pubring.gpg
    ;;
esac
`;

const SPECS: readonly PackageSpec[] = [
  {
    name: "filesystem",
    version: "2024.01-1",
    files: [
      { path: "usr", directory: true },
      { path: "usr/bin", directory: true },
      { path: "usr/lib", directory: true },
      { path: "bin", symlink: "usr/bin" },
      { path: "sbin", symlink: "usr/bin" },
      { path: "lib", symlink: "usr/lib" },
      { path: "etc", directory: true },
      { path: "etc/os-release", content: 'NAME="mkbase test Arch"\nID=arch\n' },
      { path: "etc/passwd", content: "root:x:0:0:root:/root:/usr/bin/sh\n" },
      { path: "etc/group", content: "root:x:0:\n" },
      { path: "root", directory: true, mode: 0o750 },
    ],
  },
  {
    name: "busybox",
    version: "1.36.1-1",
    depends: ["filesystem"],
    files: [
      { path: "usr/bin/busybox", hostPath: "/usr/bin/busybox", mode: 0o755 },
      { path: "usr/bin/sh", symlink: "busybox" },
      { path: "usr/bin/ls", symlink: "busybox" },
      { path: "usr/bin/cat", symlink: "busybox" },
      { path: "usr/bin/echo", symlink: "busybox" },
      { path: "usr/bin/mkdir", symlink: "busybox" },
      { path: "usr/bin/pacman-key", content: PACMAN_KEY_STANDIN, mode: 0o755 },
    ],
  },
];

function pkginfo(spec: PackageSpec, size: number): string {
  return [
    `pkgname = ${spec.name}`,
    `pkgbase = ${spec.name}`,
    `pkgver = ${spec.version}`,
    `pkgdesc = ${spec.name} for mkbase tests`,
    "url = https://example.invalid/",
    `builddate = ${pacmanRepoBuildDate}`,
    "packager = mkbase tests <tests@example.invalid>",
    `size = ${size}`,
    "arch = x86_64",
    "license = GPL",
    ...(spec.depends ?? []).map((d) => `depend = ${d}`),
    "",
  ].join("\n");
}

function desc(spec: PackageSpec, filename: string, csize: number, isize: number, sha256: string): string {
  const fields: [string, string][] = [
    ["FILENAME", filename],
    ["NAME", spec.name],
    ["BASE", spec.name],
    ["VERSION", spec.version],
    ["DESC", `${spec.name} for mkbase tests`],
    ["CSIZE", String(csize)],
    ["ISIZE", String(isize)],
    ["SHA256SUM", sha256],
    ["URL", "https://example.invalid/"],
    ["LICENSE", "GPL"],
    ["ARCH", "x86_64"],
    ["BUILDDATE", String(pacmanRepoBuildDate)],
    ["PACKAGER", "mkbase tests <tests@example.invalid>"],
  ];
  if (spec.depends !== undefined) fields.push(["DEPENDS", spec.depends.join("\n")]);
  return fields.map(([key, value]) => `%${key}%\n${value}\n\n`).join("");
}

/**
 * Builds the repository `name` in a new temp dir. With `sign`, a key pair is generated for the test and
 * every package gets a detached signature (`FILE.sig`, which pacman fetches next to the package).
 */
export async function buildPacmanRepo(
  name = "mkbasetest",
  options: { sign?: boolean } = {},
): Promise<PacmanRepo> {
  const root = await mkdtemp(join(tmpdir(), "mkbase-pacman-repo-"));
  const repoDir = join(root, name);
  const dbDir = join(root, "db-stage");
  await mkdir(repoDir);
  for (const spec of SPECS) {
    const stage = join(root, `stage-${spec.name}`);
    await mkdir(stage);
    let size = 0;
    for (const file of spec.files) {
      const path = join(stage, file.path);
      await mkdir(dirname(path), { recursive: true });
      if (file.directory === true) await mkdir(path, { recursive: true });
      else if (file.symlink !== undefined) await symlink(file.symlink, path);
      else if (file.hostPath !== undefined) await copyFile(file.hostPath, path);
      else await writeFile(path, file.content ?? "");
      if (file.mode !== undefined) await chmod(path, file.mode);
      if (file.symlink === undefined && file.directory !== true) size += (await stat(path)).size;
    }
    await writeFile(join(stage, ".PKGINFO"), pkginfo(spec, size));
    const filename = `${spec.name}-${spec.version}-x86_64.pkg.tar.zst`;
    const topLevel = [...new Set(spec.files.map((f) => f.path.split("/")[0] as string))].sort();
    await runChecked("bsdtar", [
      "--zstd",
      "--uid",
      "0",
      "--gid",
      "0",
      "-cf",
      join(repoDir, filename),
      "-C",
      stage,
      ".PKGINFO",
      ...topLevel,
    ]);
    const bytes = await readFile(join(repoDir, filename));
    const entryDir = join(dbDir, `${spec.name}-${spec.version}`);
    await mkdir(entryDir, { recursive: true });
    await writeFile(
      join(entryDir, "desc"),
      desc(spec, filename, bytes.length, size, createHash("sha256").update(bytes).digest("hex")),
    );
    await rm(stage, { recursive: true, force: true });
  }
  // Entries named `NAME-VERSION/desc` without a leading `./`: pacman rejects any other name.
  const entries = SPECS.map((s) => `${s.name}-${s.version}`).sort();
  await runChecked("bsdtar", ["-czf", join(repoDir, `${name}.db`), "-C", dbDir, ...entries]);
  await rm(dbDir, { recursive: true, force: true });
  let keyring: string | undefined;
  if (options.sign === true) {
    const home = join(root, "gnupg");
    await mkdir(home, { mode: 0o700 });
    const gpg = (args: string[]) => runChecked("gpg", ["--homedir", home, "--batch", ...args]);
    await gpg([
      "--passphrase",
      "",
      "--quick-gen-key",
      "mkbase test packager <packager@example.invalid>",
      "ed25519",
      "sign",
      "never",
    ]);
    for (const spec of SPECS) {
      const file = join(repoDir, `${spec.name}-${spec.version}-x86_64.pkg.tar.zst`);
      await gpg(["--detach-sign", "--no-armor", "--output", `${file}.sig`, file]);
    }
    keyring = join(root, "packager.gpg");
    await gpg(["--output", keyring, "--export"]);
    await runChecked("gpgconf", ["--homedir", home, "--kill", "all"]);
  }
  return {
    keyring,
    root,
    name,
    server: `file://${root}/$repo`,
    packages: SPECS.map((s) => s.name),
    dispose: () => rm(root, { recursive: true, force: true }),
  };
}
