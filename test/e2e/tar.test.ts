/**
 * `mkbase tar` into the real Docker Engine: a GNU tar of the every-kind tree, plain and in every
 * compression, from a file, from stdin and from a local HTTP server, must give an image that holds
 * exactly what the tree holds.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, before, describe, test } from "node:test";
import {
  describeResult,
  runChecked,
  runMkbase,
  spawnMkbase,
  waitForExit,
  waitForStderr,
  type RunOptions,
  type RunResult,
} from "./support/cli.js";
import {
  dockerRun,
  failureLabel,
  imageIds,
  imageInspect,
  leftBehind,
  removeImages,
  uniqueTag,
} from "./support/docker.js";
import { makeEveryKindTree, makeMinimalTree, type FixtureTree } from "./support/fixture-tree.js";
import { containerRuntimePaths, diffListings, inspectHostTree, inspectImage } from "./support/inspect.js";
import { writeSelfSignedCertificate } from "../support/certificate.js";

const epoch = "1700000000";
const imageIdPattern = /^sha256:[0-9a-f]{64}$/;

/** Tags and IDs this file made; all removed at the end. */
const made = new Set<string>();

let tree: FixtureTree;
let work: string;
/** The host tree's listing without the socket, which no tar carries. */
let expected: string[];
/** The GNU tar of the tree, uncompressed. */
let plainTar: string;
/** The image ID of the plain tar: the same entries and flags must give it whatever the compression. */
let plainId: string;

/** `mkbase tar INPUT -t TAG --source-date-epoch … ARGS…`, which must succeed. */
async function mkbaseTar(
  input: string,
  tag: string,
  args: readonly string[] = [],
  options: RunOptions = {},
): Promise<{ id: string; result: RunResult }> {
  made.add(tag);
  const result = await runMkbase(["tar", input, "-t", tag, "--source-date-epoch", epoch, ...args], options);
  assert.equal(result.code, 0, describeResult(result));
  const id = result.stdout.replace(/\n$/, "");
  assert.match(id, imageIdPattern, `stdout is not an image ID:\n${describeResult(result)}`);
  made.add(id);
  return { id, result };
}

async function assertImageHoldsTree(tag: string): Promise<void> {
  const actual = await inspectImage(tag);
  assert.equal(diffListings(expected, actual), "", "the image differs from the tree");
  assert.deepEqual(actual, expected);
}

function sha256Of(bytes: Buffer): string {
  return createHash("sha256").update(bytes).digest("hex");
}

before(async () => {
  tree = await makeEveryKindTree();
  work = await mkdtemp(join(tmpdir(), "mkbase-e2e-tar-"));
  expected = await inspectHostTree(tree.root, [...containerRuntimePaths, "/special/socket"]);
  plainTar = join(work, "rootfs.tar");
  // GNU tar skips the socket with a warning and exits 0.
  await runChecked("tar", ["--xattrs", "--numeric-owner", "-C", tree.root, "-cf", plainTar, "."]);
  plainId = (await mkbaseTar(plainTar, uniqueTag("tar-plain"))).id;
});

after(async () => {
  await removeImages(made);
  await tree.cleanup();
  await rm(work, { recursive: true, force: true });
});

test("a plain GNU tar with xattrs gives the tree's entries", async () => {
  const tag = uniqueTag("tar-plain-check");
  const { id } = await mkbaseTar(plainTar, tag);
  assert.equal(id, plainId);
  assert.equal((await imageInspect(tag))?.Id, id);
  await assertImageHoldsTree(tag);
});

for (const [name, compressor] of [
  ["gzip", ["gzip", "-n", "-c"]],
  ["bzip2", ["bzip2", "-c"]],
  ["xz", ["xz", "-c"]],
  ["zstd", ["zstd", "-q", "-c"]],
  // pzstd starts with a skippable frame; --long=31 from a pipe records a window of 2 GiB.
  ["pzstd", ["pzstd", "-q", "-p", "2", "-c"]],
  ["zstd --long=31", ["zstd", "-q", "--long=31", "-c"]],
] as const) {
  test(`${name}: detected from its magic bytes, same image as the plain tar`, async () => {
    const compressed = join(work, `rootfs.tar.${name.replace(/\W+/g, "-")}`);
    // Through a shell for the redirections; the paths are positional parameters, never interpolated.
    await runChecked("sh", ["-c", `${compressor.join(" ")} < "$1" > "$2"`, "sh", plainTar, compressed]);
    const tag = uniqueTag(`tar-${name}`);
    const { id } = await mkbaseTar(compressed, tag);
    assert.equal(id, plainId);
    await assertImageHoldsTree(tag);
  });
}

test("stdin (-)", async () => {
  const tag = uniqueTag("tar-stdin");
  const { id } = await mkbaseTar("-", tag, [], { input: createReadStream(plainTar) });
  assert.equal(id, plainId);
  await assertImageHoldsTree(tag);
});

test("Ctrl-C stops a read from stdin or a FIFO whose writer has stalled: exit 130 within seconds", async () => {
  const fifo = join(work, "stalled.fifo");
  await runChecked("mkfifo", [fifo]);
  // The first header and part of its file, and then nothing: ssh host tar -c … hanging mid-archive.
  const start = (await readFile(plainTar)).subarray(0, 512 + 100);
  for (const input of ["-", fifo]) {
    const stdin = new PassThrough();
    const writer = input === "-" ? stdin : createWriteStream(fifo);
    writer.on("error", () => undefined);
    writer.write(start);
    const dest = join(work, "stalled-rootfs.tar");
    const child = spawnMkbase(["tar", input, "-o", `type=tar,dest=${dest}`], {
      input: stdin,
      timeoutMs: 60_000,
    });
    await waitForStderr(child, /packing tarball/);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const signalledAt = Date.now();
    child.kill("SIGINT");
    const result = await waitForExit(child);
    const took = Date.now() - signalledAt;
    writer.destroy();
    assert.equal(result.code, 130, `${input}: ${describeResult(result)}`);
    assert.ok(took < 5000, `${input}: took ${took} ms to stop after SIGINT`);
    // Neither the rootfs nor a temporary file beside it.
    const left = (await readdir(work)).filter((name) => name.includes("stalled-rootfs"));
    assert.deepEqual(left, [], input);
  }
});

test("a GNU sparse archive (tar -S): the container reads each file whole, zeros in its holes", async () => {
  const minimal = await makeMinimalTree();
  try {
    // Data at the start, in the middle and at the end of 8 MiB, holes between.
    const holes = join(minimal.root, "holes");
    await writeFile(holes, "");
    for (const offset of [0, 3 * 1024 * 1024, 8 * 1024 * 1024 - 4096]) {
      const fill = `dd if=/dev/urandom of="$1" bs=4096 count=1 seek=${offset} oflag=seek_bytes conv=notrunc status=none`;
      await runChecked("sh", ["-c", fill, "sh", holes]);
    }
    const archive = join(work, "sparse.tar");
    // The old GNU format, which `docker import` also reads; the PAX ones are covered by the reader's tests.
    await runChecked("tar", ["--format=gnu", "--sparse", "-C", minimal.root, "-cf", archive, "."]);
    assert.ok(
      (await readFile(archive)).length < 4 * 1024 * 1024,
      "the archive does not store the file sparse",
    );
    const tag = uniqueTag("tar-sparse");
    await mkbaseTar(archive, tag);
    const run = await dockerRun(tag, ["sha256sum", "/holes"], { entrypoint: "/bin/busybox" });
    assert.equal(run.code, 0, describeResult(run));
    assert.equal(run.stdout.split(" ")[0], sha256Of(await readFile(holes)));
  } finally {
    await minimal.cleanup();
  }
});

describe("a URL", () => {
  let server: Server;
  let url: string;
  let gzipBytes: Buffer;
  let requests = 0;

  before(async () => {
    const gzipPath = join(work, "served.tar.gz");
    await runChecked("sh", ["-c", 'gzip -n -c < "$1" > "$2"', "sh", plainTar, gzipPath]);
    gzipBytes = await readFile(gzipPath);
    server = createServer((request, response) => {
      requests += 1;
      if (request.url !== "/rootfs.tar.gz") {
        response.writeHead(404).end();
        return;
      }
      response.writeHead(200, { "Content-Type": "application/gzip", "Content-Length": gzipBytes.length });
      response.end(gzipBytes);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/rootfs.tar.gz`;
  });
  after(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  test("with the right --sha256 gives the tree's entries", async () => {
    const tag = uniqueTag("tar-url");
    const before = requests;
    const { id } = await mkbaseTar(url, tag, ["--sha256", sha256Of(gzipBytes)]);
    assert.equal(requests - before, 1);
    assert.equal(id, plainId);
    await assertImageHoldsTree(tag);
  });

  test("with a wrong --sha256 fails and leaves no image", async () => {
    const tag = uniqueTag("tar-url-wrong-sha");
    made.add(tag);
    const label = failureLabel();
    const imagesBefore = await imageIds();
    // A real digest of other bytes: the plain tar's.
    const wrong = sha256Of(await readFile(plainTar));
    const result = await runMkbase([
      "tar",
      url,
      "--sha256",
      wrong,
      "-t",
      tag,
      "--label",
      label.flag,
      "--source-date-epoch",
      epoch,
    ]);
    assert.equal(result.code, 3, describeResult(result));
    assert.match(result.stderr, /sha256/);
    assert.ok(result.stderr.includes(wrong), `stderr must show the expected digest:\n${result.stderr}`);
    assert.equal(result.stdout, "");
    assert.deepEqual(await leftBehind(imagesBefore, label, tag), []);
    assert.equal(await imageInspect(tag), undefined);
  });

  test("without --sha256 fails with exit 2 before downloading", async () => {
    const tag = uniqueTag("tar-url-no-sha");
    made.add(tag);
    const before = requests;
    const result = await runMkbase(["tar", url, "-t", tag]);
    assert.equal(result.code, 2, describeResult(result));
    assert.match(result.stderr, /--sha256/);
    assert.equal(requests - before, 0, "nothing may be downloaded");
    assert.equal(await imageInspect(tag), undefined);
  });
});

describe("an HTTPS URL, and NODE_EXTRA_CA_CERTS", () => {
  let server: HttpsServer;
  let origin: string;
  let certificate: string;
  let gzipBytes: Buffer;

  before(async () => {
    const { key, cert } = writeSelfSignedCertificate(work, "127.0.0.1");
    certificate = cert;
    const gzipPath = join(work, "https.tar.gz");
    await runChecked("sh", ["-c", 'gzip -n -c < "$1" > "$2"', "sh", plainTar, gzipPath]);
    gzipBytes = await readFile(gzipPath);
    server = createHttpsServer(
      { key: await readFile(key), cert: await readFile(certificate) },
      (request, response) => {
        if (request.url === "/latest") {
          response.writeHead(302, { Location: "/rootfs.tar.gz" }).end();
          return;
        }
        response.writeHead(200, { "Content-Length": gzipBytes.length }).end(gzipBytes);
      },
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  test("a server whose CA is in NODE_EXTRA_CA_CERTS is trusted, and redirects are followed", async () => {
    const tag = uniqueTag("tar-https");
    const { id } = await mkbaseTar(`${origin}/latest`, tag, ["--sha256", sha256Of(gzipBytes)], {
      env: { ...process.env, NODE_EXTRA_CA_CERTS: certificate },
    });
    assert.equal(id, plainId);
  });

  test("without it the certificate is refused, with a hint that names the variable", async () => {
    const tag = uniqueTag("tar-https-untrusted");
    made.add(tag);
    const env = { ...process.env };
    delete env.NODE_EXTRA_CA_CERTS;
    const result = await runMkbase(["tar", `${origin}/latest`, "--insecure", "-t", tag], { env });
    assert.equal(result.code, 3, describeResult(result));
    assert.match(result.stderr, /mkbase: error: could not download .*SELF_SIGNED.*NODE_EXTRA_CA_CERTS/s);
    assert.equal(await imageInspect(tag), undefined);
  });

  test("the tools mkbase runs see NODE_EXTRA_CA_CERTS as the user set it", async () => {
    // bin/mkbase starts node without the variable; a zstd that records it shows that children get it back.
    const standins = await mkdtemp(join(work, "standins-"));
    const record = join(work, "zstd-saw");
    await writeFile(
      join(standins, "zstd"),
      `#!/bin/sh\nprintf '%s' "\${NODE_EXTRA_CA_CERTS-unset}" > '${record}'\nexec /usr/bin/zstd "$@"\n`,
      { mode: 0o755 },
    );
    const compressed = join(work, "children.tar.zst");
    await runChecked("sh", ["-c", 'zstd -q -c < "$1" > "$2"', "sh", plainTar, compressed]);
    const { id } = await mkbaseTar(compressed, uniqueTag("tar-zstd-env"), [], {
      env: {
        ...process.env,
        NODE_EXTRA_CA_CERTS: certificate,
        PATH: `${standins}:${process.env.PATH ?? ""}`,
      },
    });
    assert.equal(id, plainId);
    assert.equal(await readFile(record, "utf8"), certificate);
  });
});
