/**
 * The OCI distribution protocol, the part a push needs: blob existence (`HEAD`), blob upload (one
 * `PUT` after the `POST`, or `PATCH` chunks with `Content-Range` for large blobs), cross-repository
 * mount, and manifest `PUT`. One client talks to one registry host for one push.
 *
 * Transport rules: HTTPS with a verified certificate. The loopback names (`localhost`, `127.0.0.1`,
 * `[::1]`) and registries the user allows as insecure are treated as docker and crane treat them: HTTPS
 * without verifying the certificate, and plain HTTP when the server does not speak TLS; the first
 * request decides which, for the whole client. Credentials are only ever sent to the registry's own
 * origin and to its token realm, never to a host an upload `Location` points at.
 *
 * Failures: connection resets and refusals, timeouts, 429 and 5xx are transient; each operation is
 * retried as a whole (a blob upload starts over with a fresh open of the blob) with exponential
 * backoff, a bounded number of times. Every other 4xx is final and becomes a
 * {@link RegistryResponseError} carrying the registry's own `errors[]`.
 */
import * as http from "node:http";
import * as https from "node:https";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { InterruptedError, MkbaseError, SinkError, errnoCode, throwIfAborted } from "../errors.js";
import type { Blob, Descriptor } from "../image/manifest.js";
import { extraCaOptions, isUntrustedCertificate } from "../net/extra-ca.js";
import { failWhenSilent } from "../net/http-get.js";
import { ProxyAgents, isLoopbackHost, proxyHint, proxyRoute } from "../net/proxy.js";
import type { ProgressListener } from "../progress.js";
import { RegistryAuthenticator, repositoryScope, type RegistryCredentials } from "./auth.js";

/** A blob to push: its descriptor, and a way to read its bytes (again, for each try). */
export interface PushBlob {
  readonly descriptor: Descriptor;
  open(): AsyncIterable<Buffer>;
}

/** One HTTP request to a registry or its token server. */
export interface RegistryRequest {
  readonly method: "GET" | "HEAD" | "POST" | "PUT" | "PATCH";
  readonly url: URL;
  readonly headers?: Readonly<Record<string, string>>;
  /**
   * Bytes, or an opener of a stream of exactly `size` bytes (sent with that `Content-Length`), opened
   * again when the request is repeated after an auth challenge.
   */
  readonly body?: Buffer | { readonly size: number; open(): AsyncIterable<Buffer> };
}

export interface RegistryResponse {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
}

/** An error entry of the distribution error body, `{"errors":[{"code","message","detail"}]}`. */
export interface RegistryErrorEntry {
  readonly code: string;
  readonly message: string;
}

/** A registry answered a request with a final (non-retryable) error status. */
export class RegistryResponseError extends SinkError {
  constructor(
    message: string,
    readonly status: number,
    readonly errors: readonly RegistryErrorEntry[],
    hint: string,
  ) {
    super(message, { hint });
  }
}

/** Connection-level failures worth another try: the registry restarting, a proxy dropping a socket. */
const TRANSIENT_NETWORK_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
]);

/** An attempt failed in a way that another attempt may not. */
class TransientFailure extends Error {
  constructor(
    message: string,
    readonly retryAfterMs: number | undefined,
    /** What to do if no attempt succeeds; the generic advice when absent. */
    readonly hint?: string,
    cause?: unknown,
  ) {
    super(message, cause === undefined ? undefined : { cause });
  }
}

const DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024;
/** Tries per operation, the first included. */
const MAX_TRIES = 4;
const FIRST_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 8_000;
/** A socket silent this long is given up (and the operation retried). */
const IDLE_TIMEOUT_MS = 60_000;
/** Registry answers we read are JSON documents and error bodies: far below this. */
const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;

export interface RegistryClientOptions {
  readonly signal: AbortSignal;
  readonly onProgress: ProgressListener;
  /** Treat every host as the loopback names are: unverified HTTPS, or plain HTTP. */
  readonly insecure: boolean;
  /** Loads the credentials for the host, when the registry first asks for them. */
  readonly credentials: () => Promise<RegistryCredentials | undefined>;
  /** Blobs larger than this are sent in `PATCH` chunks of this size; smaller ones in one `PUT`. */
  readonly chunkSize?: number;
}

function registryErrors(body: Buffer): RegistryErrorEntry[] {
  try {
    const parsed = JSON.parse(body.toString("utf8")) as { errors?: unknown };
    if (!Array.isArray(parsed.errors)) return [];
    return parsed.errors.flatMap((entry: unknown) => {
      if (entry === null || typeof entry !== "object") return [];
      const { code, message } = entry as { code?: unknown; message?: unknown };
      return [
        {
          code: typeof code === "string" ? code : "UNKNOWN",
          message: typeof message === "string" ? message : "",
        },
      ];
    });
  } catch {
    return [];
  }
}

function describeErrors(status: number, errors: readonly RegistryErrorEntry[], body: Buffer): string {
  if (errors.length > 0)
    return errors.map((e) => (e.message === "" ? e.code : `${e.code}: ${e.message}`)).join("; ");
  const text = body.toString("utf8").trim().slice(0, 200);
  return text === "" ? `HTTP ${status}` : `HTTP ${status}: ${text}`;
}

function retryAfterMs(headers: http.IncomingHttpHeaders): number | undefined {
  const value = headers["retry-after"];
  if (value === undefined || !/^\d+$/.test(value)) return undefined;
  return Number(value) * 1000;
}

/** `sha256:` and the first 12 hex digits, enough to tell blobs apart in messages. */
export function shortDigest(digest: string): string {
  return digest.slice(0, "sha256:".length + 12);
}

/** Re-cuts a byte stream into chunks of exactly `size` bytes (the last one shorter). */
async function* fixedChunks(source: AsyncIterable<Buffer>, size: number): AsyncGenerator<Buffer> {
  let pending: Buffer[] = [];
  let pendingLength = 0;
  for await (const piece of source) {
    let rest = piece;
    while (pendingLength + rest.length >= size) {
      const take = size - pendingLength;
      pending.push(rest.subarray(0, take));
      yield Buffer.concat(pending, size);
      rest = rest.subarray(take);
      pending = [];
      pendingLength = 0;
    }
    if (rest.length > 0) {
      pending.push(rest);
      pendingLength += rest.length;
    }
  }
  if (pendingLength > 0) yield Buffer.concat(pending, pendingLength);
}

/** Passes `source` through, failing if it does not hold exactly `size` bytes. */
async function* exactly(source: AsyncIterable<Buffer>, size: number, what: string): AsyncGenerator<Buffer> {
  let seen = 0;
  for await (const chunk of source) {
    seen += chunk.length;
    if (seen > size) break;
    yield chunk;
  }
  if (seen !== size) {
    throw new SinkError(`${what} has ${seen > size ? "more" : "fewer"} bytes than its descriptor's ${size}`, {
      hint: "The blob changed after it was described; build the image again.",
    });
  }
}

/** What to do about a request to `url` that got no answer, by the socket error's `code`. */
function connectionHint(error: unknown, url: URL, insecureAllowed: boolean): string {
  if (isUntrustedCertificate(error))
    return `The certificate of ${url.host} is not trusted: if its CA is a private one, name a PEM file holding it in NODE_EXTRA_CA_CERTS.`;
  const viaProxy = proxyHint(url);
  if (viaProxy !== undefined) return viaProxy;
  switch (errnoCode(error)) {
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return `The name ${url.hostname} does not resolve: check its spelling, and the DNS (or /etc/hosts) of this machine.`;
    case "ECONNREFUSED":
      return `Nothing listens at ${url.host}: check the port, and that the registry is running.`;
    case "EHOSTUNREACH":
    case "ENETUNREACH":
    case "ETIMEDOUT":
      return `${url.host} cannot be reached from this machine: check the network route and firewalls.`;
  }
  return url.protocol === "https:" && !insecureAllowed
    ? `Check that ${url.host} serves HTTPS with a trusted certificate; for a plain-HTTP registry pass --insecure-registry.`
    : `Check that a registry listens at ${url.host}.`;
}

/**
 * One HTTP exchange; rejects with the socket's error (and its errno `code`) when there is no answer.
 * `verify` false accepts any certificate.
 */
function exchangeOnce(
  request: RegistryRequest,
  agent: http.Agent,
  verify: boolean,
  signal: AbortSignal,
): Promise<RegistryResponse> {
  return new Promise((resolve, reject) => {
    const secure = request.url.protocol === "https:";
    const headers: Record<string, string> = { "user-agent": "mkbase", ...request.headers };
    const body = request.body;
    if (body !== undefined)
      headers["content-length"] = String(Buffer.isBuffer(body) ? body.length : body.size);
    const options = { method: request.method, headers, agent, signal };
    const outgoing = secure
      ? https.request(request.url, { ...options, ...extraCaOptions(), rejectUnauthorized: verify })
      : http.request(request.url, options);
    failWhenSilent(outgoing, IDLE_TIMEOUT_MS);
    let bodySent = body === undefined || Buffer.isBuffer(body);
    // `on`, not `once`: a late second error (a destroyed body after the answer) must not go unhandled.
    outgoing.on("error", reject);
    outgoing.once("response", (incoming) => {
      const chunks: Buffer[] = [];
      let length = 0;
      incoming.on("data", (chunk: Buffer) => {
        length += chunk.length;
        if (length <= MAX_RESPONSE_BYTES) chunks.push(chunk);
      });
      incoming.on("error", reject);
      incoming.once("end", () => {
        // The registry answered before taking the whole body (an early 4xx): stop sending it.
        if (!bodySent) outgoing.destroy();
        resolve({ status: incoming.statusCode ?? 0, headers: incoming.headers, body: Buffer.concat(chunks) });
      });
    });
    if (body === undefined) outgoing.end();
    else if (Buffer.isBuffer(body)) outgoing.end(body);
    else {
      pipeline(Readable.from(body.open(), { objectMode: false }), outgoing).then(
        () => {
          bodySent = true;
        },
        // The request carries the error to `reject` (a short blob, a reset socket, an abort).
        (error: unknown) => outgoing.destroy(error instanceof Error ? error : new Error(String(error))),
      );
    }
  });
}

/** A client for one registry host, for the duration of one push. Call {@link close} when done. */
export class RegistryClient {
  private readonly auth: RegistryAuthenticator;
  private readonly httpAgent = new http.Agent({ keepAlive: true });
  private readonly httpsAgent = new https.Agent({ keepAlive: true });
  private readonly proxyAgents = new ProxyAgents({ keepAlive: true });
  private readonly chunkSize: number;
  /** `https://host[:port]` or `http://…`, as {@link decideOrigin} found. */
  private decidedOrigin: Promise<string> | undefined;

  constructor(
    /** `host[:port]` as in the image reference. */
    readonly host: string,
    private readonly options: RegistryClientOptions,
  ) {
    this.chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    this.auth = new RegistryAuthenticator({
      host,
      send: (request) => this.exchange(request),
      checkUrl: (url) => this.checkTransport(url),
      credentials: options.credentials,
    });
  }

  /** Frees the kept-alive connections. */
  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
    this.proxyAgents.destroy();
  }

  private origin(): Promise<string> {
    this.decidedOrigin ??= this.decideOrigin().catch((error: unknown) => {
      // Decided again by the next try (a registry that is still starting).
      this.decidedOrigin = undefined;
      throw error;
    });
    return this.decidedOrigin;
  }

  private async url(path: string): Promise<URL> {
    return new URL(path, await this.origin());
  }

  /**
   * HTTPS, unless the host may be insecure and answers the TLS handshake with something that is not
   * TLS (`EPROTO`): then plain HTTP, if the server answers `GET /v2/` that way. A plain-HTTP registry
   * thus costs one failed handshake per client, not one per request.
   */
  private async decideOrigin(): Promise<string> {
    const secure = new URL(`https://${this.host}/v2/`);
    if (!this.insecureAllowed(secure)) return secure.origin;
    try {
      await this.exchange({ method: "GET", url: secure });
      return secure.origin;
    } catch (error) {
      if (!(error instanceof SinkError && errnoCode(error.cause) === "EPROTO")) throw error;
    }
    const plain = new URL(`http://${this.host}/v2/`);
    try {
      await this.exchange({ method: "GET", url: plain });
      return plain.origin;
    } catch (error) {
      const tried = `after the TLS handshake at ${secure.origin} failed`;
      if (error instanceof TransientFailure)
        throw new TransientFailure(`${error.message}, ${tried}`, error.retryAfterMs, error.hint, error);
      if (error instanceof SinkError)
        throw new SinkError(`${error.message}, ${tried}`, { cause: error, hint: error.hint });
      throw error;
    }
  }

  /** Whether `url` may be reached without a verified certificate, or over plain HTTP. */
  private insecureAllowed(url: URL): boolean {
    return isLoopbackHost(url.hostname) || this.options.insecure;
  }

  /** Refuses plain HTTP to a host that is neither loopback nor allowed as insecure. */
  private checkTransport(url: URL): void {
    if (url.protocol === "https:") return;
    if (url.protocol === "http:" && this.insecureAllowed(url)) return;
    throw new SinkError(`the registry ${this.host} sent mkbase to ${url.origin}, which is not HTTPS`, {
      hint: `Only HTTPS is used for hosts other than localhost; pass --insecure-registry if ${url.host} is trusted.`,
    });
  }

  /** One exchange, with failures sorted into transient (retry) and final. */
  private async exchange(request: RegistryRequest): Promise<RegistryResponse> {
    throwIfAborted(this.options.signal);
    this.checkTransport(request.url);
    const insecureAllowed = this.insecureAllowed(request.url);
    let response: RegistryResponse;
    try {
      response = await exchangeOnce(
        request,
        await this.agentFor(request.url),
        !insecureAllowed,
        this.options.signal,
      );
    } catch (error) {
      if (this.options.signal.aborted)
        throw new InterruptedError("interrupted", { cause: this.options.signal.reason });
      if (error instanceof MkbaseError) throw error;
      const code = errnoCode(error);
      // EPROTO carries OpenSSL's internals as its message; what it means here is a failed handshake.
      const text =
        code === "EPROTO"
          ? "the TLS handshake failed (EPROTO)"
          : error instanceof Error
            ? error.message
            : String(error);
      const hint = connectionHint(error, request.url, insecureAllowed);
      if (code !== undefined && TRANSIENT_NETWORK_CODES.has(code)) {
        throw new TransientFailure(
          `${request.method} ${request.url.origin}: ${text}`,
          undefined,
          hint,
          error,
        );
      }
      throw new SinkError(`cannot talk to the registry at ${request.url.origin}: ${text}`, {
        cause: error,
        hint,
      });
    }
    if (response.status >= 500 || response.status === 429) {
      const errors = registryErrors(response.body);
      throw new TransientFailure(
        `${request.method} ${request.url.pathname} answered ${describeErrors(response.status, errors, response.body)}`,
        retryAfterMs(response.headers),
        proxyHint(request.url, response.status),
      );
    }
    if (response.status === 407) {
      throw new SinkError(
        `${request.method} ${request.url.origin} answered HTTP 407 Proxy Authentication Required`,
        {
          hint: proxyHint(request.url, response.status),
        },
      );
    }
    return response;
  }

  /** The agent for a request to `url`: through the environment's proxy, or a direct one. */
  private agentFor(url: URL): Promise<http.Agent> | http.Agent {
    const route = proxyRoute(url);
    if (route !== undefined) return this.proxyAgents.agentFor(url, route);
    return url.protocol === "https:" ? this.httpsAgent : this.httpAgent;
  }

  /** An exchange with the registry itself: auth header added, one retry after a 401 challenge. */
  private async call(request: RegistryRequest, scopes: readonly string[]): Promise<RegistryResponse> {
    // Never hand credentials to another origin (blob storage a Location may point at).
    if (request.url.origin !== (await this.origin())) return this.exchange(request);
    const sent = await this.auth.authorization(scopes);
    const first = await this.exchange(withAuthorization(request, sent));
    if (first.status !== 401) return first;
    const retry = await this.auth.answer(first.headers["www-authenticate"], scopes, sent);
    const second = await this.exchange(withAuthorization(request, retry));
    if (second.status === 401) throw await this.auth.refusal("refused the credentials");
    return second;
  }

  /** Runs `attempt` until it succeeds, fails finally, or {@link MAX_TRIES} transient failures. */
  private async retrying<T>(what: string, attempt: () => Promise<T>): Promise<T> {
    const { signal, onProgress } = this.options;
    for (let tryNumber = 1; ; tryNumber++) {
      try {
        return await attempt();
      } catch (error) {
        if (signal.aborted) throw new InterruptedError("interrupted", { cause: signal.reason });
        if (!(error instanceof TransientFailure)) throw error;
        if (tryNumber >= MAX_TRIES) {
          throw new SinkError(`${what} failed after ${MAX_TRIES} tries: ${error.message}`, {
            cause: error,
            hint: `${error.hint ?? `Check that the registry at ${this.host} is up and reachable.`} Then push again (blobs already pushed are not sent twice).`,
          });
        }
        const backoff = Math.min(FIRST_BACKOFF_MS * 2 ** (tryNumber - 1), MAX_BACKOFF_MS);
        const delay = Math.min(Math.max(backoff, error.retryAfterMs ?? 0), MAX_BACKOFF_MS);
        onProgress({
          kind: "log",
          source: "registry",
          line: `${what}: ${error.message}; try ${tryNumber + 1} of ${MAX_TRIES} in ${(delay / 1000).toFixed(1)} s`,
        });
        try {
          await sleep(delay, undefined, { signal });
        } catch (abort) {
          throw new InterruptedError("interrupted", { cause: abort });
        }
      }
    }
  }

  /** Fails with the registry's own error unless `response.status` is one of `expected`. */
  private expect(
    response: RegistryResponse,
    expected: readonly number[],
    what: string,
    repository: string,
  ): void {
    if (expected.includes(response.status)) return;
    const errors = registryErrors(response.body);
    const hint =
      response.status === 403
        ? `The credentials for ${this.host} lack push rights on ${repository}; check them or log in as another user.`
        : response.status === 404
          ? `Check the repository name ${repository} and that the registry at ${this.host} serves the distribution API.`
          : `The registry refused the request; its answer is above.`;
    throw new RegistryResponseError(
      `${what} at ${this.host}/${repository} failed: ${describeErrors(response.status, errors, response.body)}`,
      response.status,
      errors,
      hint,
    );
  }

  private location(response: RegistryResponse, base: URL, what: string): URL {
    const value = response.headers.location;
    if (value === undefined || value === "") {
      throw new SinkError(`the registry ${this.host} answered ${what} without a Location header`, {
        hint: "The registry does not follow the distribution protocol; push with another tool to compare.",
      });
    }
    const url = new URL(value, base);
    this.checkTransport(url);
    return url;
  }

  /** Whether `repository` already holds blob `digest`. */
  blobExists(repository: string, digest: string): Promise<boolean> {
    return this.retrying(`checking blob ${shortDigest(digest)}`, async () => {
      const url = await this.url(`/v2/${repository}/blobs/${digest}`);
      const response = await this.call({ method: "HEAD", url }, [repositoryScope(repository, "pull,push")]);
      if (response.status === 404) return false;
      // Registries backed by object storage answer with a redirect to the blob's storage URL.
      this.expect(response, [200, 302, 303, 307, 308], `checking blob ${shortDigest(digest)}`, repository);
      return true;
    });
  }

  /**
   * Asks the registry to mount blob `digest` from repository `from` into `repository`. Returns true
   * when mounted; false when the registry could not (it then opened an upload, which is left to expire).
   */
  mountBlob(repository: string, digest: string, from: string): Promise<boolean> {
    const scopes = [repositoryScope(repository, "pull,push"), repositoryScope(from, "pull")];
    return this.retrying(`mounting blob ${shortDigest(digest)}`, async () => {
      const url = await this.url(`/v2/${repository}/blobs/uploads/`);
      url.searchParams.set("mount", digest);
      url.searchParams.set("from", from);
      const response = await this.call({ method: "POST", url }, scopes);
      this.expect(response, [201, 202], `mounting blob ${shortDigest(digest)} from ${from}`, repository);
      return response.status === 201;
    });
  }

  /** Uploads `blob` into `repository`: one `PUT` when small, `PATCH` chunks then a `PUT` when large. */
  uploadBlob(repository: string, blob: PushBlob): Promise<void> {
    const { digest, size } = blob.descriptor;
    const what = `uploading blob ${shortDigest(digest)}`;
    const scopes = [repositoryScope(repository, "pull,push")];
    return this.retrying(what, async () => {
      const start = await this.url(`/v2/${repository}/blobs/uploads/`);
      const started = await this.call({ method: "POST", url: start }, scopes);
      this.expect(started, [202], what, repository);
      let location = this.location(started, start, "an upload start");
      const open = (): AsyncIterable<Buffer> => exactly(blob.open(), size, `blob ${digest}`);
      let body: RegistryRequest["body"];
      if (size <= this.chunkSize) {
        body = { size, open };
      } else {
        let offset = 0;
        for await (const chunk of fixedChunks(open(), this.chunkSize)) {
          const response = await this.call(
            {
              method: "PATCH",
              url: location,
              headers: {
                "content-type": "application/octet-stream",
                // Inclusive byte range, without a unit: the distribution spec's form.
                "content-range": `${offset}-${offset + chunk.length - 1}`,
              },
              body: chunk,
            },
            scopes,
          );
          this.expect(response, [202], `${what} (bytes ${offset}–${offset + chunk.length - 1})`, repository);
          location = this.location(response, location, "a chunk");
          offset += chunk.length;
        }
      }
      const finish = new URL(location);
      finish.searchParams.set("digest", digest);
      const headers = { "content-type": "application/octet-stream" };
      const done = await this.call(
        { method: "PUT", url: finish, headers, body: body ?? Buffer.alloc(0) },
        scopes,
      );
      this.expect(done, [201], what, repository);
    });
  }

  /** Puts a manifest or index under `reference` (a digest or a tag); returns the digest the registry reports. */
  putManifest(repository: string, reference: string, manifest: Blob): Promise<string> {
    const what = `putting manifest ${shortDigest(manifest.descriptor.digest)} as ${reference.includes(":") ? shortDigest(reference) : reference}`;
    return this.retrying(what, async () => {
      const url = await this.url(`/v2/${repository}/manifests/${reference}`);
      const response = await this.call(
        {
          method: "PUT",
          url,
          headers: { "content-type": manifest.descriptor.mediaType },
          body: manifest.data,
        },
        [repositoryScope(repository, "pull,push")],
      );
      // The spec says 201; some registries answer 200 or 202 for a stored manifest, and crane takes them.
      this.expect(response, [200, 201, 202], what, repository);
      const reported = response.headers["docker-content-digest"];
      if (typeof reported === "string" && reported !== "" && reported !== manifest.descriptor.digest) {
        throw new SinkError(
          `the registry ${this.host} stored the manifest as ${reported}, expected ${manifest.descriptor.digest}`,
          {
            hint: "The registry rewrote the manifest; it cannot be addressed by the digest mkbase computed.",
          },
        );
      }
      return manifest.descriptor.digest;
    });
  }
}

function withAuthorization(request: RegistryRequest, authorization: string | undefined): RegistryRequest {
  if (authorization === undefined) return request;
  return { ...request, headers: { ...request.headers, authorization } };
}
