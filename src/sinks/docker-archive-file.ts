/**
 * A docker-archive file (`-o type=docker,dest=FILE`): what `docker save` writes and `docker load -i`
 * reads, with the OCI `index.json` and `oci-layout` too, exactly as the engine's load path sends it.
 */
import type { Image } from "../image/image.js";
import { uncompressedManifest } from "../image/manifest.js";
import type { Reference } from "../image/reference.js";
import type { ProgressListener } from "../progress.js";
import { packTar } from "../tar/pack.js";
import { shownDest, writeFileAtomically } from "./atomic-file.js";
import { dockerArchiveEntries } from "./docker-archive.js";
import type { Sink, SinkResult } from "./sink.js";
import { refNamesOf } from "./oci-layout.js";

export interface DockerArchiveFileSinkOptions {
  readonly dest: string;
  readonly tags: readonly Reference[];
  readonly onProgress: ProgressListener;
}

export class DockerArchiveFileSink implements Sink {
  readonly destination: string;
  readonly needsLayerFile = true;

  constructor(private readonly options: DockerArchiveFileSinkOptions) {
    this.destination = `docker archive ${shownDest(options.dest)}`;
  }

  async write(image: Image, signal: AbortSignal): Promise<SinkResult> {
    const { dest, tags, onProgress } = this.options;
    onProgress({ kind: "phase", message: `writing the docker archive ${shownDest(dest)}` });
    await writeFileAtomically(
      dest,
      `the docker archive ${shownDest(dest)}`,
      packTar(dockerArchiveEntries(image, tags), { signal }),
    );
    return {
      destination: this.destination,
      id: uncompressedManifest(image).config.descriptor.digest,
      tags: refNamesOf(tags),
    };
  }
}
