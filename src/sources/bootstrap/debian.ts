/**
 * Debian and Ubuntu root filesystems with mmdebstrap (preferred: faster, reproducible with
 * SOURCE_DATE_EPOCH) or debootstrap. Planning checks everything that can be checked without the network
 * (suite, architecture, variant, keyring, tool, emulation), so bad input fails before any download.
 *
 * Trust: the keyring (`--keyring FILE`, else the distribution's archive keyring) is the only one the
 * Release file is checked against. debootstrap hands it to gpgv alone. mmdebstrap's own `--keyring FILE`
 * replaces only apt's `Dir::Etc::Trusted`: the host's `trusted.gpg.d` stays trusted, and it may write a
 * `signed-by` for the distribution's keyring into the sources, which apt then checks against instead. So
 * mmdebstrap gets both halves of apt's trust from the workspace (an empty file, and a directory holding a
 * copy of the keyring) and no `signed-by`.
 */
import { constants } from "node:fs";
import { appendFile, copyFile, mkdir, open, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ToolError, UsageError, errnoCode } from "../../errors.js";
import { removeMmdebstrapLeftovers } from "./cleanup.js";
import { INSECURE_LABEL } from "./finish.js";
import { hostDpkgArchitecture, requireEmulation, runsNatively } from "./host.js";
import {
  findOnPath,
  forwardLines,
  requireTool,
  runTool,
  type ToolEnvironment,
  type ToolRunOptions,
} from "./run-tool.js";
import {
  FAMILY_DEFAULTS,
  checkArchitecture,
  hasPockets,
  lookupSuite,
  mirrorFromSources,
  readAptSources,
  pocketsFromSources,
  releaseDate,
  type AptSource,
  type Pocket,
  type SuiteInfo,
} from "./suites.js";
import { makeDirectories } from "../../make-directories.js";

export type DebianBackend = "mmdebstrap" | "debootstrap";

export interface DebianRequest {
  readonly suite: string;
  /** Which tool; mmdebstrap when installed, else debootstrap, when absent. */
  readonly backend?: DebianBackend;
  readonly variant: string;
  /** dpkg architecture; this machine's when absent. */
  readonly architecture?: string;
  readonly components?: readonly string[];
  readonly include: readonly string[];
  readonly exclude: readonly string[];
  readonly mirror?: string;
  readonly keyring?: string;
  readonly insecure: boolean;
  readonly cacheDir?: string;
  readonly env: ToolEnvironment;
  /** The machine's apt sources (read from /etc/apt when absent); injectable for tests. */
  readonly aptSources?: readonly AptSource[];
}

/** Everything decided before the tool runs; printed by `--dry-run`. */
export interface DebianPlan {
  readonly backend: DebianBackend;
  readonly toolPath: string;
  readonly suite: SuiteInfo;
  readonly variant: string;
  readonly architecture: string;
  /** Not runnable natively: through qemu-user (debootstrap: `--foreign` and a second stage). */
  readonly foreign: boolean;
  readonly components: readonly string[];
  readonly include: readonly string[];
  readonly exclude: readonly string[];
  /** Undefined: the tool's own default mirror. */
  readonly mirror: string | undefined;
  readonly mirrorOrigin: "--mirror" | "the machine's apt sources" | "the tool's default";
  /**
   * The release's `-updates` and `-security` pockets, when the mirror comes from the machine's apt
   * sources (see {@link pocketsFromSources}). mmdebstrap installs from them too (with the tool's default
   * mirror it adds them itself); debootstrap, which takes one suite, only lists them in the image's
   * sources.list. Empty with `--mirror`: that archive is all the user asked for.
   */
  readonly pockets: readonly Pocket[];
  /** Undefined exactly with `insecure`: the two are never given together. */
  readonly keyring: string | undefined;
  /** How `keyring` is encoded; apt tells its keyring files apart by their extension. */
  readonly keyringFormat: KeyringFormat | undefined;
  readonly insecure: boolean;
  readonly cacheDir: string | undefined;
  /**
   * mmdebstrap's own `maybe-merged-usr` hook directory, when installed: merged /usr set up the way
   * debootstrap does it. Without it apt satisfies `usrmerge | usr-is-merged` with usrmerge, which pulls
   * in perl and converts the tree afterwards (bookworm minbase: 8,718 entries instead of 6,648).
   */
  readonly mergedUsrHooks: string | undefined;
}

/** Where mmdebstrap installs its hook directories. */
const MMDEBSTRAP_HOOKS = "/usr/share/mmdebstrap/hooks";

const VARIANTS: Readonly<Record<DebianBackend, readonly string[]>> = {
  debootstrap: ["minbase", "buildd", "important"],
  mmdebstrap: ["minbase", "buildd", "important", "essential", "apt", "required", "standard"],
};

const DEBIAN_PACKAGE_OF_TOOL: Readonly<Record<DebianBackend, string>> = {
  mmdebstrap: "mmdebstrap",
  debootstrap: "debootstrap",
};

async function isFile(path: string): Promise<boolean> {
  return stat(path).then(
    (info) => info.isFile(),
    () => false,
  );
}

/**
 * The encodings of a keyring file: OpenPGP packets (`gpg --export`, the archive keyrings), ASCII armor
 * (`gpg --armor --export`, `.asc`), or a GnuPG keybox (what `gpg --keyring NEW-FILE` creates).
 */
export type KeyringFormat = "binary" | "armored" | "keybox";

const ARMOR_HEADER = "-----BEGIN PGP PUBLIC KEY BLOCK-----";

/** The format of a keyring from its first bytes, or undefined when it is none of them. */
export function keyringFormat(head: Buffer): KeyringFormat | undefined {
  const first = head[0];
  if (first === undefined) return undefined;
  // A keyring starts with a public-key packet (tag 6): 0x98-0x9b in the old packet format (the low
  // bits give the length's size), 0xc6 in the new one (RFC 4880, 4.2).
  if ((first & 0xfc) === 0x98 || first === 0xc6) return "binary";
  // A keybox's first blob is its header: 4 bytes of length, type 1, version 1, 2 bytes of flags, "KBXf".
  if (head.subarray(8, 12).toString("latin1") === "KBXf") return "keybox";
  if (head.toString("latin1").trimStart().startsWith(ARMOR_HEADER)) return "armored";
  return undefined;
}

/** The first bytes of a keyring file: room for blank lines before an armor header. */
async function readKeyringHead(path: string): Promise<Buffer> {
  const file = await open(path, "r");
  try {
    const { buffer, bytesRead } = await file.read({ buffer: Buffer.alloc(256), position: 0 });
    return buffer.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
}

/**
 * The keyring's path and format. A file no tool can read as a keyring (a text file, an empty one) is
 * refused here: apt and gpgv would only say later that the archive is not signed.
 */
async function chooseKeyring(
  request: DebianRequest,
  suite: SuiteInfo,
  backend: DebianBackend,
): Promise<{ keyring: string | undefined; keyringFormat: KeyringFormat | undefined }> {
  if (request.keyring !== undefined) {
    // Both at once have no one meaning. debootstrap's own --no-check-gpg turns off the check that
    // --keyring asks for; apt under mmdebstrap checks with the keyring and, allowed insecure
    // repositories, installs all the same. Either way the keyring vouches for nothing, and which tool
    // runs depends on what is installed: the user chooses.
    if (request.insecure) {
      throw new UsageError("--insecure and --keyring contradict each other", {
        hint: `Leave out --insecure to check the archive's signatures with ${request.keyring}, or --keyring to build without checking them (the image then carries the label ${INSECURE_LABEL}=true).`,
      });
    }
    const keyring = resolve(request.keyring);
    if (!(await isFile(keyring))) {
      throw new UsageError(`--keyring ${request.keyring} does not exist or is not a file`, {
        hint: "Give the path of an OpenPGP keyring file (.gpg, .pgp or .asc) that signs the archive's Release file.",
      });
    }
    let head: Buffer;
    try {
      head = await readKeyringHead(keyring);
    } catch (error) {
      throw new UsageError(`--keyring ${request.keyring} cannot be read: ${(error as Error).message}`, {
        cause: error,
      });
    }
    if (head.length === 0) {
      throw new UsageError(`--keyring ${request.keyring} is empty: it holds no keys`, {
        hint: "Give a keyring file with the keys that sign the archive's Release file.",
      });
    }
    const format = keyringFormat(head);
    if (format === undefined) {
      throw new UsageError(`--keyring ${request.keyring} is not an OpenPGP keyring`, {
        hint: "Give a keyring file with the archive's signing keys: binary (.gpg, as gpg --export writes it) or ASCII-armored (.asc, as gpg --armor --export writes it).",
      });
    }
    // apt reads a keyring directory's .gpg files as OpenPGP packets only; gpgv reads no armor.
    if (format === "keybox" && backend === "mmdebstrap") {
      throw new UsageError(`--keyring ${request.keyring} is a GnuPG keybox, which apt cannot read`, {
        hint: `Export its keys to a file and pass that (gpg --no-default-keyring --keyring ${keyring} --export > keyring.gpg).`,
      });
    }
    if (format === "armored" && backend === "debootstrap") {
      throw new UsageError(`--keyring ${request.keyring} is ASCII-armored, which debootstrap cannot read`, {
        hint: `Convert it and pass that file (gpg --dearmor < ${keyring} > keyring.gpg), or use --backend mmdebstrap.`,
      });
    }
    return { keyring, keyringFormat: format };
  }
  if (request.insecure) return { keyring: undefined, keyringFormat: undefined };
  const defaults = FAMILY_DEFAULTS[suite.family];
  for (const candidate of defaults.keyrings) {
    if (await isFile(candidate))
      return { keyring: candidate, keyringFormat: keyringFormat(await readKeyringHead(candidate)) };
  }
  throw new ToolError(
    `the ${defaults.displayName} archive keyring is not installed (looked for ${defaults.keyrings.join(", ")})`,
    {
      hint: `Install the Debian package ${defaults.keyringPackage} (apt-get install ${defaults.keyringPackage}), or pass --keyring FILE; --insecure skips signature checks.`,
    },
  );
}

async function chooseBackend(request: DebianRequest): Promise<{ backend: DebianBackend; toolPath: string }> {
  if (request.backend !== undefined) {
    const backend = request.backend;
    return { backend, toolPath: await requireTool(backend, DEBIAN_PACKAGE_OF_TOOL[backend], request.env) };
  }
  const mmdebstrap = await findOnPath("mmdebstrap", request.env);
  if (mmdebstrap !== undefined) return { backend: "mmdebstrap", toolPath: mmdebstrap };
  const debootstrap = await findOnPath("debootstrap", request.env);
  if (debootstrap !== undefined) return { backend: "debootstrap", toolPath: debootstrap };
  throw new ToolError("neither mmdebstrap nor debootstrap is installed (not found on PATH)", {
    hint: "Install the Debian package mmdebstrap (apt-get install mmdebstrap), or debootstrap.",
  });
}

/** Checks the request and decides every detail of the run; no network access. */
export async function planDebianBootstrap(request: DebianRequest): Promise<DebianPlan> {
  const suite = lookupSuite(request.suite);
  const architecture = request.architecture ?? hostDpkgArchitecture();
  checkArchitecture(architecture, suite.family);
  const { backend, toolPath } = await chooseBackend(request);
  if (!VARIANTS[backend].includes(request.variant)) {
    throw new UsageError(`--variant ${request.variant} is not a ${backend} variant`, {
      hint: `Use one of ${VARIANTS[backend].join(", ")}.`,
    });
  }
  if (backend === "mmdebstrap" && request.exclude.length > 0) {
    throw new UsageError(
      "--exclude-packages needs the debootstrap backend (mmdebstrap installs no more than asked)",
      {
        hint: "Use --backend debootstrap, or a smaller --variant with --include.",
      },
    );
  }
  const { keyring, keyringFormat } = await chooseKeyring(request, suite, backend);
  let mirror = request.mirror;
  let mirrorOrigin: DebianPlan["mirrorOrigin"] = "--mirror";
  let pockets: Pocket[] = [];
  if (mirror === undefined) {
    const sources = request.aptSources ?? (await readAptSources());
    mirror = mirrorFromSources(sources, suite.family);
    mirrorOrigin = mirror === undefined ? "the tool's default" : "the machine's apt sources";
    if (mirror !== undefined) pockets = pocketsFromSources(sources, suite.family, mirror, suite.suite);
  }
  if (mirror === undefined && suite.family === "ubuntu") {
    throw new UsageError(`${suite.suite} is an Ubuntu suite, and no Ubuntu mirror is known`, {
      hint: "Pass --mirror URL (an Ubuntu archive or mirror; the ports archive for arm64 and others), or build on a machine whose apt sources list one.",
    });
  }
  if (mirror !== undefined && !/^(https?|file):\/\//.test(mirror)) {
    throw new UsageError(`--mirror ${mirror}: expected an http://, https:// or file:// URL`);
  }
  await requireEmulation(architecture);
  // mmdebstrap checks the emulation with arch-test, and stops without it once the download is done.
  if (backend === "mmdebstrap" && !runsNatively(architecture)) {
    if ((await findOnPath("arch-test", request.env)) === undefined) {
      throw new ToolError(`mmdebstrap needs arch-test to bootstrap ${architecture} on this machine`, {
        hint: "Install the Debian package arch-test (apt-get install arch-test), or use --backend debootstrap.",
      });
    }
  }
  // debootstrap needs a script per suite; an old debootstrap does not know new codenames.
  if (backend === "debootstrap" && !(await isFile(`/usr/share/debootstrap/scripts/${suite.suite}`))) {
    throw new ToolError(`this debootstrap does not know the suite ${suite.suite}`, {
      hint: "Install a newer debootstrap, or use --backend mmdebstrap.",
    });
  }
  return {
    backend,
    toolPath,
    suite,
    variant: request.variant,
    architecture,
    foreign: !runsNatively(architecture),
    components: request.components ?? FAMILY_DEFAULTS[suite.family].components,
    include: request.include,
    exclude: request.exclude,
    mirror,
    mirrorOrigin,
    pockets,
    keyring,
    keyringFormat,
    insecure: request.insecure,
    cacheDir: request.cacheDir === undefined ? undefined : resolve(request.cacheDir),
    mergedUsrHooks: backend === "mmdebstrap" ? await mergedUsrHookDir() : undefined,
  };
}

async function mergedUsrHookDir(): Promise<string | undefined> {
  const dir = join(MMDEBSTRAP_HOOKS, "maybe-merged-usr");
  return (await isFile(join(dir, "setup00.sh"))) ? dir : undefined;
}

/** Where the cache keeps package files and (for mmdebstrap) the index files. */
function cachePaths(cacheDir: string) {
  return { archives: join(cacheDir, "archives"), lists: join(cacheDir, "lists") };
}

/**
 * apt's trust for mmdebstrap, in the workspace `workDir`: `Dir::Etc::Trusted` (an empty file) and
 * `Dir::Etc::TrustedParts` (a directory with a copy of the keyring), set with mmdebstrap's `--keyring`,
 * which keeps them out of the tree's apt configuration.
 */
export function aptTrustPaths(workDir: string): { readonly file: string; readonly dir: string } {
  return { file: join(workDir, "apt-trusted.gpg"), dir: join(workDir, "apt-trusted.gpg.d") };
}

/** Makes the files of {@link aptTrustPaths}: nothing but the plan's keyring is trusted. */
export async function prepareAptTrust(plan: DebianPlan, workDir: string): Promise<void> {
  if (plan.backend !== "mmdebstrap" || plan.keyring === undefined) return;
  const trust = aptTrustPaths(workDir);
  await writeFile(trust.file, "");
  await mkdir(trust.dir);
  // apt reads *.asc in that directory as armored and *.gpg as packets, and ignores any other name
  // (.pgp, .key, .kbx).
  const name = plan.keyringFormat === "armored" ? "keyring.asc" : "keyring.gpg";
  await copyFile(plan.keyring, join(trust.dir, name));
}

/**
 * The tool's command line for `target` in the workspace `workDir`. Pure: the plan decides everything.
 * `MKBASE_CACHE_DIR` in the environment carries the cache path into mmdebstrap's hooks, so no path is
 * ever quoted into a shell line.
 */
export function debianCommandLine(plan: DebianPlan, workDir: string, target: string): string[] {
  const args: string[] = [];
  const list = (items: readonly string[]): string => items.join(",");
  if (plan.backend === "debootstrap") {
    if (plan.variant !== "important") args.push(`--variant=${plan.variant}`);
    args.push(`--arch=${plan.architecture}`, `--components=${list(plan.components)}`);
    if (plan.include.length > 0) args.push(`--include=${list(plan.include)}`);
    if (plan.exclude.length > 0) args.push(`--exclude=${list(plan.exclude)}`);
    if (plan.keyring !== undefined) args.push(`--keyring=${plan.keyring}`);
    if (plan.insecure) args.push("--no-check-gpg");
    if (plan.cacheDir !== undefined) args.push(`--cache-dir=${cachePaths(plan.cacheDir).archives}`);
    if (plan.foreign) args.push("--foreign");
    args.push(plan.suite.suite, target);
    if (plan.mirror !== undefined) args.push(plan.mirror);
    return args;
  }
  args.push(
    "--mode=root",
    "--format=directory",
    `--variant=${plan.variant}`,
    `--architectures=${plan.architecture}`,
    `--components=${list(plan.components)}`,
  );
  if (plan.include.length > 0) args.push(`--include=${list(plan.include)}`);
  if (plan.keyring !== undefined) {
    const trust = aptTrustPaths(workDir);
    // A file sets Dir::Etc::Trusted, a directory Dir::Etc::TrustedParts: the host's keys take no part.
    // Without check/signed-by the sources name no keyring: apt checks against these during the
    // bootstrap, and in the image against the keyring package it installed.
    args.push(`--keyring=${trust.file}`, `--keyring=${trust.dir}`, "--skip=check/signed-by");
  }
  if (plan.insecure) {
    args.push(
      '--aptopt=Acquire::AllowInsecureRepositories "true"',
      '--aptopt=APT::Get::AllowUnauthenticated "true"',
    );
  }
  // The temp dir is private (0700), so apt's unprivileged download user could not write into it anyway.
  args.push('--aptopt=APT::Sandbox::User "root"');
  // The index files stay for mkbase to read the Release date (and to cache); its cleanup removes them.
  args.push("--skip=cleanup/apt");
  if (plan.cacheDir !== undefined) {
    // Package files of the essential set are unlinked after install unless told otherwise.
    args.push(
      "--skip=essential/unlink",
      // Hardlinks where the cache shares the temp dir's filesystem (apt never writes into a .deb; the
      // cleanup only unlinks), a copy otherwise.
      '--setup-hook=mkdir -p "$1/var/cache/apt/archives" "$1/var/lib/apt/lists" && { cp -al "$MKBASE_CACHE_DIR/archives/." "$1/var/cache/apt/archives/" 2>/dev/null || cp -a "$MKBASE_CACHE_DIR/archives/." "$1/var/cache/apt/archives/"; } && cp -a "$MKBASE_CACHE_DIR/lists/." "$1/var/lib/apt/lists/"',
    );
  }
  // After the cache hook: the merged-/usr hook runs apt-get update, which then finds the cached lists.
  if (plan.mergedUsrHooks !== undefined) args.push(`--hook-dir=${plan.mergedUsrHooks}`);
  args.push(plan.suite.suite, target);
  if (plan.mirror !== undefined) args.push(plan.mirror);
  // Full sources.list lines: mmdebstrap installs the newest version any of them offers, and writes them
  // all into the image's sources.list.
  for (const pocket of plan.pockets)
    args.push(`deb ${pocket.uri} ${pocket.suite} ${plan.components.join(" ")}`);
  return args;
}

/** Step lines of debootstrap and mmdebstrap: `I:`, `W:`, `E:` prefixes. */
function isStepLine(line: string): boolean {
  return /^[IWE]: /.test(line);
}

export interface DebianOutcome {
  /** The newest `Date:` of the Release files the tool fetched, if any. */
  readonly releaseDate: number | undefined;
}

export interface RunOptions extends ToolRunOptions {
  /** Passed to mmdebstrap (which makes its output reproducible with it). */
  readonly sourceDateEpoch?: number;
}

/**
 * The lines in which apt (`NO_PUBKEY`, `is not signed`, `EXPKEYSIG`…) or debootstrap (`Release signed
 * by unknown key`, `Invalid Release signature`) says that the Release file's signature did not verify.
 */
export function isSignatureFailure(line: string): boolean {
  return /NO_PUBKEY|EXPKEYSIG|REVKEYSIG|BADSIG|signatures couldn't be verified|signatures were invalid|is not signed|Release signed by unknown key|Invalid Release signature/.test(
    line,
  );
}

/**
 * The error for a run whose Release signature did not verify with the plan's keyring: said in those
 * words, with the tool's reason, instead of the tool's last error line (mmdebstrap's is a failed hook).
 */
function signatureError(plan: DebianPlan, reason: string, cause: unknown): ToolError {
  const defaults = FAMILY_DEFAULTS[plan.suite.family];
  const isDefault = plan.keyring !== undefined && defaults.keyrings.includes(plan.keyring);
  return new ToolError(
    `the signatures of the ${plan.suite.suite} archive could not be verified with the keyring ${plan.keyring ?? "(none)"}: ${reason}`,
    {
      cause,
      hint: isDefault
        ? `The archive may be signed by a key newer than this keyring: update the Debian package ${defaults.keyringPackage}, or pass --keyring FILE with the archive's signing keys.`
        : `Pass --keyring a keyring with the keys that sign this archive, or leave it out to use the ${defaults.displayName} archive keyring (package ${defaults.keyringPackage}).`,
    },
  );
}

/**
 * Why a signature did not verify, from the first line that said so: the keys the keyring lacks (apt's
 * `NO_PUBKEY ID…`, debootstrap's `unknown key (key id ID)`), else the line without its `E:` or `W:`.
 */
export function signatureReason(line: string): string {
  const ids = [...line.matchAll(/(?:NO_PUBKEY|key id) ([0-9A-Fa-f]{8,40})/g)].map((m) => m[1]);
  if (ids.length > 0) {
    return `the Release file is signed by ${ids.length === 1 ? "key" : "keys"} ${ids.join(", ")}, which the keyring does not hold`;
  }
  return line.trim().replace(/^[EWF]: /, "");
}

/** Runs the planned bootstrap into `target` (an empty directory) in the workspace `workDir`. */
export async function runDebianBootstrap(
  plan: DebianPlan,
  workDir: string,
  target: string,
  options: RunOptions,
): Promise<DebianOutcome> {
  const env: Record<string, string | undefined> = { ...options.env };
  delete env.SOURCE_DATE_EPOCH;
  if (options.sourceDateEpoch !== undefined) env.SOURCE_DATE_EPOCH = String(options.sourceDateEpoch);
  if (plan.cacheDir !== undefined) {
    const paths = cachePaths(plan.cacheDir);
    await makeDirectories(paths.archives);
    await makeDirectories(paths.lists);
    env.MKBASE_CACHE_DIR = plan.cacheDir;
  }
  options.onProgress({
    kind: "phase",
    message: `bootstrapping ${FAMILY_DEFAULTS[plan.suite.family].displayName} ${plan.suite.suite} (${plan.architecture}) with ${plan.backend}`,
  });
  await prepareAptTrust(plan, workDir);
  const forward = forwardLines(plan.backend, options.onProgress, options.verbose, isStepLine);
  let signatureFailure: string | undefined;
  const onLine = (line: string): void => {
    if (signatureFailure === undefined && isSignatureFailure(line)) signatureFailure = line;
    forward(line);
  };
  const failureHint = `Read ${plan.backend}'s output (run with --verbose to see all of it); check the mirror, the suite and network access.`;
  try {
    await runTool({
      name: plan.backend,
      command: plan.toolPath,
      args: debianCommandLine(plan, workDir, target),
      env,
      signal: options.signal,
      onLine,
      failureHint,
    });
  } catch (error) {
    if (error instanceof ToolError && signatureFailure !== undefined && plan.keyring !== undefined) {
      throw signatureError(plan, signatureReason(signatureFailure), error);
    }
    throw error;
  }
  if (plan.backend === "debootstrap" && plan.foreign) {
    options.onProgress({ kind: "phase", message: "running debootstrap's second stage through qemu-user" });
    await runTool({
      name: "debootstrap --second-stage",
      command: "chroot",
      args: [target, "/debootstrap/debootstrap", "--second-stage"],
      env,
      signal: options.signal,
      onLine,
      failureHint,
    });
  }
  if (plan.backend === "debootstrap" && plan.pockets.length > 0) await listPockets(target, plan, options);
  else if (plan.backend === "debootstrap" && plan.mirror === undefined && hasPockets(plan.suite.suite)) {
    // With its default mirror mmdebstrap adds the pockets itself; debootstrap lists the release alone,
    // and nothing else would tell that the image's apt never sees a security fix.
    options.onProgress({
      kind: "warning",
      message: `debootstrap installs from ${plan.suite.suite} alone and lists only it for apt: the image's apt sees no ${plan.suite.suite}-updates or ${plan.suite.suite}-security (use the mmdebstrap backend, which adds them with its default mirror, or add them to the sources in a derived image)`,
    });
  }
  const outcome = { releaseDate: await readReleaseDate(target) };
  if (plan.cacheDir !== undefined) await saveToCache(target, plan, options.signal);
  if (plan.backend === "mmdebstrap") await removeMmdebstrapLeftovers(target);
  return outcome;
}

/**
 * Adds the plan's pockets to the sources.list debootstrap wrote, which names the release alone, so that
 * apt in the image sees the updates; and says that the packages themselves came from the release.
 */
async function listPockets(target: string, plan: DebianPlan, options: RunOptions): Promise<void> {
  const lines = plan.pockets.map(
    (pocket) => `deb ${pocket.uri} ${pocket.suite} ${plan.components.join(" ")}\n`,
  );
  await appendFile(join(target, "etc/apt/sources.list"), lines.join(""));
  options.onProgress({
    kind: "warning",
    message: `debootstrap installs from ${plan.suite.suite} alone: the image lists ${plan.pockets.map((p) => p.suite).join(" and ")} for apt, but holds none of their updates (use the mmdebstrap backend, or run apt-get upgrade in a derived image)`,
  });
}

/** The newest Release date among the index files in the tree (read before cleanup removes them). */
async function readReleaseDate(root: string): Promise<number | undefined> {
  const lists = join(root, "var/lib/apt/lists");
  const names = await readdir(lists).catch(() => [] as string[]);
  let newest: number | undefined;
  for (const name of names.filter((n) => /_(In)?Release$/.test(n))) {
    const date = releaseDate(await readFile(join(lists, name), "latin1"));
    if (date !== undefined && (newest === undefined || date > newest)) newest = date;
  }
  return newest;
}

/**
 * Keeps what mmdebstrap downloaded for the next run: new package files, and the index files (so the next
 * update only asks whether they changed). debootstrap fills its `--cache-dir` itself.
 */
async function saveToCache(root: string, plan: DebianPlan, signal: AbortSignal): Promise<void> {
  if (plan.backend !== "mmdebstrap" || plan.cacheDir === undefined) return;
  const paths = cachePaths(plan.cacheDir);
  const archives = join(root, "var/cache/apt/archives");
  for (const name of await readdir(archives).catch(() => [] as string[])) {
    if (signal.aborted) return;
    if (!name.endsWith(".deb")) continue;
    try {
      await copyFile(join(archives, name), join(paths.archives, name), constants.COPYFILE_EXCL);
    } catch (error) {
      if (errnoCode(error) !== "EEXIST") throw error;
    }
  }
  const lists = join(root, "var/lib/apt/lists");
  // Only the index files themselves: not the lock, nor the partial/ and auxfiles/ directories.
  const entries = await readdir(lists, { withFileTypes: true }).catch(() => []);
  const names = entries.filter((e) => e.isFile() && e.name !== "lock").map((e) => e.name);
  if (names.length === 0) return;
  await rm(paths.lists, { recursive: true, force: true });
  await makeDirectories(paths.lists);
  for (const name of names) await copyFile(join(lists, name), join(paths.lists, name));
}
