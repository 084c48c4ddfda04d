/**
 * An OCI image layout in a tar file (`-o type=oci,dest=FILE`), the `oci-archive:` of skopeo and buildx's
 * default OCI output. Entry order, modes and times are fixed, so the same images give the same bytes.
 *
 * When the archive is a file and the only output of its compression, each layer is compressed straight
 * into it ({@link ArchiveFile}): the layer's tar header, which names the blob by the digest of what
 * follows, is written into room kept for it once the layer is complete. Otherwise (an archive on stdout,
 * or a layer shared with other outputs) the archive is written at the end from the spooled layers.
 */
import { createReadStream } from "node:fs";
import { throwIfAborted } from "../errors.js";
import type { Image } from "../image/image.js";
import type { ContentBlob } from "../image/image-blobs.js";
import { bytesEntry, directoryEntry, type TarEntry } from "../tar/entry.js";
import { BLOCK, encodeHeader, paddingFor, writeChecksum } from "../tar/header.js";
import { packTar } from "../tar/pack.js";
import { openDestination, shownDest, writeFileAtomically, type AtomicFile } from "./atomic-file.js";
import type { LayerStore, LayerTarget } from "./compressed-layer-spool.js";
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

/** The two directory entries every archive starts with, `blobs/` and `blobs/sha256/`. */
function layoutDirectories(mtime: number): TarEntry[] {
  return [directoryEntry("blobs", 0o755, mtime), directoryEntry("blobs/sha256", 0o755, mtime)];
}

/** A blob's tar entry (its content comes from `chunks`, or is already in place). */
function blobEntry(digest: string, size: number, mtime: number, chunks?: AsyncIterable<Buffer>): TarEntry {
  return {
    path: Buffer.from(blobPath(digest)),
    type: "file",
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime,
    size,
    content: chunks === undefined ? undefined : { kind: "stream", chunks },
  };
}

/** The largest number the ustar header's 12-byte octal fields hold: a size of 8 GiB - 1, a time in 2242. */
const MAX_OCTAL_11 = 0o77777777777;

/** Writes `value` into the 12-byte numeric field at `offset` in GNU's base-256 form. */
function writeBase256(block: Buffer, offset: number, value: number): void {
  let rest = value;
  for (let i = offset + 11; i > offset; i--) {
    block[i] = rest % 256;
    rest = Math.floor(rest / 256);
  }
  block[offset] = 0x80;
}

/**
 * The single header block of a directory or blob entry (their names are short enough never to need a
 * PAX header). A layer's header has one block of room, kept before its size is known, so a size or time
 * too large for the octal fields (a layer of 8 GiB or more, a build time after 2242) is written in
 * base-256, the GNU form that Go's archive/tar (skopeo, containerd, the engine), libarchive, GNU tar and
 * Python read in any header, instead of in the PAX header that would need two more blocks.
 */
function headerBlock(entry: TarEntry): Buffer {
  const size = entry.type === "file" ? entry.size : 0;
  const header = encodeHeader({
    ...entry,
    size: Math.min(size, MAX_OCTAL_11),
    mtime: Math.min(entry.mtime, MAX_OCTAL_11),
  });
  if (header.length !== BLOCK)
    throw new Error(`${entry.path.toString()}: a header of ${header.length} bytes`);
  if (size <= MAX_OCTAL_11 && entry.mtime <= MAX_OCTAL_11) return header;
  if (size > MAX_OCTAL_11) writeBase256(header, 124, size);
  if (entry.mtime > MAX_OCTAL_11) writeBase256(header, 136, entry.mtime);
  writeChecksum(header);
  return header;
}

/**
 * The archive file being written, as the store of its own layers. It starts with room for the two
 * directory headers; each layer gets a header block of room, then its compressed bytes and padding.
 * The headers are written into their room by {@link finish}, when the archive's time is known.
 */
export class ArchiveFile implements LayerStore {
  private opened: Promise<{ file: AtomicFile; path: string }> | undefined;
  /** The layers in the archive, by digest: where their header goes and their size. */
  readonly layers = new Map<string, { headerAt: number; size: number }>();

  constructor(private readonly dest: string) {}

  private file(): Promise<{ file: AtomicFile; path: string }> {
    this.opened ??= (async () => {
      const destination = await openDestination(this.dest, `the OCI archive ${this.dest}`);
      await destination.file.write(Buffer.alloc(2 * BLOCK));
      return destination;
    })();
    return this.opened;
  }

  async open(): Promise<LayerTarget> {
    const { file } = await this.file();
    const headerAt = file.size;
    await file.write(Buffer.alloc(BLOCK));
    return {
      write: (chunk) => file.write(chunk),
      openAppender: () => file.openAppender(),
      complete: async (digest, size) => {
        const first = this.layers.get(digest);
        if (first === undefined) {
          await file.write(Buffer.alloc(paddingFor(size)));
          this.layers.set(digest, { headerAt, size });
        } else {
          // The same layer twice (two platforms, one program): the archive holds it once.
          await file.truncate(headerAt);
        }
        const start = (first?.headerAt ?? headerAt) + BLOCK;
        return () => createReadStream(file.tempPath, { start, end: start + size - 1 });
      },
    };
  }

  /**
   * Appends `rest` (the other blobs, `index.json`, `oci-layout`) and the end-of-archive blocks, writes
   * every header kept room for, and renames the archive into place.
   */
  async finish(rest: readonly TarEntry[], mtime: number, signal: AbortSignal): Promise<void> {
    const { file, path } = await this.file();
    for await (const chunk of packTar(rest, { signal })) {
      await file.write(chunk);
    }
    await file.writeAt(Buffer.concat(layoutDirectories(mtime).map(headerBlock)), 0);
    for (const [digest, { headerAt, size }] of this.layers) {
      await file.writeAt(headerBlock(blobEntry(digest, size, mtime)), headerAt);
    }
    await file.finish();
    await file.commit(path);
  }

  async discard(): Promise<void> {
    const opened = await this.opened?.catch(() => undefined);
    await opened?.file.discard();
  }
}

/** Opens the blob only when the packer reaches it, so at most one spool file is open at a time. */
async function* lazily(open: () => AsyncIterable<Buffer>): AsyncIterable<Buffer> {
  yield* open();
}

/** The tar entry of `blob`, read from its spool when the packer reaches it. */
function contentEntry(blob: ContentBlob, mtime: number): TarEntry {
  return blobEntry(
    blob.descriptor.digest,
    blob.descriptor.size,
    mtime,
    lazily(() => blob.open()),
  );
}

/**
 * The tar entries of an OCI layout holding `files`, all with `mtime`, after the two directories: every
 * blob but those `written` already holds (the layers an {@link ArchiveFile} took), then `index.json`
 * and `oci-layout`.
 */
function layoutEntries(
  files: ReturnType<typeof ociLayoutFiles>,
  mtime: number,
  written: { has(digest: string): boolean } = new Set(),
): TarEntry[] {
  return [
    ...files.blobs
      .filter((blob) => !written.has(blob.descriptor.digest))
      .map((blob) => contentEntry(blob, mtime)),
    bytesEntry("index.json", indexJson(files), 0o644, mtime),
    bytesEntry("oci-layout", OCI_LAYOUT_FILE, 0o644, mtime),
  ];
}

/**
 * An archive written in one go (to stdout, or from layers spooled for other outputs too), laid out as an
 * {@link ArchiveFile} is and with the same one-block headers: the directories, the layers, then `rest`
 * packed as it packs them. A dest gets the same bytes whichever way it is written.
 */
async function* wholeArchive(
  layers: readonly ContentBlob[],
  rest: readonly TarEntry[],
  mtime: number,
  signal: AbortSignal,
): AsyncGenerator<Buffer> {
  yield Buffer.concat(layoutDirectories(mtime).map(headerBlock));
  for (const layer of layers) {
    const { digest, size } = layer.descriptor;
    yield headerBlock(blobEntry(digest, size, mtime));
    let copied = 0;
    for await (const chunk of layer.open()) {
      throwIfAborted(signal);
      copied += chunk.length;
      yield chunk;
    }
    if (copied !== size)
      throw new Error(`layer ${digest}: ${copied} bytes where its descriptor says ${size}`);
    yield Buffer.alloc(paddingFor(size));
  }
  yield* packTar(rest, { signal });
}

export class OciArchiveSink implements Sink {
  readonly destination: string;
  readonly needsLayerFile = false;
  private readonly collected: CollectedImages;
  private created = 0;

  /** `archive`: the archive file that its layers were compressed into, when it is their store. */
  constructor(
    private readonly options: OciOutputOptions,
    private readonly archive?: ArchiveFile,
  ) {
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
    if (this.archive === undefined) {
      // The order of an ArchiveFile's, so that a dest gives the same bytes whichever way it is written:
      // the layers as the builds made them, then the other blobs.
      const layers = new Map(
        this.collected.images
          .flatMap((image) => image.layers)
          .map((layer) => [layer.descriptor.digest, layer]),
      );
      const rest = layoutEntries(files, this.created, layers);
      await writeFileAtomically(
        dest,
        `the OCI archive ${shownDest(dest)}`,
        wholeArchive([...layers.values()], rest, this.created, signal),
      );
    } else {
      const rest = layoutEntries(files, this.created, this.archive.layers);
      await this.archive.finish(rest, this.created, signal);
    }
    return {
      destination: this.destination,
      id: files.top.digest,
      tags: refNamesOf(tags),
      descriptor: files.top,
    };
  }
}
