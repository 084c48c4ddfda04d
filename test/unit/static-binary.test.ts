import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { SourceError, UsageError } from "../../src/errors.js";
import {
  parseAddSpec,
  parseChmod,
  parseChown,
  parseScratchUser,
  platformTagSuffix,
  scratchTargets,
} from "../../src/cli/scratch.js";
import {
  CA_BUNDLE_IMAGE_PATH,
  StaticBinarySource,
  comparePaths,
  groupFile,
  passwdFile,
  type StaticBinaryOptions,
} from "../../src/sources/static-binary.js";
import type { TarEntry } from "../../src/tar/entry.js";

const run = promisify(execFile);
const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../fixtures/c");
const EPOCH = 1_700_000_000;

let workDir: string;
const built = { hello: "", helloDynamic: "", helloArm64: "" };

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), "mkbase-static-binary-"));
  built.hello = path.join(workDir, "hello");
  built.helloDynamic = path.join(workDir, "hello-dynamic");
  built.helloArm64 = path.join(workDir, "hello-arm64");
  const source = path.join(fixtures, "hello.c");
  await run("gcc", ["-static", "-O2", "-o", built.hello, source]);
  await run("gcc", ["-O2", "-o", built.helloDynamic, source]);
  await run("aarch64-linux-gnu-gcc", ["-static", "-O2", "-o", built.helloArm64, source]);
});

after(async () => {
  await rm(workDir, { recursive: true, force: true });
});

function open(options: Partial<StaticBinaryOptions> = {}): Promise<StaticBinarySource> {
  return StaticBinarySource.open({ binary: built.hello, mtime: EPOCH, ...options });
}

/** `path type mode uid:gid` per entry, the shape the assertions compare. */
function listing(entries: readonly TarEntry[]): string[] {
  return entries.map(
    (entry) =>
      `${entry.path.toString()} ${entry.type} ${entry.mode.toString(8).padStart(4, "0")} ${entry.uid}:${entry.gid}`,
  );
}

function entryAt(source: StaticBinarySource, entryPath: string): TarEntry {
  const entry = source.entryList.find((candidate) => candidate.path.toString() === entryPath);
  assert.ok(entry, `no entry ${entryPath}`);
  return entry;
}

function bytesOf(entry: TarEntry): string {
  assert.equal(entry.content?.kind, "bytes");
  return entry.content.kind === "bytes" ? entry.content.data.toString() : "";
}

/** Every entry's parent directory appears before it, and the list is in component order without repeats. */
function assertSortedParentsFirst(entries: readonly TarEntry[]): void {
  const seen = new Set<string>();
  entries.forEach((entry, index) => {
    const text = entry.path.toString();
    assert.ok(!seen.has(text), `${text} appears twice`);
    const parent = path.posix.dirname(text);
    if (parent !== ".") assert.ok(seen.has(parent), `${text} comes before its parent ${parent}`);
    const previous = entries[index - 1];
    if (previous !== undefined)
      assert.ok(comparePaths(previous.path, entry.path) < 0, `${text} out of order`);
    seen.add(text);
  });
}

describe("comparePaths", () => {
  test("orders component by component, parents right before their children", () => {
    const sorted = ["b", "a-b", "a/x", "a", "a/x/y", "a.b"]
      .map((text) => Buffer.from(text))
      .sort(comparePaths)
      .map(String);
    assert.deepEqual(sorted, ["a", "a/x", "a/x/y", "a-b", "a.b", "b"]);
  });
});

describe("StaticBinarySource entries", () => {
  test("a static program alone is one root-owned 0755 file at /NAME", async () => {
    const source = await open();
    assert.deepEqual(listing(source.entryList), ["hello file 0755 0:0"]);
    const [entry] = source.entryList;
    assert.equal(entry?.mtime, EPOCH);
    assert.equal(entry?.content?.kind, "path");
    assert.deepEqual(source.platform, { os: "linux", architecture: "amd64" });
    assert.equal(source.binaryImagePath, "/hello");
  });

  test("essentials, --dest and --user make exactly these entries, sorted with parents first", async () => {
    const source = await open({
      dest: "/usr/local/bin/",
      user: { name: "nonroot", uid: 65532 },
      tmp: true,
      caCerts: true,
    });
    assert.deepEqual(listing(source.entryList), [
      "etc directory 0755 0:0",
      "etc/group file 0644 0:0",
      "etc/passwd file 0644 0:0",
      "etc/ssl directory 0755 0:0",
      "etc/ssl/certs directory 0755 0:0",
      "etc/ssl/certs/ca-certificates.crt file 0644 0:0",
      "tmp directory 1777 0:0",
      "usr directory 0755 0:0",
      "usr/local directory 0755 0:0",
      "usr/local/bin directory 0755 0:0",
      "usr/local/bin/hello file 0755 0:0",
    ]);
    assertSortedParentsFirst(source.entryList);
    assert.ok(source.entryList.every((entry) => entry.mtime === EPOCH));
    assert.equal(
      bytesOf(entryAt(source, "etc/passwd")),
      "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n",
    );
    assert.equal(bytesOf(entryAt(source, "etc/group")), "root:x:0:\nnonroot:x:65532:\n");
    const passwd = entryAt(source, "etc/passwd");
    assert.equal(passwd.size, Buffer.byteLength(passwdFile({ name: "nonroot", uid: 65532 })));
  });

  test("passwd and group for root alone hold one line each", () => {
    assert.equal(passwdFile({ name: "root", uid: 0 }), "root:x:0:0:root:/root:/sbin/nologin\n");
    assert.equal(groupFile(undefined), "root:x:0:\n");
  });

  test("the default mtime is the program's own, whole seconds", async () => {
    const copy = path.join(workDir, "hello-dated");
    await run("cp", [built.hello, copy]);
    await utimes(copy, 1_650_000_000.9, 1_650_000_000.9);
    const source = await StaticBinarySource.open({ binary: copy, tmp: true });
    assert.equal(source.binaryMtime, 1_650_000_000);
    assert.ok(source.entryList.every((entry) => entry.mtime === 1_650_000_000));
  });

  test("--add copies a file and a directory tree as COPY does, with --chown and --chmod", async () => {
    const tree = path.join(workDir, "static");
    await mkdir(path.join(tree, "css"), { recursive: true });
    await writeFile(path.join(tree, "index.html"), "<p>hi</p>\n");
    await writeFile(path.join(tree, "css", "site.css"), "p{}\n");
    await symlink("index.html", path.join(tree, "home.html"));
    await chmod(tree, 0o750);
    await chmod(path.join(tree, "css"), 0o755);
    await chmod(path.join(tree, "index.html"), 0o644);
    await chmod(path.join(tree, "css", "site.css"), 0o644);
    const config = path.join(workDir, "config.yaml");
    await writeFile(config, "port: 8080\n");
    await chmod(config, 0o600);

    const plain = await open({
      adds: [
        { source: config, dest: "/etc/hello/config.yaml" },
        { source: tree, dest: "/srv/static/" },
      ],
    });
    assertSortedParentsFirst(plain.entryList);
    assert.deepEqual(listing(plain.entryList), [
      "etc directory 0755 0:0",
      "etc/hello directory 0755 0:0",
      "etc/hello/config.yaml file 0600 0:0",
      "hello file 0755 0:0",
      "srv directory 0755 0:0",
      "srv/static directory 0750 0:0",
      "srv/static/css directory 0755 0:0",
      "srv/static/css/site.css file 0644 0:0",
      "srv/static/home.html symlink 0777 0:0",
      "srv/static/index.html file 0644 0:0",
    ]);
    assert.equal(entryAt(plain, "srv/static/home.html").linkname?.toString(), "index.html");

    const owned = await open({
      adds: [{ source: config, dest: "/etc/hello/" }],
      addOwner: { uid: 65532, gid: 65532 },
      addMode: 0o640,
    });
    assert.deepEqual(listing(owned.entryList), [
      "etc directory 0755 0:0",
      "etc/hello directory 0755 0:0",
      "etc/hello/config.yaml file 0640 65532:65532",
      "hello file 0755 0:0",
    ]);
  });

  test("--tzdata and --ca-certs read a sysroot, following its absolute symlinks inside it", async () => {
    const sysroot = path.join(workDir, "sysroot");
    const zoneinfo = path.join(sysroot, "usr/share/zoneinfo");
    await mkdir(path.join(zoneinfo, "Etc"), { recursive: true });
    await writeFile(path.join(zoneinfo, "Etc", "UTC"), "TZif-utc");
    await symlink("Etc/UTC", path.join(zoneinfo, "UTC"));
    await mkdir(path.join(sysroot, "etc/ssl/certs"), { recursive: true });
    await writeFile(path.join(sysroot, "etc/ssl/cert.pem"), "-----BEGIN CERTIFICATE-----\n");
    await symlink("/etc/ssl/cert.pem", path.join(sysroot, "etc/ssl/certs/ca-certificates.crt"));

    const source = await open({ sysroot, tzdata: true, caCerts: true });
    assertSortedParentsFirst(source.entryList);
    assert.deepEqual(listing(source.entryList), [
      "etc directory 0755 0:0",
      "etc/ssl directory 0755 0:0",
      "etc/ssl/certs directory 0755 0:0",
      "etc/ssl/certs/ca-certificates.crt file 0644 0:0",
      "hello file 0755 0:0",
      "usr directory 0755 0:0",
      "usr/share directory 0755 0:0",
      "usr/share/zoneinfo directory 0755 0:0",
      "usr/share/zoneinfo/Etc directory 0755 0:0",
      "usr/share/zoneinfo/Etc/UTC file 0644 0:0",
      "usr/share/zoneinfo/UTC symlink 0777 0:0",
    ]);
    const certs = entryAt(source, "etc/ssl/certs/ca-certificates.crt");
    assert.deepEqual(certs.content, {
      kind: "path",
      path: Buffer.from(path.join(sysroot, "etc/ssl/cert.pem")),
    });

    const empty = path.join(workDir, "empty-sysroot");
    await mkdir(empty, { recursive: true });
    await assert.rejects(open({ sysroot: empty, caCerts: true }), SourceError);
    await assert.rejects(open({ sysroot: empty, tzdata: true }), SourceError);
  });

  test("two inputs for one path, or a path below a file, are refused", async () => {
    const other = path.join(workDir, "other");
    await writeFile(other, "x");
    await assert.rejects(open({ adds: [{ source: other, dest: "/hello" }] }), UsageError);
    await assert.rejects(open({ adds: [{ source: other, dest: "/hello/x" }] }), UsageError);
    await assert.rejects(
      open({ user: { name: "nonroot", uid: 65532 }, adds: [{ source: other, dest: "/etc/passwd" }] }),
      UsageError,
    );
  });
});

describe("StaticBinarySource checks", () => {
  test("a dynamic program is refused, naming its interpreter and libraries", async () => {
    await assert.rejects(open({ binary: built.helloDynamic }), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.match(error.message, /ld-linux-x86-64\.so\.2/);
      assert.match(error.message, /libc\.so\.6/);
      assert.match(error.hint ?? "", /--bundle-libs/);
      assert.match(error.hint ?? "", /-static/);
      return true;
    });
  });

  test("--bundle-libs copies the loader and libraries with their symlink chains, each once", async () => {
    const source = await open({ binary: built.helloDynamic, bundleLibs: true });
    assertSortedParentsFirst(source.entryList);
    for (const imagePath of ["/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"]) {
      const entry = source.lookUp(imagePath);
      assert.equal(entry?.type, "file", imagePath);
      assert.equal(entry?.mode, 0o755);
      assert.equal(entry?.uid, 0);
    }
    assert.equal(source.lookUp("/hello-dynamic")?.type, "file");
  });

  test("non-ELF inputs are SourceErrors", async () => {
    const script = path.join(workDir, "script.sh");
    await writeFile(script, "#!/bin/sh\necho hi\n");
    const empty = path.join(workDir, "empty");
    await writeFile(empty, "");
    await assert.rejects(open({ binary: script }), /script for \/bin\/sh/);
    await assert.rejects(open({ binary: empty }), SourceError);
    await assert.rejects(open({ binary: workDir }), SourceError);
    await assert.rejects(open({ binary: path.join(workDir, "missing") }), SourceError);
  });

  test("the ELF architecture sets the platform, and --platform must agree", async () => {
    const arm = await open({ binary: built.helloArm64 });
    assert.deepEqual(arm.platform, { os: "linux", architecture: "arm64", variant: "v8" });
    await open({ binary: built.helloArm64, platform: { os: "linux", architecture: "arm64" } });
    await assert.rejects(
      open({ binary: built.helloArm64, platform: { os: "linux", architecture: "amd64" } }),
      UsageError,
    );
  });
});

describe("StaticBinarySource.imageConfig", () => {
  test("the program is the ENTRYPOINT and arguments after -- the CMD", async () => {
    const source = await open();
    assert.deepEqual(source.imageConfig({}, []), { Entrypoint: ["/hello"] });
    assert.deepEqual(source.imageConfig({}, ["--port", "8080"]), {
      Entrypoint: ["/hello"],
      Cmd: ["--port", "8080"],
    });
    assert.throws(() => source.imageConfig({ Cmd: ["/hello"] }, ["x"]), UsageError);
  });

  test("--ca-certs sets SSL_CERT_FILE and --user a numeric USER", async () => {
    const source = await open({ caCerts: true, user: { name: "nonroot", uid: 65532 } });
    const config = source.imageConfig({ Env: ["A=1"] }, []);
    assert.deepEqual(config.Env, ["A=1", `SSL_CERT_FILE=${CA_BUNDLE_IMAGE_PATH}`]);
    assert.equal(config.User, "65532:65532");
    assert.deepEqual(source.imageConfig({ Env: ["SSL_CERT_FILE=/mine"] }, []).Env, ["SSL_CERT_FILE=/mine"]);
  });

  test("commands are checked against the image's files", async () => {
    const data = path.join(workDir, "data.txt");
    await writeFile(data, "data\n");
    await chmod(data, 0o644);
    const source = await open({
      dest: "/usr/local/bin/",
      adds: [{ source: data, dest: "/data.txt" }],
    });
    // Found: by path, on the default PATH, through ENTRYPOINT.
    assert.deepEqual(source.imageConfig({ Cmd: ["/usr/local/bin/hello", "x"] }, []).Cmd, [
      "/usr/local/bin/hello",
      "x",
    ]);
    source.imageConfig({ Cmd: ["hello"] }, []);
    source.imageConfig({ Entrypoint: ["/usr/local/bin/hello"] }, ["x"]);
    assert.throws(() => source.imageConfig({ Cmd: ["/hello"] }, []), /not a file in the image/);
    assert.throws(() => source.imageConfig({ Cmd: ["/data.txt"] }, []), /not executable/);
    assert.throws(() => source.imageConfig({ Cmd: ["/usr/local/bin"] }, []), UsageError);
    assert.throws(() => source.imageConfig({ Cmd: ["/bin/sh", "-c", "hello"] }, []), /no \/bin\/sh/);
    assert.throws(() => source.imageConfig({ Entrypoint: [], Cmd: [] }, []), /no command/);
    assert.throws(() => source.imageConfig({ Cmd: ["hello"], Env: ["PATH=/opt"] }, []), UsageError);
  });

  test("a shell-form command is accepted when the image has /bin/sh", async () => {
    const source = await open({ dest: "/bin/sh" });
    assert.deepEqual(source.imageConfig({ Cmd: ["/bin/sh", "-c", "echo hi"] }, []).Cmd, [
      "/bin/sh",
      "-c",
      "echo hi",
    ]);
  });
});

describe("mkbase scratch flag parsing", () => {
  test("--user NAME[:UID]", () => {
    assert.deepEqual(parseScratchUser("nonroot"), { name: "nonroot", uid: 65532 });
    assert.deepEqual(parseScratchUser("app:10001"), { name: "app", uid: 10001 });
    assert.throws(() => parseScratchUser("app"), UsageError);
    assert.throws(() => parseScratchUser("1000"), UsageError);
    assert.throws(() => parseScratchUser("app:x"), UsageError);
  });

  test("--add SRC:DEST splits at the colon that starts the absolute DEST", () => {
    assert.deepEqual(parseAddSpec("./a:b.txt:/etc/x"), { source: "./a:b.txt", dest: "/etc/x" });
    assert.deepEqual(parseAddSpec("./static/:/srv/static/"), { source: "./static/", dest: "/srv/static/" });
    assert.throws(() => parseAddSpec("./a:relative"), UsageError);
  });

  test("--chown and --chmod", () => {
    assert.deepEqual(parseChown("1000", undefined), { uid: 1000, gid: 1000 });
    assert.deepEqual(parseChown("nonroot:root", { name: "nonroot", uid: 65532 }), { uid: 65532, gid: 0 });
    assert.throws(() => parseChown("www-data", undefined), UsageError);
    assert.equal(parseChmod("0755"), 0o755);
    assert.throws(() => parseChmod("u+x"), UsageError);
  });

  test("--platform os/arch=FILE names one program per platform", () => {
    const multi = scratchTargets(["--port", "1"], ["linux/amd64=./a", "linux/arm64=./b"]);
    assert.equal(multi.perPlatform, true);
    assert.deepEqual(multi.args, ["--port", "1"]);
    assert.deepEqual(
      multi.targets.map((target) => [target.binary, target.platform?.architecture]),
      [
        ["./a", "amd64"],
        ["./b", "arm64"],
      ],
    );
    const single = scratchTargets(["./hello", "x"], ["linux/arm64"]);
    assert.equal(single.perPlatform, false);
    assert.deepEqual(single.args, ["x"]);
    assert.equal(single.targets[0]?.binary, "./hello");
    assert.throws(() => scratchTargets([], ["linux/amd64=./a", "linux/amd64=./b"]), UsageError);
    assert.throws(() => scratchTargets([], ["linux/amd64=./a", "linux/arm64"]), UsageError);
    assert.throws(() => scratchTargets([], []), UsageError);
    assert.equal(platformTagSuffix({ os: "linux", architecture: "arm64", variant: "v8" }), "arm64");
    assert.equal(platformTagSuffix({ os: "linux", architecture: "arm", variant: "v7" }), "arm-v7");
  });
});
