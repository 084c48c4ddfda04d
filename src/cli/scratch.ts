/**
 * `mkbase scratch BINARY [-- ARGS...]`: a FROM scratch image holding one program (and, on request, its
 * libraries, CA certificates, zoneinfo, a non-root user, `/tmp` and extra files). With several
 * `--platform os/arch=FILE` it builds one image per platform.
 */
import { lstat } from "node:fs/promises";
import { basename } from "node:path";
import type { Command, Option } from "commander";
import { UsageError } from "../errors.js";
import {
  formatPlatform,
  hostPlatform,
  parsePlatform,
  platformsMatch,
  spellingsOf,
  type Platform,
} from "../image/platform.js";
import { formatReference, type Reference } from "../image/reference.js";
import type { ScratchUser } from "../sources/static-binary.js";
import {
  addImageOptions,
  configFromFlags,
  parseChown,
  parseEpoch,
  parseId,
  tagsFromFlags,
  type ImageFlags,
} from "./image-options.js";
import { printWarning } from "./render.js";
import type { CommandContext } from "./run-build.js";

/** What commander collects for `mkbase scratch`; `--platform` is repeatable here. */
interface ScratchFlags extends Omit<ImageFlags, "platform"> {
  readonly platform?: string[];
  readonly dest?: string;
  readonly bundleLibs?: boolean;
  readonly sysroot?: string;
  readonly caCerts?: boolean;
  readonly tzdata?: boolean;
  readonly tmp?: boolean;
  readonly add: string[];
  readonly chown?: string;
  readonly chmod?: string;
}

/** The numbers distroless and other FROM scratch images use, so that `--user nonroot` means the same. */
const WELL_KNOWN_USERS: Readonly<Record<string, number>> = { root: 0, nonroot: 65532, nobody: 65534 };
/** A POSIX portable user name (useradd accepts these without --badname). */
const USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;

/**
 * `--user NAME[:UID]`: `nonroot` is 65532 and `root` 0; any other name needs its UID. `--user UID[:GID]`:
 * numbers only, as Dockerfile `USER 65532:65532` in a FROM-scratch image; no account is added.
 */
export function parseScratchUser(text: string): ScratchUser {
  const colon = text.indexOf(":");
  const name = colon < 0 ? text : text.slice(0, colon);
  if (/^\d+$/.test(name)) {
    const uid = parseId(name, "--user", text);
    return { name: undefined, uid, gid: colon < 0 ? uid : parseId(text.slice(colon + 1), "--user", text) };
  }
  if (!USER_NAME.test(name)) {
    throw new UsageError(`--user ${text}: ${JSON.stringify(name)} is not a user name or number`, {
      hint: "Write --user NAME[:UID] with a lowercase name (e.g. --user nonroot or --user app:10001), or --user UID[:GID].",
    });
  }
  if (colon >= 0) {
    const uid = parseId(text.slice(colon + 1), "--user", text);
    // The kernel knows the uid, not the name: such an image runs as root while it reads as not.
    if (uid === 0 && name !== "root") {
      throw new UsageError(`--user ${text}: uid 0 is root, whatever the name`, {
        hint: `Give ${name} a uid of its own (e.g. ${name}:10001), or write --user root to run as root.`,
      });
    }
    // /etc/passwd already names root as uid 0: a second root line would make getpwnam("root") ambiguous.
    if (name === "root" && uid !== 0) {
      throw new UsageError(`--user ${text}: root is uid 0`, {
        hint: `Write --user root to run as root, or give the account another name (e.g. --user app:${uid}).`,
      });
    }
    return { name, uid, gid: uid };
  }
  const known = WELL_KNOWN_USERS[name];
  if (known === undefined) {
    throw new UsageError(`--user ${name}: which UID should ${name} have?`, {
      hint: `Write --user ${name}:UID (e.g. ${name}:10001), --user nonroot (65532), or numbers only (--user 10001).`,
    });
  }
  return { name, uid: known, gid: known };
}

/** `--add SRC:DEST`, split at the last `:` that starts an absolute DEST, so SRC may hold colons. */
export function parseAddSpec(text: string): { source: string; dest: string } {
  const split = text.lastIndexOf(":/");
  if (split <= 0) {
    throw new UsageError(`--add ${text}: expected SRC:DEST with an absolute DEST`, {
      hint: "For example --add ./config.yaml:/etc/app/config.yaml or --add ./static/:/srv/static/.",
    });
  }
  return { source: text.slice(0, split), dest: text.slice(split + 1) };
}

/** `--chmod MODE`: octal permission bits, as `COPY --chmod`. */
export function parseChmod(text: string): number {
  if (!/^[0-7]{3,4}$/.test(text)) {
    throw new UsageError(`--chmod ${text}: expected an octal mode such as 644 or 0755`);
  }
  return parseInt(text, 8);
}

/** One image to build: a program and, from `--platform`, the platform it must be for. */
export interface ScratchTarget {
  readonly binary: string;
  readonly platform: Platform | undefined;
}

/**
 * The path each program of a multi-platform build takes in its image when --dest does not say: one path
 * for all of them, or the images' entrypoints would differ by platform (`/hello-amd64`, `/hello-arm64`)
 * and a manifest naming one would break on the other. A file name that ends with its own architecture
 * (`-amd64`, `_linux_x86_64`) is taken without it; names that still differ are an error.
 */
export function commonProgramPath(targets: readonly ScratchTarget[]): string {
  const names = targets.map(({ binary, platform }) => {
    const name = basename(binary);
    const spellings = platform === undefined ? [] : spellingsOf(platform.architecture);
    for (const spelling of spellings) {
      const suffix = new RegExp(`[-_.](linux[-_.])?${spelling}$`, "i");
      if (suffix.test(name)) return name.replace(suffix, "");
    }
    return name;
  });
  const [first] = names;
  if (first !== undefined && first !== "" && names.every((name) => name === first)) return `/${first}`;
  throw new UsageError(
    `the programs have different names (${targets.map(({ binary }) => basename(binary)).join(", ")}): each platform's image would run another path`,
    {
      hint: "Give them one path with --dest, e.g. --dest /app, so the entrypoint is the same on every platform.",
    },
  );
}

/** The operands of `mkbase scratch`, split where a `--` ended the options. */
export interface ScratchOperands {
  readonly beforeDashes: readonly string[];
  readonly afterDashes: readonly string[];
}

/**
 * The operands that followed the `--` in `argv`, which commander's parser drops. Every argument after it is
 * an operand, in order, so its tail ends `operands`; the first `--` with that property is the one that
 * ended the options (a `--` taken as an option's value, `--label --`, passes for it only when nothing but
 * operands follows it).
 */
export function operandsAfterDashes(argv: readonly string[], operands: readonly string[]): string[] {
  for (let at = argv.indexOf("--"); at >= 0; at = argv.indexOf("--", at + 1)) {
    const tail = argv.slice(at + 1);
    if (tail.length > operands.length) continue;
    const end = operands.slice(operands.length - tail.length);
    if (tail.every((arg, index) => arg === end[index])) return tail;
  }
  return [];
}

/**
 * The programs to package. `--platform os/arch=FILE` (repeatable) names one program per platform, and then
 * the operands after `--` are CMD arguments and any before it a mistake; otherwise the first operand is the
 * program and `--platform` (at most one, without `=`) only states what it must be built for.
 */
export function scratchTargets(
  operands: ScratchOperands,
  platforms: readonly string[],
): { targets: ScratchTarget[]; args: string[]; perPlatform: boolean } {
  const perFile = platforms.filter((value) => value.includes("="));
  if (perFile.length > 0) {
    if (operands.beforeDashes.length > 0) {
      // Taken as CMD, `mkbase scratch ./app --platform linux/amd64=./app-amd64` would build an image that
      // runs /app-amd64 with the argument ./app, whether or not that file exists.
      const given = operands.beforeDashes;
      throw new UsageError(
        `the ${given.length === 1 ? "argument" : "arguments"} ${given.join(" ")} and ${perFile.map((value) => `--platform ${value}`).join(" ")} both name a program: the program is given either as the argument or in each --platform os/arch=FILE, not both`,
        {
          hint: `Arguments for the program (the image's CMD) go after --, as in mkbase scratch --platform ${perFile[0] ?? ""} -- --port 8080.`,
        },
      );
    }
    if (perFile.length !== platforms.length) {
      throw new UsageError("mix of --platform os/arch=FILE and a plain --platform", {
        hint: "Give every platform its program: --platform linux/amd64=./app-amd64 --platform linux/arm64=./app-arm64.",
      });
    }
    const targets = perFile.map((value) => {
      const eq = value.indexOf("=");
      const binary = value.slice(eq + 1);
      if (binary === "") throw new UsageError(`--platform ${value}: no program after =`);
      return { binary, platform: parsePlatform(value.slice(0, eq)) };
    });
    targets.forEach((target, index) => {
      const twin = targets.findIndex((other) => platformsMatch(other.platform, target.platform));
      if (twin !== index) {
        throw new UsageError(`--platform ${formatPlatform(target.platform)} is given twice`);
      }
    });
    return { targets, args: [...operands.afterDashes], perPlatform: true };
  }
  if (platforms.length > 1) {
    throw new UsageError("several --platform values for one program", {
      hint: "One program runs on one platform; for several, name a program per platform: --platform linux/arm64=./app-arm64.",
    });
  }
  // Commander's top level already drops a `--` that no option precedes (`mkbase scratch ./app -- --port 1`):
  // here the first operand is the program wherever the `--` was.
  const [binary, ...args] = [...operands.beforeDashes, ...operands.afterDashes];
  if (binary === undefined) {
    throw new UsageError("no program given", {
      hint: "Run mkbase scratch ./program -t name, or --platform os/arch=FILE for each platform.",
    });
  }
  const platform = platforms[0];
  return {
    targets: [{ binary, platform: platform === undefined ? undefined : parsePlatform(platform) }],
    args,
    perPlatform: false,
  };
}

/**
 * Refuses an operand written after the program without a `--` when it names an existing file or directory:
 * `mkbase scratch ./server ./worker` reads as two programs (or a program and a file to add), and would
 * silently build an image that runs `/server ./worker`. After `--` it is an argument, whatever it names.
 *
 * @throws UsageError naming the operand, what it would become, and the spellings for each intent
 */
export async function refuseFilesAsArguments(operands: ScratchOperands): Promise<void> {
  const [program, ...rest] = operands.beforeDashes;
  if (program === undefined) return;
  for (const operand of rest) {
    const stats = await lstat(operand).catch(() => undefined);
    if (stats === undefined) continue;
    const what = stats.isDirectory() ? "a directory" : "a file";
    throw new UsageError(
      `${operand}, written after the program ${program}, is ${what} on this machine: mkbase scratch puts one program into an image, and ${operand} would only be an argument of that program (the image's CMD)`,
      {
        hint: `To pass it to the program, write it after --: mkbase scratch ${program} -- ${rest.join(" ")}. To put it into the image, use --add ${operand}:/DEST; for one program per platform, --platform os/arch=FILE.`,
      },
    );
  }
}

/** The tag suffix for a platform in a multi-platform build: the architecture, plus the variant for 32-bit arm. */
export function platformTagSuffix(platform: Platform): string {
  return platform.architecture === "arm" && platform.variant !== undefined
    ? `${platform.architecture}-${platform.variant}`
    : platform.architecture;
}

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

function sharedOption(command: Command, long: string): Option {
  const option = command.options.find((candidate) => candidate.long === long);
  if (option === undefined) throw new Error(`the shared option ${long} is missing`);
  return option;
}

export function registerScratchCommand(
  program: Command,
  context: () => CommandContext,
  done: (code: number) => void,
): void {
  const command = program
    .command("scratch")
    .argument("[binary]", "the program (an ELF file) to put into the image")
    .argument("[args...]", "after --: arguments that become the image's CMD")
    .summary("build a FROM scratch image from a single program")
    .description(
      "Build a FROM scratch image that holds one program, owned by root with mode 0755, as its ENTRYPOINT. " +
        "The ELF header is read first: the architecture sets the image platform, and a dynamically linked " +
        "program is refused (naming its loader and libraries) unless --bundle-libs copies them in. Scripts, " +
        "text, shared libraries and other files that are not programs are refused. --cmd and --entrypoint " +
        "are checked against the image's files. Every file gets the build epoch as mtime; it defaults to the " +
        "program's mtime, so the same program and flags give the same image ID.",
    )
    .option(
      "--dest <path>",
      "where the program goes in the image (default /NAME; a trailing / means into that directory)",
    )
    .option("--bundle-libs", "copy the program interpreter and the shared libraries of a dynamic program")
    .option(
      "--sysroot <dir>",
      "take libraries, CA certificates and zoneinfo from this root filesystem, not from /",
    )
    .option("--ca-certs", `add the CA bundle as /etc/ssl/certs/ca-certificates.crt and set SSL_CERT_FILE`)
    .option("--tzdata", "add the time zone database (/usr/share/zoneinfo)")
    .option("--tmp", "add an empty /tmp with mode 1777")
    .option(
      "--add <src:dest>",
      "copy a file or directory into the image, as Dockerfile COPY; repeatable",
      collect,
      [],
    )
    .option("--chown <uid[:gid]>", "owner of the --add files (numbers, root, or the --user name)")
    .option("--chmod <mode>", "octal mode of the --add files and directories (default: their own)");
  addImageOptions(command);
  // Commander drops the `--` that ends the options (the top level already, when no option precedes it), and
  // only the operands after it are arguments for the program: note the whole command line as the top level
  // parses it, to find them.
  let commandLine: readonly string[] = [];
  const parseProgramOptions = program.parseOptions.bind(program);
  program.parseOptions = (argv) => {
    commandLine = argv;
    return parseProgramOptions(argv);
  };
  // Two shared flags mean more here: --platform names a program per platform, --user creates the account.
  sharedOption(command, "--platform").argParser(collect).description =
    "platform the program must be built for (default: the program's own); os/arch=FILE, repeated, builds one image per platform";
  // Only the program and what the flags name go in: there is no tree to leave parts of out, and both are refused.
  sharedOption(command, "--exclude").hideHelp();
  sharedOption(command, "--exclude-from").hideHelp();
  sharedOption(command, "--source-date-epoch").description =
    "build time: every file's mtime and the image's created time (default: $SOURCE_DATE_EPOCH, else the program's mtime)";
  sharedOption(command, "--user").description =
    "run as NAME[:UID], creating /etc/passwd and /etc/group with root and that user (nonroot is 65532) and its home /home/NAME, or as UID[:GID] without an account";
  command
    .addHelpText(
      "after",
      `
Examples:
  mkbase scratch ./hello -t hello
  mkbase scratch ./server -t api:1 --ca-certs --tzdata --user nonroot --expose 8080 -- --port 8080
  mkbase scratch ./app-dynamic -t app --bundle-libs
  mkbase scratch ./hello --add ./config.yaml:/etc/hello/config.yaml --add ./static/:/srv/static/
  mkbase scratch --platform linux/amd64=./hello-amd64 --platform linux/arm64=./hello-arm64 -t hello:multi

With several --platform os/arch=FILE, each image is loaded into the engine as NAME:TAG-ARCH
(hello:multi-amd64, hello:multi-arm64) and NAME:TAG points at the one for this machine's platform;
OCI and registry outputs hold one index under NAME:TAG. stdout then has each platform's image ID in the
engine, a line each, then the index's digest; --json prints one object for the whole command.`,
    )
    .action(async (binary: string | undefined, args: string[], flags: ScratchFlags) => {
      const operands = binary === undefined ? args : [binary, ...args];
      const split = operands.length - operandsAfterDashes(commandLine, operands).length;
      done(
        await runScratch(
          context(),
          { beforeDashes: operands.slice(0, split), afterDashes: operands.slice(split) },
          flags,
        ),
      );
    });
}

/** Checks everything, opens every program, then builds one image per program. */
async function runScratch(
  context: CommandContext,
  operands: ScratchOperands,
  flags: ScratchFlags,
): Promise<number> {
  const { targets, args, perPlatform: multi } = scratchTargets(operands, flags.platform ?? []);
  if (!multi) await refuseFilesAsArguments(operands);
  if (flags.exclude.length > 0 || flags.excludeFrom.length > 0) {
    throw new UsageError("--exclude and --exclude-from have nothing to leave out in mkbase scratch", {
      hint: "Only the program and what the flags name go into the image; drop the flag.",
    });
  }
  const { checkAnnotationPlatforms, checkOutputs, completeOutputs, openOutputs } =
    await import("./outputs.js");
  // Several images: as buildx, the ID file gets the digest of the index an OCI or registry output holds.
  const severalImages = targets.length > 1;
  const user = flags.user === undefined ? undefined : parseScratchUser(flags.user);
  const sharedFlags: ImageFlags = { ...flags, platform: undefined, user: undefined };
  const tags = tagsFromFlags(sharedFlags);
  const epoch = parseEpoch(sharedFlags, context.env);
  const baseConfig = configFromFlags(sharedFlags);
  if (flags.add.length === 0 && (flags.chown !== undefined || flags.chmod !== undefined)) {
    throw new UsageError(
      `${flags.chown !== undefined ? "--chown" : "--chmod"} applies to --add files, and there are none`,
      {
        hint: "The program is always root-owned with mode 0755; add files with --add SRC:DEST, or drop the flag.",
      },
    );
  }
  const addOwner = flags.chown === undefined ? undefined : parseChown(flags.chown, user);
  const addMode = flags.chmod === undefined ? undefined : parseChmod(flags.chmod);
  const adds = flags.add.map(parseAddSpec);

  // Before the programs are read: a missing one must not leave the previous build's --iidfile behind.
  await checkOutputs(sharedFlags, targets.length);
  const programPath = multi && flags.dest === undefined ? commonProgramPath(targets) : undefined;
  const { StaticBinarySource } = await import("../sources/static-binary.js");
  const images = [];
  for (const target of targets) {
    const source = await StaticBinarySource.open({
      binary: target.binary,
      dest: flags.dest ?? programPath,
      platform: target.platform,
      bundleLibs: flags.bundleLibs,
      sysroot: flags.sysroot,
      caCerts: flags.caCerts,
      tzdata: flags.tzdata,
      tmp: flags.tmp,
      user,
      adds,
      addOwner,
      addMode,
      mtime: epoch.kind === "fixed" ? epoch.seconds : undefined,
      signal: context.signal,
    });
    const config = source.imageConfig(baseConfig, args);
    images.push({ source, config });
  }

  if (multi)
    checkAnnotationPlatforms(
      sharedFlags,
      images.map(({ source }) => source.platform),
    );
  const { runBuild } = await import("./run-build.js");
  const host = hostPlatform();
  const hostImage = images.find(({ source }) => platformsMatch(source.platform, host));
  // Several platforms into OCI or registry outputs make one index: the outputs take every build, then
  // complete once.
  const outputs = multi
    ? await openOutputs(sharedFlags, { tags, env: context.env, images: images.length })
    : undefined;
  // The per-platform tags (NAME:TAG-ARCH) and the plain tag on this machine's image are the engine's; the
  // OCI and registry outputs put the plain tag on the index, whatever the platforms.
  const engineTags = outputs?.wantsEngine === true;
  if (engineTags && tags.length > 0 && hostImage === undefined) {
    const warning = `no program for this machine's platform (${formatPlatform(host)}): ${tags.length === 1 ? "the plain tag is" : "the plain tags are"} not set in the Docker Engine`;
    outputs.warnings.push(warning);
    // Like every warning, also under --quiet.
    await printWarning(warning);
  }
  try {
    for (const { source, config } of images) {
      const imageTags: (Reference & { readonly tag: string })[] = multi
        ? [
            ...tags.map((tag) => ({ ...tag, tag: `${tag.tag}-${platformTagSuffix(source.platform)}` })),
            ...(source === hostImage?.source ? tags : []),
          ]
        : tags;
      const code = await runBuild(
        context,
        // One image's ID file is written by its build; the index's once the outputs are complete.
        severalImages ? { ...sharedFlags, iidfile: undefined } : sharedFlags,
        () => Promise.resolve(source),
        `mkbase scratch ${source.binaryImagePath}`,
        {
          // Without --source-date-epoch or SOURCE_DATE_EPOCH the program's mtime is the build time.
          epoch: epoch.kind === "newest-input" ? { kind: "fixed", seconds: source.binaryMtime } : epoch,
          platform: source.platform,
          config,
          tags: imageTags,
        },
        outputs,
      );
      if (code !== 0) return code;
      if (engineTags && imageTags.length > 0 && flags.quiet !== true) {
        const note = source === hostImage?.source ? " (this machine's platform)" : "";
        process.stderr.write(
          `${formatPlatform(source.platform)}: ${imageTags.map(formatReference).join(", ")}${note}\n`,
        );
      }
    }
    if (outputs !== undefined) {
      await completeOutputs(
        outputs,
        context,
        severalImages ? sharedFlags : { ...sharedFlags, iidfile: undefined },
      );
    }
  } finally {
    await outputs?.close();
  }
  return 0;
}
