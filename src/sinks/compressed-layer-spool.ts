/**
 * A layer compressed while it is packed, kept in a private file until the outputs that need it (OCI
 * layout, OCI archive, registry) have written it. Outputs with the same compression share one spool, so
 * the layer is compressed once per algorithm and level, however many outputs take it.
 */
import { createReadStream } from "node:fs";
import { createCompressor, type Compressor } from "../compress/compressor.js";
import { layerMediaType, type Compression } from "../compress/compression.js";
import { RunningDigest } from "../image/digest.js";
import type { CompressedLayer } from "../image/image-blobs.js";
import { AtomicFile } from "./atomic-file.js";
import type { LayerConsumer } from "./sink.js";

export class CompressedLayerSpool {
  private pending: Promise<{ digest: string; size: number; path: string }> | undefined;
  private files: AtomicFile[] = [];
  private consuming = false;

  /** `dir` is a private (0700) directory that outlives the spool; the files are removed by {@link discard}. */
  constructor(
    readonly compression: Compression,
    private readonly dir: string,
  ) {}

  /**
   * A consumer that compresses the next layer into a new spool file. Called once per build (a
   * multi-platform build calls it once for each platform's layer).
   */
  consume(signal: AbortSignal): LayerConsumer {
    this.consuming = true;
    const opened = AtomicFile.create(this.dir, "layer", 0o600).then((file) => {
      this.files.push(file);
      return file;
    });
    opened.catch(() => undefined);
    let compressor: Compressor | undefined;
    // The blob's digest: hashed on the way to the file, not read back.
    const hash = new RunningDigest();
    const compressorReady = opened.then((file) => {
      compressor = createCompressor(
        this.compression,
        (chunk) => {
          hash.update(chunk);
          return file.write(chunk);
        },
        { signal },
      );
      return compressor;
    });
    compressorReady.catch(() => undefined);
    let ended: (() => void) | undefined;
    let aborted: ((error: unknown) => void) | undefined;
    const end = new Promise<void>((resolve, reject) => {
      ended = resolve;
      aborted = reject;
    });
    end.catch(() => undefined);
    this.pending = (async () => {
      const file = await opened;
      const active = await compressorReady;
      await end;
      await active.end();
      const { size } = await file.finish();
      return { digest: hash.digest(), size, path: file.tempPath };
    })();
    this.pending.catch(() => undefined);
    return {
      write: async (chunk) => {
        await (await compressorReady).write(chunk);
      },
      end: () => ended?.(),
      abort: (error) => {
        compressor?.destroy();
        aborted?.(error);
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
    const { digest, size, path } = await this.pending;
    return {
      descriptor: { mediaType: layerMediaType(this.compression), digest, size },
      diffId,
      open: () => createReadStream(path, { highWaterMark: 4 * 1024 * 1024 }),
    };
  }

  /** Removes every spool file. */
  async discard(): Promise<void> {
    for (const file of this.files) await file.discard();
    this.files = [];
  }
}
