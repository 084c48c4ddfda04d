/**
 * Progress and messages on stderr: a spinner with rates on a TTY, plain timestamped-free lines otherwise
 * (CI logs), colour only when stderr is a terminal and `NO_COLOR` is unset. Stdout is never touched here.
 */
import type { Ora } from "ora";
import { formatBytes, type ProgressEvent } from "../progress.js";

/** Plain mode prints a packing line at most this often. */
const PLAIN_PACK_INTERVAL_MS = 2000;

export interface Renderer {
  readonly onProgress: (event: ProgressEvent) => void;
  /** Stops the spinner; `ok` decides the final symbol. */
  stop(ok: boolean): void;
}

/** The few styles mkbase uses; identity functions when colour is off. */
export interface Painter {
  readonly red: (text: string) => string;
  readonly yellow: (text: string) => string;
  readonly dim: (text: string) => string;
}

const plain = (text: string): string => text;

function usesColour(env: NodeJS.ProcessEnv, stream: NodeJS.WriteStream): boolean {
  return stream.isTTY === true && (env.NO_COLOR === undefined || env.NO_COLOR === "") && env.TERM !== "dumb";
}

/**
 * Colour only on a terminal, without `NO_COLOR` and not on a dumb terminal. chalk is loaded only then:
 * plain output (CI logs, pipes) does not pay for it at start-up.
 */
export async function makePainter(env: NodeJS.ProcessEnv, stream: NodeJS.WriteStream): Promise<Painter> {
  if (!usesColour(env, stream)) return { red: plain, yellow: plain, dim: plain };
  const { Chalk } = await import("chalk");
  const chalk = new Chalk({ level: 1 });
  return { red: (t) => chalk.red(t), yellow: (t) => chalk.yellow(t), dim: (t) => chalk.dim(t) };
}

function packLine(entries: number, bytes: number, startedAt: number): string {
  const seconds = Math.max((Date.now() - startedAt) / 1000, 0.001);
  const rate = `${formatBytes(bytes / seconds)}/s, ${Math.round(entries / seconds)} entries/s`;
  return `${entries} ${entries === 1 ? "entry" : "entries"}, ${formatBytes(bytes)} (${rate})`;
}

/** Prints one warning line, as a renderer does, for a command that has no renderer running. */
export async function printWarning(message: string): Promise<void> {
  process.stderr.write(warningLine(await makePainter(process.env, process.stderr), message));
}

function warningLine(chalk: Painter, message: string): string {
  return `${chalk.yellow("warning:")} ${message}\n`;
}

/** A renderer for stderr; `quiet` drops progress but keeps warnings. */
export async function makeRenderer(options: {
  quiet: boolean;
  /** On a terminal, print every log line instead of showing the latest in the spinner. */
  verbose?: boolean;
  stream?: NodeJS.WriteStream;
}): Promise<Renderer> {
  const stream = options.stream ?? process.stderr;
  const chalk = await makePainter(process.env, stream);
  const warn = (message: string): void => {
    spinner?.clear();
    stream.write(warningLine(chalk, message));
    spinner?.render();
  };
  // A terminal that reports no width (a pty nobody sized, as under `script` or before a container's
  // first resize) makes the spinner clear ever more lines; such a terminal gets plain lines instead.
  // So does a dumb one, which cannot move the cursor: the spinner library would print every phase twice.
  const interactive =
    stream.isTTY === true &&
    (stream.columns ?? 0) > 0 &&
    !options.quiet &&
    process.env.CI === undefined &&
    process.env.TERM !== "dumb";
  // discardStdin off: stdin may carry the input tarball, and raw mode would swallow Ctrl-C.
  // The spinner library is loaded only when there is a terminal to draw on. It colours the spinner
  // whenever its terminal can show colour, NO_COLOR or not.
  const spinner: Ora | undefined = interactive
    ? (await import("ora"))
        .default({
          stream,
          discardStdin: false,
          ...(usesColour(process.env, stream) ? {} : { color: false }),
        })
        .start()
    : undefined;
  let phase = "";
  let phaseStartedAt = Date.now();
  let lastPlainPack = 0;

  const onProgress = (event: ProgressEvent): void => {
    switch (event.kind) {
      case "warning":
        warn(event.message);
        return;
      case "phase":
        if (spinner !== undefined && phase !== "") spinner.succeed(phase).start();
        phase = event.message;
        phaseStartedAt = Date.now();
        if (spinner !== undefined) spinner.text = phase;
        else if (!options.quiet) stream.write(`${phase}\n`);
        return;
      case "pack": {
        const line = packLine(event.entries, event.bytes, phaseStartedAt);
        if (spinner !== undefined) spinner.text = `${phase}: ${line}`;
        else if (!options.quiet && Date.now() - lastPlainPack >= PLAIN_PACK_INTERVAL_MS) {
          lastPlainPack = Date.now();
          stream.write(`  ${line}\n`);
        }
        return;
      }
      case "log": {
        const line = `  ${chalk.dim(`${event.source}:`)} ${event.line}\n`;
        if (spinner === undefined) {
          if (!options.quiet) stream.write(line);
        } else if (options.verbose === true) {
          // Every line stays on screen, above the spinner.
          spinner.clear();
          stream.write(line);
          spinner.render();
        } else {
          spinner.text = `${phase}: ${event.line}`;
        }
        return;
      }
    }
  };
  return {
    onProgress,
    stop(ok) {
      if (spinner === undefined) return;
      // Before the first phase there is nothing to mark: a bare symbol would stand above the error.
      if (phase === "") spinner.stop();
      else if (ok) spinner.succeed(phase);
      else spinner.fail(phase);
    },
  };
}
