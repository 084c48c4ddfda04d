/**
 * A `FROM scratch` build context on disk (`-o type=context,dest=DIR`): the `Dockerfile` (ADD of the
 * rootfs plus the config as instructions) and `rootfs.tar`, the same context the engine's build path
 * posts, for people who keep a context under version control or build it elsewhere.
 */
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { UsageError, errnoCode, throwIfAborted } from "../errors.js";
import { imageId, type Image } from "../image/image.js";
import type { ProgressListener } from "../progress.js";
import { OutputDirectory, fileWriteError, listedNames, writeFileAtomically } from "./atomic-file.js";
import { buildContext } from "./docker-engine.js";
import type { Sink, SinkResult } from "./sink.js";

export interface BuildContextSinkOptions {
  readonly dest: string;
  readonly onProgress: ProgressListener;
}

/**
 * Refuses a dest that is not a new or empty directory: a `Dockerfile` there would be replaced, and a
 * `.dockerignore` or other files would become part of the context (one could leave `rootfs.tar` out).
 * Checked before the build starts, and again when the context is written.
 */
export async function checkContextDest(dest: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dest);
  } catch (error) {
    const code = errnoCode(error);
    if (code === "ENOENT") return;
    if (code === "ENOTDIR") {
      throw new UsageError(`cannot write the build context ${dest}: it is a file, not a directory`, {
        hint: "Give dest a new or empty directory.",
      });
    }
    throw fileWriteError(`the build context ${dest}`, error);
  }
  if (names.length > 0) {
    throw new UsageError(
      `cannot write the build context ${dest}: it is not empty (${listedNames(names.sort())})`,
      {
        hint: "Give dest a new or empty directory: the context is its Dockerfile and rootfs.tar alone.",
      },
    );
  }
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
    await checkContextDest(dest);
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
