/**
 * Sinks that can take the layer while it is packed, provided they learn its length first: an archive
 * that holds the layer as a member (a docker-archive streamed into the engine) writes that member's
 * header, size included, before its first byte.
 */
import type { LayerConsumer, Sink } from "./sink.js";

/** What a presized stream knows before the first layer byte. */
export interface LayerPreview {
  /** Exact length of the layer tar, from a metadata-only pass over the source. */
  readonly size: number;
  /** Modification time for the archive member that holds the layer (seconds). */
  readonly mtime: number;
}

export interface PresizedStreamSink extends Sink {
  /**
   * Called before packing starts, instead of spooling the layer for `write`. The build guarantees that
   * exactly `preview.size` bytes are written, or aborts the consumer.
   */
  streamPresizedLayer(preview: LayerPreview, signal: AbortSignal): LayerConsumer;
}

export function canStreamPresized(sink: Sink): sink is PresizedStreamSink {
  return typeof (sink as Partial<PresizedStreamSink>).streamPresizedLayer === "function";
}
