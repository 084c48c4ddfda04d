/**
 * A `FROM scratch` build context on disk (`-o type=context,dest=DIR`): the `Dockerfile` (ADD of the
 * rootfs plus the config as instructions) and `rootfs.tar`, the same context the engine's build path
 * posts, for people who keep a context under version control or build it elsewhere.
 */
import { join } from "node:path";
import { throwIfAborted } from "../errors.js";
import { imageId, type Image } from "../image/image.js";
import type { ProgressListener } from "../progress.js";
import { OutputDirectory, writeFileAtomically } from "./atomic-file.js";
import { buildContext } from "./docker-engine.js";
import type { Sink, SinkResult } from "./sink.js";

export interface BuildContextSinkOptions {
  readonly dest: string;
  readonly onProgress: ProgressListener;
}

export class BuildContextSink implements Sink {
  readonly destination: string;
  readonly needsLayerFile = true;
  private readonly directory: OutputDirectory;

  constructor(private readonly options: BuildContextSinkOptions) {
    this.destination = `build context ${options.dest}`;
    this.directory = new OutputDirectory(options.dest, `the build context ${options.dest}`);
  }

  async write(image: Image, signal: AbortSignal): Promise<SinkResult> {
    const { dest, onProgress } = this.options;
    onProgress({ kind: "phase", message: `writing the build context ${dest}` });
    await this.directory.make();
    const { dockerfile, rootfs } = buildContext(image);
    // rootfs.tar before the Dockerfile: a Dockerfile is never left next to a missing tar.
    const rootfsPath = join(dest, "rootfs.tar");
    throwIfAborted(signal);
    await writeFileAtomically(rootfsPath, rootfsPath, rootfs.open());
    throwIfAborted(signal);
    const dockerfilePath = join(dest, "Dockerfile");
    await writeFileAtomically(dockerfilePath, dockerfilePath, [dockerfile]);
    this.directory.keep();
    return { destination: this.destination, id: imageId(image), tags: [] };
  }

  /** Unless the context was written: removes the directory this output made for it. */
  async discard(): Promise<void> {
    await this.directory.discard();
  }
}
