/**
 * HTTP proxies from the environment, through a real proxy (tinyproxy): a tarball URL over http and over
 * https (a CONNECT tunnel), a proxy that asks for credentials, one that is down, NO_PROXY, and a push to
 * a registry. The servers listen on this machine's own non-loopback address, since a loopback host is
 * never proxied (as docker, crane and skopeo do).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer, type IncomingHttpHeaders, type RequestListener, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { writeSelfSignedCertificate } from "../support/certificate.js";
import { ownAddress } from "../support/network.js";
import { describeResult, runChecked, runCommand, runMkbase, type RunResult } from "./support/cli.js";
import { dockerRun, failureLabel, imageIds, leftBehind, removeImages, uniqueTag } from "./support/docker.js";
import { makeMinimalTree, type FixtureTree } from "./support/fixture-tree.js";
import { startHttpProxy, type HttpProxy } from "./support/http-proxy.js";
import { startRegistry, type RegistryServer } from "./support/registry-server.js";

const PROXY_VARIABLES = ["http_proxy", "https_proxy", "all_proxy", "no_proxy"];

/** The test's environment without any proxy variable of its own, plus `extra`. */
function environment(extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of PROXY_VARIABLES) {
    delete env[name];
    delete env[name.toUpperCase()];
  }
  return { ...env, ...extra };
}

async function listen(server: Server, address: string): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, address, resolve));
  return `${address}:${(server.address() as AddressInfo).port}`;
}

const address = ownAddress();
const made = new Set<string>();
let work: string;
let tree: FixtureTree;
let rootfsTar: Buffer;
let sha256: string;
/** The headers of each request the file servers got. */
const seen: IncomingHttpHeaders[] = [];
let plainServer: Server;
let tlsServer: Server;
/** `ADDRESS:PORT` of each. */
let plainHost: string;
let tlsHost: string;
let certificate: string;
let proxy: HttpProxy;

before(async () => {
  work = await mkdtemp(join(tmpdir(), "mkbase-proxy-test-"));
  tree = await makeMinimalTree();
  await runChecked("tar", ["-C", tree.root, "-cf", join(work, "rootfs.tar"), "."]);
  rootfsTar = await readFile(join(work, "rootfs.tar"));
  sha256 = createHash("sha256").update(rootfsTar).digest("hex");
  const serve: RequestListener = (request, response) => {
    seen.push(request.headers);
    if (request.url === "/rootfs.tar") response.writeHead(200).end(rootfsTar);
    else response.writeHead(404).end();
  };
  plainServer = createServer(serve);
  plainHost = await listen(plainServer, address);
  const pair = writeSelfSignedCertificate(work, address);
  certificate = pair.cert;
  tlsServer = createHttpsServer({ key: await readFile(pair.key), cert: await readFile(pair.cert) }, serve);
  tlsHost = await listen(tlsServer, address);
  proxy = await startHttpProxy();
});

after(async () => {
  await removeImages(made);
  await proxy.dispose();
  await new Promise((resolve) => plainServer.close(resolve));
  await new Promise((resolve) => tlsServer.close(resolve));
  await tree.cleanup();
  await rm(work, { recursive: true, force: true });
});

/** `mkbase tar URL --sha256 … -t TAG` with `env`. */
async function mkbaseTar(
  url: string,
  env: NodeJS.ProcessEnv,
  extra: readonly string[] = [],
): Promise<{ tag: string; result: RunResult }> {
  const tag = uniqueTag("proxy");
  made.add(tag);
  const result = await runMkbase(["tar", url, "--sha256", sha256, "-t", tag, "-q", ...extra], { env });
  return { tag, result };
}

/** The image holds the tree's file: the download really made the image. */
async function assertHoldsTree(tag: string): Promise<void> {
  const run = await dockerRun(tag, ["/bin/busybox", "cat", "/hello.txt"]);
  assert.equal(run.code, 0, describeResult(run));
  assert.equal(run.stdout, "hello from mkbase\n");
}

describe("a tarball URL", () => {
  test("over http goes through HTTP_PROXY (the server sees the proxy's Via header)", async () => {
    const url = `http://${plainHost}/rootfs.tar`;
    const before = proxy.requests().length;
    const { tag, result } = await mkbaseTar(url, environment({ HTTP_PROXY: proxy.url }));
    assert.equal(result.code, 0, describeResult(result));
    await assertHoldsTree(tag);
    assert.deepEqual(proxy.requests().slice(before), [`GET ${url}`]);
    assert.match(String(seen.at(-1)?.via), /tinyproxy/);
  });

  test("over https goes through a CONNECT tunnel of HTTPS_PROXY, the server's CA still checked", async () => {
    const before = proxy.requests().length;
    const { tag, result } = await mkbaseTar(
      `https://${tlsHost}/rootfs.tar`,
      environment({ https_proxy: proxy.url, NODE_EXTRA_CA_CERTS: certificate }),
    );
    assert.equal(result.code, 0, describeResult(result));
    await assertHoldsTree(tag);
    assert.deepEqual(proxy.requests().slice(before), [`CONNECT ${tlsHost}`]);

    const untrusted = await mkbaseTar(
      `https://${tlsHost}/rootfs.tar`,
      environment({ https_proxy: proxy.url }),
    );
    assert.equal(untrusted.result.code, 3, describeResult(untrusted.result));
    assert.match(untrusted.result.stderr, /NODE_EXTRA_CA_CERTS/);
  });

  test("a host in NO_PROXY, and a loopback host, are reached directly", async () => {
    const down = "http://127.0.0.1:9";
    const direct = await mkbaseTar(
      `http://${plainHost}/rootfs.tar`,
      environment({ HTTP_PROXY: down, NO_PROXY: address }),
    );
    assert.equal(direct.result.code, 0, describeResult(direct.result));
    assert.equal(seen.at(-1)?.via, undefined);

    const loopbackServer = createServer((_request, response) => response.writeHead(200).end(rootfsTar));
    const loopbackHost = await listen(loopbackServer, "127.0.0.1");
    try {
      const loopback = await mkbaseTar(
        `http://${loopbackHost}/rootfs.tar`,
        environment({ HTTP_PROXY: down }),
      );
      assert.equal(loopback.result.code, 0, describeResult(loopback.result));
    } finally {
      await new Promise((resolve) => loopbackServer.close(resolve));
    }
  });

  test("a proxy that is down fails with a message naming it and NO_PROXY, and makes no image", async () => {
    const idsBefore = await imageIds();
    const label = failureLabel();
    const { tag, result } = await mkbaseTar(
      `http://${plainHost}/rootfs.tar`,
      environment({ HTTP_PROXY: "http://127.0.0.1:9" }),
      ["--label", label.flag],
    );
    assert.equal(result.code, 3, describeResult(result));
    assert.match(result.stderr, /ECONNREFUSED/);
    assert.match(result.stderr, /the proxy http:\/\/127\.0\.0\.1:9 \(HTTP_PROXY\)/);
    assert.match(result.stderr, new RegExp(`add ${address.replaceAll(".", "\\.")} to NO_PROXY`));
    assert.equal(result.stdout, "");
    assert.deepEqual(await leftBehind(idsBefore, label, tag), []);
  });
});

describe("a proxy that asks for credentials", () => {
  const user = { name: "builder", password: "s3cret" };
  let guarded: HttpProxy;

  before(async () => {
    guarded = await startHttpProxy({ user });
  });
  after(() => guarded.dispose());

  test("without them the 407 says where they go; with them in the URL the download works", async () => {
    const url = `http://${plainHost}/rootfs.tar`;
    const refused = await mkbaseTar(url, environment({ HTTP_PROXY: guarded.url }));
    assert.equal(refused.result.code, 3, describeResult(refused.result));
    assert.match(refused.result.stderr, /HTTP 407/);
    assert.match(refused.result.stderr, /HTTP_PROXY=http:\/\/USER:PASSWORD@127\.0\.0\.1:\d+/);

    const withCredentials = guarded.url.replace("http://", `http://${user.name}:${user.password}@`);
    const { tag, result } = await mkbaseTar(url, environment({ HTTP_PROXY: withCredentials }));
    assert.equal(result.code, 0, describeResult(result));
    await assertHoldsTree(tag);
    // The password is not echoed anywhere mkbase writes.
    assert.doesNotMatch(result.stderr + refused.result.stderr, /s3cret/);
  });
});

describe("a push", () => {
  let registry: RegistryServer;

  before(async () => {
    registry = await startRegistry({ address });
  });
  after(() => registry.dispose());

  test("goes through the proxies, and the registry holds the digest mkbase printed", async () => {
    const reference = `${registry.host}/proxied:1`;
    const before = proxy.requests().length;
    const result = await runMkbase(
      ["dir", tree.root, "-t", reference, "--push", "--insecure-registry", "--source-date-epoch", "0", "-q"],
      { env: environment({ HTTPS_PROXY: proxy.url, HTTP_PROXY: proxy.url }) },
    );
    assert.equal(result.code, 0, describeResult(result));
    const digest = /@(sha256:[0-9a-f]{64})$/m.exec(result.stdout)?.[1];
    assert.ok(digest, describeResult(result));
    const through = proxy.requests().slice(before);
    assert.ok(
      through.includes(`PUT http://${registry.host}/v2/proxied/manifests/1`),
      `the proxy did not carry the manifest PUT:\n${through.join("\n")}`,
    );
    // Read back directly, without the proxy.
    const inspect = await runCommand(
      "skopeo",
      ["inspect", "--tls-verify=false", "--format", "{{.Digest}}", `docker://${reference}`],
      { env: environment({}) },
    );
    assert.equal(inspect.code, 0, describeResult(inspect));
    assert.equal(inspect.stdout.trim(), digest);
  });
});
