/**
 * A sink is a place an image goes: the Docker Engine, a file, a registry. One verb, `write(image)`.
 * Several sinks can take the same image from one walk of the source.
 */
import { InterruptedError, MkbaseError, SinkError } from "../errors.js";
import type { Image } from "../image/image.js";
import type { Descriptor } from "../image/manifest.js";

/** Takes the layer bytes while they are packed (for sinks that stream, like the engine's import). */
export interface LayerConsumer {
  /**
   * Settles once the consumer's own set-up is done (its file opened, its compressor started). The build
   * waits for it before packing: packing holds the event loop for milliseconds at a time, and set-up
   * behind it took ~40 ms to get through its few steps.
   */
  readonly ready?: Promise<void>;
  /**
   * Takes one chunk; resolves when the next one may be written (backpressure). `release` is to be called
   * once the consumer will not read the chunk again (a request or a pipe that queues it: when the bytes
   * were written out), so that its buffer can be filled again; never, if that time does not come.
   */
  write(chunk: Buffer, release: () => void): Promise<void>;
  /** The layer is complete and verified by the source. */
  end(): void;
  /** The build failed: drop everything, destroying rather than ending any request. */
  abort(error: unknown): void;
}

/**
 * What an output that takes the layer as it is packed waits for before it finishes the file:
 * {@link LayerConsumer.end} calls `end`, {@link LayerConsumer.abort} calls `fail`. A failure that nothing
 * awaits yet is not reported as unhandled.
 */
export class EndOfLayer {
  readonly reached: Promise<void>;
  end: () => void = () => undefined;
  fail: (error: unknown) => void = () => undefined;

  constructor() {
    this.reached = new Promise<void>((resolve, reject) => {
      this.end = resolve;
      this.fail = reject;
    });
    this.reached.catch(() => undefined);
  }
}

export interface SinkResult {
  /** Short name of the destination, e.g. `docker (load)`. */
  readonly destination: string;
  /** The image ID or manifest digest the destination holds now. */
  readonly id: string;
  /** References that now point at it. */
  readonly tags: readonly string[];
  /** The manifest or index an OCI or registry output holds under `id` (`--metadata-file` shows it). */
  readonly descriptor?: Descriptor;
}

/** The destination of every Docker Engine sink starts so (`docker (load)`, `docker (import)`, …). */
const ENGINE_DESTINATION = "docker (";

/** Whether `result` is an image in the Docker Engine, rather than a file or a registry's manifest. */
export function isEngineResult(result: SinkResult): boolean {
  return result.destination.startsWith(ENGINE_DESTINATION);
}

export interface Sink {
  readonly destination: string;
  /** True when `write` must read the layer again after it was packed (so the build keeps a copy). */
  readonly needsLayerFile: boolean;
  /**
   * Present on sinks that take the layer as it is packed; called before packing starts. Undefined when
   * another sink already takes the stream on this one's behalf (outputs sharing a compressed spool).
   */
  streamLayer?(signal: AbortSignal): LayerConsumer | undefined;
  /** Delivers the finished image. For streaming sinks this waits for the destination to confirm. */
  write(image: Image, signal: AbortSignal): Promise<SinkResult>;
  /**
   * Present on sinks that can hold several images (one per platform): called once after the last
   * `write`, it writes what covers them all (an OCI index, an archive) and returns the final result.
   */
  finish?(signal: AbortSignal): Promise<SinkResult>;
  /**
   * Present on sinks that make something (a directory, an image in the engine) before their output is
   * complete: called when the command ends, and by a failed build for the sinks it did not write, it
   * removes that unless the output was completed. A second call does nothing more.
   */
  discard?(): Promise<void>;
}

/**
 * The error of an output that failed once others were complete (a push after the archives, a result
 * file after the image): what they made is not undone (a tag may have moved from another image, a file
 * may have replaced an older one), so the message names it. An interrupt stays an interrupt (exit 130),
 * naming them too.
 */
export function madeAnyway(error: unknown, results: readonly SinkResult[]): unknown {
  if (!(error instanceof MkbaseError) || results.length === 0) return error;
  const made = results.map((r) => `${r.tags.length > 0 ? r.tags.join(", ") : r.id} in ${r.destination}`);
  if (error instanceof InterruptedError) {
    return new InterruptedError(error.message, { cause: error, kept: [...error.kept, ...made] });
  }
  return new SinkError(`${error.message}, after the image was made (${made.join("; ")})`, {
    cause: error,
    hint: error.hint,
  });
}
