/**
 * Plans and command lines of pacstrap and apk.static, and the Alpine package reader: signatures stay on
 * unless `--insecure`, and a package split into its gzip members is read back exactly. Debian plans
 * take a `--keyring` only when it is a keyring the chosen tool can read, and never with `--insecure`.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync, sign } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { ToolError, UsageError } from "../../src/errors.js";
import { apkCommandLine, planAlpine, type AlpinePlan } from "../../src/sources/bootstrap/apk.js";
import {
  readSmallTar,
  splitGzipMembers,
  verifySignedMember,
} from "../../src/sources/bootstrap/apk-package.js";
import {
  keyringFormat,
  planDebianBootstrap,
  type DebianBackend,
  type DebianRequest,
} from "../../src/sources/bootstrap/debian.js";
import { hostDpkgArchitecture } from "../../src/sources/bootstrap/host.js";
import {
  isPacmanSignatureFailure,
  pacmanConfText,
  pacstrapCommandLine,
  type PacstrapPlan,
} from "../../src/sources/bootstrap/pacstrap.js";

let scratch: string;
before(() => {
  scratch = mkdtempSync(join(tmpdir(), "mkbase-unit-plans-"));
});
after(() => {
  rmSync(scratch, { recursive: true, force: true });
});

/** One ustar entry without the end-of-archive blocks, as abuild writes signature tars. */
function ustarEntry(name: string, body: Buffer): Buffer {
  const header = Buffer.alloc(512);
  header.write(name, 0, "latin1");
  header.write("0000644\0", 100, "latin1");
  header.write(`${body.length.toString(8).padStart(11, "0")}\0`, 124, "latin1");
  header.write("0", 156, "latin1");
  header.write("ustar\u000000", 257, "latin1");
  const padded = Buffer.alloc(Math.ceil(body.length / 512) * 512);
  body.copy(padded);
  return Buffer.concat([header, padded]);
}

describe("Alpine packages", () => {
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const signed = gzipSync(ustarEntry(".PKGINFO", Buffer.from("pkgname = x\n")));
  const signature = gzipSync(ustarEntry(".SIGN.RSA.test.rsa.pub", sign("sha1", signed, privateKey)));
  const keys = new Map([["test.rsa.pub", publicKey]]);

  it("splits concatenated gzip members exactly", () => {
    const members = splitGzipMembers(Buffer.concat([signature, signed]));
    assert.equal(members.length, 2);
    assert.ok(members[0]?.equals(signature));
    assert.ok(members[1]?.equals(signed));
  });

  it("reads a tar without its end blocks", () => {
    const files = readSmallTar(ustarEntry("a/b.txt", Buffer.from("hello")));
    assert.equal(files.get("a/b.txt")?.toString(), "hello");
  });

  it("accepts a good signature and refuses an altered member or an unknown key", () => {
    assert.deepEqual(verifySignedMember([signature, signed], keys, "test"), { keyName: "test.rsa.pub" });
    const altered = gzipSync(ustarEntry(".PKGINFO", Buffer.from("pkgname = y\n")));
    assert.throws(() => verifySignedMember([signature, altered], keys, "test"), /altered/);
    assert.throws(() => verifySignedMember([signature, signed], new Map(), "test"), ToolError);
  });
});

describe("apk.static plans", () => {
  const base = {
    branch: "v3.20",
    packages: ["alpine-base"],
    repositories: [],
    insecure: false,
    env: { PATH: "/nonexistent" },
  };

  it("refuses an unknown branch and a missing mirror", async () => {
    await assert.rejects(planAlpine({ ...base, branch: "3.20", mirror: "http://m/alpine" }), UsageError);
    await assert.rejects(planAlpine({ ...base, keysDir: scratch }), /no Alpine mirror/);
  });

  it("refuses a foreign --arch that cannot run here before any download, and takes one that can", async () => {
    writeFileSync(join(scratch, "signing.rsa.pub"), "");
    const binfmtDir = join(scratch, "binfmt");
    mkdirSync(binfmtDir, { recursive: true });
    const foreign = {
      ...base,
      mirror: "http://m/alpine",
      keysDir: scratch,
      architecture: "riscv64",
      binfmtDir,
    };
    await assert.rejects(planAlpine(foreign), {
      name: "ToolError",
      message: "programs for riscv64 cannot run on this machine (no qemu-riscv64 binfmt handler)",
    });
    writeFileSync(join(binfmtDir, "qemu-riscv64"), "enabled\n");
    assert.equal((await planAlpine(foreign)).architecture, "riscv64");
  });

  it("names the architecture as given when it cannot run here, not dpkg's name for it", async () => {
    writeFileSync(join(scratch, "signing.rsa.pub"), "");
    const binfmtDir = join(scratch, "binfmt-none");
    mkdirSync(binfmtDir, { recursive: true });
    const request = { ...base, mirror: "http://m/alpine", keysDir: scratch, binfmtDir };
    // Alpine's armv7 is dpkg's armhf, and its armhf (ARMv6) dpkg's armel.
    await assert.rejects(planAlpine({ ...request, architecture: "armv7" }), {
      name: "ToolError",
      message: "programs for armv7 cannot run on this machine (no qemu-arm binfmt handler)",
    });
    await assert.rejects(planAlpine({ ...request, architecture: "armhf" }), {
      name: "ToolError",
      message: "programs for armhf cannot run on this machine (no qemu-arm binfmt handler)",
    });
  });

  it("refuses to download apk.static it could not verify", async () => {
    await assert.rejects(planAlpine({ ...base, mirror: "http://m/alpine", insecure: true }), ToolError);
  });

  it("derives the repositories and passes --allow-untrusted only when insecure", async () => {
    mkdirSync(join(scratch, "keys"), { recursive: true });
    // A keys dir must hold a key: an empty one is refused before the download it could not check.
    await assert.rejects(
      planAlpine({ ...base, mirror: "http://m/alpine/", keysDir: join(scratch, "keys") }),
      {
        name: "UsageError",
        message: `${join(scratch, "keys")} holds no *.rsa.pub keys to check the packages with`,
      },
    );
    writeFileSync(join(scratch, "keys", "test.rsa.pub"), "");
    const plan = await planAlpine({ ...base, mirror: "http://m/alpine/", keysDir: join(scratch, "keys") });
    assert.deepEqual(plan.repositories, ["http://m/alpine/v3.20/main", "http://m/alpine/v3.20/community"]);
    assert.equal(plan.apkStatic.kind, "download");
    const args = apkCommandLine(plan, "/r");
    assert.deepEqual(args.slice(0, 3), ["--root", "/r", "--initdb"]);
    assert.ok(!args.includes("--allow-untrusted"));
    const insecure: AlpinePlan = { ...plan, insecure: true, keysDir: undefined };
    assert.ok(apkCommandLine(insecure, "/r").includes("--allow-untrusted"));
  });
});

describe("pacman's signature failures", () => {
  it("are told from its other errors", () => {
    for (const line of [
      "error: required key missing from keyring",
      'error: busybox: signature from "Some Packager <p@example.invalid>" is unknown trust',
      'error: busybox: key "F83D0549B37C311F" is unknown',
      'error: busybox: signature from "X" is invalid',
      "error: core: invalid or corrupted database (PGP signature)",
    ]) {
      assert.ok(isPacmanSignatureFailure(line), line);
    }
    for (const line of [
      "error: keyring is not writable",
      "error: failed to commit transaction (unexpected error)",
    ]) {
      assert.ok(!isPacmanSignatureFailure(line), line);
    }
  });
});

describe("pacstrap plans", () => {
  const plan: PacstrapPlan = {
    toolPath: "/usr/bin/pacstrap",
    packages: ["base"],
    ignore: ["linux", "man-db"],
    mirror: "https://mirror/$repo/os/$arch",
    mirrorOrigin: "--mirror",
    repositories: ["core", "extra"],
    pacmanConf: undefined,
    keyring: "/k/archlinux.gpg",
    insecure: false,
    cacheDir: undefined,
  };

  it("requires signatures unless insecure, with the workspace's keyring and cache", () => {
    const text = pacmanConfText(plan, { cacheDir: "/w/cache", gpgDir: "/w/gnupg" });
    assert.match(text, /^SigLevel = Required DatabaseOptional$/m);
    assert.match(text, /^GPGDir = \/w\/gnupg\/$/m);
    assert.match(text, /^\[extra\]\nServer = https:\/\/mirror\/\$repo\/os\/\$arch$/m);
    assert.match(
      pacmanConfText({ ...plan, insecure: true }, { cacheDir: "/c", gpgDir: "/g" }),
      /^SigLevel = Never$/m,
    );
  });

  it("never copies the host keyring or mirrorlist", () => {
    const args = pacstrapCommandLine(plan, "/w/pacman.conf", "/w/rootfs", "/w/cache");
    assert.deepEqual(args.slice(0, 6), ["-C", "/w/pacman.conf", "-c", "-G", "-M", "/w/rootfs"]);
    assert.deepEqual(args.slice(6), ["base", "--ignore", "linux,man-db", "--cachedir", "/w/cache"]);
  });
});

describe("Debian keyrings", () => {
  /** The first bytes of a binary keyring (an old-format public-key packet, 2-byte length) and a keybox. */
  const binary = Buffer.from([0x99, 0x02, 0x0d, 0x04, 0x63, 0x1b]);
  const keybox = Buffer.from("000000200101000" + "24b425866", "hex");

  it("tells binary, armored and keybox keyrings from other files by their first bytes", () => {
    assert.equal(keyringFormat(binary), "binary");
    assert.equal(keyringFormat(Buffer.from([0x98, 0x33, 0x04])), "binary");
    assert.equal(keyringFormat(Buffer.from([0xc6, 0x33, 0x04])), "binary");
    assert.equal(
      keyringFormat(Buffer.from("\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBGPL\n")),
      "armored",
    );
    assert.equal(keyringFormat(keybox), "keybox");
    assert.equal(keyringFormat(Buffer.from("root:x:0:0:root:/root:/bin/bash\n")), undefined);
    assert.equal(keyringFormat(Buffer.from("-----BEGIN PGP SIGNATURE-----\n")), undefined);
    // A secret key (tag 5) and a signature packet (tag 2) are no keyring.
    assert.equal(keyringFormat(Buffer.from([0x95, 0x01])), undefined);
    assert.equal(keyringFormat(Buffer.from([0x89, 0x01])), undefined);
    assert.equal(keyringFormat(Buffer.alloc(0)), undefined);
  });

  describe("plans", () => {
    let env: DebianRequest["env"];
    before(() => {
      // Stand-ins for the tools: planning only looks them up on PATH.
      const bin = join(scratch, "debian-bin");
      mkdirSync(bin);
      for (const tool of ["mmdebstrap", "debootstrap"]) {
        writeFileSync(join(bin, tool), "#!/bin/sh\nexit 1\n");
        chmodSync(join(bin, tool), 0o755);
      }
      env = { PATH: bin };
    });

    function keyringFile(name: string, content: Buffer | string): string {
      const path = join(scratch, name);
      writeFileSync(path, content);
      return path;
    }

    function plan(keyring: string, backend: DebianBackend = "mmdebstrap", insecure = false) {
      return planDebianBootstrap({
        suite: "bookworm",
        backend,
        variant: "minbase",
        architecture: hostDpkgArchitecture(),
        include: [],
        exclude: [],
        mirror: "http://mirror/debian",
        keyring,
        insecure,
        env,
        aptSources: [],
      });
    }

    it("refuses --insecure with --keyring, which would check with the keyring or not by the backend", async () => {
      const gpg = keyringFile("both.gpg", binary);
      for (const backend of ["debootstrap", "mmdebstrap"] as const) {
        await assert.rejects(plan(gpg, backend, true), (error: unknown) => {
          assert.ok(error instanceof UsageError, String(error));
          assert.equal(error.message, "--insecure and --keyring contradict each other");
          assert.match(error.hint ?? "", /Leave out --insecure to check .* or --keyring to build without/);
          assert.match(error.hint ?? "", /mkbase\.insecure=true/);
          return true;
        });
      }
    });

    it("refuses a file that is no OpenPGP keyring, and an empty one, before anything runs", async () => {
      await assert.rejects(
        plan(keyringFile("passwd", "root:x:0:0:root:/root:/bin/bash\n")),
        (error: unknown) => {
          assert.ok(error instanceof UsageError, String(error));
          assert.match(error.message, /^--keyring .*passwd is not an OpenPGP keyring$/);
          assert.match(error.hint ?? "", /gpg --export/);
          return true;
        },
      );
      await assert.rejects(plan(keyringFile("empty.gpg", "")), (error: unknown) => {
        assert.ok(error instanceof UsageError, String(error));
        assert.match(error.message, /^--keyring .*empty\.gpg is empty: it holds no keys$/);
        return true;
      });
    });

    it("takes binary and armored keyrings for mmdebstrap, and records which", async () => {
      const gpg = await plan(keyringFile("k.gpg", binary));
      assert.deepEqual([gpg.keyring, gpg.keyringFormat], [join(scratch, "k.gpg"), "binary"]);
      const asc = await plan(keyringFile("k.key", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBGPL\n"));
      assert.equal(asc.keyringFormat, "armored");
    });

    it("names --exclude-packages, not the shared path filter --exclude, when mmdebstrap cannot leave packages out", async () => {
      await assert.rejects(
        planDebianBootstrap({
          suite: "bookworm",
          backend: "mmdebstrap",
          variant: "minbase",
          architecture: hostDpkgArchitecture(),
          include: [],
          exclude: ["e2fsprogs"],
          insecure: true,
          env,
          aptSources: [],
        }),
        {
          name: "UsageError",
          message:
            "--exclude-packages needs the debootstrap backend (mmdebstrap installs no more than asked)",
        },
      );
    });

    it("refuses a keybox for mmdebstrap and armor for debootstrap, with the command that converts it", async () => {
      const kbx = keyringFile("k.kbx", keybox);
      await assert.rejects(plan(kbx), /GnuPG keybox, which apt cannot read/);
      await assert.rejects(
        plan(keyringFile("k.asc", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n"), "debootstrap"),
        (error: unknown) => {
          assert.ok(error instanceof UsageError);
          assert.match(error.message, /ASCII-armored, which debootstrap cannot read/);
          assert.match(error.hint ?? "", /gpg --dearmor/);
          return true;
        },
      );
    });
  });
});
