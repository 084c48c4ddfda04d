/**
 * The pure parts of the bootstrappers: suite tables, apt sources, Release dates, package databases, the
 * cleanup profile (which must never reach outside the tree), the rebuilt /dev, the command lines, and
 * the image config.
 */
import assert from "node:assert/strict";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { bootstrapConfig, describePockets } from "../../src/cli/bootstrap.js";
import type { ImageFlags } from "../../src/cli/image-options.js";
import { SinkError, UsageError } from "../../src/errors.js";
import type { EntrySource, TarEntry } from "../../src/tar/entry.js";
import { cleanRootfs } from "../../src/sources/bootstrap/cleanup.js";
import {
  aptTrustPaths,
  debianCommandLine,
  isSignatureFailure,
  prepareAptTrust,
  runDebianBootstrap,
  signatureReason,
  type DebianPlan,
} from "../../src/sources/bootstrap/debian.js";
import { DEV_NODES, DevNodesSource } from "../../src/sources/bootstrap/dev-nodes.js";
import { finishRootfs } from "../../src/sources/bootstrap/finish.js";
import {
  formatPackageList,
  newestBuildTime,
  packageListLabel,
  parseApkInstalled,
  parseDpkgStatus,
  parsePacmanDesc,
} from "../../src/sources/bootstrap/installed-packages.js";
import {
  checkArchitecture,
  lookupSuite,
  mirrorFromSources,
  pocketsFromSources,
  parseDeb822Sources,
  parseOneLineSources,
  releaseDate,
} from "../../src/sources/bootstrap/suites.js";

let scratch: string;
before(() => {
  scratch = mkdtempSync(join(tmpdir(), "mkbase-unit-profile-"));
});
after(() => {
  rmSync(scratch, { recursive: true, force: true });
});

describe("suites", () => {
  it("maps codenames and aliases to their distribution", () => {
    assert.deepEqual(lookupSuite("bookworm"), { family: "debian", suite: "bookworm", version: "12" });
    assert.deepEqual(lookupSuite("stable"), { family: "debian", suite: "stable" });
    assert.deepEqual(lookupSuite("noble"), { family: "ubuntu", suite: "noble", version: "24.04" });
    assert.throws(() => lookupSuite("bookwork"), UsageError);
  });

  it("knows each distribution's architectures", () => {
    checkArchitecture("arm64", "debian");
    assert.throws(() => checkArchitecture("mips64el", "ubuntu"), UsageError);
    assert.throws(() => checkArchitecture("x86_64", "debian"), UsageError);
  });

  it("finds a mirror in one-line and deb822 apt sources, by suite", () => {
    const sources = [
      ...parseOneLineSources("# deb http://old/ bookworm main\ndeb [arch=amd64] http://ppa/ nodistro main\n"),
      ...parseDeb822Sources(
        "Types: deb\nURIs: http://security/\nSuites: bookworm-security\n\nTypes: deb deb-src\nURIs: http://mirror/debian\nSuites: bookworm bookworm-updates\nComponents: main\n",
      ),
      ...parseOneLineSources("deb http://ubuntu-mirror/ubuntu noble main universe\n"),
    ];
    assert.equal(mirrorFromSources(sources, "debian"), "http://mirror/debian");
    assert.equal(mirrorFromSources(sources, "ubuntu"), "http://ubuntu-mirror/ubuntu");
    assert.equal(mirrorFromSources(sources.slice(0, 2), "ubuntu"), undefined);
  });

  it("takes the -updates and -security pockets as the machine's sources lay them out", () => {
    const sources = parseDeb822Sources(
      "Types: deb\nURIs: http://mirror/debian\nSuites: trixie trixie-updates\n\nTypes: deb\nURIs: http://mirror/debian-security\nSuites: trixie-security\n",
    );
    assert.deepEqual(pocketsFromSources(sources, "debian", "http://mirror/debian/", "bookworm"), [
      { uri: "http://mirror/debian/", suite: "bookworm-updates" },
      { uri: "http://mirror/debian-security", suite: "bookworm-security" },
    ]);
    // A development suite has neither; the Debian layout says nothing of Ubuntu's.
    assert.deepEqual(pocketsFromSources(sources, "debian", "http://mirror/debian", "sid"), []);
    assert.deepEqual(pocketsFromSources(sources, "ubuntu", "http://mirror/ubuntu", "noble"), []);
    // -updates from another mirror than the one the release comes from is not taken.
    assert.deepEqual(pocketsFromSources(sources, "debian", "http://other/debian", "bookworm"), [
      { uri: "http://mirror/debian-security", suite: "bookworm-security" },
    ]);
    const ubuntu = parseOneLineSources(
      "deb http://u/ubuntu noble main\ndeb http://u/ubuntu noble-updates main\ndeb http://u/ubuntu noble-security main\n",
    );
    assert.deepEqual(pocketsFromSources(ubuntu, "ubuntu", "http://u/ubuntu", "jammy"), [
      { uri: "http://u/ubuntu", suite: "jammy-updates" },
      { uri: "http://u/ubuntu", suite: "jammy-security" },
    ]);
  });

  it("reads the Release file's Date as the epoch", () => {
    assert.equal(
      releaseDate("Origin: Debian\nDate: Sat, 10 May 2025 09:12:34 UTC\nSuite: stable\n"),
      1746868354,
    );
    assert.equal(releaseDate("Origin: Debian\n"), undefined);
  });
});

describe("installed packages", () => {
  it("reads dpkg status, skipping removed, purged and half-installed packages", () => {
    const status =
      "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13\n\n" +
      "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n" +
      "Package: purged\nStatus: purge ok not-installed\nVersion: 2\n\n" +
      "Package: broken\nStatus: install reinstreq half-installed\nVersion: 3\n\n" +
      "Package: adduser\nStatus: install ok installed\nArchitecture: all\nVersion: 3.134\n";
    const packages = parseDpkgStatus(status);
    assert.equal(formatPackageList(packages), "adduser\t3.134\tall\nzlib1g\t1:1.2.13\tamd64\n");
    assert.equal(packageListLabel(packages), "adduser=3.134,zlib1g=1:1.2.13");
  });

  it("reads pacman desc files and apk's installed db with build times", () => {
    const desc = parsePacmanDesc(
      "%NAME%\nbusybox\n\n%VERSION%\n1.36-1\n\n%ARCH%\nx86_64\n\n%BUILDDATE%\n1700000000\n",
    );
    assert.deepEqual(desc, {
      name: "busybox",
      version: "1.36-1",
      architecture: "x86_64",
      buildTime: 1700000000,
    });
    const apk = parseApkInstalled(
      "C:Q1abc\nP:musl\nV:1.2.5-r0\nA:x86_64\nt:1710000000\n\nP:busybox\nV:1.36\nA:x86_64\nt:1720000000\n",
    );
    assert.deepEqual(
      apk.map((p) => p.name),
      ["busybox", "musl"],
    );
    assert.equal(newestBuildTime(apk), 1720000000);
  });
});

function makeTree(root: string, files: Record<string, string>): void {
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(root, path, ".."), { recursive: true });
    writeFileSync(join(root, path), content);
  }
}

describe("--package-list", () => {
  const status = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13\n";
  const finish = (root: string, packageListFile: string) =>
    finishRootfs(root, {
      distribution: "debian",
      clean: false,
      slim: false,
      insecure: false,
      packageListFile,
      onProgress: () => undefined,
    });

  it("is written in place of the file, with nothing else left beside it", async () => {
    const root = join(scratch, "list-tree");
    makeTree(root, { "var/lib/dpkg/status": status });
    const dir = join(scratch, "list-out");
    mkdirSync(dir);
    await finish(root, join(dir, "packages.txt"));
    assert.equal(readFileSync(join(dir, "packages.txt"), "utf8"), "zlib1g\t1:1.2.13\tamd64\n");
    assert.deepEqual(readdirSync(dir), ["packages.txt"]);
  });

  it("that cannot be written is a destination error with a hint, not an internal error", async () => {
    const root = join(scratch, "list-tree-2");
    makeTree(root, { "var/lib/dpkg/status": status });
    await assert.rejects(finish(root, join(scratch, "no-such-dir", "packages.txt")), (error: unknown) => {
      assert.ok(error instanceof SinkError, String(error));
      assert.match(
        error.message,
        /^cannot write the package list .*no-such-dir\/packages\.txt: there is no directory/,
      );
      assert.match(error.hint ?? "", /mkdir -p/);
      return true;
    });
    await assert.rejects(finish(root, scratch), (error: unknown) => {
      assert.ok(error instanceof SinkError, String(error));
      assert.match(error.message, /is a directory$/);
      return true;
    });
  });
});

describe("cleanup profile", () => {
  it("removes runtime state, caches, indexes and logs, and neutralises host files", async () => {
    const root = join(scratch, "debian");
    makeTree(root, {
      "proc/1/status": "x",
      "dev/null-copy": "x",
      "run/lock/x": "x",
      "tmp/junk": "x",
      "var/lib/apt/lists/host_dists_bookworm_InRelease": "x",
      "var/lib/apt/lists/partial/host_dists_bookworm_InRelease": "x",
      "var/lib/apt/lists/lock": "",
      "var/cache/apt/pkgcache.bin": "x",
      "var/cache/apt/archives/libc6.deb": "x",
      "var/log/apt/history.log": "x",
      "var/log/dpkg.log": "x",
      "var/log/btmp": "x",
      "var/log/wtmp": "x",
      "var/log/lastlog": "x",
      "var/log/faillog": "x",
      "var/lib/dpkg/status": "Package: x\n",
      "var/lib/dpkg/status-old": "x",
      "etc/machine-id": "0123456789abcdef\n",
      "etc/resolv.conf": "nameserver 10.1.2.3\n",
      "etc/hostname": "build-host\n",
      "etc/apt/apt.conf.d/99mmdebstrap": 'Acquire::http::Proxy "http://proxy:3128";\n',
      "usr/share/doc/libc6/copyright": "x",
      "usr/share/doc/libc6/changelog.gz": "x",
    });
    chmodSync(join(root, "var/log/btmp"), 0o660);
    await cleanRootfs(root, { distribution: "debian", slim: false });
    for (const dir of ["proc", "dev", "run", "tmp", "var/lib/apt/lists/partial"]) {
      assert.deepEqual(readdirSync(join(root, dir)), [], dir);
    }
    // The apt package ships the (empty) partial directory: `dpkg -V apt` must not find it missing.
    assert.deepEqual(readdirSync(join(root, "var/lib/apt/lists")), ["partial"]);
    assert.deepEqual(readdirSync(join(root, "var/cache/apt")), ["archives"]);
    // The login records stay, emptied, with their mode: packages create them once, and `lastlog` and
    // `faillog` fail without them.
    assert.deepEqual(readdirSync(join(root, "var/log")).sort(), [
      "apt",
      "btmp",
      "faillog",
      "lastlog",
      "wtmp",
    ]);
    for (const name of ["btmp", "faillog", "lastlog", "wtmp"]) {
      assert.equal(statSync(join(root, "var/log", name)).size, 0, name);
    }
    assert.equal(statSync(join(root, "var/log/btmp")).mode & 0o777, 0o660);
    assert.deepEqual(readdirSync(join(root, "var/log/apt")), []);
    assert.equal(existsSync(join(root, "var/lib/dpkg/status")), true);
    assert.equal(existsSync(join(root, "var/lib/dpkg/status-old")), false);
    assert.equal(readFileSync(join(root, "etc/machine-id"), "utf8"), "");
    assert.equal(readFileSync(join(root, "etc/resolv.conf"), "utf8"), "");
    assert.equal(readFileSync(join(root, "etc/hostname"), "utf8"), "localhost\n");
    assert.equal(existsSync(join(root, "etc/apt/apt.conf.d/99mmdebstrap")), false);
    // Without --slim, documentation stays.
    assert.equal(existsSync(join(root, "usr/share/doc/libc6/changelog.gz")), true);
  });

  it("with --slim drops docs but keeps copyright files, and writes the container settings", async () => {
    const root = join(scratch, "slim");
    makeTree(root, {
      "usr/share/doc/libc6/copyright": "x",
      "usr/share/doc/libc6/changelog.gz": "x",
      "usr/share/man/man1/ls.1.gz": "x",
      "usr/share/locale/de/LC_MESSAGES/x.mo": "x",
      "usr/share/locale/locale.alias": "x",
      "etc/apt/apt.conf.d/70debconf": "x",
      "etc/dpkg/dpkg.cfg.d/.keep": "",
    });
    await cleanRootfs(root, { distribution: "debian", slim: true });
    assert.deepEqual(readdirSync(join(root, "usr/share/doc/libc6")), ["copyright"]);
    assert.deepEqual(readdirSync(join(root, "usr/share/man")), []);
    assert.deepEqual(readdirSync(join(root, "usr/share/locale")), ["locale.alias"]);
    assert.match(
      readFileSync(join(root, "etc/apt/apt.conf.d/docker-no-recommends"), "utf8"),
      /Install-Recommends "false"/,
    );
    assert.match(
      readFileSync(join(root, "etc/dpkg/dpkg.cfg.d/docker-excludes"), "utf8"),
      /path-exclude \/usr\/share\/doc/,
    );
  });

  it("never follows a symlink out of the tree", async () => {
    const outside = join(scratch, "outside");
    makeTree(outside, { "lists/precious": "x", "log/precious.log": "x" });
    const root = join(scratch, "escape");
    mkdirSync(join(root, "var/lib/apt"), { recursive: true });
    symlinkSync(join(outside, "lists"), join(root, "var/lib/apt/lists"));
    symlinkSync(join(outside, "log"), join(root, "var/log"));
    mkdirSync(join(root, "etc"), { recursive: true });
    symlinkSync("../run/systemd/resolve/stub-resolv.conf", join(root, "etc/resolv.conf"));
    await cleanRootfs(root, { distribution: "debian", slim: true });
    assert.equal(existsSync(join(outside, "lists/precious")), true);
    assert.equal(existsSync(join(outside, "log/precious.log")), true);
    assert.ok(lstatSync(join(root, "etc/resolv.conf")).isSymbolicLink());
  });

  it("brings /etc/shadow's last-change days after the epoch back to the epoch's day", async () => {
    const root = join(scratch, "shadow");
    makeTree(root, {
      "etc/shadow": "root:*:20779:0:99999:7:::\nold:*:19000:0:99999:7:::\nnologin:!::0:99999:7:::\n",
    });
    chmodSync(join(root, "etc/shadow"), 0o640);
    // 2025-05-10: day 20218.
    await cleanRootfs(root, { distribution: "debian", slim: false, epoch: 1746868354 });
    assert.equal(
      readFileSync(join(root, "etc/shadow"), "utf8"),
      "root:*:20218:0:99999:7:::\nold:*:19000:0:99999:7:::\nnologin:!::0:99999:7:::\n",
    );
    assert.equal(statSync(join(root, "etc/shadow")).mode & 0o777, 0o640);
  });

  it("removes the pacman keyring's secrets and sockets but keeps its public keys", async () => {
    const root = join(scratch, "arch");
    makeTree(root, {
      "etc/pacman.d/gnupg/pubring.gpg": "public",
      "etc/pacman.d/gnupg/trustdb.gpg": "trust",
      "etc/pacman.d/gnupg/private-keys-v1.d/ABC.key": "secret",
      "etc/pacman.d/gnupg/secring.gpg": "secret",
      "etc/pacman.d/gnupg/S.gpg-agent": "",
      "var/cache/pacman/pkg/busybox.pkg.tar.zst": "x",
      "var/lib/pacman/sync/core.db": "x",
      "var/lib/pacman/local/busybox-1/desc": "x",
    });
    await cleanRootfs(root, { distribution: "arch", slim: false });
    assert.deepEqual(readdirSync(join(root, "etc/pacman.d/gnupg")).sort(), ["pubring.gpg", "trustdb.gpg"]);
    assert.deepEqual(readdirSync(join(root, "var/cache/pacman/pkg")), []);
    assert.deepEqual(readdirSync(join(root, "var/lib/pacman/sync")), []);
    assert.equal(existsSync(join(root, "var/lib/pacman/local/busybox-1/desc")), true);
  });

  it("with --no-clean still removes the pacman keyring's private key, and nothing else", async () => {
    const root = join(scratch, "arch-no-clean");
    makeTree(root, {
      "etc/pacman.d/gnupg/pubring.gpg": "public",
      "etc/pacman.d/gnupg/private-keys-v1.d/ABC.key": "secret",
      "etc/pacman.d/gnupg/openpgp-revocs.d/ABC.rev": "secret",
      "var/cache/pacman/pkg/busybox.pkg.tar.zst": "x",
    });
    await finishRootfs(root, {
      distribution: "arch",
      clean: false,
      slim: false,
      insecure: false,
      onProgress: () => undefined,
    });
    assert.deepEqual(readdirSync(join(root, "etc/pacman.d/gnupg")), ["pubring.gpg"]);
    assert.deepEqual(readdirSync(join(root, "var/cache/pacman/pkg")), ["busybox.pkg.tar.zst"]);
  });
});

/** A bookworm amd64 minbase plan with the tool's default mirror and no keyring; `changes` on top. */
function bookwormPlan(changes: Partial<DebianPlan>): DebianPlan {
  return {
    backend: "mmdebstrap",
    toolPath: "/nonexistent",
    suite: { family: "debian", suite: "bookworm", version: "12" },
    variant: "minbase",
    architecture: "amd64",
    foreign: false,
    components: ["main"],
    include: [],
    exclude: [],
    mirror: undefined,
    mirrorOrigin: "the tool's default",
    pockets: [],
    keyring: undefined,
    keyringFormat: undefined,
    insecure: true,
    cacheDir: undefined,
    mergedUsrHooks: undefined,
    ...changes,
  };
}

describe("what mkbase keeps mmdebstrap from cleaning", () => {
  it("goes once the Release date is read and the cache filled, so --no-clean gives mmdebstrap's own tree", async () => {
    const work = join(scratch, "mmdebstrap-leftovers");
    const target = join(work, "rootfs");
    const cacheDir = join(work, "cache");
    mkdirSync(target, { recursive: true });
    // A stand-in that leaves what mmdebstrap leaves with --skip=cleanup/apt, a cache seeded with a
    // package of an earlier run, and mkbase's apt options.
    const tool = join(work, "mmdebstrap");
    writeFileSync(
      tool,
      [
        "#!/bin/sh",
        "set -e",
        'r="$MKBASE_TEST_ROOT"',
        'mkdir -p "$r/var/lib/apt/lists/partial" "$r/var/lib/apt/lists/auxfiles" "$r/var/cache/apt/archives/partial" "$r/etc/apt/apt.conf.d"',
        ': > "$r/var/lib/apt/lists/lock"; : > "$r/var/cache/apt/archives/lock"',
        'printf "Date: Sat, 10 Jun 2023 08:49:00 UTC\\n" > "$r/var/lib/apt/lists/m_dists_bookworm_InRelease"',
        'echo x > "$r/var/lib/apt/lists/m_dists_bookworm_main_binary-amd64_Packages"',
        'echo x > "$r/var/cache/apt/archives/bash_5.2_amd64.deb"',
        'echo x > "$r/var/cache/apt/archives/curl-from-an-earlier-run_amd64.deb"',
        'echo x > "$r/var/cache/apt/archives/partial/half.deb"',
        'echo x > "$r/var/cache/apt/pkgcache.bin"',
        'echo \'APT::Sandbox::User "root";\' > "$r/etc/apt/apt.conf.d/99mmdebstrap"',
        'echo keep > "$r/etc/apt/apt.conf.d/70debconf"',
        "",
      ].join("\n"),
    );
    chmodSync(tool, 0o755);
    const plan = bookwormPlan({
      backend: "mmdebstrap",
      toolPath: tool,
      mirror: "http://mirror/debian",
      mirrorOrigin: "--mirror",
      cacheDir,
    });
    const outcome = await runDebianBootstrap(plan, work, target, {
      signal: new AbortController().signal,
      onProgress: () => undefined,
      verbose: false,
      env: { PATH: process.env.PATH, MKBASE_TEST_ROOT: target },
    });
    assert.equal(outcome.releaseDate, Date.UTC(2023, 5, 10, 8, 49) / 1000);
    assert.ok(existsSync(join(cacheDir, "archives/bash_5.2_amd64.deb")));
    assert.ok(existsSync(join(cacheDir, "lists/m_dists_bookworm_InRelease")));
    assert.deepEqual(readdirSync(join(target, "var/lib/apt/lists")).sort(), ["lock", "partial"]);
    assert.deepEqual(readdirSync(join(target, "var/cache/apt/archives")).sort(), ["lock", "partial"]);
    assert.deepEqual(readdirSync(join(target, "var/cache/apt/archives/partial")), []);
    assert.deepEqual(readdirSync(join(target, "var/cache/apt")), ["archives"]);
    assert.deepEqual(readdirSync(join(target, "etc/apt/apt.conf.d")), ["70debconf"]);
  });
});

describe("debootstrap's sources", () => {
  it("warns when its default mirror leaves the image's apt without -updates and -security", async () => {
    const work = join(scratch, "debootstrap-default-mirror");
    const target = join(work, "rootfs");
    mkdirSync(target, { recursive: true });
    const tool = join(work, "debootstrap");
    writeFileSync(tool, "#!/bin/sh\nexit 0\n");
    chmodSync(tool, 0o755);
    const plan = bookwormPlan({ backend: "debootstrap", toolPath: tool });
    const warnings = async (changes: Partial<DebianPlan>): Promise<string[]> => {
      const seen: string[] = [];
      await runDebianBootstrap({ ...plan, ...changes }, work, target, {
        signal: new AbortController().signal,
        onProgress: (event) => {
          if (event.kind === "warning") seen.push(event.message);
        },
        verbose: false,
        env: { PATH: process.env.PATH },
      });
      return seen;
    };
    assert.deepEqual(await warnings({}), [
      "debootstrap installs from bookworm alone and lists only it for apt: the image's apt sees no bookworm-updates or bookworm-security (use the mmdebstrap backend, which adds them with its default mirror, or add them to the sources in a derived image)",
    ]);
    // A development suite has no pockets; a --mirror is all the user asked for.
    assert.deepEqual(await warnings({ suite: { family: "debian", suite: "sid" } }), []);
    assert.deepEqual(await warnings({ mirror: "http://mirror/debian", mirrorOrigin: "--mirror" }), []);
  });
});

describe("rebuilt /dev", () => {
  it("adds the node set right after dev, in sorted order", async () => {
    const dir = (path: string): TarEntry => ({
      path: Buffer.from(path),
      type: "directory",
      mode: 0o755,
      uid: 0,
      gid: 0,
      mtime: 5,
      size: 0,
    });
    const inner: EntrySource = { description: "t", entries: () => [dir("bin"), dir("dev"), dir("etc")] };
    const entries = [
      ...(new DevNodesSource(inner).entries(new AbortController().signal) as Iterable<TarEntry>),
    ];
    const paths = entries.map((e) => e.path.toString());
    assert.deepEqual(paths, ["bin", "dev", ...DEV_NODES.map((n) => `dev/${n.name}`), "etc"]);
    assert.deepEqual([...paths].sort(), paths);
    const nul = entries.find((e) => e.path.toString() === "dev/null");
    assert.deepEqual([nul?.type, nul?.devmajor, nul?.devminor, nul?.mode], ["char", 1, 3, 0o666]);
  });
});

describe("Debian command lines", () => {
  const plan: DebianPlan = {
    backend: "debootstrap",
    toolPath: "/usr/sbin/debootstrap",
    suite: { family: "debian", suite: "bookworm", version: "12" },
    variant: "minbase",
    architecture: "arm64",
    foreign: true,
    components: ["main", "contrib"],
    include: ["ca-certificates", "curl"],
    exclude: ["e2fsprogs"],
    mirror: "http://mirror/debian",
    mirrorOrigin: "--mirror",
    pockets: [],
    keyring: "/keys/debian.gpg",
    keyringFormat: "binary",
    insecure: false,
    cacheDir: "/srv/pkg-cache",
    mergedUsrHooks: undefined,
  };

  it("passes debootstrap the keyring, the cache and --foreign for a foreign architecture", () => {
    assert.deepEqual(debianCommandLine(plan, "/t", "/t/rootfs"), [
      "--variant=minbase",
      "--arch=arm64",
      "--components=main,contrib",
      "--include=ca-certificates,curl",
      "--exclude=e2fsprogs",
      "--keyring=/keys/debian.gpg",
      "--cache-dir=/srv/pkg-cache/archives",
      "--foreign",
      "bookworm",
      "/t/rootfs",
      "http://mirror/debian",
    ]);
  });

  it("checks no signature only when insecure, and says so to each tool", () => {
    const insecure = { ...plan, keyring: undefined, insecure: true, cacheDir: undefined };
    assert.ok(debianCommandLine(insecure, "/t", "/t/rootfs").includes("--no-check-gpg"));
    assert.ok(!debianCommandLine(plan, "/t", "/t/rootfs").includes("--no-check-gpg"));
    const mm = debianCommandLine({ ...insecure, backend: "mmdebstrap", exclude: [] }, "/t", "/t/rootfs");
    assert.ok(mm.some((arg) => arg.includes("AllowUnauthenticated")));
    assert.ok(
      !debianCommandLine({ ...plan, backend: "mmdebstrap", exclude: [] }, "/t", "/t/rootfs").some((a) =>
        a.includes("AllowUnauthenticated"),
      ),
    );
  });

  it("gives mmdebstrap the cache through hooks that read the path from the environment", () => {
    const args = debianCommandLine(
      { ...plan, backend: "mmdebstrap", exclude: [], foreign: false },
      "/t",
      "/t/rootfs",
    );
    assert.ok(args.includes("--mode=root"));
    assert.ok(args.includes("--skip=essential/unlink"));
    const hook = args.find((a) => a.startsWith("--setup-hook="));
    assert.match(hook ?? "", /\$MKBASE_CACHE_DIR\/archives/);
    assert.ok(
      !(hook ?? "").includes("/srv/pkg-cache"),
      "the cache path must not be quoted into a shell line",
    );
    assert.deepEqual(args.slice(-3), ["bookworm", "/t/rootfs", "http://mirror/debian"]);
  });

  it("says in the plan which pockets each tool installs from", () => {
    const security = [{ uri: "http://security/debian-security", suite: "bookworm-security" }];
    assert.equal(
      describePockets({ backend: "mmdebstrap", mirror: undefined, pockets: [] }),
      "the tool's default",
    );
    // debootstrap's default mirror serves it the release alone.
    assert.equal(describePockets({ backend: "debootstrap", mirror: undefined, pockets: [] }), "none");
    assert.equal(describePockets({ backend: "mmdebstrap", mirror: "http://m/debian", pockets: [] }), "none");
    assert.equal(
      describePockets({ backend: "debootstrap", mirror: "http://m/debian", pockets: security }),
      "bookworm-security at http://security/debian-security (listed for apt only: debootstrap takes one suite)",
    );
  });

  it("gives mmdebstrap the pockets as sources.list lines after the mirror", () => {
    const pockets = [
      { uri: "http://mirror/debian", suite: "bookworm-updates" },
      { uri: "http://security/debian-security", suite: "bookworm-security" },
    ];
    const args = debianCommandLine(
      { ...plan, backend: "mmdebstrap", exclude: [], foreign: false, pockets },
      "/t",
      "/t/rootfs",
    );
    assert.deepEqual(args.slice(-4), [
      "/t/rootfs",
      "http://mirror/debian",
      "deb http://mirror/debian bookworm-updates main contrib",
      "deb http://security/debian-security bookworm-security main contrib",
    ]);
  });

  it("makes the keyring the only trust of mmdebstrap's apt, and lets it write no signed-by", () => {
    const mm = { ...plan, backend: "mmdebstrap" as const, exclude: [], foreign: false };
    const args = debianCommandLine(mm, "/w", "/w/rootfs");
    const trust = aptTrustPaths("/w");
    assert.deepEqual(
      args.filter((a) => a.startsWith("--keyring=") || a.startsWith("--skip=check")),
      [`--keyring=${trust.file}`, `--keyring=${trust.dir}`, "--skip=check/signed-by"],
    );
    assert.ok(trust.file.startsWith("/w/") && trust.dir.startsWith("/w/"), "inside the workspace");
    // Given as --aptopt, the trust would stay in the image's apt configuration.
    assert.ok(!args.some((a) => a.includes("Dir::Etc")), args.join(" "));
    assert.ok(!args.some((a) => a.includes("/keys/debian.gpg")), args.join(" "));
    const insecure = debianCommandLine({ ...mm, keyring: undefined, insecure: true }, "/w", "/w/rootfs");
    assert.ok(!insecure.some((a) => a.startsWith("--keyring=")), insecure.join(" "));
  });

  it("fills the trust files with a copy of the keyring only, named for apt by its format", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mkbase-unit-trust-"));
    try {
      const keyring = join(dir, "archive.pgp");
      writeFileSync(keyring, Buffer.from([0x99, 0x01, 0x02]));
      const mm: DebianPlan = { ...plan, backend: "mmdebstrap", exclude: [], keyring };
      const gpgWork = join(dir, "gpg");
      mkdirSync(gpgWork);
      await prepareAptTrust(mm, gpgWork);
      const trust = aptTrustPaths(gpgWork);
      assert.equal(readFileSync(trust.file).length, 0);
      assert.deepEqual(readdirSync(trust.dir), ["keyring.gpg"]);
      assert.deepEqual(readFileSync(join(trust.dir, "keyring.gpg")), readFileSync(keyring));
      const ascWork = join(dir, "asc");
      mkdirSync(ascWork);
      await prepareAptTrust({ ...mm, keyringFormat: "armored" }, ascWork);
      assert.deepEqual(readdirSync(aptTrustPaths(ascWork).dir), ["keyring.asc"]);
      // debootstrap reads the keyring itself; no trust files for it.
      const debootstrapWork = join(dir, "debootstrap");
      mkdirSync(debootstrapWork);
      await prepareAptTrust({ ...plan, keyring }, debootstrapWork);
      assert.deepEqual(readdirSync(debootstrapWork), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("recognises apt's and debootstrap's signature failures and names the missing keys", () => {
    const apt =
      "  The following signatures couldn't be verified because the public key is not available: NO_PUBKEY 6ED0E7B82643E131 NO_PUBKEY F8D2585B8783D481";
    const debootstrap = "E: Release signed by unknown key (key id F8D2585B8783D481)";
    for (const line of [
      apt,
      debootstrap,
      "E: The repository 'http://mirror/debian bookworm InRelease' is not signed.",
      "  The following signatures were invalid: EXPKEYSIG 6ED0E7B82643E131 Debian Archive",
      "E: Invalid Release signature (key id 6ED0E7B82643E131)",
    ]) {
      assert.ok(isSignatureFailure(line), line);
    }
    for (const line of [
      "I: Checking Release signature",
      "I: Valid Release signature (key id 4D64FEC119C2029067D6E791F8D2585B8783D481)",
      "E: mmdebstrap failed to run",
      "Get:1 http://mirror/debian bookworm InRelease [151 kB]",
    ]) {
      assert.ok(!isSignatureFailure(line), line);
    }
    assert.equal(
      signatureReason(apt),
      "the Release file is signed by keys 6ED0E7B82643E131, F8D2585B8783D481, which the keyring does not hold",
    );
    assert.equal(
      signatureReason(debootstrap),
      "the Release file is signed by key F8D2585B8783D481, which the keyring does not hold",
    );
    assert.equal(
      signatureReason("E: The repository 'http://m/debian bookworm InRelease' is not signed."),
      "The repository 'http://m/debian bookworm InRelease' is not signed.",
    );
  });

  it("sets up merged /usr with mmdebstrap's hook when it is installed, after the cache hook", () => {
    const hooks = "/usr/share/mmdebstrap/hooks/maybe-merged-usr";
    const args = debianCommandLine(
      { ...plan, backend: "mmdebstrap", exclude: [], foreign: false, mergedUsrHooks: hooks },
      "/t",
      "/t/rootfs",
    );
    const hookDir = args.indexOf(`--hook-dir=${hooks}`);
    assert.ok(hookDir > args.findIndex((a) => a.startsWith("--setup-hook=")), args.join(" "));
    assert.ok(
      !debianCommandLine({ ...plan, backend: "mmdebstrap", exclude: [] }, "/t", "/t/rootfs").some((a) =>
        a.startsWith("--hook-dir="),
      ),
    );
  });
});

describe("the image config", () => {
  const flags: ImageFlags = {
    tag: [],
    env: [],
    expose: [],
    volume: [],
    label: [],
    change: [],
    exclude: [],
    excludeFrom: [],
    output: [],
    annotation: [],
  };
  const path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

  it("sets the official images' PATH and runs the tree's shell", () => {
    assert.deepEqual(bootstrapConfig(flags, ["/bin/bash"]), { Env: [path], Cmd: ["/bin/bash"] });
  });

  it("expands $PATH in -c ENV to that PATH, and lets --env replace it", () => {
    const extended = bootstrapConfig({ ...flags, change: ["ENV PATH=/opt/x:$PATH"] }, ["/bin/sh"]);
    assert.deepEqual(extended.Env, [path.replace("=", "=/opt/x:")]);
    const replaced = bootstrapConfig({ ...flags, env: ["PATH=/bin", "LANG=C.UTF-8"] }, ["/bin/sh"]);
    assert.deepEqual(replaced.Env, ["PATH=/bin", "LANG=C.UTF-8"]);
  });

  it("keeps --cmd and --entrypoint instead of the shell", () => {
    assert.deepEqual(bootstrapConfig({ ...flags, cmd: '["/x"]' }, ["/bin/sh"]).Cmd, ["/x"]);
    const withEntrypoint = bootstrapConfig({ ...flags, entrypoint: '["/y"]' }, ["/bin/sh"]);
    assert.equal(withEntrypoint.Cmd, undefined);
  });
});
