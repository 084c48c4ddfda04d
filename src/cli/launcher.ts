/**
 * What bin/mkbase runs before anything else loads. It answers `mkbase --version` at once (scripts probe
 * for the tool with it) and runs the CLI bundle through V8's code cache: a run that finds the bytecode of
 * an earlier run skips compiling most of the CLI, ~30 ms of the ~250 that `mkbase scratch` takes. The
 * cache is written beside the bundle, the way Python keeps `__pycache__`, after a successful run that had
 * none or whose cache V8 refused (another node); where that directory is read-only every run compiles, as
 * without it. Each command has its own: the cache holds the functions its first run compiled.
 */
import { readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import Module, { createRequire } from "node:module";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Script } from "node:vm";
import { ExitCode, errnoCode } from "../errors.js";
import { packageVersion } from "./version.js";

type Main = (argv: readonly string[]) => Promise<number>;

export interface LoadedBundle {
  readonly main: Main;
  /** Whether V8 took the cached bytecode. */
  readonly cacheUsed: boolean;
  /** Writes the cache, when this run had none it could use; failures only cost the next run its speed. */
  saveCache(): void;
}

/**
 * The cache of `bundle` for `command` and this V8. The name carries the bundle's size and mtime, since
 * V8 itself checks only the source's length.
 */
export function cacheFileOf(bundle: string, command: string): string {
  const { size, mtimeMs } = statSync(bundle);
  return `${bundle}.${command}.${size}-${Math.trunc(mtimeMs)}.v8-${process.versions.v8}.cache`;
}

/** Runs the CommonJS `bundle` (which exports `main`) with the code cache of `command`, if there is one. */
export function loadBundle(bundle: string, command: string): LoadedBundle {
  const source = readFileSync(bundle, "utf8");
  const cacheFile = cacheFileOf(bundle, command);
  let cachedData: Buffer | undefined;
  try {
    cachedData = readFileSync(cacheFile);
  } catch {
    // No cache yet (or an unreadable one): this run compiles, and writes one at the end.
  }
  // No dynamic-import handler: functions taken from a code cache lose it, so the bundle has no `import()`.
  const script = new Script(Module.wrap(source), { filename: bundle, cachedData });
  const cacheUsed = cachedData !== undefined && script.cachedDataRejected !== true;
  const module = { exports: {} as { main?: Main } };
  const run = script.runInThisContext() as (...args: unknown[]) => void;
  run.call(module.exports, module.exports, createRequire(bundle), module, bundle, dirname(bundle));
  const main = module.exports.main;
  if (main === undefined) throw new Error(`${bundle} does not export main`);
  return {
    main,
    cacheUsed,
    saveCache: () => {
      if (cacheUsed) return;
      const temporary = `${cacheFile}.${process.pid}.tmp`;
      try {
        // After the run, so the cache holds every function the run compiled, not just the top level.
        writeFileSync(temporary, script.createCachedData());
        renameSync(temporary, cacheFile);
      } catch {
        rmSync(temporary, { force: true });
      }
    },
  };
}

/** bin/mkbase: sets the exit code of the run of `argv`. */
export async function launch(argv: readonly string[]): Promise<void> {
  if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-V")) {
    // As in main(): a reader that stops early (`| true`) has seen enough; a full disk lost the answer.
    process.stdout.on("error", (error) => {
      if (errnoCode(error) === "EPIPE") return;
      process.stderr.write(`mkbase: error: cannot write to stdout: ${error.message}.\n`);
      process.exitCode = ExitCode.sink;
    });
    process.stdout.write(`${packageVersion()}\n`);
    return;
  }
  // bin/mkbase kept NODE_EXTRA_CA_CERTS from node's start-up (src/net/extra-ca.ts says why); the
  // tools that mkbase runs get it back.
  const deferredCaCerts = process.env.MKBASE_DEFERRED_CA_CERTS;
  if (deferredCaCerts !== undefined) process.env.NODE_EXTRA_CA_CERTS = deferredCaCerts;
  const command = /^[a-z]+$/.test(argv[0] ?? "") ? (argv[0] as string) : "other";
  const bundle = loadBundle(fileURLToPath(new URL("../../bundle/cli/main.cjs", import.meta.url)), command);
  const code = await bundle.main(argv);
  process.exitCode = code;
  // A failed run (a usage error, say) stops early: its cache would lack what a build compiles.
  if (code === 0 && !argv.includes("--help") && !argv.includes("-h")) bundle.saveCache();
  // The command has finished and cleaned up: exit now rather than let node free its heap piece by piece,
  // 20-60 ms after a build (measured into the engine). Not while a slow reader of a pipe still has output
  // queued, which an exit would drop.
  if (process.stdout.writableLength === 0 && process.stderr.writableLength === 0) process.exit();
}
