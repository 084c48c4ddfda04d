/**
 * HTTP requests to the engine over node's own http client: a unix socket, TCP (with TLS), or a stream
 * through `ssh HOST docker system dial-stdio` as the docker CLI does. Kept this small on purpose: the
 * whole CLI waits for it to load before its first request (see `mkbase scratch`'s benchmark).
 */
import { spawn } from "node:child_process";
import { Agent, request as httpRequest, type IncomingMessage } from "node:http";
import type { RequestOptions } from "node:https";
import type { Socket } from "node:net";
import { Duplex, type Readable, type Writable } from "node:stream";
import { mayRemainAfterForcedExit } from "../forced-exit.js";
import { sshDestination, type EngineAddress } from "./connection.js";

/** Query values as the engine reads them: a list becomes a repeated key. */
export type Query = Readonly<Record<string, string | number | boolean | readonly string[] | undefined>>;

/** A reply outside 2xx, with the engine's own message when it sent one. */
export class EngineStatusError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
  ) {
    super(message);
    this.name = "EngineStatusError";
  }
}

export interface EngineRequest {
  readonly method: string;
  readonly path: string;
  readonly query?: Query;
  readonly signal?: AbortSignal;
  /**
   * The signal stops the request only while its body is being sent. The engine reads a complete body
   * whatever becomes of the connection (a load or an import then makes its image): the reply is awaited
   * instead, so that the caller can remove that image.
   */
  readonly untilSent?: boolean;
}

/** A request whose body (a tar) the caller writes. */
export interface Upload {
  /**
   * The request: a write's callback runs once its bytes are on their way (handed to the socket). End it
   * when the tar is complete; to give up, destroy it (or abort the signal), never end it.
   */
  readonly body: Writable;
  /** Resolves once the reply's status is 2xx, rejects with the engine's words if not. */
  readonly response: Promise<IncomingMessage>;
}

export interface Transport {
  /** Sends one request; resolves once the reply's status is 2xx, rejects with the engine's words if not. */
  send(
    options: EngineRequest & {
      /** A tar to stream as the body; the request is destroyed, never ended, if it errors. */
      readonly body?: Readable;
    },
  ): Promise<IncomingMessage>;
  /** Starts a request with a tar body, for the caller to write. */
  upload(options: EngineRequest): Upload;
  /** Closes the connections kept for later requests (ssh ones are processes). */
  close(): void;
}

export function withQuery(path: string, query: Query = {}): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined) continue;
    for (const item of typeof value === "object" ? value : [value]) params.append(key, String(item));
  }
  const text = params.toString();
  return text === "" ? path : `${path}?${text}`;
}

/** Reads a whole reply as text. */
export async function readText(response: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of response) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

/** `{"message": "…"}` is how the engine explains an error status; anything else is shown as it came. */
function messageOf(status: number, text: string): string {
  try {
    const message = (JSON.parse(text) as { message?: unknown }).message;
    if (typeof message === "string") return message;
  } catch {
    // Not JSON (a proxy's page, an empty body): the text itself, or the bare status, says it.
  }
  return text.trim() === "" ? `HTTP ${status}` : text.trim();
}

/**
 * A duplex over `ssh [-l USER] [-p PORT] -- HOST docker system dial-stdio`. When ssh fails (no route, key
 * refused, no docker on the host) the stream errors with what ssh printed.
 *
 * It has the few socket methods node's http agent calls on a connection it keeps between requests: an
 * idle one must not keep mkbase running, so `unref` releases ssh and its pipes until `ref` takes them back.
 */
class SshStream extends Duplex {
  /** The agent's idle timeout, which it reads back; it sets none (each request has its own time limit). */
  timeout = 0;
  private readonly handles: readonly { ref(): void; unref(): void }[];

  constructor(address: Extract<EngineAddress, { kind: "ssh" }>) {
    const destination = sshDestination(address);
    const args = ["-o", "ConnectTimeout=30", "-T", ...destination, "docker", "system", "dial-stdio"];
    const child = spawn("ssh", args, { stdio: ["pipe", "pipe", "pipe"] });
    let writeError: Error | undefined;
    super({
      read: () => child.stdout.resume(),
      write: (chunk: Buffer, _encoding, callback) =>
        child.stdin.write(chunk, (error) => {
          // A broken pipe means ssh is going away: its exit status, below, says why, not EPIPE.
          if (error === null || error === undefined) callback();
          else writeError = error;
        }),
      final: (callback) => child.stdin.end(callback),
      destroy: (error, callback) => {
        child.kill();
        callback(error);
      },
    });
    // The pipes to a child are sockets, which can be unref'd like the child itself.
    this.handles = [child, child.stdin, child.stdout, child.stderr] as unknown as Socket[];
    child.stdout.on("data", (chunk: Buffer) => {
      if (!this.push(chunk)) child.stdout.pause();
    });
    // A write after ssh has gone fails with EPIPE; its exit status, below, says why.
    child.stdin.on("error", () => undefined);
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (text: string) => {
      stderr = (stderr + text).slice(-2000);
    });
    child.once("error", (error) => this.destroy(error));
    // The stream ends only once ssh has exited: the HTTP client must see ssh's failure, not a hang-up.
    child.once("close", (code) => {
      if (code === 0 && writeError === undefined) {
        this.push(null);
        return;
      }
      const said = stderr.trim() === "" ? "" : `: ${stderr.trim()}`;
      this.destroy(
        code === 0
          ? writeError
          : new Error(`ssh ${destination.join(" ")} exited with ${String(code)}${said}`),
      );
    });
  }

  ref(): this {
    for (const handle of this.handles) handle.ref();
    return this;
  }

  unref(): this {
    for (const handle of this.handles) handle.unref();
    return this;
  }

  /** TCP keep-alive has no meaning for a pipe to ssh: nothing to set. */
  setKeepAlive(): this {
    return this;
  }

  setTimeout(ms: number): this {
    this.timeout = ms;
    return this;
  }
}

/**
 * Keeps ssh connections open between requests, as the docker CLI's HTTP client does: a command logs in
 * once or twice (the first two requests go out together), not once per request, which over a real
 * network is a fraction of a second each time.
 */
class SshAgent extends Agent {
  constructor(private readonly address: Extract<EngineAddress, { kind: "ssh" }>) {
    super({ keepAlive: true });
  }

  override createConnection(): Duplex {
    return new SshStream(this.address);
  }
}

/**
 * Plain HTTP goes through node's global agent, which keeps the connection open between requests; TLS
 * loads node's https module only when asked for.
 */
export async function openTransport(address: EngineAddress): Promise<Transport> {
  let base: RequestOptions;
  let request = httpRequest;
  let sshAgent: SshAgent | undefined;
  switch (address.kind) {
    case "unix":
      // An empty TLS server name spares the agent working one out: its IPv6 regex costs ~6 ms to build.
      base = { socketPath: address.socketPath, servername: "" };
      break;
    case "tcp":
      if (address.tls === undefined) {
        base = { host: address.host, port: address.port, servername: "" };
      } else {
        request = (await import("node:https")).request;
        base = { host: address.host, port: address.port, ...address.tls };
      }
      break;
    case "ssh":
      sshAgent = new SshAgent(address);
      base = { agent: sshAgent };
      break;
  }
  /** Starts a request; `stop` (a body's producer) is called at once when it fails or is refused. */
  const start = (
    { method, path, query, signal, untilSent }: EngineRequest,
    hasBody: boolean,
    stop = () => {},
  ): Upload => {
    const req = request({
      ...base,
      method,
      path: withQuery(path, query),
      headers: hasBody ? { "Content-Type": "application/x-tar" } : {},
    });
    const stopUnlessSent = (): void => {
      if (untilSent !== true || !req.writableFinished) req.destroy(signal?.reason as Error);
    };
    if (signal?.aborted === true) stopUnlessSent();
    signal?.addEventListener("abort", stopUnlessSent, { once: true });
    // Once the body is all sent the engine makes its image whatever mkbase does, and only the caller,
    // reading the reply, can remove it: a forced exit, which cannot wait for that, must say so.
    let settled = (): void => undefined;
    if (untilSent === true)
      req.once("finish", () => (settled = mayRemainAfterForcedExit("an image of the archive it received")));
    // After the whole reply is read, or once the connection is gone.
    req.once("close", () => {
      signal?.removeEventListener("abort", stopUnlessSent);
      settled();
    });
    const response = new Promise<IncomingMessage>((resolve, reject) => {
      // `on`, not `once`: a request that fails while writing may report more than one error.
      req.on("error", (error) => {
        stop();
        reject(error);
      });
      req.once("response", (reply) => {
        const status = reply.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          resolve(reply);
          return;
        }
        stop();
        readText(reply).then(
          (text) => reject(new EngineStatusError(status, messageOf(status, text))),
          reject,
        );
      });
    });
    return { body: req, response };
  };
  return {
    close: () => sshAgent?.destroy(),
    upload: (options) => start(options, true),
    send: (options) => {
      const { body } = options;
      const { body: req, response } = start(options, body !== undefined, () => body?.destroy());
      if (body === undefined) {
        req.end();
        return response;
      }
      body.once("error", (error) => req.destroy(error));
      body.pipe(req);
      return response;
    },
  };
}
