/**
 * A `FROM scratch` build context on disk (`-o type=context,dest=DIR`): the `Dockerfile` (ADD of the
 * rootfs plus the config as instructions) and `rootfs.tar`, the same context the engine's build path
 * posts, for people who keep a context under version control or build it elsewhere.
 */
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { throwIfAborted } from "../errors.js";
import { imageId, type Image } from "../image/image.js";
import type { ProgressListener } from "../progress.js";
import { fileWriteError, writeFileAtomically } from "./atomic-file.js";
import { buildContext } from "./docker-engine.js";
import type { Sink, SinkResult } from "./sink.js";

export interface BuildContextSinkOptions {
  readonly dest: string;
  readonly onProgress: ProgressListener;
}

export class BuildContextSink implements Sink {
  readonly destination: string;
  readonly needsLayerFile = true;
  /** The first directory `write` created (the dest itself, when it was new), or undefined. */
  private created: string | undefined;
  private completed = false;

  constructor(private readonly options: BuildContextSinkOptions) {
    this.destination = `build context ${options.dest}`;
  }

  async write(image: Image, signal: AbortSignal): Promise<SinkResult> {
    const { dest, onProgress } = this.options;
    onProgress({ kind: "phase", message: `writing the build context ${dest}` });
    try {
      this.created = await mkdir(dest, { recursive: true });
    } catch (error) {
      throw fileWriteError(`the build context ${dest}`, error);
    }
    const { dockerfile, rootfs } = buildContext(image);
    // rootfs.tar before the Dockerfile: a Dockerfile is never left next to a missing tar.
    const rootfsPath = join(dest, "rootfs.tar");
    throwIfAborted(signal);
    await writeFileAtomically(rootfsPath, rootfsPath, rootfs.open());
    throwIfAborted(signal);
    const dockerfilePath = join(dest, "Dockerfile");
    await writeFileAtomically(dockerfilePath, dockerfilePath, [dockerfile]);
    this.completed = true;
    return { destination: this.destination, id: imageId(image), tags: [] };
  }

  /** Unless the context was written: removes the directory this output made for it. */
  async discard(): Promise<void> {
    if (!this.completed && this.created !== undefined)
      await rm(this.created, { recursive: true, force: true });
  }
}
