/**
 * Outputs without a daemon, checked with tools nobody here wrote: OCI archives and layouts read by skopeo
 * and umoci and run after `skopeo copy` into the engine, docker-archive files loaded with `docker load`,
 * byte-identical archives from two runs (gzip and zstd), a disk that fills up while a layout is written,
 * a multi-platform index, and a push to a real registry.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { gunzipSync } from "node:zlib";
import { TEMP_PREFIX } from "../../src/sinks/atomic-file.js";
import {
  describeResult,
  escapeRegExp,
  mkbaseLauncher,
  repositoryRoot,
  runChecked,
  runCommand,
  runMkbase,
  type RunResult,
} from "./support/cli.js";
import { dockerRun, imageInspect, removeImages, uniqueTag } from "./support/docker.js";
import { makeEveryKindTree, makeMinimalTree, type FixtureTree } from "./support/fixture-tree.js";
import { startRegistry, type RegistryServer } from "./support/registry-server.js";

const epochArgs = ["--source-date-epoch", "1700000000"];
const digestPattern = /^sha256:[0-9a-f]{64}$/;

let scratch: string;
let minimal: FixtureTree;
const images = new Set<string>();

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), "mkbase-e2e-out-"));
  minimal = await makeMinimalTree();
});
after(async () => {
  await removeImages(images);
  await minimal?.cleanup();
  await rm(scratch, { recursive: true, force: true });
});

async function mkbaseOk(args: readonly string[]): Promise<RunResult> {
  const result = await runMkbase(args, { env: { ...process.env, HOME: join(scratch, "no-home") } });
  assert.equal(result.code, 0, describeResult(result));
  return result;
}

async function sha256File(path: string): Promise<string> {
  return `sha256:${createHash("sha256")
    .update(await readFile(path))
    .digest("hex")}`;
}

/** What `docker load` prints for `tag`. */
function loadedPattern(tag: string): RegExp {
  return new RegExp(`Loaded image: ${escapeRegExp(tag)}`);
}

/** Every file below `dir`, relative paths. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name).slice(dir.length + 1));
}

describe("OCI and docker archives from one walk", () => {
  let tag: string;
  let digest: string;
  let out: string;

  before(async () => {
    out = join(scratch, "one-walk");
    await mkdir(out);
    tag = uniqueTag("oci-out");
    const result = await mkbaseOk([
      "dir",
      minimal.root,
      "-t",
      tag,
      ...epochArgs,
      "--cmd",
      '["/bin/busybox","cat","/hello.txt"]',
      "-o",
      `type=oci,dest=${join(out, "image.oci.tar")}`,
      "-o",
      `type=oci,dest=${join(out, "layout")},tar=false`,
      "-o",
      `type=docker,dest=${join(out, "image.docker.tar")}`,
      "--metadata-file",
      join(out, "metadata.json"),
      "--image-version",
      "1.2.3",
    ]);
    digest = result.stdout.trim();
    assert.match(digest, digestPattern, describeResult(result));
  });

  test("skopeo reads the archive and the layout, and both hold the printed manifest", async () => {
    const archive = JSON.parse(
      await runChecked("skopeo", ["inspect", `oci-archive:${join(out, "image.oci.tar")}`]),
    );
    const layout = JSON.parse(
      await runChecked("skopeo", ["inspect", `oci:${join(out, "layout")}:${tag.split(":")[1]}`]),
    );
    assert.equal(archive.Digest, digest);
    assert.equal(layout.Digest, digest);
    const raw = JSON.parse(await runChecked("skopeo", ["inspect", "--raw", `oci:${join(out, "layout")}`]));
    assert.equal(raw.annotations["org.opencontainers.image.version"], "1.2.3");
    // index.json describes the whole layout, which may hold other images: the flags annotate this one.
    const layoutIndex = JSON.parse(await readFile(join(out, "layout", "index.json"), "utf8"));
    assert.equal(layoutIndex.annotations, undefined);
    assert.equal(raw.annotations["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
    assert.equal(raw.layers[0].mediaType, "application/vnd.oci.image.layer.v1.tar+gzip");
    const metadata = JSON.parse(await readFile(join(out, "metadata.json"), "utf8"));
    assert.equal(metadata["containerimage.digest"], digest);
    // As buildx writes it: the manifest's descriptor, whose size is that of the manifest skopeo reads.
    const manifestBytes = await runChecked("skopeo", ["inspect", "--raw", `oci:${join(out, "layout")}`]);
    assert.deepEqual(metadata["containerimage.descriptor"], {
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      digest,
      size: Buffer.byteLength(manifestBytes),
      platform: { architecture: "amd64", os: "linux" },
    });
    assert.equal(metadata["image.name"], tag);
    assert.equal(metadata["mkbase.outputs"].length, 3);
  });

  test("umoci lists the tag and unpacks the rootfs", async () => {
    const refName = tag.split(":")[1] as string;
    const listed = await runChecked("umoci", ["ls", "--layout", join(out, "layout")]);
    assert.deepEqual(listed.trim().split("\n"), [refName]);
    const bundle = join(out, "bundle");
    await runChecked("umoci", [
      "unpack",
      "--rootless",
      "--image",
      `${join(out, "layout")}:${refName}`,
      bundle,
    ]);
    assert.equal(await readFile(join(bundle, "rootfs", "hello.txt"), "utf8"), "hello from mkbase\n");
  });

  test("skopeo copy into the engine gives an image that runs", async () => {
    const copied = uniqueTag("oci-copied");
    images.add(copied);
    await runChecked("skopeo", [
      "copy",
      `oci-archive:${join(out, "image.oci.tar")}`,
      `docker-daemon:${copied}`,
    ]);
    const run = await dockerRun(copied, []);
    assert.equal(run.code, 0, describeResult(run));
    assert.equal(run.stdout, "hello from mkbase\n");
  });

  test("a docker archive names a reference given in several spellings once", async () => {
    const tag = uniqueTag("docker-archive-once");
    images.add(tag);
    const archive = join(out, "once.docker.tar");
    await mkbaseOk([
      ...["dir", minimal.root, "-t", tag, "-t", tag, "-t", `docker.io/${tag}`, ...epochArgs, "-q"],
      ...["-o", `type=docker,dest=${archive}`],
    ]);
    const [manifest] = JSON.parse(await runChecked("tar", ["-xOf", archive, "manifest.json"]));
    assert.deepEqual(manifest.RepoTags, [tag]);
    const index = JSON.parse(await runChecked("tar", ["-xOf", archive, "index.json"]));
    assert.deepEqual(
      index.manifests.map(
        (d: { annotations: Record<string, string> }) => d.annotations["io.containerd.image.name"],
      ),
      [`docker.io/${tag}`],
    );
    const loaded = await runChecked("docker", ["load", "-i", archive]);
    assert.equal(loaded.match(/Loaded image: /g)?.length, 1, loaded);
    assert.match(loaded, loadedPattern(tag));
  });

  test("docker load -i reads the docker archive, under the tag, and it runs", async () => {
    images.add(tag);
    const loaded = await runChecked("docker", ["load", "-i", join(out, "image.docker.tar")]);
    assert.match(loaded, loadedPattern(tag));
    const run = await dockerRun(tag, []);
    assert.equal(run.stdout, "hello from mkbase\n", describeResult(run));
  });
});

describe("dest=- (stdout), in a pipeline", () => {
  /** `mkbase ARGS | CONSUMER` in bash with pipefail, as a CI script runs it. */
  function pipeline(args: readonly string[], consumer: string, env = process.env): Promise<RunResult> {
    return runCommand("bash", ["-c", `set -o pipefail; "$0" "$@" | ${consumer}`, mkbaseLauncher, ...args], {
      env,
      timeoutMs: 120_000,
    });
  }

  test("type=docker,dest=- | docker load gives the image, which runs; --iidfile names it", async () => {
    const tag = uniqueTag("stdout-load");
    images.add(tag);
    const iidfile = join(scratch, "stdout.iid");
    const result = await pipeline(
      [
        "dir",
        minimal.root,
        ...epochArgs,
        "-t",
        tag,
        "--cmd",
        '["/bin/busybox","cat","/hello.txt"]',
        "-o",
        "type=docker,dest=-",
        "--iidfile",
        iidfile,
      ],
      "docker load",
    );
    assert.equal(result.code, 0, describeResult(result));
    assert.match(result.stdout, loadedPattern(tag));
    const run = await dockerRun(tag, []);
    assert.equal(run.stdout, "hello from mkbase\n", describeResult(run));
    assert.equal((await imageInspect(tag))?.Id, await readFile(iidfile, "utf8"));
  });

  test("type=tar,dest=- writes the layer and nothing else: its sha256 is the DiffID", async () => {
    const metadata = join(scratch, "stdout-tar.json");
    const result = await pipeline(
      ["dir", minimal.root, ...epochArgs, "-o", "type=tar,dest=-", "--metadata-file", metadata],
      "sha256sum",
    );
    assert.equal(result.code, 0, describeResult(result));
    const written = JSON.parse(await readFile(metadata, "utf8")) as { "mkbase.outputs": { id: string }[] };
    assert.equal(`sha256:${result.stdout.split(" ")[0] ?? ""}`, written["mkbase.outputs"][0]?.id);
  });

  test("type=oci,dest=- gives the same bytes as the archive written to a file", async () => {
    // A file takes its layer straight in; stdout gets the archive from the spool at the end. The demo
    // tree (fixed bytes, fixed epoch) has a layer whose digest sorts after the config's.
    const tree = join(repositoryRoot, "fixtures", "demo-rootfs");
    const file = join(scratch, "same-bytes.oci.tar");
    await mkbaseOk(["dir", tree, ...epochArgs, "-o", `type=oci,dest=${file}`]);
    const result = await pipeline(["dir", tree, ...epochArgs, "-o", "type=oci,dest=-"], "sha256sum");
    assert.equal(result.code, 0, describeResult(result));
    assert.equal(`sha256:${result.stdout.split(" ")[0] ?? ""}`, await sha256File(file));
  });

  test("a build time after 2242 (past ustar's octal field) gives the same archive both ways, which skopeo reads", async () => {
    const tree = join(repositoryRoot, "fixtures", "demo-rootfs");
    const late = ["--source-date-epoch", "10413792000"];
    const file = join(scratch, "late.oci.tar");
    await mkbaseOk(["dir", tree, ...late, "-o", `type=oci,dest=${file}`]);
    const result = await pipeline(["dir", tree, ...late, "-o", "type=oci,dest=-"], "sha256sum");
    assert.equal(result.code, 0, describeResult(result));
    assert.equal(`sha256:${result.stdout.split(" ")[0] ?? ""}`, await sha256File(file));
    const inspected = JSON.parse(await runChecked("skopeo", ["inspect", `oci-archive:${file}`]));
    assert.equal(inspected.Created, "2300-01-01T00:00:00Z");
    const listing = await runChecked("tar", ["--full-time", "-tvf", file], {
      env: { ...process.env, TZ: "UTC" },
    });
    assert.match(listing, /2300-01-01 00:00:00 blobs\/\n/);
  });

  test("a reader that stops early fails the build (exit 5, saying why) and leaves no temporary file", async () => {
    const tmp = await mkdtemp(join(scratch, "tmp-"));
    const result = await pipeline(["dir", minimal.root, "-o", "type=oci,dest=-"], "head -c 100 >/dev/null", {
      ...process.env,
      TMPDIR: tmp,
    });
    assert.equal(result.code, 5, describeResult(result));
    assert.match(result.stderr, /EPIPE.*reading stdout exited/s);
    assert.deepEqual(await readdir(tmp), []);
  });

  test("refused before any work: a terminal, --json, and outputs that are directories", async () => {
    // util-linux's script(1) makes stdout a terminal.
    const onTerminal = await runCommand(
      "script",
      ["-qec", `${mkbaseLauncher} dir ${minimal.root} -o type=tar,dest=-`, "/dev/null"],
      // Without colour, the prefix is plain text on the terminal too.
      { timeoutMs: 60_000, env: { ...process.env, NO_COLOR: "1" } },
    );
    assert.equal(onTerminal.code, 2, describeResult(onTerminal));
    assert.match(onTerminal.stdout, /mkbase: error: refusing to write an archive to a terminal/);
    for (const args of [
      ["-o", "type=oci,dest=-", "--json"],
      ["-o", "type=context,dest=-"],
      ["-o", "type=oci,dest=-,tar=false"],
    ]) {
      const refused = await runMkbase(["dir", minimal.root, ...args]);
      assert.equal(refused.code, 2, describeResult(refused));
      assert.match(refused.stderr, /dest=-/);
    }
  });
});

describe("a dest in a directory that does not exist", () => {
  test("fails (exit 5) naming the directory, not a temporary file, and creates nothing", async () => {
    const missing = join(scratch, "no-such-dir");
    for (const output of [
      `type=oci,dest=${missing}/image.tar`,
      `type=docker,dest=${missing}/image.tar`,
      `type=tar,dest=${missing}/rootfs.tar`,
    ]) {
      const result = await runMkbase(["dir", minimal.root, ...epochArgs, "-o", output]);
      assert.equal(result.code, 5, describeResult(result));
      assert.match(
        result.stderr,
        new RegExp(`there is no directory ${escapeRegExp(missing)}\\b.*Create it first`, "s"),
      );
      assert.doesNotMatch(result.stderr, new RegExp(escapeRegExp(TEMP_PREFIX)));
      await assert.rejects(readdir(missing), { code: "ENOENT" });
    }
  });
});

describe("reproducible archives", () => {
  let tree: FixtureTree;
  before(async () => {
    tree = await makeEveryKindTree();
  });
  after(async () => {
    await tree?.cleanup();
  });

  for (const compression of ["gzip", "zstd"]) {
    test(`two builds give byte-identical OCI archives (${compression})`, async () => {
      const paths = [1, 2].map((n) => join(scratch, `repro-${compression}-${n}.tar`));
      const digests: string[] = [];
      for (const path of paths) {
        const result = await mkbaseOk([
          "dir",
          tree.root,
          "-t",
          "repro/base:1",
          ...epochArgs,
          "-o",
          `type=oci,dest=${path},compression=${compression}`,
        ]);
        digests.push(result.stdout.trim());
      }
      assert.equal(digests[0], digests[1]);
      assert.equal(await sha256File(paths[0] as string), await sha256File(paths[1] as string));
      const raw = JSON.parse(await runChecked("skopeo", ["inspect", "--raw", `oci-archive:${paths[0]}`]));
      assert.equal(raw.layers[0].mediaType, `application/vnd.oci.image.layer.v1.tar+${compression}`);
    });
  }
});

describe("rootfs tar and build context", () => {
  test("the rootfs tar and the context's rootfs.tar are the layer whose DiffID the build reports", async () => {
    const rootfs = join(scratch, "rootfs.tar.gz");
    const context = join(scratch, "context");
    const result = await mkbaseOk([
      "dir",
      minimal.root,
      ...epochArgs,
      "--json",
      "--cmd",
      "/bin/sh",
      "-o",
      `type=tar,dest=${rootfs}`,
      "-o",
      `type=context,dest=${context}`,
    ]);
    const { diffId } = JSON.parse(result.stdout) as { diffId: string };
    const tar = gunzipSync(await readFile(rootfs));
    assert.equal(`sha256:${createHash("sha256").update(tar).digest("hex")}`, diffId);
    assert.equal(await sha256File(join(context, "rootfs.tar")), diffId);
    const dockerfile = await readFile(join(context, "Dockerfile"), "utf8");
    assert.match(dockerfile, /^FROM scratch\nADD rootfs.tar \/\n/);
    assert.match(dockerfile, /CMD \["\/bin\/sh","-c","\/bin\/sh"\]/);
  });

  test("a context dest that is a file or a directory with files is refused before the build (exit 2)", async () => {
    const context = join(scratch, "own-context");
    await mkdir(context);
    await writeFile(join(context, "Dockerfile"), "FROM mine\n");
    await writeFile(join(context, ".dockerignore"), "*.tar\n");
    const file = join(scratch, "a-file");
    await writeFile(file, "data\n");
    for (const [dest, message] of [
      [context, /build context .*own-context: it is not empty \(\.dockerignore, Dockerfile\)/],
      [file, /build context .*a-file: it is a file, not a directory/],
    ] as const) {
      const refused = await runMkbase(["dir", minimal.root, "-o", `type=context,dest=${dest}`]);
      assert.equal(refused.code, 2, describeResult(refused));
      assert.match(refused.stderr, message);
    }
    assert.deepEqual((await readdir(context)).sort(), [".dockerignore", "Dockerfile"]);
    assert.equal(await readFile(join(context, "Dockerfile"), "utf8"), "FROM mine\n");
    assert.equal(await readFile(file, "utf8"), "data\n");
  });
});

describe("disk full while writing an OCI layout", () => {
  const mount = join(tmpdir(), `mkbase-e2e-full-${process.pid}`);
  let tree: FixtureTree;
  let mounted = false;

  before(async () => {
    tree = await makeMinimalTree();
    // 8 MiB that no compressor can shrink: more than the 4 MiB filesystem holds.
    const noise = createHash("sha256");
    const chunks: Buffer[] = [];
    for (let i = 0; i < 8 * 1024 * 32; i++) chunks.push(noise.update(String(i)).copy().digest());
    await writeFile(join(tree.root, "noise.bin"), Buffer.concat(chunks));
    await mkdir(mount, { recursive: true });
    await runChecked("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", mount]);
    mounted = true;
  });
  after(async () => {
    if (mounted) await runChecked("umount", [mount]);
    await rm(mount, { recursive: true, force: true });
    await tree?.cleanup();
  });

  // zstd writes the file itself (another process, its own error), the others through mkbase.
  for (const [tar, compression] of [
    [false, "none"],
    [true, "none"],
    [false, "zstd"],
    [true, "zstd"],
  ] as const) {
    const kind = `${tar ? "archive" : "directory"}, ${compression}`;
    test(`fails clearly and leaves no partial blob or temp file (${kind})`, async () => {
      const dest = join(mount, tar ? "image.tar" : "layout");
      const result = await runMkbase([
        "dir",
        tree.root,
        ...epochArgs,
        "-o",
        `type=oci,dest=${dest},tar=${String(tar)},compression=${compression}`,
      ]);
      assert.equal(result.code, 5, describeResult(result));
      assert.match(result.stderr, /disk is full/i);
      const left = await filesUnder(mount);
      assert.deepEqual(
        left.filter((path) => path.includes(TEMP_PREFIX)),
        [],
        "temporary files were left",
      );
      if (tar) {
        assert.deepEqual(left, [], "a partial archive was left");
      } else {
        for (const path of left.filter((p) => p.includes("blobs/sha256/"))) {
          assert.equal(
            await sha256File(join(mount, path)),
            `sha256:${path.split("/").pop()}`,
            `${path} is partial`,
          );
        }
      }
    });
  }
});

describe("multi-platform scratch into an OCI archive", () => {
  let programs: string;
  /** `--platform linux/ARCH=PROGRAM` for the hello program built for `arch`. */
  const platform = (arch: string): string => `linux/${arch}=${join(programs, `hello-${arch}`)}`;
  before(async () => {
    programs = join(scratch, "programs");
    await mkdir(programs, { recursive: true });
    const hello = join(repositoryRoot, "fixtures", "c", "hello.c");
    await runChecked("gcc", ["-O2", "-static", "-o", join(programs, "hello-amd64"), hello]);
    await runChecked("aarch64-linux-gnu-gcc", ["-O2", "-static", "-o", join(programs, "hello-arm64"), hello]);
  });

  test("writes one index with both platforms; --iidfile gets its digest", async () => {
    const archive = join(scratch, "multi.oci.tar");
    const iidfile = join(scratch, "multi.iid");
    const args = [
      "scratch",
      ...["--platform", platform("amd64"), "--platform", platform("arm64")],
      ...["-t", "multi/hello:1", ...epochArgs, "-o", `type=oci,dest=${archive}`, "--iidfile", iidfile],
    ];
    const result = await mkbaseOk(args);
    const index = JSON.parse(await runChecked("skopeo", ["inspect", "--raw", `oci-archive:${archive}`]));
    assert.equal(index.mediaType, "application/vnd.oci.image.index.v1+json");
    assert.deepEqual(
      index.manifests.map((m: { platform: { architecture: string } }) => m.platform.architecture),
      ["amd64", "arm64"],
    );
    const lines = result.stdout.trim().split("\n");
    const indexDigest = `sha256:${createHash("sha256")
      .update(await runChecked("skopeo", ["inspect", "--raw", `oci-archive:${archive}`]))
      .digest("hex")}`;
    // The command's one result is the index: its manifests are no results of their own.
    assert.deepEqual(lines, [indexDigest]);
    // As buildx writes it for several platforms: the index's digest.
    assert.equal(await readFile(iidfile, "utf8"), indexDigest);
    // Into the engine alone there is no index, and no one ID to write.
    const engineOnly = await runMkbase([
      "scratch",
      ...["--platform", platform("amd64"), "--platform", platform("arm64")],
      ...["-t", "multi/hello:engine", "--iidfile", join(scratch, "engine.iid")],
    ]);
    assert.equal(engineOnly.code, 2, describeResult(engineOnly));
    assert.match(
      engineOnly.stderr,
      /^mkbase: error: --iidfile holds one image ID, and --platform os\/arch=FILE gives the engine one image per platform\./,
    );

    // --json: one object for the command (JSON.parse takes no second line), each build and the index.
    const json = await mkbaseOk([...args, "--json"]);
    const report = JSON.parse(json.stdout) as {
      platforms: { platform: string; diffId: string }[];
      outputs: { id: string; destination: string }[];
      warnings: string[];
    };
    assert.deepEqual(
      report.platforms.map((p) => p.platform),
      ["linux/amd64", "linux/arm64/v8"],
    );
    assert.deepEqual(
      report.outputs.map((o) => o.id),
      [indexDigest],
    );
    assert.deepEqual(report.warnings, []);

    // hello-amd64 and hello-arm64 are one program: every platform's image runs /hello.
    for (const arch of ["amd64", "arm64"]) {
      const config = JSON.parse(
        await runChecked("skopeo", [
          "inspect",
          "--config",
          "--override-arch",
          arch,
          `oci-archive:${archive}`,
        ]),
      ) as { config: { Entrypoint: string[] } };
      assert.deepEqual(config.config.Entrypoint, ["/hello"], arch);
    }
  });

  test("--json carries the warning that no program is for this machine's platform, for the engine only", async () => {
    const archive = join(scratch, "arm64-only.oci.tar");
    // Into an OCI archive alone: the plain tag names the index, whatever its platforms. No warning.
    const ociOnly = await mkbaseOk([
      "scratch",
      ...["--platform", platform("arm64"), "-t", "multi/arm:1", ...epochArgs],
      ...["-o", `type=oci,dest=${archive}`, "--json", "-q"],
    ]);
    assert.deepEqual((JSON.parse(ociOnly.stdout) as { warnings: string[] }).warnings, []);
    assert.equal(ociOnly.stderr, "");

    const tag = uniqueTag("arm-only");
    images.add(tag);
    images.add(`${tag}-arm64`);
    const result = await mkbaseOk([
      "scratch",
      ...["--platform", platform("arm64"), "-t", tag, ...epochArgs],
      ...["-o", `type=oci,dest=${archive}`, "-o", "type=docker", "--json", "-q"],
    ]);
    const report = JSON.parse(result.stdout) as { platforms: { platform: string }[]; warnings: string[] };
    const warning =
      "no program for this machine's platform (linux/amd64): the plain tag is not set in the Docker Engine";
    assert.deepEqual(report.warnings, [warning]);
    // The same line on stderr, also under --quiet, as every warning.
    assert.equal(result.stderr, `warning: ${warning}\n`);
    assert.deepEqual(
      report.platforms.map((p) => p.platform),
      ["linux/arm64/v8"],
    );
    assert.equal(await imageInspect(tag), undefined);
    assert.equal((await imageInspect(`${tag}-arm64`))?.Architecture, "arm64");
  });
});

describe("--push", () => {
  let registry: RegistryServer;
  before(async () => {
    registry = await startRegistry();
  });
  after(async () => {
    await registry?.dispose();
  });

  test("pushes to the registry and prints the reference with the digest skopeo sees", async () => {
    const target = `${registry.host}/e2e/outputs:1`;
    const result = await mkbaseOk(["dir", minimal.root, "-t", target, ...epochArgs, "--push"]);
    const printed = result.stdout.trim();
    assert.match(
      printed,
      new RegExp(`^${registry.host.replace(/\./g, "\\.")}/e2e/outputs@sha256:[0-9a-f]{64}$`),
    );
    const inspected = await runCommand("skopeo", ["inspect", "--tls-verify=false", `docker://${target}`]);
    assert.equal(inspected.code, 0, describeResult(inspected));
    assert.equal(JSON.parse(inspected.stdout).Digest, printed.split("@")[1]);
  });
});

describe("references in OCI outputs", () => {
  /** The full name and the tag of each `index.json` entry, with its digest. */
  function indexEntries(indexText: string): [string, string, string][] {
    const index = JSON.parse(indexText) as {
      manifests: { digest: string; annotations: Record<string, string> }[];
    };
    return index.manifests.map((d) => [
      d.digest,
      d.annotations["io.containerd.image.name"] as string,
      d.annotations["org.opencontainers.image.ref.name"] as string,
    ]);
  }

  test("two repositories with one tag are two entries, and skopeo reads the archive by the tag", async () => {
    const archive = join(scratch, "two-repositories.oci.tar");
    const result = await mkbaseOk([
      ...["dir", minimal.root, "-t", "e2e/x:1", "-t", "e2e/y:1", ...epochArgs],
      ...["-o", `type=oci,dest=${archive}`, "--json", "-q"],
    ]);
    const report = JSON.parse(result.stdout) as { id: string; tags: string[] };
    assert.deepEqual(report.tags, ["e2e/x:1", "e2e/y:1"]);
    assert.deepEqual(indexEntries(await runChecked("tar", ["-xOf", archive, "index.json"])), [
      [report.id, "docker.io/e2e/x:1", "1"],
      [report.id, "docker.io/e2e/y:1", "1"],
    ]);
    const inspected = JSON.parse(await runChecked("skopeo", ["inspect", `oci-archive:${archive}:1`]));
    assert.equal(inspected.Digest, report.id);
  });

  test("a new repository with an existing tag is added to a layout beside it", async () => {
    const layout = join(scratch, "shared-tag-layout");
    const first = (
      await mkbaseOk([
        ...["dir", minimal.root, "-t", "e2e/l:a", ...epochArgs],
        ...["-o", `type=oci,dest=${layout},tar=false`],
      ])
    ).stdout.trim();
    const second = (
      await mkbaseOk([
        ...["dir", minimal.root, "-t", "e2e/other:a", ...epochArgs, "--cmd", '["/bin/busybox","true"]'],
        ...["-o", `type=oci,dest=${layout},tar=false`],
      ])
    ).stdout.trim();
    assert.notEqual(first, second);
    assert.deepEqual(indexEntries(await readFile(join(layout, "index.json"), "utf8")), [
      [first, "docker.io/e2e/l:a", "a"],
      [second, "docker.io/e2e/other:a", "a"],
    ]);
    // skopeo's oci:DIR:TAG takes the first entry of the tag; a copy reads every blob of it.
    const copied = join(scratch, "shared-tag-copy");
    await runChecked("skopeo", ["copy", "--preserve-digests", `oci:${layout}:a`, `oci:${copied}:b`]);
    const inspected = JSON.parse(await runChecked("skopeo", ["inspect", `oci:${copied}:b`]));
    assert.equal(inspected.Digest, first);
  });

  test("commands adding to one layout at the same time all end up in its index.json", async () => {
    const layout = join(scratch, "parallel-layout");
    const tags = ["1", "2", "3", "4", "5", "6"].map((n) => `e2e/par:${n}`);
    const results = await Promise.all(
      tags.map((tag) =>
        runMkbase([
          "dir",
          minimal.root,
          "-t",
          tag,
          ...epochArgs,
          "-q",
          "-o",
          `type=oci,dest=${layout},tar=false`,
        ]),
      ),
    );
    for (const result of results) assert.equal(result.code, 0, describeResult(result));
    const names = indexEntries(await readFile(join(layout, "index.json"), "utf8")).map(([, name]) => name);
    assert.deepEqual(
      names.sort(),
      tags.map((tag) => `docker.io/${tag}`),
    );
    assert.deepEqual((await readdir(layout)).sort(), ["blobs", "index.json", "oci-layout"]);
  });

  test("--json lists a tag the engine and an archive both hold once", async () => {
    const tag = uniqueTag("oci-json-tags");
    images.add(tag);
    const archive = join(scratch, "json-tags.oci.tar");
    const result = await mkbaseOk([
      ...["dir", minimal.root, "-t", tag, ...epochArgs, "-q", "--json"],
      ...["-o", "type=docker", "-o", `type=oci,dest=${archive}`],
    ]);
    const report = JSON.parse(result.stdout) as { tags: string[]; destinations: string[] };
    assert.deepEqual(report.destinations, ["docker (load)", `oci archive ${archive}`]);
    assert.deepEqual(report.tags, [tag]);
  });

  test("a directory that is neither empty nor a layout is refused before the build, and left as it was", async () => {
    const home = join(scratch, "not-a-layout");
    await mkdir(home);
    await writeFile(join(home, "notes.txt"), "mine\n");
    const result = await runMkbase([
      "dir",
      minimal.root,
      ...epochArgs,
      "-o",
      `type=oci,dest=${home},tar=false`,
    ]);
    assert.equal(result.code, 5, describeResult(result));
    // The error is all stderr says: no phase of the build was started.
    assert.equal(
      result.stderr,
      `mkbase: error: ${home} is not an OCI image layout (no oci-layout or index.json) and not empty: it holds notes.txt. Give dest a new or empty directory, or an existing OCI layout to add the image to.\n`,
    );
    assert.deepEqual(await readdir(home), ["notes.txt"]);
    assert.equal(await readFile(join(home, "notes.txt"), "utf8"), "mine\n");
  });
});
