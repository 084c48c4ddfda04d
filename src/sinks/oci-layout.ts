/**
 * The OCI image layout (image-spec `image-layout.md`): `oci-layout`, `index.json` and content-addressed
 * blobs under `blobs/sha256/`. This module computes the layout's files for one or more images and writes
 * it as a directory (`-o type=oci,tar=false`); `oci-archive.ts` writes the same files into a tar.
 *
 * One image: `index.json` lists its manifest once per reference, as buildx and containerd write it: the
 * tag in `org.opencontainers.image.ref.name` (what skopeo's `oci:DIR:TAG` looks up) and the full name in
 * `io.containerd.image.name` (what `ctr import` and `docker load` name the image by). Several (one per
 * platform): an image index blob lists the manifests, and `index.json` points at it.
 */
import { createReadStream, rmSync } from "node:fs";
import { link, open, readFile, readdir, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { InterruptedError, SinkError, errnoCode, throwIfAborted } from "../errors.js";
import { onForcedExit } from "../forced-exit.js";
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
import { formatReference, normalizedName, parseReference, type Reference } from "../image/reference.js";
import type { ProgressListener } from "../progress.js";
import {
  AtomicFile,
  OutputDirectory,
  TEMP_PREFIX,
  fileWriteError,
  listedNames,
  tempPathIn,
  writeFileAtomically,
} from "./atomic-file.js";
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

/** One `index.json` entry's names: the tag, the full name, and the reference as the user wrote it. */
export interface EntryNames {
  readonly refName: string;
  readonly fullName: string;
  readonly shown: string;
}

/** The names of each distinct reference among `tags` (by full name), in the order given. */
export function entryNames(tags: readonly Reference[]): EntryNames[] {
  const seen = new Map<string, EntryNames>();
  for (const tag of tags) {
    const named = { ...tag, tag: tag.tag ?? "latest", digest: undefined };
    const fullName = normalizedName(named);
    if (!seen.has(fullName))
      seen.set(fullName, { refName: named.tag, fullName, shown: formatReference(named) });
  }
  return [...seen.values()];
}

/**
 * The references an output names its image by, once each and as the user wrote them (`review/x:1`, not
 * `docker.io/review/x:1`), so that the results of several outputs read alike.
 */
export function refNamesOf(tags: readonly Reference[]): string[] {
  return entryNames(tags).map(({ shown }) => shown);
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
  const names = entryNames(tags);
  const manifests: Descriptor[] =
    names.length === 0
      ? [{ ...top, annotations: Object.keys(own).length > 0 ? own : undefined }]
      : names.map(({ refName, fullName }) => ({
          ...top,
          annotations: { ...own, [CONTAINERD_NAME_ANNOTATION]: fullName, [REF_NAME_ANNOTATION]: refName },
        }));
  const sorted = [...blobs.values()].sort((a, b) => (a.descriptor.digest < b.descriptor.digest ? -1 : 1));
  return {
    top,
    blobs: sorted,
    manifests,
    indexAnnotations: images.length === 1 ? indexAnnotations : {},
  };
}

/**
 * The full name of an `index.json` entry, normalised, when it has one. Other tools (and earlier mkbase)
 * may have written it unnormalised (`review/x:1`); one that does not parse is compared as it is.
 */
function fullNameOf(entry: Descriptor): string | undefined {
  const name = entry.annotations?.[CONTAINERD_NAME_ANNOTATION];
  if (name === undefined) return undefined;
  try {
    return normalizedName(parseReference(name));
  } catch {
    return name;
  }
}

/**
 * The `index.json` document. `previous` descriptors are kept unless a new one names the same image: the
 * same full name, or, for an entry with only a tag (skopeo's `oci:DIR:TAG` writes no full name), the
 * same tag, which `oci:DIR:TAG` would otherwise find twice. `document`, the `index.json` they come from,
 * keeps its other top-level fields (`annotations`, `subject`, extensions), which another tool wrote for
 * the whole layout; new `index:` annotations are added to its annotations.
 */
export function indexJson(
  files: LayoutFiles,
  previous: readonly Descriptor[] = [],
  document: Readonly<Record<string, unknown>> = {},
): Buffer {
  const fullNames = new Set(files.manifests.map(fullNameOf));
  const refNames = new Set(files.manifests.map((d) => d.annotations?.[REF_NAME_ANNOTATION]));
  const kept = previous.filter((d) => {
    const fullName = fullNameOf(d);
    if (fullName !== undefined) return !fullNames.has(fullName);
    const refName = d.annotations?.[REF_NAME_ANNOTATION];
    // An untagged entry is replaced by the new untagged one only if it is the same content.
    return refName === undefined
      ? d.digest !== files.top.digest || !refNames.has(undefined)
      : !refNames.has(refName);
  });
  const annotations = {
    ...(isObject(document.annotations) ? document.annotations : {}),
    ...files.indexAnnotations,
  };
  return canonicalJson({
    ...document,
    schemaVersion: 2,
    mediaType: INDEX_MEDIA_TYPE,
    manifests: [...kept, ...files.manifests],
    annotations: Object.keys(annotations).length > 0 ? annotations : undefined,
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

/** Whether `value` is a JSON object (not an array, not null). */
function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** An existing `index.json`: its entries, and the whole document (see {@link indexJson}). */
interface LayoutIndex {
  readonly manifests: readonly Descriptor[];
  readonly document: Readonly<Record<string, unknown>>;
}

/**
 * The `index.json` of the layout in `dir`, empty when it has none. One that is not an image index
 * (schema version 2, `manifests` a list of descriptors) is refused: rewriting it would lose what it held.
 */
async function readLayoutIndex(dir: string): Promise<LayoutIndex> {
  let text: string;
  try {
    text = await readFile(join(dir, "index.json"), "utf8");
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return { manifests: [], document: {} };
    throw fileWriteError(`the OCI layout ${dir}`, error);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new SinkError(`${dir}/index.json is not valid JSON: mkbase will not add to a broken layout`, {
      cause: error,
      hint: "Choose a new dest, or remove the directory.",
    });
  }
  // Go tools write an empty list as null (encoding/json marshals a nil slice so).
  const manifests = isObject(parsed) && parsed.schemaVersion === 2 ? (parsed.manifests ?? []) : undefined;
  if (
    !Array.isArray(manifests) ||
    !manifests.every((d) => isObject(d) && typeof d.digest === "string" && typeof d.mediaType === "string")
  ) {
    throw new SinkError(`${dir}/index.json is not an OCI image index: mkbase will not add to it`, {
      hint: "Choose a new dest, or remove the directory.",
    });
  }
  return { manifests: manifests as Descriptor[], document: parsed as Record<string, unknown> };
}

/** Refuses an `oci-layout` file that does not say image layout version 1, the only one there is. */
async function checkLayoutVersion(dir: string): Promise<void> {
  let text: string;
  try {
    text = await readFile(join(dir, "oci-layout"), "utf8");
  } catch (error) {
    throw fileWriteError(`the OCI layout ${dir}`, error);
  }
  let version: unknown;
  try {
    version = (JSON.parse(text) as { imageLayoutVersion?: unknown } | null)?.imageLayoutVersion;
  } catch {
    version = undefined;
  }
  if (typeof version !== "string" || !version.startsWith("1.")) {
    throw new SinkError(`${dir} holds an oci-layout file of an unknown version`, {
      hint: "Choose a new dest for the layout.",
    });
  }
}

/**
 * Checks what `dest` holds before anything is written there: nothing (or no dest), or an OCI layout whose
 * `oci-layout` and `index.json` are valid. Anything else is refused, so that a layout is never spread
 * over a directory of other files (a home directory, a source tree) and a refusal changes nothing.
 * `blobs/` and temporary files alone are what a layout killed before its `index.json` leaves.
 * Returns whether the dest has its `oci-layout` file.
 */
export async function checkLayoutDest(dest: string): Promise<{ readonly hasLayoutFile: boolean }> {
  let names: string[];
  try {
    names = await readdir(dest);
  } catch (error) {
    const code = errnoCode(error);
    if (code === "ENOENT") return { hasLayoutFile: false };
    if (code === "ENOTDIR" && (await stat(dest).catch(() => undefined)) !== undefined) {
      throw new SinkError(`cannot write the OCI layout ${dest}: it is not a directory`, {
        hint: "Give tar=false a new or empty directory or an OCI layout, or drop tar=false for an archive.",
      });
    }
    throw fileWriteError(`the OCI layout ${dest}`, error);
  }
  const hasLayoutFile = names.includes("oci-layout");
  if (hasLayoutFile) await checkLayoutVersion(dest);
  if (names.includes("index.json")) {
    await readLayoutIndex(dest);
  } else if (!hasLayoutFile) {
    const others = names.filter((name) => name !== "blobs" && !name.startsWith(TEMP_PREFIX));
    if (others.length > 0) {
      throw new SinkError(
        `${dest} is not an OCI image layout (no oci-layout or index.json) and not empty: it holds ${listedNames(others.sort())}`,
        { hint: "Give dest a new or empty directory, or an existing OCI layout to add the image to." },
      );
    }
  }
  return { hasLayoutFile };
}

/**
 * The lock of a layout's `index.json`, beside it. Its name starts with {@link TEMP_PREFIX}, so that the
 * dest check and a rootfs walk over the layout pass it by.
 */
const INDEX_LOCK = `${TEMP_PREFIX}index.json.lock`;

/** How long {@link lockIndex} waits for a lock held by a live process: it is held for milliseconds. */
const INDEX_LOCK_WAIT_MS = 30_000;

/** The process that holds a lock, as its lock file names it. */
interface LockHolder {
  readonly pid: number;
  readonly host: string;
}

/** The holder a lock file names; undefined while the holder has not written it yet. */
function lockHolder(text: string): LockHolder | undefined {
  const match = /^([1-9]\d*) (\S+)\n$/.exec(text);
  return match === null ? undefined : { pid: Number(match[1]), host: match[2] as string };
}

/**
 * Whether the holder of a lock has exited. One on another host (a layout on a network filesystem)
 * cannot be checked, nor one that has not written the lock yet: they count as running.
 */
function holderExited(holder: LockHolder | undefined): boolean {
  if (holder === undefined || holder.host !== hostname()) return false;
  try {
    process.kill(holder.pid, 0);
    return false;
  } catch (error) {
    // EPERM: it runs, as another user.
    return errnoCode(error) === "ESRCH";
  }
}

/** Makes the lock file at `path` with O_EXCL; its release, or undefined when another process holds it. */
async function createLock(path: string, what: string): Promise<(() => Promise<void>) | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(path, "wx", 0o644);
  } catch (error) {
    if (errnoCode(error) === "EEXIST") return undefined;
    throw fileWriteError(what, error);
  }
  const forget = onForcedExit(path, () => rmSync(path, { force: true }));
  const release = async (): Promise<void> => {
    await rm(path, { force: true });
    forget();
  };
  try {
    await handle.writeFile(`${process.pid} ${hostname()}\n`);
  } catch (error) {
    await release();
    throw fileWriteError(what, error);
  } finally {
    await handle.close().catch(() => undefined);
  }
  return release;
}

/**
 * Takes the `index.json` lock of the layout in `dir`, a file holding this process's PID and host:
 * waits with a short backoff while another command holds it, breaks it when its holder has exited,
 * and gives up after {@link INDEX_LOCK_WAIT_MS}. Returns its release, which a forced exit runs too.
 */
async function lockIndex(dir: string, signal: AbortSignal): Promise<() => Promise<void>> {
  const path = join(dir, INDEX_LOCK);
  const what = `the lock of ${dir}/index.json`;
  const started = Date.now();
  for (let delay = 5; ; delay = Math.min(2 * delay, 200)) {
    throwIfAborted(signal);
    const release = await createLock(path, what);
    if (release !== undefined) return release;
    // Empty when it is gone already: the next try takes it.
    const text = await readFile(path, "utf8").catch(() => "");
    const holder = lockHolder(text);
    if (holderExited(holder)) {
      await breakLock(path, text);
      continue;
    }
    if (Date.now() - started > INDEX_LOCK_WAIT_MS) {
      const by = holder === undefined ? "" : ` by process ${holder.pid} on ${holder.host}`;
      throw new SinkError(`${what} is still held${by} after ${INDEX_LOCK_WAIT_MS / 1000} s`, {
        hint: `If no mkbase is writing to ${dir}, remove ${path} and run again.`,
      });
    }
    try {
      await sleep(delay, undefined, { signal });
    } catch (abort) {
      throw new InterruptedError("interrupted", { cause: abort });
    }
  }
}

/**
 * Removes the lock at `path` holding `text`, left by a process that exited. It is moved aside first and
 * checked: another waiter may have broken it already and taken the lock anew, which is given back.
 */
async function breakLock(path: string, text: string): Promise<void> {
  const moved = tempPathIn(dirname(path), "stale-lock");
  try {
    await rename(path, moved);
  } catch {
    return;
  }
  if ((await readFile(moved, "utf8").catch(() => text)) !== text)
    await link(moved, path).catch(() => undefined);
  await rm(moved, { force: true });
}

/**
 * The directory of an OCI layout output: checked once, before any work is spent and before anything is
 * written into it, then made; removed again after a failure if this command made it.
 */
export class LayoutDirectory {
  private prepared: Promise<void> | undefined;
  private readonly directory: OutputDirectory;
  private layoutFile = false;

  constructor(readonly dest: string) {
    this.directory = new OutputDirectory(join(dest, "blobs", "sha256"), `the OCI layout ${dest}`);
  }

  /** Checks the dest (see {@link checkLayoutDest}), then makes `blobs/sha256/` (and the dest). */
  prepare(): Promise<void> {
    this.prepared ??= (async () => {
      this.layoutFile = (await checkLayoutDest(this.dest)).hasLayoutFile;
      await this.directory.make();
    })();
    return this.prepared;
  }

  /** Whether the dest had an `oci-layout` file when it was checked (it is then left as it is). */
  get hasLayoutFile(): boolean {
    return this.layoutFile;
  }

  /**
   * Replaces the layout's `index.json` with what `update` makes of the one there now, holding its lock
   * meanwhile: another command may be adding to the layout at the same time, and without the lock one
   * of two read-merge-renames would drop the other's entries.
   */
  async updateIndex(update: (previous: LayoutIndex) => Buffer, signal: AbortSignal): Promise<void> {
    const release = await lockIndex(this.dest, signal);
    try {
      // Read (and checked) again under the lock: another command may have added to it meanwhile.
      const index = update(await readLayoutIndex(this.dest));
      // Replaced last, in one rename: until then readers see the previous, complete layout.
      await writeFileAtomically(join(this.dest, "index.json"), `${this.dest}/index.json`, [index]);
    } finally {
      await release();
    }
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

  streamLayer(signal: AbortSignal): LayerConsumer {
    // The directory is checked and made before any work is spent: the build waits for `ready` before it
    // packs, so a refused dest fails it at once. When another output sharing the spool takes the stream,
    // this consumer is there only for that wait.
    const prepared = this.layout.prepare();
    prepared.catch(() => undefined);
    const consumer = this.collected.streamLayer(signal);
    return {
      ready: Promise.all([consumer?.ready, prepared]).then(() => undefined),
      write: async (chunk, release) => (consumer === undefined ? release() : consumer.write(chunk, release)),
      end: () => consumer?.end(),
      abort: (error) => consumer?.abort(error),
    };
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
    if (!this.layout.hasLayoutFile) {
      await writeFileAtomically(join(dest, "oci-layout"), `${dest}/oci-layout`, [OCI_LAYOUT_FILE]);
    }
    await this.layout.updateIndex(({ manifests, document }) => indexJson(files, manifests, document), signal);
    this.layout.keep();
    return {
      destination: this.destination,
      id: files.top.digest,
      tags: refNamesOf(tags),
      descriptor: files.top,
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
