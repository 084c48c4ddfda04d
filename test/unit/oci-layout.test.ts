/**
 * How an OCI layout names its images (the tag and containerd's full name per reference, as buildx and
 * containerd write them) and what it does to a dest that exists: adds to an OCI layout, and refuses
 * anything else before a byte is written or the source is read.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { build } from "../../src/build.js";
import { OutputSet, parseOutputs } from "../../src/cli/outputs.js";
import { InterruptedError, SinkError } from "../../src/errors.js";
import type { ImageBlobs } from "../../src/image/image-blobs.js";
import { parsePlatform } from "../../src/image/platform.js";
import { normalizedName, parseReference, parseTagReference } from "../../src/image/reference.js";
import { LayoutDirectory, indexJson, ociLayoutFiles, refNamesOf } from "../../src/sinks/oci-layout.js";
import type { SinkResult } from "../../src/sinks/sink.js";
import { bytesEntry, type EntrySource } from "../../src/tar/entry.js";
import { temporaryDirectory } from "../support/temporary-directory.js";

const MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const digestOf = (c: string): string => `sha256:${c.repeat(64)}`;

describe("the full name of a reference in index.json", () => {
  it("is normalised as distribution's ParseNormalizedNamed and TagNameOnly do", () => {
    const cases: [string, string][] = [
      ["x:1", "docker.io/library/x:1"],
      ["x", "docker.io/library/x:latest"],
      ["review/x:1", "docker.io/review/x:1"],
      ["docker.io/library/x:1", "docker.io/library/x:1"],
      ["docker.io/x:1", "docker.io/library/x:1"],
      ["index.docker.io/review/x:1", "docker.io/review/x:1"],
      ["localhost/x:1", "localhost/x:1"],
      ["localhost:5000/x", "localhost:5000/x:latest"],
      ["ghcr.io/o/x:2", "ghcr.io/o/x:2"],
      [`x@${digestOf("a")}`, `docker.io/library/x@${digestOf("a")}`],
    ];
    assert.deepEqual(
      cases.map(([text]) => [text, normalizedName(parseReference(text))]),
      cases,
    );
  });
});

describe("index.json entries of new images", () => {
  const image: ImageBlobs = {
    platform: parsePlatform("linux/amd64"),
    config: { descriptor: { mediaType: "x", digest: digestOf("c"), size: 1 }, data: Buffer.from("c") },
    layers: [],
    manifest: { descriptor: { mediaType: MANIFEST, digest: digestOf("m"), size: 1 }, data: Buffer.from("m") },
  };
  const tags = ["review/x:1", "review/y:1", "x:1", "docker.io/library/x:1", "review/x:1"].map(
    parseTagReference,
  );

  it("are one per reference, with the tag and the full name, so repositories with one tag do not collide", () => {
    const files = ociLayoutFiles([image], tags, []);
    assert.deepEqual(
      files.manifests.map((d) => [d.digest, d.annotations]),
      [
        ["docker.io/review/x:1", "1"],
        ["docker.io/review/y:1", "1"],
        ["docker.io/library/x:1", "1"],
      ].map(([name, tag]) => [
        digestOf("m"),
        { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag },
      ]),
    );
  });

  it("are reported once each, as the user wrote them", () => {
    assert.deepEqual(refNamesOf(tags), ["review/x:1", "review/y:1", "x:1"]);
  });
});

describe("index.json of an existing layout", () => {
  const entry = (digest: string, annotations?: Record<string, string>) => ({
    mediaType: MANIFEST,
    digest,
    size: 1,
    annotations,
  });
  const named = (name: string, tag: string): Record<string, string> => ({
    "io.containerd.image.name": name,
    "org.opencontainers.image.ref.name": tag,
  });
  const top = entry(digestOf("f"));
  const files = {
    top,
    blobs: [],
    manifests: [
      entry(top.digest, named("docker.io/review/other:a", "a")),
      entry(top.digest, named("docker.io/review/old:a", "a")),
    ],
    indexAnnotations: {},
  };

  it("keeps every entry but those of the same full reference, or with no full name, of the same tag", () => {
    const previous = [
      entry(digestOf("1"), named("docker.io/review/l:a", "a")),
      // Written unnormalised (by mkbase before it normalised): the same image as docker.io/review/old:a.
      entry(digestOf("2"), named("review/old:a", "a")),
      // skopeo's oci:DIR:a: only the tag, which oci:DIR:a would otherwise find twice.
      entry(digestOf("3"), { "org.opencontainers.image.ref.name": "a" }),
      entry(digestOf("4"), { "org.opencontainers.image.ref.name": "b" }),
      entry(digestOf("5")),
    ];
    const index = JSON.parse(indexJson(files, previous).toString()) as {
      manifests: { digest: string; annotations?: Record<string, string> }[];
    };
    assert.deepEqual(
      index.manifests.map((d) => [d.digest, d.annotations?.["io.containerd.image.name"] ?? null]),
      [
        [digestOf("1"), "docker.io/review/l:a"],
        [digestOf("4"), null],
        [digestOf("5"), null],
        [top.digest, "docker.io/review/other:a"],
        [top.digest, "docker.io/review/old:a"],
      ],
    );
  });
});

describe("index.json annotations of an existing layout", () => {
  it("are kept, and new index: annotations added to them", () => {
    const top = { mediaType: MANIFEST, digest: digestOf("f"), size: 1 };
    const files = { top, blobs: [], manifests: [top], indexAnnotations: { b: "new", c: "3" } };
    const document = { schemaVersion: 2, annotations: { a: "1", b: "old" }, subject: top };
    const index = JSON.parse(indexJson(files, [], document).toString()) as Record<string, unknown>;
    assert.deepEqual(index, {
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [top],
      annotations: { a: "1", b: "new", c: "3" },
      subject: top,
    });
  });
});

describe("a layout dest that exists", () => {
  const scratch = temporaryDirectory("mkbase-unit-layout-dest-");

  /** A directory in the scratch directory holding `files` (name → content; a name ending in / is a directory). */
  async function directoryWith(name: string, files: Record<string, string>): Promise<string> {
    const dir = join(scratch.path, name);
    await mkdir(dir);
    for (const [file, content] of Object.entries(files)) {
      if (file.endsWith("/")) await mkdir(join(dir, file));
      else await writeFile(join(dir, file), content);
    }
    return dir;
  }

  /** Every file and directory below `dir` with the content of the files, to compare before and after. */
  async function snapshot(dir: string): Promise<Record<string, string | null>> {
    const result: Record<string, string | null> = {};
    for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
      const path = join(entry.parentPath, entry.name);
      result[path.slice(dir.length + 1)] = entry.isFile() ? await readFile(path, "utf8") : null;
    }
    return result;
  }

  const refused: [string, Record<string, string>, RegExp][] = [
    ["broken-index", { "index.json": "important\n" }, /broken-index\/index\.json is not valid JSON/],
    [
      "not-an-index",
      { "index.json": '{"schemaVersion":2,"manifests":{"a":1}}' },
      /not-an-index\/index\.json is not an OCI image index/,
    ],
    [
      "other-version",
      { "oci-layout": '{"imageLayoutVersion":"2.0.0"}', "index.json": '{"schemaVersion":2,"manifests":[]}' },
      /other-version holds an oci-layout file of an unknown version/,
    ],
    [
      "home",
      { ".bashrc": "x", "notes.txt": "mine", "src/": "", "a.c": "", "blobs/": "" },
      /home is not an OCI image layout \(no oci-layout or index\.json\) and not empty: it holds \.bashrc, a\.c, notes\.txt and 1 more$/,
    ],
  ];
  for (const [name, files, message] of refused) {
    it(`refuses ${name} and leaves it as it was`, async () => {
      const dir = await directoryWith(name, files);
      const before = await snapshot(dir);
      const layout = new LayoutDirectory(dir);
      await assert.rejects(layout.prepare(), (error: unknown) => {
        assert.ok(error instanceof SinkError);
        assert.match(error.message, message);
        return true;
      });
      await layout.discard();
      assert.deepEqual(await snapshot(dir), before);
    });
  }

  it("refuses a file", async () => {
    const file = join(scratch.path, "a-file");
    await writeFile(file, "data");
    await assert.rejects(new LayoutDirectory(file).prepare(), {
      name: "SinkError",
      message: `cannot write the OCI layout ${file}: it is not a directory`,
    });
    assert.equal(await readFile(file, "utf8"), "data");
  });

  const accepted: [string, Record<string, string>][] = [
    ["empty", {}],
    // What a layout killed before its index.json leaves.
    ["unfinished", { "blobs/": "", ".mkbase-tmp-index.json-1-abc": "" }],
    // Go tools write an empty list as null (encoding/json marshals a nil slice so).
    [
      "go-made",
      {
        "oci-layout": '{"imageLayoutVersion": "1.0.0"}',
        "index.json": '{"schemaVersion":2,"manifests":null}',
      },
    ],
    ["index-only", { "index.json": '{"schemaVersion":2,"manifests":[]}', README: "mine" }],
  ];
  for (const [name, files] of accepted) {
    it(`takes ${name}`, async () => {
      const dir = await directoryWith(name, files);
      await new LayoutDirectory(dir).prepare();
      assert.deepEqual(await readdir(join(dir, "blobs", "sha256")), []);
    });
  }
});

describe("a refused layout dest in a build", () => {
  const scratch = temporaryDirectory("mkbase-unit-layout-build-");

  /** Builds a one-file image into `outputs`, which must fail with `message`; whether the source was read. */
  async function refusedBuild(outputs: readonly string[], message: RegExp): Promise<boolean> {
    let read = false;
    const source: EntrySource = {
      description: "a source that records being read",
      *entries() {
        read = true;
        yield bytesEntry("hello.txt", Buffer.from("hello\n"), 0o644, 1_600_000_000);
      },
    };
    const set = await OutputSet.open(parseOutputs(outputs, false), {
      tags: [parseTagReference("review/x:1")],
      annotations: [],
      env: {},
      images: 1,
    });
    try {
      const signal = new AbortController().signal;
      await assert.rejects(async () => {
        set.recordBuild(
          await build({
            source,
            epoch: { kind: "fixed", seconds: 1_700_000_000 },
            platform: parsePlatform("linux/amd64"),
            config: {},
            createdBy: "mkbase dir",
            sinks: set.sinksForBuild(undefined, () => undefined),
            signal,
            onProgress: () => undefined,
          }),
        );
        await set.complete(signal, () => undefined);
      }, message);
    } finally {
      await set.close();
    }
    return read;
  }

  it("fails it before the source is read, also when another output takes the layer stream", async () => {
    const dest = join(scratch.path, "home");
    await mkdir(dest);
    await writeFile(join(dest, "notes.txt"), "mine");
    const archive = join(scratch.path, "image.oci.tar");
    // Both gzip: one spool, which the archive (first) takes the stream into.
    const read = await refusedBuild(
      [`type=oci,dest=${archive}`, `type=oci,dest=${dest},tar=false`],
      /home is not an OCI image layout/,
    );
    assert.equal(read, false);
    assert.deepEqual(await readdir(dest), ["notes.txt"]);
    assert.deepEqual(await readdir(scratch.path), ["home"]);
  });

  it("leaves a directory whose index.json is broken as it was, with no oci-layout file added", async () => {
    const dest = join(scratch.path, "broken");
    await mkdir(dest);
    await writeFile(join(dest, "index.json"), "important\n");
    const read = await refusedBuild([`type=oci,dest=${dest},tar=false`], /index\.json is not valid JSON/);
    assert.equal(read, false);
    assert.deepEqual(await readdir(dest), ["index.json"]);
    assert.equal(await readFile(join(dest, "index.json"), "utf8"), "important\n");
  });
});

describe("adding to an existing layout", () => {
  const scratch = temporaryDirectory("mkbase-unit-layout-add-");

  /** Builds a one-file image holding `text` into the layout `dest` with `tags`; the layout's result. */
  async function buildInto(
    dest: string,
    text: string,
    tags: readonly string[],
    signal = new AbortController().signal,
  ): Promise<SinkResult> {
    const outputs = await OutputSet.open(parseOutputs([`type=oci,dest=${dest},tar=false`], false), {
      tags: tags.map(parseTagReference),
      annotations: [],
      env: {},
      images: 1,
    });
    try {
      const result = await build({
        source: {
          description: text,
          entries: () => [bytesEntry("file", Buffer.from(text), 0o644, 1_600_000_000)],
        },
        epoch: { kind: "fixed", seconds: 1_700_000_000 },
        platform: parsePlatform("linux/amd64"),
        config: {},
        createdBy: "mkbase dir",
        sinks: outputs.sinksForBuild(undefined, () => undefined),
        signal,
        onProgress: () => undefined,
      });
      outputs.recordBuild(result);
      const [final] = await outputs.complete(signal, () => undefined);
      assert.ok(final !== undefined);
      return final;
    } finally {
      await outputs.close();
    }
  }

  async function entries(dest: string): Promise<[string, string | undefined][]> {
    const index = JSON.parse(await readFile(join(dest, "index.json"), "utf8")) as {
      manifests: { digest: string; annotations?: Record<string, string> }[];
    };
    return index.manifests.map((d) => [d.digest, d.annotations?.["io.containerd.image.name"]]);
  }

  it("replaces only the entry of the same full reference, and reports its own references once", async () => {
    const dest = join(scratch.path, "layout");
    const first = await buildInto(dest, "one", ["review/l:a", "review/x:1", "review/y:1"]);
    assert.deepEqual(first.tags, ["review/l:a", "review/x:1", "review/y:1"]);
    const second = await buildInto(dest, "two", ["review/other:a", "review/x:1"]);
    assert.deepEqual(second.tags, ["review/other:a", "review/x:1"]);
    assert.notEqual(first.id, second.id);
    assert.deepEqual(await entries(dest), [
      [first.id, "docker.io/review/l:a"],
      [first.id, "docker.io/review/y:1"],
      [second.id, "docker.io/review/other:a"],
      [second.id, "docker.io/review/x:1"],
    ]);
    assert.equal(await readFile(join(dest, "oci-layout"), "utf8"), '{"imageLayoutVersion":"1.0.0"}');
  });

  it("keeps the entries of every command that adds to it at the same time", async () => {
    const dest = join(scratch.path, "parallel");
    const tags = ["1", "2", "3", "4", "5", "6"].map((n) => `review/par:${n}`);
    await Promise.all(tags.map((tag) => buildInto(dest, tag, [tag])));
    assert.deepEqual(
      (await entries(dest)).map(([, name]) => name).sort(),
      tags.map((tag) => `docker.io/${tag}`),
    );
  });

  it("breaks the index.json lock of a process that has exited", async () => {
    const dest = join(scratch.path, "stale");
    await mkdir(dest);
    const exited = spawnSync("true").pid;
    await writeFile(join(dest, ".mkbase-tmp-index.json.lock"), `${exited} ${hostname()}\n`);
    const result = await buildInto(dest, "stale", ["review/stale:1"]);
    assert.deepEqual(await entries(dest), [[result.id, "docker.io/review/stale:1"]]);
    assert.deepEqual((await readdir(dest)).sort(), ["blobs", "index.json", "oci-layout"]);
  });

  it("waits for the index.json lock of a running process until interrupted, and leaves that lock", async () => {
    const dest = join(scratch.path, "locked");
    await mkdir(dest);
    const lock = join(dest, ".mkbase-tmp-index.json.lock");
    await writeFile(lock, `${process.pid} ${hostname()}\n`);
    await assert.rejects(
      buildInto(dest, "locked", ["review/locked:1"], AbortSignal.timeout(500)),
      InterruptedError,
    );
    assert.equal(await readFile(lock, "utf8"), `${process.pid} ${hostname()}\n`);
    assert.ok(!(await readdir(dest)).includes("index.json"));
  });

  it("releases the index.json lock when the update fails", async () => {
    const dest = join(scratch.path, "failing");
    const layout = new LayoutDirectory(dest);
    await layout.prepare();
    const signal = new AbortController().signal;
    await assert.rejects(
      layout.updateIndex(() => {
        throw new SinkError("no room");
      }, signal),
      /no room/,
    );
    assert.deepEqual(await readdir(dest), ["blobs"]);
    await layout.updateIndex(() => Buffer.from('{"schemaVersion":2,"manifests":[]}'), signal);
    assert.deepEqual((await readdir(dest)).sort(), ["blobs", "index.json"]);
  });

  it("keeps the top-level annotations and other fields of the index.json it adds to", async () => {
    const dest = join(scratch.path, "skopeo-made");
    await mkdir(dest);
    await writeFile(join(dest, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}');
    const annotations = { "org.opencontainers.image.description": "made by skopeo" };
    await writeFile(
      join(dest, "index.json"),
      JSON.stringify({ schemaVersion: 2, manifests: [], annotations, "x-vendor": { kept: true } }),
    );
    const result = await buildInto(dest, "four", ["review/w:1"]);
    const index = JSON.parse(await readFile(join(dest, "index.json"), "utf8")) as Record<string, unknown>;
    assert.deepEqual(index.annotations, annotations);
    assert.deepEqual(index["x-vendor"], { kept: true });
    assert.deepEqual(await entries(dest), [[result.id, "docker.io/review/w:1"]]);
  });

  it("leaves an oci-layout file it accepted as it is", async () => {
    const dest = join(scratch.path, "spaced");
    await mkdir(dest);
    await writeFile(join(dest, "oci-layout"), '{ "imageLayoutVersion": "1.0.0" }\n');
    const result = await buildInto(dest, "three", ["review/z:1"]);
    assert.deepEqual(await entries(dest), [[result.id, "docker.io/review/z:1"]]);
    assert.equal(await readFile(join(dest, "oci-layout"), "utf8"), '{ "imageLayoutVersion": "1.0.0" }\n');
  });
});
