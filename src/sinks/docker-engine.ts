/**
 * The Docker Engine as a destination, by three paths:
 * - load (default): our own config and a docker-archive streamed into `POST /images/load`; exact
 *   `created`, platform and a reproducible image ID;
 * - import: the layer streamed into `POST /images/create?fromSrc=-` while it is packed; the engine stamps
 *   `created` itself and older engines ignore the platform;
 * - build: a `FROM scratch` context posted to `POST /build`.
 *
 * Every path creates the image untagged, checks it, and only then tags it, so a failure never leaves a
 * tag pointing at a half-made image.
 */
import { once } from "node:events";
import { PassThrough, Readable } from "node:stream";
import { SinkError } from "../errors.js";
import type { EngineClient } from "../docker/engine.js";
import { messageText, readEngineMessages, type EngineMessage } from "../docker/ndjson.js";
import { configToInstructions } from "../image/config.js";
import { imageId, type Image } from "../image/image.js";
import { formatReference, repositoryOf, type Reference } from "../image/reference.js";
import type { ProgressListener } from "../progress.js";
import type { TarEntry } from "../tar/entry.js";
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

/** Streams the tar of `entries` as a request body; the request is destroyed if packing fails. */
function tarBody(entries: readonly TarEntry[], signal: AbortSignal): Readable {
  return Readable.from(packTar(entries, { signal }), { objectMode: false });
}

/** `docker load` of a docker-archive we write ourselves. */
export class DockerLoadSink implements Sink {
  readonly destination = "docker (load)";
  readonly needsLayerFile = true;

  constructor(private readonly options: DockerEngineSinkOptions) {}

  async write(image: Image, signal: AbortSignal): Promise<SinkResult> {
    const { engine, onProgress } = this.options;
    const expected = imageId(image);
    onProgress({ kind: "phase", message: `loading into the Docker Engine at ${engine.endpoint}` });
    const controller = new AbortController();
    const linked = AbortSignal.any([signal, controller.signal]);
    const body = tarBody(dockerArchiveEntries(image, []), linked);
    const response = await engine.postTar("/images/load", { quiet: true }, body, linked);
    let messages: EngineMessage[];
    try {
      messages = await readEngineMessages(response, "loading the image", logMessage(onProgress));
    } catch (error) {
      controller.abort(error);
      throw error;
    }
    const loaded = messages
      .map((m) => /Loaded image ID: (sha256:[0-9a-f]{64})/.exec(m.stream ?? "")?.[1])
      .find((id) => id !== undefined);
    if (loaded !== expected) {
      throw new SinkError(`the Docker Engine loaded ${loaded ?? "no image"} but mkbase built ${expected}`, {
        hint: "The engine rewrote the image; report this with `docker version` output.",
      });
    }
    return {
      destination: this.destination,
      id: expected,
      tags: await tagAll(engine, expected, this.options.tags),
    };
  }
}

/** `docker import`: the layer goes to the engine while it is packed. */
export class DockerImportSink implements Sink {
  readonly destination = "docker (import)";
  readonly needsLayerFile = false;
  private response: Promise<Readable> | undefined;
  private readonly controller = new AbortController();

  constructor(
    private readonly options: DockerEngineSinkOptions & {
      readonly changes: readonly string[];
      readonly platform: string;
    },
  ) {}

  streamLayer(signal: AbortSignal): LayerConsumer {
    const { engine } = this.options;
    const body = new PassThrough({ highWaterMark: 8 * 1024 * 1024 });
    const linked = AbortSignal.any([signal, this.controller.signal]);
    const query: Record<string, unknown> = {
      fromSrc: "-",
      changes: this.options.changes,
      message: this.options.message,
      platform: this.options.platform,
    };
    this.options.onProgress({
      kind: "phase",
      message: `importing into the Docker Engine at ${engine.endpoint}`,
    });
    const response = engine.postTar("/images/create", query, body, linked);
    // A refusal (bad request, engine gone) must also stop the writer waiting for 'drain'.
    const failed = response.then(
      () => new Promise<never>(() => {}),
      (error: unknown) => Promise.reject(error),
    );
    failed.catch(() => undefined);
    this.response = response;
    const closed = once(body, "close").then(() => "closed" as const);
    closed.catch(() => undefined);
    return {
      write: async (chunk) => {
        if (body.write(chunk)) return;
        if ((await Promise.race([once(body, "drain"), closed, failed])) !== "closed") return;
        // The engine stopped reading: its reply says why (it throws with the engine's own words).
        await readEngineMessages(await response, "importing the image");
        throw new SinkError("the Docker Engine stopped reading the import before the layer was complete", {
          hint: "Check that the engine is still running (`docker version`) and run again.",
        });
      },
      end: () => body.end(),
      abort: (error) => {
        this.controller.abort(error);
        body.destroy();
      },
    };
  }

  async write(image: Image, signal: AbortSignal): Promise<SinkResult> {
    const { engine, onProgress } = this.options;
    if (this.response === undefined) throw new Error("import sink written before its layer was streamed");
    const layer = image.layers[0];
    let messages: EngineMessage[];
    try {
      messages = await readEngineMessages(await this.response, "importing the image", logMessage(onProgress));
    } catch (error) {
      this.controller.abort(error);
      throw error;
    }
    const id = [...messages]
      .reverse()
      .map((m) => /^(sha256:[0-9a-f]{64})$/.exec(m.status?.trim() ?? "")?.[1])
      .find((found) => found !== undefined);
    if (id === undefined)
      throw new SinkError("the Docker Engine finished the import without naming an image");
    signal.throwIfAborted();
    // The engine's tar reader accepts a body that stops at any block boundary, so a short upload could
    // still become an image: compare the layer it made with the one we packed before tagging.
    const made = await engine.inspectImage(id);
    if (made === undefined || made.diffIds.length !== 1 || made.diffIds[0] !== layer?.diffId) {
      await engine.removeImage(id).catch(() => undefined);
      throw new SinkError(
        `the Docker Engine imported a layer ${made?.diffIds.join(",") ?? "(none)"} that differs from the one mkbase packed (${layer?.diffId}); the image was removed`,
        { hint: "Run again; if it repeats, the engine or a proxy in between altered the upload." },
      );
    }
    return { destination: this.destination, id, tags: await tagAll(engine, id, this.options.tags) };
  }
}

/** A `FROM scratch` build context: Dockerfile plus the rootfs tar, which `ADD` unpacks. */
export function buildContextEntries(image: Image): TarEntry[] {
  const layer = image.layers[0];
  if (layer?.open === undefined || image.layers.length !== 1)
    throw new Error("a build context needs one re-openable layer");
  const dockerfile = Buffer.from(
    ["FROM scratch", "ADD rootfs.tar /", ...configToInstructions(image.config), ""].join("\n"),
  );
  const base = { type: "file" as const, mode: 0o644, uid: 0, gid: 0, mtime: image.created };
  return [
    {
      ...base,
      path: Buffer.from("Dockerfile"),
      size: dockerfile.length,
      content: { kind: "bytes", data: dockerfile },
    },
    {
      ...base,
      path: Buffer.from("rootfs.tar"),
      size: layer.size,
      content: { kind: "stream", chunks: layer.open() },
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
    const controller = new AbortController();
    const linked = AbortSignal.any([signal, controller.signal]);
    const body = tarBody(buildContextEntries(image), linked);
    const query = { rm: true, forcerm: true, platform: this.options.platform };
    const response = await engine.postTar("/build", query, body, linked);
    let messages: EngineMessage[];
    try {
      messages = await readEngineMessages(response, "building the image", logMessage(onProgress));
    } catch (error) {
      controller.abort(error);
      throw error;
    }
    const id = [...messages].reverse().find((m) => m.aux?.ID !== undefined)?.aux?.ID;
    if (id === undefined) throw new SinkError("the Docker Engine finished the build without naming an image");
    return { destination: this.destination, id, tags: await tagAll(engine, id, this.options.tags) };
  }
}
