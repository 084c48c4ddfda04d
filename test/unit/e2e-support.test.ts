import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  describeResult,
  mkbaseLauncher,
  runChecked,
  runCommand,
  spawnCommand,
  waitForExit,
  waitForStderr,
} from "../e2e/support/cli.js";
import { dockerRun, imageIds, imageInspect, removeImages, uniqueTag } from "../e2e/support/docker.js";
import {
  fixtureMtime,
  makeEveryKindTree,
  makeMinimalTree,
  nonUtf8Name,
  randomFileSize,
  type FixtureTree,
} from "../e2e/support/fixture-tree.js";
import {
  containerRuntimePaths,
  diffListings,
  escapeListingPath,
  fnv1a64,
  inspectHostTree,
  inspectImage,
  listingByPath,
  parseListingLine,
} from "../e2e/support/inspect.js";

/**
 * The inspector's line for a regular file owned by 0:0, predicted from the bytes the test reads itself.
 * `path` is the path under `root` as raw bytes; `listedAs` is how the listing must show it.
 */
async function expectedFileLine(
  root: string,
  path: string | Buffer,
  mode: string,
  extra = "",
  listedAs = path.toString(),
): Promise<string> {
  const data = await readFile(Buffer.concat([Buffer.from(root), Buffer.from(path)]));
  return `${listedAs} file mode=${mode} uid=0 gid=0 size=${data.length} fnv=${fnv1a64(data)}${extra}`;
}

describe("inspector on the every-kind tree", () => {
  let tree: FixtureTree;
  before(async () => {
    tree = await makeEveryKindTree();
  });
  after(async () => {
    await tree.cleanup();
  });

  test("lists every entry, in byte order, with the fields of its kind", async () => {
    const root = tree.root;
    // getfattr is an independent reader of the capability xattr the inspector reads with lgetxattr.
    const getfattr = await runChecked("getfattr", [
      "-e",
      "hex",
      "-n",
      "security.capability",
      join(root, "caps/ping"),
    ]);
    const capHex = /^security\.capability=0x([0-9a-f]+)$/m.exec(getfattr)?.[1];
    assert.ok(capHex !== undefined && capHex.length === 40, getfattr);
    const longName = "long-" + "x".repeat(145);
    const deep = ["a", "b", "c", "d", "e"].map((letter) => `${letter}-${"d".repeat(58)}`);
    const deepDirs = deep.map((_, i) => `/names/deep/${deep.slice(0, i + 1).join("/")}`);
    const deepFile = `${deepDirs.at(-1) ?? ""}/file`;
    assert.ok(deepFile.length > 255);

    const expected = [
      "/bin dir mode=0755 uid=0 gid=0",
      await expectedFileLine(root, "/bin/busybox", "0755"),
      "/bin/sh symlink mode=0777 uid=0 gid=0 target=busybox",
      "/caps dir mode=0755 uid=0 gid=0",
      await expectedFileLine(root, "/caps/ping", "0755", ` cap=${capHex}`),
      "/etc dir mode=0755 uid=0 gid=0",
      await expectedFileLine(root, "/etc/os-release", "0644"),
      "/files dir mode=0755 uid=0 gid=0",
      "/files/empty file mode=0644 uid=0 gid=0 size=0 fnv=cbf29ce484222325",
      await expectedFileLine(root, "/files/random", "0644"),
      await expectedFileLine(root, "/files/small", "0644"),
      "/links dir mode=0755 uid=0 gid=0",
      "/links/absolute symlink mode=0777 uid=0 gid=0 target=/files/small",
      "/links/dangling symlink mode=0777 uid=0 gid=0 target=no-such-target",
      await expectedFileLine(root, "/links/hardlink-a", "0644", " hardlink=/links/hardlink-a"),
      await expectedFileLine(root, "/links/hardlink-b", "0644", " hardlink=/links/hardlink-a"),
      "/links/relative symlink mode=0777 uid=0 gid=0 target=../files/small",
      await expectedFileLine(root, "/links/triple-a", "0644", " hardlink=/links/triple-a"),
      await expectedFileLine(root, "/links/triple-b", "0644", " hardlink=/links/triple-a"),
      await expectedFileLine(root, "/links/triple-c", "0644", " hardlink=/links/triple-a"),
      "/modes dir mode=0755 uid=0 gid=0",
      "/modes/private dir mode=0700 uid=0 gid=0",
      await expectedFileLine(root, "/modes/private/file", "0600"),
      "/modes/private/inner dir mode=0751 uid=0 gid=0",
      await expectedFileLine(root, "/modes/private/inner/file", "0644"),
      "/modes/setgid-dir dir mode=2775 uid=0 gid=0",
      await expectedFileLine(root, "/modes/setuid", "4755"),
      "/modes/sticky-dir dir mode=1777 uid=0 gid=0",
      "/names dir mode=0755 uid=0 gid=0",
      "/names/deep dir mode=0755 uid=0 gid=0",
      ...deepDirs.map((dir) => `${dir} dir mode=0755 uid=0 gid=0`),
      await expectedFileLine(root, deepFile, "0644"),
      await expectedFileLine(
        root,
        Buffer.concat([Buffer.from("/names/"), nonUtf8Name]),
        "0644",
        "",
        "/names/latin1-caf\\xff",
      ),
      await expectedFileLine(root, `/names/${longName}`, "0644"),
      await expectedFileLine(root, "/names/utf8-naïve", "0644", "", "/names/utf8-na\\xc3\\xafve"),
      await expectedFileLine(root, "/names/with space", "0644", "", "/names/with\\x20space"),
      "/owners dir mode=0755 uid=0 gid=0",
      (await expectedFileLine(root, "/owners/high", "0644")).replace("uid=0 gid=0", "uid=300001 gid=300002"),
      (await expectedFileLine(root, "/owners/mid", "0644")).replace("uid=0 gid=0", "uid=70000 gid=70000"),
      "/special dir mode=0755 uid=0 gid=0",
      "/special/block-7-200 block mode=0660 uid=0 gid=0 dev=7:200",
      "/special/char-1-3 char mode=0666 uid=0 gid=0 dev=1:3",
      "/special/fifo fifo mode=0644 uid=0 gid=0",
      "/special/socket socket mode=0755 uid=0 gid=0",
    ];
    const listing = await inspectHostTree(root);
    assert.deepEqual(listing, expected, diffListings(expected, listing));
  });

  test("reads the non-UTF-8 name as raw bytes and escapes it", async () => {
    const entries = listingByPath(await inspectHostTree(tree.root));
    const path = `/names/${escapeListingPath(nonUtf8Name)}`;
    assert.equal(path, "/names/latin1-caf\\xff");
    const entry = entries.get(path);
    assert.ok(entry, "the 0xff name is listed under its escaped form");
    assert.equal(entry.fnv, fnv1a64(Buffer.from("name is not UTF-8\n")));
  });

  test("hashes the whole 3 MiB file, across read chunks", async () => {
    const entry = listingByPath(await inspectHostTree(tree.root)).get("/files/random");
    assert.ok(entry);
    assert.equal(entry.size, randomFileSize);
    assert.equal(entry.fnv, fnv1a64(await readFile(join(tree.root, "files/random"))));
  });

  test("--exclude leaves out the path and everything under it, with or without a leading slash", async () => {
    const listing = await inspectHostTree(tree.root, ["/files", "modes/private"]);
    assert.ok(!listing.some((line) => line.startsWith("/files ") || line.startsWith("/files/")));
    assert.ok(!listing.some((line) => line.startsWith("/modes/private")));
    assert.ok(listing.some((line) => line.startsWith("/modes/setuid ")));
  });

  test("fixture trees have fixed mtimes, directories included", async () => {
    const stdout = await runChecked("find", [tree.root, "-printf", "%T@ %p\\n"]);
    const wrong = stdout
      .split("\n")
      .filter((line) => line !== "" && !line.startsWith(`${fixtureMtime}.0000000000 `));
    assert.deepEqual(wrong, []);
  });
});

test("the inspector walks paths longer than PATH_MAX", async () => {
  const dir = await mkdtemp(join(tmpdir(), "mkbase-inspect-deep-"));
  try {
    const name = "n".repeat(200);
    // A child node descends with relative mkdir and chdir, so no single call sees the whole path.
    const descend = `const fs = require("node:fs");
      process.chdir(process.argv[1]);
      for (let i = 0; i < 25; i++) { fs.mkdirSync("${name}"); process.chdir("${name}"); }
      fs.writeFileSync("file", "end\\n");`;
    await runChecked(process.execPath, ["-e", descend, dir]);
    const listing = await inspectHostTree(dir);
    assert.equal(listing.length, 26);
    const last = parseListingLine(listing.at(-1) ?? "");
    assert.ok(last.path.length > 5000, `path of ${last.path.length} bytes`);
    assert.equal(last.fnv, fnv1a64(Buffer.from("end\n")));
  } finally {
    // GNU rm works with relative descriptors too; fs.rm would hit ENAMETOOLONG.
    await runChecked("rm", ["-rf", dir]);
  }
});

test("the inspector fails on a root it cannot read", async () => {
  await assert.rejects(inspectHostTree(join(tmpdir(), "mkbase-no-such-dir")), /No such file or directory/);
});

describe("diffListings", () => {
  const base = [
    "/a dir mode=0755 uid=0 gid=0",
    "/a/b file mode=0644 uid=0 gid=0 size=1 fnv=0",
    "/c fifo mode=0644 uid=0 gid=0",
  ];

  test("is empty for equal listings", () => {
    assert.equal(diffListings(base, [...base]), "");
  });

  test("shows changed, missing and added entries by path", () => {
    const actual = [
      "/a dir mode=0700 uid=0 gid=0",
      "/a/b file mode=0644 uid=0 gid=0 size=1 fnv=0",
      "/d fifo mode=0644 uid=0 gid=0",
    ];
    assert.equal(
      diffListings(base, actual),
      [
        "- /a dir mode=0755 uid=0 gid=0",
        "+ /a dir mode=0700 uid=0 gid=0",
        "- /c fifo mode=0644 uid=0 gid=0",
        "+ /d fifo mode=0644 uid=0 gid=0",
      ].join("\n"),
    );
  });

  test("reports a different order of the same entries", () => {
    const reordered = [base[1] ?? "", base[0] ?? "", base[2] ?? ""];
    assert.match(diffListings(base, reordered), /another order/);
  });

  test("cuts long diffs", () => {
    const many = Array.from({ length: 100 }, (_, i) => `/f${i} fifo mode=0644 uid=0 gid=0`);
    const diff = diffListings([], many, 10);
    assert.equal(diff.split("\n").length, 11);
    assert.match(diff, /… and 90 more lines$/);
  });
});

test("parseListingLine reads every field back", () => {
  assert.deepEqual(
    parseListingLine("/x file mode=4755 uid=300001 gid=2 size=5 fnv=00ff cap=0100 hardlink=/y"),
    {
      path: "/x",
      type: "file",
      mode: 0o4755,
      uid: 300001,
      gid: 2,
      size: 5,
      fnv: "00ff",
      cap: "0100",
      hardlink: "/y",
    },
  );
  assert.throws(() => parseListingLine("/x gizmo mode=0644 uid=0 gid=0"), /not a listing line/);
});

test("fnv1a64 matches the published FNV-1a 64 test vectors", () => {
  assert.equal(fnv1a64(Buffer.alloc(0)), "cbf29ce484222325");
  assert.equal(fnv1a64(Buffer.from("a")), "af63dc4c8601ec8c");
  assert.equal(fnv1a64(Buffer.from("foobar")), "85944171f73967e8");
});

describe("inspector inside a container", () => {
  const tag = uniqueTag("e2e-support inspect");
  let tree: FixtureTree;

  before(async () => {
    tree = await makeEveryKindTree();
    // GNU tar and `docker import` stand in for mkbase here: this checks the helper, not mkbase. tar skips
    // the socket with a warning, as mkbase does.
    await runChecked("bash", [
      "-o",
      "pipefail",
      "-c",
      'tar --xattrs --xattrs-include=security.capability --numeric-owner -C "$1" -c . | docker import - "$2"',
      "bash",
      tree.root,
      tag,
    ]);
  });
  after(async () => {
    await removeImages([tag]);
    await tree.cleanup();
  });

  test("lists the image as the host lists the tree, without what the engine adds", async () => {
    const onHost = await inspectHostTree(tree.root, [...containerRuntimePaths, "/special/socket"]);
    const inImage = await inspectImage(tag);
    assert.deepEqual(inImage, onHost, diffListings(onHost, inImage));
    for (const path of ["/.dockerenv", "/.inspect", "/proc", "/etc/hosts", "/etc/mtab"]) {
      assert.ok(!inImage.some((line) => line.startsWith(`${path} `)), `${path} is left out`);
    }
  });

  test("lists a subdirectory with paths relative to it", async () => {
    const inEtc = await inspectImage(tag, "/etc");
    assert.deepEqual(
      inEtc.map((line) => parseListingLine(line).path),
      ["/os-release"],
    );
  });

  test("dockerRun runs a command with no network", async () => {
    const result = await dockerRun(tag, ["/bin/sh", "-c", "cat /etc/os-release; ls /sys/class/net"]);
    assert.equal(result.code, 0, describeResult(result));
    assert.match(result.stdout, /ID=mkbase-fixture/);
    assert.deepEqual(
      result.stdout.split("\n").filter((line) => /^[a-z]/.test(line) && !line.includes("=")),
      ["lo"],
    );
  });

  test("dockerRun passes stdin when given", async () => {
    const result = await dockerRun(tag, ["/bin/busybox", "cat"], { input: Buffer.from("through stdin") });
    assert.equal(result.stdout, "through stdin");
  });
});

test("imageInspect, imageIds and removeImages follow an image's life", async () => {
  const tag = uniqueTag("e2e-support life");
  const tree = await makeMinimalTree();
  try {
    const before = await imageIds();
    const id = (
      await runChecked("bash", [
        "-o",
        "pipefail",
        "-c",
        'tar -C "$1" -c . | docker import - "$2"',
        "bash",
        tree.root,
        tag,
      ])
    ).trim();
    const inspected = await imageInspect(tag);
    assert.equal(inspected?.Id, id);
    assert.ok(!before.has(id));
    assert.ok((await imageIds()).has(id));
    await removeImages([tag, "mkbase-test/never-built:0"]);
    assert.equal(await imageInspect(tag), undefined);
    assert.ok(!(await imageIds()).has(id));
  } finally {
    await removeImages([tag]);
    await tree.cleanup();
  }
});

test("uniqueTag makes valid, distinct tags", () => {
  const a = uniqueTag("Some Test_Name!");
  assert.match(a, /^mkbase-test\/some-test-name:[0-9a-f]{12}$/);
  assert.notEqual(a, uniqueTag("Some Test_Name!"));
});

describe("running commands", () => {
  test("the launcher is found from the compiled support files", () => {
    assert.ok(existsSync(mkbaseLauncher), mkbaseLauncher);
  });

  test("stdin is empty unless input is given", async () => {
    const empty = await runCommand("cat", []);
    assert.equal(empty.code, 0);
    assert.equal(empty.stdout, "");
    const given = await runCommand("cat", [], { input: Buffer.from("bytes in") });
    assert.equal(given.stdout, "bytes in");
  });

  test("a time limit kills the process and says so", async () => {
    const result = await runCommand("sleep", ["30"], { timeoutMs: 100 });
    assert.equal(result.timedOut, true);
    assert.equal(result.signal, "SIGKILL");
  });

  test("waitForStderr sees output written before it was called, then the result keeps it all", async () => {
    const child = spawnCommand("sh", ["-c", "echo phase-one >&2; sleep 0.2; echo done; exit 3"]);
    await new Promise((resolve) => setTimeout(resolve, 100));
    await waitForStderr(child, /phase-one/, 5000);
    const result = await waitForExit(child);
    assert.equal(result.code, 3);
    assert.equal(result.stdout, "done\n");
    assert.equal(result.stderr, "phase-one\n");
  });
});
