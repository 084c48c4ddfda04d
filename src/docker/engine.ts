/**
 * The narrow part of the Docker Engine API that mkbase uses, over docker-modem — dockerode's own
 * transport (unix sockets, TCP with TLS, ssh). dockerode's entry point is not loaded: it pulls in every
 * resource class and the gRPC stack for BuildKit sessions, ~140 ms of start-up for endpoints we never call.
 * Sinks depend on the {@link EngineClient} interface, so unit tests can fake it; end-to-end tests use the
 * real engine.
 */
import type { Readable } from "node:stream";
import Modem from "docker-modem";
import { DaemonUnavailableError, InterruptedError, SinkError, errnoCode } from "../errors.js";
import {
  resolveEndpoint,
  systemDiscovery,
  type DiscoveryEnvironment,
  type EngineEndpoint,
} from "./connection.js";

/** Highest API version mkbase speaks; the engine's own is used when it is lower. */
const CLIENT_MAX_API = "1.47";
const PING_TIMEOUT_MS = 15_000;

export interface ImageSummary {
  readonly id: string;
  /** DiffIDs of the image's layers (`RootFS.Layers`). */
  readonly diffIds: readonly string[];
  readonly architecture: string;
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
  readonly imageStore: ImageStore;
  /**
   * POSTs `body` (a tar) to `path` and resolves with the streamed response once the headers say 2xx.
   * The request is destroyed, never ended, when `signal` aborts or `body` errors.
   */
  postTar(
    path: string,
    query: Record<string, unknown>,
    body: Readable,
    signal: AbortSignal,
  ): Promise<Readable>;
  inspectImage(id: string): Promise<ImageSummary | undefined>;
  tagImage(id: string, repository: string, tag: string): Promise<void>;
  removeImage(id: string): Promise<void>;
}

/** Compares dotted API versions numerically (`1.9` < `1.41`). */
export function compareApiVersions(a: string, b: string): number {
  const [aMajor = 0, aMinor = 0] = a.split(".").map(Number);
  const [bMajor = 0, bMinor = 0] = b.split(".").map(Number);
  return aMajor - bMajor || aMinor - bMinor;
}

function unreachable(endpoint: EngineEndpoint, error: unknown): DaemonUnavailableError {
  const code = errnoCode(error);
  const hint =
    code === "EACCES"
      ? "Permission denied on the socket: run as root, or add your user to the docker group."
      : "Start the engine (e.g. `sudo systemctl start docker` or `dockerd`), or point DOCKER_HOST at a running one (unix://, tcp:// or ssh://).";
  const why = code ?? (error instanceof Error ? error.message : String(error));
  return new DaemonUnavailableError(`cannot reach the Docker Engine at ${endpoint.description} (${why})`, {
    cause: error,
    hint,
  });
}

function engineFailure(what: string, error: unknown): SinkError {
  const status = (error as { statusCode?: number }).statusCode;
  const json = (error as { json?: { message?: string } }).json;
  const detail = json?.message ?? (error instanceof Error ? error.message : String(error));
  return new SinkError(
    `the Docker Engine failed ${what}${status === undefined ? "" : ` (HTTP ${status})`}: ${detail}`,
    {
      cause: error,
    },
  );
}

type Query = Record<string, unknown>;

/** One request over the modem; resolves with the parsed JSON body (or the stream when `isStream`). */
function request<T>(
  modem: Modem,
  options: {
    path: string;
    method: string;
    query?: Query;
    statusCodes: Record<number, boolean | string>;
    signal?: AbortSignal;
  },
): Promise<T> {
  return new Promise((resolve, reject) => {
    modem.dial(
      {
        path: `${options.path}?`,
        method: options.method,
        options: options.query ?? {},
        statusCodes: options.statusCodes,
        abortSignal: options.signal,
      } as Modem.DialOptions,
      (error, data) => (error ? reject(error) : resolve(data as T)),
    );
  });
}

interface InspectResponse {
  readonly Id: string;
  readonly Architecture: string;
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

class ModemEngine implements EngineClient {
  constructor(
    private readonly modem: Modem,
    readonly endpoint: string,
    readonly apiVersion: string,
    readonly imageStore: ImageStore,
  ) {}

  postTar(
    path: string,
    query: Record<string, unknown>,
    body: Readable,
    signal: AbortSignal,
  ): Promise<Readable> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        body.destroy();
        reject(new InterruptedError("interrupted"));
        return;
      }
      this.modem.dial(
        {
          path: `${path}?`,
          method: "POST",
          options: query,
          file: body,
          isStream: true,
          abortSignal: signal,
          headers: { "Content-Type": "application/x-tar" },
          statusCodes: { 200: true, 201: true, 400: "bad request", 404: "not found", 500: "server error" },
        } as Modem.DialOptions,
        (error, response) => {
          if (!error) {
            resolve(response as Readable);
            return;
          }
          body.destroy();
          if (signal.aborted) reject(new InterruptedError("interrupted", { cause: error }));
          else if ((error as { statusCode?: number }).statusCode !== undefined)
            reject(engineFailure(`POST ${path}`, error));
          else {
            reject(
              new SinkError(
                `lost the connection to the Docker Engine at ${this.endpoint}: ${(error as Error).message}`,
                {
                  cause: error,
                  hint: "Check that the engine is still running (`docker version`) and run again.",
                },
              ),
            );
          }
        },
      );
    });
  }

  async inspectImage(id: string): Promise<ImageSummary | undefined> {
    try {
      const info = await request<InspectResponse>(this.modem, {
        path: `/images/${encodeURIComponent(id)}/json`,
        method: "GET",
        statusCodes: { 200: true, 404: "no such image", 500: "server error" },
      });
      return {
        id: info.Id,
        diffIds: info.RootFS?.Layers ?? [],
        architecture: info.Architecture,
        repoTags: info.RepoTags ?? [],
      };
    } catch (error) {
      if ((error as { statusCode?: number }).statusCode === 404) return undefined;
      throw engineFailure(`to inspect image ${id}`, error);
    }
  }

  async tagImage(id: string, repository: string, tag: string): Promise<void> {
    try {
      await request(this.modem, {
        path: `/images/${encodeURIComponent(id)}/tag`,
        method: "POST",
        query: { repo: repository, tag },
        statusCodes: {
          200: true,
          201: true,
          400: "bad parameter",
          404: "no such image",
          409: "conflict",
          500: "server error",
        },
      });
    } catch (error) {
      throw engineFailure(`to tag ${id} as ${repository}:${tag}`, error);
    }
  }

  async removeImage(id: string): Promise<void> {
    try {
      await request(this.modem, {
        path: `/images/${encodeURIComponent(id)}`,
        method: "DELETE",
        statusCodes: { 200: true, 404: "no such image", 409: "conflict", 500: "server error" },
      });
    } catch (error) {
      if ((error as { statusCode?: number }).statusCode === 404) return;
      throw engineFailure(`to remove image ${id}`, error);
    }
  }
}

/**
 * Connects to the engine and negotiates the API version (the lower of the engine's and mkbase's), so
 * engines from API 1.41 (Docker 20.10) to current ones, which refuse old versions, both work. Also learns
 * which image store the engine uses, which decides how an image is loaded.
 */
export async function connectEngine(
  signal: AbortSignal,
  discovery: DiscoveryEnvironment = systemDiscovery,
): Promise<EngineClient> {
  const endpoint = resolveEndpoint(discovery);
  const modem = new Modem(endpoint.options);
  const get = <T>(path: string): Promise<T> =>
    request<T>(modem, {
      path,
      method: "GET",
      statusCodes: { 200: true, 500: "server error" },
      signal: AbortSignal.any([signal, AbortSignal.timeout(PING_TIMEOUT_MS)]),
    });
  // Unversioned paths are answered in the engine's own API version; both requests go out at once. An
  // engine (or an authorization plugin) may refuse /info: the full-archive load then works on any store.
  const info = get<InfoResponse>("/info").catch((): InfoResponse => ({
    DriverStatus: [["driver-type", "unknown"]],
  }));
  let version: { ApiVersion: string };
  try {
    version = await get<{ ApiVersion: string }>("/version");
  } catch (error) {
    if (signal.aborted) throw new InterruptedError("interrupted", { cause: error });
    throw unreachable(endpoint, error);
  }
  const engineApi = version.ApiVersion;
  const apiVersion = compareApiVersions(engineApi, CLIENT_MAX_API) < 0 ? engineApi : CLIENT_MAX_API;
  return new ModemEngine(
    new Modem({ ...endpoint.options, version: `v${apiVersion}` }),
    endpoint.description,
    apiVersion,
    imageStoreOf(await info),
  );
}
