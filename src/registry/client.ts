/**
 * The OCI distribution protocol, the part a push needs: blob existence (`HEAD`), blob upload (one
 * `PUT` after the `POST`, or `PATCH` chunks with `Content-Range` for large blobs), cross-repository
 * mount (best effort: a registry that does not mount gets the blob uploaded), and manifest `PUT`.
 * One client talks to one registry host for one push.
 *
 * Transport rules: HTTPS with a verified certificate. The loopback names (`localhost`, `127.0.0.1`,
 * `[::1]`) and registries the user allows as insecure are treated as docker and crane treat them: HTTPS
 * without verifying the certificate, and plain HTTP when the server does not speak TLS; the first
 * request decides which, for the whole client. Credentials are only ever sent to the registry's own
 * origin and to its token realm, never to a host an upload `Location` or a redirect points at.
 *
 * Failures: connection resets and refusals, timeouts, 429 and 5xx are transient; each operation is
 * retried as a whole (a blob upload starts over in a new session with a fresh open of the blob, never
 * re-sending a chunk to a session in an unknown state) with exponential backoff or the registry's
 * `Retry-After`, a bounded number of times. Every other 4xx is final and becomes a
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

/** An upload the registry opened: where the bytes go, and the smallest chunk it takes (0: any). */
export interface UploadSession {
  readonly location: URL;
  readonly minChunkLength: number;
}

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
  /** `detail` as text (JSON unless it is a string); absent when the registry gave none. */
  readonly detail?: string;
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
/**
 * The longest `Retry-After` waited for, as containers/image caps it: trying again before the time a
 * rate limiter named only earns another 429.
 */
const MAX_RETRY_AFTER_MS = 60_000;
/** Redirects followed for one request, as many as Go's HTTP client (crane, skopeo) follows. */
const MAX_REDIRECTS = 10;
/** Longest error text kept from a registry's answer: enough for a sentence, not for a page. */
const MAX_ERROR_TEXT = 200;
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

/** `text` on one line, cut at {@link MAX_ERROR_TEXT} characters. */
function oneLine(text: string): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > MAX_ERROR_TEXT ? `${line.slice(0, MAX_ERROR_TEXT)}…` : line;
}

/**
 * The `detail` of an error entry as text. Registries put the useful part there (the missing blob's
 * digest, why a manifest is invalid); distribution marshals Go errors it holds as an empty `{}`.
 */
function detailText(detail: unknown): string {
  if (detail === undefined || detail === null) return "";
  const text = oneLine(typeof detail === "string" ? detail : JSON.stringify(detail));
  return text === "{}" || text === "[]" ? "" : text;
}

function registryErrors(body: Buffer): RegistryErrorEntry[] {
  try {
    const parsed = JSON.parse(body.toString("utf8")) as { errors?: unknown };
    if (!Array.isArray(parsed.errors)) return [];
    return parsed.errors.flatMap((entry: unknown) => {
      if (entry === null || typeof entry !== "object") return [];
      const { code, message, detail } = entry as { code?: unknown; message?: unknown; detail?: unknown };
      const text = detailText(detail);
      return [
        {
          code: typeof code === "string" ? code : "UNKNOWN",
          message: typeof message === "string" ? message : "",
          ...(text === "" ? {} : { detail: text }),
        },
      ];
    });
  } catch {
    return [];
  }
}

function describeErrors(status: number, errors: readonly RegistryErrorEntry[], body: Buffer): string {
  if (errors.length > 0) {
    return errors
      .map((e) => {
        const what = e.message === "" ? e.code : `${e.code}: ${e.message}`;
        return e.detail === undefined ? what : `${what} (${e.detail})`;
      })
      .join("; ");
  }
  // Proxies and load balancers in front of a registry answer with an HTML page: its title says it.
  const page = body.toString("utf8");
  const html = /^\s*</.test(page);
  const title = html ? /<title[^>]*>([^<]*)<\/title>/i.exec(page)?.[1] : undefined;
  const text = oneLine(html ? (title ?? page.replace(/<[^>]*>/g, " ")) : page);
  return text === "" ? `HTTP ${status}` : `HTTP ${status}: ${text}`;
}

/** `Retry-After` in milliseconds: delay-seconds, or an HTTP date (RFC 9110, section 10.2.3). */
function retryAfterMs(headers: http.IncomingHttpHeaders): number | undefined {
  const value = headers["retry-after"];
  if (value === undefined) return undefined;
  const ms = /^\d+$/.test(value) ? Number(value) * 1000 : Date.parse(value) - Date.now();
  return Number.isFinite(ms) && ms > 0 ? ms : undefined;
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

  /**
   * An exchange with the registry itself: auth header added, one retry after a 401 challenge, and
   * 307/308 redirects followed. The distribution spec lets a registry redirect any request; these two
   * keep the method and body, so a manifest or an upload is sent again to the new URL. A HEAD is left
   * to its caller: a blob HEAD redirected to storage already says that the blob exists.
   */
  private async call(request: RegistryRequest, scopes: readonly string[]): Promise<RegistryResponse> {
    let current = request;
    for (let redirects = 0; ; redirects++) {
      const response = await this.callOnce(current, scopes);
      if (
        request.method === "HEAD" ||
        (response.status !== 307 && response.status !== 308) ||
        response.headers.location === undefined
      ) {
        const location = response.headers.location;
        // Callers read a Location against the URL they asked; after a redirect, it is relative to another.
        if (redirects === 0 || location === undefined) return response;
        return {
          ...response,
          headers: { ...response.headers, location: new URL(location, current.url).href },
        };
      }
      if (redirects === MAX_REDIRECTS) {
        throw new SinkError(
          `the registry ${this.host} redirects ${request.method} ${request.url.pathname} more than ${MAX_REDIRECTS} times`,
          {
            hint: "The registry or a proxy in front of it is misconfigured; ask its operator.",
          },
        );
      }
      current = { ...current, url: this.location(response, current.url, `a ${response.status} redirect`) };
    }
  }

  private async callOnce(request: RegistryRequest, scopes: readonly string[]): Promise<RegistryResponse> {
    // Never hand credentials to another origin (blob storage a Location or a redirect may point at).
    if (request.url.origin !== (await this.origin())) return this.exchange(request);
    const sent = await this.auth.authorization(scopes);
    const first = await this.exchange(withAuthorization(request, sent));
    if (first.status !== 401) return first;
    const retry = await this.auth.answer(first.headers["www-authenticate"], scopes, sent);
    const second = await this.exchange(withAuthorization(request, retry));
    if (second.status === 401) throw await this.auth.refusedAgain();
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
        const delay = Math.max(backoff, Math.min(error.retryAfterMs ?? 0, MAX_RETRY_AFTER_MS));
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

  /**
   * Fails with the registry's own error unless `response.status` is one of `expected`; `hintFor` may
   * give advice that fits the step better than the general one.
   */
  private expect(
    response: RegistryResponse,
    expected: readonly number[],
    what: string,
    repository: string,
    hintFor?: (status: number, errors: readonly RegistryErrorEntry[]) => string | undefined,
  ): void {
    if (expected.includes(response.status)) return;
    const errors = registryErrors(response.body);
    const hint =
      hintFor?.(response.status, errors) ??
      (response.status === 403
        ? `The credentials for ${this.host} lack push rights on ${repository}; check them or log in as another user.`
        : response.status === 404
          ? `Check the repository name ${repository} and that the registry at ${this.host} serves the distribution API.`
          : `The registry refused the request; its answer is above.`);
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

  /** The upload session a 202 to a `POST` on the uploads endpoint opened. */
  private uploadSession(response: RegistryResponse, base: URL): UploadSession {
    const min = Number(response.headers["oci-chunk-min-length"]);
    return {
      location: this.location(response, base, "an upload start"),
      minChunkLength: Number.isSafeInteger(min) && min > 0 ? min : 0,
    };
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
   * Asks the registry to mount blob `digest` from repository `from` into `repository`. Returns
   * `"mounted"`; else the upload session the registry opened instead (a 202: it cannot mount, or does
   * not find the blob there), for {@link uploadBlob} to continue; else undefined when it refused.
   */
  mountBlob(
    repository: string,
    digest: string,
    from: string,
  ): Promise<"mounted" | UploadSession | undefined> {
    const scopes = [repositoryScope(repository, "pull,push"), repositoryScope(from, "pull")];
    const what = `mounting blob ${shortDigest(digest)} from ${from}`;
    return this.retrying(what, async () => {
      const url = await this.url(`/v2/${repository}/blobs/uploads/`);
      url.searchParams.set("mount", digest);
      url.searchParams.set("from", from);
      try {
        const response = await this.call({ method: "POST", url }, scopes);
        this.expect(response, [201, 202], what, repository);
        return response.status === 201 ? "mounted" : this.uploadSession(response, url);
      } catch (error) {
        // A mount only saves an upload. Registries refuse it where they should answer 202: a token
        // without pull on `from` (401), a source repository they do not know (403, 404), and token
        // servers refuse scopes on such repositories. The upload then shows any lasting problem.
        if (!(error instanceof SinkError)) throw error;
        this.options.onProgress({
          kind: "log",
          source: "registry",
          line: `${what}: ${error.message}; uploading it instead`,
        });
        return undefined;
      }
    });
  }

  /** Opens an upload session in `repository`. */
  private async startUpload(
    repository: string,
    scopes: readonly string[],
    what: string,
  ): Promise<UploadSession> {
    const url = await this.url(`/v2/${repository}/blobs/uploads/`);
    const response = await this.call({ method: "POST", url }, scopes);
    this.expect(response, [202], what, repository);
    return this.uploadSession(response, url);
  }

  /**
   * Uploads `blob` into `repository`, in `opened` if a mount left a session: one `PUT` when small,
   * `PATCH` chunks then a `PUT` when large.
   */
  uploadBlob(repository: string, blob: PushBlob, opened?: UploadSession): Promise<void> {
    const { digest, size } = blob.descriptor;
    const what = `uploading blob ${shortDigest(digest)}`;
    const scopes = [repositoryScope(repository, "pull,push")];
    let unused = opened;
    return this.retrying(what, async () => {
      // A session serves one try: a failed one may have left part of the blob in it.
      const session = unused ?? (await this.startUpload(repository, scopes, what));
      unused = undefined;
      // The spec's minimum for every chunk but the last (object storage has one for multipart parts).
      const chunkSize = Math.max(this.chunkSize, session.minChunkLength);
      let location = session.location;
      const open = (): AsyncIterable<Buffer> => exactly(blob.open(), size, `blob ${digest}`);
      let body: RegistryRequest["body"];
      if (size <= chunkSize) {
        body = { size, open };
      } else {
        let offset = 0;
        for await (const chunk of fixedChunks(open(), chunkSize)) {
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
    const { mediaType } = manifest.descriptor;
    // Registries that predate OCI manifests answer them as unsupported or as invalid.
    const ociRefused = (status: number, errors: readonly RegistryErrorEntry[]): string | undefined =>
      status === 415 ||
      (status === 400 && errors.some((e) => e.code === "MANIFEST_INVALID" || e.code === "UNSUPPORTED"))
        ? `The registry may not take ${mediaType} (mkbase writes OCI media types only). Write an OCI archive with -o type=oci,dest=image.tar, then convert it to Docker's manifest format while pushing: \`skopeo copy --all --format v2s2 oci-archive:image.tar docker://${this.host}/${repository}:TAG\`.`
        : undefined;
    return this.retrying(what, async () => {
      const url = await this.url(`/v2/${repository}/manifests/${reference}`);
      const response = await this.call(
        {
          method: "PUT",
          url,
          headers: { "content-type": mediaType },
          body: manifest.data,
        },
        [repositoryScope(repository, "pull,push")],
      );
      // The spec says 201; some registries answer 200 or 202 for a stored manifest, and crane takes them.
      this.expect(response, [200, 201, 202], what, repository, ociRefused);
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
