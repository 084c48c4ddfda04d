import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { InterruptedError, SinkError, ToolError, UsageError } from "../../src/errors.js";
import { canonicalJson, sha256Digest } from "../../src/image/digest.js";
import {
  CONFIG_MEDIA_TYPE,
  INDEX_MEDIA_TYPE,
  MANIFEST_MEDIA_TYPE,
  manifestBlob,
  jsonBlob,
} from "../../src/image/manifest.js";
import { parseTagReference } from "../../src/image/reference.js";
import type { ProgressEvent } from "../../src/progress.js";
import { findCredentials, parseChallenge } from "../../src/registry/auth.js";
import {
  pushImage,
  pushIndex,
  RegistryResponseError,
  type PushableImage,
  type PushBlob,
  type PushOptions,
} from "../../src/registry/push.js";
import { ownAddress } from "../support/network.js";
import { writeSelfSignedCertificate } from "../support/certificate.js";

const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";

interface SeenRequest {
  readonly method: string;
  readonly path: string;
  readonly query: URLSearchParams;
  readonly headers: IncomingMessage["headers"];
}

interface FakeRegistryOptions {
  /** Which challenge unauthenticated requests get; anonymous access when absent. */
  readonly auth?: "basic" | "bearer";
  readonly user?: string;
  readonly password?: string;
  /** An OAuth2 refresh token the token endpoint accepts (a stored `identitytoken`). */
  readonly refreshToken?: string;
  readonly host?: string;
  /** Serve HTTPS with this key and certificate. */
  readonly tls?: { readonly key: Buffer; readonly cert: Buffer };
  /** The status a stored manifest is answered with: 201 as the spec says, or another success. */
  readonly manifestStatus?: number;
  /** false: answer every mount with a new upload session (202), as registries that cannot mount do. */
  readonly mounts?: boolean;
  /** Announced as `OCI-Chunk-Min-Length` when an upload starts. */
  readonly chunkMinLength?: number;
  /** Issue a token without any scope to a client that sends no credentials. */
  readonly anonymousTokens?: boolean;
  /** Scopes the token server leaves out of every token, as it does for access the user lacks. */
  readonly ungranted?: readonly string[];
}

/** An in-memory distribution registry, strict about what it checks, recording every request. */
class FakeRegistry {
  readonly requests: SeenRequest[] = [];
  readonly tokenRequests: SeenRequest[] = [];
  readonly blobs = new Map<string, Map<string, Buffer>>();
  readonly manifests = new Map<string, { contentType: string; data: Buffer }>();
  /** Connections that did not speak HTTP (or TLS, when serving HTTPS), e.g. a TLS handshake to HTTP. */
  clientErrors = 0;
  /** Decides an answer (a failure, a redirect) for a request before it is handled (fault injection). */
  fail: (
    request: SeenRequest,
  ) => { status: number; headers?: Record<string, string>; body?: object | string } | undefined = () =>
    undefined;
  private readonly uploads = new Map<string, { repository: string; data: Buffer }>();
  private readonly tokens = new Map<string, Set<string>>();
  private nextId = 1;
  private readonly server: Server | HttpsServer;

  private constructor(private readonly options: FakeRegistryOptions) {
    const listener = (request: IncomingMessage, response: ServerResponse): void => {
      const chunks: Buffer[] = [];
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.on("end", () => this.handle(request, Buffer.concat(chunks), response));
    };
    this.server =
      options.tls === undefined ? createServer(listener) : createHttpsServer(options.tls, listener);
    this.server.on("clientError", (_error, socket) => {
      this.clientErrors += 1;
      socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
    });
  }

  static async start(options: FakeRegistryOptions = {}): Promise<FakeRegistry> {
    const registry = new FakeRegistry(options);
    await new Promise<void>((resolve) => registry.server.listen(0, options.host ?? "127.0.0.1", resolve));
    return registry;
  }

  get host(): string {
    const address = this.server.address() as AddressInfo;
    return `${address.address}:${address.port}`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** Requests whose method and path match, e.g. `("PATCH", /uploads/)`. */
  count(method: string, path: RegExp): number {
    return this.requests.filter((r) => r.method === method && path.test(r.path)).length;
  }

  blob(repository: string, digest: string): Buffer | undefined {
    return this.blobs.get(repository)?.get(digest);
  }

  private store(repository: string, digest: string, data: Buffer): void {
    let held = this.blobs.get(repository);
    if (held === undefined) {
      held = new Map();
      this.blobs.set(repository, held);
    }
    held.set(digest, data);
  }

  private reply(
    response: ServerResponse,
    status: number,
    headers: Record<string, string> = {},
    body?: object | string,
  ): void {
    const text = body === undefined ? "" : typeof body === "string" ? body : JSON.stringify(body);
    response.writeHead(status, { ...headers, "content-length": String(Buffer.byteLength(text)) });
    response.end(text);
  }

  private authorized(seen: SeenRequest, scopes: string[]): boolean {
    const given = seen.headers.authorization;
    if (this.options.auth === "basic") {
      const expected = Buffer.from(`${this.options.user}:${this.options.password}`).toString("base64");
      return given === `Basic ${expected}`;
    }
    if (this.options.auth === "bearer") {
      const granted = given?.startsWith("Bearer ") ? this.tokens.get(given.slice(7)) : undefined;
      return granted !== undefined && scopes.every((scope) => granted.has(scope));
    }
    return true;
  }

  private issueToken(seen: SeenRequest, body: Buffer, response: ServerResponse): void {
    this.tokenRequests.push(seen);
    if (seen.method === "POST") {
      // OAuth2 refresh-token grant: scopes come space-separated in the form.
      const form = new URLSearchParams(body.toString("utf8"));
      if (
        form.get("grant_type") !== "refresh_token" ||
        form.get("refresh_token") !== this.options.refreshToken
      ) {
        this.reply(response, 401, {}, { details: "invalid refresh token" });
        return;
      }
      const token = `token-${this.nextId++}`;
      this.tokens.set(token, new Set((form.get("scope") ?? "").split(" ")));
      this.reply(response, 200, {}, { access_token: token, expires_in: 300 });
      return;
    }
    const expected = Buffer.from(`${this.options.user}:${this.options.password}`).toString("base64");
    const anonymous = seen.headers.authorization === undefined && this.options.anonymousTokens === true;
    if (seen.headers.authorization !== `Basic ${expected}` && !anonymous) {
      this.reply(response, 401, {}, { details: "incorrect username or password" });
      return;
    }
    const token = `token-${this.nextId++}`;
    const granted = anonymous ? [] : seen.query.getAll("scope");
    this.tokens.set(token, new Set(granted.filter((scope) => !this.options.ungranted?.includes(scope))));
    this.reply(response, 200, {}, { token, expires_in: 300 });
  }

  private handle(request: IncomingMessage, body: Buffer, response: ServerResponse): void {
    const url = new URL(request.url ?? "/", "http://fake");
    const seen = {
      method: request.method ?? "",
      path: url.pathname,
      query: url.searchParams,
      headers: request.headers,
    };
    if (url.pathname === "/token") {
      this.issueToken(seen, body, response);
      return;
    }
    this.requests.push(seen);
    const failure = this.fail(seen);
    if (failure !== undefined) {
      this.reply(response, failure.status, failure.headers, failure.body);
      return;
    }
    const upload = /^\/v2\/(.+)\/blobs\/uploads\/([^/]*)$/.exec(url.pathname);
    const blob = /^\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url.pathname);
    const manifest = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(url.pathname);
    const repository = (upload ?? blob ?? manifest)?.[1] ?? "";
    const scopes = [`repository:${repository}:pull,push`];
    const from = url.searchParams.get("from");
    if (from !== null) scopes.push(`repository:${from}:pull`);
    if (!this.authorized(seen, scopes)) {
      const challenge =
        this.options.auth === "basic"
          ? 'Basic realm="fake"'
          : `Bearer realm="http://${this.host}/token",service="fake registry",scope="${scopes.join(" ")}"`;
      this.reply(
        response,
        401,
        { "www-authenticate": challenge },
        { errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] },
      );
      return;
    }
    if (blob !== null && request.method === "HEAD") {
      const data = this.blob(repository, blob[2] as string);
      this.reply(response, data === undefined ? 404 : 200);
    } else if (upload !== null && request.method === "POST" && upload[2] === "") {
      const mount = url.searchParams.get("mount");
      const source = mount === null || from === null ? undefined : this.blob(from, mount);
      if (mount !== null && source !== undefined && this.options.mounts !== false) {
        this.store(repository, mount, source);
        this.reply(response, 201, { location: `/v2/${repository}/blobs/${mount}` });
        return;
      }
      const id = String(this.nextId++);
      this.uploads.set(id, { repository, data: Buffer.alloc(0) });
      const minimum = this.options.chunkMinLength;
      this.reply(response, 202, {
        location: `/v2/${repository}/blobs/uploads/${id}?_state=s${id}`,
        range: "0-0",
        ...(minimum === undefined ? {} : { "oci-chunk-min-length": String(minimum) }),
      });
    } else if (upload !== null && (request.method === "PATCH" || request.method === "PUT")) {
      const state = this.uploads.get(upload[2] as string);
      if (state === undefined || url.searchParams.get("_state") !== `s${upload[2]}`) {
        this.reply(
          response,
          404,
          {},
          { errors: [{ code: "BLOB_UPLOAD_UNKNOWN", message: "no such upload" }] },
        );
        return;
      }
      if (request.method === "PATCH") {
        const range = /^(\d+)-(\d+)$/.exec(request.headers["content-range"] ?? "");
        if (
          range === null ||
          Number(range[1]) !== state.data.length ||
          Number(range[2]) !== state.data.length + body.length - 1
        ) {
          this.reply(response, 416, {}, { errors: [{ code: "BLOB_UPLOAD_INVALID", message: "bad range" }] });
          return;
        }
      }
      state.data = Buffer.concat([state.data, body]);
      if (request.method === "PATCH") {
        this.reply(response, 202, {
          location: `/v2/${repository}/blobs/uploads/${upload[2]}?_state=s${upload[2]}`,
          range: `0-${state.data.length - 1}`,
        });
        return;
      }
      const digest = url.searchParams.get("digest") ?? "";
      if (sha256Digest(state.data) !== digest) {
        this.reply(response, 400, {}, { errors: [{ code: "DIGEST_INVALID", message: "digest mismatch" }] });
        return;
      }
      this.uploads.delete(upload[2] as string);
      this.store(repository, digest, state.data);
      this.reply(response, 201, { location: `/v2/${repository}/blobs/${digest}` });
    } else if (manifest !== null && request.method === "PUT") {
      const digest = sha256Digest(body);
      const reference = manifest[2] as string;
      if (reference.startsWith("sha256:") && reference !== digest) {
        this.reply(response, 400, {}, { errors: [{ code: "DIGEST_INVALID", message: "manifest digest" }] });
        return;
      }
      this.manifests.set(`${repository}@${reference}`, {
        contentType: request.headers["content-type"] ?? "",
        data: body,
      });
      this.reply(response, this.options.manifestStatus ?? 201, { "docker-content-digest": digest });
    } else {
      this.reply(response, 405, {}, { errors: [{ code: "UNSUPPORTED", message: "not here" }] });
    }
  }
}

/** A blob held in memory that counts how often it was opened. */
function memoryBlob(data: Buffer, mediaType = GZIP_LAYER): PushBlob & { opened: number } {
  const blob = {
    descriptor: { mediaType, digest: sha256Digest(data), size: data.length },
    opened: 0,
    async *open(): AsyncGenerator<Buffer> {
      blob.opened += 1;
      // Odd-sized pieces, so chunking has to re-cut them.
      for (let offset = 0; offset < data.length; offset += 777) yield data.subarray(offset, offset + 777);
    },
  };
  return blob;
}

function testImage(seed: string, layerSize = 3000): PushableImage & { layer: ReturnType<typeof memoryBlob> } {
  const layerData = Buffer.alloc(layerSize, seed);
  const layer = memoryBlob(layerData);
  const config = jsonBlob(CONFIG_MEDIA_TYPE, canonicalJson({ architecture: "amd64", os: "linux", seed }));
  const manifest = manifestBlob(config.descriptor, [layer.descriptor]);
  return { config: memoryBlob(config.data, CONFIG_MEDIA_TYPE), layers: [layer], manifest, layer };
}

function options(extra: Partial<PushOptions> = {}): PushOptions & { events: ProgressEvent[] } {
  const events: ProgressEvent[] = [];
  return {
    signal: new AbortController().signal,
    onProgress: (event) => events.push(event),
    env: { HOME: join(tmpdir(), "mkbase-no-such-home") },
    events,
    ...extra,
  };
}

function logLines(events: readonly ProgressEvent[]): string[] {
  return events.flatMap((e) => (e.kind === "log" ? [e.line] : []));
}

let scratch: string;
before(async () => {
  scratch = await mkdtemp(join(tmpdir(), "mkbase-registry-test-"));
});
after(async () => {
  await rm(scratch, { recursive: true, force: true });
});

async function dockerConfig(name: string, content: object): Promise<string> {
  const dir = await mkdtemp(join(scratch, `${name}-`));
  await writeFile(join(dir, "config.json"), JSON.stringify(content));
  return dir;
}

describe("pushImage against an anonymous registry", () => {
  let registry: FakeRegistry;
  before(async () => {
    registry = await FakeRegistry.start();
  });
  after(() => registry.close());

  it("uploads blobs, puts the manifest by digest, and tags last", async () => {
    const image = testImage("a");
    const target = parseTagReference(`${registry.host}/team/app:1`);
    const opts = options();
    const pushed = await pushImage(target, image, opts);
    assert.deepEqual(pushed, {
      reference: `${registry.host}/team/app:1`,
      digest: image.manifest.descriptor.digest,
    });
    assert.deepEqual(registry.blob("team/app", image.layer.descriptor.digest), Buffer.alloc(3000, "a"));
    assert.ok(registry.blob("team/app", image.config.descriptor.digest));
    const manifestPuts = registry.requests.filter(
      (r) => r.method === "PUT" && r.path.includes("/manifests/"),
    );
    assert.deepEqual(
      manifestPuts.map((r) => r.path),
      [`/v2/team/app/manifests/${image.manifest.descriptor.digest}`, "/v2/team/app/manifests/1"],
    );
    assert.equal(registry.manifests.get("team/app@1")?.contentType, MANIFEST_MEDIA_TYPE);
    assert.deepEqual(registry.manifests.get("team/app@1")?.data, image.manifest.data);
    const phases = opts.events.flatMap((e) => (e.kind === "phase" ? [e.message] : []));
    assert.ok(
      phases.some((p) => /^pushing layer sha256:[0-9a-f]{12}… \(2\.9 KiB\)$/.test(p)),
      phases.join("\n"),
    );
  });

  it("takes 200 and 202 for a manifest, as crane does, not only the spec's 201", async () => {
    for (const manifestStatus of [200, 202]) {
      const registry = await FakeRegistry.start({ manifestStatus });
      try {
        const image = testImage("m");
        const pushed = await pushImage(parseTagReference(`${registry.host}/lenient:1`), image, options());
        assert.equal(pushed.digest, image.manifest.descriptor.digest);
        assert.ok(registry.manifests.has("lenient@1"));
      } finally {
        await registry.close();
      }
    }
  });

  it("uploads no blob when the registry already has them", async () => {
    const image = testImage("b");
    const target = parseTagReference(`${registry.host}/again:1`);
    await pushImage(target, image, options());
    const uploadsBefore =
      registry.count("POST", /\/blobs\/uploads\//) + registry.count("PUT", /\/blobs\/uploads\//);
    const opts = options();
    await pushImage(target, image, opts);
    const uploadsAfter =
      registry.count("POST", /\/blobs\/uploads\//) + registry.count("PUT", /\/blobs\/uploads\//);
    assert.equal(uploadsAfter, uploadsBefore);
    assert.equal(logLines(opts.events).filter((line) => line.endsWith(" exists")).length, 2);
  });

  it("sends large blobs in Content-Range chunks that assemble into the blob", async () => {
    const image = testImage("c", 2500);
    const target = parseTagReference(`${registry.host}/chunked:1`);
    const patchesBefore = registry.count("PATCH", /\/blobs\/uploads\//);
    await pushImage(target, image, options({ chunkSize: 1000 }));
    const patches = registry.requests.filter((r) => r.method === "PATCH").slice(patchesBefore);
    assert.deepEqual(
      patches.map((r) => r.headers["content-range"]),
      ["0-999", "1000-1999", "2000-2499"],
    );
    assert.deepEqual(registry.blob("chunked", image.layer.descriptor.digest), Buffer.alloc(2500, "c"));
  });

  it("mounts a blob pushed to another repository of the same registry", async () => {
    const image = testImage("d");
    await pushImage(parseTagReference(`${registry.host}/first:1`), image, options());
    const opened = image.layer.opened;
    const opts = options();
    await pushImage(parseTagReference(`${registry.host}/second:1`), image, opts);
    const mounts = registry.requests.filter((r) => r.path === "/v2/second/blobs/uploads/");
    assert.ok(mounts.length >= 1);
    assert.ok(mounts.every((r) => r.query.get("from") === "first" && r.query.get("mount") !== null));
    assert.equal(image.layer.opened, opened, "the layer was read again instead of mounted");
    assert.ok(registry.blob("second", image.layer.descriptor.digest));
    assert.ok(logLines(opts.events).some((line) => line.endsWith("mounted from first")));
  });

  it("retries a 503 with a fresh open of the blob, then succeeds", async () => {
    const image = testImage("e");
    let failures = 1;
    registry.fail = (r) =>
      r.method === "PUT" && r.path.includes("/blobs/uploads/") && failures-- > 0
        ? { status: 503 }
        : undefined;
    try {
      const opts = options();
      await pushImage(parseTagReference(`${registry.host}/retry:1`), image, opts);
      assert.equal(image.layer.opened, 2);
      assert.ok(registry.blob("retry", image.layer.descriptor.digest));
      assert.ok(logLines(opts.events).some((line) => line.includes("try 2 of 4")));
    } finally {
      registry.fail = () => undefined;
    }
  });

  it("gives up after four tries of a lasting 5xx", async () => {
    registry.fail = (r) => (r.method === "POST" ? { status: 502 } : undefined);
    const postsBefore = registry.count("POST", /./);
    try {
      await assert.rejects(
        pushImage(parseTagReference(`${registry.host}/down:1`), testImage("f"), options()),
        (error) => {
          assert.ok(error instanceof SinkError);
          assert.match(error.message, /failed after 4 tries/);
          return true;
        },
      );
      assert.equal(registry.count("POST", /./) - postsBefore, 4);
    } finally {
      registry.fail = () => undefined;
    }
  });

  it("does not retry a 4xx and reports the registry's error code", async () => {
    registry.fail = (r) =>
      r.method === "PUT" && r.path.includes("/manifests/")
        ? { status: 400, body: { errors: [{ code: "MANIFEST_INVALID", message: "manifest invalid" }] } }
        : undefined;
    const putsBefore = registry.count("PUT", /\/manifests\//);
    try {
      await assert.rejects(
        pushImage(parseTagReference(`${registry.host}/bad:1`), testImage("g"), options()),
        (error) => {
          assert.ok(error instanceof RegistryResponseError);
          assert.equal(error.status, 400);
          assert.deepEqual(error.errors, [{ code: "MANIFEST_INVALID", message: "manifest invalid" }]);
          return true;
        },
      );
      assert.equal(registry.count("PUT", /\/manifests\//) - putsBefore, 1);
      assert.equal(registry.manifests.has("bad@1"), false);
    } finally {
      registry.fail = () => undefined;
    }
  });

  it("pushes an index: child manifests by digest, the index by digest, the tag last", async () => {
    const amd64 = testImage("h");
    const arm64 = testImage("i");
    const index = jsonBlob(
      INDEX_MEDIA_TYPE,
      canonicalJson({
        schemaVersion: 2,
        mediaType: INDEX_MEDIA_TYPE,
        manifests: [
          { ...amd64.manifest.descriptor, platform: { os: "linux", architecture: "amd64" } },
          { ...arm64.manifest.descriptor, platform: { os: "linux", architecture: "arm64" } },
        ],
      }),
    );
    const before = registry.requests.length;
    const pushed = await pushIndex(
      parseTagReference(`${registry.host}/multi:2`),
      [amd64, arm64],
      index,
      options(),
    );
    assert.equal(pushed.digest, index.descriptor.digest);
    const puts = registry.requests
      .slice(before)
      .filter((r) => r.method === "PUT" && r.path.includes("/manifests/"))
      .map((r) => r.path.replace("/v2/multi/manifests/", ""));
    assert.deepEqual(puts, [
      amd64.manifest.descriptor.digest,
      arm64.manifest.descriptor.digest,
      index.descriptor.digest,
      "2",
    ]);
    assert.equal(registry.manifests.get("multi@2")?.contentType, INDEX_MEDIA_TYPE);
  });

  it("refuses Docker Hub and references without a registry host before any request", async () => {
    const before = registry.requests.length;
    for (const [reference, named] of [
      ["team/app:1", /names no registry host/],
      ["docker.io/team/app:1", /names Docker Hub \(docker\.io\)/],
      ["index.docker.io/team/app:1", /names Docker Hub \(index\.docker\.io\)/],
    ] as const) {
      await assert.rejects(pushImage(parseTagReference(reference), testImage("j"), options()), (error) => {
        assert.ok(error instanceof UsageError, String(error));
        assert.match(error.message, named);
        assert.match(error.message, /pushes only to a registry named by its host/);
        assert.match(error.hint ?? "", /skopeo copy oci-archive:.*crane push.*docker push/);
        return true;
      });
    }
    assert.equal(registry.requests.length, before);
  });

  it("shows an error's detail, and the title of an HTML error page rather than the page", async () => {
    const detail = `sha256:${"0".repeat(64)}`;
    registry.fail = (r) =>
      r.method === "PUT" && r.path.includes("/manifests/")
        ? {
            status: 400,
            body: {
              errors: [{ code: "MANIFEST_BLOB_UNKNOWN", message: "blob unknown to registry", detail }],
            },
          }
        : undefined;
    try {
      await assert.rejects(
        pushImage(parseTagReference(`${registry.host}/detail:1`), testImage("w"), options()),
        (error) => {
          assert.ok(error instanceof RegistryResponseError);
          assert.match(
            error.message,
            /failed: MANIFEST_BLOB_UNKNOWN: blob unknown to registry \(sha256:0{64}\)$/,
          );
          assert.deepEqual(error.errors, [
            { code: "MANIFEST_BLOB_UNKNOWN", message: "blob unknown to registry", detail },
          ]);
          return true;
        },
      );
      const page =
        "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
      registry.fail = (r) =>
        r.method === "POST"
          ? { status: 403, headers: { "content-type": "text/html" }, body: page }
          : undefined;
      await assert.rejects(
        pushImage(parseTagReference(`${registry.host}/html:1`), testImage("x"), options()),
        (error) => {
          assert.ok(error instanceof RegistryResponseError);
          assert.match(error.message, / at [^ ]+\/html failed: HTTP 403: 403 Forbidden$/);
          return true;
        },
      );
    } finally {
      registry.fail = () => undefined;
    }
  });

  it("says that a registry may not take OCI manifests when it calls one invalid or unsupported", async () => {
    for (const refusal of [
      { status: 400, body: { errors: [{ code: "MANIFEST_INVALID", message: "manifest invalid" }] } },
      { status: 415 },
    ]) {
      registry.fail = (r) => (r.method === "PUT" && r.path.includes("/manifests/") ? refusal : undefined);
      try {
        await assert.rejects(
          pushImage(parseTagReference(`${registry.host}/old:1`), testImage("y"), options()),
          (error) => {
            assert.ok(error instanceof RegistryResponseError);
            assert.equal(error.status, refusal.status);
            assert.match(
              error.hint ?? "",
              new RegExp(
                `may not take application/vnd\\.oci\\.image\\.manifest\\.v1\\+json .*skopeo copy --all --format v2s2 oci-archive:image\\.tar docker://${registry.host}/old:TAG`,
              ),
            );
            return true;
          },
        );
      } finally {
        registry.fail = () => undefined;
      }
    }
  });

  it("waits as long as a 429's Retry-After asks, in seconds or as a date, beyond its own backoff", async () => {
    for (const [retryAfter, wait] of [
      ["30", /in 30\.0 s$/],
      [new Date(Date.now() + 21_000).toUTCString(), /in (19|20|21)\.\d s$/],
    ] as const) {
      registry.fail = (r) =>
        r.method === "POST"
          ? {
              status: 429,
              headers: { "retry-after": retryAfter },
              body: { errors: [{ code: "TOOMANYREQUESTS", message: "slow down" }] },
            }
          : undefined;
      const controller = new AbortController();
      const lines: string[] = [];
      try {
        await assert.rejects(
          pushImage(
            parseTagReference(`${registry.host}/limited:1`),
            testImage("z"),
            options({
              signal: controller.signal,
              onProgress: (event) => {
                if (event.kind !== "log") return;
                lines.push(event.line);
                controller.abort();
              },
            }),
          ),
          InterruptedError,
        );
        assert.match(lines[0] ?? "", /TOOMANYREQUESTS: slow down; try 2 of 4 /);
        assert.match(lines[0] ?? "", wait);
      } finally {
        registry.fail = () => undefined;
      }
    }
  });

  it("stops with an InterruptedError when the signal is aborted", async () => {
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(
      pushImage(
        parseTagReference(`${registry.host}/stop:1`),
        testImage("k"),
        options({ signal: controller.signal }),
      ),
      InterruptedError,
    );
  });
});

describe("pushImage against registries that answer in other allowed ways", () => {
  it("continues in the session a mount opened instead of mounting (202), without opening another", async () => {
    const registry = await FakeRegistry.start({ mounts: false });
    try {
      const image = testImage("s");
      await pushImage(parseTagReference(`${registry.host}/origin:1`), image, options());
      await pushImage(parseTagReference(`${registry.host}/copy:1`), image, options());
      const starts = registry.requests.filter(
        (r) => r.method === "POST" && r.path === "/v2/copy/blobs/uploads/",
      );
      assert.equal(starts.length, 2, "one upload session per blob, the one the mount opened");
      assert.ok(starts.every((r) => r.query.get("from") === "origin"));
      assert.deepEqual(registry.blob("copy", image.layer.descriptor.digest), Buffer.alloc(3000, "s"));
      assert.ok(registry.manifests.has("copy@1"));
    } finally {
      await registry.close();
    }
  });

  it("sends chunks of at least the OCI-Chunk-Min-Length the registry announces", async () => {
    const registry = await FakeRegistry.start({ chunkMinLength: 2000 });
    try {
      const image = testImage("t", 5000);
      await pushImage(parseTagReference(`${registry.host}/minimum:1`), image, options({ chunkSize: 1000 }));
      assert.deepEqual(
        registry.requests.filter((r) => r.method === "PATCH").map((r) => r.headers["content-range"]),
        ["0-1999", "2000-3999", "4000-4999"],
      );
      assert.deepEqual(registry.blob("minimum", image.layer.descriptor.digest), Buffer.alloc(5000, "t"));
    } finally {
      await registry.close();
    }
  });

  it("follows 307 and 308 redirects, with the Authorization header for the registry's own origin only", async () => {
    const registry = await FakeRegistry.start({ auth: "bearer", user: "alice", password: "s3cret" });
    const stored: { query: URLSearchParams; authorization: string | undefined; body: Buffer }[] = [];
    const storage = createServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.on("end", () => {
        const url = new URL(request.url ?? "/", "http://storage");
        stored.push({
          query: url.searchParams,
          authorization: request.headers.authorization,
          body: Buffer.concat(chunks),
        });
        response.writeHead(201, { "content-length": "0" });
        response.end();
      });
    });
    const storagePort = await listenOnLoopback(storage);
    try {
      const auth = Buffer.from("alice:s3cret").toString("base64");
      const dir = await dockerConfig("redirect", { auths: { [registry.host]: { auth } } });
      registry.fail = (r) => {
        // Blob uploads finish at another host; the tag moves within the registry.
        if (r.method === "PUT" && r.path.includes("/blobs/uploads/")) {
          return { status: 307, headers: { location: `http://127.0.0.1:${storagePort}/bucket?${r.query}` } };
        }
        if (r.method === "PUT" && r.path === "/v2/moving/manifests/1" && r.query.get("moved") === null) {
          return { status: 308, headers: { location: "/v2/moving/manifests/1?moved=1" } };
        }
        return undefined;
      };
      const image = testImage("u");
      await pushImage(
        parseTagReference(`${registry.host}/moving:1`),
        image,
        options({ env: { DOCKER_CONFIG: dir } }),
      );
      assert.deepEqual(
        stored.map((s) => [s.query.get("digest"), s.authorization, s.body.length]),
        [
          [image.layer.descriptor.digest, undefined, 3000],
          [image.config.descriptor.digest, undefined, image.config.descriptor.size],
        ],
      );
      const moved = registry.requests.find((r) => r.query.get("moved") === "1");
      assert.match(moved?.headers.authorization ?? "", /^Bearer /);
      assert.deepEqual(registry.manifests.get("moving@1")?.data, image.manifest.data);
    } finally {
      await registry.close();
      await new Promise((resolve) => storage.close(resolve));
    }
  });

  it("reads a relative Location against the URL a redirect led to", async () => {
    const registry = await FakeRegistry.start();
    const finished: string[] = [];
    const storage = createServer((request, response) => {
      request.resume();
      request.on("end", () => {
        const url = new URL(request.url ?? "/", "http://storage");
        // The upload opened here continues at a path relative to this server's answer.
        if (request.method === "POST")
          response.writeHead(202, { location: "session-1", "content-length": "0" });
        else {
          finished.push(`${request.method} ${url.pathname} ${url.searchParams.get("digest")}`);
          response.writeHead(201, { "content-length": "0" });
        }
        response.end();
      });
    });
    const storagePort = await listenOnLoopback(storage);
    try {
      registry.fail = (r) =>
        r.method === "POST" && r.path.includes("/blobs/uploads/")
          ? { status: 307, headers: { location: `http://127.0.0.1:${storagePort}/uploads/` } }
          : undefined;
      const image = testImage("w");
      await pushImage(parseTagReference(`${registry.host}/elsewhere:1`), image, options());
      assert.deepEqual(finished, [
        `PUT /uploads/session-1 ${image.layer.descriptor.digest}`,
        `PUT /uploads/session-1 ${image.config.descriptor.digest}`,
      ]);
    } finally {
      await registry.close();
      await new Promise((resolve) => storage.close(resolve));
    }
  });

  it("uploads a blob whose mount the registry refuses for lack of pull on the source repository", async () => {
    const registry = await FakeRegistry.start({
      auth: "bearer",
      user: "alice",
      password: "s3cret",
      ungranted: ["repository:tok/src:pull"],
    });
    try {
      const auth = Buffer.from("alice:s3cret").toString("base64");
      const env = {
        DOCKER_CONFIG: await dockerConfig("unmountable", { auths: { [registry.host]: { auth } } }),
      };
      const image = testImage("v");
      await pushImage(parseTagReference(`${registry.host}/tok/src:1`), image, options({ env }));
      const opts = options({ env });
      await pushImage(parseTagReference(`${registry.host}/tok/dst:1`), image, opts);
      assert.deepEqual(registry.blob("tok/dst", image.layer.descriptor.digest), Buffer.alloc(3000, "v"));
      assert.ok(registry.manifests.has("tok/dst@1"));
      assert.ok(
        logLines(opts.events).some((line) =>
          /^mounting blob sha256:[0-9a-f]{12} from tok\/src: .*refused access.*; uploading it instead$/.test(
            line,
          ),
        ),
        logLines(opts.events).join("\n"),
      );
    } finally {
      await registry.close();
    }
  });
});

describe("registry auth", () => {
  it("follows a Bearer challenge: token for the scope, with basic credentials from config.json", async () => {
    const registry = await FakeRegistry.start({ auth: "bearer", user: "alice", password: "s3cret" });
    try {
      const auth = Buffer.from("alice:s3cret").toString("base64");
      const dir = await dockerConfig("bearer", { auths: { [registry.host]: { auth } } });
      const image = testImage("l");
      await pushImage(
        parseTagReference(`${registry.host}/tok/app:1`),
        image,
        options({ env: { DOCKER_CONFIG: dir } }),
      );
      assert.ok(registry.manifests.has("tok/app@1"));
      const first = registry.tokenRequests[0];
      assert.equal(first?.query.get("service"), "fake registry");
      assert.deepEqual(first?.query.getAll("scope"), ["repository:tok/app:pull,push"]);
      assert.equal(first?.headers.authorization, `Basic ${auth}`);
      assert.equal(registry.tokenRequests.length, 1, "one token should serve the whole push");
      // A mount from tok/app into tok/other needs pull on tok/app: a second token covering both.
      await pushImage(
        parseTagReference(`${registry.host}/tok/other:1`),
        image,
        options({ env: { DOCKER_CONFIG: dir } }),
      );
      assert.ok(
        registry.requests.some(
          (r) => r.path === "/v2/tok/other/blobs/uploads/" && r.query.get("from") === "tok/app",
        ),
      );
      assert.ok(
        registry.tokenRequests.some((t) => t.query.getAll("scope").includes("repository:tok/app:pull")),
        "no token was asked for the mount's source",
      );
      assert.equal(
        registry.count("PUT", /^\/v2\/tok\/other\/blobs\/uploads\//),
        0,
        "a blob was uploaded instead of mounted",
      );
    } finally {
      await registry.close();
    }
  });

  it("trades a stored identity token for an access token with the refresh-token grant", async () => {
    const registry = await FakeRegistry.start({ auth: "bearer", refreshToken: "refresh-me" });
    try {
      const dir = await dockerConfig("identity", {
        auths: { [registry.host]: { identitytoken: "refresh-me" } },
      });
      await pushImage(
        parseTagReference(`${registry.host}/oauth:1`),
        testImage("r"),
        options({ env: { DOCKER_CONFIG: dir } }),
      );
      assert.ok(registry.manifests.has("oauth@1"));
      assert.equal(registry.tokenRequests[0]?.method, "POST");
      assert.equal(registry.tokenRequests[0]?.headers.authorization, undefined);
    } finally {
      await registry.close();
    }
  });

  it("sends Basic credentials from --registry-auth-file, and refuses wrong ones", async () => {
    const registry = await FakeRegistry.start({ auth: "basic", user: "bob", password: "pw" });
    try {
      const good = join(
        await dockerConfig("basic", {
          auths: { [`http://${registry.host}`]: { username: "bob", password: "pw" } },
        }),
        "config.json",
      );
      await pushImage(
        parseTagReference(`${registry.host}/basic:1`),
        testImage("m"),
        options({ authFile: good }),
      );
      assert.ok(registry.manifests.has("basic@1"));
      const bad = join(
        await dockerConfig("wrong", { auths: { [registry.host]: { username: "bob", password: "nope" } } }),
        "config.json",
      );
      await assert.rejects(
        pushImage(parseTagReference(`${registry.host}/basic:2`), testImage("n"), options({ authFile: bad })),
        (error) => {
          assert.ok(error instanceof SinkError);
          assert.match(error.message, /refused the credentials/);
          return true;
        },
      );
      assert.equal(registry.manifests.has("basic@2"), false);
    } finally {
      await registry.close();
    }
  });

  it("says that the token server refused, in a sentence about the registry", async () => {
    const registry = await FakeRegistry.start({ auth: "bearer", user: "alice", password: "s3cret" });
    try {
      const auth = Buffer.from("alice:wrong").toString("base64");
      const dir = await dockerConfig("bearer-wrong", { auths: { [registry.host]: { auth } } });
      await assert.rejects(
        pushImage(
          parseTagReference(`${registry.host}/tok/denied:1`),
          testImage("p"),
          options({ env: { DOCKER_CONFIG: dir } }),
        ),
        {
          name: "SinkError",
          message: `the registry ${registry.host} refused access (its token server ${registry.host} answered 401) (credentials from ${join(dir, "config.json")})`,
        },
      );
    } finally {
      await registry.close();
    }
  });

  it("says how to log in when the registry wants credentials and there are none", async () => {
    const registry = await FakeRegistry.start({ auth: "basic", user: "bob", password: "pw" });
    try {
      await assert.rejects(
        pushImage(parseTagReference(`${registry.host}/anon:1`), testImage("o"), options()),
        (error) => {
          assert.ok(error instanceof SinkError);
          assert.match(error.hint ?? "", /docker login/);
          return true;
        },
      );
    } finally {
      await registry.close();
    }
  });

  it("gets credentials from a credential helper on PATH", async () => {
    const registry = await FakeRegistry.start({ auth: "bearer", user: "carol", password: "from-helper" });
    try {
      const bin = await mkdtemp(join(scratch, "bin-"));
      const helper = join(bin, "docker-credential-test");
      await writeFile(
        helper,
        [
          "#!/bin/sh",
          "read server",
          `if [ "$1" = get ] && [ "$server" = "${registry.host}" ]; then`,
          `  printf '{"ServerURL":"%s","Username":"carol","Secret":"from-helper"}' "$server"`,
          "else",
          "  echo 'credentials not found in native keychain'; exit 1",
          "fi",
          "",
        ].join("\n"),
      );
      await chmod(helper, 0o755);
      const dir = await dockerConfig("helper", { credHelpers: { [registry.host]: "test" } });
      const env = { DOCKER_CONFIG: dir, PATH: `${bin}${delimiter}${process.env.PATH ?? ""}` };
      await pushImage(parseTagReference(`${registry.host}/helped:1`), testImage("p"), options({ env }));
      assert.ok(registry.manifests.has("helped@1"));
      assert.equal(
        registry.tokenRequests[0]?.headers.authorization,
        `Basic ${Buffer.from("carol:from-helper").toString("base64")}`,
      );
      // The same helper as credsStore, asked about a host it does not know: no credentials, no error.
      const store = await dockerConfig("store", { credsStore: "test" });
      assert.equal(
        await findCredentials("elsewhere:5000", {
          env: { DOCKER_CONFIG: store, PATH: env.PATH },
          signal: new AbortController().signal,
        }),
        undefined,
      );
    } finally {
      await registry.close();
    }
  });

  it("reports a missing credential helper as a tool error", async () => {
    const dir = await dockerConfig("missing-helper", { credsStore: "absent-helper" });
    await assert.rejects(
      findCredentials("h:1", {
        env: { DOCKER_CONFIG: dir, PATH: scratch },
        signal: new AbortController().signal,
      }),
      ToolError,
    );
  });

  it("says that access was refused, not the credentials, when a token lacks the push scope", async () => {
    const registry = await FakeRegistry.start({
      auth: "bearer",
      user: "alice",
      password: "s3cret",
      anonymousTokens: true,
      ungranted: ["repository:tok/locked:pull,push"],
    });
    try {
      await assert.rejects(
        pushImage(parseTagReference(`${registry.host}/tok/anon:1`), testImage("a"), options()),
        (error) => {
          assert.ok(error instanceof SinkError);
          assert.equal(
            error.message,
            `the registry ${registry.host} refused access and no credentials for it were found`,
          );
          assert.match(error.hint ?? "", /docker login/);
          return true;
        },
      );
      assert.equal(
        registry.tokenRequests[0]?.headers.authorization,
        undefined,
        "an anonymous token was not asked for",
      );
      const auth = Buffer.from("alice:s3cret").toString("base64");
      const dir = await dockerConfig("no-push", { auths: { [registry.host]: { auth } } });
      await assert.rejects(
        pushImage(
          parseTagReference(`${registry.host}/tok/locked:1`),
          testImage("b"),
          options({ env: { DOCKER_CONFIG: dir } }),
        ),
        {
          name: "SinkError",
          message: `the registry ${registry.host} refused access (credentials from ${join(dir, "config.json")})`,
        },
      );
    } finally {
      await registry.close();
    }
  });

  it("names a credential helper that printed nothing, and takes a null answer as no credentials", async () => {
    const bin = await mkdtemp(join(scratch, "bin-"));
    const helper = join(bin, "docker-credential-quiet");
    await writeFile(
      helper,
      ["#!/bin/sh", "read server", 'if [ "$server" = quiet.example ]; then exit 0; fi', "echo null", ""].join(
        "\n",
      ),
    );
    await chmod(helper, 0o755);
    const dir = await dockerConfig("quiet", { credsStore: "quiet" });
    const lookup = { env: { DOCKER_CONFIG: dir, PATH: bin }, signal: new AbortController().signal };
    await assert.rejects(findCredentials("quiet.example", lookup), {
      name: "ToolError",
      message: "the credential helper docker-credential-quiet printed nothing for quiet.example",
    });
    assert.equal(await findCredentials("null.example", lookup), undefined);
  });
});

describe("docker config.json", () => {
  const signal = new AbortController().signal;

  it("decodes auth, username/password and identity tokens, matching keys with a scheme or path", async () => {
    const dir = await dockerConfig("parse", {
      auths: {
        "one.example:5000": { auth: Buffer.from("u1:p:with:colons").toString("base64") },
        "https://two.example/v1/": { username: "u2", password: "p2" },
        "three.example": { identitytoken: "refresh" },
      },
    });
    const env = { DOCKER_CONFIG: dir };
    assert.deepEqual(await findCredentials("one.example:5000", { env, signal }), {
      username: "u1",
      password: "p:with:colons",
      origin: join(dir, "config.json"),
    });
    assert.equal((await findCredentials("two.example", { env, signal }))?.password, "p2");
    assert.equal((await findCredentials("three.example", { env, signal }))?.identityToken, "refresh");
    assert.equal(await findCredentials("one.example", { env, signal }), undefined);
  });

  it("finds ~/.docker/config.json through HOME when DOCKER_CONFIG is unset", async () => {
    const home = await mkdtemp(join(scratch, "home-"));
    const docker = join(home, ".docker");
    await mkdir(docker);
    await writeFile(
      join(docker, "config.json"),
      JSON.stringify({ auths: { "h:1": { username: "x", password: "y" } } }),
    );
    assert.equal((await findCredentials("h:1", { env: { HOME: home }, signal }))?.username, "x");
  });

  it("treats a missing discovered file as no credentials, but a missing or broken named file as a usage error", async () => {
    assert.equal(
      await findCredentials("h:1", { env: { HOME: join(scratch, "nowhere") }, signal }),
      undefined,
    );
    await assert.rejects(
      findCredentials("h:1", { env: {}, authFile: join(scratch, "absent.json"), signal }),
      UsageError,
    );
    const broken = join(scratch, "broken.json");
    await writeFile(broken, "{not json");
    await assert.rejects(findCredentials("h:1", { env: {}, authFile: broken, signal }), UsageError);
    const noColon = await dockerConfig("nocolon", {
      auths: { "h:1": { auth: Buffer.from("justuser").toString("base64") } },
    });
    await assert.rejects(findCredentials("h:1", { env: { DOCKER_CONFIG: noColon }, signal }), UsageError);
  });
});

describe("parseChallenge", () => {
  it("reads Bearer realm, service, several scopes and quoted escapes", () => {
    assert.deepEqual(
      parseChallenge(
        'Bearer realm="https://auth.example/token",service="reg \\"x\\"",scope="repository:a:pull repository:b:pull,push",error="insufficient_scope"',
      ),
      {
        scheme: "bearer",
        realm: "https://auth.example/token",
        service: 'reg "x"',
        scopes: ["repository:a:pull", "repository:b:pull,push"],
        error: "insufficient_scope",
      },
    );
  });

  it("reads Basic with or without a realm, and rejects unknown schemes and realm-less Bearer", () => {
    assert.deepEqual(parseChallenge('basic realm="Registry Realm"'), {
      scheme: "basic",
      realm: "Registry Realm",
    });
    assert.deepEqual(parseChallenge("Basic"), { scheme: "basic", realm: undefined });
    assert.equal(parseChallenge("Negotiate abc"), undefined);
    assert.equal(parseChallenge('Bearer service="x"'), undefined);
  });
});

/** Starts `server` on a free port of 127.0.0.1; returns the port. */
async function listenOnLoopback(server: NetServer): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as AddressInfo).port;
}

describe("transport", () => {
  it("refuses plain HTTP to a host that is not loopback unless the registry is allowed as insecure", async () => {
    const registry = await FakeRegistry.start({ host: ownAddress() });
    try {
      const target = parseTagReference(`${registry.host}/plain:1`);
      await assert.rejects(pushImage(target, testImage("q"), options()), (error) => {
        assert.ok(error instanceof SinkError);
        assert.match(error.hint ?? "", /--insecure-registry/);
        return true;
      });
      assert.equal(registry.requests.length, 0, "a plain-HTTP request reached the registry");
      await pushImage(target, testImage("q"), options({ insecureRegistry: true }));
      assert.ok(registry.manifests.has("plain@1"));
    } finally {
      await registry.close();
    }
  });

  it("trusts the CA of NODE_EXTRA_CA_CERTS that bin/mkbase kept from node's start-up", async () => {
    const { key, cert } = writeSelfSignedCertificate(scratch, ownAddress());
    // Not a loopback host, so the push goes over verified HTTPS.
    const registry = await FakeRegistry.start({
      host: ownAddress(),
      tls: { key: readFileSync(key), cert: readFileSync(cert) },
    });
    const before = process.env.MKBASE_DEFERRED_CA_CERTS;
    try {
      const target = parseTagReference(`${registry.host}/private-ca:1`);
      delete process.env.MKBASE_DEFERRED_CA_CERTS;
      await assert.rejects(pushImage(target, testImage("t"), options()), (error) => {
        assert.ok(error instanceof SinkError);
        assert.match(error.hint ?? "", /not trusted.*NODE_EXTRA_CA_CERTS/);
        return true;
      });
      process.env.MKBASE_DEFERRED_CA_CERTS = cert;
      const pushed = await pushImage(target, testImage("t"), options());
      assert.equal(pushed.reference, `${registry.host}/private-ca:1`);
      assert.ok(registry.manifests.has("private-ca@1"));
    } finally {
      if (before === undefined) delete process.env.MKBASE_DEFERRED_CA_CERTS;
      else process.env.MKBASE_DEFERRED_CA_CERTS = before;
      await registry.close();
    }
  });

  it("speaks HTTPS to a loopback registry without verifying its certificate, as docker does", async () => {
    const { key, cert } = writeSelfSignedCertificate(await mkdtemp(join(scratch, "tls-")), "127.0.0.1");
    const registry = await FakeRegistry.start({ tls: { key: readFileSync(key), cert: readFileSync(cert) } });
    try {
      await pushImage(parseTagReference(`${registry.host}/tls-local:1`), testImage("u"), options());
      assert.ok(registry.manifests.has("tls-local@1"));
    } finally {
      await registry.close();
    }
  });

  it("with --insecure-registry, speaks HTTPS without verifying the certificate to any host", async () => {
    const { key, cert } = writeSelfSignedCertificate(await mkdtemp(join(scratch, "tls-")), ownAddress());
    const registry = await FakeRegistry.start({
      host: ownAddress(),
      tls: { key: readFileSync(key), cert: readFileSync(cert) },
    });
    try {
      const target = parseTagReference(`${registry.host}/tls-insecure:1`);
      await pushImage(target, testImage("v"), options({ insecureRegistry: true }));
      assert.ok(registry.manifests.has("tls-insecure@1"));
    } finally {
      await registry.close();
    }
  });

  it("falls back to plain HTTP for a loopback registry without TLS, after one failed handshake", async () => {
    const registry = await FakeRegistry.start();
    try {
      const target = parseTagReference(`${registry.host}/fallback:1`);
      await pushImage(target, testImage("w", 2500), options({ chunkSize: 1000 }));
      assert.ok(registry.manifests.has("fallback@1"));
      assert.equal(registry.clientErrors, 1, "the scheme should be decided once per push");
    } finally {
      await registry.close();
    }
  });

  it("says what it tried when a loopback server speaks neither TLS nor HTTP", async () => {
    const server = createNetServer((socket) => socket.once("data", () => socket.end("SSH-2.0-test\r\n")));
    const port = await listenOnLoopback(server);
    try {
      await assert.rejects(
        pushImage(parseTagReference(`127.0.0.1:${port}/neither:1`), testImage("x"), options()),
        (error) => {
          assert.ok(error instanceof SinkError, String(error));
          assert.match(
            error.message,
            new RegExp(
              `^cannot talk to the registry at http://127\\.0\\.0\\.1:${port}: .*, after the TLS handshake at https://127\\.0\\.0\\.1:${port} failed$`,
            ),
          );
          return true;
        },
      );
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("says that a registry name does not resolve, instead of giving HTTPS advice", async () => {
    await assert.rejects(
      pushImage(parseTagReference("nonexistent.invalid/x:1"), testImage("y"), options()),
      (error) => {
        assert.ok(error instanceof SinkError, String(error));
        assert.match(error.hint ?? "", /^The name nonexistent\.invalid does not resolve: check its spelling/);
        return true;
      },
    );
  });

  it("says that nothing listens at a port that refuses the connection", async () => {
    const closed = createNetServer();
    const port = await listenOnLoopback(closed);
    await new Promise((resolve) => closed.close(resolve));
    await assert.rejects(
      pushImage(parseTagReference(`127.0.0.1:${port}/nobody:1`), testImage("z"), options()),
      (error) => {
        assert.ok(error instanceof SinkError, String(error));
        assert.match(
          error.message,
          new RegExp(`failed after 4 tries: GET https://127\\.0\\.0\\.1:${port}: connect ECONNREFUSED`),
        );
        assert.match(
          error.hint ?? "",
          new RegExp(`^Nothing listens at 127\\.0\\.0\\.1:${port}: check the port`),
        );
        return true;
      },
    );
  });
});
