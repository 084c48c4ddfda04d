/**
 * `mkbase alpine` with a stand-in apk.static (the real one cannot be had here): the arguments mkbase
 * passes are right and the image runs; and apk-tools-static downloaded from a local HTTP server is run
 * only when its signature and checksums hold.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { describeResult, runMkbase } from "./support/cli.js";
import { dockerRun, imageInspect, removeImages, uniqueTag } from "./support/docker.js";
import { apkStandinBuildTime, serveApkRepository, writeApkStandin } from "./support/apk-standin.js";

const made = new Set<string>();
let scratch: string;
let standinDir: string;
let keysDir: string;
before(async () => {
  scratch = await mkdtemp(join(tmpdir(), "mkbase-e2e-alpine-"));
  standinDir = join(scratch, "bin");
  keysDir = join(scratch, "keys");
  await mkdir(standinDir);
  await mkdir(keysDir);
  // Handed to the stand-in, which checks nothing; mkbase only wants the directory to hold a key.
  await writeFile(join(keysDir, "alpine-devel@example.org.rsa.pub"), "not a real key\n");
  await writeApkStandin(standinDir);
});
after(async () => {
  await removeImages(made);
  await rm(scratch, { recursive: true, force: true });
});

function env(argsLog: string, withStandin: boolean): NodeJS.ProcessEnv {
  const copy: NodeJS.ProcessEnv = { ...process.env, MKBASE_APK_ARGS_LOG: argsLog };
  delete copy.SOURCE_DATE_EPOCH;
  if (withStandin) copy.PATH = `${standinDir}${delimiter}${process.env.PATH ?? ""}`;
  return copy;
}

/** The stand-in's recorded argument lists, one per run. */
async function recordedRuns(argsLog: string): Promise<string[][]> {
  const text = await readFile(argsLog, "utf8");
  return text
    .split("--end--\n")
    .filter((run) => run !== "")
    .map((run) => run.split("\n").filter((line) => line !== ""));
}

describe("mkbase alpine with apk.static on PATH", () => {
  test("passes --root, --initdb, the repositories and the packages, and checks signatures", async () => {
    const argsLog = join(scratch, "args-1.log");
    const tag = uniqueTag("alpine");
    made.add(tag);
    const result = await runMkbase(
      [
        "alpine",
        "v3.20",
        "-t",
        tag,
        "--mirror",
        "http://mirror.invalid/alpine",
        "--keys-dir",
        keysDir,
        "--packages",
        "alpine-base curl",
      ],
      { env: env(argsLog, true), timeoutMs: 120_000 },
    );
    assert.equal(result.code, 0, describeResult(result));
    const [args] = await recordedRuns(argsLog);
    assert.ok(args !== undefined);
    const rootIndex = args.indexOf("--root");
    assert.ok(
      rootIndex >= 0 && /\/mkbase-bootstrap-[^/]+\/rootfs$/.test(args[rootIndex + 1] ?? ""),
      args.join(" "),
    );
    assert.ok(args.includes("--initdb"));
    assert.deepEqual(args.slice(args.indexOf("--keys-dir"), args.indexOf("--keys-dir") + 2), [
      "--keys-dir",
      keysDir,
    ]);
    const repositories = args.flatMap((arg, i) => (arg === "--repository" ? [args[i + 1]] : []));
    assert.deepEqual(repositories, [
      "http://mirror.invalid/alpine/v3.20/main",
      "http://mirror.invalid/alpine/v3.20/community",
    ]);
    assert.deepEqual(args.slice(args.indexOf("add")), ["add", "alpine-base", "curl"]);
    assert.ok(!args.includes("--allow-untrusted"));

    const run = await dockerRun(tag, [
      "sh",
      "-c",
      "grep ^ID= /etc/os-release; cat /etc/apk/repositories; ls -A /var/cache/apk | wc -l",
    ]);
    assert.equal(run.code, 0, describeResult(run));
    assert.equal(
      run.stdout,
      "ID=alpine\nhttp://mirror.invalid/alpine/v3.20/main\nhttp://mirror.invalid/alpine/v3.20/community\n0\n",
    );
    const inspected = await imageInspect(tag);
    assert.equal(inspected?.Config?.Labels?.["mkbase.packages"], "alpine-base=1.0-r0,curl=1.0-r0");
    // No bash in the tree: its sh is the default command.
    assert.deepEqual(inspected?.Config?.Cmd, ["/bin/sh"]);
    assert.equal(Date.parse(inspected?.Created ?? ""), apkStandinBuildTime * 1000);
  });

  test("without keys it refuses unless --insecure, which passes --allow-untrusted and labels the image", async () => {
    const argsLog = join(scratch, "args-2.log");
    const common = ["alpine", "edge", "--mirror", "http://mirror.invalid/alpine"];
    const refused = await runMkbase([...common, "-t", uniqueTag("alpine-no-keys")], {
      env: env(argsLog, true),
    });
    assert.equal(refused.code, 2, describeResult(refused));
    assert.match(refused.stderr, /mkbase: error: no Alpine signing keys.*--keys-dir/s);

    const tag = uniqueTag("alpine-insecure");
    made.add(tag);
    const result = await runMkbase([...common, "-t", tag, "--insecure"], {
      env: env(argsLog, true),
      timeoutMs: 120_000,
    });
    assert.equal(result.code, 0, describeResult(result));
    assert.match(result.stderr, /warning: --insecure/);
    const [args] = await recordedRuns(argsLog);
    assert.ok(args?.includes("--allow-untrusted"));
    assert.equal((await imageInspect(tag))?.Config?.Labels?.["mkbase.insecure"], "true");
  });

  test("an unknown branch is refused", async () => {
    const result = await runMkbase(["alpine", "3.20", "--mirror", "http://mirror.invalid/alpine"], {
      env: env(join(scratch, "unused.log"), true),
    });
    assert.equal(result.code, 2, describeResult(result));
    assert.match(result.stderr, /mkbase: error: unknown Alpine branch "3\.20"/);
  });
});

describe("mkbase alpine downloading apk-tools-static", () => {
  test("a package signed by a trusted key is verified, unpacked and run", async () => {
    const repo = await serveApkRepository();
    try {
      const argsLog = join(scratch, "args-download.log");
      const tag = uniqueTag("alpine-download");
      made.add(tag);
      const result = await runMkbase(
        ["alpine", "v3.20", "-t", tag, "--mirror", repo.mirror, "--keys-dir", repo.keysDir],
        {
          env: env(argsLog, false),
          timeoutMs: 120_000,
        },
      );
      assert.equal(result.code, 0, describeResult(result));
      assert.match(result.stderr, /downloading and verifying apk-tools-static/);
      assert.equal((await recordedRuns(argsLog)).length, 1, "the downloaded apk.static ran once");
      const run = await dockerRun(tag, ["sh", "-c", "echo ok"]);
      assert.equal(run.stdout, "ok\n", describeResult(run));
    } finally {
      await repo.close();
    }
  });

  test("a tampered package is refused and never run", async () => {
    const repo = await serveApkRepository({ tamper: true });
    try {
      const argsLog = join(scratch, "args-tampered.log");
      const tag = uniqueTag("alpine-tampered");
      made.add(tag);
      const result = await runMkbase(
        ["alpine", "v3.20", "-t", tag, "--mirror", repo.mirror, "--keys-dir", repo.keysDir],
        {
          env: env(argsLog, false),
          timeoutMs: 120_000,
        },
      );
      assert.equal(result.code, 6, describeResult(result));
      assert.match(result.stderr, /do not match the signed checksum; the file was altered/);
      await assert.rejects(readFile(argsLog), { code: "ENOENT" });
      assert.equal(await imageInspect(tag), undefined);
    } finally {
      await repo.close();
    }
  });

  test("a wrong pinned sha256 is refused; the right one is accepted without keys", async () => {
    const repo = await serveApkRepository();
    try {
      const argsLog = join(scratch, "args-pinned.log");
      const wrong = await runMkbase(
        ["alpine", "v3.20", "--mirror", repo.mirror, "--insecure", "--apk-static-sha256", "0".repeat(64)],
        { env: env(argsLog, false), timeoutMs: 120_000 },
      );
      assert.equal(wrong.code, 6, describeResult(wrong));
      assert.match(wrong.stderr, /not the pinned 0{64}/);
      const tag = uniqueTag("alpine-pinned");
      made.add(tag);
      const right = await runMkbase(
        [
          "alpine",
          "v3.20",
          "-t",
          tag,
          "--mirror",
          repo.mirror,
          "--insecure",
          "--apk-static-sha256",
          repo.packageSha256,
        ],
        { env: env(argsLog, false), timeoutMs: 120_000 },
      );
      assert.equal(right.code, 0, describeResult(right));
    } finally {
      await repo.close();
    }
  });

  test("without keys or a pinned sha256 the download is refused", async () => {
    const result = await runMkbase(
      ["alpine", "v3.20", "--mirror", "http://mirror.invalid/alpine", "--insecure"],
      {
        env: env(join(scratch, "unused.log"), false),
      },
    );
    assert.equal(result.code, 6, describeResult(result));
    assert.match(result.stderr, /apk\.static is not on PATH, and a downloaded one could not be verified/i);
  });
});

test("a --keys-dir without *.rsa.pub keys is refused before anything is downloaded", async () => {
  const empty = join(scratch, "no-keys");
  await mkdir(empty);
  const result = await runMkbase(
    [
      "alpine",
      "v3.20",
      "-t",
      uniqueTag("alpine-empty-keys"),
      "--mirror",
      "http://mirror.invalid/alpine",
      "--keys-dir",
      empty,
    ],
    { timeoutMs: 30_000 },
  );
  assert.equal(result.code, 2, describeResult(result));
  assert.match(
    result.stderr,
    new RegExp(`^mkbase: error: ${empty} holds no \\*\\.rsa\\.pub keys to check the packages with\\. `, "m"),
  );
});
