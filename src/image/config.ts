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

/** OCI image config `config` object. Absent members are omitted from the JSON. */
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
  if (config.Entrypoint !== undefined) lines.push(`ENTRYPOINT ${JSON.stringify(config.Entrypoint)}`);
  if (config.Cmd !== undefined) lines.push(`CMD ${JSON.stringify(config.Cmd)}`);
  return lines;
}
