import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { httpGet } from "../../src/net/http-get.js";

let server: Server;
let origin: string;
const signal = new AbortController().signal;

before(async () => {
  server = createServer((request, response) => {
    const path = request.url ?? "/";
    const hops = /^\/hop\/(\d+)$/.exec(path);
    if (hops !== null) {
      const left = Number(hops[1]);
      // Relative and absolute Locations, and each redirect status fetch follows.
      const statuses = [301, 302, 303, 307, 308];
      const next = left === 0 ? "/done" : left % 2 === 0 ? `/hop/${left - 1}` : `${origin}/hop/${left - 1}`;
      response.writeHead(statuses[left % statuses.length] as number, { Location: next }).end();
      return;
    }
    if (path === "/loop") {
      response.writeHead(302, { Location: "/loop" }).end();
      return;
    }
    if (path === "/ftp") {
      response.writeHead(302, { Location: "ftp://127.0.0.1/file" }).end();
      return;
    }
    if (path === "/done") {
      response.writeHead(200).end("done");
      return;
    }
    response.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  await new Promise((resolve) => server.close(resolve));
});

async function bodyOf(response: AsyncIterable<Buffer>): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of response) chunks.push(chunk);
  return Buffer.concat(chunks).toString();
}

test("redirects are followed, relative or absolute, up to twenty", async () => {
  const response = await httpGet(new URL(`${origin}/hop/19`), signal);
  assert.equal(response.statusCode, 200);
  assert.equal(await bodyOf(response), "done");
});

test("a status that is not a redirect is the answer, whatever it is", async () => {
  const response = await httpGet(new URL(`${origin}/missing`), signal);
  assert.equal(response.statusCode, 404);
  response.destroy();
});

test("a redirect loop and a redirect to another scheme are errors", async () => {
  await assert.rejects(httpGet(new URL(`${origin}/loop`), signal), /redirects more than 20 times/);
  await assert.rejects(httpGet(new URL(`${origin}/hop/20`), signal), /redirects more than 20 times/);
  await assert.rejects(httpGet(new URL(`${origin}/ftp`), signal), /redirects to ftp: URL/);
});

test("an abort stops the request", async () => {
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(httpGet(new URL(`${origin}/done`), controller.signal), { name: "AbortError" });
});
