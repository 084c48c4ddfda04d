import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, Readable } from "node:stream";
import { describe, it } from "node:test";
import { build, type BuildRequest } from "../../src/build.js";
import {
  connectEngine,
  imageStoreOf,
  type EngineClient,
  type ImageStore,
  type ImageSummary,
} from "../../src/docker/engine.js";
import type { DiscoveryEnvironment } from "../../src/docker/connection.js";
import { InterruptedError, SinkError, UsageError } from "../../src/errors.js";
import { LAST_RFC3339_SECOND, type Image } from "../../src/image/image.js";
import { parseTagReference } from "../../src/image/reference.js";
import type { ProgressEvent } from "../../src/progress.js";
import { dockerArchiveEntries } from "../../src/sinks/docker-archive.js";
import { DockerImportSink, DockerLoadSink } from "../../src/sinks/docker-engine.js";
import type { LayerConsumer, Sink } from "../../src/sinks/sink.js";
import { uncompressedManifest } from "../../src/image/manifest.js";
import type { EntrySource, TarEntry } from "../../src/tar/entry.js";

const AMD64 = { os: "linux", architecture: "amd64" };

/** A narrow fake of the engine: records calls, answers with scripted ndjson. */
class FakeEngine implements EngineClient {
  readonly endpoint = "fake://engine";
  readonly apiVersion = "1.41";
  readonly calls: string[] = [];
  received = Buffer.alloc(0);
  /** The body of the latest POST to each path. */
  readonly bodies = new Map<string, Buffer>();
  constructor(
    private readonly reply: (body: Buffer, path: string) => object[],
    private readonly inspected: (id: string) => ImageSummary | undefined = () => undefined,
    private readonly failTagAt = -1,
    readonly imageStore: ImageStore | undefined = "containerd",
  ) {}

  async postTar(path: string, _query: Record<string, unknown>, body: Readable): Promise<Readable> {
    this.calls.push(`post ${path}`);
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    this.received = Buffer.concat(chunks);
    this.bodies.set(path, this.received);
    return Readable.from(this.reply(this.received, path).map((line) => `${JSON.stringify(line)}\n`));
  }
  uploadTar(path: string, query: Record<string, unknown>) {
    const body = new PassThrough();
    return { body, response: this.postTar(path, query, body) };
  }
  async inspectImage(id: string) {
    this.calls.push(`inspect ${id}`);
    return this.inspected(id);
  }
  async tagImage(id: string, repository: string, tag: string) {
    if (this.calls.filter((c) => c.startsWith("tag")).length === this.failTagAt)
      throw new SinkError("tag refused");
    this.calls.push(`tag ${id} ${repository}:${tag}`);
  }
  async removeImage(id: string) {
    this.calls.push(`remove ${id}`);
  }
  async enginePlatform() {
    return AMD64;
  }
  close() {
    this.calls.push("close");
  }
}

const entries: TarEntry[] = [
  { path: Buffer.from("etc"), type: "directory", mode: 0o755, uid: 0, gid: 0, mtime: 100, size: 0 },
  {
    path: Buffer.from("etc/x"),
    type: "file",
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime: 200,
    size: 2,
    content: { kind: "bytes", data: Buffer.from("hi") },
  },
];
const source: EntrySource = { description: "test entries", entries: () => entries };

/** A tree whose layer is larger than the load sink holds in memory (16 MiB). */
const largeSource: EntrySource = {
  description: "a large file",
  entries: () => [
    {
      path: Buffer.from("large"),
      type: "file",
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtime: 300,
      size: 17 * 1024 * 1024,
      content: { kind: "bytes", data: Buffer.alloc(17 * 1024 * 1024, "layer") },
    },
  ],
};

function request(sink: BuildRequest["sinks"][number], from: EntrySource = source): BuildRequest {
  return {
    source: from,
    epoch: { kind: "newest-input" },
    platform: { os: "linux", architecture: "amd64" },
    config: {},
    createdBy: "mkbase test",
    sinks: [sink],
    signal: new AbortController().signal,
    onProgress: () => {},
  };
}

/** A sink that only reports, to learn the image ID a build computes before the fake engine answers with it. */
const probeSink = {
  destination: "probe",
  needsLayerFile: false,
  write: async () => ({ destination: "probe", id: "", tags: [] }),
};

const tags = [parseTagReference("corp/x:1"), parseTagReference("corp/x:2")];

/**
 * The ID an engine with `store` prints for the loaded test image: the config's digest in the classic
 * store, the manifest's (the target of index.json) in the containerd store.
 */
async function loadedId(store: ImageStore | undefined): Promise<string> {
  const probe = await build(request(probeSink));
  return store === "classic" ? probe.imageId : uncompressedManifest(probe.image).manifest.descriptor.digest;
}
const sha = (data: Buffer): string => `sha256:${createHash("sha256").update(data).digest("hex")}`;

describe("DockerLoadSink on the containerd image store", () => {
  it("refuses to tag when the engine loaded a different image ID", async () => {
    const engine = new FakeEngine(() => [{ stream: `Loaded image ID: sha256:${"0".repeat(64)}\n` }]);
    await assert.rejects(
      build(request(new DockerLoadSink({ engine, tags, onProgress: () => {} }))),
      SinkError,
    );
    assert.ok(!engine.calls.some((c) => c.startsWith("tag")), "nothing was tagged");
  });

  it("tags every reference when the engine loaded our image, which it names by its manifest", async () => {
    const engine = new FakeEngine(() => [{ stream: `Loaded image ID: ${loaded}\n` }]);
    let loaded = "";
    const sink = new DockerLoadSink({ engine, tags, onProgress: () => {} });
    loaded = await loadedId(engine.imageStore);
    const result = await build(request(sink));
    assert.equal(result.results[0]?.id, loaded);
    assert.notEqual(loaded, result.imageId, "the store's ID is not the config digest");
    assert.deepEqual(result.results[0]?.tags, ["corp/x:1", "corp/x:2"]);
    assert.equal(result.epoch, 200, "the epoch defaults to the newest mtime");
    assert.ok(engine.received.includes(Buffer.from("manifest.json")), "a docker-archive was sent");
  });

  it("takes the config's digest from an engine whose store was only assumed, as a classic one gives it", async () => {
    // An engine that refused /info is taken for a containerd one (see "falls back to the full-archive load").
    const probe = await build(request(probeSink));
    const engine = new FakeEngine(() => [{ stream: `Loaded image ID: ${probe.imageId}\n` }]);
    const result = await build(request(new DockerLoadSink({ engine, tags, onProgress: () => {} })));
    assert.equal(result.results[0]?.id, probe.imageId);
    assert.deepEqual(engine.calls.slice(-2), [
      `tag ${probe.imageId} corp/x:1`,
      `tag ${probe.imageId} corp/x:2`,
    ]);
  });

  it("tags nothing when the engine loaded the image but could not unpack it", async () => {
    let loaded = "";
    const engine = new FakeEngine(() => [
      { stream: `Loaded image ID: ${loaded}\n` },
      { stream: `Error unpacking image ${loaded}: failed to extract layer: no space left on device\n` },
    ]);
    loaded = await loadedId(engine.imageStore);
    await assert.rejects(build(request(new DockerLoadSink({ engine, tags, onProgress: () => {} }))), {
      name: "SinkError",
      message: /could not unpack the loaded image: .*no space left on device/,
    });
    assert.ok(!engine.calls.some((c) => c.startsWith("tag")));
  });

  it("turns an engine error line into a SinkError without tagging", async () => {
    const engine = new FakeEngine(() => [
      { status: "Loading" },
      { errorDetail: { message: "no space left on device" }, error: "no space" },
    ]);
    await assert.rejects(
      build(request(new DockerLoadSink({ engine, tags, onProgress: () => {} }))),
      /no space left on device/,
    );
    assert.ok(!engine.calls.some((c) => c.startsWith("tag")));
  });

  it("removes the tags it made when a later tag fails", async () => {
    let loaded = "";
    const engine = new FakeEngine(() => [{ stream: `Loaded image ID: ${loaded}\n` }], undefined, 1);
    loaded = await loadedId(engine.imageStore);
    await assert.rejects(
      build(request(new DockerLoadSink({ engine, tags, onProgress: () => {} }))),
      /tag refused/,
    );
    assert.ok(engine.calls.includes("remove corp/x:1"));
  });
});

describe("DockerLoadSink on the classic image store", () => {
  const carrier = `sha256:${"d".repeat(64)}`;
  /** An engine that imports any layer as `carrier` and loads whatever image ID `loaded()` says. */
  function classicEngine(loaded: () => string, loadError?: string): FakeEngine {
    let diffId = "";
    /** The images the engine has made so far: inspect finds only these. */
    const held = new Set<string>();
    return new FakeEngine(
      (body, path) => {
        if (path === "/images/create") {
          diffId = sha(body);
          held.add(carrier);
          return [{ status: carrier }];
        }
        if (loadError !== undefined) return [{ errorDetail: { message: loadError } }];
        held.add(loaded());
        return [{ stream: `Loaded image ID: ${loaded()}\n` }];
      },
      (asked) =>
        held.has(asked) ? { id: asked, diffIds: [diffId], platform: AMD64, repoTags: [] } : undefined,
      -1,
      "classic",
    );
  }

  it("loads a small layer inside the archive, in one request", async () => {
    const probe = await build(request(probeSink));
    const engine = classicEngine(() => probe.imageId);
    const result = await build(request(new DockerLoadSink({ engine, tags, onProgress: () => {} })));
    assert.equal(result.results[0]?.id, probe.imageId);
    assert.deepEqual(engine.calls, [
      `inspect ${probe.imageId}`,
      "post /images/load",
      `tag ${probe.imageId} corp/x:1`,
      `tag ${probe.imageId} corp/x:2`,
    ]);
    const archive = engine.bodies.get("/images/load") as Buffer;
    assert.ok(archive.includes(Buffer.from(`blobs/sha256/${result.diffId.slice(7)}`)), "the layer's blob");
    assert.ok(archive.includes(Buffer.from("etc/x")), "the layer's entries are in the archive");
  });

  it("only tags a small image that the engine already holds", async () => {
    const probe = await build(request(probeSink));
    const engine = classicEngine(() => probe.imageId);
    await build(request(new DockerLoadSink({ engine, tags, onProgress: () => {} })));
    engine.calls.length = 0;
    const events: ProgressEvent[] = [];
    const again = await build(
      request(new DockerLoadSink({ engine, tags, onProgress: (e) => events.push(e) })),
    );
    assert.equal(again.results[0]?.id, probe.imageId);
    assert.deepEqual(engine.calls, [
      `inspect ${probe.imageId}`,
      `tag ${probe.imageId} corp/x:1`,
      `tag ${probe.imageId} corp/x:2`,
    ]);
    assert.ok(events.some((e) => e.kind === "phase" && /already holds/.test(e.message)));
  });

  it("removes the image it loaded when interrupted once the archive was sent, and tags nothing", async () => {
    const probe = await build(request(probeSink));
    const controller = new AbortController();
    const engine = classicEngine(() => {
      // Ctrl-C while the engine reads the archive: it makes the image all the same.
      controller.abort(new InterruptedError("received SIGINT"));
      return probe.imageId;
    });
    await assert.rejects(
      build({
        ...request(new DockerLoadSink({ engine, tags, onProgress: () => {} })),
        signal: controller.signal,
      }),
      InterruptedError,
    );
    assert.deepEqual(engine.calls, [
      `inspect ${probe.imageId}`,
      "post /images/load",
      `remove ${probe.imageId}`,
    ]);
  });

  it("sends a large layer by import, loads an archive without it, then removes the imported image", async () => {
    const probe = await build(request(probeSink, largeSource));
    const engine = classicEngine(() => probe.imageId);
    const sink = new DockerLoadSink({ engine, tags, onProgress: () => {} });
    assert.equal(sink.needsLayerFile, false, "no spooled copy of the layer");
    const result = await build(request(sink, largeSource));
    assert.equal(result.results[0]?.id, probe.imageId);
    assert.deepEqual(engine.calls, [
      "post /images/create",
      `inspect ${carrier}`,
      `inspect ${probe.imageId}`,
      "post /images/load",
      `remove ${carrier}`,
      `tag ${probe.imageId} corp/x:1`,
      `tag ${probe.imageId} corp/x:2`,
    ]);
    const layer = engine.bodies.get("/images/create") as Buffer;
    assert.equal(sha(layer), result.diffId, "the import body is the layer");
    const archive = engine.bodies.get("/images/load") as Buffer;
    assert.ok(archive.includes(Buffer.from("manifest.json")), "a docker-archive was loaded");
    assert.ok(!archive.includes(layer.subarray(0, 1024)), "the archive does not carry the layer again");
  });

  it("removes the imported image and tags nothing when the load fails", async () => {
    const engine = classicEngine(() => "", "no space left on device");
    await assert.rejects(
      build(request(new DockerLoadSink({ engine, tags, onProgress: () => {} }), largeSource)),
      /no space left on device/,
    );
    assert.ok(engine.calls.includes(`remove ${carrier}`));
    assert.ok(!engine.calls.some((c) => c.startsWith("tag")));
  });
});

/**
 * Runs `use` with the discovery of a fake engine on a unix socket: API 1.41 on /_ping, `reply` for
 * every other request. Returns the paths it was asked for.
 */
async function withFakeEngine(
  reply: (res: ServerResponse) => void,
  use: (discovery: DiscoveryEnvironment) => Promise<void>,
): Promise<string[]> {
  const dir = await mkdtemp(join(tmpdir(), "mkbase-unit-"));
  const socket = join(dir, "engine.sock");
  const asked: string[] = [];
  const server = createServer((req, res) => {
    asked.push(req.url ?? "");
    if (req.url === "/_ping") res.writeHead(200, { "Api-Version": "1.41" }).end("OK");
    else reply(res);
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  try {
    await use({
      env: { DOCKER_HOST: `unix://${socket}` },
      exists: () => false,
      readFile: () => Buffer.alloc(0),
      home: dir,
    });
    return asked;
  } finally {
    server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

describe("the image store", () => {
  it("tells the containerd image store from the classic one by the driver type", () => {
    assert.equal(
      imageStoreOf({ DriverStatus: [["driver-type", "io.containerd.snapshotter.v1"]] }),
      "containerd",
    );
    assert.equal(imageStoreOf({ DriverStatus: [["Backing Filesystem", "extfs"]] }), "classic");
    assert.equal(imageStoreOf({ DriverStatus: null }), "classic");
  });

  /**
   * Connects to a fake engine on a unix socket whose /info answers with `infoStatus` and `info`, asking
   * for the image store or not; returns the store and the paths the engine was asked for.
   */
  async function storeOfFakeEngine(
    infoStatus: number,
    info: object,
    imageStore = true,
  ): Promise<{ store: ImageStore | undefined; asked: string[] }> {
    let store: ImageStore | undefined;
    const asked = await withFakeEngine(
      (res) => res.writeHead(infoStatus, { "Content-Type": "application/json" }).end(JSON.stringify(info)),
      async (discovery) => {
        const engine = await connectEngine(new AbortController().signal, { discovery, imageStore });
        assert.equal(engine.apiVersion, "1.41");
        store = engine.imageStore;
        engine.close();
      },
    );
    return { store, asked };
  }

  it("is read from /info when the engine connects", async () => {
    const extfs = await storeOfFakeEngine(200, { DriverStatus: [["Backing Filesystem", "extfs"]] });
    assert.equal(extfs.store, "classic");
    assert.deepEqual(extfs.asked.sort(), ["/_ping", "/info"]);
    const snapshotter = await storeOfFakeEngine(200, {
      DriverStatus: [["driver-type", "io.containerd.snapshotter.v1"]],
    });
    assert.equal(snapshotter.store, "containerd");
  });

  it("falls back to the full-archive load when /info is refused", async () => {
    const refused = await storeOfFakeEngine(403, { message: "authorization denied by plugin" });
    assert.equal(refused.store, "containerd");
  });

  it("is not asked for unless wanted, and a load then sends the whole archive", async () => {
    const unasked = await storeOfFakeEngine(200, { DriverStatus: [["Backing Filesystem", "extfs"]] }, false);
    assert.equal(unasked.store, undefined);
    assert.deepEqual(unasked.asked, ["/_ping"]);
    // (Not through the constructor, whose default store would stand in for an undefined one.)
    const engine = Object.assign(new FakeEngine(() => []), { imageStore: undefined });
    assert.equal(new DockerLoadSink({ engine, tags, onProgress: () => {} }).needsLayerFile, true);
  });
});

describe("the engine's own platform", () => {
  it("is asked for only when wanted, with GET /version", async () => {
    const asked = await withFakeEngine(
      (res) =>
        res.writeHead(200, { "Content-Type": "application/json" }).end('{"Os":"linux","Arch":"arm64"}'),
      async (discovery) => {
        const engine = await connectEngine(new AbortController().signal, { discovery, imageStore: false });
        assert.deepEqual(await engine.enginePlatform(), { os: "linux", architecture: "arm64" });
        engine.close();
      },
    );
    assert.deepEqual(asked, ["/_ping", "/v1.41/version"]);
  });
});

/**
 * An engine whose import answers with `id` and whose inspect reports the layer it received, recorded as
 * amd64; `onLayer` runs when the whole layer has arrived.
 */
function importingEngine(id: string, onLayer: () => void = () => undefined): FakeEngine {
  let diffId = "";
  return new FakeEngine(
    (body) => {
      diffId = sha(body);
      onLayer();
      return [{ status: "Importing" }, { status: id }];
    },
    (asked) => ({ id: asked, diffIds: [diffId], platform: AMD64, repoTags: [] }),
  );
}

/** An import sink of `platform` into `engine`, for the tags above. */
function importSink(
  engine: FakeEngine,
  platform: string,
  more: { readonly changes?: string[]; readonly platformCheck?: Promise<void> } = {},
): DockerImportSink {
  return new DockerImportSink({ engine, tags, onProgress: () => {}, changes: [], platform, ...more });
}

describe("DockerImportSink", () => {
  const id = `sha256:${"b".repeat(64)}`;

  it("checks the imported layer against ours before tagging", async () => {
    const engine = importingEngine(id);
    const sink = importSink(engine, "linux/amd64", { changes: ['CMD ["/x"]'] });
    const result = await build(request(sink));
    assert.ok(engine.calls.includes(`inspect ${id}`));
    assert.equal(result.diffId, sha(engine.received));
    assert.deepEqual(engine.calls.slice(-2), [`tag ${id} corp/x:1`, `tag ${id} corp/x:2`]);
  });

  it("removes the image and tags nothing when the layer differs", async () => {
    const engine = new FakeEngine(
      () => [{ status: id }],
      (asked) => ({ id: asked, diffIds: [`sha256:${"c".repeat(64)}`], platform: AMD64, repoTags: [] }),
    );
    const sink = importSink(engine, "linux/amd64");
    await assert.rejects(build(request(sink)), /differs from the one mkbase packed/);
    assert.ok(engine.calls.includes(`remove ${id}`));
    assert.ok(!engine.calls.some((c) => c.startsWith("tag")));
  });

  it("removes the image and tags nothing when the engine recorded another platform", async () => {
    const engine = importingEngine(id);
    const sink = importSink(engine, "linux/arm64");
    const arm64 = { ...request(sink), platform: { os: "linux", architecture: "arm64" } };
    await assert.rejects(build(arm64), {
      name: "SinkError",
      message:
        "the Docker Engine recorded the imported image as linux/amd64, not linux/arm64; the image was removed",
    });
    assert.ok(engine.calls.includes(`remove ${id}`));
    assert.ok(!engine.calls.some((c) => c.startsWith("tag")));
  });
});

/** An output before the engine's that fails once the layer is packed, as a full disk would; `then` runs first. */
function failingOutput(error: Error, then: () => void = () => undefined): Sink {
  return {
    destination: "oci-archive",
    needsLayerFile: false,
    write: async () => {
      then();
      throw error;
    },
  };
}

describe("an engine's upload ended with the layer, when an earlier output fails", () => {
  const id = `sha256:${"b".repeat(64)}`;

  it("is awaited and its image removed, by the import path", async () => {
    const engine = importingEngine(id);
    const built = request(importSink(engine, "linux/amd64"));
    const sinks = [failingOutput(new SinkError("no space left on device")), ...built.sinks];
    await assert.rejects(build({ ...built, sinks }), /no space left on device/);
    assert.deepEqual(engine.calls, ["post /images/create", `remove ${id}`]);
  });

  it("is awaited and its image removed when interrupted, by the classic store's load", async () => {
    const carrier = `sha256:${"d".repeat(64)}`;
    const engine = new FakeEngine(() => [{ status: carrier }], undefined, -1, "classic");
    const controller = new AbortController();
    const built = request(new DockerLoadSink({ engine, tags, onProgress: () => {} }), largeSource);
    const interrupted = new InterruptedError("received SIGINT");
    const sinks = [failingOutput(interrupted, () => controller.abort(interrupted)), ...built.sinks];
    await assert.rejects(build({ ...built, sinks, signal: controller.signal }), interrupted);
    assert.deepEqual(engine.calls, ["post /images/create", `remove ${carrier}`]);
  });
});

describe("DockerImportSink with the engine's platform still being asked for", () => {
  const id = `sha256:${"b".repeat(64)}`;
  const refusal = new UsageError("the engine records its own architecture");

  it("stops the upload when the check refuses the platform", async () => {
    let replied = false;
    const engine = importingEngine(id, () => (replied = true));
    const sink = importSink(engine, "linux/arm64", { platformCheck: Promise.reject(refusal) });
    await assert.rejects(build(request(sink, largeSource)), refusal);
    assert.equal(replied, false, "the engine never saw a complete layer");
    assert.deepEqual(engine.calls, ["post /images/create"]);
  });

  it("removes the image and reports the refusal when it comes after the layer is complete", async () => {
    let refuse: (error: Error) => void = () => undefined;
    const platformCheck = new Promise<void>((_, reject) => (refuse = reject));
    const engine = importingEngine(id, () => refuse(refusal));
    const sink = importSink(engine, "linux/arm64", { platformCheck });
    const arm64 = { ...request(sink), platform: { os: "linux", architecture: "arm64" } };
    await assert.rejects(build(arm64), refusal);
    assert.ok(engine.calls.includes(`remove ${id}`));
    assert.ok(!engine.calls.some((c) => c.startsWith("tag")));
  });

  it("imports and tags once the check passes", async () => {
    const engine = importingEngine(id);
    const sink = importSink(engine, "linux/amd64", {
      platformCheck: new Promise((resolve) => setTimeout(resolve, 20)),
    });
    await build(request(sink, largeSource));
    assert.deepEqual(engine.calls.slice(-2), [`tag ${id} corp/x:1`, `tag ${id} corp/x:2`]);
  });
});

/** 40 files of 100 KiB, each with its own bytes: the tar spans several 1 MiB chunks. */
const manyFileEntries: TarEntry[] = Array.from({ length: 40 }, (_, i) => ({
  path: Buffer.from(`file-${String(i).padStart(2, "0")}`),
  type: "file",
  mode: 0o644,
  uid: 0,
  gid: 0,
  mtime: 100,
  size: 100 * 1024,
  content: { kind: "bytes", data: Buffer.alloc(100 * 1024, i + 1) },
}));
const manyFiles: EntrySource = { description: "40 files", entries: () => manyFileEntries };

/**
 * A sink that takes the layer as it is packed, as a consumer that holds chunks does: it keeps up to
 * `holds` chunks (all of them when undefined) before releasing the oldest. Before each release it checks
 * that the chunk still holds the bytes it was given, i.e. that no buffer was filled again too early.
 */
class RecordingSink implements Sink {
  readonly destination = "recording";
  readonly needsLayerFile = false;
  /** Copies of the chunks as they came. */
  readonly received: Buffer[] = [];
  /** The ArrayBuffers the chunks lived in, one per chunk. */
  readonly backing: ArrayBufferLike[] = [];
  /** Chunks held, with their copy and release. */
  private readonly held: { chunk: Buffer; copy: Buffer; release: () => void }[] = [];
  overwritten = 0;

  constructor(private readonly holds?: number) {}

  streamLayer(): LayerConsumer {
    return {
      write: async (chunk, release) => {
        const copy = Buffer.from(chunk);
        this.backing.push(chunk.buffer);
        this.received.push(copy);
        this.held.push({ chunk, copy, release });
        while (this.held.length > (this.holds ?? Infinity)) this.releaseOldest();
      },
      end: () => {
        while (this.held.length > 0) this.releaseOldest();
      },
      abort: () => undefined,
    };
  }

  private releaseOldest(): void {
    const oldest = this.held.shift();
    if (oldest === undefined) return;
    if (!oldest.chunk.equals(oldest.copy)) this.overwritten += 1;
    oldest.release();
  }

  async write() {
    return { destination: this.destination, id: "", tags: [] };
  }
}

describe("the packer's buffers", () => {
  it("are new for every chunk a consumer still holds: what it held is the whole layer", async () => {
    const sink = new RecordingSink();
    const result = await build(request(sink, manyFiles));
    assert.ok(sink.received.length > 3, `expected several chunks, got ${sink.received.length}`);
    assert.equal(new Set(sink.backing).size, sink.backing.length, "a buffer was filled twice");
    assert.equal(sink.overwritten, 0);
    assert.equal(sha(Buffer.concat(sink.received)), result.diffId);
  });

  it("are filled again once released, never before, and the layer is still the same", async () => {
    const holding = await build(request(new RecordingSink(), manyFiles));
    for (const holds of [0, 1]) {
      const sink = new RecordingSink(holds);
      const result = await build(request(sink, manyFiles));
      assert.ok(new Set(sink.backing).size < sink.backing.length, `holding ${holds}: no buffer was reused`);
      assert.equal(sink.overwritten, 0, `holding ${holds}: a chunk was overwritten while held`);
      assert.equal(result.diffId, holding.diffId);
      assert.equal(sha(Buffer.concat(sink.received)), result.diffId);
    }
  });
});

describe("the docker-archive's index.json and manifest.json", () => {
  const image: Image = {
    platform: { os: "linux", architecture: "arm64", variant: "v8" },
    created: 1_700_000_000,
    config: {},
    layers: [{ diffId: `sha256:${"a".repeat(64)}`, size: 1024, open: undefined }],
    history: [],
    annotations: {},
  };

  /** The JSON document at `path` in the archive of `image` tagged with `references`. */
  function documentOf(references: readonly string[], path: string): unknown {
    const archive = dockerArchiveEntries(image, references.map(parseTagReference), { withLayers: false });
    const content = archive.find((entry) => entry.path.toString() === path)?.content;
    assert.ok(content?.kind === "bytes", path);
    return JSON.parse(content.data.toString());
  }

  it("name each image once, in full in index.json and in the familiar form in RepoTags, as docker save does", () => {
    const references = ["x:1", "x:1", "docker.io/library/x:1", "review/bb:1", "index.docker.io/review/bb:1"];
    const all = [...references, "ghcr.io/o/x:2", "localhost:5000/library/x"];
    const index = documentOf(all, "index.json") as {
      manifests: { annotations: Record<string, string>; platform: unknown }[];
    };
    assert.deepEqual(
      index.manifests.map((d) => [d.annotations, d.platform]),
      [
        ["docker.io/library/x:1", "1"],
        ["docker.io/review/bb:1", "1"],
        ["ghcr.io/o/x:2", "2"],
        ["localhost:5000/library/x:latest", "latest"],
      ].map(([name, tag]) => [
        { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag },
        image.platform,
      ]),
    );
    const [manifest] = documentOf(all, "manifest.json") as { RepoTags: string[] }[];
    assert.deepEqual(manifest?.RepoTags, [
      "x:1",
      "review/bb:1",
      "ghcr.io/o/x:2",
      "localhost:5000/library/x:latest",
    ]);
  });

  it("give an untagged image's descriptor its platform too", () => {
    const index = documentOf([], "index.json") as { manifests: Record<string, unknown>[] };
    assert.equal(index.manifests.length, 1);
    assert.deepEqual(index.manifests[0]?.platform, image.platform);
    assert.equal(index.manifests[0]?.annotations, undefined);
  });
});

describe("the build time derived from the input", () => {
  it("is the last second RFC 3339 writes when a file is dated after 9999", async () => {
    const late: TarEntry = { ...(entries[0] as TarEntry), mtime: 400_000_000_000 };
    const result = await build(request(probeSink, { description: "a late file", entries: () => [late] }));
    assert.equal(result.epoch, LAST_RFC3339_SECOND);
    assert.equal(result.image.history[0]?.created, "9999-12-31T23:59:59Z");
  });
});
