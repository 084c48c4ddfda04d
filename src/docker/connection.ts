/**
 * Finding the Docker Engine: `DOCKER_HOST` (unix, tcp with TLS, ssh), else the system socket, else the
 * rootless socket under `$XDG_RUNTIME_DIR`, else Docker Desktop's per-user socket. The environment and the
 * file check are injected so the discovery is testable without an engine.
 */
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { DaemonUnavailableError, UsageError } from "../errors.js";

/** The client certificate and the CA that a TLS-protected engine expects (`DOCKER_CERT_PATH`). */
export interface TlsFiles {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
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

function tcpEndpoint(hostValue: string, discovery: DiscoveryEnvironment): EngineEndpoint {
  const url = new URL(hostValue);
  const env = discovery.env;
  // As the docker CLI: TLS when DOCKER_TLS_VERIFY is set (to anything non-empty) or on the TLS port.
  const tls = (env.DOCKER_TLS_VERIFY !== undefined && env.DOCKER_TLS_VERIFY !== "") || url.port === "2376";
  const host = url.hostname;
  const port = url.port === "" ? (tls ? 2376 : 2375) : Number(url.port);
  if (tls) {
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
    return {
      description: `${hostValue} (TLS)`,
      address: {
        kind: "tcp",
        host,
        port,
        tls: { ca: read("ca.pem"), cert: read("cert.pem"), key: read("key.pem") },
      },
    };
  }
  return { description: hostValue, address: { kind: "tcp", host, port } };
}

/**
 * Decides where to connect. Throws {@link DaemonUnavailableError} when `DOCKER_HOST` is unset and no socket
 * exists, naming every place that was tried.
 */
export function resolveEndpoint(discovery: DiscoveryEnvironment = systemDiscovery): EngineEndpoint {
  const host = discovery.env.DOCKER_HOST;
  if (host !== undefined && host !== "") {
    if (host.startsWith("unix://")) {
      return { description: host, address: { kind: "unix", socketPath: host.slice("unix://".length) } };
    }
    if (host.startsWith("tcp://") || host.startsWith("http://") || host.startsWith("https://")) {
      return tcpEndpoint(host.replace(/^(http|https):/, "tcp:"), discovery);
    }
    if (host.startsWith("ssh://")) {
      const url = new URL(host);
      // As the docker CLI: the user's own ssh, so ~/.ssh/config, known hosts and agents all apply.
      return {
        description: host,
        address: {
          kind: "ssh",
          host: url.hostname,
          port: url.port === "" ? undefined : Number(url.port),
          user: decodeURIComponent(url.username) || undefined,
        },
      };
    }
    throw new UsageError(`DOCKER_HOST=${host} is not a supported address`, {
      hint: "Use unix:///path/to/docker.sock, tcp://HOST:PORT (with DOCKER_TLS_VERIFY/DOCKER_CERT_PATH for TLS) or ssh://USER@HOST.",
    });
  }
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
