/**
 * `mkbase debootstrap SUITE`, `mkbase pacstrap`, `mkbase alpine BRANCH`: a distribution bootstrapped into
 * a private temp dir, cleaned, and packed into an image. Everything that can be checked without the
 * network (suite, architecture, keyring, tool, root) is checked before the bootstrapper starts.
 */
import { tmpdir } from "node:os";
import { Option, type Command } from "commander";
import { ToolError, UsageError, errnoCode } from "../errors.js";
import type { EpochChoice } from "../build.js";
import { DEFAULT_PATH, type ContainerConfig } from "../image/config.js";
import { formatPlatform, parsePlatform, platformsMatch, type Platform } from "../image/platform.js";
import type { Distribution } from "../sources/bootstrap/cleanup.js";
import type { TmpfsChoice, WorkspacePlan } from "../sources/bootstrap/workspace.js";
import { addImageOptions, configFromFlags, parseEpoch, type ImageFlags } from "./image-options.js";
import type { CommandContext } from "./run-build.js";

/** Flags all three commands share. */
interface BootstrapFlags extends ImageFlags {
  readonly mirror?: string;
  readonly insecure?: boolean;
  readonly slim?: boolean;
  readonly clean: boolean;
  readonly cacheDir?: string;
  readonly keepRootfs?: string;
  readonly tmpfs: TmpfsChoice;
  readonly packageList?: string;
  readonly dryRun?: boolean;
  readonly verbose?: boolean;
}

interface DebootstrapFlags extends BootstrapFlags {
  readonly backend?: "mmdebstrap" | "debootstrap";
  readonly variant: string;
  readonly arch?: string;
  readonly include: string[];
  readonly excludePackages: string[];
  readonly components?: string;
  readonly keyring?: string;
}

interface PacstrapFlags extends BootstrapFlags {
  readonly packages: string;
  readonly ignore: string[];
  readonly repositories: string;
  readonly pacmanConf?: string;
  readonly keyring?: string;
}

interface AlpineFlags extends BootstrapFlags {
  readonly packages: string;
  readonly repository: string[];
  readonly arch?: string;
  readonly keysDir?: string;
  readonly apkStaticSha256?: string;
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** `a,b c` and repeated flags → `[a, b, c]`. */
function splitList(values: readonly string[] | string | undefined): string[] {
  const all = typeof values === "string" ? [values] : (values ?? []);
  return all.flatMap((v) => v.split(/[\s,]+/)).filter((v) => v !== "");
}

function addBootstrapOptions(command: Command): Command {
  return command
    .option("--mirror <url>", "archive or mirror URL (http, https or file)")
    .option("--insecure", "do not check package signatures (a warning is printed and a label records it)")
    .option("--slim", "also drop man pages, docs and translations, and add the usual container settings")
    .option(
      "--no-clean",
      "keep the tree as the bootstrapper left it (no cleanup profile; a private key is removed all the same)",
    )
    .option("--cache-dir <dir>", "keep downloaded packages here between runs")
    .option(
      "--keep-rootfs <dir>",
      "move the finished root filesystem to DIR (must not exist) instead of deleting it",
    )
    .addOption(
      new Option(
        "--tmpfs <when>",
        "build the tree in memory on a private tmpfs (much faster package installs): auto = as root, when at least 4 GiB of memory is free",
      )
        .choices(["auto", "always", "never"])
        .default("auto"),
    )
    .option("--package-list <file>", "write the installed packages (name, version, architecture) to FILE")
    .option("--dry-run", "print the plan (tool, mirror, keyring, packages, output) and build nothing")
    .option("--verbose", "show all of the bootstrapper's output");
}

/** A plan as `key: value` lines for `--dry-run`. */
export function formatPlan(rows: readonly (readonly [string, string])[]): string {
  const width = Math.max(...rows.map(([key]) => key.length)) + 1;
  return rows.map(([key, value]) => `${`${key}:`.padEnd(width)} ${value}\n`).join("");
}

/** Where the tree is built (`--tmpfs`), from this machine's memory and privileges. */
async function workspacePlanFor(flags: BootstrapFlags): Promise<WorkspacePlan> {
  const { planWorkspace, workspaceFacts } = await import("../sources/bootstrap/workspace.js");
  return planWorkspace(flags.tmpfs, await workspaceFacts());
}

async function outputRows(flags: BootstrapFlags): Promise<[string, string][]> {
  const tags = flags.tag.length === 0 ? "untagged" : `tags ${flags.tag.join(", ")}`;
  const { describeOutput, parseOutputs } = await import("./outputs.js");
  const outputs = parseOutputs(flags.output, flags.push).map((spec) => describeOutput(spec, flags.via));
  const rows: [string, string][] = [
    ["work dir", (await workspacePlanFor(flags)).description],
    ["output", `${outputs.join("; ")}, ${tags}`],
  ];
  if (flags.keepRootfs !== undefined) rows.push(["keep rootfs", flags.keepRootfs]);
  if (flags.packageList !== undefined) rows.push(["package list", flags.packageList]);
  rows.push(["cleanup", !flags.clean ? "none (--no-clean)" : flags.slim ? "profile + slim" : "profile"]);
  return rows;
}

/**
 * A command line as a shell would take it back: an argument with a space, a quote or another character
 * the shell reads is single-quoted (mmdebstrap's sources.list lines and apt options have spaces).
 */
function commandText(tool: string, args: readonly string[]): string {
  const quoted = args.map((arg) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, "'\\''")}'`));
  return [tool, ...quoted].join(" ");
}

/**
 * The checks a build makes of the shared flags (tags, epoch, container config, platform, --via and the
 * flags of one kind of output), for `--dry-run`: a plan must not be printed for what the build would
 * refuse. Nothing is written.
 */
async function checkImageFlags(context: CommandContext, flags: BootstrapFlags): Promise<void> {
  const { prepareImageFlags } = await import("./run-build.js");
  prepareImageFlags(flags, context.env);
  const { checkOutputFlags, parseOutputs } = await import("./outputs.js");
  await checkOutputFlags(flags, parseOutputs(flags.output, flags.push));
}

/**
 * `--package-list FILE` is written once the tree is bootstrapped: a path that cannot be written must
 * fail now, not after minutes of downloads.
 */
async function checkPackageList(file: string | undefined): Promise<void> {
  if (file === undefined) return;
  if (file === "-") {
    throw new UsageError("--package-list - would write to stdout, which already carries the result", {
      hint: "Stdout holds the image ID, or with --json the whole result as one object; give the flag a file name.",
    });
  }
  const { checkDestination } = await import("../sinks/atomic-file.js");
  await checkDestination(file, `the package list ${file}`);
}

/** Makes `--cache-dir` now (with its parents), so that a path where it cannot be is refused before the bootstrap. */
async function makeCacheDir(dir: string | undefined): Promise<void> {
  if (dir === undefined) return;
  const { makeDirectories } = await import("../make-directories.js");
  try {
    await makeDirectories(dir);
  } catch (error) {
    throw new UsageError(`--cache-dir ${dir} cannot be made or used (${errnoCode(error) ?? String(error)})`, {
      cause: error,
      hint: "Give a directory on a writable filesystem; it is created if missing.",
    });
  }
}

/**
 * The command a container runs when neither --cmd nor --entrypoint says otherwise: the tree's shell, as
 * the distributions' official images have it (bash, else sh). Without one, `docker run -it IMAGE` fails
 * with "No command specified".
 */
async function defaultShell(rootfs: string): Promise<readonly string[] | undefined> {
  const { walkInRoot } = await import("../elf/resolve.js");
  for (const shell of ["/bin/bash", "/bin/sh"]) {
    if ((await walkInRoot(rootfs, shell).catch(() => undefined))?.kind === "file") return [shell];
  }
  return undefined;
}

/**
 * The container config of a bootstrapped image: the PATH the distributions' official images (and apko's)
 * set, first, so that `--env` and `-c ENV` replace it or expand `$PATH` to it (without one in the config,
 * `-c 'ENV PATH=/opt/bin:$PATH'` expands to `/opt/bin:` and the container finds no program); and the
 * tree's `shell` as the command when neither --cmd nor --entrypoint is given.
 */
export function bootstrapConfig(flags: ImageFlags, shell: readonly string[] | undefined): ContainerConfig {
  const given = configFromFlags({ ...flags, env: [`PATH=${DEFAULT_PATH}`, ...flags.env] });
  return given.Cmd === undefined && given.Entrypoint === undefined ? { ...given, Cmd: shell } : given;
}

/**
 * The `-updates` and `-security` pockets of a Debian plan, for `--dry-run`. With its default mirror
 * mmdebstrap adds them itself; debootstrap takes the release alone.
 */
export function describePockets(
  plan: Pick<import("../sources/bootstrap/debian.js").DebianPlan, "backend" | "mirror" | "pockets">,
): string {
  if (plan.pockets.length === 0) {
    return plan.mirror === undefined && plan.backend === "mmdebstrap" ? "the tool's default" : "none";
  }
  const listed = plan.pockets.map((p) => `${p.suite} at ${p.uri}`).join(", ");
  return plan.backend === "debootstrap"
    ? `${listed} (listed for apt only: debootstrap takes one suite)`
    : listed;
}

/** The image platform is the bootstrapped architecture's; a contradicting --platform is an error. */
function platformFor(architecturePlatform: Platform, flags: ImageFlags): Platform {
  if (flags.platform !== undefined && !platformsMatch(parsePlatform(flags.platform), architecturePlatform)) {
    throw new UsageError(
      `--platform ${flags.platform} contradicts the architecture being bootstrapped (${formatPlatform(architecturePlatform)})`,
      { hint: "Choose the architecture with --arch; the platform follows from it." },
    );
  }
  return architecturePlatform;
}

interface BootstrapJob {
  readonly distribution: Distribution;
  readonly createdBy: string;
  readonly platform: Platform;
  readonly insecure: boolean;
  readonly devNodes?: boolean;
  /**
   * Runs the bootstrapper into the workspace's rootfs; returns the distribution's own date when it knows
   * one. `sourceDateEpoch` is the user's fixed epoch, if any.
   */
  readonly run: (
    workspace: import("../sources/bootstrap/workspace.js").BootstrapWorkspace,
    options: import("../sources/bootstrap/run-tool.js").ToolRunOptions,
    sourceDateEpoch: number | undefined,
  ) => Promise<number | undefined>;
}

/** The part every bootstrap command shares once its plan is made: workspace, build, cleanup. */
async function runBootstrapBuild(
  context: CommandContext,
  flags: BootstrapFlags,
  job: BootstrapJob,
): Promise<number> {
  const { runBuild } = await import("./run-build.js");
  const { BootstrapWorkspace, checkKeepRootfsTarget } = await import("../sources/bootstrap/workspace.js");
  const { finishRootfs } = await import("../sources/bootstrap/finish.js");
  const { readInstalledPackages, newestBuildTime } =
    await import("../sources/bootstrap/installed-packages.js");
  const { loadPathFilter } = await import("../tar/exclude.js");
  // runBuild learns the platform only once the tree is made: check it before the bootstrapper runs.
  const { checkAnnotationPlatforms } = await import("./outputs.js");
  checkAnnotationPlatforms(flags, [job.platform]);
  const keepRootfs =
    flags.keepRootfs === undefined ? undefined : await checkKeepRootfsTarget(flags.keepRootfs);
  await checkPackageList(flags.packageList);
  await makeCacheDir(flags.cacheDir);
  const filter = await loadPathFilter(flags.exclude, flags.excludeFrom);
  const userEpoch: EpochChoice = parseEpoch(flags, context.env);
  const workspace = await BootstrapWorkspace.create(await workspacePlanFor(flags));
  let bootstrapped = false;
  try {
    let labels: Readonly<Record<string, string>> = {};
    let distributionDate: number | undefined;
    let shell: readonly string[] | undefined;
    const code = await runBuild(
      context,
      flags,
      async (onProgress) => {
        onProgress({ kind: "phase", message: `building the tree ${workspace.plan.description}` });
        distributionDate = await job.run(
          workspace,
          { signal: context.signal, onProgress, verbose: flags.verbose === true, env: context.env },
          userEpoch.kind === "fixed" ? userEpoch.seconds : undefined,
        );
        bootstrapped = true;
        if (distributionDate === undefined && job.distribution !== "debian") {
          distributionDate = newestBuildTime(await readInstalledPackages(workspace.rootfs, job.distribution));
        }
        const finished = await finishRootfs(workspace.rootfs, {
          distribution: job.distribution,
          clean: flags.clean,
          slim: flags.slim === true,
          epoch:
            userEpoch.kind === "fixed"
              ? userEpoch.seconds
              : userEpoch.kind === "newest-input"
                ? distributionDate
                : undefined,
          insecure: job.insecure,
          packageListFile: flags.packageList,
          devNodes: job.devNodes,
          filter,
          onProgress,
        });
        labels = finished.labels;
        shell = await defaultShell(workspace.rootfs);
        return finished.source;
      },
      job.createdBy,
      () => {
        const config = bootstrapConfig(flags, shell);
        const epoch: EpochChoice =
          userEpoch.kind === "newest-input" && distributionDate !== undefined
            ? { kind: "fixed", seconds: distributionDate }
            : userEpoch;
        return {
          platform: job.platform,
          epoch,
          config: { ...config, Labels: { ...labels, ...config.Labels } },
        };
      },
    );
    if (keepRootfs !== undefined) await workspace.keepRootfs(keepRootfs);
    return code;
  } catch (error) {
    // For debugging a failed build, the tree is kept where asked, as far as the bootstrapper got.
    if (keepRootfs !== undefined && bootstrapped && !context.signal.aborted) {
      await workspace.keepRootfs(keepRootfs).catch(() => undefined);
    }
    if (!context.signal.aborted && (await workspace.isFull())) {
      if (workspace.plan.tmpfsBytes !== undefined) {
        throw new ToolError("the tree did not fit in memory: the tmpfs mkbase built it on is full", {
          cause: error,
          hint: "Use --tmpfs never to build on disk in TMPDIR (set TMPDIR to a disk with room), or free memory.",
        });
      }
      // Once the tree is made, TMPDIR also takes spooled layers, whose own errors say what filled it.
      if (!bootstrapped) {
        throw new ToolError(`the tree did not fit: TMPDIR=${tmpdir()}, where mkbase built it, is full`, {
          cause: error,
          hint: "Free space there, or point TMPDIR at a filesystem with room for the tree and the downloaded packages (e.g. TMPDIR=/var/tmp).",
        });
      }
    }
    throw error;
  } finally {
    await workspace.dispose();
  }
}

const BOOTSTRAP_HELP = `
Signatures are always checked: a missing keyring or an unsigned repository stops the build unless
--insecure is given (then a warning is printed and the label mkbase.insecure=true is set). The tree is
built in a private temp dir (in memory, on a private tmpfs, when there is room: see --tmpfs); before it
is removed, anything the bootstrapper left mounted inside it is unmounted, and nothing is deleted while
a mount remains. Ctrl-C stops the bootstrapper's whole process group and cleans up the same way. The
image carries the label mkbase.packages (name=version,...).
The build epoch is --source-date-epoch / SOURCE_DATE_EPOCH, else the distribution's own date.`;

function registerDebootstrap(
  program: Command,
  context: () => CommandContext,
  done: (code: number) => void,
): void {
  const command = program
    .command("debootstrap")
    .argument("<suite>", "Debian or Ubuntu codename or alias (bookworm, trixie, stable, noble…)")
    .summary("build a Debian or Ubuntu image with mmdebstrap or debootstrap")
    .description(
      "Build a Debian or Ubuntu image. mmdebstrap runs when installed (faster), else debootstrap; --backend " +
        "chooses. Debian uses the machine's apt sources or the tool's default mirror; Ubuntu needs --mirror " +
        "(or an Ubuntu entry in the machine's apt sources). Foreign architectures run through qemu-user-static.",
    )
    .option("--backend <tool>", "mmdebstrap or debootstrap (default: mmdebstrap when installed)")
    .option(
      "--variant <name>",
      "package set: minbase, buildd, important (mmdebstrap also: essential, apt, required, standard)",
      "minbase",
    )
    .option("--arch <arch>", "dpkg architecture to bootstrap (default: this machine's)")
    .option("--include <packages>", "more packages, comma separated; repeatable", collect, [])
    .option(
      "--exclude-packages <packages>",
      "packages to leave out (debootstrap only), comma separated; repeatable",
      collect,
      [],
    )
    .option("--components <list>", "archive components, comma separated (default: main)")
    .option(
      "--keyring <file>",
      "keyring that signs the archive (default: the distribution's archive keyring)",
    );
  addBootstrapOptions(addImageOptions(command))
    .addHelpText(
      "after",
      `${BOOTSTRAP_HELP}

Examples:
  sudo mkbase debootstrap bookworm -t debian:12 --include ca-certificates,curl --slim
  sudo mkbase debootstrap noble -t noble --mirror http://MIRROR/ubuntu
  sudo mkbase debootstrap trixie --arch arm64 -t debian:13-arm64
  mkbase debootstrap bookworm --dry-run`,
    )
    .action(async (suite: string, flags: DebootstrapFlags) => {
      if (flags.backend !== undefined && flags.backend !== "mmdebstrap" && flags.backend !== "debootstrap") {
        throw new UsageError(`--backend ${flags.backend}: expected mmdebstrap or debootstrap`);
      }
      const ctx = context();
      const debian = await import("../sources/bootstrap/debian.js");
      const { platformOfArchitecture } = await import("../sources/bootstrap/host.js");
      const { requireRoot } = await import("../sources/bootstrap/run-tool.js");
      const { FAMILY_DEFAULTS } = await import("../sources/bootstrap/suites.js");
      const plan = await debian.planDebianBootstrap({
        suite,
        backend: flags.backend,
        variant: flags.variant,
        architecture: flags.arch,
        components: flags.components === undefined ? undefined : splitList(flags.components),
        include: splitList(flags.include),
        exclude: splitList(flags.excludePackages),
        mirror: flags.mirror,
        keyring: flags.keyring,
        insecure: flags.insecure === true,
        cacheDir: flags.cacheDir,
        env: ctx.env,
      });
      const platform = platformFor(platformOfArchitecture(plan.architecture), flags);
      if (flags.dryRun) {
        await checkImageFlags(ctx, flags);
        const family = FAMILY_DEFAULTS[plan.suite.family].displayName;
        ctx.stdout.write(
          formatPlan([
            ["tool", `${plan.backend} (${plan.toolPath})`],
            [
              "distribution",
              `${family}${plan.suite.version === undefined ? "" : ` ${plan.suite.version}`} (${plan.suite.suite})`,
            ],
            [
              "architecture",
              `${plan.architecture} (${formatPlatform(platform)}${plan.foreign ? ", through qemu-user" : ""})`,
            ],
            [
              "mirror",
              plan.mirror === undefined ? "the tool's default" : `${plan.mirror} (from ${plan.mirrorOrigin})`,
            ],
            ["pockets", describePockets(plan)],
            ["keyring", plan.keyring ?? "none"],
            ["signatures", plan.insecure ? "NOT checked (--insecure)" : "checked"],
            ["variant", plan.variant],
            ["components", plan.components.join(",")],
            [
              "packages",
              `${plan.variant} set${plan.include.length > 0 ? ` + ${plan.include.join(",")}` : ""}${plan.exclude.length > 0 ? ` - ${plan.exclude.join(",")}` : ""}`,
            ],
            ["cache", plan.cacheDir ?? "none"],
            ...(await outputRows(flags)),
            [
              "command",
              commandText(plan.backend, debian.debianCommandLine(plan, "TEMPDIR", "TEMPDIR/rootfs")),
            ],
          ]),
        );
        done(0);
        return;
      }
      requireRoot(
        plan.backend,
        "build a tarball without root (mmdebstrap --mode=unshare SUITE out.tar) and use `mkbase tar`",
      );
      done(
        await runBootstrapBuild(ctx, flags, {
          distribution: "debian",
          createdBy: `mkbase debootstrap ${suite}`,
          platform,
          insecure: plan.insecure,
          run: async (workspace, options, sourceDateEpoch) => {
            const outcome = await debian.runDebianBootstrap(plan, workspace.dir, workspace.rootfs, {
              ...options,
              sourceDateEpoch,
            });
            return outcome.releaseDate;
          },
        }),
      );
    });
}

function registerPacstrap(
  program: Command,
  context: () => CommandContext,
  done: (code: number) => void,
): void {
  const command = program
    .command("pacstrap")
    .summary("build an Arch Linux image with pacstrap")
    .description(
      "Build an Arch Linux image with pacstrap. pacman.conf is generated (or --pacman-conf FILE); neither the " +
        "host's keyring nor its mirrorlist is copied; the pacman keyring is initialised inside the tree and its " +
        "private key removed; locale C.UTF-8, timezone UTC, /dev rebuilt with the minimal node set.",
    )
    .option("--packages <list>", "packages to install, space or comma separated", "base")
    .option(
      "--ignore <packages>",
      "more packages to leave out (added to the default list); repeatable",
      collect,
      [],
    )
    .option("--repositories <list>", "repository sections of the generated pacman.conf", "core,extra")
    .option("--pacman-conf <file>", "use this pacman.conf instead of a generated one")
    .option("--keyring <file>", "OpenPGP keyring with the package signing keys (default: the Arch keyring)");
  addBootstrapOptions(addImageOptions(command))
    .addHelpText(
      "after",
      `${BOOTSTRAP_HELP}

Examples:
  sudo mkbase pacstrap -t arch --mirror 'https://MIRROR/$repo/os/$arch' --packages "base haveged" --ignore linux,man-db
  sudo mkbase pacstrap -t test --mirror 'file:///srv/repo/$repo' --repositories local --packages busybox --insecure`,
    )
    .action(async (flags: PacstrapFlags) => {
      const ctx = context();
      const pacstrap = await import("../sources/bootstrap/pacstrap.js");
      const { requireRoot } = await import("../sources/bootstrap/run-tool.js");
      const { hostPlatform } = await import("../image/platform.js");
      const plan = await pacstrap.planPacstrap({
        packages: splitList(flags.packages),
        ignore: splitList(flags.ignore),
        mirror: flags.mirror,
        repositories: splitList(flags.repositories),
        pacmanConf: flags.pacmanConf,
        keyring: flags.keyring,
        insecure: flags.insecure === true,
        cacheDir: flags.cacheDir,
        env: ctx.env,
      });
      const platform = platformFor(hostPlatform(), flags);
      if (flags.dryRun) {
        await checkImageFlags(ctx, flags);
        ctx.stdout.write(
          formatPlan([
            ["tool", `pacstrap (${plan.toolPath})`],
            ["distribution", "Arch Linux"],
            ["architecture", formatPlatform(platform)],
            [
              "mirror",
              plan.mirror === undefined
                ? `from ${plan.mirrorOrigin}`
                : `${plan.mirror} (from ${plan.mirrorOrigin})`,
            ],
            [
              "repositories",
              plan.pacmanConf === undefined ? plan.repositories.join(",") : `from ${plan.pacmanConf}`,
            ],
            [
              "keyring",
              plan.keyring ?? (plan.pacmanConf === undefined ? "none" : `as ${plan.pacmanConf} says`),
            ],
            ["signatures", plan.insecure ? "NOT checked (--insecure)" : "checked"],
            ["packages", plan.packages.join(" ")],
            ["ignored", plan.ignore.join(",")],
            ["cache", plan.cacheDir ?? "none"],
            ...(await outputRows(flags)),
            [
              "command",
              commandText(
                "pacstrap",
                pacstrap.pacstrapCommandLine(
                  plan,
                  plan.pacmanConf ?? "TEMPDIR/pacman.conf",
                  "TEMPDIR/rootfs",
                  plan.cacheDir ?? "TEMPDIR/pkg-cache",
                ),
              ),
            ],
          ]),
        );
        done(0);
        return;
      }
      requireRoot("pacstrap");
      done(
        await runBootstrapBuild(ctx, flags, {
          distribution: "arch",
          createdBy: `mkbase pacstrap ${plan.packages.join(" ")}`,
          platform,
          insecure: plan.insecure,
          devNodes: true,
          run: async (workspace, options) => {
            await pacstrap.runPacstrap(plan, workspace.dir, workspace.rootfs, options);
            return undefined;
          },
        }),
      );
    });
}

function registerAlpine(program: Command, context: () => CommandContext, done: (code: number) => void): void {
  const command = program
    .command("alpine")
    .argument("<branch>", "Alpine branch: v3.20, edge, latest-stable…")
    .summary("build an Alpine image with apk.static")
    .description(
      "Build an Alpine image with apk.static (--initdb add PACKAGES). apk.static is taken from PATH, or " +
        "downloaded from the first repository's apk-tools-static package and verified before it runs: its " +
        "signature against --keys-dir, or a pinned --apk-static-sha256. /etc/apk/repositories is written.",
    )
    .option("--packages <list>", "packages to install, space or comma separated", "alpine-base")
    .option(
      "--repository <url>",
      "repository URL (default: MIRROR/BRANCH/main and community); repeatable",
      collect,
      [],
    )
    .option("--arch <arch>", "apk architecture (x86_64, aarch64, armv7…; default: this machine's)")
    .option(
      "--keys-dir <dir>",
      "directory of the trusted signing keys (*.rsa.pub; default: /etc/apk/keys when present)",
    )
    .option("--apk-static-sha256 <hex>", "pin the downloaded apk-tools-static package to this sha256");
  addBootstrapOptions(addImageOptions(command))
    .addHelpText(
      "after",
      `${BOOTSTRAP_HELP}

Examples:
  sudo mkbase alpine v3.20 -t alpine:3.20 --mirror https://MIRROR/alpine --keys-dir ./alpine-keys
  sudo mkbase alpine edge -t alpine:edge --packages "alpine-base curl" --mirror https://MIRROR/alpine --keys-dir /etc/apk/keys`,
    )
    .action(async (branch: string, flags: AlpineFlags) => {
      const ctx = context();
      const apk = await import("../sources/bootstrap/apk.js");
      const { platformOfArchitecture } = await import("../sources/bootstrap/host.js");
      const { requireRoot } = await import("../sources/bootstrap/run-tool.js");
      const plan = await apk.planAlpine({
        branch,
        packages: splitList(flags.packages),
        mirror: flags.mirror,
        repositories: flags.repository,
        architecture: flags.arch,
        keysDir: flags.keysDir,
        apkStaticSha256: flags.apkStaticSha256,
        insecure: flags.insecure === true,
        cacheDir: flags.cacheDir,
        env: ctx.env,
      });
      // Alpine's armhf is ARMv6 (Debian's is ARMv7).
      const platform = platformFor(
        plan.architecture === "armhf"
          ? parsePlatform("linux/arm/v6")
          : platformOfArchitecture(plan.architecture),
        flags,
      );
      if (flags.dryRun) {
        await checkImageFlags(ctx, flags);
        ctx.stdout.write(
          formatPlan([
            [
              "tool",
              plan.apkStatic.kind === "path"
                ? `apk.static (${plan.apkStatic.path})`
                : `apk.static from ${plan.apkStatic.repository}'s apk-tools-static, verified by ${plan.apkStatic.sha256 === undefined ? "signature" : "pinned sha256"}`,
            ],
            ["distribution", `Alpine ${plan.branch}`],
            ["architecture", `${plan.architecture} (${formatPlatform(platform)})`],
            ["repositories", plan.repositories.join(" ")],
            ["keys", plan.keysDir ?? "none"],
            ["signatures", plan.insecure ? "NOT checked (--insecure)" : "checked"],
            ["packages", plan.packages.join(" ")],
            ["cache", plan.cacheDir ?? "none"],
            ...(await outputRows(flags)),
            ["command", commandText("apk.static", apk.apkCommandLine(plan, "TEMPDIR/rootfs"))],
          ]),
        );
        done(0);
        return;
      }
      requireRoot("apk.static");
      done(
        await runBootstrapBuild(ctx, flags, {
          distribution: "alpine",
          createdBy: `mkbase alpine ${branch}`,
          platform,
          insecure: plan.insecure,
          run: async (workspace, options) => {
            await apk.runAlpine(plan, workspace.dir, workspace.rootfs, options);
            return undefined;
          },
        }),
      );
    });
}

/** Registers `mkbase debootstrap`, `mkbase pacstrap` and `mkbase alpine`. */
export function registerBootstrapCommands(
  program: Command,
  context: () => CommandContext,
  done: (code: number) => void,
): void {
  registerDebootstrap(program, context, done);
  registerPacstrap(program, context, done);
  registerAlpine(program, context, done);
}
