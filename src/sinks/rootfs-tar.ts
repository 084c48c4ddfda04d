/**
 * The normalised root filesystem as a tar file (`-o type=tar,dest=rootfs.tar[.gz|.zst]`), compressed
 * while it is packed and renamed into place once complete. The same bytes as the image's layer (before
 * compression), so `sha256sum` of the uncompressed file is the layer's DiffID.
 */
import { startCompressor, type Compressor } from "../compress/compressor.js";
import { describeCompression, type Compression } from "../compress/compression.js";
import { SinkError } from "../errors.js";
import type { Image } from "../image/image.js";
import type { ProgressListener } from "../progress.js";
import { openDestination, shownDest, type Appender, type AtomicFile } from "./atomic-file.js";
import { EndOfLayer, type LayerConsumer, type Sink, type SinkResult } from "./sink.js";

export interface RootfsTarSinkOptions {
  readonly dest: string;
  readonly compression: Compression;
  readonly onProgress: ProgressListener;
}

export class RootfsTarSink implements Sink {
  readonly destination: string;
  readonly needsLayerFile = false;
  private written: Promise<{ file: AtomicFile; path: string }> | undefined;

  constructor(private readonly options: RootfsTarSinkOptions) {
    this.destination = `rootfs tar ${shownDest(options.dest)}`;
  }

  streamLayer(signal: AbortSignal): LayerConsumer {
    if (this.written !== undefined) throw new Error("a rootfs tar output holds one layer");
    const { dest, compression, onProgress } = this.options;
    onProgress({
      kind: "phase",
      message: `writing the rootfs to ${shownDest(dest)} (${describeCompression(compression)})`,
    });
    const opened = openDestination(dest, `the rootfs tar ${shownDest(dest)}`);
    opened.catch(() => undefined);
    let compressor: Compressor | undefined;
    let appender: Appender | undefined;
    const ready = opened.then(async ({ file }) => {
      ({ compressor, appender } = await startCompressor(
        compression,
        (chunk) => file.write(chunk),
        () => file.openAppender(),
        signal,
      ));
      return compressor;
    });
    ready.catch(() => undefined);
    const endOfLayer = new EndOfLayer();
    this.written = (async () => {
      const destination = await opened;
      try {
        const active = await ready;
        await endOfLayer.reached;
        await active.end();
        await appender?.close();
        await destination.file.finish();
        return destination;
      } catch (error) {
        await destination.file.discard();
        throw error;
      }
    })();
    this.written.catch(() => undefined);
    return {
      ready: ready.then(() => undefined),
      write: async (chunk, release) => (await ready).write(chunk, release),
      end: () => endOfLayer.end(),
      abort: (error) => {
        compressor?.destroy();
        endOfLayer.fail(error);
      },
    };
  }

  async write(image: Image): Promise<SinkResult> {
    if (this.written === undefined) throw new SinkError("the rootfs tar output was not streamed");
    const { file, path } = await this.written;
    await file.commit(path);
    return { destination: this.destination, id: image.layers[0]?.diffId ?? "", tags: [] };
  }

  /**
   * Waits for the removal that a failed stream starts by itself: the command would otherwise exit
   * before it, leaving the temporary file beside the dest. A file finished but never committed (a later
   * output failed first) is removed here.
   */
  async discard(): Promise<void> {
    const written = await this.written?.catch(() => undefined);
    await written?.file.discard();
  }
}
