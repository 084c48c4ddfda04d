/**
 * Typed errors. The library throws these; `src/cli/main.ts` is the one place that turns them into a
 * message and an exit code. Each kind has its own exit code so that CI scripts can branch on it.
 */

/** Exit codes, documented in the README. */
export const ExitCode = {
  ok: 0,
  /** Anything not classified below: a bug in mkbase. */
  internal: 1,
  /** Bad flags, bad reference, bad epoch: nothing was started. */
  usage: 2,
  /** The source could not be read or is not acceptable (missing path, unsafe tar entry, changed file). */
  source: 3,
  /** The Docker Engine could not be reached. */
  daemonUnavailable: 4,
  /** The Docker Engine (or another destination) refused or failed the image. */
  sink: 5,
  /** A bootstrapper or another external tool failed, is missing, or lacks privileges. */
  tool: 6,
  /** Interrupted by SIGINT/SIGTERM (128 + SIGINT). */
  interrupted: 130,
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export interface MkbaseErrorOptions {
  cause?: unknown;
  /** What the user can do about it, one sentence. */
  hint?: string;
}

/** Base class: a message that says what happened, a hint that says what to do. */
export abstract class MkbaseError extends Error {
  abstract readonly exitCode: ExitCodeValue;
  readonly hint: string | undefined;

  constructor(message: string, options: MkbaseErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.hint = options.hint;
  }
}

/** A flag, argument or reference the user gave is invalid. */
export class UsageError extends MkbaseError {
  readonly exitCode = ExitCode.usage;
}

/** The source (directory, tarball, binary) is missing, unreadable, unsafe or changed while read. */
export class SourceError extends MkbaseError {
  readonly exitCode = ExitCode.source;
  /** The path inside the source, or on disk, that the error is about. */
  readonly path: string | undefined;

  constructor(message: string, options: MkbaseErrorOptions & { path?: string } = {}) {
    super(message, options);
    this.path = options.path;
  }
}

/** No Docker Engine answered where mkbase looked. */
export class DaemonUnavailableError extends MkbaseError {
  readonly exitCode = ExitCode.daemonUnavailable;
}

/** A destination (engine, registry, file) failed to take the image. */
export class SinkError extends MkbaseError {
  readonly exitCode = ExitCode.sink;
}

/** An external tool failed, is missing, or needs privileges we do not have. */
export class ToolError extends MkbaseError {
  readonly exitCode = ExitCode.tool;
}

/** The build was cancelled by a signal. */
export class InterruptedError extends MkbaseError {
  readonly exitCode = ExitCode.interrupted;
  /** Outputs completed before the signal came, which stay (`NAME in DESTINATION`). */
  readonly kept: readonly string[];

  constructor(message: string, options: MkbaseErrorOptions & { kept?: readonly string[] } = {}) {
    super(message, options);
    this.kept = options.kept ?? [];
  }
}

/**
 * Throws an {@link InterruptedError} when `signal` is aborted. Called at every walk step and between
 * phases so that Ctrl-C stops the work promptly.
 */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    throw new InterruptedError("interrupted", { cause: signal.reason });
  }
}

/** The `code` of a Node system error (`ENOENT`, `EACCES`, …), if it is one. */
export function errnoCode(error: unknown): string | undefined {
  if (typeof error === "object" && error !== null && "code" in error) {
    const code = (error as { code: unknown }).code;
    return typeof code === "string" ? code : undefined;
  }
  return undefined;
}
