/**
 * A layer compressed while it is packed, kept until the outputs that need it (OCI layout, OCI archive,
 * registry) have written it. Outputs with the same compression share one spool, so the layer is
 * compressed once per algorithm and level, however many outputs take it. Where the compressed bytes go
 * is the spool's {@link LayerStore}: private temporary files, or (for an OCI archive that is the only
 * output of its compression) the archive itself.
 */
import { createReadStream } from "node:fs";
import type { Readable } from "node:stream";
import { startCompressor, type Compressor } from "../compress/compressor.js";
import { layerMediaType, type Compression } from "../compress/compression.js";
import { AppendedDigest, RunningDigest } from "../image/digest.js";
import type { CompressedLayer } from "../image/image-blobs.js";
import { AtomicFile, temporaryFileError, type Appender } from "./atomic-file.js";
import { EndOfLayer, type LayerConsumer } from "./sink.js";

/** Where one compressed layer's bytes are written. */
export interface LayerTarget {
  write(chunk: Buffer): Promise<void>;
  /** For a compressor that writes the file itself (see {@link AtomicFile.openAppender}). */
  openAppender(): Promise<Appender | undefined>;
  /** Every byte is in; `digest` and `size` are the blob's. Resolves with a way to read it back. */
  complete(digest: string, size: number): Promise<() => Readable>;
}

/** Makes a {@link LayerTarget} for each layer, and removes what they wrote after a failure. */
export interface LayerStore {
  open(): Promise<LayerTarget>;
  discard(): Promise<void>;
}

function spoolError(error: unknown): Error {
  return temporaryFileError("the compressed layer", "it needs room for the compressed layer", error);
}

/** Private temporary files in a directory (0700, made by the caller): one per layer. */
export class TemporaryLayerFiles implements LayerStore {
  private files: AtomicFile[] = [];

  constructor(private readonly dir: string) {}

  async open(): Promise<LayerTarget> {
    const file = await AtomicFile.create(this.dir, "layer", 0o600).catch((error: unknown) => {
      throw spoolError(error);
    });
    this.files.push(file);
    return {
      write: (chunk) =>
        file.write(chunk).catch((error: unknown) => {
          throw spoolError(error);
        }),
      openAppender: async () => {
        const appender = await file.openAppender().catch((error: unknown) => {
          throw spoolError(error);
        });
        return appender && { ...appender, error: spoolError };
      },
      complete: async () => {
        await file.finish();
        return () => createReadStream(file.tempPath, { highWaterMark: 4 * 1024 * 1024 });
      },
    };
  }

  async discard(): Promise<void> {
    for (const file of this.files) await file.discard();
    this.files = [];
  }
}

export class CompressedLayerSpool {
  private pending: Promise<{ digest: string; size: number; open: () => Readable }> | undefined;
  private consuming = false;

  constructor(
    readonly compression: Compression,
    private readonly store: LayerStore,
  ) {}

  /**
   * A consumer that compresses the next layer into the store. Called once per build (a multi-platform
   * build calls it once for each platform's layer).
   */
  consume(signal: AbortSignal): LayerConsumer {
    this.consuming = true;
    const opened = this.store.open();
    opened.catch(() => undefined);
    let compressor: Compressor | undefined;
    // The blob's digest: hashed on the way to the store, or, when the compressor writes the store itself,
    // read back as it grows (after each packed chunk), so that little is left once it is done.
    const hash = new RunningDigest();
    let size = 0;
    let direct: { readonly appender: Appender; readonly digest: AppendedDigest } | undefined;
    const compressorReady = opened.then(async (target) => {
      const started = await startCompressor(
        this.compression,
        (chunk) => {
          hash.update(chunk);
          size += chunk.length;
          return target.write(chunk);
        },
        () => target.openAppender(),
        signal,
      );
      const appender = started.appender;
      if (appender !== undefined)
        direct = { appender, digest: new AppendedDigest(appender.fd, appender.start) };
      compressor = started.compressor;
      return compressor;
    });
    compressorReady.catch(() => undefined);
    const endOfLayer = new EndOfLayer();
    this.pending = (async () => {
      const target = await opened;
      const active = await compressorReady;
      await endOfLayer.reached;
      await active.end();
      if (direct === undefined) {
        const digest = hash.digest();
        return { digest, size, open: await target.complete(digest, size) };
      }
      const digest = direct.digest.digest();
      const written = await direct.appender.close();
      return { digest, size: written, open: await target.complete(digest, written) };
    })();
    this.pending.catch(() => undefined);
    return {
      ready: compressorReady.then(() => undefined),
      write: async (chunk, release) => {
        await (await compressorReady).write(chunk, release);
        direct?.digest.catchUp();
      },
      end: () => endOfLayer.end(),
      abort: (error) => {
        compressor?.destroy();
        endOfLayer.fail(error);
      },
    };
  }

  /**
   * True from {@link consume} until the layer is collected: outputs sharing this spool ask, so that only
   * the first of them takes the build's stream.
   */
  get streaming(): boolean {
    return this.consuming;
  }

  /** The layer most recently consumed, once compressed; `diffId` is the uncompressed tar's digest. */
  async layer(diffId: string): Promise<CompressedLayer> {
    if (this.pending === undefined) throw new Error("no layer was streamed into the spool");
    this.consuming = false;
    const { digest, size, open } = await this.pending;
    return { descriptor: { mediaType: layerMediaType(this.compression), digest, size }, diffId, open };
  }

  /** Removes what the store wrote (nothing once an output has committed it). */
  async discard(): Promise<void> {
    await this.store.discard();
  }
}
