/**
 * What goes wrong, and what mkbase leaves behind when it does: every fault must end with a message
 * that says what happened, the documented exit code, and no image or tag in the engine. Faults that
 * would hurt the shared engine (killing the daemon mid-transfer) run against a private one.
 */
import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  describeResult,
  escapeRegExp,
  mkbaseLauncher,
  runChecked,
  runCommand,
  runMkbase,
  spawnCommand,
  spawnMkbase,
  waitForExit,
  waitForStderr,
  type RunOptions,
  type RunResult,
} from "./support/cli.js";
import { debianRootfs } from "./support/debian-rootfs.js";
import {
  engineSocket,
  failureLabel,
  imageIds,
  imageInspect,
  leftBehind,
  removeImages,
  uniqueTag,
} from "./support/docker.js";
import { makeMinimalTree, type FixtureTree } from "./support/fixture-tree.js";
import { startPrivateEngine, type PrivateEngine } from "./support/private-engine.js";

/** Tags this file asked for; each must be absent after its test, and is removed at the end in any case. */
const requested = new Set<string>();

let tree: FixtureTree;
let work: string;

before(async () => {
  tree = await makeMinimalTree();
  work = await mkdtemp(join(tmpdir(), "mkbase-e2e-faults-"));
});
after(async () => {
  // An invalid reference is simply not found, so every requested tag can be passed.
  await removeImages(requested);
  await tree.cleanup();
  await rm(work, { recursive: true, force: true });
});

interface ExpectedFailure {
  /** The documented exit code. */
  code: number;
  /** What stderr must say. */
  stderr: RegExp;
  /** The tag to ask for; a fresh one when absent. */
  tag?: string;
  /** Runs something other than plain `node bin/mkbase` (a wrapper such as setpriv), then mkbase. */
  wrapper?: readonly string[];
  options?: RunOptions;
}

/**
 * Runs `mkbase COMMAND ARGS -t TAG --label …` against the shared engine and checks that it fails as
 * `expected` and leaves no image and no tag.
 */
async function expectFailure(command: readonly string[], expected: ExpectedFailure): Promise<RunResult> {
  const tag = expected.tag ?? uniqueTag(`fault-${command[0] ?? "run"}`);
  requested.add(tag);
  const label = failureLabel();
  const imagesBefore = await imageIds();
  const args = [...command, "-t", tag, "--label", label.flag];
  const result =
    expected.wrapper === undefined
      ? await runMkbase(args, expected.options)
      : await runCommand(
          expected.wrapper[0] as string,
          [...expected.wrapper.slice(1), process.execPath, mkbaseLauncher, ...args],
          expected.options,
        );
  assert.equal(result.code, expected.code, describeResult(result));
  assert.match(result.stderr, expected.stderr);
  assert.match(result.stderr, /^mkbase: error: /m, "the error must be one readable line, not a stack trace");
  assert.equal(result.stdout, "", "stdout carries only a result, and there is none");
  assert.deepEqual(await leftBehind(imagesBefore, label, tag), [], "the failed run left an image");
  assert.equal(await imageInspect(tag), undefined, `the tag ${tag} must not exist`);
  return result;
}

/** A run that takes longer has hung; it is killed and fails its test instead of stalling the suite. */
const hangLimitMs = 120_000;

describe("the source", () => {
  test("a missing path", async () => {
    const missing = join(work, "no-such-rootfs");
    await expectFailure(["dir", missing], {
      code: 3,
      stderr: new RegExp(`${escapeRegExp(missing)} does not exist`),
    });
  });

  test("a missing relative path is named as given, not capitalised", async () => {
    await expectFailure(["dir", "no-such-rootfs"], {
      code: 3,
      stderr: /^mkbase: error: no-such-rootfs does not exist\. /m,
      options: { cwd: work },
    });
  });

  test("a file instead of a directory", async () => {
    const file = join(tree.root, "hello.txt");
    await expectFailure(["dir", file], {
      code: 3,
      stderr: new RegExp(`${escapeRegExp(file)} is not a directory`),
    });
  });

  test("an image instead of a root filesystem: an OCI layout directory, a docker save archive", async () => {
    const layout = join(work, "layout");
    const made = await runMkbase(["dir", tree.root, "-o", `type=oci,dest=${layout},tar=false`, "-q"]);
    assert.equal(made.code, 0, describeResult(made));
    await expectFailure(["dir", layout], {
      code: 3,
      stderr: new RegExp(`${escapeRegExp(layout)} is a container image .*skopeo copy oci:`),
    });
    const saved = join(work, "saved.tar");
    const save = await runMkbase(["dir", tree.root, "-o", `type=docker,dest=${saved}`, "-q"]);
    assert.equal(save.code, 0, describeResult(save));
    await expectFailure(["tar", saved], {
      code: 3,
      stderr: /saved\.tar is a container image archive .*docker load/,
    });
  });

  test("an unreadable file", async () => {
    const dir = join(work, "unreadable");
    await runChecked("cp", ["--archive", tree.root, dir]);
    const secret = join(dir, "secret");
    await writeFile(secret, "not for the image\n");
    await chmod(secret, 0o000);
    // Root reads a mode-000 file through CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH. Dropping those two from
    // the bounding set keeps mkbase uid 0, so it still reaches the engine's root-owned socket, but
    // makes the owner's 000 bits apply. (An unprivileged uid would fail earlier, at the socket, with
    // exit 4, before reading any file.)
    await expectFailure(["dir", dir], {
      code: 3,
      stderr: new RegExp(`${escapeRegExp(secret)}.*(EACCES|permission denied)`, "i"),
      wrapper: ["setpriv", "--bounding-set=-dac_override,-dac_read_search"],
    });
  });

  test("a file that grows while being read", async () => {
    const dir = join(work, "growing");
    await runChecked("cp", ["--archive", tree.root, dir]);
    const log = join(dir, "grows.log");
    const initialSize = 64 * 1024 * 1024;
    await writeFile(log, Buffer.alloc(initialSize, "x"));
    // Appends 64 KiB every millisecond, up to 1 GiB so a hung run cannot fill the disk.
    const appendForever = `
      const fs = require("node:fs");
      const fd = fs.openSync(process.argv[1], "a");
      const chunk = Buffer.alloc(65536, "y");
      setInterval(() => { if (fs.fstatSync(fd).size < 2 ** 30) fs.writeSync(fd, chunk); }, 1);`;
    const appender = spawnCommand(process.execPath, ["-e", appendForever, log]);
    try {
      while ((await stat(log)).size === initialSize) await new Promise((resolve) => setTimeout(resolve, 10));
      await expectFailure(["dir", dir], {
        code: 3,
        stderr: new RegExp(`grows\\.log grew while being read`),
        options: { timeoutMs: hangLimitMs },
      });
    } finally {
      appender.kill("SIGKILL");
      await waitForExit(appender);
    }
  });

  test("a tar entry that climbs out with ../etc/passwd", async () => {
    const dir = join(work, "climb");
    await mkdir(join(dir, "root"), { recursive: true });
    await mkdir(join(dir, "etc"));
    await writeFile(join(dir, "root", "hello.txt"), "hello\n");
    await writeFile(join(dir, "etc", "passwd"), "root:x:0:0::/root:/bin/sh\n");
    const archive = join(dir, "climb.tar");
    // -P keeps the member name "../etc/passwd" as given.
    await runChecked("tar", ["-P", "-C", join(dir, "root"), "-cf", archive, ".", "../etc/passwd"]);
    assert.match(await runChecked("tar", ["-tf", archive]), /^\.\.\/etc\/passwd$/m);
    await expectFailure(["tar", archive], { code: 3, stderr: /"\.\.\/etc\/passwd"/ });
  });

  test("a truncated gzip", async () => {
    const archive = join(work, "truncated.tar.gz");
    await runChecked("sh", ["-c", 'tar -C "$1" -c . | gzip -n > "$2"', "sh", tree.root, archive]);
    const whole = await readFile(archive);
    await writeFile(archive, whole.subarray(0, Math.floor(whole.length / 2)));
    await expectFailure(["tar", archive], { code: 3, stderr: /truncated|unexpected end/i });
  });

  test("a URL without --sha256", async () => {
    // Refused before any connection: nothing listens on this port, and the message is not about that.
    await expectFailure(["tar", "http://127.0.0.1:9/rootfs.tar.gz"], { code: 2, stderr: /--sha256/ });
  });
});

describe("the flags", () => {
  for (const tag of ["UPPER/case", "a:b:c"]) {
    test(`an invalid tag ${tag}`, async () => {
      await expectFailure(["dir", tree.root], { code: 2, stderr: new RegExp(`"${escapeRegExp(tag)}"`), tag });
    });
  }

  test("an unknown flag, reported by the option parser with the same prefix as every error", async () => {
    await expectFailure(["dir", tree.root, "--frob"], {
      code: 2,
      stderr: /^mkbase: error: unknown option '--frob'\nRun it with --help for usage\.\n$/,
    });
  });

  // Both are written once the image exists: a path that cannot be written must fail before that.
  for (const [flag, what] of [
    ["--iidfile", "the image ID file"],
    ["--metadata-file", "the metadata file"],
  ] as const) {
    test(`${flag} in a missing directory, naming a directory, or stdout`, async () => {
      const missing = join(work, "missing", "out");
      await expectFailure(["dir", tree.root, flag, missing], {
        code: 5,
        stderr: new RegExp(`${what} ${escapeRegExp(missing)}: there is no directory`),
      });
      await expectFailure(["dir", tree.root, flag, work], {
        code: 5,
        stderr: new RegExp(`${what} ${escapeRegExp(work)}: .* is a directory`),
      });
      // Stdout carries the result already: the two would mix.
      await expectFailure(["dir", tree.root, flag, "-"], { code: 2, stderr: /would write to stdout/ });
    });
  }

  test("--iidfile on a full disk, found only once the image exists: the error says what was made", async () => {
    const full = join(work, "full");
    await mkdir(full);
    await runChecked("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", full]);
    try {
      // Full to the last block: an empty file can still be made (the early check), no byte written.
      await runCommand("dd", ["if=/dev/zero", `of=${join(full, "fill")}`, "bs=4k", "count=64"]);
      const tag = uniqueTag("fault-iidfile-full");
      requested.add(tag);
      const result = await runMkbase(["dir", tree.root, "-t", tag, "--iidfile", join(full, "iid")]);
      assert.equal(result.code, 5, describeResult(result));
      assert.match(
        result.stderr,
        new RegExp(
          `cannot write the image ID file .*ENOSPC.*, after the image was made \\(${escapeRegExp(tag)} in docker \\(load\\)\\)\\. The disk is full`,
        ),
      );
      assert.notEqual(await imageInspect(tag), undefined, "the image the message names exists");
    } finally {
      await runChecked("umount", [full]);
    }
  });

  test("--via import for another architecture: refused where the engine would record its own", async () => {
    const api = (await runChecked("docker", ["version", "--format", "{{.Server.APIVersion}}"])).trim();
    const [major = 0, minor = 0] = api.split(".").map(Number);
    const host = process.arch === "arm64" ? "arm64" : "amd64";
    const wanted = host === "arm64" ? "amd64" : "arm64";
    const args = ["dir", tree.root, "--via", "import", "--platform", `linux/${wanted}`];
    if (major > 1 || minor >= 42) {
      // From API 1.42 the endpoint records the platform it is given, and so must the image.
      const tag = uniqueTag("fault-import-platform");
      requested.add(tag);
      const result = await runMkbase([...args, "-t", tag, "-q"]);
      assert.equal(result.code, 0, describeResult(result));
      assert.equal((await imageInspect(tag))?.Architecture, wanted);
      return;
    }
    await expectFailure(args, {
      code: 2,
      stderr: new RegExp(
        `\\(API ${escapeRegExp(api)}\\) records its own architecture on import: the image would claim linux/${host}, not linux/${wanted}.*Use the default --via load`,
      ),
    });
  });

  test("an archive output in a missing directory fails before the source is read", async () => {
    // The source does not exist either: the output's error coming first shows the order.
    const missing = join(work, "missing-dir", "image.tar");
    await expectFailure(["dir", join(work, "no-such-rootfs"), "-o", `type=oci,dest=${missing}`], {
      code: 5,
      stderr: new RegExp(`cannot write the OCI archive ${escapeRegExp(missing)}: there is no directory`),
    });
  });

  test("--via without an engine output, and registry flags without a push", async () => {
    await expectFailure(
      ["dir", tree.root, "--via", "import", "-o", `type=oci,dest=${join(work, "via.tar")}`],
      {
        code: 2,
        stderr: /--via chooses how the image enters the Docker Engine, and no output goes there/,
      },
    );
    await expectFailure(["dir", tree.root, "--registry-auth-file", join(work, "config.json")], {
      code: 2,
      stderr: /--registry-auth-file is only used by a push, and this command pushes nothing/,
    });
  });
});

describe("no daemon listening: exit 4, naming the address tried", () => {
  test("no socket file", async () => {
    const host = `unix://${join(work, "no-engine.sock")}`;
    await expectFailure(["dir", tree.root], {
      code: 4,
      stderr: new RegExp(`Docker Engine at ${escapeRegExp(host)}`),
      options: { env: { ...process.env, DOCKER_HOST: host } },
    });
  });

  test("a socket file left by a daemon that is gone", async () => {
    const socket = join(work, "stale-engine.sock");
    // A child binds the socket and exits without closing it, which leaves the file with no listener.
    const bindAndExit = `require("node:net").createServer().listen(process.argv[1], () => process.exit(0));`;
    await runChecked(process.execPath, ["-e", bindAndExit, socket]);
    assert.ok((await stat(socket)).isSocket());
    const host = `unix://${socket}`;
    await expectFailure(["dir", tree.root], {
      code: 4,
      stderr: new RegExp(`Docker Engine at ${escapeRegExp(host)}`),
      options: { env: { ...process.env, DOCKER_HOST: host } },
    });
  });
});

test("an engine socket that takes the connection but never answers: exit 4 after the time limit, not a hang", async () => {
  const socket = join(work, "hung-engine.sock");
  const server = createServer(() => undefined);
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  try {
    const started = Date.now();
    await expectFailure(["dir", tree.root], {
      code: 4,
      stderr: /did not answer within 15 s/,
      options: { env: { ...process.env, DOCKER_HOST: `unix://${socket}` }, timeoutMs: hangLimitMs },
    });
    assert.ok(Date.now() - started < 60_000, "the time limit must end the wait");
  } finally {
    server.close();
  }
});

describe("docker contexts, made by the docker CLI", () => {
  let env: NodeJS.ProcessEnv;
  let missing: string;

  before(async () => {
    const config = await mkdtemp(join(work, "docker-config-"));
    env = { ...process.env, DOCKER_CONFIG: config };
    delete env.DOCKER_HOST;
    delete env.DOCKER_CONTEXT;
    // The engine under another name, so that only the context leads to it.
    const alias = join(config, "engine.sock");
    await symlink(engineSocket(), alias);
    missing = join(config, "missing.sock");
    await runChecked("docker", ["context", "create", "alias", "--docker", `host=unix://${alias}`], { env });
    await runChecked("docker", ["context", "create", "broken", "--docker", `host=unix://${missing}`], {
      env,
    });
    await runChecked("docker", ["context", "use", "broken"], { env });
  });

  test("`docker context use` chose one whose engine is gone: exit 4, naming the context", async () => {
    const result = await expectFailure(["dir", tree.root], {
      code: 4,
      stderr: new RegExp(`Docker Engine at ${escapeRegExp(`unix://${missing}`)} \\(docker context broken\\)`),
      options: { env },
    });
    assert.match(result.stderr, /docker context use default/);
  });

  test("DOCKER_CONTEXT names another, which wins over the config's choice", async () => {
    const tag = uniqueTag("context");
    requested.add(tag);
    const result = await runMkbase(["dir", tree.root, "-t", tag, "-q"], {
      env: { ...env, DOCKER_CONTEXT: "alias" },
    });
    assert.equal(result.code, 0, describeResult(result));
    assert.equal((await imageInspect(tag))?.Id, result.stdout.trim());
  });
});

describe("the engine dies or the user interrupts, mid-transfer (private engine)", () => {
  let engine: PrivateEngine;
  let rootfs: string;

  before(async () => {
    // The Debian rootfs (about 200 MB) keeps the engine busy for seconds.
    rootfs = await debianRootfs();
    engine = await startPrivateEngine();
  });
  after(async () => {
    await engine?.dispose();
  });

  test("Ctrl-C during a load: exit 130 within seconds, no image, no temp dir", async () => {
    const childTmp = await mkdtemp(join(work, "tmpdir-"));
    const child = spawnMkbase(["dir", rootfs, "-t", uniqueTag("fault-sigint")], {
      env: { ...engine.env, TMPDIR: childTmp },
      timeoutMs: hangLimitMs,
    });
    await waitForStderr(child, /loading into the Docker Engine/);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const signalledAt = Date.now();
    child.kill("SIGINT");
    const result = await waitForExit(child);
    const took = Date.now() - signalledAt;
    assert.equal(result.code, 130, describeResult(result));
    assert.ok(took < 5000, `took ${took} ms to stop after SIGINT`);
    assert.match(result.stderr, /interrupted/);
    assert.equal(result.stdout, "");
    const left = (await readdir(childTmp)).filter((name) => name.startsWith("mkbase-"));
    assert.deepEqual(left, [], `temp dirs left in ${childTmp}`);
    // A body that the engine saw end cleanly could still become an image after mkbase exits: give the
    // engine time to finish whatever it got before looking.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    assert.deepEqual([...(await engine.imageIds())], []);
  });

  for (const [via, phase] of [
    ["load", /loading into the Docker Engine/],
    ["import", /importing into the Docker Engine/],
  ] as const) {
    test(`the daemon killed in the middle of ${via === "load" ? "a load" : "an import"}`, async () => {
      const child = spawnMkbase(["dir", rootfs, "--via", via, "-t", uniqueTag(`fault-kill-${via}`)], {
        env: engine.env,
        timeoutMs: hangLimitMs,
      });
      await waitForStderr(child, phase);
      // Kill while the body is still flowing: the layer is paced by the walk on both paths, so a short
      // delay still lands mid-transfer.
      await new Promise((resolve) => setTimeout(resolve, 300));
      await engine.kill();
      const result = await waitForExit(child);
      assert.equal(result.code, 5, describeResult(result));
      assert.match(result.stderr, /^mkbase: error: .*Docker Engine/m);
      assert.ok(
        result.stderr.includes(engine.host),
        `the message must name ${engine.host}:\n${result.stderr}`,
      );
      assert.equal(result.stdout, "");

      await engine.start();
      assert.deepEqual([...(await engine.imageIds())], [], `after restart:\n${engine.logTail()}`);
    });
  }
});

describe("a second Ctrl-C stops at once and still removes what mkbase made on the host", () => {
  /** Names in TMPDIR that start with `mkbase-` and were not there in `before`. */
  async function newTempDirs(before: ReadonlySet<string>): Promise<string[]> {
    return (await readdir(tmpdir())).filter((name) => name.startsWith("mkbase-") && !before.has(name));
  }

  /**
   * Sends SIGINT and at once SIGTERM, as a CI runner that cancels a job does (two Ctrl-C would do the
   * same, but two pending SIGINTs may merge into one), and waits for the exit.
   */
  async function interruptTwice(child: ReturnType<typeof spawnMkbase>): Promise<RunResult> {
    child.kill("SIGINT");
    child.kill("SIGTERM");
    const result = await waitForExit(child);
    assert.equal(result.code, 130, describeResult(result));
    // The two signals reach node's threads at once, and either may be taken first: the message names
    // the one taken second.
    assert.match(
      result.stderr,
      /^mkbase: error: interrupted again \(SIG(TERM|INT)\): stopped at once; temporary files and mounts were removed\.$/m,
    );
    return result;
  }

  test("during a bootstrap: its in-memory workspace is unmounted and removed", async () => {
    const tempBefore = new Set(await readdir(tmpdir()));
    const tag = uniqueTag("fault-twice-bootstrap");
    requested.add(tag);
    const child = spawnMkbase(
      ["debootstrap", "bookworm", "--backend", "debootstrap", "--tmpfs", "always", "-t", tag],
      { timeoutMs: hangLimitMs },
    );
    await waitForStderr(child, /I: Retrieving|I: Checking|I: Validating/, hangLimitMs);
    const [workspace, ...others] = await newTempDirs(tempBefore);
    assert.deepEqual(others, [], "one workspace");
    const full = join(tmpdir(), workspace ?? "none");
    assert.ok((await readFile("/proc/self/mountinfo", "utf8")).includes(` ${full} `), `${full} is a tmpfs`);
    await interruptTwice(child);
    assert.ok(!(await readFile("/proc/self/mountinfo", "utf8")).includes(full), `still mounted: ${full}`);
    await assert.rejects(stat(full), { code: "ENOENT" });
    assert.equal(await imageInspect(tag), undefined);
  });

  test("while packing into OCI outputs: no spool, no temporary file, no half-made layout", async () => {
    const rootfs = await debianRootfs();
    const dir = join(work, "twice");
    await mkdir(dir);
    const tempBefore = new Set(await readdir(tmpdir()));
    // Two outputs of one compression share a spool in TMPDIR; the archive writes a temporary file in dir.
    const child = spawnMkbase(
      [
        "dir",
        rootfs,
        "-o",
        `type=oci,dest=${join(dir, "image.tar")}`,
        "-o",
        `type=oci,dest=${join(dir, "layout")},tar=false`,
      ],
      { timeoutMs: hangLimitMs },
    );
    await waitForStderr(child, /packing directory/);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await interruptTwice(child);
    assert.deepEqual(await readdir(dir), []);
    assert.deepEqual(await newTempDirs(tempBefore), []);
  });
});
