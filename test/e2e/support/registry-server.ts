/**
 * A private distribution registry (Debian's `docker-registry`) for end-to-end tests: its config,
 * storage, optional htpasswd file and log live in one temp dir, it listens (on 127.0.0.1 by default) on a free port,
 * and it can be SIGKILLed and started again on the same port and storage to test a registry that dies
 * in the middle of a push. Its access log is parsed to count the requests a push made.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { request, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const START_TIMEOUT_MS = 20_000;

export interface RegistryServerOptions {
  /** Require these credentials (htpasswd, bcrypt), as a registry with basic auth does. */
  readonly user?: { readonly name: string; readonly password: string };
  /** The IPv4 address to listen on; 127.0.0.1 when absent. */
  readonly address?: string;
}

/** One request line of the registry's access log. */
export interface LoggedRequest {
  readonly method: string;
  readonly path: string;
  readonly status: number;
}

export interface RegistryServer {
  /** `ADDRESS:PORT`, the registry part of a reference. */
  readonly host: string;
  readonly dir: string;
  /** Whether the registry process is running. */
  readonly running: boolean;
  /** Starts the registry again on the same port and storage and waits until it answers. */
  start(): Promise<void>;
  /** SIGKILLs the registry, as a crash would, and waits until it is gone. */
  kill(): Promise<void>;
  /** Every request in the access log so far. */
  requests(): LoggedRequest[];
  /** The end of the registry's log, for assertion messages. */
  logTail(lines?: number): string;
  /** Kills the registry and removes its dir. */
  dispose(): Promise<void>;
}

async function freePort(address: string): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, address, resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** `127.0.0.1 - - [date] "PUT /v2/x/blobs/uploads/… HTTP/1.1" 201 0 "" "mkbase"` (combined log format). */
const ACCESS_LINE = /"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP\/[\d.]+" (\d{3}) /;

class DockerRegistryProcess implements RegistryServer {
  readonly host: string;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private readonly logPath: string;
  private readonly killOnExit = (): void => {
    if (this.running) this.child?.kill("SIGKILL");
  };

  constructor(
    readonly dir: string,
    private readonly address: string,
    private readonly port: number,
  ) {
    this.host = `${address}:${port}`;
    this.logPath = join(dir, "registry.log");
    process.on("exit", this.killOnExit);
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  async writeConfig(options: RegistryServerOptions): Promise<void> {
    const lines = [
      "version: 0.1",
      "log:",
      "  level: info",
      "  formatter: text",
      "storage:",
      "  filesystem:",
      `    rootdirectory: ${join(this.dir, "storage")}`,
      "  delete:",
      "    enabled: true",
      "http:",
      `  addr: ${this.host}`,
    ];
    if (options.user !== undefined) {
      const htpasswd = execFileSync("htpasswd", ["-Bbn", options.user.name, options.user.password], {
        encoding: "utf8",
      });
      await writeFile(join(this.dir, "htpasswd"), htpasswd);
      lines.push("auth:", "  htpasswd:", "    realm: mkbase-test", `    path: ${join(this.dir, "htpasswd")}`);
    }
    await writeFile(join(this.dir, "config.yml"), `${lines.join("\n")}\n`);
  }

  async start(): Promise<void> {
    if (this.running) throw new Error(`the registry in ${this.dir} is already running`);
    const log = openSync(this.logPath, "a");
    let child: ChildProcess;
    try {
      child = spawn("docker-registry", ["serve", join(this.dir, "config.yml")], {
        stdio: ["ignore", log, log],
      });
    } finally {
      closeSync(log);
    }
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once("exit", () => resolve());
      child.once("error", () => resolve());
    });
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!(await this.answers())) {
      if (!this.running) throw new Error(`docker-registry exited during start:\n${this.logTail()}`);
      if (Date.now() > deadline) {
        throw new Error(`docker-registry did not answer within ${START_TIMEOUT_MS} ms:\n${this.logTail()}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  /** Whether `GET /v2/` answers (200, or 401 with auth on). */
  private answers(): Promise<boolean> {
    return new Promise((resolve) => {
      const probe = request(
        { host: this.address, port: this.port, path: "/v2/", timeout: 2000 },
        (response) => {
          response.resume();
          resolve(response.statusCode === 200 || response.statusCode === 401);
        },
      );
      probe.on("timeout", () => probe.destroy());
      probe.on("error", () => resolve(false));
      probe.end();
    });
  }

  async kill(): Promise<void> {
    if (this.running) this.child?.kill("SIGKILL");
    await this.exited;
  }

  requests(): LoggedRequest[] {
    let text: string;
    try {
      text = readFileSync(this.logPath, "utf8");
    } catch {
      return [];
    }
    return text.split("\n").flatMap((line) => {
      const match = ACCESS_LINE.exec(line);
      if (match === null) return [];
      return [{ method: match[1] as string, path: match[2] as string, status: Number(match[3]) }];
    });
  }

  logTail(lines = 30): string {
    try {
      return readFileSync(this.logPath, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
    } catch {
      return "(no registry log)";
    }
  }

  async dispose(): Promise<void> {
    await this.kill();
    process.off("exit", this.killOnExit);
    await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * Starts a private `docker-registry` (on 127.0.0.1 unless `options.address` says otherwise) and waits
 * until it answers. Call
 * {@link RegistryServer.dispose} in an `after` hook; a test process that exits without it still kills
 * the registry.
 */
export async function startRegistry(options: RegistryServerOptions = {}): Promise<RegistryServer> {
  const dir = await mkdtemp(join(tmpdir(), "mkbase-registry-"));
  const address = options.address ?? "127.0.0.1";
  const registry = new DockerRegistryProcess(dir, address, await freePort(address));
  try {
    await registry.writeConfig(options);
    await registry.start();
  } catch (error) {
    await registry.dispose();
    throw error;
  }
  return registry;
}
