/**
 * Running programs from end-to-end tests: the built mkbase CLI, and the other tools the tests check it
 * with. Output is collected whole; the test's own stdin is never handed to a child, so a test that
 * forgets `input` sees an empty stdin instead of hanging on the terminal.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";

/** How a finished child process ended and what it wrote. */
export interface RunResult {
  /** Exit status, or null when the process was ended by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when the helper killed the process because `timeoutMs` passed. */
  timedOut: boolean;
}

export interface RunOptions {
  /** Environment of the child; the test's own environment when absent (not merged). */
  env?: NodeJS.ProcessEnv;
  /** Bytes or a stream for the child's stdin; an empty stdin (`/dev/null`) when absent. */
  input?: Buffer | Readable;
  cwd?: string;
  /** SIGKILL the child after this long; no limit when absent. */
  timeoutMs?: number;
}

/**
 * The repository root, found from this file's place in the build output
 * (`dist/test/e2e/support/cli.js` → four levels up), so tests work from any working directory.
 */
export const repositoryRoot: string = findRepositoryRoot();

function findRepositoryRoot(): string {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");
  if (!existsSync(join(root, "package.json"))) {
    throw new Error(`expected the repository root at ${root} (four levels above the compiled test support)`);
  }
  return root;
}

/** The launcher the package installs as `mkbase`: it starts node on the bundle in `dist/bundle/cli/`. */
export const mkbaseLauncher: string = join(repositoryRoot, "bin", "mkbase");

interface Collected {
  result: Promise<RunResult>;
  stderrSoFar(): string;
}

/** Collectors of the children started here, so that output read early is not lost to a later waiter. */
const collectors = new WeakMap<ChildProcess, Collected>();

/**
 * Starts `command` with piped stdout/stderr and starts collecting them at once (a full pipe would
 * otherwise stall the child). Use {@link waitForExit} for the result.
 */
export function spawnCommand(
  command: string,
  args: readonly string[],
  options: RunOptions = {},
): ChildProcess {
  const child = spawn(command, args, {
    cwd: options.cwd,
    env: options.env ?? process.env,
    stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
  });
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  child.stdout?.on("data", (chunk: Buffer) => stdout.push(chunk));
  child.stderr?.on("data", (chunk: Buffer) => stderr.push(chunk));

  let timedOut = false;
  const timer =
    options.timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true;
          child.kill("SIGKILL");
        }, options.timeoutMs);

  if (options.input !== undefined && child.stdin) {
    // A child that exits without reading all of its input makes the pipe fail with EPIPE; that is the
    // child's business (the result shows how it ended), not an error of the test.
    child.stdin.on("error", () => undefined);
    if (Buffer.isBuffer(options.input)) {
      child.stdin.end(options.input);
    } else {
      options.input.pipe(child.stdin);
    }
  }

  const result = new Promise<RunResult>((resolve, reject) => {
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(stdout).toString("utf8"),
        stderr: Buffer.concat(stderr).toString("utf8"),
        timedOut,
      });
    });
  });
  // Keep an unobserved spawn failure from becoming an unhandled rejection; waitForExit reports it.
  result.catch(() => undefined);
  collectors.set(child, { result, stderrSoFar: () => Buffer.concat(stderr).toString("utf8") });
  return child;
}

/** Runs `command` to the end and returns its result, whatever the exit status. */
export function runCommand(
  command: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  return waitForExit(spawnCommand(command, args, options));
}

/**
 * Runs `command` and returns its stdout; throws with the command line, status and both outputs when
 * it does not exit 0, so a failing helper explains itself in the test report.
 */
export async function runChecked(
  command: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<string> {
  const result = await runCommand(command, args, options);
  if (result.code !== 0) {
    throw new Error(`${[command, ...args].join(" ")} failed:\n${describeResult(result)}`);
  }
  return result.stdout;
}

/** `text` as a regular expression that matches exactly it (paths in expected messages). */
export function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** One readable block for assertion messages: status, signal, stdout and stderr. */
export function describeResult(result: RunResult): string {
  const status = result.timedOut
    ? "killed after the time limit"
    : result.signal === null
      ? `exit ${String(result.code)}`
      : `signal ${result.signal}`;
  return `${status}\n--- stdout ---\n${result.stdout}\n--- stderr ---\n${result.stderr}`;
}

/** The result of a child started by {@link spawnCommand} or {@link spawnMkbase}. */
export function waitForExit(child: ChildProcess): Promise<RunResult> {
  const collected = collectors.get(child);
  if (collected === undefined) throw new Error("waitForExit: this child was not started by spawnCommand");
  return collected.result;
}

/**
 * Resolves once the child's stderr matches `pattern` (for tests that signal mkbase in a given phase);
 * rejects if the child exits first or `timeoutMs` passes.
 */
export async function waitForStderr(
  child: ChildProcess,
  pattern: RegExp,
  timeoutMs = 60_000,
): Promise<string> {
  const collected = collectors.get(child);
  if (collected === undefined) throw new Error("waitForStderr: this child was not started by spawnCommand");
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void collected.result.then(
    () => (exited = true),
    () => (exited = true),
  );
  while (true) {
    const text = collected.stderrSoFar();
    if (pattern.test(text)) return text;
    if (exited) throw new Error(`the process exited before its stderr matched ${pattern}:\n${text}`);
    if (Date.now() > deadline)
      throw new Error(`stderr did not match ${pattern} within ${timeoutMs} ms:\n${text}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Runs the built CLI (`bin/mkbase ARGS`, as the installed `mkbase` runs) to the end. */
export function runMkbase(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return runCommand(mkbaseLauncher, args, options);
}

/**
 * Starts the built CLI and returns the child, for tests that signal it mid-run. Its output is
 * collected from the start: get it with {@link waitForExit}, or wait for a phase with
 * {@link waitForStderr}.
 */
export function spawnMkbase(args: readonly string[], options: RunOptions = {}): ChildProcess {
  return spawnCommand(mkbaseLauncher, args, options);
}
