import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { appendFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, describe, it } from "node:test";
import { build, type BuildRequest } from "../../src/build.js";
import type { EngineClient } from "../../src/docker/engine.js";
import { SourceError } from "../../src/errors.js";
import type { ProgressEvent } from "../../src/progress.js";
import { DockerLoadSink } from "../../src/sinks/docker-engine.js";
import type { Sink } from "../../src/sinks/sink.js";
import { RootfsDirSource } from "../../src/sources/rootfs-dir.js";
import type { TarEntry } from "../../src/tar/entry.js";
import { packTar, packedEntrySize, packedTarSize } from "../../src/tar/pack.js";
import { readTar } from "../../src/tar/read.js";

const signal = new AbortController().signal;

async function packedLength(entries: TarEntry[]): Promise<number> {
  let length = 0;
  for await (const chunk of packTar(entries, { signal })) length += chunk.length;
  return length;
}

const base = { mode: 0o644, uid: 0, gid: 0, mtime: 1_700_000_000, size: 0 };

function file(path: Buffer | string, data: Buffer, extra: Partial<TarEntry> = {}): TarEntry {
  return {
    ...base,
    path: Buffer.isBuffer(path) ? path : Buffer.from(path),
    type: "file",
    size: data.length,
    content: { kind: "bytes", data },
    ...extra,
  };
}

/** One entry of every kind, and every reason for a PAX header. */
const kinds: [string, TarEntry][] = [
  ["empty file", file("empty", Buffer.alloc(0))],
  ["file shorter than a block", file("short", Buffer.from("hello\n"))],
  ["file of exactly one block", file("block", Buffer.alloc(512, 1))],
  ["file one byte over a block", file("over", Buffer.alloc(513, 2))],
  ["file of several MiB", file("big", Buffer.alloc(3 * 1024 * 1024 + 7, 3))],
  ["directory", { ...base, path: Buffer.from("etc"), type: "directory", mode: 0o755 }],
  ["symlink", { ...base, path: Buffer.from("link"), type: "symlink", linkname: Buffer.from("target") }],
  [
    "symlink with a long target (PAX linkpath)",
    { ...base, path: Buffer.from("longlink"), type: "symlink", linkname: Buffer.from("t/".repeat(80)) },
  ],
  ["hardlink", { ...base, path: Buffer.from("hard"), type: "hardlink", linkname: Buffer.from("short") }],
  ["char device", { ...base, path: Buffer.from("null"), type: "char", devmajor: 1, devminor: 3 }],
  ["block device", { ...base, path: Buffer.from("sda"), type: "block", devmajor: 8, devminor: 0 }],
  ["fifo", { ...base, path: Buffer.from("pipe"), type: "fifo" }],
  ["path split into ustar prefix", file(`${"d".repeat(120)}/name`, Buffer.from("x"))],
  ["path too long for ustar (PAX path)", file(`${"p".repeat(300)}`, Buffer.from("x"))],
  [
    "non-UTF-8 long path (PAX path and hdrcharset)",
    file(
      Buffer.concat([Buffer.from("n".repeat(200)), Buffer.from([0xff, 0xfe]), Buffer.from("z".repeat(100))]),
      Buffer.from("x"),
    ),
  ],
  [
    "uid and gid beyond ustar (PAX uid, gid)",
    file("owner", Buffer.from("x"), { uid: 3_000_000, gid: 5_000_000 }),
  ],
  ["negative mtime (PAX mtime)", file("old", Buffer.from("x"), { mtime: -86_400 })],
  [
    "binary xattrs (PAX SCHILY.xattr)",
    file("cap", Buffer.from("x"), {
      xattrs: new Map([
        ["security.capability", Buffer.from([1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])],
        ["user.comment", Buffer.from("é".repeat(400))],
      ]),
    }),
  ],
  [
    "streamed content",
    {
      ...base,
      path: Buffer.from("streamed"),
      type: "file",
      size: 1000,
      content: { kind: "stream", chunks: Readable.from([Buffer.alloc(600), Buffer.alloc(400)]) },
    },
  ],
];

describe("packed size from metadata", () => {
  for (const [name, entry] of kinds) {
    it(`equals the packed length for a ${name}`, async () => {
      // Packing one entry writes the entry and the two end-of-archive blocks.
      assert.equal(packedEntrySize(entry), (await packedLength([entry])) - 1024);
    });
  }

  it("equals the packed length of a whole archive", async () => {
    const entries = kinds.map(([, entry]) => entry).filter((entry) => entry.content?.kind !== "stream");
    assert.equal(await packedTarSize(entries, signal), await packedLength(entries));
  });

  it("counts a PAX size record for a file over 8 GiB", () => {
    const size = 9 * 1024 ** 3 + 1;
    const huge = file("huge", Buffer.alloc(0), { size, content: undefined });
    // PAX header block, one block of records, the ustar block, then the content and its padding.
    assert.equal(packedEntrySize(huge), 3 * 512 + size + 511);
  });
});

/** Reads a tar into members (path → bytes), in order. */
async function members(archive: Buffer): Promise<[string, Buffer][]> {
  const result: [string, Buffer][] = [];
  for await (const entry of readTar(Readable.from([archive]), signal)) {
    const chunks: Buffer[] = [];
    if (entry.content?.kind === "stream") for await (const chunk of entry.content.chunks) chunks.push(chunk);
    result.push([entry.path.toString(), Buffer.concat(chunks)]);
  }
  return result;
}

function sha256(data: Buffer): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

/** Takes the load body as it is streamed and answers with the ID of the config the archive names. */
class LoadingEngine implements EngineClient {
  readonly endpoint = "fake://engine";
  readonly apiVersion = "1.41";
  received = Buffer.alloc(0);
  bodyEnded = false;
  bodyFailed = false;
  tagged: string[] = [];

  async postTar(_path: string, _query: Record<string, unknown>, body: Readable): Promise<Readable> {
    const chunks: Buffer[] = [];
    try {
      for await (const chunk of body) chunks.push(chunk as Buffer);
      this.bodyEnded = true;
    } catch {
      this.bodyFailed = true;
    }
    this.received = Buffer.concat(chunks);
    if (!this.bodyEnded) throw new Error("upload broken off");
    const all = await members(this.received);
    const manifest = JSON.parse(all.find(([path]) => path === "manifest.json")?.[1].toString() ?? "[]") as {
      Config: string;
    }[];
    const config = all.find(([path]) => path === manifest[0]?.Config)?.[1] ?? Buffer.alloc(0);
    return Readable.from([`${JSON.stringify({ stream: `Loaded image ID: ${sha256(config)}\n` })}\n`]);
  }
  async inspectImage() {
    return undefined;
  }
  async tagImage(id: string, repository: string, tag: string) {
    this.tagged.push(`${id} ${repository}:${tag}`);
  }
  async removeImage() {}
}

/** A sink that reads the spooled layer, which keeps the build on the spooled path. */
const spoolReader: Sink = {
  destination: "spool reader",
  needsLayerFile: true,
  write: async () => ({ destination: "spool reader", id: "", tags: [] }),
};

describe("streamed docker load", () => {
  const root = mkdtempSync(join(tmpdir(), "mkbase-presized-"));
  after(() => rmSync(root, { recursive: true, force: true }));
  const tree = join(root, "tree");
  mkdirSync(join(tree, "etc"), { recursive: true });
  writeFileSync(join(tree, "etc/hostname"), "box\n");
  writeFileSync(join(tree, "etc/big"), Buffer.alloc(2 * 1024 * 1024 + 3, 7));
  writeFileSync(join(tree, `${"l".repeat(150)}`), "long name\n");
  symlinkSync("etc/hostname", join(tree, "link"));

  async function load(
    extraSinks: Sink[] = [],
    onProgress: (event: ProgressEvent) => void = () => {},
  ): Promise<{ engine: LoadingEngine; run: Promise<Awaited<ReturnType<typeof build>>> }> {
    const engine = new LoadingEngine();
    const source = await RootfsDirSource.open({ path: tree, onProgress: () => {} });
    const sink = new DockerLoadSink({ engine, tags: [], onProgress: () => {} });
    const request: BuildRequest = {
      source,
      epoch: { kind: "fixed", seconds: 1_700_000_000 },
      platform: { os: "linux", architecture: "amd64" },
      config: { Cmd: ["/bin/sh"] },
      createdBy: "mkbase test",
      sinks: [sink, ...extraSinks],
      signal,
      onProgress,
    };
    return { engine, run: build(request) };
  }

  it("streams the layer first, then the config and manifest.json, with no index.json", async () => {
    const { engine, run } = await load();
    const result = await run;
    const all = await members(engine.received);
    assert.deepEqual(
      all.map(([path]) => path),
      ["layer.tar", `${result.imageId.slice("sha256:".length)}.json`, "manifest.json"],
    );
    assert.equal(sha256(all[0]?.[1] ?? Buffer.alloc(0)), result.diffId);
    assert.equal(all[0]?.[1].length, result.size);
    assert.deepEqual(JSON.parse(all[2]?.[1].toString() ?? ""), [
      { Config: `${result.imageId.slice("sha256:".length)}.json`, Layers: ["layer.tar"], RepoTags: null },
    ]);
    assert.equal(result.results[0]?.id, result.imageId);
  });

  it("gives the same image ID and layer as the spooled archive", async () => {
    const streamed = await (await load()).run;
    const spooled = await load([spoolReader]);
    const result = await spooled.run;
    assert.ok(
      (await members(spooled.engine.received)).some(([path]) => path === "index.json"),
      "a build that needs the layer file sends the spooled form",
    );
    assert.equal(result.imageId, streamed.imageId);
    assert.equal(result.diffId, streamed.diffId);
  });

  it("fails and breaks the upload off when a file appears between measuring and packing", async () => {
    const { engine, run } = await load([], (event) => {
      if (event.kind === "phase" && event.message.startsWith("packing")) {
        writeFileSync(join(tree, "etc/zz-new"), "appeared\n");
      }
    });
    try {
      await assert.rejects(
        run,
        (error: unknown) => error instanceof SourceError && /changed/.test(error.message),
      );
    } finally {
      rmSync(join(tree, "etc/zz-new"), { force: true });
    }
    assert.equal(engine.bodyEnded, false);
    assert.deepEqual(engine.tagged, []);
  });

  it("fails and breaks the upload off when the tree shrinks between measuring and packing", async () => {
    mkdirSync(join(tree, "gone"));
    const { engine, run } = await load([], (event) => {
      if (event.kind === "phase" && event.message.startsWith("packing"))
        rmSync(join(tree, "gone"), { recursive: true });
    });
    await assert.rejects(
      run,
      (error: unknown) => error instanceof SourceError && /changed/.test(error.message),
    );
    assert.equal(engine.bodyEnded, false);
  });

  it("fails when a file grows past a block between measuring and packing", async () => {
    writeFileSync(join(tree, "etc/growing"), "a");
    const { engine, run } = await load([], (event) => {
      if (event.kind === "phase" && event.message.startsWith("packing"))
        appendFileSync(join(tree, "etc/growing"), Buffer.alloc(600));
    });
    try {
      await assert.rejects(run, SourceError);
    } finally {
      rmSync(join(tree, "etc/growing"), { force: true });
    }
    assert.equal(engine.bodyEnded, false);
  });
});
