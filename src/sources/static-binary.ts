/**
 * `mkbase scratch BINARY`: one program, and only what it needs, as the entries of a FROM scratch image.
 *
 * Everything is decided when the source is opened — the ELF check, the platform, the library closure, the
 * essentials, the `--add` trees — so that a program that would not run is refused before any image exists,
 * and so that the image's command can be checked against the files it will really hold. The entry list is
 * small (a program, a few libraries, at most a zoneinfo tree) and is kept in memory, sorted.
 */
import { readlink, realpath, stat } from "node:fs/promises";
import path from "node:path";
import { SourceError, UsageError, errnoCode, throwIfAborted } from "../errors.js";
import { inspectElfFile, type ElfInfo } from "../elf/read.js";
import { platformOfElf } from "../elf/platform.js";
import {
  MAX_SYMLINKS,
  assertSysroot,
  resolveLibraries,
  walkInRoot,
  type ResolvedFile,
} from "../elf/resolve.js";
import { DEFAULT_PATH, isShellForm, withEnv, type ContainerConfig } from "../image/config.js";
import { formatPlatform, platformsMatch, type Platform } from "../image/platform.js";
import { bytesEntry, directoryEntry, displayPath, type EntrySource, type TarEntry } from "../tar/entry.js";
import { walkTree } from "../tar/walk.js";

const posix = path.posix;

/** Where `--ca-certs` puts the bundle: the path Debian, Ubuntu and Go's crypto/x509 look at first. */
export const CA_BUNDLE_IMAGE_PATH = "/etc/ssl/certs/ca-certificates.crt";
/** Where CA bundles live on common distributions, in the order they are tried on the host or sysroot. */
const CA_BUNDLE_CANDIDATES = [
  "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Arch, Alpine (ca-certificates)
  "/etc/pki/tls/certs/ca-bundle.crt", // Fedora, RHEL
  "/etc/ssl/ca-bundle.pem", // openSUSE
  "/etc/ssl/cert.pem", // Alpine (libressl), macOS-style layouts
];
export const ZONEINFO_IMAGE_PATH = "/usr/share/zoneinfo";

/**
 * The user the image runs as. `--user NAME[:UID]` names an account, which is added to `/etc/passwd` and
 * `/etc/group` (its group has the same number); `--user UID[:GID]` gives only numbers, as Dockerfile `USER`
 * may, and adds no account.
 */
export interface ScratchUser {
  readonly name: string | undefined;
  readonly uid: number;
  readonly gid: number;
}

/** `--add SRC:DEST`: a host file or directory copied as Dockerfile `COPY SRC DEST` would. */
export interface AddSpec {
  readonly source: string;
  /** Absolute image path; a trailing `/` means "into this directory" for a file. */
  readonly dest: string;
}

export interface StaticBinaryOptions {
  /** The program on this machine. */
  readonly binary: string;
  /** Absolute path of the program in the image; a trailing `/` puts it into that directory. Default `/NAME`. */
  readonly dest?: string;
  /** The platform the user asked for; the program must be built for it. */
  readonly platform?: Platform;
  /** Copy the program interpreter and the shared-library closure of a dynamic program. */
  readonly bundleLibs?: boolean;
  /** Root filesystem to take libraries, CA certificates and zoneinfo from instead of this machine's `/`. */
  readonly sysroot?: string;
  readonly caCerts?: boolean;
  readonly tzdata?: boolean;
  readonly user?: ScratchUser;
  /** An empty `/tmp` with mode 1777. */
  readonly tmp?: boolean;
  readonly adds?: readonly AddSpec[];
  /** `--chown` for the `--add` entries (default root). */
  readonly addOwner?: { readonly uid: number; readonly gid: number };
  /** `--chmod` for the `--add` entries (default: the source's permission bits). */
  readonly addMode?: number;
  /** mtime of every entry, in seconds. Default: the program's mtime (the default build epoch). */
  readonly mtime?: number;
  readonly signal?: AbortSignal;
}

/** An entry and what put it there, so that two inputs fighting over one path can both be named. */
interface PlannedEntry {
  readonly entry: TarEntry;
  readonly origin: string;
  /** A parent directory nobody asked for: any explicit entry for the same path replaces it. */
  readonly implicit: boolean;
}

const SLASH = 0x2f;

/**
 * Orders paths component by component, which is the order of a depth-first walk with sorted names:
 * a parent comes right before its children (`a`, `a/x`, `a-b`). Names hold no NUL, so treating `/` as the
 * lowest byte gives exactly that order.
 */
export function comparePaths(a: Buffer, b: Buffer): number {
  const length = Math.min(a.length, b.length);
  for (let index = 0; index < length; index++) {
    const x = a[index] === SLASH ? 0 : (a[index] as number);
    const y = b[index] === SLASH ? 0 : (b[index] as number);
    if (x !== y) return x - y;
  }
  return a.length - b.length;
}

/** `/usr/local/bin/app` → `usr/local/bin/app`, the form tar entries use. */
function entryPath(imagePath: string): Buffer {
  return Buffer.from(posix.normalize(`/${imagePath}`).replace(/^\/+|\/+$/g, ""));
}

function mapKey(path: Buffer): string {
  return path.toString("latin1");
}

/** The files of the image being planned, by path, with the checks that keep it consistent. */
class ImageTree {
  private readonly entries = new Map<string, PlannedEntry>();

  constructor(private readonly mtime: number) {}

  get(imagePath: Buffer): TarEntry | undefined {
    return this.entries.get(mapKey(imagePath))?.entry;
  }

  /** Adds `entry` and root-owned 0755 directories for any missing parent. */
  add(entry: TarEntry, origin: string, implicit = false): void {
    // The packer refuses such a name too, but only once the build runs, and points at --exclude, which
    // mkbase scratch does not take.
    if (/(^|\/)\.wh\./.test(entry.path.toString("latin1"))) {
      throw new SourceError(
        `${origin} puts /${displayPath(entry.path)} into the image: a ".wh." name in a layer is an overlay whiteout, which the engine takes for a deletion`,
        {
          path: displayPath(entry.path),
          hint: "Give it another name in the image (the --add or --dest destination), or move it out of the directory you add.",
        },
      );
    }
    this.addParents(entry.path, origin);
    const key = mapKey(entry.path);
    const existing = this.entries.get(key);
    if (existing === undefined || (existing.implicit && entry.type === "directory")) {
      this.entries.set(key, { entry, origin, implicit });
      return;
    }
    if (existing.entry.type === "directory" && entry.type === "directory") {
      // A directory named twice merges, as a second COPY into it would; the later metadata wins.
      if (!implicit) this.entries.set(key, { entry, origin, implicit });
      return;
    }
    if (sameEntry(existing.entry, entry)) return;
    throw new UsageError(
      `${origin} and ${existing.origin} both put something at /${displayPath(entry.path)}`,
      { hint: "Give each file in the image one source (change an --add destination or drop a flag)." },
    );
  }

  private addParents(child: Buffer, origin: string): void {
    let end = child.lastIndexOf(SLASH);
    const missing: Buffer[] = [];
    while (end > 0) {
      const parent = child.subarray(0, end);
      const existing = this.entries.get(mapKey(parent));
      if (existing !== undefined) {
        if (existing.entry.type !== "directory") {
          const target =
            existing.entry.linkname === undefined ? "" : ` (→ ${displayPath(existing.entry.linkname)})`;
          throw new UsageError(
            `${origin} puts /${displayPath(child)} below /${displayPath(parent)}, which ${existing.origin} makes a ${existing.entry.type}${target}`,
            {
              hint:
                existing.entry.type === "symlink"
                  ? "Use the path the link leads to as the destination."
                  : `Choose a destination that is not below /${displayPath(parent)}.`,
            },
          );
        }
        break;
      }
      missing.push(Buffer.from(parent));
      end = child.lastIndexOf(SLASH, end - 1);
    }
    for (const parent of missing.reverse()) {
      this.entries.set(mapKey(parent), {
        entry: parentDirectory(parent, this.mtime),
        origin,
        implicit: true,
      });
    }
  }

  /** Every entry, sorted so that each parent precedes its children. */
  sorted(): TarEntry[] {
    return [...this.entries.values()]
      .map((planned) => planned.entry)
      .sort((a, b) => comparePaths(a.path, b.path));
  }
}

function sameEntry(a: TarEntry, b: TarEntry): boolean {
  if (a.type !== b.type || a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid) return false;
  if (a.type === "symlink" || a.type === "hardlink")
    return a.linkname?.equals(b.linkname ?? Buffer.alloc(0)) === true;
  if (a.type === "file") {
    return a.content?.kind === "path" && b.content?.kind === "path" && a.content.path.equals(b.content.path);
  }
  return false;
}

/** A root-owned 0755 directory nobody asked for, above an entry (its name may not be UTF-8). */
function parentDirectory(path: Buffer, mtime: number): TarEntry {
  return { path, type: "directory", mode: 0o755, uid: 0, gid: 0, mtime, size: 0 };
}

function hostFileEntry(
  imagePath: Buffer,
  hostPath: string,
  size: number,
  mode: number,
  mtime: number,
): TarEntry {
  return {
    path: imagePath,
    type: "file",
    mode,
    uid: 0,
    gid: 0,
    mtime,
    size,
    content: { kind: "path", path: Buffer.from(hostPath) },
  };
}

function generatedFileEntry(imagePath: string, text: string, mtime: number): TarEntry {
  return bytesEntry(entryPath(imagePath).toString(), Buffer.from(text, "utf8"), 0o644, mtime);
}

/**
 * The home of a named account other than root: `/home/NAME`, which the image holds, owned by the user with
 * mode 0700, as distroless's `nonroot` has it. The engine sets `HOME` from `/etc/passwd`, and programs
 * keep caches and configuration there (Go's `os.UserCacheDir`, `~/.config`).
 */
export function homeDirectory(user: ScratchUser | undefined): string | undefined {
  return user?.name === undefined || user.uid === 0 ? undefined : `/home/${user.name}`;
}

/**
 * `/etc/passwd` for root and `user`, who has a {@link homeDirectory}. `/sbin/nologin` (absent in the image)
 * marks accounts nobody logs into.
 */
export function passwdFile(user: ScratchUser | undefined): string {
  const lines = ["root:x:0:0:root:/root:/sbin/nologin"];
  const home = homeDirectory(user);
  if (user?.name !== undefined && home !== undefined) {
    lines.push(`${user.name}:x:${user.uid}:${user.uid}:${user.name}:${home}:/sbin/nologin`);
  }
  return `${lines.join("\n")}\n`;
}

/** `/etc/group` for root and the user's own group. */
export function groupFile(user: ScratchUser | undefined): string {
  const lines = ["root:x:0:"];
  if (user?.name !== undefined && user.uid !== 0) lines.push(`${user.name}:x:${user.uid}:`);
  return `${lines.join("\n")}\n`;
}

/** The path of a real file: an explicit `dest`, or `dest/NAME` when it ends with `/`. */
function placeFile(dest: string, name: string): string {
  return dest.endsWith("/") ? posix.join(dest, name) : posix.normalize(dest);
}

/** The host path `imagePath` leads to inside `root` (a chrooted lookup), or undefined when it is missing. */
async function resolveInRoot(root: string, imagePath: string): Promise<string | undefined> {
  const walk = await walkInRoot(root, imagePath);
  return walk === undefined ? undefined : path.join(root, walk.realPath);
}

/**
 * The file a path given on the command line stands for, every symlink resolved. As Dockerfile COPY does
 * with its source, a symlink given as the program or as an `--add` source is followed, and the image holds
 * the target's bytes under the name given. The entry carries the real path because the packer opens files
 * without following a final symlink (a file swapped for a link during the build must not be read through it).
 *
 * @param shown how messages name the path (`./hello`, `--add ./link:/x: ./link`)
 * @throws SourceError when the path is a symlink that leads to nothing or round in a loop; any other
 *   failure (a missing or unreadable file) is left to the caller's own check, which names it
 */
async function followSourceLinks(file: string, shown: string): Promise<string> {
  try {
    return await realpath(file);
  } catch (error) {
    const broken = await brokenSymlinkError(file, shown, error);
    if (broken !== undefined) throw broken;
    return path.resolve(file);
  }
}

/**
 * The error for `file` when symlinks make it unreachable: it is a link whose target is missing, or links on
 * its way go round in a loop. Undefined for anything else, such as a plain file that is missing.
 */
async function brokenSymlinkError(
  file: string,
  shown: string,
  error: unknown,
): Promise<SourceError | undefined> {
  const code = errnoCode(error);
  if (code !== "ENOENT" && code !== "ELOOP") return undefined;
  const target = await readlink(file).catch(() => undefined);
  const hint = "Point the link at an existing file, or give the file's own path.";
  if (code === "ELOOP" && target === undefined) {
    return new SourceError(`${shown} cannot be reached: the symbolic links on its path go round in a loop`, {
      path: file,
      cause: error,
      hint: "Fix the links on the path (namei -l shows each one), or give the file's own path.",
    });
  }
  if (target === undefined) return undefined;
  if (code === "ELOOP") {
    return new SourceError(
      `${shown} is a symbolic link to ${target}, and the links from there go round in a loop`,
      { path: file, cause: error, hint },
    );
  }
  const direct = await linkTarget(file, target);
  const end = await endOfLinks(direct);
  const where = path.isAbsolute(target) ? "" : ` (${direct})`;
  const rest = end === direct ? "" : `, which leads to ${end}`;
  return new SourceError(`${shown} is a symbolic link to ${target}${where}${rest}, which does not exist`, {
    path: file,
    cause: error,
    hint,
  });
}

/** The absolute path a link's `target` names: relative targets start at the link's real directory. */
async function linkTarget(link: string, target: string): Promise<string> {
  const directory = path.dirname(path.resolve(link));
  return path.resolve(await realpath(directory).catch(() => directory), target);
}

/** Where a chain of symlinks that starts at `file` ends: the first path that is no symlink, or missing. */
async function endOfLinks(file: string): Promise<string> {
  let current = file;
  for (let links = 0; links < MAX_SYMLINKS; links++) {
    const target = await readlink(current).catch(() => undefined);
    if (target === undefined) break;
    current = await linkTarget(current, target);
  }
  return current;
}

function describeRoot(sysroot: string | undefined): string {
  return sysroot === undefined ? "on this machine" : `under the sysroot ${sysroot}`;
}

/** A FROM scratch image holding one program and, on request, its libraries and a few essentials. */
export class StaticBinarySource implements EntrySource {
  readonly description: string;
  private byPath: Map<string, TarEntry> | undefined;

  private constructor(
    /** The program's ELF header. */
    readonly elf: ElfInfo,
    /** The platform the program runs on, recorded in the image. */
    readonly platform: Platform,
    /** Where the program is in the image, e.g. `/hello`. */
    readonly binaryImagePath: string,
    /** The program's own mtime in seconds: the default build epoch. */
    readonly binaryMtime: number,
    /** Every entry of the image, sorted, parents first. */
    readonly entryList: readonly TarEntry[],
    /**
     * Directories of bundled libraries that the loader found on the source through `/etc/ld.so.conf` (or
     * musl's path file) alone: the image has no `/etc/ld.so.cache`, so `LD_LIBRARY_PATH` must name them.
     */
    readonly libraryPath: readonly string[],
    private readonly options: StaticBinaryOptions,
  ) {
    this.description = `program ${options.binary} (${formatPlatform(platform)})`;
  }

  /**
   * Checks the program and gathers every file of the image.
   *
   * @throws SourceError when the program is not an ELF program, is dynamic without `bundleLibs`, or a file
   *   the options ask for is missing; UsageError when the program contradicts `platform` or two inputs
   *   claim the same path
   */
  static async open(options: StaticBinaryOptions): Promise<StaticBinarySource> {
    const { binary } = options;
    const hostBinary = await followSourceLinks(binary, binary);
    const elf = await inspectElfFile(binary);
    if (elf.isSharedLibrary) throw sharedLibraryError(binary, elf);
    const built = platformOfElf(elf, binary);
    // An ELF header names no amd64 or arm64 level (GOAMD64=v3, -march=armv8.2-a): the one asked for stands.
    const asked = options.platform;
    const platform =
      asked?.variant !== undefined &&
      asked.architecture === built.architecture &&
      built.architecture !== "arm"
        ? asked
        : built;
    if (options.platform !== undefined && !platformsMatch(options.platform, platform)) {
      throw new UsageError(
        `${binary} is built for ${elf.machineName} (${formatPlatform(platform)}), but --platform asks for ${formatPlatform(options.platform)}`,
        {
          hint: `Build the program for ${formatPlatform(options.platform)}, or drop --platform (the program's architecture sets it).`,
        },
      );
    }
    if (!elf.isStatic && options.bundleLibs !== true) throw dynamicProgramError(binary, elf);
    if (options.sysroot !== undefined) await assertSysroot(options.sysroot);

    const stats = await stat(hostBinary);
    const binaryMtime = Math.floor(stats.mtimeMs / 1000);
    const mtime = options.mtime ?? binaryMtime;
    // The name given, not the target's: `hello -> hello-static` makes /hello, as COPY names it.
    const binaryImagePath = placeFile(options.dest ?? "/", path.basename(binary));
    if (!posix.isAbsolute(binaryImagePath) || binaryImagePath === "/") {
      throw new UsageError(
        `--dest ${options.dest ?? ""}: give an absolute path for the program, e.g. /usr/local/bin/app`,
      );
    }

    const tree = new ImageTree(mtime);
    tree.add(hostFileEntry(entryPath(binaryImagePath), hostBinary, stats.size, 0o755, mtime), binary);
    const libraryPath = elf.isStatic
      ? []
      : await addLibraries(tree, binary, elf, binaryImagePath, options, mtime);
    if (options.caCerts === true) await addCaBundle(tree, options.sysroot, mtime);
    if (options.tzdata === true) await addZoneinfo(tree, options.sysroot, mtime, options.signal);
    if (options.user?.name !== undefined) {
      tree.add(generatedFileEntry("/etc/passwd", passwdFile(options.user), mtime), "--user");
      tree.add(generatedFileEntry("/etc/group", groupFile(options.user), mtime), "--user");
      const home = homeDirectory(options.user);
      if (home !== undefined) {
        const { uid } = options.user;
        tree.add({ ...directoryEntry(entryPath(home).toString(), 0o700, mtime), uid, gid: uid }, "--user");
      }
    }
    if (options.tmp === true) tree.add(directoryEntry("tmp", 0o1777, mtime), "--tmp");
    for (const spec of options.adds ?? []) await addCopy(tree, spec, options, mtime);
    return new StaticBinarySource(
      elf,
      platform,
      binaryImagePath,
      binaryMtime,
      tree.sorted(),
      libraryPath,
      options,
    );
  }

  *entries(signal: AbortSignal): Generator<TarEntry> {
    for (const entry of this.entryList) {
      throwIfAborted(signal);
      yield entry;
    }
  }

  /**
   * The image config: `base` (from the user's flags) with the program as ENTRYPOINT unless a command was
   * given, `args` as CMD, `SSL_CERT_FILE` for `--ca-certs`, `LD_LIBRARY_PATH` for libraries that only
   * `/etc/ld.so.conf` made findable, and the numeric USER for `--user`; then the command is checked
   * against the files of the image.
   *
   * @throws UsageError when the command names a program the image does not hold or cannot run
   */
  imageConfig(base: ContainerConfig, args: readonly string[]): ContainerConfig {
    let config = base;
    if (args.length > 0 && base.Cmd !== undefined) {
      throw new UsageError("both a CMD (--cmd or -c CMD) and arguments after -- set the command", {
        hint: "Put the arguments into the CMD, or drop it and keep the arguments after --.",
      });
    }
    if (base.Entrypoint === undefined && base.Cmd === undefined) {
      config = { ...config, Entrypoint: [this.binaryImagePath] };
    }
    if (args.length > 0) config = { ...config, Cmd: [...args] };
    if (
      this.options.caCerts === true &&
      !(config.Env ?? []).some((line) => line.startsWith("SSL_CERT_FILE="))
    ) {
      // OpenSSL and Go read this variable; programs with another built-in path still find the Debian one.
      config = withEnv(config, "SSL_CERT_FILE", CA_BUNDLE_IMAGE_PATH);
    }
    if (this.libraryPath.length > 0) config = withLibraryPath(config, this.libraryPath);
    const user = this.options.user;
    if (user !== undefined) {
      // Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
      config = { ...config, User: `${user.uid}:${user.gid}` };
    }
    checkCommand(config, (imagePath) => this.lookUp(imagePath));
    return config;
  }

  /** The entry a path leads to in the image, following symlinks and hardlinks; undefined when missing. */
  lookUp(imagePath: string): TarEntry | undefined {
    this.byPath ??= new Map(this.entryList.map((entry) => [mapKey(entry.path), entry]));
    return lookUpIn(this.byPath, imagePath);
  }
}

/**
 * `config` with `directories` in `LD_LIBRARY_PATH`: after the directories an `--env LD_LIBRARY_PATH` already
 * names, so that a value the user gave keeps its precedence and still lets the bundled libraries load.
 */
export function withLibraryPath(config: ContainerConfig, directories: readonly string[]): ContainerConfig {
  const line = (config.Env ?? []).findLast((entry) => entry.startsWith("LD_LIBRARY_PATH="));
  const given = line === undefined ? [] : line.slice("LD_LIBRARY_PATH=".length).split(":");
  const missing = directories.filter((directory) => !given.includes(directory));
  if (missing.length === 0) return config;
  return withEnv(config, "LD_LIBRARY_PATH", [...given.filter((entry) => entry !== ""), ...missing].join(":"));
}

function lookUpIn(byPath: ReadonlyMap<string, TarEntry>, imagePath: string): TarEntry | undefined {
  const pending = imagePath.split("/").filter((part) => part !== "" && part !== ".");
  let current = "";
  let entry: TarEntry | undefined;
  for (let links = 0; pending.length > 0;) {
    const part = pending.shift() as string;
    if (part === "..") {
      current = posix.dirname(`/${current}`).slice(1);
      continue;
    }
    const next = current === "" ? part : `${current}/${part}`;
    entry = byPath.get(mapKey(Buffer.from(next)));
    if (entry === undefined) return undefined;
    if (entry.type === "hardlink" && entry.linkname !== undefined) entry = byPath.get(mapKey(entry.linkname));
    if (entry?.type === "symlink" && entry.linkname !== undefined) {
      if (++links > 40) return undefined;
      const target = entry.linkname.toString("utf8");
      if (target.startsWith("/")) current = "";
      pending.unshift(...target.split("/").filter((piece) => piece !== "" && piece !== "."));
      continue;
    }
    if (entry === undefined || (entry.type !== "directory" && pending.length > 0)) return undefined;
    current = next;
  }
  return entry;
}

/**
 * Checks that the program the container starts (ENTRYPOINT's first word, else CMD's) is an executable
 * file of the image, and that a shell-form command has a `/bin/sh` to run it.
 *
 * @param lookUp finds what a path of the image leads to (symlinks followed)
 * @throws UsageError naming the command and what is wrong with it
 */
export function checkCommand(
  config: ContainerConfig,
  lookUp: (imagePath: string) => TarEntry | undefined,
): void {
  const usesEntrypoint = config.Entrypoint !== undefined && config.Entrypoint.length > 0;
  const command = usesEntrypoint ? (config.Entrypoint as readonly string[]) : (config.Cmd ?? []);
  const what = usesEntrypoint ? "ENTRYPOINT" : "CMD";
  const program = command[0];
  if (program === undefined || program === "") {
    throw new UsageError("the image has no command to run (empty ENTRYPOINT and CMD)", {
      hint: `Give one with --cmd '["/path/in/image"]' or --entrypoint.`,
    });
  }
  const shown = JSON.stringify(command);
  if (isShellForm(command) && lookUp("/bin/sh") === undefined) {
    throw new UsageError(
      `the ${what} ${shown} is in shell form, run by /bin/sh -c, and this image has no /bin/sh`,
      {
        hint: `Write it in exec form, e.g. --${what.toLowerCase()} '["/app","--flag"]', or --add a static shell as /bin/sh.`,
      },
    );
  }
  const candidates = program.includes("/")
    ? [posix.resolve(config.WorkingDir ?? "/", program)]
    : searchPath(config).map((directory) => posix.join(directory, program));
  const found = candidates.map((candidate) => ({ candidate, entry: lookUp(candidate) }));
  const file = found.find(({ entry }) => entry?.type === "file");
  if (file === undefined) {
    const where = program.includes("/")
      ? (candidates[0] as string)
      : `${program} on the PATH (${candidates.join(", ")})`;
    throw new UsageError(`the ${what} ${shown} runs ${where}, which is not a file in the image`, {
      hint: "Point it at a program the image holds (the binary, or a file put there with --add).",
    });
  }
  if (((file.entry as TarEntry).mode & 0o111) === 0) {
    throw new UsageError(
      `the ${what} ${shown} runs ${file.candidate}, which is not executable (mode ${((file.entry as TarEntry).mode & 0o7777).toString(8).padStart(4, "0")})`,
      { hint: "Add it with --chmod 755, or make the source file executable before adding it." },
    );
  }
}

function searchPath(config: ContainerConfig): string[] {
  const line = (config.Env ?? []).findLast((entry) => entry.startsWith("PATH="));
  const value = line === undefined ? DEFAULT_PATH : line.slice("PATH=".length);
  return value.split(":").filter((directory) => posix.isAbsolute(directory));
}

/**
 * A shared library given as the program: the image would build, and the container would die of SIGSEGV
 * (exit 139) at the library's entry point without a word about why.
 */
function sharedLibraryError(binary: string, elf: ElfInfo): SourceError {
  const soname = elf.soname === undefined ? "" : ` (${elf.soname})`;
  return new SourceError(
    `${binary} is a shared library${soname}, not a program: it has no program interpreter (PT_INTERP) and no position-independent executable mark (DF_1_PIE)`,
    {
      path: binary,
      hint: "Give mkbase scratch the program that uses the library; --bundle-libs copies the libraries a dynamic program needs, --add SRC:DEST any other file.",
    },
  );
}

function dynamicProgramError(binary: string, elf: ElfInfo): SourceError {
  const parts: string[] = [];
  if (elf.interpreter !== undefined) parts.push(`the program interpreter ${elf.interpreter}`);
  if (elf.needed.length > 0) {
    parts.push(`the shared ${elf.needed.length === 1 ? "library" : "libraries"} ${elf.needed.join(", ")}`);
  }
  return new SourceError(
    `${binary} is dynamically linked: it needs ${parts.join(" and ")}, which a FROM scratch image does not have`,
    {
      path: binary,
      hint:
        "Pass --bundle-libs to copy the loader and the libraries into the image (from this machine or --sysroot DIR), " +
        "or build a static program: CGO_ENABLED=0 for Go (without -buildmode=pie, which needs the loader), -static for gcc/clang, or musl-gcc -static.",
    },
  );
}

/**
 * Adds the interpreter and the libraries of a dynamic program.
 *
 * @returns the image directories of the libraries found only through the source's `/etc/ld.so.conf`
 *   (or musl's path file), which the loader in the image needs in `LD_LIBRARY_PATH`
 */
async function addLibraries(
  tree: ImageTree,
  binary: string,
  elf: ElfInfo,
  binaryImagePath: string,
  options: StaticBinaryOptions,
  mtime: number,
): Promise<string[]> {
  const resolved = await resolveLibraries(binary, elf, {
    sysroot: options.sysroot,
    binaryImagePath,
    signal: options.signal,
  });
  const files: ResolvedFile[] = [
    ...(resolved.interpreter === undefined ? [] : [resolved.interpreter]),
    ...resolved.libraries,
  ];
  for (const file of files) {
    for (const link of file.symlinks) {
      tree.add(
        {
          path: entryPath(link.path),
          type: "symlink",
          mode: 0o777,
          uid: 0,
          gid: 0,
          mtime,
          size: 0,
          linkname: Buffer.from(link.target),
        },
        "--bundle-libs",
      );
    }
    const stats = await stat(file.hostPath);
    // Shared objects are mapped executable; 0755 is what distributions ship them with.
    tree.add(
      hostFileEntry(entryPath(file.realImagePath), file.hostPath, stats.size, 0o755, mtime),
      "--bundle-libs",
    );
  }
  // The directory of the path the loader opened, not of the file's real path: that is what it searched.
  const configured = resolved.libraries.filter((library) => library.foundBy === "ld.so.conf");
  return [...new Set(configured.map((library) => posix.dirname(library.imagePath)))];
}

async function addCaBundle(tree: ImageTree, sysroot: string | undefined, mtime: number): Promise<void> {
  const root = sysroot === undefined ? "/" : path.resolve(sysroot);
  for (const candidate of CA_BUNDLE_CANDIDATES) {
    const host = await resolveInRoot(root, candidate);
    if (host === undefined) continue;
    const stats = await stat(host);
    if (!stats.isFile() || stats.size === 0) continue;
    tree.add(hostFileEntry(entryPath(CA_BUNDLE_IMAGE_PATH), host, stats.size, 0o644, mtime), "--ca-certs");
    return;
  }
  throw new SourceError(
    `no CA certificate bundle ${describeRoot(sysroot)} (looked for ${CA_BUNDLE_CANDIDATES.join(", ")})`,
    {
      hint:
        sysroot === undefined
          ? "Install the ca-certificates package, or pass --sysroot DIR with a root filesystem that has it."
          : "Install ca-certificates into the sysroot, or drop --ca-certs.",
    },
  );
}

async function addZoneinfo(
  tree: ImageTree,
  sysroot: string | undefined,
  mtime: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  const root = sysroot === undefined ? "/" : path.resolve(sysroot);
  const host = await resolveInRoot(root, ZONEINFO_IMAGE_PATH);
  const stats = host === undefined ? undefined : await stat(host);
  if (host === undefined || stats?.isDirectory() !== true) {
    throw new SourceError(
      `no time zone database ${describeRoot(sysroot)} (looked for ${ZONEINFO_IMAGE_PATH})`,
      {
        hint:
          sysroot === undefined
            ? "Install the tzdata package, or pass --sysroot DIR with a root filesystem that has it."
            : "Install tzdata into the sysroot, or drop --tzdata.",
      },
    );
  }
  const prefix = entryPath(ZONEINFO_IMAGE_PATH);
  tree.add(directoryEntry(prefix.toString(), 0o755, mtime), "--tzdata");
  let zoneFiles = 0;
  for (const walked of walkTree(host, { signal: signal ?? new AbortController().signal })) {
    // Fixed modes and owners: the zone files are data, and the host's umask must not reach the image.
    const mode = walked.type === "directory" ? 0o755 : walked.type === "symlink" ? 0o777 : 0o644;
    tree.add(rebase(walked, prefix, { uid: 0, gid: 0 }, mode, mtime), "--tzdata");
    if (walked.type === "file") zoneFiles += 1;
  }
  // An empty directory (tzdata removed, a slimmed host) would give an image where TZ silently does nothing.
  if (zoneFiles === 0) {
    throw new SourceError(`the time zone database ${describeRoot(sysroot)} (${host}) holds no zone files`, {
      hint:
        sysroot === undefined
          ? "Install (or reinstall) the tzdata package, or pass --sysroot DIR with a root filesystem that has it."
          : "Install tzdata into the sysroot, or drop --tzdata.",
    });
  }
}

/** A walked entry moved below `prefix`, with the owner, mode and mtime the image gets. */
function rebase(
  walked: TarEntry,
  prefix: Buffer,
  owner: { readonly uid: number; readonly gid: number },
  mode: number,
  mtime: number,
): TarEntry {
  const under = (relative: Buffer): Buffer =>
    prefix.length === 0 ? relative : Buffer.concat([prefix, Buffer.from("/"), relative]);
  const { xattrs: _dropped, ...rest } = walked;
  return {
    ...rest,
    path: under(walked.path),
    mode,
    uid: owner.uid,
    gid: owner.gid,
    mtime,
    // A hardlink names an earlier path of the same walk, which moved too.
    linkname:
      walked.type === "hardlink" && walked.linkname !== undefined ? under(walked.linkname) : walked.linkname,
  };
}

async function addCopy(
  tree: ImageTree,
  spec: AddSpec,
  options: StaticBinaryOptions,
  mtime: number,
): Promise<void> {
  const origin = `--add ${spec.source}:${spec.dest}`;
  // COPY follows a symlink given as the source itself; links inside a directory are copied as links.
  const hostSource = await followSourceLinks(spec.source, `${origin}: ${spec.source}`);
  let stats;
  try {
    stats = await stat(hostSource);
  } catch (error) {
    throw new SourceError(
      `${origin}: ${spec.source} ${errnoCode(error) === "ENOENT" ? "does not exist" : "cannot be read"}`,
      {
        path: spec.source,
        cause: error,
        hint: "Check the path before the colon; it is read on this machine.",
      },
    );
  }
  const owner = options.addOwner ?? { uid: 0, gid: 0 };
  const modeOf = (sourceMode: number): number => options.addMode ?? sourceMode & 0o7777;
  if (stats.isFile()) {
    const imagePath = placeFile(spec.dest, path.basename(spec.source));
    const entry = hostFileEntry(entryPath(imagePath), hostSource, stats.size, modeOf(stats.mode), mtime);
    tree.add({ ...entry, uid: owner.uid, gid: owner.gid }, origin);
    return;
  }
  if (!stats.isDirectory()) {
    throw new SourceError(`${origin}: ${spec.source} is neither a file nor a directory`, {
      path: spec.source,
    });
  }
  // As with COPY, a directory's contents go into DEST, which is created with the directory's own mode.
  const prefix = entryPath(spec.dest);
  if (prefix.length > 0) {
    tree.add(
      { ...directoryEntry(prefix.toString(), modeOf(stats.mode), mtime), uid: owner.uid, gid: owner.gid },
      origin,
    );
  }
  // The real path as the walk's root: the walk keeps a directory on another filesystem than its root's empty,
  // as a mount point, and a link on another filesystem than its target would have emptied every subdirectory.
  for (const walked of walkTree(hostSource, {
    signal: options.signal ?? new AbortController().signal,
  })) {
    const mode = walked.type === "symlink" ? 0o777 : modeOf(walked.mode);
    tree.add(rebase(walked, prefix, owner, mode, mtime), origin);
  }
}
