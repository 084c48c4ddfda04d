/**
 * Pushing to a real registry (Debian's `docker-registry`, distribution 2.8) on 127.0.0.1, checked with
 * `skopeo`: the digest the push returns is the one the registry serves, a second push uploads nothing,
 * chunked uploads and cross-repository mounts are accepted, htpasswd auth works with the right
 * credentials and fails clearly with wrong ones, a multi-arch index keeps both platforms, and a
 * registry that dies in the middle of a push gives a clear error and a push that completes once it is
 * back.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { gzipSync } from "node:zlib";
import { ExitCode, SinkError } from "../../src/errors.js";
import { canonicalJson, sha256Digest } from "../../src/image/digest.js";
import type { Image } from "../../src/image/image.js";
import { LAYER_MEDIA_TYPE } from "../../src/image/layer.js";
import { configBlob, INDEX_MEDIA_TYPE, jsonBlob, manifestBlob, type Blob } from "../../src/image/manifest.js";
import { parseTagReference } from "../../src/image/reference.js";
import type { ProgressEvent } from "../../src/progress.js";
import {
  pushImage,
  pushIndex,
  type PushableImage,
  type PushBlob,
  type PushOptions,
} from "../../src/registry/push.js";
import { bytesEntry, directoryEntry } from "../../src/tar/entry.js";
import { packTar } from "../../src/tar/pack.js";
import { describeResult, repositoryRoot, runChecked, runMkbase } from "./support/cli.js";
import { startRegistry, type RegistryServer } from "./support/registry-server.js";

const EPOCH = 1_700_000_000;

interface TestImage extends PushableImage {
  readonly layerBytes: Buffer;
}

function bufferBlob(data: Buffer, mediaType: string): PushBlob {
  return {
    descriptor: { mediaType, digest: sha256Digest(data), size: data.length },
    async *open() {
      yield data;
    },
  };
}

/** A one-layer image: a real tar packed by mkbase's packer, gzipped, with a config and a manifest. */
async function buildImage(architecture: string, content: Buffer): Promise<TestImage> {
  const chunks: Buffer[] = [];
  const entries = [
    directoryEntry("etc", 0o755, EPOCH),
    bytesEntry("etc/greeting", Buffer.from(`hello from ${architecture}\n`), 0o644, EPOCH),
    bytesEntry("payload", content, 0o644, EPOCH),
  ];
  for await (const chunk of packTar(entries, { signal: new AbortController().signal })) chunks.push(chunk);
  const tar = Buffer.concat(chunks);
  const layerBytes = gzipSync(tar);
  const image: Image = {
    platform: { os: "linux", architecture },
    created: EPOCH,
    config: { Cmd: ["/bin/sh"] },
    layers: [{ diffId: sha256Digest(tar), size: tar.length, open: undefined }],
    history: [{ created: "2023-11-14T22:13:20Z", createdBy: "mkbase registry e2e" }],
    annotations: {},
  };
  const config = configBlob(image);
  const layer = bufferBlob(layerBytes, `${LAYER_MEDIA_TYPE}+gzip`);
  const manifest = manifestBlob(config.descriptor, [layer.descriptor]);
  return {
    config: bufferBlob(config.data, config.descriptor.mediaType),
    layers: [layer],
    manifest,
    layerBytes,
  };
}

function pushOptions(extra: Partial<PushOptions> = {}): PushOptions & { events: ProgressEvent[] } {
  const events: ProgressEvent[] = [];
  return {
    signal: AbortSignal.timeout(60_000),
    onProgress: (event) => events.push(event),
    // No discovered credentials from the machine's own docker config.
    env: { HOME: join(tmpdir(), "mkbase-no-home"), PATH: process.env.PATH },
    events,
    ...extra,
  };
}

async function skopeoInspect(
  reference: string,
  extra: string[] = [],
): Promise<{ Digest: string; Layers: string[] }> {
  const out = await runChecked("skopeo", [
    "inspect",
    "--tls-verify=false",
    ...extra,
    `docker://${reference}`,
  ]);
  return JSON.parse(out) as { Digest: string; Layers: string[] };
}

/** Requests that move blob bytes: upload starts, chunks and the finishing PUT. */
function blobUploads(registry: RegistryServer): number {
  return registry.requests().filter((r) => r.path.includes("/blobs/uploads/")).length;
}

describe("push to docker-registry without auth", () => {
  let registry: RegistryServer;
  let image: TestImage;

  before(async () => {
    registry = await startRegistry();
    image = await buildImage("amd64", randomBytes(300 * 1024));
  });
  after(async () => {
    await registry?.dispose();
  });

  test("skopeo sees the digest pushImage returned, and a second push uploads no blob", async () => {
    const target = parseTagReference(`${registry.host}/e2e/base:1`);
    const pushed = await pushImage(target, image, pushOptions());
    assert.equal(pushed.reference, `${registry.host}/e2e/base:1`);
    assert.equal(pushed.digest, image.manifest.descriptor.digest);
    const inspected = await skopeoInspect(pushed.reference);
    assert.equal(inspected.Digest, pushed.digest);
    assert.deepEqual(inspected.Layers, [sha256Digest(image.layerBytes)]);

    const uploadsBefore = blobUploads(registry);
    const headsBefore = registry.requests().filter((r) => r.method === "HEAD").length;
    const again = pushOptions();
    const repushed = await pushImage(target, image, again);
    assert.equal(repushed.digest, pushed.digest);
    assert.equal(blobUploads(registry), uploadsBefore, registry.logTail());
    assert.equal(registry.requests().filter((r) => r.method === "HEAD").length - headsBefore, 2);
  });

  test("the registry accepts chunked uploads and cross-repository mounts", async () => {
    const big = await buildImage("amd64", randomBytes(200 * 1024));
    const pushed = await pushImage(
      parseTagReference(`${registry.host}/e2e/chunked:1`),
      big,
      pushOptions({ chunkSize: 64 * 1024 }),
    );
    const patches = registry
      .requests()
      .filter((r) => r.method === "PATCH" && r.path.startsWith("/v2/e2e/chunked/"));
    assert.equal(patches.length, Math.ceil(big.layerBytes.length / (64 * 1024)));
    assert.equal((await skopeoInspect(pushed.reference)).Digest, pushed.digest);

    const uploadsBefore = blobUploads(registry);
    const mounted = await pushImage(parseTagReference(`${registry.host}/e2e/mounted:1`), big, pushOptions());
    const mounts = registry
      .requests()
      .filter((r) => r.method === "POST" && r.path.startsWith("/v2/e2e/mounted/blobs/uploads/?mount="));
    assert.equal(mounts.length, 2, registry.logTail());
    assert.ok(mounts.every((r) => r.status === 201));
    assert.equal(blobUploads(registry) - uploadsBefore, 2, "only the two mount requests touch uploads");
    assert.equal((await skopeoInspect(mounted.reference)).Digest, pushed.digest);
  });

  test("a multi-arch index keeps both platforms", async () => {
    const amd64 = await buildImage("amd64", randomBytes(1024));
    const arm64 = await buildImage("arm64", randomBytes(1024));
    const platformOf = (architecture: string) => ({ os: "linux", architecture });
    const index: Blob = jsonBlob(
      INDEX_MEDIA_TYPE,
      canonicalJson({
        schemaVersion: 2,
        mediaType: INDEX_MEDIA_TYPE,
        manifests: [
          { ...amd64.manifest.descriptor, platform: platformOf("amd64") },
          { ...arm64.manifest.descriptor, platform: platformOf("arm64") },
        ],
      }),
    );
    const pushed = await pushIndex(
      parseTagReference(`${registry.host}/e2e/multi:1`),
      [amd64, arm64],
      index,
      pushOptions(),
    );
    assert.equal(pushed.digest, index.descriptor.digest);
    const raw = await runChecked("skopeo", [
      "inspect",
      "--raw",
      "--tls-verify=false",
      `docker://${pushed.reference}`,
    ]);
    assert.equal(sha256Digest(raw), pushed.digest);
    const parsed = JSON.parse(raw) as { manifests: { digest: string; platform: { architecture: string } }[] };
    assert.deepEqual(
      parsed.manifests.map((m) => [m.platform.architecture, m.digest]),
      [
        ["amd64", amd64.manifest.descriptor.digest],
        ["arm64", arm64.manifest.descriptor.digest],
      ],
    );
    const arm = await runChecked("skopeo", [
      "inspect",
      "--tls-verify=false",
      "--override-arch=arm64",
      `docker://${pushed.reference}`,
    ]);
    assert.equal((JSON.parse(arm) as { Architecture: string }).Architecture, "arm64");
  });

  test("a registry killed in the middle of a push gives a clear error; the next push completes", async () => {
    const victim = await buildImage("amd64", randomBytes(2 * 1024 * 1024));
    const [layer] = victim.layers;
    assert.ok(layer !== undefined);
    const half = Math.floor(victim.layerBytes.length / 2);
    let killed = false;
    const dying: PushableImage = {
      ...victim,
      layers: [
        {
          descriptor: layer.descriptor,
          async *open() {
            yield victim.layerBytes.subarray(0, half);
            if (!killed) {
              killed = true;
              await registry.kill();
            }
            yield victim.layerBytes.subarray(half);
          },
        },
      ],
    };
    const target = parseTagReference(`${registry.host}/e2e/crash:1`);
    await assert.rejects(pushImage(target, dying, pushOptions()), (error) => {
      assert.ok(error instanceof SinkError, String(error));
      assert.equal(error.exitCode, ExitCode.sink);
      assert.match(error.message, /failed after 4 tries/);
      assert.match(error.hint ?? "", /push again/);
      return true;
    });
    assert.ok(killed);
    await registry.start();
    const pushed = await pushImage(target, victim, pushOptions());
    assert.equal((await skopeoInspect(pushed.reference)).Digest, victim.manifest.descriptor.digest);
  });
});

describe("tags mkbase cannot push", () => {
  let registry: RegistryServer;
  before(async () => {
    registry = await startRegistry();
  });
  after(async () => {
    await registry?.dispose();
  });

  for (const refused of ["local:1", "docker.io/e2e/hub:1"]) {
    test(`-t ${refused} stops the command before anything is pushed to the other tags`, async () => {
      const before = registry.requests().length;
      const result = await runMkbase(
        [
          ...["dir", join(repositoryRoot, "fixtures", "demo-rootfs")],
          ...["-t", `${registry.host}/e2e/first:1`, "-t", refused, "--push"],
        ],
        { env: { ...process.env, HOME: join(tmpdir(), "mkbase-no-home") } },
      );
      assert.equal(result.code, ExitCode.usage, describeResult(result));
      assert.match(result.stderr, /pushes only to a registry named by its host.*skopeo copy/s);
      assert.equal(registry.requests().length, before, registry.logTail());
    });
  }
});

describe("push to docker-registry with htpasswd auth", () => {
  const user = { name: "pusher", password: "correct horse" };
  let registry: RegistryServer;
  let image: TestImage;
  let work: string;

  before(async () => {
    registry = await startRegistry({ user });
    image = await buildImage("amd64", randomBytes(4096));
    work = await mkdtemp(join(tmpdir(), "mkbase-registry-auth-"));
  });
  after(async () => {
    await registry?.dispose();
    if (work !== undefined) await rm(work, { recursive: true, force: true });
  });

  async function dockerConfigDir(name: string, password: string): Promise<string> {
    const dir = join(work, name);
    await runChecked("mkdir", ["-p", dir]);
    const auth = Buffer.from(`${user.name}:${password}`).toString("base64");
    await writeFile(join(dir, "config.json"), JSON.stringify({ auths: { [registry.host]: { auth } } }));
    return dir;
  }

  test("wrong credentials are refused with a SinkError and leave no tag", async () => {
    const dir = await dockerConfigDir("wrong", "battery staple");
    const target = parseTagReference(`${registry.host}/e2e/private:1`);
    await assert.rejects(pushImage(target, image, pushOptions({ env: { DOCKER_CONFIG: dir } })), (error) => {
      assert.ok(error instanceof SinkError, String(error));
      assert.match(error.message, /refused the credentials/);
      return true;
    });
    assert.ok(!registry.requests().some((r) => r.method === "PUT" && r.status === 201));
  });

  test("the right credentials from a config.json push the image", async () => {
    const dir = await dockerConfigDir("right", user.password);
    const target = parseTagReference(`${registry.host}/e2e/private:1`);
    const pushed = await pushImage(target, image, pushOptions({ env: { DOCKER_CONFIG: dir } }));
    const inspected = await skopeoInspect(pushed.reference, ["--creds", `${user.name}:${user.password}`]);
    assert.equal(inspected.Digest, pushed.digest);
  });
});
