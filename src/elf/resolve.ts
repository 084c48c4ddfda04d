/**
 * Finds the program interpreter and every shared library a dynamic program loads, the way the dynamic
 * loader does at run time (glibc's `ld.so`, or musl's when the interpreter is `ld-musl-*`), so that they
 * can be copied into a FROM scratch image at the paths the loader will open.
 *
 * The search is hermetic: `LD_LIBRARY_PATH` and `/etc/ld.so.cache` of this machine are not consulted, and
 * with a sysroot every absolute path (search directories, symlink targets, `/etc/ld.so.conf`) is looked up
 * inside it, as if the loader ran chrooted there.
 */
import { lstat, readFile, readdir, readlink, realpath, stat } from "node:fs/promises";
import path from "node:path";
import { SourceError, errnoCode, throwIfAborted } from "../errors.js";
import { DF_1_NODEFLIB, EF_ARM_ABI_FLOAT_HARD, ElfMachine, inspectElfFile, type ElfInfo } from "./read.js";

const posix = path.posix;

/** A symbolic link the image must hold for a path to lead where it does on the source. */
export interface ImageSymlink {
  /** Absolute path of the link inside the image. */
  readonly path: string;
  /** The link's target, verbatim (relative or absolute, never rewritten). */
  readonly target: string;
}

/** A file the loader opens, located both in the image and on this machine. */
export interface ResolvedFile {
  /** The path the loader opens inside the image, e.g. `/lib/x86_64-linux-gnu/libc.so.6`. */
  readonly imagePath: string;
  /** Where the bytes live in the image once symlinks are followed (equals `imagePath` when none are). */
  readonly realImagePath: string;
  /** The regular file on this machine that holds the bytes. */
  readonly hostPath: string;
  /**
   * The symlinks followed from `imagePath` to `realImagePath`, in order (directories such as `/lib` →
   * `usr/lib` included). Creating them all, plus the file at `realImagePath`, reproduces the lookup.
   */
  readonly symlinks: readonly ImageSymlink[];
  readonly info: ElfInfo;
}

/** How a library was found, which decides whether the loader in the image will find it the same way. */
export type LibrarySearchStep =
  /** `DT_NEEDED` held a path (with a slash), opened as is. */
  | "path"
  | "rpath"
  | "runpath"
  /**
   * A directory listed in `/etc/ld.so.conf` (musl: `/etc/ld-musl-<arch>.path`) that is not one of the
   * loader's built-in ones. glibc finds these through `/etc/ld.so.cache`, musl through that file, and an
   * image has neither: the loader there finds the library only through `LD_LIBRARY_PATH`.
   */
  | "ld.so.conf"
  /** One of the loader's built-in directories: found in the image without any configuration. */
  | "default";

export interface ResolvedLibrary extends ResolvedFile {
  /** The `DT_NEEDED` entry that asked for it. */
  readonly name: string;
  /** Image path of the object whose `DT_NEEDED` first asked for it (the program's own image path for direct needs). */
  readonly neededBy: string;
  readonly foundBy: LibrarySearchStep;
}

export interface ResolvedLibraries {
  /** The `PT_INTERP` program; undefined for a static program. */
  readonly interpreter: ResolvedFile | undefined;
  /** Libraries in the loader's breadth-first order, one per path the loader opens. */
  readonly libraries: readonly ResolvedLibrary[];
}

export interface ResolveLibrariesOptions {
  /** A root filesystem for the program's architecture; every lookup happens inside it. Default `/`. */
  readonly sysroot?: string;
  /**
   * Where the program will be inside the image: its directory is what `$ORIGIN` means at run time.
   * Default: `/` followed by the program's file name.
   */
  readonly binaryImagePath?: string;
  readonly signal?: AbortSignal;
}

/**
 * Resolves the interpreter and the shared libraries of `binary` (whose ELF header is `info`).
 * Search order for each `DT_NEEDED` name, as in glibc's `_dl_map_object`: objects already loaded (by name
 * or soname); `DT_RPATH` of the loading object and of every object that loaded it (only while the loading
 * object has no `DT_RUNPATH`); the loading object's `DT_RUNPATH`; the directories of `/etc/ld.so.conf`
 * (standing in for `/etc/ld.so.cache`); the default directories `/lib/<triplet>`, `/usr/lib/<triplet>`,
 * `/lib64` and `/usr/lib64` (only in a root that is not multiarch), `/lib`, `/usr/lib`. Candidates of
 * another class or machine are skipped as ld.so skips them. `LD_LIBRARY_PATH` is deliberately ignored.
 *
 * @throws SourceError naming every missing library and the directories searched for it
 */
export async function resolveLibraries(
  binary: string,
  info: ElfInfo,
  options: ResolveLibrariesOptions = {},
): Promise<ResolvedLibraries> {
  if (info.interpreter === undefined && info.needed.length === 0) {
    return { interpreter: undefined, libraries: [] };
  }
  const root = options.sysroot === undefined ? "/" : path.resolve(options.sysroot);
  if (options.sysroot !== undefined) await assertSysroot(root);
  const binaryImagePath = posix.resolve("/", options.binaryImagePath ?? path.basename(binary));
  const resolver = new LibraryResolver(root, info, options.signal);
  return resolver.run(binary, binaryImagePath);
}

/**
 * A path in the image and, when it is not simply the same path inside the root, where it is on this
 * machine. `$ORIGIN` of a program outside the root maps the program's image directory to its directory
 * here, so paths derived from it carry `host`; for every other path `host` is undefined and the file is
 * looked up inside the root, symlinks included.
 */
interface MappedPath {
  readonly image: string;
  readonly host?: string;
}

/** An object in the loader's link map. */
interface LoadedObject {
  readonly imagePath: string;
  readonly origin: MappedPath;
  readonly info: ElfInfo;
  /** The object whose `DT_NEEDED` brought it in (`l_loader`); undefined for the program. */
  readonly loader: LoadedObject | undefined;
  /** Names it answers to: the names it was loaded as, its soname, the interpreter's `PT_INTERP` path. */
  readonly names: Set<string>;
  /** Identity of the file, so that two paths to one file make one object (ld.so compares dev/inode). */
  readonly hostRealPath: string;
}

interface MissingLibrary {
  readonly name: string;
  readonly neededBy: string;
  readonly searched: readonly string[];
  readonly skipped: readonly string[];
}

type LoaderFlavour = { readonly kind: "glibc" } | { readonly kind: "musl"; readonly arch: string };

class LibraryResolver {
  private readonly inspected = new Map<string, Promise<ElfInfo | SourceError>>();
  private readonly flavour: LoaderFlavour;
  private readonly triplet: string | undefined;
  private systemDirectoriesCache: Promise<readonly string[]> | undefined;
  private defaultDirectoriesCache: Promise<string[]> | undefined;

  constructor(
    private readonly root: string,
    private readonly program: ElfInfo,
    private readonly signal: AbortSignal | undefined,
  ) {
    const musl = /^ld-musl-(.+)\.so\.1$/.exec(posix.basename(program.interpreter ?? ""));
    this.flavour = musl?.[1] === undefined ? { kind: "glibc" } : { kind: "musl", arch: musl[1] };
    this.triplet = multiarchTriplet(program);
  }

  async run(binary: string, binaryImagePath: string): Promise<ResolvedLibraries> {
    const hostBinary = await realpath(binary).catch(() => path.resolve(binary));
    const main: LoadedObject = {
      imagePath: binaryImagePath,
      origin: { image: posix.dirname(binaryImagePath), host: path.dirname(hostBinary) },
      info: this.program,
      loader: undefined,
      names: new Set(this.program.soname === undefined ? [] : [this.program.soname]),
      hostRealPath: hostBinary,
    };
    const loaded: LoadedObject[] = [main];

    let interpreter: ResolvedFile | undefined;
    if (this.program.interpreter !== undefined) {
      interpreter = await this.resolveInterpreter(binary, this.program.interpreter);
      const names = new Set([this.program.interpreter]);
      if (interpreter.info.soname !== undefined) names.add(interpreter.info.soname);
      loaded.push({
        imagePath: interpreter.imagePath,
        origin: { image: posix.dirname(interpreter.imagePath) },
        info: interpreter.info,
        loader: main,
        names,
        hostRealPath: interpreter.hostPath,
      });
    }

    const libraries: ResolvedLibrary[] = [];
    const missing: MissingLibrary[] = [];
    // Breadth-first like ld.so: the program's needs in order, then theirs.
    const queue: LoadedObject[] = [main];
    for (let object = queue.shift(); object !== undefined; object = queue.shift()) {
      for (const name of object.info.needed) {
        throwIfAborted(this.signal);
        if (loaded.some((candidate) => candidate.names.has(name))) continue;
        if (this.flavour.kind === "musl" && isMuslBuiltin(name)) continue;

        const found = await this.findLibrary(name, object);
        if ("missing" in found) {
          missing.push(found.missing);
          continue;
        }
        const { file, foundBy, origin } = found;
        const same = loaded.find((candidate) => candidate.hostRealPath === file.hostPath);
        if (same !== undefined) same.names.add(name);
        if (!libraries.some((library) => library.imagePath === file.imagePath)) {
          libraries.push({ ...file, name, neededBy: object.imagePath, foundBy });
        }
        if (same !== undefined) continue;
        const names = new Set([name]);
        if (file.info.soname !== undefined) names.add(file.info.soname);
        const library: LoadedObject = {
          imagePath: file.imagePath,
          origin,
          info: file.info,
          loader: object,
          names,
          hostRealPath: file.hostPath,
        };
        loaded.push(library);
        queue.push(library);
      }
    }

    if (missing.length > 0) throw this.missingError(binary, missing);
    assertNoCollisions(binary, [...(interpreter === undefined ? [] : [interpreter]), ...libraries]);
    return { interpreter, libraries };
  }

  private async resolveInterpreter(binary: string, interpreterPath: string): Promise<ResolvedFile> {
    const where = this.root === "/" ? "on this machine" : `under the sysroot ${this.root}`;
    const hint =
      this.root === "/"
        ? `pass --sysroot with a root filesystem for ${this.program.machineName} that has ${interpreterPath}, or build the program with -static`
        : `check that --sysroot points at a root filesystem for ${this.program.machineName} that has ${interpreterPath}`;
    if (!posix.isAbsolute(interpreterPath)) {
      throw new SourceError(`${binary} names a relative program interpreter ${interpreterPath}`, {
        path: binary,
        hint: "relink the program with an absolute --dynamic-linker path, or build it with -static",
      });
    }
    const lookup = await this.lookUpInRoot(interpreterPath);
    if (lookup === undefined) {
      throw new SourceError(
        `the program interpreter ${interpreterPath} of ${binary} was not found ${where}`,
        {
          path: binary,
          hint,
        },
      );
    }
    const info = await this.inspect(lookup.hostPath);
    if (info instanceof SourceError || !sameArchitecture(this.program, info)) {
      const what = info instanceof SourceError ? "not a usable ELF file" : `built for ${describeArch(info)}`;
      throw new SourceError(
        `the program interpreter ${interpreterPath} ${where} is ${what}, but ${binary} is built for ${describeArch(this.program)}`,
        { path: binary, hint, cause: info instanceof SourceError ? info : undefined },
      );
    }
    return { ...lookup, info };
  }

  private async findLibrary(
    name: string,
    object: LoadedObject,
  ): Promise<
    { file: ResolvedFile; foundBy: LibrarySearchStep; origin: MappedPath } | { missing: MissingLibrary }
  > {
    const searched: string[] = [];
    const skipped: string[] = [];
    const tryDirectory = async (directory: MappedPath, fileName: string) => {
      searched.push(
        directory.host === undefined ? directory.image : `${directory.image} (${directory.host})`,
      );
      const file = await this.candidate(directory, fileName, skipped);
      return file === undefined ? undefined : { file, origin: originOf(directory, file) };
    };

    if (name.includes("/")) {
      const expanded = this.expandTokens(name, object.origin);
      if (expanded !== undefined) {
        const directory: MappedPath = {
          image: posix.dirname(expanded.image),
          host: expanded.host === undefined ? undefined : path.dirname(expanded.host),
        };
        const found = await tryDirectory(directory, posix.basename(expanded.image));
        if (found !== undefined) return { ...found, foundBy: "path" };
      }
      return { missing: { name, neededBy: object.imagePath, searched: [], skipped } };
    }

    for (const step of await this.searchSteps(object)) {
      for (const directory of step.directories) {
        const found = await tryDirectory(directory, name);
        if (found !== undefined) return { ...found, foundBy: step.foundBy };
      }
    }
    return { missing: { name, neededBy: object.imagePath, searched: unique(searched), skipped } };
  }

  /** The directories to search for the needs of `object`, in order, grouped by how they were chosen. */
  private async searchSteps(
    object: LoadedObject,
  ): Promise<{ foundBy: LibrarySearchStep; directories: readonly MappedPath[] }[]> {
    const steps: { foundBy: LibrarySearchStep; directories: MappedPath[] }[] = [];
    if (this.flavour.kind === "musl") {
      // musl: DT_RUNPATH (or DT_RPATH when there is none) of the loading object and each object above it,
      // then the lines of /etc/ld-musl-<arch>.path, else its built-in default.
      for (let owner: LoadedObject | undefined = object; owner !== undefined; owner = owner.loader) {
        const list = owner.info.runpath ?? owner.info.rpath;
        const foundBy = owner.info.runpath === undefined ? "rpath" : "runpath";
        if (list !== undefined) steps.push({ foundBy, directories: this.pathList(list, owner) });
      }
      // The path file replaces the built-in list; its other directories are searched through it alone.
      for (const directory of await this.muslSystemDirectories()) {
        const foundBy = MUSL_DEFAULT_DIRECTORIES.includes(directory) ? "default" : "ld.so.conf";
        steps.push({ foundBy, directories: [inRoot(directory)] });
      }
      return steps;
    }

    // glibc ignores DT_RPATH of an object that also has DT_RUNPATH (elf/get-dynamic-info.h).
    if (object.info.runpath === undefined) {
      for (let owner: LoadedObject | undefined = object; owner !== undefined; owner = owner.loader) {
        if (owner.info.rpath !== undefined && owner.info.runpath === undefined) {
          steps.push({ foundBy: "rpath", directories: this.pathList(owner.info.rpath, owner) });
        }
      }
    } else {
      steps.push({ foundBy: "runpath", directories: this.pathList(object.info.runpath, object) });
    }
    // DF_1_NODEFLIB: the object asks the loader not to look in the cache and the default directories.
    if ((object.info.flags1 & DF_1_NODEFLIB) === 0) {
      // A directory listed in ld.so.conf that is also a default one is found without the cache as well.
      const defaults = await this.defaultDirectories();
      for (const directory of await this.systemDirectories()) {
        const foundBy = defaults.includes(directory) ? "default" : "ld.so.conf";
        steps.push({ foundBy, directories: [inRoot(directory)] });
      }
      steps.push({ foundBy: "default", directories: defaults.map(inRoot) });
    }
    return steps;
  }

  /** Splits a `DT_RPATH`/`DT_RUNPATH` value and expands its tokens relative to the object that owns it. */
  private pathList(list: string, owner: LoadedObject): MappedPath[] {
    const directories: MappedPath[] = [];
    for (const entry of list.split(":")) {
      // An empty entry means the working directory; an image's is "/" unless the caller changes it, and
      // such entries are accidents of build systems, so they are not searched.
      if (entry === "") continue;
      const expanded = this.expandTokens(entry, owner.origin);
      if (expanded !== undefined) directories.push(expanded);
    }
    return directories;
  }

  /**
   * Expands `$ORIGIN`, `$LIB` and `$PLATFORM` (also written `${…}`). Undefined when the entry holds a token
   * the loader cannot expand, which makes the loader drop the entry. A relative result is relative to the
   * working directory, which in an image is `/` by default.
   */
  private expandTokens(entry: string, origin: MappedPath): MappedPath | undefined {
    const leadingOrigin = /^\$(?:ORIGIN|\{ORIGIN\})(?=\/|$)/.exec(entry);
    if (leadingOrigin !== null) {
      const rest = this.expandOtherTokens(entry.slice(leadingOrigin[0].length));
      if (rest === undefined) return undefined;
      return {
        image: posix.join(origin.image, rest),
        host: origin.host === undefined ? undefined : path.join(origin.host, rest),
      };
    }
    const withOrigin = entry.replace(/\$(?:ORIGIN|\{ORIGIN\})(?![A-Za-z0-9_])/g, origin.image);
    const expanded = this.expandOtherTokens(withOrigin);
    if (expanded === undefined) return undefined;
    return { image: posix.resolve("/", expanded) };
  }

  private expandOtherTokens(text: string): string | undefined {
    let unknown = false;
    const expanded = text.replace(
      /\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))/g,
      (token, braced, bare) => {
        const name = (braced ?? bare) as string;
        const value = this.flavour.kind === "glibc" ? this.tokenValue(name) : undefined;
        if (value === undefined) unknown = true;
        return value ?? token;
      },
    );
    return unknown ? undefined : expanded;
  }

  private tokenValue(name: string): string | undefined {
    switch (name) {
      case "LIB":
        // Debian's glibc expands $LIB to lib/<triplet> (checked with LD_DEBUG=libs); a lib64 layout uses
        // lib64 and a 32-bit one lib.
        if (this.triplet !== undefined) return `lib/${this.triplet}`;
        return this.program.class === 64 ? "lib64" : "lib";
      case "PLATFORM":
        return platformToken(this.program);
      default:
        return undefined;
    }
  }

  /** Opens `fileName` in `directory` if it is an ELF shared object the program can load. */
  private async candidate(
    directory: MappedPath,
    fileName: string,
    skipped: string[],
  ): Promise<ResolvedFile | undefined> {
    const imagePath = posix.join(directory.image, fileName);
    let location: Omit<ResolvedFile, "info"> | undefined;
    if (directory.host === undefined) {
      location = await this.lookUpInRoot(imagePath);
    } else {
      // Next to a program that is outside the root: the file is taken from the program's directory, and
      // lands in the image wherever imagePath leads once the root's own symlinks (/lib → usr/lib) apply.
      const hostPath = await realpath(path.join(directory.host, fileName)).catch(() => undefined);
      const isFile =
        hostPath !== undefined &&
        (await stat(hostPath)
          .then((s) => s.isFile())
          .catch(() => false));
      if (isFile) {
        const place = await placeInRoot(this.root, posix.dirname(imagePath));
        const realImagePath = posix.join(place.realPath, fileName);
        location = { imagePath, realImagePath, hostPath, symlinks: place.symlinks };
      }
    }
    if (location === undefined) return undefined;
    const info = await this.inspect(location.hostPath);
    if (info instanceof SourceError) {
      skipped.push(`${imagePath} (not an ELF shared library)`);
      return undefined;
    }
    if (!sameArchitecture(this.program, info)) {
      skipped.push(`${imagePath} (built for ${describeArch(info)})`);
      return undefined;
    }
    if (info.type !== "DYN") {
      skipped.push(`${imagePath} (a program, not a shared library)`);
      return undefined;
    }
    return { ...location, info };
  }

  private inspect(hostPath: string): Promise<ElfInfo | SourceError> {
    let pending = this.inspected.get(hostPath);
    if (pending === undefined) {
      pending = inspectElfFile(hostPath).catch((error: unknown) => {
        if (error instanceof SourceError) return error;
        throw error;
      });
      this.inspected.set(hostPath, pending);
    }
    return pending;
  }

  /** Follows `imagePath` inside the root; undefined unless it ends at a regular file. */
  private async lookUpInRoot(imagePath: string): Promise<Omit<ResolvedFile, "info"> | undefined> {
    const walk = await walkInRoot(this.root, imagePath);
    if (walk === undefined || walk.kind !== "file") return undefined;
    return {
      imagePath: posix.normalize(imagePath),
      realImagePath: walk.realPath,
      hostPath: hostPathInRoot(this.root, walk.realPath),
      symlinks: walk.symlinks,
    };
  }

  /** Directories from `/etc/ld.so.conf` and the files it includes, in file order, without duplicates. */
  private systemDirectories(): Promise<readonly string[]> {
    this.systemDirectoriesCache ??= (async () => {
      const directories: string[] = [];
      await this.readLdSoConf("/etc/ld.so.conf", directories, new Set());
      return unique(directories);
    })();
    return this.systemDirectoriesCache;
  }

  private async readLdSoConf(file: string, directories: string[], seen: Set<string>): Promise<void> {
    const walk = await walkInRoot(this.root, file);
    if (walk === undefined || walk.kind !== "file" || seen.has(walk.realPath)) return;
    seen.add(walk.realPath);
    let text: string;
    try {
      text = await readFile(hostPathInRoot(this.root, walk.realPath), "utf8");
    } catch {
      return;
    }
    // Syntax from ldconfig's parse_conf: `#` comments, `include PATTERN…` (relative patterns are relative
    // to the including file's directory), `hwcap` lines (obsolete, ignored), otherwise one directory per
    // line, with an old `=TYPE` suffix that is ignored.
    for (const rawLine of text.split("\n")) {
      const line = rawLine.replace(/#.*/, "").trim();
      if (line === "") continue;
      const words = line.split(/\s+/);
      if (words[0] === "include" && words.length > 1) {
        for (const pattern of words.slice(1)) {
          const absolute = posix.isAbsolute(pattern) ? pattern : posix.join(posix.dirname(file), pattern);
          for (const included of await globInRoot(this.root, absolute)) {
            await this.readLdSoConf(included, directories, seen);
          }
        }
      } else if (words[0] !== "hwcap") {
        const directory = line.replace(/=.*$/, "").trim().replace(/\/+$/, "");
        if (posix.isAbsolute(directory)) directories.push(posix.normalize(directory));
      }
    }
  }

  /**
   * glibc's built-in search path, as the loader of the root's layout has it: a multiarch root (Debian,
   * Ubuntu: `/lib/<triplet>` or `/usr/lib/<triplet>` exists) searches `/lib/<triplet>`, `/usr/lib/<triplet>`, `/lib`, `/usr/lib`
   * (`ld.so --list-diagnostics`, system_dirs), and not `/lib64`, where a library would be bundled yet not
   * load; other roots (Fedora's) search `/lib64` and `/usr/lib64` for 64-bit programs.
   */
  private async defaultDirectories(): Promise<string[]> {
    this.defaultDirectoriesCache ??= (async () => {
      const triplet = this.triplet;
      const multiarch =
        triplet !== undefined &&
        (
          await Promise.all(
            [`/lib/${triplet}`, `/usr/lib/${triplet}`].map((dir) => walkInRoot(this.root, dir)),
          )
        ).some((walk) => walk?.kind === "directory");
      const directories: string[] = [];
      if (this.triplet !== undefined) directories.push(`/lib/${this.triplet}`, `/usr/lib/${this.triplet}`);
      if (this.program.class === 64 && !multiarch) directories.push("/lib64", "/usr/lib64");
      directories.push("/lib", "/usr/lib");
      return directories;
    })();
    return this.defaultDirectoriesCache;
  }

  /** musl's search path: `/etc/ld-musl-<arch>.path` (entries separated by colons or newlines) or its default. */
  private async muslSystemDirectories(): Promise<readonly string[]> {
    const arch = this.flavour.kind === "musl" ? this.flavour.arch : "";
    const walk = await walkInRoot(this.root, `/etc/ld-musl-${arch}.path`);
    if (walk?.kind === "file") {
      const text = await readFile(hostPathInRoot(this.root, walk.realPath), "utf8").catch(() => undefined);
      if (text !== undefined) {
        return (
          text
            .split(/[:\n]/)
            .map((entry) => entry.trim())
            .filter((entry) => posix.isAbsolute(entry))
            // `/usr/lib/` is the built-in `/usr/lib`: compared with that list, it must be spelt the same.
            .map((entry) => posix.normalize(entry).replace(/(.)\/+$/, "$1"))
        );
      }
    }
    return MUSL_DEFAULT_DIRECTORIES;
  }

  private missingError(binary: string, missing: readonly MissingLibrary[]): SourceError {
    const where = this.root === "/" ? "on this machine" : `under the sysroot ${this.root}`;
    const lines = missing.map((entry) => {
      const searched =
        entry.searched.length === 0 ? "opened by path" : `searched ${entry.searched.join(", ")}`;
      const skipped = entry.skipped.length === 0 ? "" : `; skipped ${entry.skipped.join(", ")}`;
      return `  ${entry.name} (needed by ${entry.neededBy}): ${searched}${skipped}`;
    });
    const names = unique(missing.map((entry) => entry.name));
    return new SourceError(
      `${binary} needs ${names.length === 1 ? "a library" : "libraries"} not found ${where}: ${names.join(", ")}\n${lines.join("\n")}`,
      {
        path: binary,
        hint:
          this.root === "/"
            ? `pass --sysroot with a root filesystem for ${this.program.machineName} that holds them, or build the program with -static`
            : `add them to the sysroot ${this.root} (a root filesystem for ${this.program.machineName}), or build the program with -static`,
      },
    );
  }
}

/**
 * The directory `$ORIGIN` means for a library found in `directory`: the directory of the path ld.so opened,
 * without resolving symlinks (elf/dl-object.c).
 */
function originOf(directory: MappedPath, file: ResolvedFile): MappedPath {
  const image = posix.dirname(file.imagePath);
  return directory.host === undefined ? { image } : { image, host: directory.host };
}

/** @throws SourceError when `sysroot` is missing or not a directory */
export async function assertSysroot(sysroot: string): Promise<void> {
  const stats = await stat(sysroot).catch((error: unknown) => {
    const problem = errnoCode(error) === "ENOENT" ? "does not exist" : "cannot be read";
    throw new SourceError(`the sysroot ${sysroot} ${problem}`, {
      path: sysroot,
      cause: error,
      hint: "pass --sysroot a directory that holds a root filesystem for the program's architecture",
    });
  });
  if (!stats.isDirectory()) {
    throw new SourceError(`the sysroot ${sysroot} is not a directory`, {
      path: sysroot,
      hint: "pass --sysroot a directory that holds a root filesystem for the program's architecture",
    });
  }
}

/**
 * Files taken from next to the program land wherever the root's symlinks lead them; two different files
 * must not land on the same path of the image.
 */
function assertNoCollisions(binary: string, files: readonly ResolvedFile[]): void {
  const byRealPath = new Map<string, ResolvedFile>();
  for (const file of files) {
    const other = byRealPath.get(file.realImagePath);
    if (other !== undefined && other.hostPath !== file.hostPath) {
      throw new SourceError(
        `${binary} loads ${other.hostPath} and ${file.hostPath}, which would both be ${file.realImagePath} in the image`,
        {
          path: binary,
          hint: "put the program in a directory of its own in the image (e.g. /app), so that $ORIGIN points there",
        },
      );
    }
    byRealPath.set(file.realImagePath, file);
  }
}

function inRoot(image: string): MappedPath {
  return { image };
}

function unique<T>(items: readonly T[]): T[] {
  return [...new Set(items)];
}

/** musl's built-in search path, used when `/etc/ld-musl-<arch>.path` is missing (ldso/dynlink.c). */
const MUSL_DEFAULT_DIRECTORIES: readonly string[] = ["/lib", "/usr/local/lib", "/usr/lib"];

/** musl's loader is also its libc: these names resolve to the interpreter itself (ldso/dynlink.c). */
function isMuslBuiltin(name: string): boolean {
  return /^lib(c|pthread|rt|m|dl|util|xnet)\./.test(name);
}

/** Whether ld.so would accept `library` for `program`: same class, byte order, machine and ARM float ABI. */
function sameArchitecture(program: ElfInfo, library: ElfInfo): boolean {
  if (library.class !== program.class) return false;
  if (library.endianness !== program.endianness) return false;
  if (library.machine !== program.machine) return false;
  if (program.machine === ElfMachine.arm) {
    return (library.flags & EF_ARM_ABI_FLOAT_HARD) === (program.flags & EF_ARM_ABI_FLOAT_HARD);
  }
  return true;
}

function describeArch(info: ElfInfo): string {
  return `${info.class}-bit ${info.machineName}${info.endianness === "big" ? " (big-endian)" : ""}`;
}

/** The Debian multiarch tuple for the program's ABI, which names its library directories. */
export function multiarchTriplet(info: ElfInfo): string | undefined {
  const is64 = info.class === 64;
  const little = info.endianness === "little";
  switch (info.machine) {
    case ElfMachine.x86_64:
      return is64 ? "x86_64-linux-gnu" : "x86_64-linux-gnux32";
    case ElfMachine.i386:
      return "i386-linux-gnu";
    case ElfMachine.aarch64:
      return little ? "aarch64-linux-gnu" : "aarch64_be-linux-gnu";
    case ElfMachine.arm:
      return (info.flags & EF_ARM_ABI_FLOAT_HARD) !== 0 ? "arm-linux-gnueabihf" : "arm-linux-gnueabi";
    case ElfMachine.ppc64:
      return little ? "powerpc64le-linux-gnu" : "powerpc64-linux-gnu";
    case ElfMachine.ppc:
      return "powerpc-linux-gnu";
    case ElfMachine.s390:
      return is64 ? "s390x-linux-gnu" : "s390-linux-gnu";
    case ElfMachine.riscv:
      return is64 ? "riscv64-linux-gnu" : undefined;
    case ElfMachine.loongarch:
      return is64 ? "loongarch64-linux-gnu" : undefined;
    default:
      return undefined;
  }
}

/**
 * `$PLATFORM` is the kernel's AT_PLATFORM string. Where it names the CPU model (POWER, S/390) it cannot be
 * known ahead of time, and the entry is dropped.
 */
function platformToken(info: ElfInfo): string | undefined {
  switch (info.machine) {
    case ElfMachine.x86_64:
      return "x86_64";
    case ElfMachine.i386:
      return "i686";
    case ElfMachine.aarch64:
      return "aarch64";
    case ElfMachine.arm:
      return "v7l";
    default:
      return undefined;
  }
}

export type WalkResult = {
  readonly kind: "file" | "directory" | "other";
  /** The path with every symlink resolved, inside the root. */
  readonly realPath: string;
  readonly symlinks: ImageSymlink[];
};

/** Linux gives up after 40 symlinks in one lookup (ELOOP). */
export const MAX_SYMLINKS = 40;

/**
 * Resolves `imagePath` component by component inside `root` as the kernel would inside a chroot: absolute
 * symlink targets start again at the root, and `..` never climbs above it. Undefined when a component is
 * missing or a symlink loop is found.
 */
export async function walkInRoot(root: string, imagePath: string): Promise<WalkResult | undefined> {
  const pending = imagePath.split("/").filter((part) => part !== "" && part !== ".");
  const symlinks: ImageSymlink[] = [];
  let current = "/";
  while (pending.length > 0) {
    const part = pending.shift() as string;
    if (part === "..") {
      current = posix.dirname(current);
      continue;
    }
    const next = posix.join(current, part);
    let stats;
    try {
      stats = await lstat(hostPathInRoot(root, next));
    } catch (error) {
      const code = errnoCode(error);
      if (code === "ENOENT" || code === "ENOTDIR" || code === "EACCES") return undefined;
      throw error;
    }
    if (stats.isSymbolicLink()) {
      if (symlinks.length >= MAX_SYMLINKS) return undefined;
      const target = await readlink(hostPathInRoot(root, next));
      symlinks.push({ path: next, target });
      if (target.startsWith("/")) current = "/";
      pending.unshift(...target.split("/").filter((piece) => piece !== "" && piece !== "."));
      continue;
    }
    if (!stats.isDirectory() && pending.length > 0) return undefined;
    current = next;
    if (pending.length === 0) {
      return {
        kind: stats.isFile() ? "file" : stats.isDirectory() ? "directory" : "other",
        realPath: current,
        symlinks,
      };
    }
  }
  return { kind: "directory", realPath: current, symlinks };
}

/**
 * Where `imagePath` leads inside the root when its tail may not exist yet: the existing prefix with its
 * symlinks resolved, then the missing components as they are.
 */
async function placeInRoot(
  root: string,
  imagePath: string,
): Promise<{ realPath: string; symlinks: ImageSymlink[] }> {
  const parts = imagePath.split("/").filter((part) => part !== "");
  for (let keep = parts.length; keep >= 0; keep--) {
    const walk = await walkInRoot(root, "/" + parts.slice(0, keep).join("/"));
    if (walk?.kind === "directory") {
      return { realPath: posix.join(walk.realPath, ...parts.slice(keep)), symlinks: walk.symlinks };
    }
  }
  return { realPath: posix.normalize(imagePath), symlinks: [] };
}

function hostPathInRoot(root: string, imagePath: string): string {
  return path.join(root, imagePath);
}

/**
 * Expands a glob pattern (`*`, `?`, `[…]`, per path component, as glob(3) does for ldconfig's `include`)
 * inside the root, returning matching files in sorted order.
 */
async function globInRoot(root: string, pattern: string): Promise<string[]> {
  let matches = ["/"];
  const parts = pattern.split("/").filter((part) => part !== "");
  for (const part of parts) {
    const next: string[] = [];
    for (const directory of matches) {
      if (!/[*?[]/.test(part)) {
        next.push(posix.join(directory, part));
        continue;
      }
      const walk = await walkInRoot(root, directory);
      if (walk?.kind !== "directory") continue;
      const names = await readdir(hostPathInRoot(root, walk.realPath)).catch(() => [] as string[]);
      const matcher = globComponent(part);
      for (const name of names.sort()) {
        if (matcher.test(name)) next.push(posix.join(directory, name));
      }
    }
    matches = next;
  }
  return matches;
}

function globComponent(pattern: string): RegExp {
  let source = "";
  for (let index = 0; index < pattern.length; index++) {
    const char = pattern[index] as string;
    if (char === "*") source += "[^/]*";
    else if (char === "?") source += "[^/]";
    else if (char === "[") {
      const close = pattern.indexOf("]", index + 2);
      if (close < 0) {
        source += "\\[";
        continue;
      }
      let body = pattern.slice(index + 1, close);
      const negated = body.startsWith("!") || body.startsWith("^");
      if (negated) body = body.slice(1);
      source += `[${negated ? "^" : ""}${body.replace(/[\\\]^]/g, "\\$&")}]`;
      index = close;
    } else source += char.replace(/[.+^${}()|\\]/g, "\\$&");
  }
  // glob(3) does not let a wildcard match a leading dot.
  const hidden = pattern.startsWith(".") ? "" : "(?!\\.)";
  return new RegExp(`^${hidden}${source}$`);
}
