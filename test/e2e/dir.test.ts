/**
 * `mkbase dir` into the real Docker Engine: the image must hold exactly what the tree holds (checked by
 * listing both with the static inspector), the config flags must reach the image, the output must be
 * what scripts rely on, and the same tree must give the same image ID.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { describeResult, runChecked, runMkbase, type RunOptions, type RunResult } from "./support/cli.js";
import { debianRootfs } from "./support/debian-rootfs.js";
import { dockerRun, imageInspect, removeImages, uniqueTag } from "./support/docker.js";
import {
  fixtureMtime,
  makeEveryKindTree,
  makeMinimalTree,
  nonUtf8Name,
  type FixtureTree,
} from "./support/fixture-tree.js";
import {
  containerRuntimePaths,
  diffListings,
  escapeListingPath,
  inspectHostTree,
  inspectImage,
  listingByPath,
} from "./support/inspect.js";

/** 2023-11-14T22:13:20Z: later than every mtime of the fixture trees, so nothing is clamped. */
const epoch = 1_700_000_000;
const epochCreated = "2023-11-14T22:13:20Z";
const imageIdPattern = /^sha256:[0-9a-f]{64}$/;

/** Tags and IDs this file made; all removed at the end. */
const made = new Set<string>();
after(async () => {
  await removeImages(made);
});

/** Scratch space for files the tests write (iidfiles, exclude files, saved images). */
let scratch: string;
before(async () => {
  scratch = await mkdtemp(join(tmpdir(), "mkbase-e2e-dir-"));
});
after(async () => {
  await rm(scratch, { recursive: true, force: true });
});

/** `mkbase dir PATH -t TAG ARGS…`, which must succeed; the tag and the printed ID are cleaned up later. */
async function mkbaseDir(
  path: string,
  tag: string,
  args: readonly string[] = [],
  options: RunOptions = {},
): Promise<{ id: string; result: RunResult }> {
  made.add(tag);
  const result = await runMkbase(["dir", path, "-t", tag, ...args], options);
  assert.equal(result.code, 0, describeResult(result));
  const id = args.includes("--json")
    ? (JSON.parse(result.stdout) as { id: string }).id
    : result.stdout.replace(/\n$/, "");
  assert.match(id, imageIdPattern, `stdout is not an image ID:\n${describeResult(result)}`);
  made.add(id);
  return { id, result };
}

/** The test's environment without `SOURCE_DATE_EPOCH`, so the epoch comes from the tree. */
function envWithoutEpoch(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.SOURCE_DATE_EPOCH;
  return env;
}

/** The history comments of an image, newest first, read with the docker CLI. */
async function historyComments(ref: string): Promise<string[]> {
  const stdout = await runChecked("docker", ["history", "--no-trunc", "--format", "{{.Comment}}", ref]);
  return stdout.split("\n").slice(0, -1);
}

/**
 * The only layer of `ref` as the engine gives it back with `docker save` (the bytes it was loaded
 * with: the engine keeps the tar's layout), and the entry names in it without a leading `./`.
 */
async function savedLayer(ref: string): Promise<{ bytes: Buffer; names: string[] }> {
  const dir = await mkdtemp(join(scratch, "save-"));
  try {
    const archive = join(dir, "image.tar");
    await runChecked("docker", ["save", "--output", archive, ref]);
    const manifest = JSON.parse(await runChecked("tar", ["-xOf", archive, "manifest.json"])) as {
      Layers: string[];
    }[];
    assert.equal(manifest.length, 1);
    const layers = manifest[0]?.Layers ?? [];
    assert.equal(layers.length, 1, `expected one layer in ${ref}: ${JSON.stringify(layers)}`);
    const layerPath = layers[0] as string;
    await runChecked("tar", ["-xf", archive, "-C", dir, layerPath]);
    const bytes = await readFile(join(dir, layerPath));
    const names = (await runChecked("tar", ["-tf", join(dir, layerPath)]))
      .split("\n")
      .filter((name) => name !== "")
      .map((name) => name.replace(/^\.\//, ""));
    return { bytes, names };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * What the every-kind tree is there to prove, read from an image's listing: if the fixture or the
 * inspector lost a feature, comparing two listings would still pass, so the features are named here.
 */
function assertEveryKindFeatures(listing: readonly string[]): void {
  const byPath = listingByPath(listing);
  const entry = (path: string) => {
    const found = byPath.get(path);
    assert.ok(found, `${path} is missing from the image`);
    return found;
  };
  assert.equal(entry("/modes/setuid").mode, 0o4755);
  assert.equal(entry("/modes/setgid-dir").mode, 0o2775);
  assert.equal(entry("/modes/sticky-dir").mode, 0o1777);
  assert.equal(entry("/modes/private").mode, 0o700);
  assert.deepEqual([entry("/owners/high").uid, entry("/owners/high").gid], [300001, 300002]);
  assert.deepEqual([entry("/owners/mid").uid, entry("/owners/mid").gid], [70000, 70000]);
  // cap_net_raw+ep as a VFS_CAP_REVISION_2 xattr: bit 13 in the permitted set, effective flag set.
  assert.equal(entry("/caps/ping").cap, "0100000200200000000000000000000000000000");
  assert.equal(entry("/links/hardlink-b").hardlink, "/links/hardlink-a");
  assert.equal(entry("/links/triple-c").hardlink, "/links/triple-a");
  assert.equal(entry("/links/relative").target, "../files/small");
  assert.equal(entry("/links/absolute").target, "/files/small");
  assert.equal(entry("/links/dangling").target, "no-such-target");
  assert.equal(entry(`/names/long-${"x".repeat(145)}`).type, "file");
  assert.equal(entry(`/names/${escapeListingPath(nonUtf8Name)}`).size, "name is not UTF-8\n".length);
  assert.equal(entry("/special/char-1-3").dev, "1:3");
  assert.equal(entry("/special/block-7-200").dev, "7:200");
  assert.equal(entry("/special/fifo").type, "fifo");
  assert.equal(byPath.has("/special/socket"), false, "a socket cannot be in an image");
}

describe("every kind of entry reaches the image unchanged", () => {
  let tree: FixtureTree;
  let expected: string[];

  before(async () => {
    tree = await makeEveryKindTree();
    // The host listing is the truth; the socket is the one entry an image cannot hold.
    expected = await inspectHostTree(tree.root, [...containerRuntimePaths, "/special/socket"]);
  });
  after(async () => {
    await tree.cleanup();
  });

  for (const via of ["load", "import", "build"] as const) {
    test(`--via ${via}`, async () => {
      const tag = uniqueTag(`dir-every-kind-${via}`);
      const { id, result } = await mkbaseDir(tree.root, tag, ["--via", via]);
      assert.match(
        result.stdout,
        /^sha256:[0-9a-f]{64}\n$/,
        "stdout must hold the image ID and nothing else",
      );
      assert.match(result.stderr, /socket.*special\/socket/, "stderr must name the skipped socket");
      assert.equal((await imageInspect(tag))?.Id, id);

      const actual = await inspectImage(tag);
      assert.equal(diffListings(expected, actual), "", "the image differs from the tree");
      assert.deepEqual(actual, expected);
      assertEveryKindFeatures(actual);
    });
  }

  test("--chown gives every entry one owner, and changes nothing else", async () => {
    const tag = uniqueTag("dir-chown");
    await mkbaseDir(tree.root, tag, ["--chown", "1234:5678"]);
    const owned = expected.map((line) => line.replace(/ uid=\d+ gid=\d+/, " uid=1234 gid=5678"));
    assert.notDeepEqual(owned, expected, "the tree must have other owners to begin with");
    assert.equal(diffListings(owned, await inspectImage(tag)), "");
  });

  test("--exclude and --exclude-from leave paths out", async () => {
    const excludeFile = join(scratch, "exclude-list");
    await writeFile(excludeFile, "# whole directories and one nested one\nlinks\nmodes/private/inner\n");
    const tag = uniqueTag("dir-exclude");
    await mkbaseDir(tree.root, tag, [
      "--exclude",
      "files/random",
      "--exclude",
      "names/*",
      "--exclude-from",
      excludeFile,
    ]);
    const left = (path: string): boolean =>
      !(
        path === "/files/random" ||
        path.startsWith("/names/") ||
        path === "/links" ||
        path.startsWith("/links/") ||
        path === "/modes/private/inner" ||
        path.startsWith("/modes/private/inner/")
      );
    const expectedLeft = expected.filter((line) => left(line.split(" ", 1)[0] ?? ""));
    assert.ok(expectedLeft.length < expected.length - 10, "the patterns must match something");
    const actual = await inspectImage(tag);
    assert.equal(diffListings(expectedLeft, actual), "");
    assert.ok(
      actual.some((line) => line.startsWith("/names dir ")),
      "names/* keeps /names itself",
    );
  });
});

describe("config flags reach the image", () => {
  let tree: FixtureTree;
  before(async () => {
    tree = await makeMinimalTree();
  });
  after(async () => {
    await tree.cleanup();
  });

  const configFlags = [
    "--entrypoint",
    '["/bin/sh"]',
    "--cmd",
    '["-c","echo $GREETING from $PWD as $(busybox id -u)"]',
    "--env",
    "PATH=/bin",
    "--env",
    "GREETING=hello",
    "--env",
    "SPACED=two words",
    "--label",
    "org.example.team=base",
    "--label",
    "org.example.note=with space",
    "--user",
    "1000:1000",
    "--workdir",
    "/srv",
    "--expose",
    "8080",
    "--expose",
    "53/udp",
    "--volume",
    "/data",
    // A flag's value is literal; a change substitutes variables, as `docker import -c` does: the same on
    // every path.
    "--env",
    'LITERAL=$GREETING \\ "q"',
    "-c",
    "ENV FROM_CHANGE=yes SUBSTITUTED=${GREETING}-x",
    "-c",
    "LABEL from.change=yes from.variable=$GREETING",
    "--source-date-epoch",
    String(epoch),
  ];
  const expectedConfig = {
    Entrypoint: ["/bin/sh"],
    Cmd: ["-c", "echo $GREETING from $PWD as $(busybox id -u)"],
    Env: [
      "PATH=/bin",
      "GREETING=hello",
      "SPACED=two words",
      'LITERAL=$GREETING \\ "q"',
      "FROM_CHANGE=yes",
      "SUBSTITUTED=hello-x",
    ],
    Labels: {
      "org.example.team": "base",
      "org.example.note": "with space",
      "from.change": "yes",
      "from.variable": "hello",
    },
    User: "1000:1000",
    WorkingDir: "/srv",
    ExposedPorts: { "8080/tcp": {}, "53/udp": {} },
    Volumes: { "/data": {} },
  };

  // The import endpoint has no STOPSIGNAL change, and a build has no history comment: those two flags
  // are checked where the path can carry them.
  const cases = [
    { via: "load", extra: ["--stop-signal", "SIGUSR1", "-m", "nightly build"], stopSignal: "SIGUSR1" },
    { via: "import", extra: ["-m", "nightly build"], stopSignal: undefined },
    { via: "build", extra: ["--stop-signal", "SIGUSR1"], stopSignal: "SIGUSR1" },
  ] as const;
  for (const { via, extra, stopSignal } of cases) {
    test(`--via ${via}`, async () => {
      const tag = uniqueTag(`dir-config-${via}`);
      await mkbaseDir(tree.root, tag, ["--via", via, ...configFlags, ...extra]);
      const inspected = await imageInspect(tag);
      assert.ok(inspected?.Config, `no config in ${tag}`);
      const config = inspected.Config;
      assert.deepEqual(config.Entrypoint, expectedConfig.Entrypoint);
      assert.deepEqual(config.Cmd, expectedConfig.Cmd);
      assert.deepEqual(config.Env, expectedConfig.Env);
      assert.deepEqual(config.Labels, expectedConfig.Labels);
      assert.equal(config.User, expectedConfig.User);
      assert.equal(config.WorkingDir, expectedConfig.WorkingDir);
      assert.deepEqual(config.ExposedPorts, expectedConfig.ExposedPorts);
      assert.deepEqual(config.Volumes, expectedConfig.Volumes);
      assert.equal(config.StopSignal, stopSignal);
      assert.equal(inspected.Os, "linux");
      assert.equal(inspected.Architecture, "amd64");
      if (via === "load") {
        assert.equal(inspected.Created, epochCreated);
        assert.deepEqual(await historyComments(tag), ["nightly build"]);
      }
      if (via === "import") assert.ok((await historyComments(tag)).includes("nightly build"));

      const run = await dockerRun(tag, []);
      assert.equal(run.code, 0, describeResult(run));
      assert.equal(run.stdout, "hello from /srv as 1000\n");
    });
  }

  test("HEALTHCHECK and ONBUILD changes give the same config by every --via", async () => {
    // The engine's import and build read these lines back from configToInstructions; load takes the
    // config mkbase writes. All three must agree with what Docker makes of the same changes.
    const changes = [
      "-c",
      'HEALTHCHECK --interval=5s --retries=2 CMD ["/bin/true"]',
      "-c",
      "ONBUILD RUN echo hi",
    ];
    const format = "{{json .Config.Healthcheck}} {{json .Config.OnBuild}}";
    for (const via of ["load", "import", "build"]) {
      const tag = uniqueTag(`dir-healthcheck-onbuild-${via}`);
      await mkbaseDir(tree.root, tag, ["--via", via, "--source-date-epoch", String(epoch), ...changes]);
      assert.equal(
        await runChecked("docker", ["inspect", "--format", format, tag]),
        '{"Test":["CMD","/bin/true"],"Interval":5000000000,"Retries":2} ["RUN echo hi"]\n',
        `--via ${via}`,
      );
    }
  });

  test("HEALTHCHECK --start-interval through an engine that does not know it", async () => {
    const api = (await runChecked("docker", ["version", "--format", "{{.Server.APIVersion}}"])).trim();
    const [major = 0, minor = 0] = api.split(".").map(Number);
    const change = ["-c", "HEALTHCHECK --start-interval=2s CMD /bin/true"];
    for (const via of ["import", "build"]) {
      const tag = uniqueTag(`dir-start-interval-${via}`);
      const result = await runMkbase(["dir", tree.root, "--via", via, "-t", tag, ...change]);
      if (major > 1 || minor >= 44) {
        assert.equal(result.code, 0, describeResult(result));
        await runChecked("docker", ["rmi", tag]);
        continue;
      }
      assert.equal(result.code, 2, describeResult(result));
      assert.match(
        result.stderr,
        /has no HEALTHCHECK --start-interval: its (import|build) endpoint would refuse/,
      );
      assert.equal(await imageInspect(tag), undefined, `--via ${via} made no image`);
    }
  });

  test("-m with --via build is refused, not silently dropped", async () => {
    // A build has no way to record a history comment; like --stop-signal on the import path, a flag
    // the chosen path cannot honour must be a usage error rather than vanish.
    const tag = uniqueTag("dir-build-message");
    made.add(tag);
    const result = await runMkbase(["dir", tree.root, "-t", tag, "--via", "build", "-m", "nightly build"]);
    assert.equal(result.code, 2, describeResult(result));
    assert.match(result.stderr, /-m|--message/);
    assert.equal(await imageInspect(tag), undefined);
  });

  test("--platform linux/arm64 is recorded on the load path, with a warning for the tree's amd64 /bin/sh", async () => {
    const tag = uniqueTag("dir-arm64");
    const { result } = await mkbaseDir(tree.root, tag, [
      "--platform",
      "linux/arm64",
      "--source-date-epoch",
      String(epoch),
    ]);
    const inspected = await imageInspect(tag);
    assert.ok(inspected, `${tag} is not in the engine`);
    assert.equal(inspected.Architecture, "arm64");
    assert.equal(inspected.Os, "linux");
    // The minimal tree's /bin/sh is this machine's busybox (the --quiet test shows no warning without the flag).
    assert.match(
      result.stderr,
      /bin\/sh is a linux\/amd64 program, but the image is recorded as linux\/arm64(\/v8)?: .*--platform linux\/amd64/,
    );
  });
});

describe("output for scripts", () => {
  let tree: FixtureTree;
  before(async () => {
    tree = await makeMinimalTree();
  });
  after(async () => {
    await tree.cleanup();
  });

  test("--json prints one object whose fields match the image the engine holds", async () => {
    const tag = uniqueTag("dir-json");
    const { result } = await mkbaseDir(tree.root, tag, ["--json", "--source-date-epoch", String(epoch)]);
    const lines = result.stdout.split("\n");
    assert.equal(lines.length, 2, `one JSON line expected:\n${result.stdout}`);
    assert.equal(lines[1], "");
    const output = JSON.parse(lines[0] as string) as Record<string, unknown>;
    assert.deepEqual(Object.keys(output).sort(), [
      "destinations",
      "diffId",
      "entries",
      "epoch",
      "id",
      "platform",
      "size",
      "tags",
      "warnings",
    ]);
    const inspected = await imageInspect(tag);
    assert.ok(inspected, `${tag} is not in the engine`);
    assert.equal(output.id, inspected.Id);
    assert.deepEqual(output.tags, [tag]);
    assert.deepEqual(output.destinations, ["docker (load)"]);
    assert.equal(output.epoch, epoch);
    assert.equal(output.platform, "linux/amd64");
    assert.deepEqual(output.warnings, []);
    assert.deepEqual(inspected.RootFS.Layers, [output.diffId]);
    // The engine gives the loaded layer back byte for byte: its length, hash and entry count are
    // what mkbase reported.
    const layer = await savedLayer(tag);
    assert.equal(output.size, layer.bytes.length);
    assert.equal(output.diffId, `sha256:${createHash("sha256").update(layer.bytes).digest("hex")}`);
    assert.equal(output.entries, layer.names.length);
  });

  test("--json lists the warnings of the source too: a skipped socket", async () => {
    const withSocket = await makeMinimalTree();
    const server = createServer();
    try {
      await new Promise<void>((resolve) => server.listen(join(withSocket.root, "listening.sock"), resolve));
      const { result } = await mkbaseDir(withSocket.root, uniqueTag("dir-json-warning"), ["--json"]);
      const output = JSON.parse(result.stdout) as { warnings: string[] };
      assert.equal(output.warnings.length, 1, result.stdout);
      assert.match(output.warnings[0] ?? "", /^skipped 1 socket .*listening\.sock/);
      // The same line the progress shows on stderr.
      assert.ok(result.stderr.includes(output.warnings[0] ?? ""), result.stderr);
    } finally {
      server.close();
      await withSocket.cleanup();
    }
  });

  test("--iidfile holds the image ID", async () => {
    const iidfile = join(scratch, "iid");
    const { id } = await mkbaseDir(tree.root, uniqueTag("dir-iidfile"), ["--iidfile", iidfile]);
    assert.equal(await readFile(iidfile, "utf8"), id);
  });

  test("--iidfile holds the image ID with an OCI output first, and a failed build leaves none", async () => {
    const iidfile = join(scratch, "iid-oci");
    const layout = join(scratch, "iid-layout");
    const result = await runMkbase([
      "dir",
      tree.root,
      ...["-o", `type=oci,dest=${layout},tar=false`, "--iidfile", iidfile],
    ]);
    assert.equal(result.code, 0, describeResult(result));
    const index = JSON.parse(await readFile(join(layout, "index.json"), "utf8")) as {
      manifests: { digest: string }[];
    };
    const manifestDigest = index.manifests[0]?.digest ?? "";
    // stdout names what the layout holds (the manifest); the ID file, the image ID: its config's digest.
    assert.equal(result.stdout, `${manifestDigest}\n`);
    const manifest = JSON.parse(
      await readFile(join(layout, "blobs/sha256", manifestDigest.slice("sha256:".length)), "utf8"),
    ) as { config: { digest: string } };
    assert.equal(await readFile(iidfile, "utf8"), manifest.config.digest);

    const failed = await runMkbase([
      "dir",
      join(scratch, "missing"),
      "-o",
      `type=tar,dest=${join(scratch, "x.tar")}`,
      "--iidfile",
      iidfile,
    ]);
    assert.equal(failed.code, 3, describeResult(failed));
    await assert.rejects(readFile(iidfile), { code: "ENOENT" });
    await rm(layout, { recursive: true });
  });

  test("--quiet prints only the ID, nothing on stderr", async () => {
    const tag = uniqueTag("dir-quiet");
    const { id, result } = await mkbaseDir(tree.root, tag, ["--quiet"]);
    assert.equal(result.stdout, `${id}\n`);
    assert.equal(result.stderr, "");
    assert.equal((await imageInspect(tag))?.Id, id);
  });
});

describe("reproducible image IDs", () => {
  let tree: FixtureTree;
  before(async () => {
    tree = await makeMinimalTree();
  });
  after(async () => {
    await tree.cleanup();
  });

  test("same tree and --source-date-epoch: same ID, from another path too; created is the epoch", async () => {
    const first = await mkbaseDir(tree.root, uniqueTag("dir-repro-a"), [
      "--source-date-epoch",
      String(epoch),
    ]);
    assert.equal((await imageInspect(first.id))?.Created, epochCreated);
    // Remove it, so the second build cannot be the engine handing back what it already had.
    await removeImages([first.id]);
    const copy = join(scratch, "copy-of-minimal");
    await runChecked("cp", ["--archive", tree.root, copy]);
    const second = await mkbaseDir(copy, uniqueTag("dir-repro-b"), ["--source-date-epoch", String(epoch)]);
    assert.equal(second.id, first.id);
    assert.equal((await imageInspect(second.id))?.Created, epochCreated);

    const later = await mkbaseDir(tree.root, uniqueTag("dir-repro-c"), [
      "--source-date-epoch",
      String(epoch + 1),
    ]);
    assert.notEqual(later.id, first.id, "the epoch must be part of the image");
  });

  test("without an epoch the ID is stable and created is the newest mtime", async () => {
    const env = envWithoutEpoch();
    const first = await mkbaseDir(tree.root, uniqueTag("dir-noepoch-a"), [], { env });
    await removeImages([first.id]);
    const second = await mkbaseDir(tree.root, uniqueTag("dir-noepoch-b"), [], { env });
    assert.equal(second.id, first.id);
    const created = (await imageInspect(second.id))?.Created;
    assert.equal(Date.parse(created ?? ""), fixtureMtime * 1000, `created is ${String(created)}`);
  });
});

test("--system keeps proc, sys, dev, run and tmp as empty directories", async () => {
  const tree = await makeMinimalTree();
  try {
    const held = ["proc/cpuinfo", "sys/kernel/state", "dev/console-log", "run/app.pid", "tmp/junk"];
    for (const path of held) {
      await mkdir(join(tree.root, path, ".."), { recursive: true });
      await writeFile(join(tree.root, path), "runtime state\n");
    }
    // Without --system the same tree keeps the files: the fixture does hold something to leave out.
    const plain = await savedLayer((await mkbaseDir(tree.root, uniqueTag("dir-nosystem"))).id);
    for (const path of held) assert.ok(plain.names.includes(path), `${path} missing without --system`);

    const system = await savedLayer((await mkbaseDir(tree.root, uniqueTag("dir-system"), ["--system"])).id);
    for (const dir of ["proc", "sys", "dev", "run", "tmp"]) {
      assert.ok(
        system.names.includes(`${dir}/`),
        `${dir}/ must stay as a directory: ${system.names.join(" ")}`,
      );
      const inside = system.names.filter((name) => name.startsWith(`${dir}/`) && name !== `${dir}/`);
      assert.deepEqual(inside, [], `${dir}/ must be empty`);
    }
    assert.ok(system.names.includes("hello.txt"));
    assert.ok(system.names.includes("bin/busybox"));
  } finally {
    await tree.cleanup();
  }
});

test("overlay whiteouts in the tree are refused, naming the path, until --exclude leaves them out", async () => {
  const tree = await makeMinimalTree();
  try {
    // Packed as they are, the engine would take them for deletions and drop them without a word.
    await writeFile(join(tree.root, "etc", ".wh.keep"), "");
    await mkdir(join(tree.root, "opq"));
    await writeFile(join(tree.root, "opq", ".wh..wh..opq"), "");
    await writeFile(join(tree.root, "opq", "kept"), "kept\n");
    const tag = uniqueTag("dir-whiteout");
    made.add(tag);
    const refused = await runMkbase(["dir", tree.root, "-t", tag]);
    assert.equal(refused.code, 3, describeResult(refused));
    assert.match(
      refused.stderr,
      /"etc\/\.wh\.keep" is an overlay whiteout \(a "\.wh\." name\)[^]*--exclude 'etc\/\.wh\.keep'/,
    );
    assert.equal(await imageInspect(tag), undefined, "a refused tree leaves no image");

    await mkbaseDir(tree.root, tag, ["--exclude", "etc/.wh.keep", "--exclude", "opq/.wh..wh..opq"]);
    // /etc is left alone: the engine mounts hosts, hostname and resolv.conf there.
    const run = await dockerRun(tag, ["busybox", "ls", "-A", "/opq"]);
    assert.equal(run.code, 0, describeResult(run));
    assert.equal(run.stdout, "kept\n");
  } finally {
    await tree.cleanup();
  }
});

test("a debootstrap bookworm minbase rootfs becomes an image where apt-get runs", async () => {
  const rootfs = await debianRootfs();
  const tag = uniqueTag("dir-bookworm");
  await mkbaseDir(rootfs, tag, ["--quiet"]);
  const run = await dockerRun(tag, ["apt-get", "--version"]);
  assert.equal(run.code, 0, describeResult(run));
  assert.match(run.stdout, /^apt 2\.\d+\.\d+ \(amd64\)/);

  const expected = await inspectHostTree(rootfs, containerRuntimePaths);
  const actual = await inspectImage(tag);
  assert.ok(expected.length > 5000, `a minbase rootfs has thousands of entries, got ${expected.length}`);
  assert.equal(diffListings(expected, actual), "", "the image differs from the rootfs");
});

test("a tree whose /bin/sh is for another architecture is warned about; another variant is not", async () => {
  const tree = await makeMinimalTree();
  try {
    const host = process.arch === "arm64" ? "arm64" : "amd64";
    const other = host === "arm64" ? "amd64" : "arm64";
    // A program does not say which amd64 level or arm64 version it needs: no warning for those.
    const variant = host === "arm64" ? "linux/arm64/v9" : "linux/amd64/v3";
    const warnings = async (platform: string): Promise<string[]> => {
      const dest = join(tree.root, "..", `${tree.root.split("/").pop() ?? "tree"}-${other}.tar`);
      const result = await runMkbase([
        "dir",
        tree.root,
        "--platform",
        platform,
        "-o",
        `type=tar,dest=${dest}`,
        "--json",
      ]);
      await rm(dest, { force: true });
      assert.equal(result.code, 0, describeResult(result));
      return (JSON.parse(result.stdout) as { warnings: string[] }).warnings;
    };
    assert.deepEqual(await warnings(variant), []);
    const [warning, ...rest] = await warnings(`linux/${other}`);
    assert.deepEqual(rest, []);
    assert.match(
      warning ?? "",
      new RegExp(
        `/bin/sh is a linux/${host} program, but the image is recorded as linux/${other}.*exec format error`,
      ),
    );
  } finally {
    await tree.cleanup();
  }
});
