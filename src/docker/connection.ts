/**
 * Finding the Docker Engine as the docker CLI does: `DOCKER_HOST` (unix, tcp with TLS, ssh), else the
 * docker context that `DOCKER_CONTEXT` or the config's `currentContext` names, else the system socket,
 * else the rootless socket under `$XDG_RUNTIME_DIR`, else Docker Desktop's per-user socket. The
 * environment and the file reads are injected so the discovery is testable without an engine.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { DaemonUnavailableError, UsageError } from "../errors.js";

/**
 * The CA and client certificate that a TLS-protected engine expects (`DOCKER_CERT_PATH`, or a context's
 * TLS files), as node's TLS options.
 */
export interface TlsFiles {
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  /** False for a context with `SkipTLSVerify`. */
  readonly rejectUnauthorized?: boolean;
}

/** How to reach the engine's HTTP API. */
export type EngineAddress =
  | { readonly kind: "unix"; readonly socketPath: string }
  | { readonly kind: "tcp"; readonly host: string; readonly port: number; readonly tls?: TlsFiles }
  /** Through the `ssh` command, which runs `docker system dial-stdio` on `host`. */
  | { readonly kind: "ssh"; readonly host: string; readonly port?: number; readonly user?: string };

/**
 * The `ssh` arguments that name `address` (user, port, host), as mkbase runs them: also what a message
 * tells the user to try, so that the advice reaches the same host as the same user.
 */
export function sshDestination(address: Extract<EngineAddress, { kind: "ssh" }>): string[] {
  const args: string[] = [];
  if (address.user !== undefined) args.push("-l", address.user);
  if (address.port !== undefined) args.push("-p", String(address.port));
  // `--`: a host that starts with `-` must not be read as an option.
  return [...args, "--", address.host];
}

export interface EngineEndpoint {
  /** Where mkbase connects, for messages (`unix:///var/run/docker.sock`, `tcp://host:2376 (TLS)`). */
  readonly description: string;
  readonly address: EngineAddress;
  /** The docker context it came from, if any: the advice on an unreachable engine differs. */
  readonly context?: string;
}

export interface DiscoveryEnvironment {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly exists: (path: string) => boolean;
  readonly readFile: (path: string) => Buffer;
  readonly home: string;
}

export const systemDiscovery: DiscoveryEnvironment = {
  env: process.env,
  exists: existsSync,
  readFile: (path) => readFileSync(path),
  home: homedir(),
};

const SYSTEM_SOCKET = "/var/run/docker.sock";

/** The sockets mkbase tries, in order, when `DOCKER_HOST` is not set. */
export function defaultSockets(discovery: DiscoveryEnvironment): string[] {
  const sockets = [SYSTEM_SOCKET];
  const runtimeDir = discovery.env.XDG_RUNTIME_DIR;
  if (runtimeDir) sockets.push(join(runtimeDir, "docker.sock"));
  sockets.push(join(discovery.home, ".docker", "run", "docker.sock"));
  return sockets;
}

/**
 * The endpoint `host` names (a `DOCKER_HOST` value or a context's Host), described as `shown`, and as
 * `origin` when it is not an address mkbase can use; `tls` is how a tcp:// host is protected, worked out
 * only for one.
 */
function hostEndpoint(
  host: string,
  shown: string,
  origin: string,
  tls: () => TlsFiles | undefined,
): EngineEndpoint {
  if (host.startsWith("unix://")) {
    return { description: shown, address: { kind: "unix", socketPath: host.slice("unix://".length) } };
  }
  if (host.startsWith("tcp://") || host.startsWith("http://") || host.startsWith("https://")) {
    const url = new URL(host.replace(/^(http|https):/, "tcp:"));
    const files = tls();
    const port = url.port === "" ? (files === undefined ? 2375 : 2376) : Number(url.port);
    return files === undefined
      ? { description: shown, address: { kind: "tcp", host: url.hostname, port } }
      : { description: `${shown} (TLS)`, address: { kind: "tcp", host: url.hostname, port, tls: files } };
  }
  if (host.startsWith("ssh://")) {
    const url = new URL(host);
    // As the docker CLI: the user's own ssh, so ~/.ssh/config, known hosts and agents all apply.
    return {
      description: shown,
      address: {
        kind: "ssh",
        host: url.hostname,
        port: url.port === "" ? undefined : Number(url.port),
        user: decodeURIComponent(url.username) || undefined,
      },
    };
  }
  throw new UsageError(`${origin} is not a supported address`, {
    hint: "Use unix:///path/to/docker.sock, tcp://HOST:PORT (with DOCKER_TLS_VERIFY/DOCKER_CERT_PATH for TLS) or ssh://USER@HOST.",
  });
}

/** TLS for a `DOCKER_HOST` as the docker CLI decides it: DOCKER_TLS_VERIFY set, or the TLS port. */
function environmentTls(host: string, discovery: DiscoveryEnvironment): TlsFiles | undefined {
  const env = discovery.env;
  const port = new URL(host.replace(/^(http|https):/, "tcp:")).port;
  if ((env.DOCKER_TLS_VERIFY === undefined || env.DOCKER_TLS_VERIFY === "") && port !== "2376")
    return undefined;
  const certPath = env.DOCKER_CERT_PATH || join(discovery.home, ".docker");
  const read = (name: string): Buffer => {
    const file = join(certPath, name);
    try {
      return discovery.readFile(file);
    } catch (error) {
      throw new UsageError(`DOCKER_HOST uses TLS but ${file} cannot be read`, {
        cause: error,
        hint: "Set DOCKER_CERT_PATH to the directory holding ca.pem, cert.pem and key.pem.",
      });
    }
  };
  return { ca: read("ca.pem"), cert: read("cert.pem"), key: read("key.pem") };
}

/** The docker CLI's configuration directory: `$DOCKER_CONFIG`, else `~/.docker`. */
function configDir(discovery: DiscoveryEnvironment): string {
  return discovery.env.DOCKER_CONFIG || join(discovery.home, ".docker");
}

/** Parsed JSON of `file`, or undefined when it cannot be read or parsed (the docker CLI goes on too). */
function readJson(file: string, discovery: DiscoveryEnvironment): unknown {
  try {
    return JSON.parse(discovery.readFile(file).toString("utf8")) as unknown;
  } catch {
    return undefined;
  }
}

/** The context to use and where its name came from, or undefined for the default one. */
function selectedContext(discovery: DiscoveryEnvironment): { name: string; from: string } | undefined {
  const named = discovery.env.DOCKER_CONTEXT;
  if (named !== undefined && named !== "")
    return named === "default" ? undefined : { name: named, from: "DOCKER_CONTEXT" };
  const file = join(configDir(discovery), "config.json");
  const config = readJson(file, discovery) as { currentContext?: unknown } | undefined;
  const current = config?.currentContext;
  if (typeof current !== "string" || current === "" || current === "default") return undefined;
  return { name: current, from: `currentContext in ${file}` };
}

/** The endpoint of a context the docker CLI created (`docker context create`), from its files. */
function contextEndpoint(name: string, from: string, discovery: DiscoveryEnvironment): EngineEndpoint {
  // The CLI keeps each context under the SHA-256 of its name.
  const id = createHash("sha256").update(name).digest("hex");
  const contexts = join(configDir(discovery), "contexts");
  const meta = readJson(join(contexts, "meta", id, "meta.json"), discovery) as
    { Endpoints?: { docker?: { Host?: unknown; SkipTLSVerify?: unknown } } } | undefined;
  const docker = meta?.Endpoints?.docker;
  if (typeof docker?.Host !== "string") {
    throw new UsageError(`the docker context "${name}" (${from}) does not exist or names no Docker Engine`, {
      hint: "List the contexts with `docker context ls`; choose one with DOCKER_CONTEXT, or go back to the default with `docker context use default`.",
    });
  }
  const host = docker.Host;
  const tls = (): TlsFiles | undefined => {
    const dir = join(contexts, "tls", id, "docker");
    const read = (file: string): Buffer | undefined =>
      discovery.exists(join(dir, file)) ? discovery.readFile(join(dir, file)) : undefined;
    const files = { ca: read("ca.pem"), cert: read("cert.pem"), key: read("key.pem") };
    const skipVerify = docker.SkipTLSVerify === true;
    if (files.ca === undefined && files.cert === undefined && !skipVerify) return undefined;
    return { ...files, rejectUnauthorized: !skipVerify };
  };
  return {
    ...hostEndpoint(
      host,
      `${host} (docker context ${name})`,
      `the Host ${host} of docker context ${name}`,
      tls,
    ),
    context: name,
  };
}

/**
 * Decides where to connect. Throws {@link DaemonUnavailableError} when nothing names an engine and no
 * socket exists, naming every place that was tried.
 */
export function resolveEndpoint(discovery: DiscoveryEnvironment = systemDiscovery): EngineEndpoint {
  const host = discovery.env.DOCKER_HOST;
  // As the docker CLI: DOCKER_HOST wins over any context.
  if (host !== undefined && host !== "") {
    return hostEndpoint(host, host, `DOCKER_HOST=${host}`, () => environmentTls(host, discovery));
  }
  const context = selectedContext(discovery);
  if (context !== undefined) return contextEndpoint(context.name, context.from, discovery);
  const sockets = defaultSockets(discovery);
  const found = sockets.find((socket) => discovery.exists(socket));
  if (found === undefined) {
    throw new DaemonUnavailableError(
      `cannot find a Docker Engine: DOCKER_HOST is not set and none of ${sockets.join(", ")} exists`,
      {
        hint: "Start the engine (e.g. `sudo systemctl start docker` or `dockerd`), or point DOCKER_HOST at it (unix://, tcp:// or ssh://).",
      },
    );
  }
  return { description: `unix://${found}`, address: { kind: "unix", socketPath: found } };
}
