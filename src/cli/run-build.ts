/**
 * What every building command does once its source is ready: check all flags, connect to the engine,
 * build, and print the result. Loaded only when a command runs (it pulls in the engine client).
 */
import { build, type BuildResult } from "../build.js";
import { UsageError } from "../errors.js";
import { compareApiVersions, type EngineClient } from "../docker/engine.js";
import { configToInstructions, type ContainerConfig } from "../image/config.js";
import {
  DockerBuildSink,
  DockerImportSink,
  DockerLoadSink,
  IMPORT_PLATFORM_HINT,
} from "../sinks/docker-engine.js";
import { formatPlatform, hostPlatform, platformsMatch, type Platform } from "../image/platform.js";
import type { ProgressListener } from "../progress.js";
import { writeFileAtomically } from "../sinks/atomic-file.js";
import { isEngineResult, madeAnyway, type Sink, type SinkResult } from "../sinks/sink.js";
import type { EntrySource } from "../tar/entry.js";
import {
  configFromFlags,
  parseEpoch,
  platformFromFlags,
  tagsFromFlags,
  type ImageFlags,
} from "./image-options.js";
import { annotationsFor } from "../image/annotations.js";
import {
  checkAnnotationPlatforms,
  checkEngineAnnotations,
  openOutputs,
  resultLines,
  type OutputSet,
} from "./outputs.js";
import { makeRenderer } from "./render.js";

export interface CommandContext {
  readonly signal: AbortSignal;
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly stdout: NodeJS.WritableStream;
}

/** Everything derived from the shared flags, checked before any work starts. */
export function prepareImageFlags(flags: ImageFlags, env: CommandContext["env"]) {
  const tags = tagsFromFlags(flags);
  const config = configFromFlags(flags);
  const platform = platformFromFlags(flags);
  const epoch = parseEpoch(flags, env);
  if (flags.via === "build" && flags.message !== undefined) {
    throw new UsageError("-m/--message cannot be recorded through the engine's build endpoint", {
      hint: "Use the default --via load (or --via import), or drop -m.",
    });
  }
  if (flags.via === "import" && config.StopSignal !== undefined) {
    // The stop signal may come from -c STOPSIGNAL as well as from --stop-signal: name whichever was given.
    const from = flags.stopSignal !== undefined ? "--stop-signal" : "-c STOPSIGNAL";
    throw new UsageError(`${from} cannot be set through the engine's import endpoint`, {
      hint: "Use the default --via load, or --via build.",
    });
  }
  // Those two paths carry the config as Dockerfile lines, which have no way to hold a line break.
  const broken =
    flags.via === "import" || flags.via === "build"
      ? configToInstructions(config).find((line) => /[\r\n]/.test(line))
      : undefined;
  if (broken !== undefined) {
    throw new UsageError(
      `a value with a line break cannot go through the engine's ${flags.via ?? ""} endpoint: ${JSON.stringify(broken)}`,
      { hint: "Use the default --via load, which carries any value, or remove the line break." },
    );
  }
  return { tags, config, platform, epoch };
}

/**
 * Before an import into an engine whose import endpoint records its own architecture (before API 1.42,
 * Docker 23), a different platform is refused as soon as the engine's is known, stopping the upload: the
 * image would be removed again by the check of what the engine made.
 */
async function checkImportPlatform(engine: EngineClient, platform: Platform): Promise<void> {
  // This machine's platform, the default, is not asked about: an engine here has it, and Docker 20.10
  // spends ~30 ms of CPU on /version (it runs runc and docker-init for theirs) while the upload starts. A
  // remote engine of another architecture is caught by the check of the image it made.
  if (compareApiVersions(engine.apiVersion, "1.42") >= 0 || platformsMatch(platform, hostPlatform())) return;
  const own = await engine.enginePlatform();
  // The endpoint keeps the OS it is given; only the architecture (and variant) are its own.
  const recorded = { os: platform.os, architecture: own.architecture };
  if (platformsMatch(recorded, platform)) return;
  throw new UsageError(
    `the Docker Engine at ${engine.endpoint} (API ${engine.apiVersion}) records its own architecture on import: the image would claim ${formatPlatform(recorded)}, not ${formatPlatform(platform)}`,
    { hint: IMPORT_PLATFORM_HINT },
  );
}

/**
 * HEALTHCHECK's `--start-interval` came with API 1.44 (Docker 25): older import and build endpoints
 * refuse the line with their parser's "Unknown flag", after the upload. Refused before it, with the way
 * out.
 */
function checkStartInterval(engine: EngineClient, via: string, config: ContainerConfig): void {
  if (config.Healthcheck?.StartInterval === undefined || compareApiVersions(engine.apiVersion, "1.44") >= 0)
    return;
  throw new UsageError(
    `the Docker Engine at ${engine.endpoint} (API ${engine.apiVersion}) has no HEALTHCHECK --start-interval: its ${via} endpoint would refuse the line`,
    {
      hint: "Use the default --via load, which records it for engines that use it (Docker 25 on), or drop --start-interval.",
    },
  );
}

/** The `--json` object of one build, whose final ID is `id`. */
function resultJson(
  result: BuildResult,
  id: string,
  warnings: readonly string[],
  results: readonly SinkResult[],
): Record<string, unknown> {
  return {
    id,
    // Outputs that hold the same references (the engine and an archive) each report them: list them once.
    tags: [...new Set(results.flatMap((r) => r.tags))],
    diffId: result.diffId,
    size: result.size,
    entries: result.entries,
    epoch: result.epoch,
    platform: formatPlatform(result.image.platform),
    destinations: results.map((r) => r.destination),
    warnings,
  };
}

/**
 * Values a command derives from its input instead of the shared flags (`mkbase scratch`: the platform from
 * the ELF header, the epoch from the program's mtime, the config checked against the image's files).
 */
export type ImageOverrides = Partial<ReturnType<typeof prepareImageFlags>>;

/**
 * Runs a build of `source` into the Docker Engine with the shared flags, prints the result, and returns
 * the exit code. `createdBy` is the history line (the command, without host paths, for reproducibility).
 * `overrides` may be a function, called once the source is open, for values only the source knows
 * (a bootstrapper's release date and package list).
 */
export async function runBuild(
  context: CommandContext,
  flags: ImageFlags,
  openSource: (onProgress: ProgressListener) => Promise<EntrySource>,
  createdBy: string,
  overrides: ImageOverrides | (() => ImageOverrides) = {},
  /** The outputs, when the caller builds several images into them (one per platform) and completes them. */
  outputs?: OutputSet,
): Promise<number> {
  let prepared = {
    ...prepareImageFlags(flags, context.env),
    ...(typeof overrides === "function" ? {} : overrides),
  };
  const outputSet =
    outputs ?? (await openOutputs(flags, { tags: prepared.tags, env: context.env, images: 1 }));
  // Only some commands (the bootstrappers) have --verbose.
  const verbose = (flags as ImageFlags & { readonly verbose?: boolean }).verbose === true;
  const renderer = await makeRenderer({ quiet: flags.quiet === true, verbose });
  // Every warning of the build, whichever part reports it (source, sinks, outputs), for --json.
  const warnings: string[] = [];
  const onProgress: ProgressListener = (event) => {
    if (event.kind === "warning") warnings.push(event.message);
    renderer.onProgress(event);
  };
  let ok = false;
  let engine: EngineClient | undefined;
  try {
    // A caller that builds several images checks them all at once, and a bootstrapper, whose platform
    // comes with the tree, before it runs.
    if (typeof overrides !== "function" && outputs === undefined) {
      checkAnnotationPlatforms(flags, [prepared.platform]);
    }
    // Only outputs that need the engine pay for loading its client and the round trip to it.
    // It connects before the source opens, so a stopped daemon fails at once, not after a bootstrap.
    if (outputSet.wantsEngine) {
      const { connectEngine } = await import("../docker/engine.js");
      engine = await connectEngine(context.signal, {
        imageStore: (flags.via ?? "load") === "load",
      });
      checkEngineAnnotations(flags, outputSet.specs, engine.imageStore);
      if (flags.via === "import" || flags.via === "build")
        checkStartInterval(engine, flags.via, prepared.config);
    }
    const source = await openSource(onProgress);
    if (typeof overrides === "function") prepared = { ...prepared, ...overrides() };
    const common = { engine, tags: prepared.tags, onProgress, message: flags.message };
    const platform = formatPlatform(prepared.platform);
    const sink: Sink | undefined =
      engine === undefined
        ? undefined
        : flags.via === "import"
          ? new DockerImportSink({
              ...common,
              engine,
              changes: configToInstructions(prepared.config),
              platform,
              platformCheck: checkImportPlatform(engine, prepared.platform),
            })
          : flags.via === "build"
            ? new DockerBuildSink({ ...common, engine, platform })
            : new DockerLoadSink({ ...common, engine });
    const result = await build({
      source,
      epoch: prepared.epoch,
      platform: prepared.platform,
      config: prepared.config,
      createdBy,
      comment: flags.message,
      annotations: annotationsFor(outputSet.annotations, "manifest", prepared.platform),
      sinks: outputSet.sinksForBuild(sink, onProgress),
      signal: context.signal,
      onProgress,
    });
    outputSet.recordBuild(result);
    const results =
      outputs === undefined ? await outputSet.complete(context.signal, onProgress) : result.results;
    ok = true;
    renderer.stop(true);
    const id = results[0]?.id ?? result.imageId;
    if (flags.iidfile !== undefined) {
      // The image ID, as buildx writes it whatever the outputs: the engine's (which --via import and
      // build choose themselves), else the config's digest, not an OCI output's manifest digest.
      const imageIdOf = results.find(isEngineResult)?.id ?? result.imageId;
      await writeFileAtomically(flags.iidfile, `the image ID file ${flags.iidfile}`, [
        Buffer.from(imageIdOf),
      ]).catch((error: unknown) => Promise.reject(madeAnyway(error, results)));
    }
    // With dest=- stdout holds the archive; --iidfile and --metadata-file still give the result.
    if (outputSet.writesStdout) return 0;
    if (!flags.json) {
      // Of several builds into one output set, only the engine's images are results by themselves; an
      // OCI or registry output first prints what it holds once complete (the index), not each manifest.
      const completedLater = outputs !== undefined && results[0] !== undefined && !isEngineResult(results[0]);
      const lines = completedLater ? [] : results.length > 0 ? resultLines(results) : [id];
      for (const line of lines) context.stdout.write(`${line}\n`);
      outputs?.printed.push(...lines);
    } else if (outputs === undefined) {
      context.stdout.write(`${JSON.stringify(resultJson(result, id, warnings, results))}\n`);
    } else {
      // One object for the whole command: with several platforms, the outputs print it once complete.
      outputs.reports.push(resultJson(result, id, warnings, results));
    }
    return 0;
  } finally {
    engine?.close();
    if (!ok) renderer.stop(false);
    if (outputs === undefined) await outputSet.close();
  }
}
