/**
 * The flags every building command shares (`-t`, `--cmd`, `--label`, `--platform`, `-c`, epoch, output),
 * and their translation into the parts of a build request. Only commander is imported here, so that
 * `mkbase --help` and `--version` start fast; heavy modules load when a command runs.
 */
import { Option, type Command } from "commander";
import { UsageError } from "../errors.js";
import type { EpochChoice } from "../build.js";
import {
  applyChange,
  checkStopSignal,
  checkVolume,
  parseCommand,
  parseKeyValue,
  parsePort,
  withEnv,
  type ContainerConfig,
} from "../image/config.js";
import { LAST_RFC3339_SECOND } from "../image/image.js";
import { hostPlatform, parsePlatform, type Platform } from "../image/platform.js";
import { normalizedName, parseTagReference, type Reference } from "../image/reference.js";
import type { ScratchUser } from "../sources/static-binary.js";

/** Values commander collects for the shared flags. */
export interface ImageFlags {
  readonly tag: string[];
  readonly cmd?: string;
  readonly entrypoint?: string;
  readonly env: string[];
  readonly user?: string;
  readonly workdir?: string;
  readonly expose: string[];
  readonly volume: string[];
  readonly label: string[];
  readonly stopSignal?: string;
  readonly platform?: string;
  readonly change: string[];
  readonly message?: string;
  readonly sourceDateEpoch?: string;
  readonly created?: string;
  /** Absent: load (no default in the parser, so that a --via without an engine output can be refused). */
  readonly via?: "load" | "import" | "build";
  readonly quiet?: boolean;
  readonly json?: boolean;
  readonly iidfile?: string;
  readonly exclude: string[];
  readonly excludeFrom: string[];
  /** `-o/--output`, parsed by outputs.ts. */
  readonly output: string[];
  readonly push?: boolean;
  readonly annotation: string[];
  readonly metadataFile?: string;
  readonly imageSource?: string;
  readonly imageRevision?: string;
  readonly imageVersion?: string;
  readonly imageBaseName?: string;
  readonly insecureRegistry?: boolean;
  readonly registryAuthFile?: string;
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** `--chown` of `mkbase dir` and `mkbase tar`, which applies to every entry. */
export const CHOWN_HELP =
  "set the owner of every entry (numbers or root, as tar --owner and --group do), e.g. 0:0 for a tree that an unprivileged user made";

/** The largest uid Linux accepts ((uid_t)-1 means "no change" to chown and setresuid). */
const MAX_ID = 4294967294;
/** The number `part`, a part of the value `whole` that `flag` was given. */
export function parseId(part: string, flag: string, whole: string): number {
  if (!/^\d+$/.test(part) || Number(part) > MAX_ID) {
    const shown = part === "" ? "an empty part" : JSON.stringify(part);
    throw new UsageError(`${flag} ${whole}: ${shown} is not a user or group number`, {
      hint: `Give a number between 0 and ${MAX_ID}.`,
    });
  }
  return Number(part);
}

/**
 * `--chown UID[:GID]` as Dockerfile `COPY --chown`: numbers, or the names the image's `/etc/passwd` is known
 * to hold (root, and the user `mkbase scratch --user` adds); a missing group means the same number as the
 * user.
 */
export function parseChown(text: string, user: ScratchUser | undefined): { uid: number; gid: number } {
  const known = new Map<string, number>([["root", 0]]);
  if (user?.name !== undefined) known.set(user.name, user.uid);
  const idOf = (part: string): number => {
    const named = known.get(part);
    if (named !== undefined) return named;
    if (/^\d+$/.test(part)) return parseId(part, "--chown", text);
    const names = [...known.keys()].join(" and ");
    throw new UsageError(
      `--chown ${text}: ${JSON.stringify(part)} is neither a number nor a name --chown knows (${names})`,
      {
        hint: `Use numbers (--chown 1000:1000)${user?.name === undefined ? " or root" : ", root, or the name given to --user"}.`,
      },
    );
  };
  const [owner = "", group] = text.split(":", 2);
  const uid = idOf(owner);
  return { uid, gid: group === undefined ? uid : idOf(group) };
}

/** Adds the shared flags to `command`. */
export function addImageOptions(command: Command): Command {
  return command
    .option("-t, --tag <name>", "name and optionally tag the image (name:tag); repeatable", collect, [])
    .option("--cmd <command>", "default command: a JSON array (exec form) or a string run by /bin/sh -c")
    .option("--entrypoint <command>", "entrypoint: a JSON array (exec form) or a string run by /bin/sh -c")
    .option("--env <KEY=VALUE>", "set an environment variable; repeatable", collect, [])
    .option("--user <user[:group]>", "user the container runs as")
    .option("--workdir <path>", "working directory of the container")
    .option("--expose <port[/proto]>", "document a port the container listens on; repeatable", collect, [])
    .option("--volume <path>", "declare a volume mount point (an absolute path); repeatable", collect, [])
    .option("--label <KEY=VALUE>", "set a label; repeatable", collect, [])
    .option("--stop-signal <signal>", "signal that stops the container (e.g. SIGTERM)")
    .option("--platform <os/arch[/variant]>", "platform recorded in the image (default: this machine's)")
    .option(
      "-c, --change <instruction>",
      "apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL, HEALTHCHECK, ONBUILD); repeatable",
      collect,
      [],
    )
    .option("-m, --message <text>", "comment recorded in the image history")
    .option(
      "--source-date-epoch <seconds>",
      "build time: clamps file mtimes and sets the image's created time (default: $SOURCE_DATE_EPOCH, else the newest mtime of the input)",
    )
    .option("--created <now>", "use the current time as the image's created time (not reproducible)")
    .addOption(
      new Option(
        "--via <method>",
        "how the image enters the Docker Engine: load (the default: exact config, reproducible ID), import (streamed; the engine sets created and the history, and before Docker 23 records only its own architecture), build (FROM scratch context; the engine sets created and the history, and packs the layer again)",
      ).choices(["load", "import", "build"]),
    )
    .option(
      "--exclude <pattern>",
      "leave out paths matching a .dockerignore pattern; repeatable",
      collect,
      [],
    )
    .option(
      "--exclude-from <file>",
      "read exclude patterns from a file (.dockerignore syntax); repeatable",
      collect,
      [],
    )
    .option("-q, --quiet", "no progress output; print only the image ID")
    .option("--json", "print the result as one JSON object on stdout")
    .option("--iidfile <file>", "write the image ID to a file")
    .option(
      "-o, --output <type=…,dest=…>",
      "where the image goes (default: the Docker Engine; repeatable, one walk feeds all): type=docker[,dest=FILE] (engine, or a docker-archive file), type=oci,dest=FILE[,tar=false] (OCI archive or layout directory), type=tar,dest=FILE (the rootfs only), type=context,dest=DIR, type=registry; dest=- writes an archive to stdout (-o - the rootfs tar); compression=gzip|zstd|none, compression-level=N",
      collect,
      [],
    )
    .option("--push", "push to the registry named by -t (same as -o type=registry)")
    .option(
      "--annotation <[type:]key=value>",
      "OCI annotation; type is manifest (default), index, manifest-descriptor or index-descriptor, optionally with [os/arch]; repeatable",
      collect,
      [],
    )
    .option("--metadata-file <file>", "write the build result (digests, image names, outputs) as JSON")
    .option(
      "--image-source <url>",
      "annotation org.opencontainers.image.source: where the image's sources are",
    )
    .option("--image-revision <rev>", "annotation org.opencontainers.image.revision: the source revision")
    .option("--image-version <version>", "annotation org.opencontainers.image.version")
    .option("--image-base-name <ref>", "annotation org.opencontainers.image.base.name")
    .option(
      "--insecure-registry",
      "allow unverified HTTPS or plain HTTP to registries other than localhost (with a push)",
    )
    .option(
      "--registry-auth-file <file>",
      "docker config.json to read registry credentials from (with a push)",
    );
}

function parseEpochValue(value: string, origin: string): number {
  if (!/^\d+$/.test(value.trim()) || Number(value) > LAST_RFC3339_SECOND) {
    throw new UsageError(`${origin}=${value} is not a valid build time`, {
      hint: "Give whole seconds since 1970-01-01 UTC, e.g. $(git log -1 --format=%ct).",
    });
  }
  return Number(value);
}

/** `--source-date-epoch`, else `SOURCE_DATE_EPOCH`, else `--created now`, else derived from the input. */
export function parseEpoch(
  flags: ImageFlags,
  env: Readonly<Record<string, string | undefined>>,
): EpochChoice {
  if (flags.created !== undefined && flags.created !== "now") {
    throw new UsageError(`--created ${flags.created}: the only accepted value is "now"`, {
      hint: "For a fixed time use --source-date-epoch SECONDS.",
    });
  }
  if (flags.sourceDateEpoch !== undefined) {
    if (flags.created === "now")
      throw new UsageError("--created now and --source-date-epoch contradict each other");
    return { kind: "fixed", seconds: parseEpochValue(flags.sourceDateEpoch, "--source-date-epoch") };
  }
  if (flags.created === "now") return { kind: "now" };
  const fromEnv = env.SOURCE_DATE_EPOCH;
  if (fromEnv !== undefined && fromEnv !== "") {
    return { kind: "fixed", seconds: parseEpochValue(fromEnv, "SOURCE_DATE_EPOCH") };
  }
  return { kind: "newest-input" };
}

/** The container config from the flags, then `-c` instructions applied in order. */
export function configFromFlags(flags: ImageFlags): ContainerConfig {
  let config: ContainerConfig = {};
  for (const entry of flags.env) {
    const [key, value] = parseKeyValue(entry, "--env");
    config = withEnv(config, key, value);
  }
  if (flags.cmd !== undefined) config = { ...config, Cmd: parseCommand(flags.cmd, "--cmd") };
  if (flags.entrypoint !== undefined)
    config = { ...config, Entrypoint: parseCommand(flags.entrypoint, "--entrypoint") };
  if (flags.user !== undefined) config = { ...config, User: flags.user };
  if (flags.workdir !== undefined) {
    if (!flags.workdir.startsWith("/"))
      throw new UsageError(`--workdir ${flags.workdir}: must be an absolute path`);
    config = { ...config, WorkingDir: flags.workdir };
  }
  if (flags.expose.length > 0) {
    config = {
      ...config,
      ExposedPorts: Object.fromEntries(
        flags.expose.flatMap((port) => parsePort(port, "--expose")).map((p) => [p, {}]),
      ),
    };
  }
  if (flags.volume.length > 0)
    config = {
      ...config,
      Volumes: Object.fromEntries(flags.volume.map((v) => [checkVolume(v, "--volume"), {}])),
    };
  if (flags.label.length > 0) {
    config = { ...config, Labels: Object.fromEntries(flags.label.map((l) => parseKeyValue(l, "--label"))) };
  }
  if (flags.stopSignal !== undefined) {
    config = { ...config, StopSignal: checkStopSignal(flags.stopSignal, "--stop-signal") };
  }
  return flags.change.reduce(applyChange, config);
}

export function platformFromFlags(flags: ImageFlags): Platform {
  return flags.platform === undefined ? hostPlatform() : parsePlatform(flags.platform);
}

export function tagsFromFlags(flags: ImageFlags): (Reference & { readonly tag: string })[] {
  // Spellings of one name (x:1, docker.io/library/x:1) are one tag to the engine and to registries: the
  // first is kept, so that results (--json, outputs) do not list a tag twice.
  const seen = new Set<string>();
  return flags.tag.map(parseTagReference).filter((reference) => {
    const name = normalizedName(reference);
    if (seen.has(name)) return false;
    seen.add(name);
    return true;
  });
}
