/**
 * A private HTTP proxy (Debian's `tinyproxy`) for end-to-end tests: config and log in one temp dir,
 * listening on 127.0.0.1 on a free port, optionally asking for basic credentials. Its log is parsed for
 * the requests that went through it.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createConnection, createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const START_TIMEOUT_MS = 10_000;

export interface HttpProxy {
  /** `http://127.0.0.1:PORT`. */
  readonly url: string;
  /** Each request line it was sent, as `METHOD TARGET` (`CONNECT host:port`, `GET http://…`). */
  requests(): string[];
  /** Stops the proxy and removes its dir. */
  dispose(): Promise<void>;
}

/** `Request (file descriptor 4): GET http://192.0.2.2:8000/r.tar HTTP/1.1` */
const REQUEST_LINE = /Request \(file descriptor \d+\): (\S+ \S+) HTTP\/[\d.]+/;

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.on("error", () => resolve(false));
  });
}

/** Starts tinyproxy and waits until it accepts connections. */
export async function startHttpProxy(
  options: { readonly user?: { readonly name: string; readonly password: string } } = {},
): Promise<HttpProxy> {
  const dir = await mkdtemp(join(tmpdir(), "mkbase-proxy-"));
  const port = await freePort();
  const log = join(dir, "tinyproxy.log");
  const lines = [
    `Port ${port}`,
    "Listen 127.0.0.1",
    "Allow 127.0.0.1",
    "Timeout 60",
    "MaxClients 50",
    // Connect is the level that logs each request line.
    "LogLevel Connect",
    `LogFile "${log}"`,
    `PidFile "${join(dir, "tinyproxy.pid")}"`,
  ];
  if (options.user !== undefined) lines.push(`BasicAuth ${options.user.name} ${options.user.password}`);
  await writeFile(join(dir, "tinyproxy.conf"), `${lines.join("\n")}\n`);
  // -d: in the foreground, so that the child is the proxy and killing it stops the proxy.
  const child: ChildProcess = spawn("tinyproxy", ["-d", "-c", join(dir, "tinyproxy.conf")], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => resolve());
    child.once("error", () => resolve());
  });
  const killOnExit = (): void => void child.kill("SIGKILL");
  process.on("exit", killOnExit);
  const dispose = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await exited;
    process.off("exit", killOnExit);
    await rm(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!(await accepts(port))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await dispose();
      throw new Error(`tinyproxy did not start on port ${port}:\n${stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    url: `http://127.0.0.1:${port}`,
    requests: () =>
      readFileSync(log, "utf8")
        .split("\n")
        .flatMap((line) => REQUEST_LINE.exec(line)?.[1] ?? []),
    dispose,
  };
}
