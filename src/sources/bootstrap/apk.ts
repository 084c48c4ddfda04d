/**
 * Alpine root filesystems with apk.static: `apk.static --root ROOT --initdb -U -X REPO… add alpine-base`,
 * signatures checked against the keys in `--keys-dir` (never `--allow-untrusted` unless `--insecure`).
 * apk.static comes from PATH, or from the first repository's `apk-tools-static` package, verified
 * before it runs (package signature against `--keys-dir`, or a pinned `--apk-static-sha256`).
 */
import { createHash } from "node:crypto";
import { chmod, readFile, readdir, stat, writeFile } from "node:fs/promises";
import type { IncomingMessage } from "node:http";
import { join, resolve } from "node:path";
import { buffer } from "node:stream/consumers";
import { gunzipSync } from "node:zlib";
import { MkbaseError, ToolError, UsageError, errnoCode } from "../../errors.js";
import { httpGet } from "../../net/http-get.js";
import { proxyHint } from "../../net/proxy.js";
import {
  loadKeys,
  parseApkIndex,
  readPinnedPackage,
  readSmallTar,
  splitGzipMembers,
  verifyApkPackage,
  verifySignedMember,
} from "./apk-package.js";
import { requireEmulation } from "./host.js";
import { findOnPath, forwardLines, runTool, type ToolEnvironment, type ToolRunOptions } from "./run-tool.js";
import { makeDirectories } from "../../make-directories.js";

/** Where an Alpine host keeps the keys its own apk trusts. */
const HOST_KEYS_DIR = "/etc/apk/keys";

/** Node's `process.arch` in apk's spelling. */
const APK_ARCH_OF_NODE: Readonly<Record<string, string>> = {
  x64: "x86_64",
  arm64: "aarch64",
  ia32: "x86",
  ppc64: "ppc64le",
  s390x: "s390x",
  riscv64: "riscv64",
  arm: "armv7",
};
/** apk's architectures, each with dpkg's name for the same machine (how the emulation check knows them). */
const DPKG_ARCH_OF_APK: Readonly<Record<string, string>> = {
  x86_64: "amd64",
  aarch64: "arm64",
  armv7: "armhf",
  armhf: "armel",
  x86: "i386",
  ppc64le: "ppc64el",
  s390x: "s390x",
  riscv64: "riscv64",
  loongarch64: "loong64",
};
const APK_ARCHES = new Set(Object.keys(DPKG_ARCH_OF_APK));

/** This machine's architecture in apk's spelling. */
function hostApkArchitecture(): string {
  return APK_ARCH_OF_NODE[process.arch] ?? process.arch;
}

export interface AlpineRequest {
  readonly branch: string;
  readonly packages: readonly string[];
  readonly mirror?: string;
  /** Full repository URLs; `MIRROR/BRANCH/main` and `…/community` when empty. */
  readonly repositories: readonly string[];
  readonly architecture?: string;
  readonly keysDir?: string;
  readonly apkStaticSha256?: string;
  readonly insecure: boolean;
  readonly cacheDir?: string;
  readonly env: ToolEnvironment;
  /** Where binfmt_misc lists the qemu-user handlers (`/proc/sys/fs/binfmt_misc`); injectable for tests. */
  readonly binfmtDir?: string;
}

export type ApkStaticSource =
  | { readonly kind: "path"; readonly path: string }
  | { readonly kind: "download"; readonly repository: string; readonly sha256: string | undefined };

export interface AlpinePlan {
  readonly branch: string;
  readonly packages: readonly string[];
  readonly repositories: readonly string[];
  readonly architecture: string;
  /** Undefined only with `insecure`. */
  readonly keysDir: string | undefined;
  readonly apkStatic: ApkStaticSource;
  readonly insecure: boolean;
  readonly cacheDir: string | undefined;
}

async function isDirectory(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isDirectory(),
    () => false,
  );
}

/** Checks the request and decides the run; no network access. */
export async function planAlpine(request: AlpineRequest): Promise<AlpinePlan> {
  if (!/^(v\d+\.\d+|edge|latest-stable)$/.test(request.branch)) {
    throw new UsageError(`unknown Alpine branch ${JSON.stringify(request.branch)}`, {
      hint: "Give a release branch such as v3.20, or edge, or latest-stable.",
    });
  }
  const architecture = request.architecture ?? hostApkArchitecture();
  if (!APK_ARCHES.has(architecture)) {
    throw new UsageError(`unknown architecture ${JSON.stringify(architecture)} for Alpine`, {
      hint: `Use one of ${[...APK_ARCHES].join(", ")}.`,
    });
  }
  // The packages' install scripts run inside the tree: a foreign one needs qemu-user, checked before
  // any download, as for Debian.
  await requireEmulation(DPKG_ARCH_OF_APK[architecture] as string, request.binfmtDir, architecture);
  if (request.packages.length === 0)
    throw new UsageError("--packages is empty", { hint: "Name at least one package, e.g. alpine-base." });
  let repositories = [...request.repositories];
  if (repositories.length === 0) {
    if (request.mirror === undefined) {
      throw new UsageError("no Alpine mirror is known", {
        hint: "Pass --mirror URL (the directory holding v3.20/, edge/ …) or one --repository URL per repository.",
      });
    }
    const base = request.mirror.replace(/\/+$/, "");
    repositories = [`${base}/${request.branch}/main`, `${base}/${request.branch}/community`];
  }
  for (const repository of repositories) {
    if (!/^(https?|file):\/\//.test(repository)) {
      throw new UsageError(`repository ${repository}: expected an http://, https:// or file:// URL`);
    }
  }
  let keysDir: string | undefined;
  if (request.keysDir !== undefined) {
    keysDir = resolve(request.keysDir);
    if (!(await isDirectory(keysDir))) {
      throw new UsageError(`--keys-dir ${request.keysDir} does not exist or is not a directory`, {
        hint: "Give a directory of Alpine's *.rsa.pub signing keys.",
      });
    }
  } else if (await isDirectory(HOST_KEYS_DIR)) {
    keysDir = HOST_KEYS_DIR;
  }
  if (keysDir !== undefined && !request.insecure) {
    const names = await readdir(keysDir).catch(() => []);
    if (!names.some((name) => name.endsWith(".rsa.pub"))) {
      // An empty keys directory would only fail after the index was downloaded, as an unknown signer.
      throw new UsageError(`${keysDir} holds no *.rsa.pub keys to check the packages with`, {
        hint: "Put Alpine's signing keys there (the alpine-keys package has them), or give another --keys-dir.",
      });
    }
  }
  if (keysDir === undefined && !request.insecure) {
    throw new UsageError("no Alpine signing keys to check the packages with", {
      hint: "Pass --keys-dir DIR holding Alpine's *.rsa.pub keys (from the alpine-keys package), or --insecure to skip signature checks.",
    });
  }
  const sha256 = request.apkStaticSha256?.toLowerCase();
  if (sha256 !== undefined && !/^[0-9a-f]{64}$/.test(sha256)) {
    throw new UsageError(`--apk-static-sha256 ${request.apkStaticSha256}: expected 64 hexadecimal digits`);
  }
  const onPath = await findOnPath("apk.static", request.env);
  let apkStatic: ApkStaticSource;
  if (onPath !== undefined) apkStatic = { kind: "path", path: onPath };
  else {
    if (keysDir === undefined && sha256 === undefined) {
      throw new ToolError("apk.static is not on PATH, and a downloaded one could not be verified", {
        hint: "Pass --keys-dir DIR with Alpine's signing keys or --apk-static-sha256 HASH of the apk-tools-static package, or put apk.static on PATH.",
      });
    }
    apkStatic = { kind: "download", repository: repositories[0] as string, sha256 };
  }
  return {
    branch: request.branch,
    packages: request.packages,
    repositories,
    architecture,
    keysDir,
    apkStatic,
    insecure: request.insecure,
    cacheDir: request.cacheDir === undefined ? undefined : resolve(request.cacheDir),
  };
}

/** apk.static's arguments. */
export function apkCommandLine(plan: AlpinePlan, root: string): string[] {
  const args = ["--root", root, "--initdb", "--update-cache", "--no-progress", "--arch", plan.architecture];
  if (plan.keysDir !== undefined) args.push("--keys-dir", plan.keysDir);
  if (plan.insecure) args.push("--allow-untrusted");
  for (const repository of plan.repositories) args.push("--repository", repository);
  if (plan.cacheDir !== undefined) args.push("--cache-dir", plan.cacheDir);
  args.push("add", ...plan.packages);
  return args;
}

async function fetchBytes(url: string, signal: AbortSignal): Promise<Buffer> {
  if (url.startsWith("file://")) {
    try {
      return await readFile(new URL(url));
    } catch (error) {
      throw new ToolError(`cannot read ${url}: ${(error as Error).message}`, { cause: error });
    }
  }
  let response: IncomingMessage;
  try {
    response = await httpGet(new URL(url), signal);
  } catch (error) {
    if (signal.aborted || error instanceof MkbaseError) throw error;
    throw new ToolError(`cannot download ${url}: ${(error as Error).message}`, {
      cause: error,
      hint: proxyHint(new URL(url)) ?? "Check the mirror URL and network access.",
    });
  }
  try {
    if (response.statusCode !== 200) {
      throw new ToolError(`cannot download ${url}: HTTP ${String(response.statusCode)}`, {
        hint: proxyHint(new URL(url), response.statusCode) ?? "Check the mirror URL and the branch.",
      });
    }
    return await buffer(response);
  } catch (error) {
    if (signal.aborted || error instanceof ToolError) throw error;
    throw new ToolError(`the download of ${url} was cut short: ${(error as Error).message}`, {
      cause: error,
      hint: "Check the mirror URL and network access, and try again.",
    });
  } finally {
    response.destroy();
  }
}

async function readKeys(dir: string) {
  const files = new Map<string, Buffer>();
  for (const name of await readdir(dir)) {
    try {
      files.set(name, await readFile(join(dir, name)));
    } catch (error) {
      if (errnoCode(error) !== "EISDIR") throw error;
    }
  }
  return loadKeys(files);
}

/**
 * Downloads `apk-tools-static` from the repository, verifies it, and writes `apk.static` into `dir`.
 * With keys, the index and the package must be signed by one of them; with a pinned sha256 the
 * package file must have that hash (the index then only says which file to fetch).
 */
export async function fetchApkStatic(
  plan: AlpinePlan,
  source: Extract<ApkStaticSource, { kind: "download" }>,
  dir: string,
  signal: AbortSignal,
): Promise<string> {
  // This machine's apk.static, whatever --arch says: it runs here, and installs another architecture's
  // packages with --arch.
  const base = `${source.repository.replace(/\/+$/, "")}/${hostApkArchitecture()}`;
  const keys = plan.keysDir === undefined ? new Map() : await readKeys(plan.keysDir);
  const indexUrl = `${base}/APKINDEX.tar.gz`;
  const indexWhat = `the index at ${indexUrl}`;
  const indexMembers = splitGzipMembers(await fetchBytes(indexUrl, signal), indexWhat);
  if (source.sha256 === undefined) verifySignedMember(indexMembers, keys, indexWhat);
  const indexTar = readSmallTar(gunzipSync(indexMembers.at(-1) as Buffer));
  const entry = parseApkIndex(indexTar.get("APKINDEX")?.toString("utf8") ?? "").find(
    (e) => e.name === "apk-tools-static",
  );
  if (entry === undefined) {
    throw new ToolError(`${indexWhat} lists no apk-tools-static package`, {
      hint: "Check the repository (apk-tools-static lives in main).",
    });
  }
  const packageUrl = `${base}/apk-tools-static-${entry.version}.apk`;
  const bytes = await fetchBytes(packageUrl, signal);
  const what = `the package at ${packageUrl}`;
  let files: ReadonlyMap<string, Buffer>;
  if (source.sha256 !== undefined) {
    const actual = createHash("sha256").update(bytes).digest("hex");
    if (actual !== source.sha256) {
      throw new ToolError(`${what} has sha256 ${actual}, not the pinned ${source.sha256}`, {
        hint: "The package changed or was altered; pin the new hash only after checking where it came from.",
      });
    }
    files = readPinnedPackage(bytes, what).files;
  } else {
    files = verifyApkPackage(bytes, keys, what).files;
  }
  const binary = files.get("sbin/apk.static");
  if (binary === undefined) throw new ToolError(`${what} holds no sbin/apk.static`);
  await makeDirectories(dir, 0o700);
  const path = join(dir, "apk.static");
  await writeFile(path, binary, { mode: 0o700 });
  await chmod(path, 0o700);
  return path;
}

/** Runs apk.static into `target` and writes the image's `/etc/apk/repositories`. */
export async function runAlpine(
  plan: AlpinePlan,
  workspaceDir: string,
  target: string,
  options: ToolRunOptions,
): Promise<void> {
  let apkStatic: string;
  if (plan.apkStatic.kind === "path") apkStatic = plan.apkStatic.path;
  else {
    options.onProgress({
      kind: "phase",
      message: `downloading and verifying apk-tools-static from ${plan.apkStatic.repository}`,
    });
    apkStatic = await fetchApkStatic(plan, plan.apkStatic, join(workspaceDir, "apk-tools"), options.signal);
  }
  if (plan.cacheDir !== undefined) await makeDirectories(plan.cacheDir);
  options.onProgress({
    kind: "phase",
    message: `bootstrapping Alpine ${plan.branch} (${plan.architecture}) with apk.static`,
  });
  await runTool({
    name: "apk.static",
    command: apkStatic,
    args: apkCommandLine(plan, target),
    env: options.env,
    signal: options.signal,
    // apk prints one line per package; its errors start with "ERROR:" and warnings with "WARNING:".
    onLine: forwardLines("apk", options.onProgress, options.verbose, (line) =>
      /^(ERROR|WARNING|\(\d+\/\d+\))/.test(line),
    ),
    failureHint:
      "Read apk's output (run with --verbose to see all of it); check the repositories and the keys.",
  });
  const etcApk = join(target, "etc/apk");
  await makeDirectories(etcApk);
  const remote = plan.repositories.filter((r) => !r.startsWith("file:"));
  await writeFile(join(etcApk, "repositories"), remote.map((r) => `${r}\n`).join(""));
}
