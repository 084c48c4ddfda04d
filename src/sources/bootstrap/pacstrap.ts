/**
 * Arch Linux root filesystems with pacstrap, as the Arch image script does it: a generated pacman.conf,
 * `base` with an ignore list, neither the host's keyring nor its mirrorlist copied (`-G -M`), downloads
 * into a cache of mkbase's choosing (`-c` with our own CacheDir), and afterwards the keyring initialised
 * inside the tree with its secret half removed, locale C.UTF-8, timezone UTC and `/dev` rebuilt.
 *
 * Signatures: pacman checks them against a keyring in the workspace (`GPGDir`), imported from the Arch
 * keyring (package archlinux-keyring) or `--keyring FILE`; `SigLevel = Never` only with `--insecure`.
 */
import { spawnSync } from "node:child_process";
import { access, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { ToolError, UsageError } from "../../errors.js";
import { onForcedExit } from "../../forced-exit.js";
import { forwardLines, requireTool, runTool, type ToolEnvironment, type ToolRunOptions } from "./run-tool.js";
import { makeDirectories } from "../../make-directories.js";
import { succeeds } from "./workspace.js";

/** Packages left out by default, as in the Arch image script: kernels, firmware and interactive tools. */
export const DEFAULT_PACMAN_IGNORE: readonly string[] = [
  "cryptsetup",
  "device-mapper",
  "dhcpcd",
  "iproute2",
  "jfsutils",
  "linux",
  "linux-firmware",
  "lvm2",
  "man-db",
  "man-pages",
  "mdadm",
  "nano",
  "netctl",
  "openresolv",
  "pciutils",
  "pcmciautils",
  "reiserfsprogs",
  "s-nail",
  "systemd-sysvcompat",
  "usbutils",
  "vi",
  "xfsprogs",
];

/** Where Debian's archlinux-keyring and Arch's own package put the Arch keyring. */
const ARCH_KEYRINGS = ["/usr/share/pacman/keyrings/archlinux.gpg", "/usr/share/keyrings/archlinux.gpg"];
const HOST_MIRRORLIST = "/etc/pacman.d/mirrorlist";

export interface PacstrapRequest {
  readonly packages: readonly string[];
  /** Added to the default ignore list. */
  readonly ignore: readonly string[];
  /** A `Server =` value, `$repo` and `$arch` expanded by pacman. */
  readonly mirror?: string;
  readonly repositories: readonly string[];
  /** `--pacman-conf FILE`: used as is instead of the generated one. */
  readonly pacmanConf?: string;
  readonly keyring?: string;
  readonly insecure: boolean;
  readonly cacheDir?: string;
  readonly env: ToolEnvironment;
}

export interface PacstrapPlan {
  readonly toolPath: string;
  readonly packages: readonly string[];
  readonly ignore: readonly string[];
  /** A `Server =` line value, or undefined with the host's mirrorlist (`Include`) or a user config. */
  readonly mirror: string | undefined;
  readonly mirrorOrigin: "--mirror" | "the host's mirrorlist" | "--pacman-conf";
  readonly repositories: readonly string[];
  readonly pacmanConf: string | undefined;
  /** Keyring file imported into the workspace keyring; undefined with `insecure` or a user config. */
  readonly keyring: string | undefined;
  readonly insecure: boolean;
  readonly cacheDir: string | undefined;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** Checks the request and decides the run; no network access. */
export async function planPacstrap(request: PacstrapRequest): Promise<PacstrapPlan> {
  if (request.packages.length === 0)
    throw new UsageError("--packages is empty", { hint: "Name at least one package, e.g. base." });
  const toolPath = await requireTool("pacstrap", "arch-install-scripts", request.env);
  await requireTool("pacman", "pacman-package-manager", request.env);
  let pacmanConf: string | undefined;
  if (request.pacmanConf !== undefined) {
    pacmanConf = resolve(request.pacmanConf);
    if (
      !(await stat(pacmanConf).then(
        (s) => s.isFile(),
        () => false,
      ))
    ) {
      throw new UsageError(`--pacman-conf ${request.pacmanConf} does not exist or is not a file`);
    }
  }
  const mirror = request.mirror;
  let mirrorOrigin: PacstrapPlan["mirrorOrigin"] = "--mirror";
  if (pacmanConf !== undefined) mirrorOrigin = "--pacman-conf";
  else if (mirror === undefined) {
    if (!(await exists(HOST_MIRRORLIST))) {
      throw new UsageError("no Arch Linux mirror is known", {
        hint: "Pass --mirror URL (a pacman Server line such as https://MIRROR/$repo/os/$arch, or file:///path/$repo), or --pacman-conf FILE.",
      });
    }
    mirrorOrigin = "the host's mirrorlist";
  }
  if (mirror !== undefined && !/^(https?|ftp|file):\/\//.test(mirror)) {
    throw new UsageError(`--mirror ${mirror}: expected an http://, https://, ftp:// or file:// URL`);
  }
  let keyring: string | undefined;
  if (request.keyring !== undefined) {
    keyring = resolve(request.keyring);
    if (
      !(await stat(keyring).then(
        (s) => s.isFile(),
        () => false,
      ))
    ) {
      throw new UsageError(`--keyring ${request.keyring} does not exist or is not a file`, {
        hint: "Give an OpenPGP keyring file with the keys that sign the packages (e.g. archlinux.gpg).",
      });
    }
  } else if (!request.insecure && pacmanConf === undefined) {
    for (const candidate of ARCH_KEYRINGS)
      if (keyring === undefined && (await exists(candidate))) keyring = candidate;
    if (keyring === undefined) {
      throw new ToolError(
        `the Arch Linux keyring is not installed (looked for ${ARCH_KEYRINGS.join(", ")})`,
        {
          hint: "Install the Debian package archlinux-keyring (apt-get install archlinux-keyring), or pass --keyring FILE; --insecure skips signature checks.",
        },
      );
    }
  }
  if (keyring !== undefined || pacmanConf === undefined) {
    await requireTool("gpg", "gpg", request.env);
    await requireTool("gpgconf", "gpgconf", request.env);
  }
  return {
    toolPath,
    packages: request.packages,
    ignore: [...new Set([...DEFAULT_PACMAN_IGNORE, ...request.ignore])],
    mirror,
    mirrorOrigin,
    repositories: request.repositories,
    pacmanConf,
    keyring,
    insecure: request.insecure,
    cacheDir: request.cacheDir === undefined ? undefined : resolve(request.cacheDir),
  };
}

/** The generated pacman.conf: our cache and keyring dirs, the repositories, and the signature policy. */
export function pacmanConfText(plan: PacstrapPlan, dirs: { cacheDir: string; gpgDir: string }): string {
  const server = plan.mirror === undefined ? `Include = ${HOST_MIRRORLIST}` : `Server = ${plan.mirror}`;
  return [
    "[options]",
    "Architecture = auto",
    `CacheDir = ${dirs.cacheDir}/`,
    `GPGDir = ${dirs.gpgDir}/`,
    // Fail closed: every package must carry a signature from a trusted key; only --insecure turns it off.
    plan.insecure ? "SigLevel = Never" : "SigLevel = Required DatabaseOptional",
    plan.insecure ? "LocalFileSigLevel = Never" : "LocalFileSigLevel = Optional",
    "",
    ...plan.repositories.flatMap((repo) => [`[${repo}]`, server, ""]),
  ].join("\n");
}

/** pacstrap's arguments; everything after the packages goes to pacman. */
export function pacstrapCommandLine(
  plan: PacstrapPlan,
  confPath: string,
  target: string,
  cacheDir: string,
): string[] {
  return [
    "-C",
    confPath,
    // -c: the cache named below rather than one inside the target; -G, -M: nothing of the host's
    // keyring or mirrorlist is copied into the tree.
    "-c",
    "-G",
    "-M",
    target,
    ...plan.packages,
    "--ignore",
    plan.ignore.join(","),
    "--cachedir",
    cacheDir,
  ];
}

/** pacstrap's step lines (`==>`, `::`) and pacman's errors and warnings. */
function isStepLine(line: string): boolean {
  // arch-chroot warns that the tree is not a mount point; for a chroot into a build dir that is expected.
  return /^(==>|::|error:|warning:|installing )/.test(line.trim()) && !line.includes("is not a mountpoint");
}

/** Imports `keyring` into `gpgDir` and trusts the keys named in its `-trusted` list (or all of them). */
async function prepareHostKeyring(
  keyring: string,
  gpgDir: string,
  options: ToolRunOptions,
  onLine: (line: string) => void,
): Promise<void> {
  await makeDirectories(gpgDir, 0o700);
  const gpg = await requireTool("gpg", "gpg", options.env);
  const run = (args: string[]) =>
    runTool({
      name: "gpg",
      command: gpg,
      args: ["--homedir", gpgDir, "--batch", ...args],
      env: options.env,
      signal: options.signal,
      onLine,
    });
  await run(["--import", keyring]);
  // The Arch keyring ships NAME.gpg with NAME-trusted (fingerprint:level lines): only those keys sign
  // packagers' keys. A keyring given without such a list is trusted as a whole: the user chose it.
  const trustedList = join(dirname(keyring), `${basename(keyring).replace(/\.gpg$/, "")}-trusted`);
  let fingerprints: string[];
  try {
    fingerprints = (await readFile(trustedList, "utf8"))
      .split("\n")
      .map((line) => line.split(":")[0]?.trim() ?? "")
      .filter((fpr) => /^[0-9A-F]{40}$/i.test(fpr));
  } catch {
    const lines: string[] = [];
    await runTool({
      name: "gpg",
      command: gpg,
      args: ["--homedir", gpgDir, "--batch", "--with-colons", "--list-keys"],
      env: options.env,
      signal: options.signal,
      onLine: (line) => lines.push(line),
    });
    // The first fpr record after each pub record is the primary key's fingerprint.
    fingerprints = lines
      .map((line, i) =>
        line.startsWith("pub:") ? lines.slice(i + 1).find((l) => l.startsWith("fpr:")) : undefined,
      )
      .filter((line): line is string => line !== undefined)
      .map((line) => line.split(":")[9] ?? "")
      .filter((fpr) => fpr !== "");
  }
  const ownertrust = join(gpgDir, "ownertrust.txt");
  // 6 = ultimate: the keys are valid themselves, and the packager keys they signed become valid.
  await writeFile(ownertrust, fingerprints.map((fpr) => `${fpr}:6:\n`).join(""));
  await run(["--import-ownertrust", ownertrust]);
}

/**
 * Makes sure every gpg-agent started for the GnuPG home `gpgDir` is stopped: by the function returned,
 * and by a forced exit before it is called. gpg (importing the keyring) and pacman (checking signatures,
 * through gpgme) start one as a daemon that outlives them and would outlive mkbase, naming the removed
 * workspace.
 */
async function gpgAgentsStopper(gpgDir: string, env: ToolEnvironment): Promise<() => Promise<void>> {
  const gpgconf = await requireTool("gpgconf", "gpgconf", env);
  const args = ["--homedir", gpgDir, "--kill", "all"];
  // Registered after the workspace's removal, so it runs before it (newest first).
  const forget = onForcedExit(`the gpg-agent of ${gpgDir}`, () => {
    spawnSync(gpgconf, args, { stdio: "ignore" });
  });
  return async () => {
    await succeeds(gpgconf, args);
    forget();
  };
}

/**
 * The lines in which pacman says that a package's signature did not verify with its keyring. Its last
 * line names something else ("keyring is not writable" when it tried to fetch the key, even "segmentation
 * fault"), so the build's error is made from these.
 */
export function isPacmanSignatureFailure(line: string): boolean {
  return /required key missing from keyring|signature from .* is (unknown trust|invalid|marginal trust)|invalid or corrupted (package|database) \(PGP signature\)|key ".*" is unknown|could not be looked up remotely/.test(
    line,
  );
}

function pacmanSignatureError(plan: PacstrapPlan, line: string, cause: unknown): ToolError {
  const reason = line.replace(/^error:\s*/, "");
  return new ToolError(
    `the package signatures could not be verified with the keyring ${plan.keyring ?? "of the pacman.conf given"}: ${reason}`,
    {
      cause,
      hint:
        plan.keyring !== undefined && ARCH_KEYRINGS.includes(plan.keyring)
          ? "The packages may be signed by a key newer than this keyring: update the Debian package archlinux-keyring, or pass --keyring FILE with the packagers' keys."
          : "Pass --keyring a keyring with the keys that sign these packages, or leave it out to use the Arch Linux keyring (package archlinux-keyring).",
    },
  );
}

/** Runs pacstrap into `target` and finishes the tree (keyring, locale, timezone). */
export async function runPacstrap(
  plan: PacstrapPlan,
  workspaceDir: string,
  target: string,
  options: ToolRunOptions,
): Promise<void> {
  const onLine = forwardLines("pacstrap", options.onProgress, options.verbose, isStepLine);
  const cacheDir = plan.cacheDir ?? join(workspaceDir, "pkg-cache");
  const gpgDir = join(workspaceDir, "gnupg");
  // The workspace's GnuPG home is used with the generated pacman.conf and with a --keyring.
  const stopGpgAgents =
    plan.pacmanConf === undefined || plan.keyring !== undefined
      ? await gpgAgentsStopper(gpgDir, options.env)
      : undefined;
  try {
    await makeDirectories(cacheDir);
    let confPath = plan.pacmanConf;
    if (confPath === undefined) {
      confPath = join(workspaceDir, "pacman.conf");
      await writeFile(confPath, pacmanConfText(plan, { cacheDir, gpgDir }));
      await makeDirectories(gpgDir, 0o700);
    }
    if (plan.keyring !== undefined) {
      options.onProgress({
        kind: "phase",
        message: `importing the package signing keys from ${plan.keyring}`,
      });
      await prepareHostKeyring(plan.keyring, gpgDir, options, onLine);
    }
    options.onProgress({
      kind: "phase",
      message: `bootstrapping Arch Linux (${plan.packages.join(" ")}) with pacstrap`,
    });
    let signatureFailure: string | undefined;
    try {
      await runTool({
        name: "pacstrap",
        command: plan.toolPath,
        args: pacstrapCommandLine(plan, confPath, target, cacheDir),
        env: options.env,
        signal: options.signal,
        onLine: (line) => {
          if (signatureFailure === undefined && isPacmanSignatureFailure(line)) signatureFailure = line;
          onLine(line);
        },
        failureHint:
          "Read pacstrap's output (run with --verbose to see all of it); check the mirror, the repositories and the keyring.",
      });
    } catch (error) {
      if (error instanceof ToolError && signatureFailure !== undefined) {
        throw pacmanSignatureError(plan, signatureFailure, error);
      }
      throw error;
    }
    await initialiseKeyring(target, options, onLine);
    await writeLocaleAndTimezone(target, plan);
  } finally {
    await stopGpgAgents?.();
  }
}

/**
 * `pacman-key --init` and `--populate` inside the tree (with its own gnupg, through arch-chroot, which
 * mounts what gpg needs and unmounts it again). The local master key's secret half is removed afterwards,
 * with or without the cleanup profile: an image must not ship a private key every container would share.
 */
async function initialiseKeyring(
  target: string,
  options: ToolRunOptions,
  onLine: (line: string) => void,
): Promise<void> {
  if (!(await exists(join(target, "usr/bin/pacman-key")))) {
    options.onProgress({
      kind: "warning",
      message: "the tree has no pacman-key: its pacman keyring was not initialised",
    });
    return;
  }
  const archChroot = await requireTool("arch-chroot", "arch-install-scripts", options.env);
  options.onProgress({ kind: "phase", message: "initialising the pacman keyring inside the tree" });
  for (const args of [["--init"], ["--populate"]]) {
    await runTool({
      name: "pacman-key",
      command: archChroot,
      args: [target, "/usr/bin/pacman-key", ...args],
      env: options.env,
      signal: options.signal,
      onLine,
    });
  }
  // gpg-agent outlives pacman-key; stop it so its sockets go and nothing holds the tree.
  if (await exists(join(target, "usr/bin/gpgconf"))) {
    await runTool({
      name: "gpgconf",
      command: archChroot,
      args: [target, "/usr/bin/gpgconf", "--homedir", "/etc/pacman.d/gnupg", "--kill", "all"],
      env: options.env,
      signal: options.signal,
      onLine,
    });
  }
}

async function writeLocaleAndTimezone(target: string, plan: PacstrapPlan): Promise<void> {
  const etc = join(target, "etc");
  if (
    !(await stat(etc).then(
      (s) => s.isDirectory(),
      () => false,
    ))
  )
    return;
  await writeFile(join(etc, "locale.conf"), "LANG=C.UTF-8\n");
  await rm(join(etc, "localtime"), { force: true });
  await symlink("/usr/share/zoneinfo/UTC", join(etc, "localtime"));
  // The image's own pacman should reach the same mirror (a file:// one exists only on this machine).
  if (plan.mirror !== undefined && !plan.mirror.startsWith("file:")) {
    await makeDirectories(join(etc, "pacman.d"));
    await writeFile(join(etc, "pacman.d/mirrorlist"), `Server = ${plan.mirror}\n`);
  }
}
