/**
 * `mkbase pacstrap` against a local file:// repository built by the test (busybox-based, signed with a
 * key the test generates): the image runs, /dev holds the rebuilt nodes, the pacman keyring was
 * initialised but ships no private key (not even with --no-clean), the image has the official images'
 * PATH, signatures fail closed, and no gpg-agent outlives a run.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { describeResult, escapeRegExp, runChecked, runMkbase, type RunResult } from "./support/cli.js";
import { dockerRun, imageInspect, removeImages, uniqueTag } from "./support/docker.js";
import { buildPacmanRepo, pacmanRepoBuildDate, type PacmanRepo } from "./support/pacman-repo.js";

const made = new Set<string>();
let repo: PacmanRepo;
let otherRepo: PacmanRepo;
let scratch: string;
/** Agents of {@link workspaceGpgAgents} that were running before these tests (not theirs to judge). */
let agentsBefore: Set<string>;
before(async () => {
  agentsBefore = new Set(await workspaceGpgAgents());
  scratch = await mkdtemp(join(tmpdir(), "mkbase-e2e-pacstrap-"));
  repo = await buildPacmanRepo("mkbasetest", { sign: true });
  // Signed by a different key: its keyring must not vouch for the first repository's packages.
  otherRepo = await buildPacmanRepo("mkbasetest", { sign: true });
});
after(async () => {
  await removeImages(made);
  await repo.dispose();
  await otherRepo.dispose();
  await rm(scratch, { recursive: true, force: true });
});

function env(): NodeJS.ProcessEnv {
  const copy = { ...process.env };
  delete copy.SOURCE_DATE_EPOCH;
  return copy;
}

async function pacstrap(tag: string, args: readonly string[]): Promise<RunResult> {
  made.add(tag);
  return runMkbase(
    [
      "pacstrap",
      "-t",
      tag,
      "--mirror",
      repo.server,
      "--repositories",
      repo.name,
      "--packages",
      "busybox",
      ...args,
    ],
    { env: env(), timeoutMs: 120_000 },
  );
}

/** `PID ARGS` of every gpg-agent whose command line names a mkbase workspace. */
async function workspaceGpgAgents(): Promise<string[]> {
  const processes = await runChecked("ps", ["-eo", "pid=,args="]);
  return processes.split("\n").filter((line) => /\bgpg-agent\b.*\/mkbase-bootstrap-/.test(line));
}

/** Fails when a gpg-agent started for a workspace of these tests is still running. */
async function assertNoGpgAgentLeft(): Promise<void> {
  const left = (await workspaceGpgAgents()).filter((agent) => !agentsBefore.has(agent));
  assert.deepEqual(left, [], "no gpg-agent of a removed workspace is left running");
}

/** `ls -l`-style listing of the image's /dev, read from an exported container (no runtime /dev mount). */
async function imageDevListing(tag: string): Promise<string> {
  const container = (await runChecked("docker", ["create", tag, "/usr/bin/busybox", "true"])).trim();
  try {
    const archive = join(scratch, `${container}.tar`);
    await runChecked("docker", ["export", "-o", archive, container]);
    return await runChecked("tar", ["-tvf", archive, "dev/"]);
  } finally {
    await runChecked("docker", ["rm", container]);
  }
}

describe("mkbase pacstrap", () => {
  test("with the packager's keyring: an image that runs busybox, with /dev rebuilt and no private key", async () => {
    const tag = uniqueTag("pacstrap");
    const packageList = join(scratch, "packages.txt");
    assert.ok(repo.keyring !== undefined);
    const result = await pacstrap(tag, ["--keyring", repo.keyring, "--package-list", packageList]);
    assert.equal(result.code, 0, describeResult(result));
    assert.doesNotMatch(result.stderr, /--insecure/);
    await assertNoGpgAgentLeft();

    const ok = await dockerRun(tag, ["/usr/bin/busybox", "sh", "-c", "echo ok"]);
    assert.equal(ok.code, 0, describeResult(ok));
    assert.equal(ok.stdout, "ok\n");

    const dev = await imageDevListing(tag);
    // (dev/console is not checked: the engine's init layer puts its own file there.)
    assert.match(dev, /^crw-rw-rw- +root\/root +1,3 .* dev\/null$/m);
    assert.match(dev, /^crw-rw-rw- +root\/root +1,9 .* dev\/urandom$/m);
    assert.match(dev, /^crw-rw-rw- +root\/root +4,0 .* dev\/tty0$/m);
    assert.match(dev, /^drwxrwxrwt .* dev\/shm\/$/m);
    assert.match(dev, /^lrwxrwxrwx .* dev\/fd -> \/proc\/self\/fd$/m);

    // The stand-in pacman-key left a secret key on --init, as the real one does: the keyring was
    // initialised inside the tree, and the secret did not reach the image.
    const keyring = await dockerRun(tag, ["/usr/bin/busybox", "sh", "-c", "cd /etc/pacman.d/gnupg && ls -A"]);
    assert.equal(keyring.code, 0, describeResult(keyring));
    assert.deepEqual(keyring.stdout.trim().split(/\s+/), ["pubring.gpg"]);
    const settings = await dockerRun(tag, [
      "/usr/bin/busybox",
      "sh",
      "-c",
      "cat /etc/locale.conf; readlink /etc/localtime",
    ]);
    assert.equal(settings.stdout, "LANG=C.UTF-8\n/usr/share/zoneinfo/UTC\n");

    const inspected = await imageInspect(tag);
    assert.equal(inspected?.Config?.Labels?.["mkbase.packages"], "busybox=1.36.1-1,filesystem=2024.01-1");
    assert.deepEqual(inspected?.Config?.Cmd, ["/bin/sh"]);
    assert.deepEqual(inspected?.Config?.Env, [
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]);
    assert.equal(inspected?.Config?.Labels?.["mkbase.insecure"], undefined);
    // The epoch is the packages' build date.
    assert.equal(Date.parse(inspected?.Created ?? ""), pacmanRepoBuildDate * 1000);
    assert.equal(
      await readFile(packageList, "utf8"),
      "busybox\t1.36.1-1\tx86_64\nfilesystem\t2024.01-1\tx86_64\n",
    );
  });

  test("packages signed by a key the keyring does not hold are refused", async () => {
    const tag = uniqueTag("pacstrap-untrusted");
    assert.ok(otherRepo.keyring !== undefined);
    const result = await pacstrap(tag, ["--keyring", otherRepo.keyring]);
    assert.equal(result.code, 6, describeResult(result));
    // pacman's own last words are about something else ("keyring is not writable"): the error says why.
    assert.match(
      result.stderr,
      new RegExp(
        `^mkbase: error: the package signatures could not be verified with the keyring ${escapeRegExp(otherRepo.keyring)}: required key missing from keyring\\. Pass --keyring a keyring`,
        "m",
      ),
    );
    assert.equal(await imageInspect(tag), undefined);
    await assertNoGpgAgentLeft();
  });

  test("--no-clean keeps the logs but not the private key; -c ENV extends the default PATH", async () => {
    const tag = uniqueTag("pacstrap-no-clean");
    assert.ok(repo.keyring !== undefined);
    const result = await pacstrap(tag, [
      "--keyring",
      repo.keyring,
      "--no-clean",
      "-c",
      "ENV PATH=/opt/x:$PATH",
    ]);
    assert.equal(result.code, 0, describeResult(result));
    await assertNoGpgAgentLeft();
    const tree = await dockerRun(tag, [
      "/usr/bin/busybox",
      "sh",
      "-c",
      "ls -A /etc/pacman.d/gnupg; cat /var/log/pacman-key.args; echo $PATH",
    ]);
    assert.equal(tree.code, 0, describeResult(tree));
    // The stand-in pacman-key's log is what the cleanup profile would have removed.
    assert.equal(
      tree.stdout,
      "pubring.gpg\n--init\n--populate\n/opt/x:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
    );
  });

  test("--insecure skips the checks, warns, and labels the image", async () => {
    const tag = uniqueTag("pacstrap-insecure");
    const result = await pacstrap(tag, ["--insecure"]);
    assert.equal(result.code, 0, describeResult(result));
    assert.match(result.stderr, /warning: --insecure: package signatures were NOT checked/);
    assert.equal((await imageInspect(tag))?.Config?.Labels?.["mkbase.insecure"], "true");
  });

  test("a --keyring that does not exist is refused before anything runs", async () => {
    const result = await pacstrap(uniqueTag("pacstrap-bad-keyring"), [
      "--keyring",
      join(scratch, "missing.gpg"),
    ]);
    assert.equal(result.code, 2, describeResult(result));
    assert.match(result.stderr, /--keyring .*missing\.gpg does not exist/);
  });
});
