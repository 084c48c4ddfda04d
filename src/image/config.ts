/**
 * The runtime part of an image config (what `docker run` uses), and its Dockerfile-instruction form,
 * which `docker import --change`, the engine's import endpoint and a `FROM scratch` Dockerfile all speak.
 */
import { posix } from "node:path";
import { UsageError } from "../errors.js";

/**
 * The search path the engine gives a container whose image sets no PATH, and the one the distributions'
 * official images set.
 */
export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/**
 * Docker's `Healthcheck`: `Test` is `["NONE"]`, `["CMD", ...argv]` or `["CMD-SHELL", command]`; the
 * durations are nanoseconds. An absent member (the engine omits zeros) means the engine's default.
 */
export interface HealthConfig {
  readonly Test: readonly string[];
  readonly Interval?: number;
  readonly Timeout?: number;
  readonly StartPeriod?: number;
  readonly StartInterval?: number;
  readonly Retries?: number;
}

/**
 * OCI image config `config` object, with the two members only Docker's config has (`Healthcheck`,
 * `OnBuild`), under Docker's names, which the engines read from either. Absent members are omitted from
 * the JSON.
 */
export interface ContainerConfig {
  readonly User?: string;
  readonly ExposedPorts?: Readonly<Record<string, Record<string, never>>>;
  readonly Env?: readonly string[];
  readonly Entrypoint?: readonly string[];
  readonly Cmd?: readonly string[];
  readonly Volumes?: Readonly<Record<string, Record<string, never>>>;
  readonly WorkingDir?: string;
  readonly Labels?: Readonly<Record<string, string>>;
  readonly StopSignal?: string;
  readonly Healthcheck?: HealthConfig;
  /** ONBUILD triggers, each as written after `ONBUILD`. */
  readonly OnBuild?: readonly string[];
}

/**
 * A command as the user wrote it: a JSON array is the exec form; anything else is the shell form,
 * run by `/bin/sh -c` exactly as a Dockerfile `CMD` line would be.
 */
export function parseCommand(text: string, flag: string): string[] {
  const trimmed = text.trim();
  if (trimmed.startsWith("[")) return parseJsonArray(trimmed, flag);
  if (trimmed === "") return [];
  return ["/bin/sh", "-c", trimmed];
}

/** The JSON form of an instruction (`CMD ["/bin/app"]`, `VOLUME ["/data"]`), with an example of its own. */
export function parseJsonArray(text: string, flag: string): string[] {
  const volume = flag === "VOLUME";
  const example = volume ? '["/data","/cache"]' : '["/bin/app","--flag"]';
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new UsageError(`${flag}: ${text} looks like a JSON array but is not valid JSON`, {
      cause: error,
      hint: volume
        ? `Write ${flag} '${example}', or the paths separated by spaces.`
        : `Write the exec form as ${flag} '${example}', or a plain string for the shell form.`,
    });
  }
  if (!Array.isArray(parsed) || !parsed.every((item) => typeof item === "string")) {
    throw new UsageError(`${flag}: the ${volume ? "JSON" : "exec"} form must be a JSON array of strings`, {
      hint: `For example ${flag} '${example}'.`,
    });
  }
  return parsed;
}

/** Whether a command array is the shell form produced by {@link parseCommand}. */
export function isShellForm(command: readonly string[]): boolean {
  return command.length === 3 && command[0] === "/bin/sh" && command[1] === "-c";
}

/** `KEY=VALUE` (repeatable flags such as `--env` and `--label`). */
export function parseKeyValue(text: string, flag: string): [string, string] {
  const eq = text.indexOf("=");
  if (eq <= 0) {
    throw new UsageError(`${flag} ${text}: expected KEY=VALUE`, { hint: `For example ${flag} KEY=value.` });
  }
  return [text.slice(0, eq), text.slice(eq + 1)];
}

/** `80`, `80/tcp`, `53/udp`, `8000-8002/tcp` → the `ExposedPorts` keys. `what` names where it was given. */
export function parsePort(text: string, what: string): string[] {
  const match = /^(\d+)(?:-(\d+))?(?:\/(tcp|udp|sctp))?$/i.exec(text.trim());
  const low = Number(match?.[1]);
  const high = match?.[2] === undefined ? low : Number(match[2]);
  if (match === null || low < 1 || high > 65535 || high < low) {
    throw new UsageError(`${what}: ${JSON.stringify(text)} is not a port`, {
      hint: "Use PORT[/tcp|udp|sctp] or LOW-HIGH[/proto].",
    });
  }
  const proto = (match[3] ?? "tcp").toLowerCase();
  const ports: string[] = [];
  for (let p = low; p <= high; p++) ports.push(`${p}/${proto}`);
  return ports;
}

function setEnv(env: readonly string[] | undefined, key: string, value: string): string[] {
  return [...(env ?? []).filter((line) => !line.startsWith(`${key}=`)), `${key}=${value}`];
}

/** Returns `config` with `KEY=VALUE` set in `Env` (replacing an earlier value). */
export function withEnv(config: ContainerConfig, key: string, value: string): ContainerConfig {
  return { ...config, Env: setEnv(config.Env, key, value) };
}

/** Variables for `$NAME` in a change: the config's `Env` as it stands before the instruction. */
type Variables = ReadonlyMap<string, string>;

function variablesOf(config: ContainerConfig): Variables {
  return new Map(
    (config.Env ?? []).map((line): [string, string] => {
      const eq = line.indexOf("=");
      return [line.slice(0, eq), line.slice(eq + 1)];
    }),
  );
}

/**
 * Reads `text` as the engine's Dockerfile lexer does for the instructions of a change: double and
 * single quotes, backslash escapes (inside double quotes only before `"`, `$` and `\`), and — outside
 * single quotes — `$NAME`, `${NAME}`, `${NAME:-word}` and `${NAME:+word}` replaced from `variables`
 * (unset is empty). With `split`, whitespace outside quotes separates words; without, it is kept and
 * the result is one word. `docker import -c`, the import endpoint and a Dockerfile all read changes
 * this way, so the load path must too.
 */
function lex(text: string, variables: Variables, split: boolean): string[] {
  const words: string[] = [];
  let current = "";
  let quote: string | undefined;
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (c === "$" && quote !== "'") {
      const [value, end] = expandVariable(text, i, variables);
      current += value;
      i = end;
      inWord = true;
    } else if (quote !== undefined) {
      if (c === quote) quote = undefined;
      else if (c === "\\" && quote === '"' && '"$\\'.includes(text[i + 1] ?? "x")) current += text[++i];
      else current += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      inWord = true;
    } else if (c === "\\" && i + 1 < text.length) {
      current += text[++i];
      inWord = true;
    } else if (split && /\s/.test(c)) {
      if (inWord) words.push(current);
      current = "";
      inWord = false;
    } else {
      current += c;
      inWord = true;
    }
  }
  if (quote !== undefined) throw new UsageError(`unterminated quote in "${text}"`);
  if (inWord || !split) words.push(current);
  return words;
}

const VARIABLE_NAME = /^(?:\d+|[A-Za-z_][A-Za-z0-9_]*)/;

/** The value of the variable reference starting with the `$` at `at`, and the index of its last character. */
function expandVariable(text: string, at: number, variables: Variables): [string, number] {
  if (text[at + 1] !== "{") {
    const name = VARIABLE_NAME.exec(text.slice(at + 1))?.[0];
    // A `$` that starts no name stays a `$`.
    if (name === undefined) return ["$", at];
    return [variables.get(name) ?? "", at + name.length];
  }
  // The closing brace, past any nested `${…}` in a default word.
  let depth = 0;
  let close = -1;
  for (let i = at + 2; i < text.length && close < 0; i++) {
    if (text[i] === "$" && text[i + 1] === "{") depth++;
    else if (text[i] === "}" && depth-- === 0) close = i;
  }
  const body = text.slice(at + 2, close);
  const match = /^([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])(.*))?$/s.exec(body);
  if (close < 0 || match === null) {
    throw new UsageError(
      `"${text}": \${${body}${close < 0 ? "" : "}"} is not a variable mkbase can substitute`,
      {
        hint: "Use $NAME, ${NAME}, ${NAME:-default} or ${NAME:+alternative}, as a Dockerfile does.",
      },
    );
  }
  const value = variables.get(match[1] as string) ?? "";
  const word = (): string => lex(match[3] ?? "", variables, false).join("");
  const result = match[2] === ":-" ? value || word() : match[2] === ":+" ? (value ? word() : "") : value;
  return [result, close];
}

/** `KEY=VALUE ...` pairs, or the legacy `KEY VALUE` form, as ENV and LABEL accept them. */
function parsePairs(args: string, instruction: string, variables: Variables): [string, string][] {
  const words = lex(args, variables, true);
  if (words.length === 0) throw new UsageError(`${instruction} needs at least one KEY=VALUE`);
  const first = words[0] as string;
  if (!first.includes("=")) {
    // Legacy `ENV KEY value with spaces`: everything after the key is the value; there must be one, as
    // Docker's parser requires (`ENV KEY` alone is an error there, not an empty value).
    const key = /^\s*\S+/.exec(args)?.[0] ?? "";
    const value = args.slice(key.length).trim();
    if (value === "") {
      throw new UsageError(`${instruction} ${first} has no value`, {
        hint: `Write ${instruction} ${first}=VALUE, or ${first}= for an empty value.`,
      });
    }
    return [[first, lex(value, variables, false).join("")]];
  }
  return words.map((word) => parseKeyValue(word, instruction));
}

const CHANGE_INSTRUCTIONS = [
  "CMD",
  "ENTRYPOINT",
  "ENV",
  "EXPOSE",
  "LABEL",
  "USER",
  "VOLUME",
  "WORKDIR",
  "STOPSIGNAL",
  "HEALTHCHECK",
  "ONBUILD",
];

/**
 * Signal names the engine accepts for STOPSIGNAL on Linux, without the SIG prefix: the kernel's, their
 * aliases, and the real-time ones counted from either end (RTMIN+3, RTMAX-2).
 */
const SIGNAL_NAMES = new Set([
  ..."ABRT ALRM BUS CHLD CLD CONT FPE HUP ILL INT IO IOT KILL PIPE POLL PROF PWR QUIT SEGV STKFLT STOP SYS TERM TRAP TSTP TTIN TTOU URG USR1 USR2 VTALRM WINCH XCPU XFSZ RTMIN RTMAX".split(
    " ",
  ),
  ...Array.from({ length: 15 }, (_, i) => `RTMIN+${i + 1}`),
  ...Array.from({ length: 14 }, (_, i) => `RTMAX-${i + 1}`),
]);

/**
 * Checks a stop signal the way the engine will read it when the container is stopped: a number from 1
 * to 255, or a name with or without `SIG`, in any case. Caught now rather than at `docker stop`.
 */
export function checkStopSignal(value: string, what: string): string {
  const number = /^\d+$/.test(value) ? Number(value) : undefined;
  const known =
    number !== undefined
      ? number >= 1 && number <= 255
      : SIGNAL_NAMES.has(value.toUpperCase().replace(/^SIG/, ""));
  if (!known) {
    throw new UsageError(`${what}: "${value}" is not a signal`, {
      hint: "Give a signal name or number, e.g. SIGTERM, SIGQUIT, SIGRTMIN+3 or 15.",
    });
  }
  return value;
}

/**
 * Checks a volume's mount point. The engine records a relative one as given, and runc (1.2 on) refuses to
 * start a container of such an image ("mount destination … not absolute"): caught now, not at `docker run`.
 */
export function checkVolume(path: string, what: string): string {
  if (!path.startsWith("/")) {
    throw new UsageError(`${what}: the volume "${path}" is not an absolute path`, {
      hint: `Name the mount point from the container's root, e.g. /${path.replace(/^(\.?\/)+/, "") || "data"}.`,
    });
  }
  return path;
}

/**
 * The `--name=value` words that lead an instruction's arguments, and the text after them, split as the
 * engine's parser splits them: quotes and `\` escapes inside a flag word, no variable substitution, and a
 * lone `--` ends the flags.
 */
function leadingFlags(args: string): { flags: string[]; rest: string } {
  const flags: string[] = [];
  let i = 0;
  for (;;) {
    while (/\s/.test(args[i] ?? "")) i++;
    if (!args.startsWith("--", i)) break;
    let word = "";
    let quote: string | undefined;
    for (; i < args.length && (quote !== undefined || !/\s/.test(args[i] as string)); i++) {
      const c = args[i] as string;
      if (c === quote) quote = undefined;
      else if (quote === undefined && (c === '"' || c === "'")) quote = c;
      else if (c !== "\\") word += c;
      else if (i + 1 < args.length) word += args[++i];
    }
    if (word === "--") break;
    flags.push(word);
  }
  return { flags, rest: args.slice(i).trim() };
}

/**
 * The values of an instruction's flags by name, checked as the engine's builder checks them: each flag
 * known, given once, and with `=value` (an empty value counts as not given).
 */
function flagValues(
  flags: readonly string[],
  known: readonly string[],
  instruction: string,
  what: string,
): Map<string, string> {
  const values = new Map<string, string>();
  for (const flag of flags) {
    const eq = flag.indexOf("=");
    const name = (eq < 0 ? flag : flag.slice(0, eq)).replace(/^--/, "");
    if (!known.includes(name)) {
      throw new UsageError(`${what}: ${instruction} has no flag --${name}`, {
        hint:
          known.length === 0
            ? `${instruction} takes no flags.`
            : `${instruction} takes ${known.map((k) => `--${k}`).join(", ")}.`,
      });
    }
    if (values.has(name)) {
      throw new UsageError(`${what}: --${name} is given twice`, { hint: `Give --${name} once.` });
    }
    if (eq < 0) {
      throw new UsageError(`${what}: --${name} has no value`, { hint: `Write --${name}=VALUE.` });
    }
    if (flag.length > eq + 1) values.set(name, flag.slice(eq + 1));
  }
  return values;
}

const GO_DURATION_UNITS = new Map<string, bigint>([
  ["ns", 1n],
  ["us", 1_000n],
  ["\u00b5s", 1_000n],
  ["\u03bcs", 1_000n],
  ["ms", 1_000_000n],
  ["s", 1_000_000_000n],
  ["m", 60_000_000_000n],
  ["h", 3_600_000_000_000n],
]);
/** Go's bound in `time.ParseDuration`: one past the largest int64, the magnitude of the smallest. */
const INT64_LIMIT = 1n << 63n;

/**
 * Nanoseconds of `text` read as Go's `time.ParseDuration` reads it (`500ms`, `1.5h`, `1m30s`), which is how
 * the engine reads HEALTHCHECK's durations, down to its rounding of fractions and its int64 range;
 * undefined where Go reports an error.
 */
function parseGoDuration(text: string): bigint | undefined {
  const negative = text.startsWith("-");
  const body = /^[-+]/.test(text) ? text.slice(1) : text;
  if (body === "0") return 0n;
  if (body === "") return undefined;
  const part = /(\d*)(?:\.(\d*))?([^\d.]*)/y;
  let total = 0n;
  while (part.lastIndex < body.length) {
    const [, integer = "", fraction, unitName = ""] = part.exec(body) ?? [];
    const unit = GO_DURATION_UNITS.get(unitName);
    if ((integer === "" && !fraction) || unit === undefined) return undefined;
    let value = BigInt(integer === "" ? 0 : integer);
    if (value > INT64_LIMIT / unit) return undefined;
    value *= unit;
    // Go keeps the fraction's digits only while they fit an int64, then scales them in float64.
    let digits = 0n;
    let scale = 1;
    for (const digit of fraction ?? "") {
      const next = digits * 10n + BigInt(digit);
      if (next > INT64_LIMIT) break;
      digits = next;
      scale *= 10;
    }
    if (digits > 0n) value += BigInt(Math.trunc(Number(digits) * (Number(unit) / scale)));
    total += value;
    if (value > INT64_LIMIT || total > INT64_LIMIT) return undefined;
  }
  if (!negative && total === INT64_LIMIT) return undefined;
  return negative ? -total : total;
}

/** `ns` as Go's `Duration.String` writes it (`1m30s`, `1.5s`, `500ms`), for a duration of at least 1ms. */
function formatGoDuration(ns: number): string {
  const decimal = (value: bigint, unit: bigint, digits: number): string => {
    const fraction = String(value % unit)
      .padStart(digits, "0")
      .replace(/0+$/, "");
    return `${value / unit}${fraction === "" ? "" : `.${fraction}`}`;
  };
  const value = BigInt(ns);
  if (value < 1_000_000_000n) return `${decimal(value, 1_000_000n, 6)}ms`;
  const hours = value / 3_600_000_000_000n;
  const minutes = (value / 60_000_000_000n) % 60n;
  const seconds = decimal(value % 60_000_000_000n, 1_000_000_000n, 9);
  return `${hours > 0n ? `${hours}h` : ""}${hours > 0n || minutes > 0n ? `${minutes}m` : ""}${seconds}s`;
}

/** HEALTHCHECK flags that take a duration, and the member each one sets. */
const HEALTHCHECK_DURATIONS = [
  ["interval", "Interval"],
  ["timeout", "Timeout"],
  ["start-period", "StartPeriod"],
  ["start-interval", "StartInterval"],
] as const;

const HEALTHCHECK_USAGE =
  'Write HEALTHCHECK [--interval=30s] [--timeout=5s] [--start-period=1m] [--start-interval=5s] [--retries=3] CMD ["/bin/check"] (or CMD followed by a shell command), or HEALTHCHECK NONE.';

/** A HEALTHCHECK duration flag in nanoseconds, undefined for 0 (the engine's default). */
function healthDuration(flag: string, value: string, what: string): number | undefined {
  const ns = parseGoDuration(value);
  if (ns === undefined) {
    throw new UsageError(`${what}: --${flag}=${value} is not a duration`, {
      hint: "Give a Go duration such as 500ms, 30s or 1m30s, or 0 for the engine's default.",
    });
  }
  if (ns === 0n) return undefined;
  // The engine's minimum, so that a number meant as seconds is not taken as nanoseconds.
  if (ns < 1_000_000n) {
    throw new UsageError(`${what}: --${flag}=${value} is shorter than 1ms`, {
      hint: "Give at least 1ms, or 0 for the engine's default.",
    });
  }
  // Go allows up to 292 years; past 2^53 ns (104 days) not every value survives the JSON number.
  if (BigInt(Number(ns)) !== ns) {
    throw new UsageError(`${what}: --${flag}=${value} cannot be recorded exactly`, {
      hint: "Round it to whole minutes.",
    });
  }
  return Number(ns);
}

/**
 * HEALTHCHECK as the engine's Dockerfile parser reads it: `NONE`, or flags then `CMD` with the exec form
 * (a JSON array) or the shell form (the rest of the line, unquoted, without variable substitution).
 */
function parseHealthcheck(args: string, what: string): HealthConfig {
  const { flags, rest } = leadingFlags(args);
  const [, kind = "", command = ""] = /^(\S*)\s*(.*)$/s.exec(rest) ?? [];
  if (kind.toUpperCase() === "NONE") {
    if (command !== "") {
      throw new UsageError(`${what}: HEALTHCHECK NONE takes no arguments`, { hint: HEALTHCHECK_USAGE });
    }
    // The engine ignores flags before NONE; one given there is a mistake, not a setting.
    if (flags.length > 0) {
      throw new UsageError(`${what}: HEALTHCHECK NONE takes no flags`, {
        hint: "NONE turns off the health check an image inherits; drop the flags.",
      });
    }
    return { Test: ["NONE"] };
  }
  const known = [...HEALTHCHECK_DURATIONS.map(([flag]) => flag), "retries"];
  const values = flagValues(flags, known, "HEALTHCHECK", what);
  if (kind.toUpperCase() !== "CMD") {
    throw new UsageError(`${what}: HEALTHCHECK needs CMD or NONE${kind === "" ? "" : `, not ${kind}`}`, {
      hint: HEALTHCHECK_USAGE,
    });
  }
  const test = command.startsWith("[")
    ? ["CMD", ...parseJsonArray(command, "HEALTHCHECK CMD")]
    : ["CMD-SHELL", command];
  if (test.length === 1 || command === "") {
    throw new UsageError(`${what}: HEALTHCHECK CMD has no command`, { hint: HEALTHCHECK_USAGE });
  }
  let health: HealthConfig = { Test: test };
  for (const [flag, member] of HEALTHCHECK_DURATIONS) {
    const value = values.get(flag);
    const ns = value === undefined ? undefined : healthDuration(flag, value, what);
    if (ns !== undefined) health = { ...health, [member]: ns };
  }
  const retries = values.get("retries");
  if (retries !== undefined) {
    // strconv.ParseInt(value, 10, 32), as the engine reads it.
    const count = /^[-+]?\d+$/.test(retries) ? Number(retries) : NaN;
    if (!(Math.abs(count) < 2 ** 31) || count < 0) {
      throw new UsageError(`${what}: --retries=${retries} is not a number of retries`, {
        hint: "Give a whole number, 0 or more (0 for the engine's default).",
      });
    }
    if (count > 0) health = { ...health, Retries: count };
  }
  return health;
}

/**
 * An ONBUILD trigger as the engine records it: the line after `ONBUILD`, verbatim (the trigger runs, and
 * is read, only in a build that starts from this image).
 */
function parseOnBuild(line: string, args: string, what: string): string {
  const { flags, rest } = leadingFlags(args);
  flagValues(flags, [], "ONBUILD", what);
  const trigger = /^\S*/.exec(rest)?.[0].toUpperCase() ?? "";
  if (trigger === "") {
    throw new UsageError(`${what}: ONBUILD needs an instruction`, {
      hint: "Write ONBUILD followed by the instruction to run in builds from this image, e.g. ONBUILD RUN make.",
    });
  }
  if (["ONBUILD", "FROM", "MAINTAINER"].includes(trigger)) {
    throw new UsageError(`${what}: ${trigger} is not allowed as an ONBUILD trigger`, {
      hint: "Docker refuses ONBUILD ONBUILD, ONBUILD FROM and ONBUILD MAINTAINER; use another instruction.",
    });
  }
  return line.replace(/^\s*ONBUILD\s*/i, "");
}

/**
 * The instructions in the text of one change, read as the engine's Dockerfile parser reads the changes of
 * an import: a `\\` at the end of a line (trailing blanks allowed) continues the instruction on the next
 * one, `#` comment lines and blank lines are skipped (also between continued lines), and a line break
 * otherwise starts the next instruction.
 */
function changeInstructions(text: string): string[] {
  const instructions: string[] = [];
  let current: string | undefined;
  for (const raw of text.split(/\r?\n/)) {
    const stripped = raw.trimStart();
    if (stripped === "" || stripped.startsWith("#")) continue;
    const continued = /\\[ \t]*$/.exec(raw);
    // Only the first line of an instruction loses its leading blanks; a continued line keeps them.
    const part = continued === null ? raw : raw.slice(0, continued.index);
    current = current === undefined ? part.trimStart() : current + part;
    if (continued === null) {
      instructions.push(current);
      current = undefined;
    }
  }
  if (current !== undefined) instructions.push(current);
  return instructions;
}

/**
 * Applies a `docker import --change` value (one Dockerfile instruction, or several on lines of their own)
 * to `config` and returns the result. Only the instructions that describe the config (not the filesystem)
 * are accepted, as in `docker import`.
 */
export function applyChange(config: ContainerConfig, change: string): ContainerConfig {
  const instructions = changeInstructions(change);
  // Nothing but blanks or comments: refused below as an empty instruction, not silently ignored.
  if (instructions.length === 0) return applyInstruction(config, change);
  return instructions.reduce(applyInstruction, config);
}

function applyInstruction(config: ContainerConfig, line: string): ContainerConfig {
  const match = /^\s*(\w+)\s*(.*)$/s.exec(line);
  const instruction = match?.[1]?.toUpperCase() ?? "";
  const args = match?.[2]?.trim() ?? "";
  if (!CHANGE_INSTRUCTIONS.includes(instruction)) {
    throw new UsageError(
      `--change "${line}": ${instruction || "empty"} is not an instruction mkbase can apply`,
      {
        hint: `Use one of ${CHANGE_INSTRUCTIONS.join(", ")}.`,
      },
    );
  }
  if (args === "") throw new UsageError(`--change "${line}": ${instruction} needs an argument`);
  const variables = variablesOf(config);
  const word = (): string => lex(args, variables, false).join("");
  switch (instruction) {
    case "CMD":
      return { ...config, Cmd: parseCommand(args, "CMD") };
    case "ENTRYPOINT":
      return { ...config, Entrypoint: parseCommand(args, "ENTRYPOINT") };
    case "ENV":
      return parsePairs(args, "ENV", variables).reduce((c, [key, value]) => withEnv(c, key, value), config);
    case "LABEL":
      return {
        ...config,
        Labels: { ...config.Labels, ...Object.fromEntries(parsePairs(args, "LABEL", variables)) },
      };
    case "EXPOSE": {
      const ports = lex(args, variables, true).flatMap((port) => parsePort(port, `--change "${line}"`));
      return {
        ...config,
        ExposedPorts: { ...config.ExposedPorts, ...Object.fromEntries(ports.map((p) => [p, {}])) },
      };
    }
    case "VOLUME": {
      const paths = args.startsWith("[")
        ? parseJsonArray(args, "VOLUME").map((path) => lex(path, variables, false).join(""))
        : lex(args, variables, true);
      const checked = paths.map((path) => checkVolume(path, `--change "${line}"`));
      return {
        ...config,
        Volumes: { ...config.Volumes, ...Object.fromEntries(checked.map((p) => [p, {}])) },
      };
    }
    case "USER":
      return { ...config, User: word() };
    case "WORKDIR": {
      // A relative path continues the current one, as the engine's import and build read it. Kept
      // relative, the image would not start (the runtime needs an absolute working directory).
      const path = word();
      return {
        ...config,
        WorkingDir: path.startsWith("/") ? path : posix.join("/", config.WorkingDir ?? "", path),
      };
    }
    case "HEALTHCHECK":
      return { ...config, Healthcheck: parseHealthcheck(args, `--change "${line}"`) };
    case "ONBUILD":
      return {
        ...config,
        OnBuild: [...(config.OnBuild ?? []), parseOnBuild(line, args, `--change "${line}"`)],
      };
    default:
      return { ...config, StopSignal: checkStopSignal(word(), `--change "${line}"`) };
  }
}

/**
 * `value` in double quotes, read back as it is: the engine substitutes `$NAME` in these instructions, and
 * a value given as a flag (`--env A=$HOME` in single quotes) or already substituted must stay literal.
 */
function quoted(value: string): string {
  return `"${value.replace(/["$\\]/g, "\\$&")}"`;
}

/** The HEALTHCHECK line that the engine reads back as `health`. */
function healthcheckInstruction(health: HealthConfig): string {
  const [kind, ...command] = health.Test;
  if (kind === "NONE") return "HEALTHCHECK NONE";
  const flags = HEALTHCHECK_DURATIONS.flatMap(([flag, member]) => {
    const ns = health[member];
    return ns === undefined ? [] : [`--${flag}=${formatGoDuration(ns)}`];
  });
  if (health.Retries !== undefined) flags.push(`--retries=${health.Retries}`);
  // The shell form is written back as it was read: the engine takes the rest of the line literally.
  const test = kind === "CMD-SHELL" ? command.join(" ") : JSON.stringify(command);
  return ["HEALTHCHECK", ...flags, "CMD", test].join(" ");
}

/**
 * The config as Dockerfile instructions, in a fixed order. Used for the engine's import `changes` and for
 * the `FROM scratch` build context, so both paths describe the image the same way.
 */
export function configToInstructions(config: ContainerConfig): string[] {
  const lines: string[] = [];
  for (const line of config.Env ?? []) {
    const eq = line.indexOf("=");
    lines.push(`ENV ${line.slice(0, eq)}=${quoted(line.slice(eq + 1))}`);
  }
  for (const [key, value] of Object.entries(config.Labels ?? {}).sort(([a], [b]) =>
    a < b ? -1 : a > b ? 1 : 0,
  )) {
    lines.push(`LABEL ${quoted(key)}=${quoted(value)}`);
  }
  const ports = Object.keys(config.ExposedPorts ?? {});
  if (ports.length > 0) lines.push(`EXPOSE ${ports.sort().join(" ")}`);
  const volumes = Object.keys(config.Volumes ?? {});
  if (volumes.length > 0) lines.push(`VOLUME ${volumes.sort().map(quoted).join(" ")}`);
  if (config.WorkingDir !== undefined) lines.push(`WORKDIR ${quoted(config.WorkingDir)}`);
  if (config.User !== undefined) lines.push(`USER ${quoted(config.User)}`);
  if (config.StopSignal !== undefined) lines.push(`STOPSIGNAL ${quoted(config.StopSignal)}`);
  if (config.Healthcheck !== undefined) lines.push(healthcheckInstruction(config.Healthcheck));
  for (const trigger of config.OnBuild ?? []) lines.push(`ONBUILD ${trigger}`);
  if (config.Entrypoint !== undefined) lines.push(`ENTRYPOINT ${JSON.stringify(config.Entrypoint)}`);
  if (config.Cmd !== undefined) lines.push(`CMD ${JSON.stringify(config.Cmd)}`);
  return lines;
}
