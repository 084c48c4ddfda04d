/**
 * Wires source → normaliser → tar → layer → image → sinks. One walk of the source feeds every sink:
 * streaming sinks take the layer as it is packed, the others read a private spooled copy afterwards.
 */
import { open } from "node:fs/promises";
import { join } from "node:path";
import { setImmediate as nextLoopTurn } from "node:timers/promises";
import { throwIfAborted } from "./errors.js";
import { makeTemporaryDirectory } from "./forced-exit.js";
import type { ContainerConfig } from "./image/config.js";
import { RunningDigest } from "./image/digest.js";
import { LAST_RFC3339_SECOND, formatCreated, imageId, type Image } from "./image/image.js";
import { fileLayer, type Layer } from "./image/layer.js";
import type { Platform } from "./image/platform.js";
import type { ProgressListener } from "./progress.js";
import { temporaryFileError } from "./sinks/atomic-file.js";
import { madeAnyway, type LayerConsumer, type Sink, type SinkResult } from "./sinks/sink.js";
import type { EntrySource } from "./tar/entry.js";
import { EntryNormalizer } from "./tar/normalize.js";
import { ChunkBuffers, packTar } from "./tar/pack.js";

/** How the image's `created` time (and the mtime clamp) is chosen. */
export type EpochChoice =
  /** `--source-date-epoch` / `SOURCE_DATE_EPOCH`: mtimes are clamped to it. */
  | { readonly kind: "fixed"; readonly seconds: number }
  /** Derived from the inputs: the newest mtime of the tree (nothing to clamp). */
  | { readonly kind: "newest-input" }
  /** `--created now`: explicitly asked for the current time. */
  | { readonly kind: "now" };

export interface BuildRequest {
  readonly source: EntrySource;
  readonly epoch: EpochChoice;
  readonly platform: Platform;
  readonly config: ContainerConfig;
  /** The history entry: what made the image (`mkbase dir ./rootfs`) and an optional comment (`-m`). */
  readonly createdBy: string;
  readonly comment?: string;
  readonly annotations?: Readonly<Record<string, string>>;
  readonly sinks: readonly Sink[];
  readonly signal: AbortSignal;
  readonly onProgress: ProgressListener;
}

export interface BuildResult {
  readonly image: Image;
  readonly imageId: string;
  readonly diffId: string;
  /** Uncompressed layer size in bytes. */
  readonly size: number;
  readonly entries: number;
  readonly epoch: number;
  readonly results: readonly SinkResult[];
}

interface PackedLayer {
  readonly diffId: string;
  readonly size: number;
  readonly entries: number;
  readonly newestMtime: number | undefined;
}

async function packLayer(
  request: BuildRequest,
  consumers: readonly LayerConsumer[],
  spoolPath: string | undefined,
): Promise<PackedLayer> {
  const clamp = request.epoch.kind === "fixed" ? request.epoch.seconds : undefined;
  const normalizer = new EntryNormalizer(clamp);
  const hash = new RunningDigest();
  let size = 0;
  const spool = spoolPath === undefined ? undefined : await open(spoolPath, "wx", 0o600);
  try {
    request.onProgress({ kind: "phase", message: `packing ${request.source.description}` });
    const entries = normalizer.apply(request.source.entries(request.signal));
    const buffers = new ChunkBuffers();
    for await (const chunk of packTar(entries, {
      signal: request.signal,
      onProgress: request.onProgress,
      buffers,
    })) {
      hash.update(chunk);
      size += chunk.length;
      try {
        await spool?.write(chunk);
      } catch (error) {
        throw temporaryFileError("the layer", "the layer needs as much room as the tar", error);
      }
      // The hash and the awaited spool write are done with the chunk; the consumers say when they are.
      await Promise.all(
        buffers.share(chunk, consumers).map(([consumer, release]) => consumer.write(chunk, release)),
      );
      // A turn of the event loop, not just the microtasks of a write that was merely queued: sockets and
      // pipes (the engine, zstd) are only refilled and drained there, and packing the next chunk is
      // milliseconds of synchronous work, in which they would otherwise run dry.
      await nextLoopTurn();
    }
  } finally {
    await spool?.close();
  }
  return {
    diffId: hash.digest(),
    size,
    entries: normalizer.count,
    newestMtime: normalizer.newestMtime,
  };
}

function chooseEpoch(choice: EpochChoice, newestMtime: number | undefined): number {
  if (choice.kind === "fixed") return choice.seconds;
  if (choice.kind === "now") return Math.floor(Date.now() / 1000);
  // A file dated after 9999 (tmpfs and btrfs keep such times) would make a `created` no reader parses.
  return Math.min(Math.max(0, newestMtime ?? 0), LAST_RFC3339_SECOND);
}

/** Builds the image and delivers it to every sink. Temporary files are removed whatever happens. */
export async function build(request: BuildRequest): Promise<BuildResult> {
  const needsFile = request.sinks.some((sink) => sink.needsLayerFile);
  // Private (0700) directory: the spooled layer holds every file of the tree, secrets included.
  const tempDir = needsFile ? await makeTemporaryDirectory("mkbase-") : undefined;
  const consumers: LayerConsumer[] = [];
  try {
    for (const sink of request.sinks) {
      const consumer = sink.streamLayer?.(request.signal);
      if (consumer !== undefined) consumers.push(consumer);
    }
    const spoolPath = tempDir === undefined ? undefined : join(tempDir.path, "layer.tar");
    let packed: PackedLayer;
    try {
      await Promise.all(consumers.map((consumer) => consumer.ready));
      packed = await packLayer(request, consumers, spoolPath);
      throwIfAborted(request.signal);
    } catch (error) {
      for (const consumer of consumers) consumer.abort(error);
      throw error;
    }
    for (const consumer of consumers) consumer.end();

    const epoch = chooseEpoch(request.epoch, packed.newestMtime);
    const layer: Layer =
      spoolPath === undefined
        ? { diffId: packed.diffId, size: packed.size, open: undefined }
        : fileLayer(spoolPath, packed.diffId, packed.size);
    const image: Image = {
      platform: request.platform,
      created: epoch,
      config: request.config,
      layers: [layer],
      history: [{ created: formatCreated(epoch), createdBy: request.createdBy, comment: request.comment }],
      annotations: request.annotations ?? {},
    };
    const results: SinkResult[] = [];
    try {
      for (const sink of request.sinks) {
        throwIfAborted(request.signal);
        try {
          results.push(await sink.write(image, request.signal));
        } catch (error) {
          throw madeAnyway(error, results);
        }
      }
    } catch (error) {
      // An engine's upload that was ended with the layer becomes an image whether or not its sink is
      // written: the sinks left behind wait for it and remove it (the output set, which discards the
      // others again when the command ends, knows no engine sink). The build's error is the one to report.
      for (const sink of request.sinks.slice(results.length)) await sink.discard?.().catch(() => undefined);
      throw error;
    }
    return {
      image,
      imageId: imageId(image),
      diffId: packed.diffId,
      size: packed.size,
      entries: packed.entries,
      epoch,
      results,
    };
  } finally {
    await tempDir?.remove();
  }
}
