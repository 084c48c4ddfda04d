/**
 * The OCI image layout (image-spec `image-layout.md`): `oci-layout`, `index.json` and content-addressed
 * blobs under `blobs/sha256/`. This module computes the layout's files for one or more images and writes
 * it as a directory (`-o type=oci,tar=false`); `oci-archive.ts` writes the same files into a tar.
 *
 * One image: `index.json` lists its manifest once per tag, with `org.opencontainers.image.ref.name`.
 * Several (one per platform): an image index blob lists the manifests, and `index.json` points at it.
 */
import { createReadStream } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { SinkError, errnoCode, throwIfAborted } from "../errors.js";
import { annotationsFor, type Annotation } from "../image/annotations.js";
import { RunningDigest, canonicalJson, digestHex } from "../image/digest.js";
import type { Image } from "../image/image.js";
import {
  CONTAINERD_NAME_ANNOTATION,
  REF_NAME_ANNOTATION,
  imageBlobs,
  imageIndex,
  manifestDescriptor,
  type ContentBlob,
  type ImageBlobs,
} from "../image/image-blobs.js";
import { INDEX_MEDIA_TYPE, type Blob, type Descriptor } from "../image/manifest.js";
import { formatReference, type Reference } from "../image/reference.js";
import type { ProgressListener } from "../progress.js";
import { AtomicFile, OutputDirectory, fileWriteError, writeFileAtomically } from "./atomic-file.js";
import type { CompressedLayerSpool, LayerStore, LayerTarget } from "./compressed-layer-spool.js";
import type { LayerConsumer, Sink, SinkResult } from "./sink.js";

/** What every OCI output (layout directory, archive, registry) is configured with. */
export interface OciOutputOptions {
  readonly dest: string;
  /** The compressed layer, shared with the other outputs of the same compression. */
  readonly spool: CompressedLayerSpool;
  readonly tags: readonly Reference[];
  readonly annotations: readonly Annotation[];
  readonly onProgress: ProgressListener;
}

/** `{"imageLayoutVersion":"1.0.0"}`, the only version the image-spec defines. */
export const OCI_LAYOUT_FILE = canonicalJson({ imageLayoutVersion: "1.0.0" });

/** The path of a blob inside a layout. */
export function blobPath(digest: string): string {
  return `blobs/sha256/${digestHex(digest)}`;
}

/** A JSON document as a blob with an opener, so it goes where a layer goes. */
export function contentOf(blob: Blob): ContentBlob {
  return {
    descriptor: blob.descriptor,
    open: async function* () {
      yield blob.data;
    },
  };
}

/** The files of a layout holding `images`: every blob once, sorted by digest, and `index.json`. */
export interface LayoutFiles {
  /** The manifest (one image) or image index (several) that the tags name. */
  readonly top: Descriptor;
  readonly blobs: readonly ContentBlob[];
  /** The `index.json` descriptors. */
  readonly manifests: readonly Descriptor[];
  /** `index:` annotations, for `index.json` when it lists a single image. */
  readonly indexAnnotations: Readonly<Record<string, string>>;
}

/** The tag part of each reference, once each: what `org.opencontainers.image.ref.name` holds. */
function refNames(tags: readonly Reference[]): { refName: string; name: string }[] {
  const seen = new Map<string, string>();
  for (const tag of tags) {
    const refName = tag.tag ?? "latest";
    if (!seen.has(refName)) seen.set(refName, formatReference({ ...tag, tag: refName, digest: undefined }));
  }
  return [...seen].map(([refName, name]) => ({ refName, name }));
}

/** The names the tags are listed under in `index.json` (one per distinct tag). */
export function refNamesOf(tags: readonly Reference[]): string[] {
  return refNames(tags).map(({ name }) => name);
}

/** Computes the layout files for `images` (in platform order) tagged with `tags`. */
export function ociLayoutFiles(
  images: readonly ImageBlobs[],
  tags: readonly Reference[],
  annotations: readonly Annotation[],
): LayoutFiles {
  const first = images[0];
  if (first === undefined) throw new Error("an OCI layout needs at least one image");
  const blobs = new Map<string, ContentBlob>();
  for (const image of images) {
    for (const blob of [...image.layers, contentOf(image.config), contentOf(image.manifest)])
      blobs.set(blob.descriptor.digest, blob);
  }
  const indexAnnotations = annotationsFor(annotations, "index");
  let top: Descriptor;
  let own: Record<string, string>;
  if (images.length === 1) {
    top = manifestDescriptor(first);
    own = annotationsFor(annotations, "manifest-descriptor", first.platform);
  } else {
    const index = imageIndex(
      images.map((image) => ({
        image,
        annotations: annotationsFor(annotations, "manifest-descriptor", image.platform),
      })),
      indexAnnotations,
    );
    blobs.set(index.descriptor.digest, contentOf(index));
    top = index.descriptor;
    own = annotationsFor(annotations, "index-descriptor");
  }
  const names = refNames(tags);
  const manifests: Descriptor[] =
    names.length === 0
      ? [{ ...top, annotations: Object.keys(own).length > 0 ? own : undefined }]
      : names.map(({ refName, name }) => ({
          ...top,
          annotations: { ...own, [CONTAINERD_NAME_ANNOTATION]: name, [REF_NAME_ANNOTATION]: refName },
        }));
  const sorted = [...blobs.values()].sort((a, b) => (a.descriptor.digest < b.descriptor.digest ? -1 : 1));
  return {
    top,
    blobs: sorted,
    manifests,
    indexAnnotations: images.length === 1 ? indexAnnotations : {},
  };
}

/** The `index.json` document. `previous` descriptors are kept unless a new one takes their tag. */
export function indexJson(files: LayoutFiles, previous: readonly Descriptor[] = []): Buffer {
  const taken = new Set(files.manifests.map((d) => d.annotations?.[REF_NAME_ANNOTATION]));
  const kept = previous.filter((d) => {
    const refName = d.annotations?.[REF_NAME_ANNOTATION];
    // An untagged entry is replaced by the new untagged one only if it is the same content.
    return refName === undefined
      ? d.digest !== files.top.digest || !taken.has(undefined)
      : !taken.has(refName);
  });
  return canonicalJson({
    schemaVersion: 2,
    mediaType: INDEX_MEDIA_TYPE,
    manifests: [...kept, ...files.manifests],
    annotations: Object.keys(files.indexAnnotations).length > 0 ? files.indexAnnotations : undefined,
  });
}

/**
 * The images of an OCI output collected across the builds of one command (one per platform), each with
 * its layer from the shared compressed spool. Used by the layout, archive and registry outputs.
 */
export class CollectedImages {
  readonly images: ImageBlobs[] = [];

  constructor(private readonly spool: CompressedLayerSpool) {}

  /** The spool's consumer for this build, or undefined when another output already streams into it. */
  streamLayer(signal: AbortSignal): LayerConsumer | undefined {
    if (this.spool.streaming) return undefined;
    return this.spool.consume(signal);
  }

  /** Adds the image of the build that just packed its layer. */
  async add(image: Image): Promise<ImageBlobs> {
    const [layer, ...more] = image.layers;
    if (layer === undefined || more.length > 0) throw new Error("OCI outputs take images of one layer");
    const blobs = imageBlobs(image, [await this.spool.layer(layer.diffId)]);
    this.images.push(blobs);
    return blobs;
  }
}

async function readPreviousIndex(dir: string): Promise<Descriptor[]> {
  let text: string;
  try {
    text = await readFile(join(dir, "index.json"), "utf8");
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return [];
    throw fileWriteError(`${dir}/index.json`, error);
  }
  try {
    const parsed = JSON.parse(text) as { manifests?: Descriptor[] };
    return Array.isArray(parsed.manifests) ? parsed.manifests : [];
  } catch (error) {
    throw new SinkError(`${dir}/index.json is not valid JSON: mkbase will not add to a broken layout`, {
      cause: error,
      hint: "Choose a new dest, or remove the directory.",
    });
  }
}

/**
 * The directory of an OCI layout output: made (or checked to be a layout) once, before any work is
 * spent, and removed again after a failure if this command made it.
 */
export class LayoutDirectory {
  private prepared: Promise<void> | undefined;
  private readonly directory: OutputDirectory;

  constructor(readonly dest: string) {
    this.directory = new OutputDirectory(join(dest, "blobs", "sha256"), `the OCI layout ${dest}`);
  }

  /** Makes `blobs/sha256/` (and the dest), or checks that an existing dest is a layout of version 1. */
  prepare(): Promise<void> {
    this.prepared ??= (async () => {
      await this.directory.make();
      const layoutFile = await readFile(join(this.dest, "oci-layout"), "utf8").catch(() => undefined);
      if (layoutFile !== undefined && !/"imageLayoutVersion"\s*:\s*"1\./.test(layoutFile)) {
        throw new SinkError(`${this.dest} holds an oci-layout file of an unknown version`, {
          hint: "Choose a new dest for the layout.",
        });
      }
    })();
    return this.prepared;
  }

  /** The layout's `index.json` was written: from now on nothing is removed. */
  keep(): void {
    this.directory.keep();
  }

  /**
   * Unless the layout was completed: removes the directories this command made, so a failure leaves no
   * layout without an index where there was none. An existing layout keeps what it held.
   */
  async discard(): Promise<void> {
    await this.prepared?.catch(() => undefined);
    await this.directory.discard();
  }
}

/**
 * The layout directory as the store of its own layers (when it is the only output of their
 * compression): each layer is compressed into a temporary file in the layout's top directory and
 * renamed into `blobs/sha256/` once its digest is known, instead of being spooled and copied.
 */
export class LayoutLayerFiles implements LayerStore {
  private files: AtomicFile[] = [];

  constructor(private readonly layout: LayoutDirectory) {}

  async open(): Promise<LayerTarget> {
    await this.layout.prepare();
    const { dest } = this.layout;
    const file = await AtomicFile.create(dest, `a layer in ${dest}`);
    this.files.push(file);
    return {
      write: (chunk) => file.write(chunk),
      openAppender: () => file.openAppender(),
      complete: async (digest) => {
        await file.finish();
        const path = join(dest, blobPath(digest));
        await file.commit(path);
        return () => createReadStream(path, { highWaterMark: 4 * 1024 * 1024 });
      },
    };
  }

  /** Removes temporary files of layers that were not completed (complete blobs stay: they are valid). */
  async discard(): Promise<void> {
    for (const file of this.files) await file.discard();
    this.files = [];
  }
}

/** An OCI image layout directory (`-o type=oci,dest=DIR,tar=false`). Adds to an existing layout. */
export class OciLayoutSink implements Sink {
  readonly destination: string;
  readonly needsLayerFile = false;
  private readonly collected: CollectedImages;

  constructor(
    private readonly options: OciOutputOptions,
    private readonly layout: LayoutDirectory = new LayoutDirectory(options.dest),
  ) {
    this.destination = `oci layout ${options.dest}`;
    this.collected = new CollectedImages(options.spool);
  }

  streamLayer(signal: AbortSignal): LayerConsumer | undefined {
    // The directory is made (or checked) before any work is spent.
    this.layout.prepare().catch(() => undefined);
    return this.collected.streamLayer(signal);
  }

  async write(image: Image, signal: AbortSignal): Promise<SinkResult> {
    await this.layout.prepare();
    const blobs = await this.collected.add(image);
    const { dest, onProgress } = this.options;
    onProgress({ kind: "phase", message: `writing the OCI layout ${dest}` });
    for (const blob of [...blobs.layers, contentOf(blobs.config), contentOf(blobs.manifest)]) {
      throwIfAborted(signal);
      await writeBlob(dest, blob);
    }
    return { destination: this.destination, id: blobs.manifest.descriptor.digest, tags: [] };
  }

  async discard(): Promise<void> {
    await this.layout.discard();
  }

  async finish(signal: AbortSignal): Promise<SinkResult> {
    const { dest, tags, annotations } = this.options;
    const files = ociLayoutFiles(this.collected.images, tags, annotations);
    // The index blob of a multi-platform build is the only blob not written yet.
    for (const blob of files.blobs) {
      throwIfAborted(signal);
      await writeBlob(dest, blob);
    }
    await writeFileAtomically(join(dest, "oci-layout"), `${dest}/oci-layout`, [OCI_LAYOUT_FILE]);
    // index.json last: until it is replaced, readers see the previous, complete layout.
    const index = indexJson(files, await readPreviousIndex(dest));
    await writeFileAtomically(join(dest, "index.json"), `${dest}/index.json`, [index]);
    this.layout.keep();
    return {
      destination: this.destination,
      id: files.top.digest,
      tags: refNamesOf(tags),
    };
  }
}

/**
 * Writes one blob under `blobs/sha256/` unless a complete one is there already (blobs are named by
 * their content). The bytes go to a temporary file in the layout's top directory, outside `blobs/`, and
 * are renamed into place only when their digest checks out.
 */
async function writeBlob(dir: string, blob: ContentBlob): Promise<void> {
  const { digest, size } = blob.descriptor;
  const path = join(dir, blobPath(digest));
  const existing = await stat(path).catch(() => undefined);
  if (existing?.isFile() === true && existing.size === size) return;
  const file = await AtomicFile.create(dir, `blob ${digest} in ${dir}`);
  try {
    const hash = new RunningDigest();
    for await (const chunk of blob.open()) {
      hash.update(chunk);
      await file.write(chunk);
    }
    const written = { digest: hash.digest(), ...(await file.finish()) };
    if (written.digest !== digest || written.size !== size) {
      throw new SinkError(`blob ${digest} changed while it was copied into ${dir} (got ${written.digest})`, {
        hint: "Run again; if it repeats, check the temporary directory's disk.",
      });
    }
    await file.commit(path);
  } catch (error) {
    await file.discard();
    throw error;
  }
}
