/**
 * `mkbase debootstrap` against Debian's archive with both backends, into the real engine: the image runs,
 * carries nothing of the host, is reproducible, and a Ctrl-C in the middle leaves nothing behind — not
 * a mount, not a temp dir, not an image, and certainly not a damaged host /dev. Bad input fails before
 * any download. Full bootstrap runs are expensive: three in this file, sharing one package cache.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, stat, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  describeResult,
  mkbaseLauncher,
  runChecked,
  runCommand,
  runMkbase,
  spawnMkbase,
  waitForExit,
  waitForStderr,
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
import {
  mirrorFromSources,
  pocketsFromSources,
  readAptSources,
  type Pocket,
} from "../../src/sources/bootstrap/suites.js";
import { registerArm64Emulation } from "./support/emulation.js";

const made = new Set<string>();
let scratch: string;
let cacheDir: string;
before(async () => {
  scratch = await mkdtemp(join(tmpdir(), "mkbase-e2e-debootstrap-"));
  cacheDir = join(scratch, "cache");
});
after(async () => {
  await removeImages(made);
  await rm(scratch, { recursive: true, force: true });
});

/** The environment without SOURCE_DATE_EPOCH, so the epoch is the Release file's date. */
function testEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  delete env.SOURCE_DATE_EPOCH;
  return env;
}

async function bootstrap(args: readonly string[]): Promise<{ tag: string; result: RunResult }> {
  const tag = uniqueTag("debootstrap");
  made.add(tag);
  const result = await runMkbase(["debootstrap", "bookworm", "-t", tag, "--cache-dir", cacheDir, ...args], {
    env: testEnv(),
    timeoutMs: 5 * 60_000,
  });
  assert.equal(result.code, 0, describeResult(result));
  return { tag, result };
}

/** The contents of `path` in the image's (only) layer, read from `docker save`, not from a container. */
async function fileInImage(ref: string, path: string): Promise<string> {
  const dir = await mkdtemp(join(scratch, "save-"));
  try {
    const archive = join(dir, "image.tar");
    await runChecked("docker", ["save", "-o", archive, ref]);
    const manifest = JSON.parse(await runChecked("tar", ["-xOf", archive, "manifest.json"])) as {
      Layers: string[];
    }[];
    const layer = manifest[0]?.Layers[0];
    assert.ok(layer !== undefined, "the saved image has no layer");
    await runChecked("tar", ["-xf", archive, "-C", dir, layer]);
    return await runChecked("tar", ["-xOf", join(dir, layer), path]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The mirror and the pockets mkbase takes from this machine's apt sources. The tests need both pockets
 * there (a Debian 12 machine's default sources list them), or they would check nothing.
 */
async function hostLayout(): Promise<{ mirror: string; pockets: Pocket[] }> {
  const sources = await readAptSources();
  const mirror = mirrorFromSources(sources, "debian");
  assert.ok(mirror !== undefined, "this machine's apt sources list no Debian mirror");
  const pockets = pocketsFromSources(sources, "debian", mirror, "bookworm");
  assert.deepEqual(
    pockets.map((p) => p.suite),
    ["bookworm-updates", "bookworm-security"],
    "this machine's apt sources list no -updates or -security pocket",
  );
  return { mirror, pockets };
}

/** The entries of the image's sources.list (mmdebstrap puts a blank line between them). */
async function sourcesListLines(tag: string): Promise<string[]> {
  return (await fileInImage(tag, "etc/apt/sources.list")).split("\n").filter((line) => line !== "");
}

/** The checks of acceptance 1: Debian 12 that runs apt, with nothing of the build host. */
async function checkDebianImage(tag: string): Promise<void> {
  const osRelease = await dockerRun(tag, ["cat", "/etc/os-release"]);
  assert.equal(osRelease.code, 0, describeResult(osRelease));
  assert.match(osRelease.stdout, /^VERSION_ID="12"$/m);
  assert.match(osRelease.stdout, /^ID=debian$/m);
  const apt = await dockerRun(tag, ["apt-get", "--version"]);
  assert.equal(apt.code, 0, describeResult(apt));
  assert.match(apt.stdout, /^apt \d/);
  const state = await dockerRun(tag, [
    "sh",
    "-c",
    "find /var/lib/apt/lists -type f | wc -l; wc -c < /etc/machine-id; ls /var/cache/apt/archives/*.deb 2>/dev/null | wc -l",
  ]);
  assert.equal(state.code, 0, describeResult(state));
  assert.deepEqual(state.stdout.trim().split(/\s+/), ["0", "0", "0"], "lists, machine-id, cached packages");
  // dpkg's own checks find nothing amiss: every package configured, every packaged file (and
  // directory) in place, apt's dependency tree whole. No network is needed for any of them. The login
  // records the packages created are there, emptied, as in Debian's own images.
  const verify = await dockerRun(tag, [
    "sh",
    "-c",
    "dpkg --audit && dpkg --verify && apt-get check -qq && lastlog -u root >/dev/null && faillog -u root >/dev/null && stat -c '%a %U:%G %s' /var/log/btmp",
  ]);
  assert.equal(verify.code, 0, describeResult(verify));
  assert.equal(verify.stdout, "660 root:utmp 0\n", describeResult(verify));
  const hostResolv = await readFile("/etc/resolv.conf", "utf8").catch(() => "");
  const imageResolv = await fileInImage(tag, "etc/resolv.conf");
  assert.equal(imageResolv, "", "the image's resolv.conf is empty");
  if (hostResolv.trim() !== "") assert.ok(!imageResolv.includes(hostResolv.trim()));
  assert.equal(await fileInImage(tag, "etc/hostname"), "localhost\n");
  const inspected = await imageInspect(tag);
  assert.match(inspected?.Config?.Labels?.["mkbase.packages"] ?? "", /(^|,)apt=\d/);
  assert.equal(inspected?.Config?.Labels?.["mkbase.insecure"], undefined);
  // As the official images: `docker run -it IMAGE` opens the tree's shell.
  assert.deepEqual(inspected?.Config?.Cmd, ["/bin/bash"]);
  const shell = await runCommand("docker", ["run", "--rm", "-i", tag], {
    input: Buffer.from("echo $0 $BASH_VERSION\n"),
  });
  assert.match(shell.stdout, /^\/bin\/bash 5\./, describeResult(shell));
}

const diffIds: string[] = [];

describe("mkbase debootstrap bookworm", () => {
  test("with mmdebstrap: a Debian 12 image that runs apt and holds nothing of the host", async () => {
    const packageList = join(scratch, "packages.txt");
    const { tag, result } = await bootstrap([
      "--backend",
      "mmdebstrap",
      "--package-list",
      packageList,
      "--tmpfs",
      "always",
    ]);
    assert.match(result.stderr, /building the tree in memory, on a private tmpfs/);
    await checkDebianImage(tag);
    const packages = await readFile(packageList, "utf8");
    assert.match(packages, /^apt\t\S+\tamd64$/m);
    // Merged /usr as debootstrap makes it: the marker package, not the converter and its perl.
    assert.match(packages, /^usr-is-merged\t/m);
    assert.doesNotMatch(packages, /^(usrmerge|perl)\t/m);
    const bin = await dockerRun(tag, ["readlink", "/bin"]);
    assert.equal(bin.stdout.trim(), "usr/bin", describeResult(bin));
    // Installed from, and listed for apt: the release and its pockets, laid out as this machine's.
    const { mirror, pockets } = await hostLayout();
    assert.deepEqual(await sourcesListLines(tag), [
      `deb ${mirror} bookworm main`,
      ...pockets.map((p) => `deb ${p.uri} ${p.suite} main`),
    ]);
    const inspected = await imageInspect(tag);
    diffIds.push(inspected?.RootFS.Layers?.[0] ?? "");
    // The epoch is the Release file's date: before now, and the image's created time.
    const created = Date.parse(inspected?.Created ?? "");
    assert.ok(created < Date.now() && created > Date.parse("2023-06-01"), inspected?.Created);
    assert.ok(
      (await readdir(join(cacheDir, "archives"))).some((n) => n.endsWith(".deb")),
      "the cache kept packages",
    );
  });

  test("two mmdebstrap runs against the same archive state give the same layer, in memory or on disk", async () => {
    const { tag, result } = await bootstrap(["--backend", "mmdebstrap", "--tmpfs", "never"]);
    assert.match(result.stderr, /building the tree on disk/);
    const inspected = await imageInspect(tag);
    diffIds.push(inspected?.RootFS.Layers?.[0] ?? "");
    assert.equal(diffIds.length, 2);
    assert.equal(diffIds[0], diffIds[1]);
  });

  test("with debootstrap: the same checks; the pockets are listed for apt, with a warning", async () => {
    const { tag, result } = await bootstrap(["--backend", "debootstrap"]);
    await checkDebianImage(tag);
    const { mirror, pockets } = await hostLayout();
    assert.deepEqual(await sourcesListLines(tag), [
      `deb ${mirror} bookworm main`,
      ...pockets.map((p) => `deb ${p.uri} ${p.suite} main`),
    ]);
    assert.match(
      result.stderr,
      /warning: debootstrap installs from bookworm alone: the image lists bookworm-updates and bookworm-security/,
    );
  });

  test("a foreign architecture: arm64 through qemu-user-static", async () => {
    assert.ok(await registerArm64Emulation(), "qemu-aarch64 could not be registered with binfmt_misc");
    const { tag } = await bootstrap(["--arch", "arm64"]);
    const inspected = await imageInspect(tag);
    assert.equal(inspected?.Architecture, "arm64");
    const run = await dockerRun(tag, ["dpkg", "--print-architecture"], {
      dockerArgs: ["--platform", "linux/arm64"],
    });
    assert.equal(run.code, 0, describeResult(run));
    assert.equal(run.stdout.trim(), "arm64");
  });

  test("Ctrl-C while debootstrap runs: exit within 10 s, no mount, no temp dir, no image, host /dev intact", async (t) => {
    const before = await imageIds();
    const label = failureLabel();
    const tag = uniqueTag("debootstrap-interrupted");
    const tempBefore = new Set(await readdir(tmpdir()));
    const child = spawnMkbase(
      [
        "debootstrap",
        "bookworm",
        "--backend",
        "debootstrap",
        "--cache-dir",
        cacheDir,
        "-t",
        tag,
        "--label",
        label.flag,
      ],
      { env: testEnv() },
    );
    await waitForStderr(
      child,
      /I: (Installing core packages|Unpacking required packages|Configuring required packages)/,
      180_000,
    );
    const workspaces = (await readdir(tmpdir())).filter(
      (n) => n.startsWith("mkbase-bootstrap-") && !tempBefore.has(n),
    );
    assert.equal(workspaces.length, 1, `expected one new workspace, saw ${workspaces.join(", ")}`);
    const workspace = join(tmpdir(), workspaces[0] as string);
    const mountedAtInterrupt = (await readFile("/proc/self/mountinfo", "utf8"))
      .split("\n")
      .filter((line) => line.includes(`${workspace}/`)).length;
    t.diagnostic(`${mountedAtInterrupt} mount(s) below the workspace when SIGINT was sent`);
    const interruptedAt = Date.now();
    child.kill("SIGINT");
    const result = await waitForExit(child);
    assert.ok(Date.now() - interruptedAt < 10_000, `took ${Date.now() - interruptedAt} ms`);
    assert.equal(result.code, 130, describeResult(result));
    const mountinfo = await readFile("/proc/self/mountinfo", "utf8");
    assert.ok(!mountinfo.includes(workspace), `still mounted under ${workspace}`);
    await assert.rejects(stat(workspace), { code: "ENOENT" });
    assert.ok((await stat("/dev/null")).isCharacterDevice(), "the host's /dev/null is no longer a device");
    assert.equal(await imageInspect(tag), undefined);
    assert.deepEqual(await leftBehind(before, label, tag), []);
  });

  test("a TMPDIR too small for the tree: one message that says so, and nothing left", async () => {
    const small = await mkdtemp(join(scratch, "small-tmpdir-"));
    await runChecked("mount", ["-t", "tmpfs", "-o", "size=48m", "mkbase-test", small]);
    try {
      const before = await imageIds();
      const label = failureLabel();
      const tag = uniqueTag("debootstrap-full");
      const result = await runMkbase(
        [
          "debootstrap",
          "bookworm",
          "--backend",
          "mmdebstrap",
          "--tmpfs",
          "never",
          "--cache-dir",
          cacheDir,
          "-t",
          tag,
          "--label",
          label.flag,
        ],
        { env: testEnv({ TMPDIR: small }), timeoutMs: 5 * 60_000 },
      );
      assert.equal(result.code, 6, describeResult(result));
      assert.match(
        result.stderr,
        new RegExp(
          `^mkbase: error: the tree did not fit: TMPDIR=${small}, where mkbase built it, is full\\. `,
          "m",
        ),
      );
      assert.equal(result.stderr.match(/^mkbase: error:/gm)?.length, 1, describeResult(result));
      assert.deepEqual(await readdir(small), [], "the workspace was removed");
      assert.ok(!(await readFile("/proc/self/mountinfo", "utf8")).includes(`${small}/`), "a mount remains");
      assert.deepEqual(await leftBehind(before, label, tag), []);
    } finally {
      await runChecked("umount", [small]);
    }
  });
});

describe("mkbase debootstrap refuses bad input before any download", () => {
  /**
   * Runs `mkbase debootstrap ARGS` (as nobody with `asNobody`), which must end within seconds and leave
   * no workspace behind.
   */
  async function refused(
    args: readonly string[],
    options: { env?: NodeJS.ProcessEnv; asNobody?: boolean } = {},
  ): Promise<RunResult> {
    const tempBefore = new Set(await readdir(tmpdir()));
    const started = Date.now();
    const mkbase = [process.execPath, mkbaseLauncher, "debootstrap", ...args];
    const [command, ...rest] = options.asNobody
      ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ...mkbase]
      : mkbase;
    const result = await runCommand(command as string, rest, {
      env: options.env ?? testEnv(),
      timeoutMs: 30_000,
    });
    assert.ok(Date.now() - started < 15_000, "a refusal must not wait for the network");
    const created = (await readdir(tmpdir())).filter(
      (n) => n.startsWith("mkbase-bootstrap-") && !tempBefore.has(n),
    );
    assert.deepEqual(created, [], "no workspace was made");
    return result;
  }

  test("an unknown suite", async () => {
    const result = await refused(["bookwork"]);
    assert.equal(result.code, 2, describeResult(result));
    assert.match(result.stderr, /mkbase: error: unknown suite "bookwork".*bookworm/s);
  });

  test("an unknown architecture", async () => {
    const result = await refused(["bookworm", "--arch", "amd46"]);
    assert.equal(result.code, 2, describeResult(result));
    assert.match(result.stderr, /mkbase: error: unknown architecture "amd46" for Debian/);
  });

  test("a missing tool, named with its package", async () => {
    const emptyPath = await mkdtemp(join(scratch, "empty-path-"));
    const result = await refused(["bookworm", "--backend", "debootstrap"], {
      env: testEnv({ PATH: emptyPath }),
    });
    assert.equal(result.code, 6, describeResult(result));
    assert.match(result.stderr, /mkbase: error: debootstrap is not installed.*apt-get install debootstrap/s);
    const neither = await refused(["bookworm"], { env: testEnv({ PATH: emptyPath }) });
    assert.equal(neither.code, 6, describeResult(neither));
    assert.match(neither.stderr, /mkbase: error: neither mmdebstrap nor debootstrap/);
  });

  test("a foreign architecture with mmdebstrap but without arch-test", async () => {
    assert.ok(await registerArm64Emulation(), "qemu-aarch64 could not be registered with binfmt_misc");
    const onlyMmdebstrap = await mkdtemp(join(scratch, "mmdebstrap-only-"));
    await symlink("/usr/bin/mmdebstrap", join(onlyMmdebstrap, "mmdebstrap"));
    const result = await refused(["bookworm", "--arch", "arm64"], {
      env: testEnv({ PATH: onlyMmdebstrap }),
    });
    assert.equal(result.code, 6, describeResult(result));
    assert.match(result.stderr, /needs arch-test to bootstrap arm64.*apt-get install arch-test/s);
  });

  test("a --keyring that does not exist", async () => {
    const result = await refused(["bookworm", "--keyring", join(scratch, "missing.gpg")]);
    assert.equal(result.code, 2, describeResult(result));
    assert.match(result.stderr, /--keyring .*missing\.gpg does not exist/);
  });

  test("a --cache-dir that cannot be made (below /proc, where node's own mkdir -p never returns)", async () => {
    const result = await refused(["bookworm", "--cache-dir", "/proc/mkbase-cache", "-t", uniqueTag("cache")]);
    assert.equal(result.code, 2, describeResult(result));
    assert.match(
      result.stderr,
      /^mkbase: error: --cache-dir \/proc\/mkbase-cache cannot be made or used \(ENOENT\)/m,
    );
  });

  test("not root", async () => {
    const result = await refused(["bookworm", "-t", uniqueTag("not-root")], { asNobody: true });
    assert.equal(result.code, 6, describeResult(result));
    assert.match(result.stderr, /must run as root.*sudo/s);
  });

  test("--dry-run prints the plan and builds nothing", async () => {
    const result = await refused(["bookworm", "--dry-run", "--include", "curl"]);
    assert.equal(result.code, 0, describeResult(result));
    assert.match(result.stdout, /^tool: +(mmdebstrap|debootstrap) /m);
    assert.match(result.stdout, /^keyring: +\/\S+archive-keyring\.(gpg|pgp)$/m);
    assert.match(result.stdout, /^packages: +minbase set \+ curl$/m);
    assert.match(result.stdout, /^mirror: /m);
  });

  test("--dry-run refuses the flags the build would refuse, and prints no plan", async () => {
    for (const flags of [
      ["-t", "Bad:Tag"],
      ["--source-date-epoch", "abc"],
      ["--volume", "rel"],
      ["--cmd", '["bad'],
      ["--via", "import", "-o", `type=tar,dest=${join(scratch, "never.tar")}`],
    ]) {
      const result = await refused(["bookworm", "--dry-run", ...flags]);
      assert.equal(result.code, 2, describeResult(result));
      assert.match(result.stderr, /^mkbase: error: /);
      assert.equal(result.stdout, "");
    }
  });

  test("a TMPDIR that does not exist, in one paragraph", async () => {
    const missing = join(scratch, "missing-tmp");
    const result = await refused(["bookworm", "--tmpfs", "never", "-t", uniqueTag("tmpdir")], {
      env: testEnv({ TMPDIR: missing }),
    });
    assert.equal(result.code, 2, describeResult(result));
    assert.equal(
      result.stderr,
      `mkbase: error: the temporary directory could not be made in TMPDIR=${missing} (ENOENT: it does not exist). Point TMPDIR at a writable directory with room for the build, e.g. TMPDIR=/var/tmp.\n`,
    );
  });
});

describe("mkbase debootstrap trusts --keyring alone", () => {
  const removedKeys = "/usr/share/keyrings/debian-archive-removed-keys.gpg";

  /**
   * Runs a build that must fail, and checks that it left no image and no workspace (which is removed
   * only once nothing is mounted below it).
   */
  async function failedBuild(args: readonly string[]): Promise<RunResult> {
    const before = await imageIds();
    const label = failureLabel();
    const tag = uniqueTag("debootstrap-untrusted");
    const tempBefore = new Set(await readdir(tmpdir()));
    const result = await runMkbase(
      ["debootstrap", "bookworm", "-t", tag, "--label", label.flag, "--cache-dir", cacheDir, ...args],
      { env: testEnv(), timeoutMs: 5 * 60_000 },
    );
    const created = (await readdir(tmpdir())).filter(
      (n) => n.startsWith("mkbase-bootstrap-") && !tempBefore.has(n),
    );
    assert.deepEqual(created, [], "the workspace was removed");
    assert.deepEqual(await leftBehind(before, label, tag), []);
    return result;
  }

  /** An ASCII-armored keyring of a key made for the test: it signs nothing of Debian's. */
  async function unrelatedKeyring(): Promise<string> {
    const home = await mkdtemp(join(scratch, "gnupg-"));
    const gpg = (args: string[]) => runChecked("gpg", ["--homedir", home, "--batch", ...args]);
    await gpg([
      "--passphrase",
      "",
      "--quick-gen-key",
      "mkbase test <test@example.invalid>",
      "ed25519",
      "sign",
      "never",
    ]);
    const keyring = join(scratch, "unrelated.asc");
    await gpg(["--output", keyring, "--armor", "--export"]);
    await runChecked("gpgconf", ["--homedir", home, "--kill", "all"]);
    return keyring;
  }

  // mmdebstrap's own --keyring leaves the host's trusted.gpg.d trusted, and may add a signed-by for
  // Debian's keyring to the sources: either would let these builds succeed.
  test("with mmdebstrap, a keyring that does not sign the archive stops the build", async () => {
    for (const keyring of [removedKeys, await unrelatedKeyring()]) {
      const result = await failedBuild(["--backend", "mmdebstrap", "--keyring", keyring]);
      assert.equal(result.code, 6, describeResult(result));
      assert.match(
        result.stderr,
        /mkbase: error: the signatures of the bookworm archive could not be verified with the keyring \S+: the Release file is signed by keys? [0-9A-F]{16}/,
      );
      assert.ok(result.stderr.includes(`with the keyring ${keyring}:`), result.stderr);
      assert.doesNotMatch(result.stderr, /internal error|\n\s+at /);
    }
  });

  test("with debootstrap, the same", async () => {
    const result = await failedBuild(["--backend", "debootstrap", "--keyring", removedKeys]);
    assert.equal(result.code, 6, describeResult(result));
    assert.match(
      result.stderr,
      /could not be verified with the keyring \S+removed-keys\.gpg: the Release file is signed by key/,
    );
  });

  test("a file that is no keyring is refused before any download", async () => {
    const started = Date.now();
    const passwd = await failedBuild(["--keyring", "/etc/passwd"]);
    assert.equal(passwd.code, 2, describeResult(passwd));
    assert.match(passwd.stderr, /^mkbase: error: --keyring \/etc\/passwd is not an OpenPGP keyring\. /m);
    const keybox = join(scratch, "keybox.gpg");
    // What `gpg --keyring NEW-FILE` makes: a keybox, which apt does not read.
    await runChecked("gpg", [
      "--homedir",
      await mkdtemp(join(scratch, "gnupg-")),
      "--batch",
      "--no-default-keyring",
      "--keyring",
      keybox,
      "--fingerprint",
    ]);
    const kbx = await failedBuild(["--backend", "mmdebstrap", "--keyring", keybox]);
    assert.equal(kbx.code, 2, describeResult(kbx));
    assert.match(kbx.stderr, /is a GnuPG keybox, which apt cannot read.*--export/s);
    assert.ok(Date.now() - started < 20_000, "a refusal must not wait for the network");
  });
});

describe("mkbase debootstrap --package-list", () => {
  test("that cannot be written is refused before any download, in one paragraph", async () => {
    const tempBefore = new Set(await readdir(tmpdir()));
    const started = Date.now();
    const result = await runMkbase(
      [
        "debootstrap",
        "bookworm",
        "-t",
        uniqueTag("package-list"),
        "--package-list",
        join(scratch, "missing", "p.txt"),
      ],
      { env: testEnv(), timeoutMs: 60_000 },
    );
    assert.ok(Date.now() - started < 15_000, "a refusal must not wait for the bootstrap");
    assert.equal(result.code, 5, describeResult(result));
    assert.match(
      result.stderr,
      /^mkbase: error: cannot write the package list \S+missing\/p\.txt: there is no directory/m,
    );
    assert.doesNotMatch(result.stderr, /internal error|ENOENT|\n\s+at /);
    const created = (await readdir(tmpdir())).filter(
      (n) => n.startsWith("mkbase-bootstrap-") && !tempBefore.has(n),
    );
    assert.deepEqual(created, [], "no workspace was made");
  });
});
