/** A filesystem layer: an uncompressed tar whose identity (DiffID) and size are known. */
import { createReadStream } from "node:fs";

export const LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar";

export interface Layer {
  /** `sha256:` of the uncompressed tar. */
  readonly diffId: string;
  /** Uncompressed size in bytes. */
  readonly size: number;
  /**
   * Opens the uncompressed bytes again, for sinks that need size and digest before the content (an
   * archive header, a registry upload). Undefined when the layer was only streamed and not kept.
   */
  readonly open: (() => AsyncIterable<Buffer>) | undefined;
}

/** A layer kept in a file (spooled while it was packed). */
export function fileLayer(path: string, diffId: string, size: number): Layer {
  return { diffId, size, open: () => createReadStream(path, { highWaterMark: 4 * 1024 * 1024 }) };
}
