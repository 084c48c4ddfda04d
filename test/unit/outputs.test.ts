/**
 * `-o` parsing, `--annotation` parsing, the OCI layout's index, and a golden test: a fixed image written
 * as an OCI layout must keep its manifest digest (a change means every user's image digest changes).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { build, type BuildResult } from "../../src/build.js";
import {
  annotationsFromFlags,
  checkAnnotationPlatforms,
  checkEngineAnnotations,
  compressionForName,
  describeOutput,
  openOutputs,
  OutputSet,
  parseOutput,
  parseOutputs,
  resultLines,
  writesStdout,
  type OutputSpec,
} from "../../src/cli/outputs.js";
import type { ImageFlags } from "../../src/cli/image-options.js";
import { makeCompression } from "../../src/compress/compression.js";
import { InterruptedError, SinkError, UsageError } from "../../src/errors.js";
import { annotationsFor, parseAnnotation } from "../../src/image/annotations.js";
import { formatPlatform, parsePlatform } from "../../src/image/platform.js";
import { parseTagReference } from "../../src/image/reference.js";
import { TEMP_PREFIX, writeFileAtomically } from "../../src/sinks/atomic-file.js";
import { ArchiveFile } from "../../src/sinks/oci-archive.js";
import { indexJson, type LayoutFiles } from "../../src/sinks/oci-layout.js";
import { bytesEntry, directoryEntry, type EntrySource } from "../../src/tar/entry.js";
import { temporaryDirectory } from "../support/temporary-directory.js";

describe("parseOutput", () => {
  it("reads every type with buildx's defaults", () => {
    assert.deepEqual(parseOutput("type=docker"), { type: "docker" });
    assert.deepEqual(parseOutput("type=docker,dest=a.tar"), { type: "docker", dest: "a.tar" });
    assert.deepEqual(parseOutput("type=oci,dest=a.tar"), {
      type: "oci",
      dest: "a.tar",
      tar: true,
      compression: { algorithm: "gzip", level: 6 },
    });
    assert.deepEqual(parseOutput("type=oci,dest=dir,tar=false,compression=zstd,compression-level=9"), {
      type: "oci",
      dest: "dir",
      tar: false,
      compression: { algorithm: "zstd", level: 9 },
    });
    assert.deepEqual(parseOutput("type=context,dest=ctx"), { type: "context", dest: "ctx" });
    assert.deepEqual(parseOutput("type=registry,registry.insecure=true"), {
      type: "registry",
      compression: { algorithm: "gzip", level: 6 },
      insecure: true,
    });
  });

  it("picks the rootfs tar compression from the name unless compression= is given", () => {
    assert.deepEqual(
      parseOutput("type=tar,dest=r.tar.zst").type === "tar" && parseOutput("type=tar,dest=r.tar.zst"),
      {
        type: "tar",
        dest: "r.tar.zst",
        compression: { algorithm: "zstd", level: 3 },
      },
    );
    assert.equal(compressionForName("rootfs.tgz"), "gzip");
    assert.equal(compressionForName("rootfs.tar"), "none");
    const forced = parseOutput("type=tar,dest=r.tar.gz,compression=none");
    assert.equal(forced.type === "tar" ? forced.compression.algorithm : undefined, "none");
  });

  it("honours double quotes around values holding commas", () => {
    assert.deepEqual(parseOutput('type=docker,"dest=a,b.tar"'), { type: "docker", dest: "a,b.tar" });
  });

  it("refuses what it cannot do, saying what to write instead", () => {
    for (const bad of [
      "./out",
      "dest=a.tar",
      "type=local,dest=x",
      "type=oci",
      "type=oci,dest=a,tar=maybe",
      "type=oci,dest=a,compression=xz",
      "type=oci,dest=a,compression-level=12",
      "type=docker,dest=a,compression=gzip",
      "type=registry,name=x/y",
      "type=context,dest=-",
      "type=oci,dest=-,tar=false",
      "type=oci,dest=a,dest=b",
      "type=oci,dest=a,oci-mediatypes=false",
      "type=oci,dest=a,force-compression=banana",
    ]) {
      assert.throws(() => parseOutput(bad), UsageError, bad);
    }
    assert.throws(
      () => parseOutput("type=local,dest=x"),
      (error: UsageError) => /type=tar/.test(error.hint ?? ""),
    );
  });
});

describe("a rootfs tar's compression from its name", () => {
  it("is gzip or zstd by the extension, and a name promising another is refused", () => {
    assert.equal(compressionForName("r.tar.zstd"), "zstd");
    for (const [name, format, tool] of [
      ["r.tar.xz", "xz", "xz"],
      ["r.txz", "xz", "xz"],
      ["r.tar.bz2", "bz2", "bzip2"],
      ["r.tbz2", "bz2", "bzip2"],
      ["r.tar.lz4", "lz4", "lz4"],
    ] as const) {
      assert.throws(
        () => parseOutput(`type=tar,dest=${name}`),
        (error: unknown) => {
          assert.ok(error instanceof UsageError);
          assert.equal(
            error.message,
            `--output type=tar,dest=${name}: mkbase compresses a rootfs tar with gzip or zstd, not ${format}`,
          );
          assert.match(
            error.hint ?? "",
            new RegExp(`dest=- \\| ${tool} > ${name.replaceAll(".", "\\.")}\\.$`),
          );
          return true;
        },
      );
    }
    // Asked for explicitly, the name is the user's business.
    assert.deepEqual(parseOutput("type=tar,dest=r.tar.xz,compression=none"), {
      type: "tar",
      dest: "r.tar.xz",
      compression: makeCompression("none", undefined, "test"),
    });
  });
});

describe("an archive output named as a compressed file", () => {
  it("is refused for a docker-archive and an OCI archive, with the command that compresses it", () => {
    for (const [type, dest, what, format, tool] of [
      ["docker", "image.tar.gz", "a docker-archive", "gzip", "gzip"],
      ["oci", "image.oci.tgz", "an OCI archive", "gzip", "gzip"],
      ["oci", "image.tar.zst", "an OCI archive", "zstd", "zstd"],
      ["docker", "image.tar.bz2", "a docker-archive", "bz2", "bzip2"],
      ["oci", "image.tar.xz", "an OCI archive", "xz", "xz"],
    ] as const) {
      const text = `type=${type},dest=${dest}`;
      assert.throws(
        () => parseOutput(text),
        (error: unknown) => {
          assert.ok(error instanceof UsageError);
          assert.equal(
            error.message,
            `--output ${text}: ${what} is a plain tar (its layers are compressed inside), not ${format}`,
          );
          assert.ok(error.hint?.endsWith(`-o type=${type},dest=- | ${tool} > ${dest}.`), error.hint);
          return true;
        },
      );
    }
  });

  it("is a layout directory's own business, and a plain .tar name is taken", () => {
    assert.equal(parseOutput("type=oci,dest=layout.gz,tar=false").type, "oci");
    assert.equal(parseOutput("type=oci,dest=image.oci.tar").type, "oci");
    assert.equal(parseOutput("type=docker,dest=image.tar").type, "docker");
  });
});

describe("dest=- (stdout)", () => {
  it("takes the archives and the rootfs tar, once, and marks them as writing stdout", () => {
    const specs = parseOutputs(["type=tar,dest=-"], undefined);
    assert.deepEqual(specs, [
      { type: "tar", dest: "-", compression: makeCompression("none", undefined, "test") },
    ]);
    assert.equal(writesStdout(specs[0] as OutputSpec), true);
    for (const text of ["type=docker,dest=-", "type=oci,dest=-"]) {
      assert.equal(writesStdout(parseOutput(text)), true, text);
    }
    assert.equal(writesStdout(parseOutput("type=oci,dest=x.tar")), false);
    assert.deepEqual(parseOutput("-"), parseOutput("type=tar,dest=-"), "buildx's -o - shorthand");
    assert.throws(() => parseOutputs(["type=docker,dest=-", "type=oci,dest=-"], undefined), UsageError);
  });
});

describe("parseOutputs", () => {
  it("means the Docker Engine without -o, adds a registry for --push, refuses two outputs to one place", () => {
    assert.deepEqual(parseOutputs([], undefined), [{ type: "docker" }]);
    const pushed = parseOutputs(["type=oci,dest=a.tar"], true);
    assert.deepEqual(
      pushed.map((spec) => spec.type),
      ["oci", "registry"],
    );
    assert.equal(parseOutputs(["type=registry"], true).length, 1);
    assert.throws(() => parseOutputs(["type=oci,dest=a", "type=docker,dest=a"], false), UsageError);
    // One file, spelled two ways: the second output would replace the first.
    assert.throws(() => parseOutputs(["type=tar,dest=same.tar", "type=oci,dest=./same.tar"], false), {
      name: "UsageError",
      message: `two outputs go to the same dest (file ${join(process.cwd(), "same.tar")})`,
    });
    assert.throws(() => parseOutputs(["type=docker", "type=docker"], false), UsageError);
  });

  it("refuses single-image outputs when several platforms are built", async () => {
    const options = { tags: [], annotations: [], env: {}, images: 2 };
    await assert.rejects(OutputSet.open(parseOutputs(["type=tar,dest=r.tar"], false), options), UsageError);
    await assert.rejects(
      OutputSet.open(parseOutputs(["type=docker,dest=d.tar"], false), options),
      UsageError,
    );
  });
});

describe("flags for one kind of output", () => {
  const scratch = temporaryDirectory("mkbase-unit-output-flags-");
  const options = { tags: [], env: {}, images: 1 };

  it("refuse --via without the Docker Engine among the outputs", async () => {
    await assert.rejects(
      openOutputs(
        { via: "import", output: ["type=oci,dest=x.tar", "type=docker,dest=d.tar"] } as ImageFlags,
        options,
      ),
      {
        name: "UsageError",
        message: "--via chooses how the image enters the Docker Engine, and no output goes there",
      },
    );
  });

  it("are refused without a registry output: a forgotten --push would push nothing", async () => {
    for (const flags of [
      { registryAuthFile: "auth.json" },
      { insecureRegistry: true },
      { output: ["type=oci,dest=x.tar"], registryAuthFile: "auth.json", insecureRegistry: true },
    ] as ImageFlags[]) {
      await assert.rejects(openOutputs(flags, options), (error: unknown) => {
        assert.ok(error instanceof UsageError);
        assert.match(
          error.message,
          /^--(registry-auth-file|insecure-registry).* only used by a push, and this command pushes nothing$/,
        );
        assert.match(error.hint ?? "", /Add --push \(or -o type=registry\)/);
        return true;
      });
    }
  });

  it("refuse annotations that no output keeps: a rootfs tar, a build context, the engine by import or build", async () => {
    for (const flags of [
      { output: ["type=tar,dest=rootfs.tar"], annotation: ["a=b"] },
      { output: ["type=context,dest=ctx", "type=tar,dest=rootfs.tar"], imageVersion: "1.0" },
      { via: "import", annotation: ["a=b"], imageSource: "https://example.org/src" },
      { output: ["type=docker"], via: "build", imageRevision: "abc" },
    ] as ImageFlags[]) {
      await assert.rejects(openOutputs(flags, options), (error: unknown) => {
        assert.ok(error instanceof UsageError, String(error));
        assert.match(
          error.message,
          /^--(annotation|image-\w+)( and --image-source are| is) only kept by an OCI output, a docker-archive file or a push, and this command writes none$/,
        );
        assert.match(
          error.hint ?? "",
          /-o type=oci,dest=…, a docker-archive file \(-o type=docker,dest=FILE\) or --push/,
        );
        return true;
      });
    }
    // Beside an output that keeps them, or into the engine by load, whose store is known only once connected.
    for (const flags of [
      {
        output: [
          `type=tar,dest=${join(scratch.path, "rootfs.tar")}`,
          `type=docker,dest=${join(scratch.path, "image.tar")}`,
        ],
        annotation: ["a=b"],
      },
      { output: [`type=oci,dest=${join(scratch.path, "layout")},tar=false`], imageVersion: "1.0" },
      { output: ["type=docker"], annotation: ["a=b"] },
    ] as ImageFlags[]) {
      const outputs = await openOutputs(flags, options);
      await outputs.close();
    }
  });

  it("refuse annotations that only the engine would get, once its store is known to be the classic one", () => {
    const flags = { annotation: ["a=b"], imageBaseName: "debian:12" } as ImageFlags;
    const engineOnly = parseOutputs([], undefined);
    assert.throws(() => checkEngineAnnotations(flags, engineOnly, "classic"), {
      name: "UsageError",
      message:
        "--annotation and --image-base-name are lost in the Docker Engine's classic image store, and no other output keeps annotations",
    });
    // The containerd store keeps the manifest the archive holds; a docker-archive file keeps them anyway.
    checkEngineAnnotations(flags, engineOnly, "containerd");
    checkEngineAnnotations(
      flags,
      parseOutputs(["type=docker", "type=docker,dest=d.tar"], undefined),
      "classic",
    );
    checkEngineAnnotations({} as ImageFlags, engineOnly, "classic");
  });

  it("refuse --iidfile or --metadata-file at the path of another output, which stays as it was", async () => {
    const archive = join(scratch.path, "image.tar");
    await writeFile(archive, "an earlier archive");
    for (const flags of [
      { output: [`type=oci,dest=${archive}`], iidfile: join(scratch.path, ".", "image.tar") },
      { output: [`type=oci,dest=${archive}`], metadataFile: archive },
      { iidfile: join(scratch.path, "result"), metadataFile: join(scratch.path, "result") },
    ] as ImageFlags[]) {
      await assert.rejects(openOutputs(flags, options), (error: unknown) => {
        assert.ok(error instanceof UsageError);
        assert.match(
          error.message,
          /^--(iidfile|metadata-file) .* is the same file as (-o type=oci|--iidfile)/,
        );
        return true;
      });
    }
    assert.equal(await readFile(archive, "utf8"), "an earlier archive");
  });

  it("check the auth file of a push before anything is built", async () => {
    const missing = join(scratch.path, "missing.json");
    await assert.rejects(openOutputs({ push: true, registryAuthFile: missing } as ImageFlags, options), {
      name: "UsageError",
      message: `the registry auth file ${missing} does not exist`,
    });
    const broken = join(scratch.path, "broken.json");
    await writeFile(broken, "{");
    await assert.rejects(openOutputs({ push: true, registryAuthFile: broken } as ImageFlags, options), {
      name: "UsageError",
      message: `${broken} is not valid JSON`,
    });
    const good = join(scratch.path, "config.json");
    await writeFile(good, '{"auths": {}}');
    const outputs = await openOutputs({ push: true, registryAuthFile: good } as ImageFlags, {
      ...options,
      tags: [parseTagReference("localhost:5000/base:1")],
    });
    await outputs.close();
    assert.deepEqual(
      outputs.specs.map((spec) => spec.type),
      ["registry"],
    );
  });
});

describe("describeOutput", () => {
  it("names what each output makes, for a dry run's plan", () => {
    const described = parseOutputs(
      [
        "type=docker",
        "type=docker,dest=d.tar",
        "type=oci,dest=o,tar=false,compression=zstd",
        "type=tar,dest=r.tar.gz",
        "type=tar,dest=r.tar",
        "type=context,dest=ctx",
      ],
      true,
    ).map((spec) => describeOutput(spec, "import"));
    assert.deepEqual(described, [
      "Docker Engine (--via import)",
      "docker-archive d.tar",
      "OCI layout o (zstd-3)",
      "rootfs tar r.tar.gz (gzip-6)",
      "rootfs tar r.tar",
      "build context ctx",
      "registry push (gzip-6)",
    ]);
    assert.equal(describeOutput({ type: "docker" }, undefined), "Docker Engine (--via load)");
  });
});

describe("a dest that already exists", () => {
  const scratch = temporaryDirectory("mkbase-unit-dest-");

  it("writes into /dev/null and leaves it a device (a rename would replace it with a file)", async () => {
    const { size } = await writeFileAtomically("/dev/null", "the test archive", [Buffer.from("bytes")]);
    assert.equal(size, 5);
    assert.ok((await stat("/dev/null")).isCharacterDevice());
    assert.deepEqual(
      (await readdir("/dev")).filter((name) => name.startsWith(".mkbase-tmp-")),
      [],
    );
  });

  it("writes into a FIFO for its reader", async () => {
    const fifo = join(scratch.path, "fifo");
    execFileSync("mkfifo", [fifo]);
    const reader = readFile(fifo, "utf8");
    await writeFileAtomically(fifo, "the test archive", [Buffer.from("through "), Buffer.from("the pipe")]);
    assert.equal(await reader, "through the pipe");
    assert.ok((await lstat(fifo)).isFIFO());
  });

  it("replaces the file a symlink points to, and the link stays a link", async () => {
    await writeFile(join(scratch.path, "v1.tar"), "old");
    await symlink("v1.tar", join(scratch.path, "latest.tar"));
    await writeFileAtomically(join(scratch.path, "latest.tar"), "the test archive", [Buffer.from("new")]);
    assert.equal(await readlink(join(scratch.path, "latest.tar")), "v1.tar");
    assert.equal(await readFile(join(scratch.path, "v1.tar"), "utf8"), "new");
  });

  it("names the directory where no file can be made, not its own temporary file", async () => {
    // /sys takes no new files, whoever asks.
    await assert.rejects(writeFileAtomically("/sys/image.tar", "the test archive", [Buffer.from("x")]), {
      name: "SinkError",
      message: "cannot write the test archive: no file can be made in /sys (EACCES)",
    });
  });

  it("refuses a directory", async () => {
    await assert.rejects(
      writeFileAtomically(scratch.path, "the test archive", [Buffer.from("x")]),
      SinkError,
    );
  });
});

describe("annotations", () => {
  const scratch = temporaryDirectory("mkbase-unit-annotations-");

  it("parses buildx's prefixes, platforms and keys with colons", () => {
    assert.deepEqual(parseAnnotation("a=b"), {
      targets: ["manifest"],
      platform: undefined,
      key: "a",
      value: "b",
    });
    assert.deepEqual(parseAnnotation("index,manifest:k=v=w"), {
      targets: ["index", "manifest"],
      platform: undefined,
      key: "k",
      value: "v=w",
    });
    assert.deepEqual(parseAnnotation("manifest[linux/arm64]:k=v").platform, parsePlatform("linux/arm64"));
    assert.deepEqual(parseAnnotation("com.example:x=1").key, "com.example:x");
    assert.throws(() => parseAnnotation("index[linux/arm64]:k=v"), UsageError);
    assert.throws(() => parseAnnotation("bogus[linux/arm64]:k=v"), UsageError);
    assert.throws(() => parseAnnotation("manfest:k=v"), { message: /unknown annotation type "manfest"/ });
    assert.throws(() => parseAnnotation("index,bogus:k=v"), UsageError);
    assert.throws(() => parseAnnotation("manifest:novalue"), UsageError);
  });

  it("refuses an index annotation that a push or a docker output of one image would drop", async () => {
    const options = { tags: [], env: {}, images: 1 };
    for (const output of [["--push"], ["type=docker"], ["type=docker,dest=x.tar"]]) {
      const flags = (
        output[0] === "--push"
          ? { push: true, output: [] as string[], annotation: ["index:k=v"] }
          : { output, annotation: ["index-descriptor:k=v"] }
      ) as ImageFlags;
      await assert.rejects(openOutputs(flags, options), {
        name: "UsageError",
        message:
          /^--annotation index(-descriptor)?:k=v: a (push|docker output) of one image has no image index to carry it$/,
      });
    }
    // A manifest's descriptor is kept only as its entry in an index (buildx pushes one for one platform
    // too, for its attestations): a lone manifest pushed, loaded or archived would drop it.
    for (const output of [["--push"], ["type=docker"], ["type=docker,dest=x.tar"]]) {
      const flags = (
        output[0] === "--push"
          ? { push: true, output: ["type=oci,dest=x.tar"], annotation: ["manifest-descriptor:k=v"] }
          : { output, annotation: ["manifest-descriptor:k=v"] }
      ) as ImageFlags;
      await assert.rejects(openOutputs(flags, options), (error: unknown) => {
        assert.ok(error instanceof UsageError, String(error));
        assert.match(
          error.message,
          /^--annotation manifest-descriptor:k=v: a (push|docker output) of one image has no image index to carry it$/,
        );
        assert.match(error.hint ?? "", /index\.json takes index and manifest-descriptor annotations/);
        return true;
      });
    }
    // One image's index.json entry is its manifest's descriptor: no index descriptor is there.
    await assert.rejects(
      openOutputs(
        { output: ["type=oci,dest=x.tar"], annotation: ["index-descriptor:k=v"] } as ImageFlags,
        options,
      ),
      {
        name: "UsageError",
        message:
          "--annotation index-descriptor:k=v: an OCI output of one image has no image index to carry it",
      },
    );
    // An OCI output's index.json carries it; several images make an index anywhere.
    const layout = join(scratch.path, "layout");
    const oci = await openOutputs(
      {
        output: [`type=oci,dest=${layout},tar=false`],
        annotation: ["index:k=v", "manifest-descriptor:d=1"],
      } as ImageFlags,
      options,
    );
    await oci.close();
    const pushed = await openOutputs(
      { push: true, output: [] as string[], annotation: ["index:k=v"] } as ImageFlags,
      { ...options, tags: [parseTagReference("localhost:5000/x:1")], images: 2 },
    );
    await pushed.close();
  });

  it("selects per document and platform, later values winning", () => {
    const all = ["k=1", "manifest[linux/arm64]:k=2", "index:i=3", "manifest-descriptor:d=4"].map(
      parseAnnotation,
    );
    assert.deepEqual(annotationsFor(all, "manifest", parsePlatform("linux/amd64")), { k: "1" });
    assert.deepEqual(annotationsFor(all, "manifest", parsePlatform("linux/arm64")), { k: "2" });
    assert.deepEqual(annotationsFor(all, "index"), { i: "3" });
    assert.deepEqual(annotationsFor(all, "manifest-descriptor"), { d: "4" });
  });

  it("turns the standard flags into org.opencontainers.image.* annotations that --annotation overrides", () => {
    const flags = {
      imageSource: "https://example.org/src",
      imageVersion: "1.0",
      annotation: ["org.opencontainers.image.version=2.0"],
    } as unknown as ImageFlags;
    const annotations = annotationsFromFlags(flags, 2);
    assert.deepEqual(annotationsFor(annotations, "manifest"), {
      "org.opencontainers.image.source": "https://example.org/src",
      "org.opencontainers.image.version": "2.0",
    });
    assert.deepEqual(annotationsFor(annotations, "index"), {
      "org.opencontainers.image.source": "https://example.org/src",
      "org.opencontainers.image.version": "1.0",
    });
    // One image has no index: a layout's index.json, shared with other images, gets none of them.
    const single = annotationsFromFlags(flags, 1);
    assert.deepEqual(annotationsFor(single, "manifest"), annotationsFor(annotations, "manifest"));
    assert.deepEqual(annotationsFor(single, "index"), {});
  });
});

describe("index.json", () => {
  const top = {
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: "sha256:" + "a".repeat(64),
    size: 1,
  };
  const files: LayoutFiles = {
    top,
    blobs: [],
    manifests: [{ ...top, annotations: { "org.opencontainers.image.ref.name": "1" } }],
    indexAnnotations: {},
  };

  it("keeps earlier entries of an existing layout unless the new image takes their tag", () => {
    const previous = [
      {
        ...top,
        digest: "sha256:" + "b".repeat(64),
        annotations: { "org.opencontainers.image.ref.name": "1" },
      },
      {
        ...top,
        digest: "sha256:" + "c".repeat(64),
        annotations: { "org.opencontainers.image.ref.name": "2" },
      },
    ];
    const index = JSON.parse(indexJson(files, previous).toString()) as { manifests: { digest: string }[] };
    assert.deepEqual(
      index.manifests.map((m) => m.digest[7]),
      ["c", "a"],
    );
  });
});

describe("results", () => {
  it("prints pushed references for a registry and the ID otherwise", () => {
    assert.deepEqual(
      resultLines([{ destination: "registry", id: "sha256:x", tags: ["r/x@sha256:x", "r/x@sha256:x"] }]),
      ["r/x@sha256:x"],
    );
    assert.deepEqual(resultLines([{ destination: "oci archive a", id: "sha256:y", tags: ["r/x:1"] }]), [
      "sha256:y",
    ]);
  });
});

/** The fixed image of the golden tests. */
const goldenSource: EntrySource = {
  description: "golden fixture",
  entries: () => [
    directoryEntry("etc", 0o755, 1_600_000_000),
    bytesEntry("etc/os-release", Buffer.from("ID=golden\n"), 0o644, 1_600_000_000),
    bytesEntry("hello.txt", Buffer.from("hello from mkbase\n".repeat(1000)), 0o644, 1_600_000_000),
  ],
};

/**
 * Builds the golden image into the one output `output` (a `-o` value) and returns its final ID.
 * `beforeComplete` runs after the build, before the output is completed.
 */
async function buildGolden(output: string, beforeComplete?: () => Promise<void>): Promise<string> {
  const outputs = await OutputSet.open(parseOutputs([output], false), {
    tags: [parseTagReference("golden/base:1")],
    annotations: [parseAnnotation("org.opencontainers.image.title=golden")],
    env: {},
    images: 1,
  });
  try {
    const signal = new AbortController().signal;
    const result = await build({
      source: goldenSource,
      epoch: { kind: "fixed", seconds: 1_700_000_000 },
      platform: parsePlatform("linux/amd64"),
      config: { Cmd: ["/bin/sh"], Env: ["PATH=/usr/bin:/bin"] },
      createdBy: "mkbase dir",
      annotations: annotationsFor(outputs.annotations, "manifest"),
      sinks: outputs.sinksForBuild(undefined, () => undefined),
      signal,
      onProgress: () => undefined,
    });
    outputs.recordBuild(result);
    await beforeComplete?.();
    const [final] = await outputs.complete(signal, () => undefined);
    assert.ok(final !== undefined);
    return final.id;
  } finally {
    await outputs.close();
  }
}

describe("golden OCI layout", () => {
  const scratch = temporaryDirectory("mkbase-unit-oci-");

  async function writeLayout(name: string, output: string): Promise<{ digest: string; files: string[] }> {
    const dest = join(scratch.path, name);
    const digest = await buildGolden(`type=oci,dest=${dest},tar=false,${output}`);
    return { digest, files: (await readdir(join(dest, "blobs", "sha256"))).sort() };
  }

  it("pins the manifest digest of an uncompressed layout", async () => {
    const { digest, files } = await writeLayout("none", "compression=none");
    assert.equal(digest, "sha256:20fd514421b05aefe945651a2a0947ed8113edb0ad28dee4ba23b6b921d87618");
    assert.equal(files.length, 3);
    const index = JSON.parse(await readFile(join(scratch.path, "none", "index.json"), "utf8")) as {
      manifests: { digest: string; annotations: Record<string, string> }[];
    };
    assert.equal(index.manifests[0]?.digest, digest);
    assert.equal(index.manifests[0]?.annotations["org.opencontainers.image.ref.name"], "1");
  });

  it("pins the manifest digest of a gzip layout (node's zlib at level 6)", async () => {
    const { digest } = await writeLayout("gzip", "compression=gzip");
    assert.equal(digest, "sha256:660608942969f797cb73ac47cc3ca258d528250152952eb27f674f40ab7b6039");
  });
});

describe("an OCI output as the store of its own layers", () => {
  const scratch = temporaryDirectory("mkbase-unit-archive-");

  /** `tar -tf` of an archive, and the sha256 of every blob checked against its name. */
  function listChecked(archive: string): string[] {
    const names = execFileSync("tar", ["-tf", archive], { encoding: "utf8" }).trim().split("\n");
    for (const name of names.filter((n) => n.startsWith("blobs/sha256/") && n.length > 13)) {
      const data = execFileSync("tar", ["-xOf", archive, name], { maxBuffer: 64 * 1024 * 1024 });
      assert.equal(createHash("sha256").update(data).digest("hex"), name.slice(13), name);
    }
    return names;
  }

  /** Builds the golden image into `output` with TMPDIR set to an empty directory, which must stay empty. */
  async function buildUnspooled(output: string): Promise<string> {
    const spoolParent = await mkdtemp(join(scratch.path, "tmp-"));
    const savedTmpdir = process.env.TMPDIR;
    process.env.TMPDIR = spoolParent;
    try {
      return await buildGolden(output, async () => {
        assert.deepEqual(await readdir(spoolParent), [], "nothing spooled");
      });
    } finally {
      if (savedTmpdir === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = savedTmpdir;
      await rm(spoolParent, { recursive: true });
    }
  }

  it("compresses the layer straight into the archive: no spool, and the same image as a layout", async () => {
    const dest = join(scratch.path, "image.oci.tar");
    // The golden layout's manifest: the archive holds the very same image.
    assert.equal(
      await buildUnspooled(`type=oci,dest=${dest},compression=none`),
      "sha256:20fd514421b05aefe945651a2a0947ed8113edb0ad28dee4ba23b6b921d87618",
    );
    const names = listChecked(dest);
    assert.deepEqual(names.slice(0, 2), ["blobs/", "blobs/sha256/"]);
    assert.deepEqual(names.slice(-2), ["index.json", "oci-layout"]);
    assert.equal(names.length, 7, names.join("\n"));
    assert.deepEqual(
      (await readdir(scratch.path)).filter((name) => name.startsWith(TEMP_PREFIX)),
      [],
      "no temporary file left",
    );
  });

  it("renames the layer into a layout directory's blobs, with no spool and no temporary file left", async () => {
    const dest = join(scratch.path, "layout");
    assert.equal(
      await buildUnspooled(`type=oci,dest=${dest},tar=false,compression=none`),
      "sha256:20fd514421b05aefe945651a2a0947ed8113edb0ad28dee4ba23b6b921d87618",
    );
    assert.deepEqual((await readdir(dest)).sort(), ["blobs", "index.json", "oci-layout"]);
    for (const name of await readdir(join(dest, "blobs", "sha256"))) {
      const data = await readFile(join(dest, "blobs", "sha256", name));
      assert.equal(createHash("sha256").update(data).digest("hex"), name);
    }
  });

  it("holds a layer that comes twice (one program for two platforms) once", async () => {
    const dest = join(scratch.path, "twice.tar");
    const archive = new ArchiveFile(dest);
    const data = Buffer.from("the same layer bytes");
    const digest = `sha256:${createHash("sha256").update(data).digest("hex")}`;
    for (let i = 0; i < 2; i++) {
      const target = await archive.open();
      await target.write(data);
      const open = await target.complete(digest, data.length);
      const read: Buffer[] = [];
      for await (const chunk of open()) read.push(chunk as Buffer);
      assert.deepEqual(Buffer.concat(read), data, "the blob reads back from the archive");
    }
    assert.equal(archive.layers.size, 1);
    await archive.finish([], 1_700_000_000, new AbortController().signal);
    assert.deepEqual(listChecked(dest), ["blobs/", "blobs/sha256/", `blobs/sha256/${digest.slice(7)}`]);
    // Two directory headers, the blob's header and one block of data, the two end blocks: nothing more.
    assert.equal((await stat(dest)).size, 6 * 512);
  });
});

describe("a build that fails", () => {
  const scratch = temporaryDirectory("mkbase-unit-failed-");

  /** A source whose second entry cannot be read. */
  const failing: EntrySource = {
    description: "a failing source",
    *entries() {
      yield directoryEntry("etc", 0o755, 1_600_000_000);
      throw new SinkError("the source failed");
    },
  };

  async function failInto(output: string): Promise<void> {
    const outputs = await OutputSet.open(parseOutputs([output], false), {
      tags: [],
      annotations: [],
      env: {},
      images: 1,
    });
    try {
      await assert.rejects(
        build({
          source: failing,
          epoch: { kind: "fixed", seconds: 1_700_000_000 },
          platform: parsePlatform("linux/amd64"),
          config: {},
          createdBy: "mkbase scratch.path",
          sinks: outputs.sinksForBuild(undefined, () => undefined),
          signal: new AbortController().signal,
          onProgress: () => undefined,
        }),
        /the source failed/,
      );
    } finally {
      await outputs.close();
    }
  }

  it("leaves no layout, archive or context directory where there was none", async () => {
    await failInto(`type=oci,dest=${join(scratch.path, "layout")},tar=false`);
    await failInto(`type=oci,dest=${join(scratch.path, "image.tar")}`);
    await failInto(`type=context,dest=${join(scratch.path, "context")}`);
    assert.deepEqual(await readdir(scratch.path), []);
  });

  it("leaves no temporary rootfs tar beside its dest once the outputs are closed", async () => {
    // The compressors take the longest to stop, which let the command end before the file was removed.
    for (const name of ["rootfs.tar", "rootfs.tar.gz", "rootfs.tar.zst"]) {
      await failInto(`type=tar,dest=${join(scratch.path, name)}`);
      assert.deepEqual(await readdir(scratch.path), [], name);
    }
  });

  /** Builds an image of one directory into `outputs` and records it, as a command does before completing them. */
  async function buildOneDirectory(outputs: OutputSet): Promise<BuildResult> {
    const result = await build({
      source: {
        description: "one directory",
        *entries() {
          yield directoryEntry("etc", 0o755, 1_600_000_000);
        },
      },
      epoch: { kind: "fixed", seconds: 1_700_000_000 },
      platform: parsePlatform("linux/amd64"),
      config: {},
      createdBy: "mkbase dir .",
      sinks: outputs.sinksForBuild(undefined, () => undefined),
      signal: new AbortController().signal,
      onProgress: () => undefined,
    });
    outputs.recordBuild(result);
    return result;
  }

  it("an output that fails after others were written names them in its error", async () => {
    const rootfs = join(scratch.path, "rootfs.tar");
    const gone = join(scratch.path, "gone");
    await mkdir(gone);
    const outputs = await OutputSet.open(
      parseOutputs([`type=tar,dest=${rootfs}`, `type=oci,dest=${join(gone, "image.tar")}`], false),
      { tags: [], annotations: [], env: {}, images: 1 },
    );
    try {
      await buildOneDirectory(outputs);
      // The archive's directory goes away before the archive is written: its output fails.
      await rm(gone, { recursive: true });
      await assert.rejects(
        outputs.complete(new AbortController().signal, () => undefined),
        (error: Error) => {
          assert.ok(error instanceof SinkError);
          assert.match(
            error.message,
            new RegExp(`after the image was made \\(sha256:[0-9a-f]{64} in rootfs tar ${rootfs}\\)$`),
          );
          return true;
        },
      );
    } finally {
      await outputs.close();
      await rm(rootfs, { force: true });
    }
  });

  it("an interrupt after an output was written stays an interrupt, and names that output", async () => {
    const rootfs = join(scratch.path, "kept-rootfs.tar");
    const archive = join(scratch.path, "interrupted.tar");
    const outputs = await OutputSet.open(
      parseOutputs([`type=tar,dest=${rootfs}`, `type=oci,dest=${archive}`], false),
      { tags: [], annotations: [], env: {}, images: 1 },
    );
    try {
      const result = await buildOneDirectory(outputs);
      // Ctrl-C while the archive is written, after the rootfs tar.
      const controller = new AbortController();
      controller.abort(new InterruptedError("received SIGINT"));
      await assert.rejects(
        outputs.complete(controller.signal, () => undefined),
        (error: Error) => {
          assert.ok(error instanceof InterruptedError);
          assert.deepEqual(error.kept, [`${result.diffId} in rootfs tar ${rootfs}`]);
          return true;
        },
      );
    } finally {
      await outputs.close();
      await rm(rootfs, { force: true });
    }
    assert.deepEqual(await readdir(scratch.path), []);
  });

  it("keeps an existing empty directory, and only what was there", async () => {
    // A directory holding other files is refused before the build (see oci-layout.test.ts).
    const existing = join(scratch.path, "mine");
    await mkdir(existing);
    await failInto(`type=oci,dest=${existing},tar=false`);
    assert.deepEqual(await readdir(existing), []);
  });
});

describe("an annotation for one platform", () => {
  const amd64 = parsePlatform("linux/amd64");
  const arm64 = parsePlatform("linux/arm64");

  it("is refused when no image for that platform is built, naming the ones that are", () => {
    const text = "manifest[linux/riscv64]:k=v";
    assert.throws(
      () => checkAnnotationPlatforms({ annotation: [text] } as ImageFlags, [amd64, arm64]),
      (error: unknown) => {
        assert.ok(error instanceof UsageError);
        assert.equal(
          error.message,
          `--annotation ${text}: no image for that platform is built, only for linux/amd64 and ${formatPlatform(arm64)}`,
        );
        return true;
      },
    );
  });

  it("is taken when one image has that platform, and one without a platform always", () => {
    const flags = { annotation: ["manifest[linux/arm64]:k=v", "k2=v2"] } as ImageFlags;
    checkAnnotationPlatforms(flags, [amd64, arm64]);
    assert.throws(() => checkAnnotationPlatforms(flags, [amd64]), UsageError);
    checkAnnotationPlatforms({ annotation: ["k2=v2"] } as ImageFlags, [amd64]);
  });
});
