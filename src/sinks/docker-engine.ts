/**
 * The Docker Engine as a destination, by three paths:
 * - load (default): our own config in a docker-archive loaded by `POST /images/load`; exact `created`,
 *   platform and a reproducible image ID (on the classic store, the layer goes ahead by import);
 * - import: the layer streamed into `POST /images/create?fromSrc=-` while it is packed; the engine stamps
 *   `created` itself and engines before API 1.42 record their own architecture (refused, see
 *   {@link IMPORT_PLATFORM_HINT});
 * - build: a `FROM scratch` context posted to `POST /build`.
 *
 * Every path creates the image untagged, checks it, and only then tags it, so a failure never leaves a
 * tag pointing at a half-made image.
 */
import { Readable } from "node:stream";
import { SinkError } from "../errors.js";
import type { EngineClient } from "../docker/engine.js";
import type { Query } from "../docker/transport.js";
import { messageText, readEngineMessages, type EngineMessage } from "../docker/ndjson.js";
import { configToInstructions } from "../image/config.js";
import { imageId, type Image } from "../image/image.js";
import { formatPlatform, platformsMatch, type Platform } from "../image/platform.js";
import type { Layer } from "../image/layer.js";
import { uncompressedManifest } from "../image/manifest.js";
import { formatReference, repositoryOf, type Reference } from "../image/reference.js";
import type { ProgressListener } from "../progress.js";
import { bytesEntry, type TarEntry } from "../tar/entry.js";
import { packTar } from "../tar/pack.js";
import { dockerArchiveEntries } from "./docker-archive.js";
import type { LayerConsumer, Sink, SinkResult } from "./sink.js";

export type EngineVia = "load" | "import" | "build";

export interface DockerEngineSinkOptions {
  readonly engine: EngineClient;
  readonly tags: readonly (Reference & { readonly tag: string })[];
  readonly onProgress: ProgressListener;
  /** `docker import -m`: the history comment (import path only; the other paths carry it in history). */
  readonly message?: string;
}

/** Tags `id` with every reference; if one fails, the tags made so far are removed again. */
async function tagAll(
  engine: EngineClient,
  id: string,
  tags: DockerEngineSinkOptions["tags"],
): Promise<string[]> {
  const done: string[] = [];
  try {
    for (const tag of tags) {
      await engine.tagImage(id, repositoryOf(tag), tag.tag);
      done.push(formatReference(tag));
    }
  } catch (error) {
    for (const name of done) await engine.removeImage(name).catch(() => undefined);
    throw error;
  }
  return done;
}

function logMessage(onProgress: ProgressListener): (message: EngineMessage) => void {
  return (message) => {
    const text = messageText(message);
    if (text !== undefined) onProgress({ kind: "log", source: "engine", line: text });
  };
}

/**
 * POSTs the tar of `entries` to `path` and reads the engine's whole reply. The request is destroyed if
 * packing fails or the reply reports an error; if `signal` aborts, only while the body is being sent
 * when `untilSent` (the engine's `postTar` says why).
 */
async function postEntries(
  engine: EngineClient,
  path: string,
  query: Query,
  entries: readonly TarEntry[],
  what: string,
  signal: AbortSignal,
  onProgress: ProgressListener,
  untilSent = false,
): Promise<EngineMessage[]> {
  const controller = new AbortController();
  const linked = AbortSignal.any([signal, controller.signal]);
  const body = Readable.from(packTar(entries, { signal: linked }), { objectMode: false });
  const response = await engine.postTar(path, query, body, linked, untilSent);
  try {
    return await readEngineMessages(response, what, logMessage(onProgress));
  } catch (error) {
    controller.abort(error);
    throw error;
  }
}

/**
 * One upload of a layer to `POST /images/create?fromSrc=-`, streamed while the layer is packed. The engine
 * makes an image of it, stamped with its own `created`.
 */
class LayerImport {
  private readonly controller = new AbortController();
  private readonly response: Promise<Readable>;
  readonly consumer: LayerConsumer;
  /** Bytes written into the request and not yet handed to the socket. */
  private queued = 0;
  /** Wakes a writer waiting for {@link queued} to fall. */
  private sent: () => void = () => undefined;
  /** The layer was all written: the engine makes an image of it, whatever becomes of the build. */
  ended = false;
  /** {@link finish} or {@link discard} reads the reply: the other must not. */
  private replyTaken = false;

  constructor(
    private readonly engine: EngineClient,
    query: Query,
    private readonly signal: AbortSignal,
    private readonly onProgress: ProgressListener,
  ) {
    const linked = AbortSignal.any([signal, this.controller.signal]);
    const { body, response } = engine.uploadTar("/images/create", { ...query, fromSrc: "-" }, linked);
    // A refusal (bad request, engine gone) must also stop the writer waiting for the socket.
    const failed = response.then(
      () => new Promise<never>(() => {}),
      (error: unknown) => Promise.reject(error),
    );
    failed.catch(() => undefined);
    this.response = response;
    // Not `once(body, "close")`, which rejects with the socket's raw error: the reply words that one.
    const closed = new Promise<"closed">((resolve) => body.once("close", () => resolve("closed")));
    // The request is gone (the engine hung up or refused): its reply says why, in the engine's words.
    const stopped = async (): Promise<never> => {
      await readEngineMessages(await response, "importing the image");
      throw new SinkError("the Docker Engine stopped reading the import before the layer was complete", {
        hint: "Check that the engine is still running (`docker version`) and run again.",
      });
    };
    this.consumer = {
      write: async (chunk, release) => {
        if (body.destroyed) await stopped();
        this.queued += chunk.length;
        body.write(chunk, (error) => {
          this.queued -= chunk.length;
          // On the socket: the chunk's buffer may be filled again. Not after an error: it may still be queued.
          if (error === null || error === undefined) release();
          this.sent();
        });
        while (this.queued > UPLOAD_QUEUE_BYTES) {
          const sent = new Promise<"sent">((resolve) => (this.sent = () => resolve("sent")));
          if ((await Promise.race([sent, closed, failed])) === "closed") await stopped();
        }
      },
      end: () => {
        this.ended = true;
        body.end();
      },
      abort: (error) => {
        this.controller.abort(error);
        body.destroy();
      },
    };
  }

  /**
   * Waits for the engine to finish and returns the ID of the image it made, once its only layer is
   * known to be `diffId` and its platform `platform` (when the image is the result, not a carrier of
   * its layer); otherwise the image is removed again.
   */
  async finish(diffId: string | undefined, platform?: Platform): Promise<string> {
    this.replyTaken = true;
    let messages: EngineMessage[];
    try {
      messages = await readEngineMessages(
        await this.response,
        "importing the image",
        logMessage(this.onProgress),
      );
    } catch (error) {
      this.controller.abort(error);
      throw error;
    }
    const id = importedId(messages);
    if (id === undefined)
      throw new SinkError("the Docker Engine finished the import without naming an image");
    // The engine's tar reader accepts a body that stops at any block boundary, so a short upload could
    // still become an image: compare the layer it made with the one we packed before using it.
    const made = await this.engine.inspectImage(id);
    if (made === undefined || made.diffIds.length !== 1 || made.diffIds[0] !== diffId) {
      await this.engine.removeImage(id).catch(() => undefined);
      throw new SinkError(
        `the Docker Engine imported a layer ${made?.diffIds.join(",") ?? "(none)"} that differs from the one mkbase packed (${diffId}); the image was removed`,
        { hint: "Run again; if it repeats, the engine or a proxy in between altered the upload." },
      );
    }
    // Engines before API 1.42 (Docker 23) take only the OS from the platform and record their own
    // architecture: an image that claims the wrong one is worse than none.
    if (platform !== undefined && !platformsMatch(made.platform, platform)) {
      await this.engine.removeImage(id).catch(() => undefined);
      throw new SinkError(
        `the Docker Engine recorded the imported image as ${formatPlatform(made.platform)}, not ${formatPlatform(platform)}; the image was removed`,
        { hint: IMPORT_PLATFORM_HINT },
      );
    }
    // Interrupted once the layer was sent: the reply was awaited so that the image can go again.
    if (this.signal.aborted) {
      await this.engine.removeImage(id).catch(() => undefined);
      this.signal.throwIfAborted();
    }
    return id;
  }

  /**
   * For a build that failed or was interrupted after the layer was all sent, before {@link finish}: waits
   * for the engine's reply and removes the image it made, which nothing else would, untagged as it is.
   * Never throws.
   */
  async discard(): Promise<void> {
    if (!this.ended || this.replyTaken) return;
    this.replyTaken = true;
    const id = await this.response
      .then(async (response) => importedId(await readEngineMessages(response, "importing the image")))
      .catch(() => undefined);
    if (id !== undefined) await this.engine.removeImage(id).catch(() => undefined);
  }
}

/** The ID of the image an import made, which the engine's last status line names. */
function importedId(messages: readonly EngineMessage[]): string | undefined {
  return [...messages]
    .reverse()
    .map((m) => /^(sha256:[0-9a-f]{64})$/.exec(m.status?.trim() ?? "")?.[1])
    .find((found) => found !== undefined);
}

/**
 * Bytes queued for the engine's socket before a write waits. The engine takes the layer at tens of MB/s:
 * two or three packer chunks queued keep it fed while the next is packed; more only add to the peak
 * memory (8 MiB cost 20 MiB of RSS).
 */
const UPLOAD_QUEUE_BYTES = 2 * 1024 * 1024;

/**
 * Layers up to this size are held in memory and sent inside the archive, in one request. For a small
 * layer the import path's extra requests (import, inspect, remove) cost more than the engine's copy of
 * the archive: a static binary of 1 MB loads in 110 ms this way, 140 ms the other.
 */
const SMALL_LAYER_BYTES = 16 * 1024 * 1024;

/**
 * `docker load` of a docker-archive we write ourselves: our config, so exact `created`, platform and a
 * reproducible image ID.
 *
 * On the classic image store a layer larger than {@link SMALL_LAYER_BYTES} takes the import path while
 * it is packed, and the archive then holds only the config: the engine finds the layer by its DiffID and
 * does not unpack anything again. This saves the spooled copy of the layer and the engine's own copy of
 * the whole archive, which it writes to disk before it reads any of it. The imported image only carries
 * the layer until the loaded one holds it, and is removed. The containerd store needs every blob in the
 * archive, so there the layer is spooled and sent with it.
 */
export class DockerLoadSink implements Sink {
  readonly destination = "docker (load)";
  readonly needsLayerFile: boolean;
  private upload: LayerImport | undefined;
  /** The whole layer, while it is small enough to go inside the archive. */
  private held: Buffer[] | undefined;

  constructor(private readonly options: DockerEngineSinkOptions) {
    // Only a store known to be the classic one finds a layer by its DiffID; any other needs the blob.
    this.needsLayerFile = options.engine.imageStore !== "classic";
  }

  streamLayer(signal: AbortSignal): LayerConsumer | undefined {
    if (this.needsLayerFile) return undefined;
    const { engine, onProgress } = this.options;
    onProgress({ kind: "phase", message: `loading into the Docker Engine at ${engine.endpoint}` });
    const held: Buffer[] = [];
    let heldBytes = 0;
    this.held = held;
    return {
      // A held chunk is never released: it goes into the archive, or once, early, into the import.
      write: async (chunk, release) => {
        if (this.upload !== undefined) return this.upload.consumer.write(chunk, release);
        held.push(chunk);
        heldBytes += chunk.length;
        if (heldBytes <= SMALL_LAYER_BYTES) return;
        // Too large to hold: the import starts with what was held and takes the rest as it comes.
        this.held = undefined;
        // The engine's lines about the imported image would name an ID the user never gets: not shown.
        this.upload = new LayerImport(engine, {}, signal, () => undefined);
        for (const early of held.splice(0)) await this.upload.consumer.write(early, () => undefined);
      },
      end: () => this.upload?.consumer.end(),
      abort: (error) => this.upload?.consumer.abort(error),
    };
  }

  async write(image: Image, signal: AbortSignal): Promise<SinkResult> {
    const { engine, onProgress } = this.options;
    let id = imageId(image);
    if (this.upload !== undefined) {
      const carrier = await this.upload.finish(image.layers[0]?.diffId);
      try {
        await this.load(image, id, false, signal, (await engine.inspectImage(id)) !== undefined);
      } finally {
        await engine.removeImage(carrier).catch(() => undefined);
      }
    } else if (this.held !== undefined) {
      if ((await engine.inspectImage(id)) !== undefined) {
        // The ID is the digest of the config, which names every layer by its digest: an image the engine
        // holds under it is this very image, so a rebuild of unchanged input only adds the tags. (Checked
        // for a held layer only: a streamed one has been sent by the time its ID is known.)
        onProgress({
          kind: "phase",
          message: `the Docker Engine already holds ${id.slice(0, 19)}…: tagging it`,
        });
      } else {
        const chunks = this.held;
        const layers = image.layers.map((layer) => ({
          ...layer,
          open: async function* () {
            yield* chunks;
          },
        }));
        await this.load({ ...image, layers }, id, true, signal, false);
      }
    } else {
      onProgress({ kind: "phase", message: `loading into the Docker Engine at ${engine.endpoint}` });
      // The containerd store names an image by what the archive's index.json points at, the manifest
      // (moby prints the target's digest); the classic store by its config.
      if (engine.imageStore === "containerd") id = uncompressedManifest(image).manifest.descriptor.digest;
      id = await this.load(image, id, true, signal, (await engine.inspectImage(id)) !== undefined);
    }
    return {
      destination: this.destination,
      id,
      tags: await tagAll(engine, id, this.options.tags),
    };
  }

  /** The image the layer's import made, when the build failed before {@link write} could use it. */
  async discard(): Promise<void> {
    await this.upload?.discard();
  }

  /**
   * Loads `image` (whose ID in the engine's store is `expected`), with or without its layers, checks the
   * ID loaded and returns it. An interrupt that comes once the archive is sent waits for the engine,
   * which makes the image anyway, and removes it again unless the engine held it before (`existed`).
   */
  private async load(
    image: Image,
    expected: string,
    withLayers: boolean,
    signal: AbortSignal,
    existed: boolean,
  ): Promise<string> {
    const { engine, onProgress } = this.options;
    const messages = await postEntries(
      engine,
      "/images/load",
      { quiet: true },
      dockerArchiveEntries(image, [], { withLayers }),
      "loading the image",
      signal,
      onProgress,
      true,
    );
    const loaded = messages
      .map((m) => /Loaded image ID: (sha256:[0-9a-f]{64})/.exec(m.stream ?? "")?.[1])
      .find((id) => id !== undefined);
    if (signal.aborted) {
      if (!existed && loaded !== undefined) await engine.removeImage(loaded).catch(() => undefined);
      signal.throwIfAborted();
    }
    // Either digest names this very image. Which one the engine gives depends on its store, which is
    // only assumed when the engine refused /info (as an authorization plugin may): a classic one then
    // still answers with the config's.
    const ours = [imageId(image), uncompressedManifest(image).manifest.descriptor.digest];
    if (loaded === undefined || !ours.includes(loaded)) {
      throw new SinkError(`the Docker Engine loaded ${loaded ?? "no image"} but mkbase built ${expected}`, {
        hint: "The engine rewrote the image; report this with `docker version` output.",
      });
    }
    // From Docker 27.2 the containerd store reports a layer it could not unpack (a full disk, a
    // snapshotter's refusal) on a line of its own, after the ID, and the load still succeeds, where the
    // classic store fails it. Tagged, the image would fail at `docker run`, which unpacks it again.
    const unpacking = messages
      .map((m) => m.stream ?? "")
      .find((line) => line.startsWith("Error unpacking image"));
    if (unpacking !== undefined) {
      throw new SinkError(`the Docker Engine could not unpack the loaded image: ${unpacking.trim()}`, {
        hint: "The image is left untagged. Check the engine's disk space and log (`docker info`), and run again.",
      });
    }
    return loaded;
  }
}

/** What to do when the import endpoint cannot record the image's platform. */
export const IMPORT_PLATFORM_HINT =
  "Use the default --via load, which records any platform (the import endpoint follows --platform from Docker 23 on).";

/** `docker import`: the layer goes to the engine while it is packed. */
export class DockerImportSink implements Sink {
  readonly destination = "docker (import)";
  readonly needsLayerFile = false;
  private upload: LayerImport | undefined;
  /** Why the platform check refused the import, once it has. */
  private refusal: { readonly error: unknown } | undefined;

  constructor(
    private readonly options: DockerEngineSinkOptions & {
      readonly changes: readonly string[];
      readonly platform: string;
      /**
       * Rejects when the engine cannot record the image's platform. The upload does not wait for it (on
       * Docker 20.10 `/version` takes 10–60 ms, the whole of an empty import's difference from `docker
       * import`): a refusal stops the upload, and once the layer is complete the check of the image the
       * engine made decides.
       */
      readonly platformCheck?: Promise<void>;
    },
  ) {
    // A build that fails before its upload starts never asks why the check failed.
    options.platformCheck?.catch(() => undefined);
  }

  streamLayer(signal: AbortSignal): LayerConsumer {
    const { engine, onProgress, changes, message, platform, platformCheck } = this.options;
    onProgress({ kind: "phase", message: `importing into the Docker Engine at ${engine.endpoint}` });
    const upload = new LayerImport(engine, { changes, message, platform }, signal, onProgress);
    this.upload = upload;
    platformCheck?.catch((error: unknown) => {
      this.refusal = { error };
      // A complete body may already be an image: finish() removes it, and reports this refusal.
      if (!upload.ended) upload.consumer.abort(error);
    });
    return {
      ...upload.consumer,
      write: async (chunk, release) => {
        try {
          await upload.consumer.write(chunk, release);
        } catch (error) {
          throw this.refusal?.error ?? error;
        }
      },
    };
  }

  async write(image: Image, signal: AbortSignal): Promise<SinkResult> {
    if (this.upload === undefined) throw new Error("import sink written before its layer was streamed");
    // Settled long before the upload is, in practice; its refusal words a mismatch better than finish().
    await this.options.platformCheck?.catch(() => undefined);
    let id: string;
    try {
      id = await this.upload.finish(image.layers[0]?.diffId, image.platform);
    } catch (error) {
      throw this.refusal?.error ?? error;
    }
    signal.throwIfAborted();
    return {
      destination: this.destination,
      id,
      tags: await tagAll(this.options.engine, id, this.options.tags),
    };
  }

  /** The image the engine made, when the build failed before {@link write} could check and tag it. */
  async discard(): Promise<void> {
    await this.upload?.discard();
  }
}

/**
 * A `FROM scratch` build context: a Dockerfile that `ADD`s `rootfs.tar` (the image's one layer, which
 * `ADD` unpacks) and gives the config as instructions.
 */
export function buildContext(image: Image): {
  readonly dockerfile: Buffer;
  readonly rootfs: Layer & { readonly open: () => AsyncIterable<Buffer> };
} {
  const rootfs = image.layers[0];
  if (rootfs?.open === undefined || image.layers.length !== 1)
    throw new Error("a build context needs one re-openable layer");
  const dockerfile = Buffer.from(
    ["FROM scratch", "ADD rootfs.tar /", ...configToInstructions(image.config), ""].join("\n"),
  );
  return { dockerfile, rootfs: { ...rootfs, open: rootfs.open } };
}

/** The build context as tar entries, for the engine's build endpoint. */
function buildContextEntries(image: Image): TarEntry[] {
  const { dockerfile, rootfs } = buildContext(image);
  return [
    bytesEntry("Dockerfile", dockerfile, 0o644, image.created),
    {
      path: Buffer.from("rootfs.tar"),
      type: "file",
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtime: image.created,
      size: rootfs.size,
      content: { kind: "stream", chunks: rootfs.open() },
    },
  ];
}

/** `docker build` of a `FROM scratch` context. */
export class DockerBuildSink implements Sink {
  readonly destination = "docker (build)";
  readonly needsLayerFile = true;

  constructor(private readonly options: DockerEngineSinkOptions & { readonly platform: string }) {}

  async write(image: Image, signal: AbortSignal): Promise<SinkResult> {
    const { engine, onProgress } = this.options;
    onProgress({ kind: "phase", message: `building in the Docker Engine at ${engine.endpoint}` });
    const query = { rm: true, forcerm: true, platform: this.options.platform };
    const messages = await postEntries(
      engine,
      "/build",
      query,
      buildContextEntries(image),
      "building the image",
      signal,
      onProgress,
    );
    const id = [...messages].reverse().find((m) => m.aux?.ID !== undefined)?.aux?.ID;
    if (id === undefined) throw new SinkError("the Docker Engine finished the build without naming an image");
    return { destination: this.destination, id, tags: await tagAll(engine, id, this.options.tags) };
  }
}
