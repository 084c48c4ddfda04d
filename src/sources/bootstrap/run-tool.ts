/**
 * Running a bootstrapper: found on PATH up front (so a missing tool is reported before any download),
 * started in a process group of its own, its output turned into `log` progress events line by line, and
 * the whole group stopped when the build is cancelled.
 */
import { spawn } from "node:child_process";
import { constants } from "node:fs";
import { access } from "node:fs/promises";
import { delimiter, isAbsolute, join } from "node:path";
import { createInterface } from "node:readline";
import { InterruptedError, ToolError, errnoCode } from "../../errors.js";
import type { ProgressListener } from "../../progress.js";

/** How long a cancelled tool gets to clean up its own mounts after SIGTERM before it is SIGKILLed. */
const TERMINATE_GRACE_MS = 3000;
/** How long output may still arrive after the tool exited. */
const DRAIN_MS = 2000;
/** Lines of output kept for the error message when a tool fails. */
const TAIL_LINES = 30;

/** The environment a command runs with; only `PATH` is read here. */
export type ToolEnvironment = Readonly<Record<string, string | undefined>>;

/** How a bootstrapper runs: what stops it, where its lines go, and its environment. */
export interface ToolRunOptions {
  readonly signal: AbortSignal;
  readonly onProgress: ProgressListener;
  /** Every line of output to the progress display, not only the step lines. */
  readonly verbose: boolean;
  readonly env: ToolEnvironment;
}

/**
 * The absolute path of `name` on `env.PATH`, or undefined. A name that contains a slash is taken as a
 * path and only checked for being executable.
 */
export async function findOnPath(name: string, env: ToolEnvironment): Promise<string | undefined> {
  const candidates = name.includes("/")
    ? [name]
    : (env.PATH ?? "")
        .split(delimiter)
        .filter((dir) => isAbsolute(dir))
        .map((dir) => join(dir, name));
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not here (or not executable): try the next PATH entry.
    }
  }
  return undefined;
}

/**
 * The path of `name` on PATH, or a {@link ToolError} that names the Debian package providing it.
 * @param debianPackage the package to install, e.g. `mmdebstrap`
 */
export async function requireTool(
  name: string,
  debianPackage: string,
  env: ToolEnvironment,
): Promise<string> {
  const found = await findOnPath(name, env);
  if (found === undefined) {
    throw new ToolError(`${name} is not installed (not found on PATH)`, {
      hint: `Install the Debian package ${debianPackage} (apt-get install ${debianPackage}), or put ${name} on PATH.`,
    });
  }
  return found;
}

/**
 * Throws a {@link ToolError} unless the process runs as root. Bootstrappers create device nodes, chroot,
 * mount /proc and set file owners: none of that works without root.
 */
export function requireRoot(what: string, alternative?: string): void {
  if (process.geteuid?.() === 0) return;
  throw new ToolError(
    `${what} must run as root (it chroots, mounts and creates files owned by other users)`,
    {
      hint: `Run it with sudo${alternative === undefined ? "" : `, or ${alternative}`}.`,
    },
  );
}

export interface ToolRun {
  /** Short name for messages and log prefixes, e.g. `debootstrap`. */
  readonly name: string;
  /** The executable's path (from {@link requireTool}). */
  readonly command: string;
  readonly args: readonly string[];
  readonly env: ToolEnvironment;
  readonly cwd?: string;
  readonly signal: AbortSignal;
  /** Every line the tool writes, stdout and stderr alike, without the newline. */
  readonly onLine: (line: string) => void;
  /** What to suggest when the tool fails; defaults to reading its output. */
  readonly failureHint?: string;
}

/** The proxy variables that wget (debootstrap), apt (mmdebstrap) and apk read, in lowercase only. */
const LOWERCASE_PROXY_VARIABLES = ["http_proxy", "https_proxy", "ftp_proxy", "no_proxy"];

/**
 * `env` with each lowercase proxy variable set from its uppercase twin where only that one is set: CI
 * systems and docker users often set only HTTPS_PROXY and NO_PROXY, which mkbase's own requests honour
 * but wget and apt would ignore.
 */
export function withLowercaseProxies(env: ToolEnvironment): ToolEnvironment {
  const result: Record<string, string | undefined> = { ...env };
  for (const name of LOWERCASE_PROXY_VARIABLES) {
    const upper = env[name.toUpperCase()];
    if (!env[name] && upper) result[name] = upper;
  }
  return result;
}

/**
 * Runs a tool to the end. The child leads its own process group, so a terminal's Ctrl-C reaches only
 * mkbase, which then stops the whole group (the tool and the chroot'ed maintainer scripts it started):
 * SIGTERM first so the tool can unmount what it mounted, SIGKILL after a grace period.
 *
 * @throws InterruptedError when `signal` aborts; ToolError when the tool is missing or exits non-zero.
 */
export async function runTool(run: ToolRun): Promise<void> {
  if (run.signal.aborted) throw new InterruptedError("interrupted", { cause: run.signal.reason });
  const child = spawn(run.command, [...run.args], {
    cwd: run.cwd,
    env: withLowercaseProxies(run.env) as NodeJS.ProcessEnv,
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  const tail: string[] = [];
  const onLine = (line: string): void => {
    tail.push(line);
    if (tail.length > TAIL_LINES) tail.shift();
    run.onLine(line);
  };
  const closes = [child.stdout, child.stderr].map((stream) => {
    const lines = createInterface({ input: stream, crlfDelay: Infinity });
    lines.on("line", onLine);
    return new Promise<void>((resolve) => lines.once("close", resolve));
  });

  let killTimer: NodeJS.Timeout | undefined;
  const signalGroup = (signal: NodeJS.Signals): void => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, signal);
    } catch (error) {
      // ESRCH: the group is already gone.
      if (errnoCode(error) !== "ESRCH") throw error;
    }
  };
  const onAbort = (): void => {
    signalGroup("SIGTERM");
    killTimer = setTimeout(() => signalGroup("SIGKILL"), TERMINATE_GRACE_MS);
  };
  run.signal.addEventListener("abort", onAbort, { once: true });

  try {
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once("error", reject);
      child.once("exit", (exitCode, exitSignal) => resolve([exitCode, exitSignal]));
    });
    // A daemon the tool left behind (gpg-agent) may hold the pipes open: read what is there, then stop.
    const drained = await Promise.race([
      Promise.all(closes).then(() => true),
      new Promise<false>((resolve) => setTimeout(() => resolve(false), DRAIN_MS).unref()),
    ]);
    if (!drained) {
      child.stdout.destroy();
      child.stderr.destroy();
    }
    if (run.signal.aborted) throw new InterruptedError("interrupted", { cause: run.signal.reason });
    if (code !== 0) {
      // The first line a tool marks as an error usually says why; later ones say that it gave up.
      const last =
        tail.find((line) => /^(E: |F: |error: |ERROR: )/.test(line.trim())) ??
        [...tail].reverse().find((line) => /error/i.test(line)) ??
        tail.at(-1);
      const status = signal === null ? `exit status ${String(code)}` : `signal ${signal}`;
      throw new ToolError(`${run.name} failed (${status})${last === undefined ? "" : `: ${last.trim()}`}`, {
        hint: run.failureHint ?? `Read ${run.name}'s output above (run with --verbose to see all of it).`,
      });
    }
  } catch (error) {
    if (errnoCode(error) === "ENOENT") {
      throw new ToolError(`${run.name} could not be started: ${run.command} does not exist`, {
        cause: error,
      });
    }
    throw error;
  } finally {
    run.signal.removeEventListener("abort", onAbort);
    clearTimeout(killTimer);
  }
}

/**
 * Turns a tool's lines into `log` events: all of them with `verbose`, otherwise only the step lines
 * (`isStep`), so that the display shows the current step without a flood of package names.
 */
export function forwardLines(
  source: string,
  onProgress: ProgressListener,
  verbose: boolean,
  isStep: (line: string) => boolean,
): (line: string) => void {
  return (line) => {
    if (line.trim() === "") return;
    if (verbose || isStep(line)) onProgress({ kind: "log", source, line });
  };
}
