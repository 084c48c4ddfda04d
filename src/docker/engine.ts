/**
 * The narrow part of the Docker Engine API that mkbase uses. dockerode and its transport are not loaded:
 * the transport requires ssh2 (and its crypto set-up) at start-up even for a local socket, and dockerode
 * every resource class and the gRPC stack for BuildKit sessions, ~100 ms and ~140 ms before the first
 * request, for endpoints we never call. Sinks depend on the {@link EngineClient} interface, so unit
 * tests can fake it; end-to-end tests use the real engine.
 */
import type { Readable, Writable } from "node:stream";
import { DaemonUnavailableError, InterruptedError, SinkError, errnoCode } from "../errors.js";
import {
  resolveEndpoint,
  sshDestination,
  systemDiscovery,
  type DiscoveryEnvironment,
  type EngineEndpoint,
} from "./connection.js";
import type { Platform } from "../image/platform.js";
import { EngineStatusError, openTransport, readText, type Query, type Transport } from "./transport.js";

/** A request body being written, and the engine's reply once its status is 2xx. */
export interface EngineUpload {
  readonly body: Writable;
  readonly response: Promise<Readable>;
}

/** Highest API version mkbase speaks; the engine's own is used when it is lower. */
const CLIENT_MAX_API = "1.47";
const PING_TIMEOUT_MS = 15_000;

export interface ImageSummary {
  readonly id: string;
  /** DiffIDs of the image's layers (`RootFS.Layers`). */
  readonly diffIds: readonly string[];
  /** The platform the engine recorded (`Os`, `Architecture`, `Variant`). */
  readonly platform: Platform;
  readonly repoTags: readonly string[];
}

/**
 * Where the engine keeps images. The classic store (graph drivers such as overlay2) keeps layers by
 * DiffID, so an archive may leave out a layer the engine already holds; the containerd store keeps
 * content blobs and needs every blob in the archive it loads.
 */
export type ImageStore = "classic" | "containerd";

export interface EngineClient {
  readonly endpoint: string;
  readonly apiVersion: string;
  /** Undefined unless asked for when connecting ({@link ConnectOptions.imageStore}). */
  readonly imageStore: ImageStore | undefined;
  /**
   * POSTs `body` (a tar) to `path` and resolves with the streamed response once the headers say 2xx.
   * The request is destroyed, never ended, when `signal` aborts (with `untilSent`, only while the body
   * is being sent, since the engine reads a complete one anyway) or `body` errors.
   */
  postTar(
    path: string,
    query: Query,
    body: Readable,
    signal: AbortSignal,
    untilSent?: boolean,
  ): Promise<Readable>;
  /**
   * Starts a POST of a tar to `path` that the caller writes into `body` (see {@link Upload}); `response`
   * is as for {@link postTar}. Destroying `body`, or aborting `signal` before `body` is ended and sent,
   * destroys the request.
   */
  uploadTar(path: string, query: Query, signal: AbortSignal): EngineUpload;
  inspectImage(id: string): Promise<ImageSummary | undefined>;
  /** The engine's own platform (`GET /version`). */
  enginePlatform(): Promise<Platform>;
  tagImage(id: string, repository: string, tag: string): Promise<void>;
  removeImage(id: string): Promise<void>;
  /** Closes the connections kept open for later requests. */
  close(): void;
}

/** Compares dotted API versions numerically (`1.9` < `1.41`). */
export function compareApiVersions(a: string, b: string): number {
  const [aMajor = 0, aMinor = 0] = a.split(".").map(Number);
  const [bMajor = 0, bMinor = 0] = b.split(".").map(Number);
  return aMajor - bMajor || aMinor - bMinor;
}

function unreachable(endpoint: EngineEndpoint, error: unknown): DaemonUnavailableError {
  if (error instanceof EngineStatusError) {
    // Something answered, but not as an engine does: a web server's error page says nothing useful.
    const said = error.message.trim();
    const shown = said === "" || said.startsWith("<") || said.length > 200 ? "" : `: ${said.split("\n")[0]}`;
    return new DaemonUnavailableError(
      `${endpoint.description} answered /_ping with HTTP ${error.statusCode}${shown}: it is not a working Docker Engine`,
      {
        cause: error,
        hint: "Point DOCKER_HOST at a Docker Engine (unix://, tcp:// or ssh://), and check it with `docker version`.",
      },
    );
  }
  const code = errnoCode(error);
  const message = error instanceof Error ? error.message : String(error);
  const address = endpoint.address;
  const overSsh = address.kind === "ssh";
  const hint = overSsh
    ? `Check that \`ssh ${sshDestination(address).join(" ")} docker version\` works without a prompt: ssh installed here, a key or agent that logs in, and docker on the host.`
    : code === "EACCES"
      ? "Permission denied on the socket: run as root, or add your user to the docker group."
      : endpoint.context !== undefined
        ? `Start the engine that docker context ${endpoint.context} names, or choose another context (DOCKER_CONTEXT=NAME, or \`docker context use default\`).`
        : "Start the engine (e.g. `sudo systemctl start docker` or `dockerd`), or point DOCKER_HOST at a running one (unix://, tcp:// or ssh://).";
  // What ssh printed says more than an errno; a socket's errno says all.
  const why = overSsh || code === undefined ? message : code;
  return new DaemonUnavailableError(`cannot reach the Docker Engine at ${endpoint.description} (${why})`, {
    cause: error,
    hint,
  });
}

function engineFailure(what: string, error: unknown): SinkError {
  const status = error instanceof EngineStatusError ? ` (HTTP ${error.statusCode})` : "";
  const detail = error instanceof Error ? error.message : String(error);
  return new SinkError(`the Docker Engine failed ${what}${status}: ${detail}`, { cause: error });
}

function statusOf(error: unknown): number | undefined {
  return error instanceof EngineStatusError ? error.statusCode : undefined;
}

interface InspectResponse {
  readonly Id: string;
  readonly Os: string;
  readonly Architecture: string;
  /** Absent on engines before API 1.40, empty when the image has none. */
  readonly Variant?: string;
  readonly RepoTags?: string[] | null;
  readonly RootFS?: { readonly Layers?: string[] };
}

interface InfoResponse {
  /** `[["driver-type", "io.containerd.snapshotter.v1"], …]` on the containerd image store. */
  readonly DriverStatus?: [string, string][] | null;
}

/**
 * The image store an engine's `/info` reports. Graph drivers report no driver type; any driver type
 * counts as the containerd store, whose load path (every blob in the archive) works on either store.
 */
export function imageStoreOf(info: InfoResponse): ImageStore {
  const driverType = info.DriverStatus?.find(([key]) => key === "driver-type")?.[1];
  return driverType === undefined ? "classic" : "containerd";
}

class HttpEngine implements EngineClient {
  constructor(
    private readonly transport: Transport,
    /** `/v1.41`: every request but the first two is made in the negotiated API version. */
    private readonly prefix: string,
    readonly endpoint: string,
    readonly apiVersion: string,
    readonly imageStore: ImageStore | undefined,
  ) {}

  close(): void {
    this.transport.close();
  }

  async postTar(
    path: string,
    query: Query,
    body: Readable,
    signal: AbortSignal,
    untilSent = false,
  ): Promise<Readable> {
    if (signal.aborted) {
      body.destroy();
      throw new InterruptedError("interrupted");
    }
    return this.awaitReply(
      path,
      this.transport.send({ method: "POST", path: this.prefix + path, query, body, signal, untilSent }),
      signal,
    );
  }

  uploadTar(path: string, query: Query, signal: AbortSignal): EngineUpload {
    const upload = this.transport.upload({
      method: "POST",
      path: this.prefix + path,
      query,
      signal,
      untilSent: true,
    });
    return { body: upload.body, response: this.awaitReply(path, upload.response, signal) };
  }

  /** Waits for the reply to a POST of a tar; a failure is worded for the user. */
  private async awaitReply(path: string, reply: Promise<Readable>, signal: AbortSignal): Promise<Readable> {
    try {
      return await reply;
    } catch (error) {
      if (signal.aborted) throw new InterruptedError("interrupted", { cause: error });
      if (error instanceof EngineStatusError) throw engineFailure(`POST ${path}`, error);
      throw new SinkError(
        `lost the connection to the Docker Engine at ${this.endpoint}: ${(error as Error).message}`,
        {
          cause: error,
          hint: "Check that the engine is still running (`docker version`) and run again.",
        },
      );
    }
  }

  /** One request without a body, in the negotiated API version; resolves with the whole reply. */
  private async call(method: string, path: string, query?: Query): Promise<string> {
    return readText(await this.transport.send({ method, path: this.prefix + path, query }));
  }

  async inspectImage(id: string): Promise<ImageSummary | undefined> {
    try {
      const info = JSON.parse(
        await this.call("GET", `/images/${encodeURIComponent(id)}/json`),
      ) as InspectResponse;
      return {
        id: info.Id,
        diffIds: info.RootFS?.Layers ?? [],
        platform: {
          os: info.Os,
          architecture: info.Architecture,
          ...(info.Variant !== undefined && info.Variant !== "" ? { variant: info.Variant } : {}),
        },
        repoTags: info.RepoTags ?? [],
      };
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw engineFailure(`to inspect image ${id}`, error);
    }
  }

  async enginePlatform(): Promise<Platform> {
    try {
      const version = JSON.parse(await this.call("GET", "/version")) as { Os: string; Arch: string };
      return { os: version.Os, architecture: version.Arch };
    } catch (error) {
      throw engineFailure("to report its version", error);
    }
  }

  async tagImage(id: string, repository: string, tag: string): Promise<void> {
    try {
      await this.call("POST", `/images/${encodeURIComponent(id)}/tag`, { repo: repository, tag });
    } catch (error) {
      throw engineFailure(`to tag ${id} as ${repository}:${tag}`, error);
    }
  }

  async removeImage(id: string): Promise<void> {
    try {
      await this.call("DELETE", `/images/${encodeURIComponent(id)}`);
    } catch (error) {
      if (statusOf(error) === 404) return;
      throw engineFailure(`to remove image ${id}`, error);
    }
  }
}

/**
 * Connects to the engine and negotiates the API version (the lower of the engine's and mkbase's), so
 * engines from API 1.41 (Docker 20.10) to current ones, which refuse old versions, both work. Also learns
 * which image store the engine uses, which decides how an image is loaded, when asked.
 */
export async function connectEngine(
  signal: AbortSignal,
  options: ConnectOptions = {},
): Promise<EngineClient> {
  const endpoint = resolveEndpoint(options.discovery ?? systemDiscovery);
  const transport = await openTransport(endpoint.address);
  try {
    return await negotiate(transport, endpoint, signal, options);
  } catch (error) {
    transport.close();
    throw error;
  }
}

export interface ConnectOptions {
  /**
   * Whether to learn the image store (default: yes), which only the load path needs: `/info` costs the
   * engine ~10 ms of gathering, which an import would wait for before its first byte.
   */
  readonly imageStore?: boolean;
  /** Where to look for the engine (default: this process's environment and files). */
  readonly discovery?: DiscoveryEnvironment;
}

/** Asks for the engine's API version and, if asked, its image store (see {@link connectEngine}). */
async function negotiate(
  transport: Transport,
  endpoint: EngineEndpoint,
  signal: AbortSignal,
  options: ConnectOptions,
): Promise<EngineClient> {
  // A controller and a timer, not AbortSignal.timeout(): node 20 may collect a timeout signal held only
  // by AbortSignal.any() before it fires, and an engine that accepts but never answers hung mkbase.
  const deadline = new AbortController();
  // Unref'd: the engine's sockets keep the process alive while it waits, and nothing else should.
  const timer = setTimeout(() => deadline.abort(), PING_TIMEOUT_MS).unref();
  const bounded = AbortSignal.any([signal, deadline.signal]);
  const send = (path: string): ReturnType<Transport["send"]> =>
    transport.send({ method: "GET", path, signal: bounded });
  // Both requests go out at once. An engine (or an authorization plugin) may refuse /info: the
  // full-archive load then works on any store.
  const info =
    options.imageStore !== false
      ? send("/info")
          .then(async (response) => JSON.parse(await readText(response)) as InfoResponse)
          .catch((): InfoResponse => ({ DriverStatus: [["driver-type", "unknown"]] }))
      : undefined;
  let engineApi: string | undefined;
  try {
    // As the docker CLI negotiates: /_ping costs the engine nothing, unlike /version, and its header
    // names the engine's API version.
    const ping = await send("/_ping");
    ping.resume();
    engineApi = ping.headers["api-version"]?.toString();
  } catch (error) {
    clearTimeout(timer);
    if (signal.aborted) throw new InterruptedError("interrupted", { cause: error });
    if (deadline.signal.aborted) {
      throw new DaemonUnavailableError(
        `${endpoint.description} took the connection but did not answer within ${PING_TIMEOUT_MS / 1000} s`,
        {
          cause: error,
          hint: "The engine may be hung or still starting: check it with `docker version`, restart it, or point DOCKER_HOST at another one.",
        },
      );
    }
    throw unreachable(endpoint, error);
  }
  if (engineApi === undefined) {
    throw new DaemonUnavailableError(
      `${endpoint.description} answered without naming its API version (no API-Version header on /_ping)`,
      { hint: "Point DOCKER_HOST at a Docker Engine (API 1.41 or later), not a proxy that drops headers." },
    );
  }
  const apiVersion = compareApiVersions(engineApi, CLIENT_MAX_API) < 0 ? engineApi : CLIENT_MAX_API;
  const store = info === undefined ? undefined : imageStoreOf(await info);
  clearTimeout(timer);
  return new HttpEngine(transport, `/v${apiVersion}`, endpoint.description, apiVersion, store);
}
