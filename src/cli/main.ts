/**
 * The command line: commander wiring, signals, and the one place where errors become messages and exit
 * codes. Commands load their modules lazily, so a command evaluates only what it uses (bin/mkbase answers
 * `mkbase --version` before any of this loads).
 */
import { ExitCode, InterruptedError, MkbaseError, SinkError, UsageError, errnoCode } from "../errors.js";
import { undoForForcedExit } from "../forced-exit.js";
import type { CommandContext } from "./run-build.js";
import { packageVersion } from "./version.js";

const EXIT_CODES_HELP = `
Exit codes:
  0    success
  1    internal error (a bug: please report it)
  2    usage error: bad flag, reference, platform or epoch; nothing was started
  3    source error: missing, unreadable, unsafe or changing input
  4    the Docker Engine could not be reached
  5    the destination (engine, registry, file) failed and holds no partial image or tag
       (outputs completed before it are kept, and named in the message)
  6    an external tool failed, is missing, or needs privileges
  130  interrupted (Ctrl-C or SIGTERM); temporary files were removed
       (outputs completed before it are kept, and named in the message)`;

/**
 * Ending in a full stop, so message and hint read as one paragraph. A message keeps its first letter as
 * written, as after git's "fatal:": it may start with a path or a program (`xz is not installed`, `rootfs
 * is a container image`), which a capital would change. A hint always starts with a word of its own.
 */
function sentence(text: string, capitalise: boolean): string {
  const trimmed = text.trim();
  const started = capitalise ? trimmed.charAt(0).toUpperCase() + trimmed.slice(1) : trimmed;
  return /[.!?]$/.test(started) ? started : `${started}.`;
}

/** Renders an error as one paragraph on stderr and returns its exit code. */
async function reportError(error: unknown): Promise<number> {
  const { makePainter } = await import("./render.js");
  const chalk = await makePainter(process.env, process.stderr);
  if (error instanceof InterruptedError) {
    process.stderr.write(
      error.kept.length === 0
        ? `${chalk.red("mkbase: interrupted")}; nothing was left behind.\n`
        : `${chalk.red("mkbase: interrupted")}; temporary files were removed, and the outputs completed before it are kept: ${error.kept.join("; ")}.\n`,
    );
    return error.exitCode;
  }
  if (error instanceof MkbaseError) {
    process.stderr.write(
      `${chalk.red("mkbase: error:")} ${sentence(error.message, false)}${error.hint === undefined ? "" : ` ${sentence(error.hint, true)}`}\n`,
    );
    return error.exitCode;
  }
  process.stderr.write(
    `${chalk.red("mkbase: internal error:")} ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  return ExitCode.internal;
}

/** Runs the CLI with `argv` (without node and script) and resolves with the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  // A failed write to stdout or stderr must not end the process halfway (an uncaught error would leave
  // temporary files and spools behind): the command runs to its end and cleans up. An output writing
  // to stdout (dest=-) listens too, and reports the failure as its own.
  let stdoutFailure: Error | undefined;
  process.stdout.on("error", (error) => {
    if (process.stdout.listenerCount("error") > 1) return;
    stdoutFailure ??= error;
  });
  // Stderr carries progress and messages only: a reader that went away (`2>&1 | head`) or a full disk
  // stops none of the work, and the exit code still says how it ended.
  process.stderr.on("error", () => undefined);
  const { Command, CommanderError, Help } = await import("commander");
  const { registerDirCommand } = await import("./dir.js");
  const { registerTarCommand } = await import("./tar.js");
  const { registerScratchCommand } = await import("./scratch.js");
  const { registerBootstrapCommands } = await import("./bootstrap.js");
  const controller = new AbortController();
  let interrupts = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    interrupts += 1;
    // A second Ctrl-C means "now": stop waiting for tools and the engine, but still remove what this
    // run made on the host (a bootstrap's tmpfs would otherwise stay mounted, holding memory).
    if (interrupts > 1) {
      const { failed, mayRemain } = undoForForcedExit();
      // No label marks an image as mkbase's (a dir's has only the user's, the helper image of a large
      // load none): being untagged is what tells it apart.
      const engine =
        mayRemain.length === 0
          ? ""
          : ` The Docker Engine may still make ${mayRemain.join(" and ")}, untagged: \`docker images --filter dangling=true\` lists untagged images, \`docker image prune\` removes them.`;
      process.stderr.write(
        failed.length === 0
          ? `mkbase: error: interrupted again (${signal}): stopped at once; temporary files and mounts were removed.${engine}\n`
          : `mkbase: error: interrupted again (${signal}): stopped at once, but could not remove ${failed.join("; ")}. Unmount (umount --lazy PATH) and delete it by hand.${engine}\n`,
      );
      process.exit(ExitCode.interrupted);
    }
    controller.abort(new InterruptedError(`received ${signal}`));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  let exitCode: number = ExitCode.ok;
  const context = (): CommandContext => ({
    signal: controller.signal,
    env: process.env,
    stdout: process.stdout,
  });
  const done = (code: number): void => {
    exitCode = code;
  };
  const program = new Command("mkbase")
    .description(
      "Build container base images without a Dockerfile, from a root filesystem directory, a rootfs tarball, a bootstrapper run (debootstrap, pacstrap, apk.static) or a single static binary, into the Docker Engine, an OCI layout or archive, a docker-archive, a rootfs tar or a registry (-o, --push).",
    )
    .version(packageVersion())
    .showHelpAfterError("Run it with --help for usage.")
    // Commander's own usage errors ("error: unknown option '--frob'") get the prefix of every other
    // error, so that a script needs to look for one line only.
    .configureOutput({ outputError: (text, write) => write(`mkbase: ${text}`) })
    .exitOverride()
    // Repeatable flags start from an empty list; "(default: [])" in the help says nothing useful.
    .configureHelp({
      optionDescription: (option) => new Help().optionDescription(option).replace(" (default: [])", ""),
    })
    .addHelpText("after", EXIT_CODES_HELP);
  registerDirCommand(program, context, done);
  registerScratchCommand(program, context, done);
  registerTarCommand(program, context, done);
  registerBootstrapCommands(program, context, done);

  // Node decodes its arguments as UTF-8, putting U+FFFD for bytes that are not: a path in another
  // encoding (Latin-1 names under LANG=C) would name another file, and a dest would be made under it.
  const garbled = argv.find((arg) => arg.includes("\uFFFD"));
  try {
    if (garbled !== undefined) {
      throw new UsageError(
        `an argument is not valid UTF-8 (${JSON.stringify(garbled)}), so its bytes cannot be read`,
        {
          hint: "Give the path another way: through a symlink with a UTF-8 name, or cd into the directory and give `.`.",
        },
      );
    }
    await program.parseAsync([...argv], { from: "user" });
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version are "errors" to commander; everything else it reports is a usage error.
      exitCode = error.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
    } else {
      exitCode = await reportError(
        controller.signal.aborted && !(error instanceof InterruptedError)
          ? new InterruptedError("interrupted", { cause: error })
          : error,
      );
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  // A reader that stops early (`mkbase --help | head`, `… -q | true`) has seen enough; any other failure
  // (a full disk) lost the result, which a script must not take for success. The stream reports a
  // failure after the write that failed: a last empty write's callback comes after it.
  await new Promise<void>((resolve) => process.stdout.write("", () => resolve()));
  if (exitCode === ExitCode.ok && stdoutFailure !== undefined && errnoCode(stdoutFailure) !== "EPIPE") {
    exitCode = await reportError(
      new SinkError(`cannot write to stdout: ${stdoutFailure.message}`, {
        cause: stdoutFailure,
        hint: "Whatever the command made is kept; --iidfile FILE or --metadata-file FILE give a build's result in a file.",
      }),
    );
  }
  return exitCode;
}
