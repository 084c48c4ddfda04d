import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { setTimeout } from "node:timers/promises";
import { after, before, describe, it } from "node:test";
import { connectEngine, type EngineClient } from "../../src/docker/engine.js";
import { withQuery } from "../../src/docker/transport.js";
import { DaemonUnavailableError, SinkError } from "../../src/errors.js";
import { undoForForcedExit } from "../../src/forced-exit.js";
import { temporaryDirectory } from "../support/temporary-directory.js";

interface Received {
  readonly method: string;
  readonly url: string;
  readonly body: Buffer;
}

/** An engine on a unix socket: records every request and answers with `reply`. */
class FakeEngine {
  readonly received: Received[] = [];
  private server: Server | undefined;
  constructor(
    readonly socket: string,
    private readonly reply: (req: Received, res: ServerResponse) => void,
  ) {}

  async start(): Promise<void> {
    this.server = createServer((req: IncomingMessage, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (chunk: Buffer) => chunks.push(chunk));
      req.on("end", () => {
        const received = { method: req.method ?? "", url: req.url ?? "", body: Buffer.concat(chunks) };
        this.received.push(received);
        this.reply(received, res);
      });
    });
    await new Promise<void>((resolve) => this.server?.listen(this.socket, resolve));
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise((resolve) => this.server?.close(resolve));
  }
}

function json(res: ServerResponse, status: number, body: object): void {
  res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(body));
}

/** A ping naming `apiVersion`, /info of the classic store, and `rest` for everything else. */
function engineReplies(apiVersion: string | undefined, rest: (req: Received, res: ServerResponse) => void) {
  return (req: Received, res: ServerResponse): void => {
    if (req.url === "/_ping") {
      res.writeHead(200, apiVersion === undefined ? {} : { "Api-Version": apiVersion }).end("OK");
    } else if (req.url === "/info") {
      json(res, 200, { DriverStatus: [["Backing Filesystem", "extfs"]] });
    } else {
      rest(req, res);
    }
  };
}

const discovery = (host: string, home: string) => ({
  env: { DOCKER_HOST: host },
  exists: () => false,
  readFile: () => Buffer.alloc(0),
  home,
});

describe("the engine's HTTP client", () => {
  const scratch = temporaryDirectory("mkbase-unit-");

  async function withEngine(
    name: string,
    apiVersion: string | undefined,
    rest: (req: Received, res: ServerResponse) => void,
    use: (engine: EngineClient, fake: FakeEngine) => Promise<void>,
  ): Promise<void> {
    const fake = new FakeEngine(join(scratch.path, `${name}.sock`), engineReplies(apiVersion, rest));
    await fake.start();
    try {
      const engine = await connectEngine(new AbortController().signal, {
        discovery: discovery(`unix://${fake.socket}`, scratch.path),
      });
      await use(engine, fake);
    } finally {
      await fake.stop();
    }
  }

  it("speaks the engine's API version when it is older than mkbase's, and mkbase's otherwise", async () => {
    await withEngine(
      "old",
      "1.41",
      (_req, res) => res.writeHead(201).end(),
      async (engine, fake) => {
        assert.equal(engine.apiVersion, "1.41");
        assert.equal(engine.imageStore, "classic");
        await engine.tagImage("sha256:abc", "corp/base", "1.0");
        assert.deepEqual(fake.received.at(-1), {
          method: "POST",
          url: "/v1.41/images/sha256%3Aabc/tag?repo=corp%2Fbase&tag=1.0",
          body: Buffer.alloc(0),
        });
      },
    );
    await withEngine(
      "new",
      "1.51",
      (_req, res) => res.writeHead(200).end(),
      async (engine) => assert.equal(engine.apiVersion, "1.47"),
    );
  });

  it("refuses an endpoint that does not name its API version", async () => {
    await assert.rejects(
      withEngine(
        "mute",
        undefined,
        () => assert.fail("no request after the ping"),
        async () => assert.fail("connected"),
      ),
      (error: unknown) => error instanceof DaemonUnavailableError && /API-Version/.test(error.message),
    );
  });

  it("refuses a server that answers the ping with an error page, without the page", async () => {
    const page = "<!DOCTYPE HTML>\n<html><body><h1>Error response</h1></body></html>\n";
    for (const [body, said] of [
      [page, ""],
      ["Service Unavailable\nretry later", ": Service Unavailable"],
    ]) {
      // A socket of its own each time: the client may still hold a connection to the one before.
      const socket = join(scratch.path, `web-${said === "" ? "page" : "text"}.sock`);
      const fake = new FakeEngine(socket, (_req, res) => res.writeHead(503).end(body));
      await fake.start();
      try {
        await assert.rejects(
          connectEngine(new AbortController().signal, {
            discovery: discovery(`unix://${fake.socket}`, scratch.path),
          }),
          (error: unknown) => {
            assert.ok(error instanceof DaemonUnavailableError);
            assert.equal(
              error.message,
              `unix://${fake.socket} answered /_ping with HTTP 503${said}: it is not a working Docker Engine`,
            );
            assert.match(error.hint ?? "", /check it with `docker version`/);
            return true;
          },
        );
      } finally {
        await fake.stop();
      }
    }
  });

  it("turns an error status into the engine's own words, and a missing image into undefined", async () => {
    await withEngine(
      "errors",
      "1.41",
      (req, res) => {
        if (req.method === "GET") json(res, 404, { message: "No such image: x" });
        else if (req.method === "DELETE") json(res, 404, { message: "No such image: x" });
        else res.writeHead(409).end("tag is locked\n");
      },
      async (engine) => {
        assert.equal(await engine.inspectImage("x"), undefined);
        await engine.removeImage("x");
        await assert.rejects(
          engine.tagImage("x", "r", "t"),
          (error: unknown) =>
            error instanceof SinkError && error.message.endsWith("as r:t (HTTP 409): tag is locked"),
        );
      },
    );
  });

  it("streams a tar body and hands back the reply, or the engine's refusal", async () => {
    const body = Buffer.alloc(3 * 1024 * 1024, 7);
    await withEngine(
      "post",
      "1.41",
      (req, res) => {
        if (req.url.includes("quiet=1")) json(res, 400, { message: "invalid tar header" });
        else res.writeHead(200).end('{"stream":"Loaded image ID: sha256:1"}\n');
      },
      async (engine, fake) => {
        const signal = new AbortController().signal;
        const reply = await engine.postTar(
          "/images/load",
          { quiet: false, changes: ["CMD x", "ENV a=b"], message: undefined },
          Readable.from([body.subarray(0, 1000), body.subarray(1000)]),
          signal,
        );
        const text = Buffer.concat(await reply.toArray()).toString();
        assert.match(text, /Loaded image ID/);
        const received = fake.received.at(-1);
        assert.equal(received?.url, "/v1.41/images/load?quiet=false&changes=CMD+x&changes=ENV+a%3Db");
        assert.ok(received?.body.equals(body));
        const refused = Readable.from([body]);
        await assert.rejects(
          engine.postTar("/images/load", { quiet: 1 }, refused, signal),
          (error: unknown) =>
            error instanceof SinkError && /\(HTTP 400\): invalid tar header$/.test(error.message),
        );
        assert.ok(refused.destroyed);
      },
    );
  });

  it("awaits the reply to a load whose body was all sent when the signal aborts, and stops an unsent one", async () => {
    const controller = new AbortController();
    await withEngine(
      "sent",
      "1.41",
      (_req, res) => {
        // The whole archive has arrived, so the engine makes the image even if the client goes away.
        controller.abort(new Error("interrupted"));
        setTimeout(50).then(
          () => res.writeHead(200).end('{"stream":"Loaded image ID: sha256:1"}\n'),
          () => {},
        );
      },
      async (engine) => {
        const reply = await engine.postTar(
          "/images/load",
          {},
          Readable.from([Buffer.alloc(512)]),
          controller.signal,
          true,
        );
        assert.match(Buffer.concat(await reply.toArray()).toString(), /Loaded image ID/);
        const unsent = new Readable({ read: () => undefined });
        const stopped = new AbortController();
        const posted = engine.postTar("/images/load", {}, unsent, stopped.signal, true);
        unsent.push(Buffer.alloc(512));
        stopped.abort(new Error("interrupted"));
        await assert.rejects(posted, /interrupted/);
      },
    );
  });

  it("names the image the engine may still make while a sent load awaits its reply, for a forced exit", async () => {
    let replied = (): void => undefined;
    const replying = new Promise<void>((resolve) => (replied = resolve));
    let answer = (): void => undefined;
    await withEngine(
      "forced",
      "1.41",
      (_req, res) => {
        answer = () => res.writeHead(200).end('{"stream":"Loaded image ID: sha256:1"}\n');
        replied();
      },
      async (engine) => {
        const unsent = new Readable({ read: () => undefined });
        const stopped = new AbortController();
        const posted = engine.postTar("/images/load", {}, unsent, stopped.signal, true);
        unsent.push(Buffer.alloc(512));
        await setTimeout(20);
        assert.deepEqual(undoForForcedExit().mayRemain, [], "a body not all sent makes no image");
        stopped.abort(new Error("interrupted"));
        await assert.rejects(posted, /interrupted/);

        const body = Readable.from([Buffer.alloc(512)]);
        const reply = engine.postTar("/images/load", {}, body, new AbortController().signal, true);
        await replying;
        assert.deepEqual(undoForForcedExit().mayRemain, ["an image of the archive it received"]);
        answer();
        await (await reply).toArray();
        await setTimeout(10);
        assert.deepEqual(undoForForcedExit().mayRemain, [], "settled once the reply is read");
      },
    );
  });

  it("names the socket and what to do when nothing listens", async () => {
    await assert.rejects(
      connectEngine(new AbortController().signal, {
        discovery: discovery(`unix://${join(scratch.path, "none.sock")}`, scratch.path),
      }),
      (error: unknown) =>
        error instanceof DaemonUnavailableError &&
        error.message.includes("none.sock (ENOENT)") &&
        /Start the engine/.test(error.hint ?? ""),
    );
  });

  it("builds queries as the engine reads them", () => {
    assert.equal(withQuery("/p"), "/p");
    assert.equal(withQuery("/p", { a: undefined }), "/p");
    assert.equal(withQuery("/p", { t: ["a:1", "b:2"], q: true, n: 3 }), "/p?t=a%3A1&t=b%3A2&q=true&n=3");
  });
});

/** Whether process `pid` exists (signal 0 only checks). */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("DOCKER_HOST=ssh://", () => {
  let dir: string;
  let fake: FakeEngine;
  let savedPath: string | undefined;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "mkbase-unit-"));
    fake = new FakeEngine(
      join(dir, "remote.sock"),
      engineReplies("1.43", (_req, res) => res.writeHead(201).end()),
    );
    await fake.start();
    savedPath = process.env.PATH;
  });
  after(async () => {
    process.env.PATH = savedPath;
    await fake.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** Puts an `ssh` on PATH whose body is `script` (node), given the log file and the engine's socket. */
  async function standInSsh(name: string, script: string): Promise<string> {
    const bin = join(dir, name);
    const log = join(bin, "args.json");
    await rm(bin, { recursive: true, force: true });
    await mkdir(bin);
    const body = [
      `#!${process.execPath}`,
      `const log = ${JSON.stringify(log)}, socket = ${JSON.stringify(fake.socket)};`,
      `require("node:fs").appendFileSync(log, JSON.stringify(process.argv.slice(2)) + "\\n");`,
      script,
    ].join("\n");
    await writeFile(join(bin, "ssh"), body);
    await chmod(join(bin, "ssh"), 0o755);
    process.env.PATH = `${bin}:${savedPath ?? ""}`;
    return log;
  }

  it("runs the user's ssh with docker system dial-stdio and talks HTTP through it", async () => {
    const log = await standInSsh(
      "bridge",
      [
        `require("node:fs").appendFileSync(log + ".pids", process.pid + "\\n");`,
        `const s = require("node:net").connect(socket); process.stdin.pipe(s); s.pipe(process.stdout);`,
      ].join("\n"),
    );
    const engine = await connectEngine(new AbortController().signal, {
      discovery: discovery("ssh://me@box:2222", dir),
    });
    assert.equal(engine.apiVersion, "1.43");
    await engine.tagImage("sha256:abc", "r", "t");
    assert.equal(fake.received.at(-1)?.url, "/v1.43/images/sha256%3Aabc/tag?repo=r&tag=t");
    await engine.removeImage("sha256:abc");
    await engine.tagImage("sha256:def", "r", "u");
    assert.equal(fake.received.at(-1)?.url, "/v1.43/images/sha256%3Adef/tag?repo=r&tag=u");
    // /_ping and /info go out together, on two connections; the later requests reuse them.
    const calls = (await readFile(log, "utf8")).trim().split("\n");
    assert.equal(calls.length, 2, calls.join("\n"));
    for (const call of calls) {
      assert.deepEqual(JSON.parse(call), [
        "-o",
        "ConnectTimeout=30",
        "-T",
        "-l",
        "me",
        "-p",
        "2222",
        "--",
        "box",
        "docker",
        "system",
        "dial-stdio",
      ]);
    }
    // A kept connection whose ssh dies while idle is dropped; the next request logs in again.
    const [idle] = (await readFile(`${log}.pids`, "utf8")).trim().split("\n").map(Number);
    process.kill(idle as number, "SIGKILL");
    const deadline = Date.now() + 5000;
    while (isRunning(idle as number) && Date.now() < deadline) await setTimeout(20);
    // Its pipes close a moment after it is reaped; only then does the agent drop it.
    await setTimeout(100);
    await engine.tagImage("sha256:fed", "r", "v");
    assert.equal(fake.received.at(-1)?.url, "/v1.43/images/sha256%3Afed/tag?repo=r&tag=v");
    // Closing the client ends the ssh processes it kept.
    const pids = (await readFile(`${log}.pids`, "utf8")).trim().split("\n").map(Number);
    engine.close();
    for (const pid of pids) {
      const until = Date.now() + 5000;
      while (isRunning(pid) && Date.now() < until) await setTimeout(20);
      assert.equal(isRunning(pid), false, `ssh ${pid} still runs after close()`);
    }
  });

  it("reports what ssh said when it cannot connect, and how to try the same login by hand", async () => {
    await standInSsh(
      "refused",
      `process.stderr.write("me@box: Permission denied (publickey).\\n"); process.exit(255);`,
    );
    await assert.rejects(
      connectEngine(new AbortController().signal, { discovery: discovery("ssh://me@box:2222", dir) }),
      (error: unknown) => {
        assert.ok(error instanceof DaemonUnavailableError, String(error));
        assert.match(
          error.message,
          /\(ssh -l me -p 2222 -- box exited with 255: me@box: Permission denied \(publickey\)\.\)$/,
        );
        assert.match(error.hint ?? "", /`ssh -l me -p 2222 -- box docker version`/);
        return true;
      },
    );
  });

  it("says so when ssh is not installed", async () => {
    process.env.PATH = join(dir, "empty");
    await assert.rejects(
      connectEngine(new AbortController().signal, { discovery: discovery("ssh://box", dir) }),
      (error: unknown) => error instanceof DaemonUnavailableError && /spawn ssh ENOENT/.test(error.message),
    );
  });
});
