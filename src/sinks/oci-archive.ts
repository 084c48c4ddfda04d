/**
 * An OCI image layout in a tar file (`-o type=oci,dest=FILE`), the `oci-archive:` of skopeo and buildx's
 * default OCI output. The archive is written when every image of the command is known (one per
 * platform), from the compressed layers spooled during the walk; entry order, modes and times are fixed,
 * so the same images give the same bytes.
 */
import { throwIfAborted } from "../errors.js";
import type { Image } from "../image/image.js";
import { bytesEntry, directoryEntry, type TarEntry } from "../tar/entry.js";
import { packTar } from "../tar/pack.js";
import { shownDest, writeFileAtomically } from "./atomic-file.js";
import {
  CollectedImages,
  OCI_LAYOUT_FILE,
  blobPath,
  indexJson,
  ociLayoutFiles,
  refNamesOf,
  type OciOutputOptions,
} from "./oci-layout.js";
import type { LayerConsumer, Sink, SinkResult } from "./sink.js";

/** Opens the blob only when the packer reaches it, so at most one spool file is open at a time. */
async function* lazily(open: () => AsyncIterable<Buffer>): AsyncIterable<Buffer> {
  yield* open();
}

/** The tar entries of an OCI layout holding `files`, all with `mtime`. */
export function ociArchiveEntries(files: ReturnType<typeof ociLayoutFiles>, mtime: number): TarEntry[] {
  const blobs: TarEntry[] = files.blobs.map((blob) => ({
    path: Buffer.from(blobPath(blob.descriptor.digest)),
    type: "file",
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime,
    size: blob.descriptor.size,
    content: { kind: "stream", chunks: lazily(() => blob.open()) },
  }));
  return [
    directoryEntry("blobs", 0o755, mtime),
    directoryEntry("blobs/sha256", 0o755, mtime),
    ...blobs,
    bytesEntry("index.json", indexJson(files), 0o644, mtime),
    bytesEntry("oci-layout", OCI_LAYOUT_FILE, 0o644, mtime),
  ];
}

export class OciArchiveSink implements Sink {
  readonly destination: string;
  readonly needsLayerFile = false;
  private readonly collected: CollectedImages;
  private created = 0;

  constructor(private readonly options: OciOutputOptions) {
    this.destination = `oci archive ${shownDest(options.dest)}`;
    this.collected = new CollectedImages(options.spool);
  }

  streamLayer(signal: AbortSignal): LayerConsumer | undefined {
    return this.collected.streamLayer(signal);
  }

  async write(image: Image): Promise<SinkResult> {
    const blobs = await this.collected.add(image);
    this.created = Math.max(this.created, image.created);
    return { destination: this.destination, id: blobs.manifest.descriptor.digest, tags: [] };
  }

  async finish(signal: AbortSignal): Promise<SinkResult> {
    const { dest, tags, annotations, onProgress } = this.options;
    throwIfAborted(signal);
    onProgress({ kind: "phase", message: `writing the OCI archive ${shownDest(dest)}` });
    const files = ociLayoutFiles(this.collected.images, tags, annotations);
    await writeFileAtomically(
      dest,
      `the OCI archive ${shownDest(dest)}`,
      packTar(ociArchiveEntries(files, this.created), { signal }),
    );
    return { destination: this.destination, id: files.top.digest, tags: refNamesOf(tags) };
  }
}
