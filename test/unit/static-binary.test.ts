import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import {
  chmod,
  copyFile,
  mkdir,
  mkdtemp,
  readFile,
  realpath,
  rm,
  stat,
  symlink,
  utimes,
  writeFile,
} from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Command } from "commander";
import { SourceError, UsageError } from "../../src/errors.js";
import {
  commonProgramPath,
  parseAddSpec,
  parseChmod,
  operandsAfterDashes,
  parseScratchUser,
  platformTagSuffix,
  registerScratchCommand,
  scratchTargets,
} from "../../src/cli/scratch.js";
import { parseChown } from "../../src/cli/image-options.js";
import {
  CA_BUNDLE_IMAGE_PATH,
  StaticBinarySource,
  comparePaths,
  groupFile,
  passwdFile,
  type StaticBinaryOptions,
} from "../../src/sources/static-binary.js";
import type { TarEntry } from "../../src/tar/entry.js";
import { makeGreetRoot } from "../support/glibc-root.js";

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
      user: { name: "nonroot", uid: 65532, gid: 65532 },
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
      "home directory 0755 0:0",
      "home/nonroot directory 0700 65532:65532",
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
      "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    );
    assert.equal(bytesOf(entryAt(source, "etc/group")), "root:x:0:\nnonroot:x:65532:\n");
    const passwd = entryAt(source, "etc/passwd");
    assert.equal(passwd.size, Buffer.byteLength(passwdFile({ name: "nonroot", uid: 65532, gid: 65532 })));
  });

  test("passwd and group for root alone hold one line each", () => {
    assert.equal(passwdFile({ name: "root", uid: 0, gid: 0 }), "root:x:0:0:root:/root:/sbin/nologin\n");
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
    // A zoneinfo directory without zones would give an image where TZ silently does nothing.
    await mkdir(path.join(empty, "usr/share/zoneinfo/Etc"), { recursive: true });
    await assert.rejects(open({ sysroot: empty, tzdata: true }), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.match(error.message, /holds no zone files/);
      return true;
    });
  });

  test("a --sysroot that does not exist is named as such, not as a sysroot without zoneinfo", async () => {
    const missing = path.join(workDir, "no-such-sysroot");
    for (const options of [{ tzdata: true }, {}]) {
      await assert.rejects(open({ sysroot: missing, ...options }), {
        name: "SourceError",
        message: `the sysroot ${missing} does not exist`,
      });
    }
  });

  test("two inputs for one path, or a path below a file, are refused", async () => {
    const other = path.join(workDir, "other");
    await writeFile(other, "x");
    await assert.rejects(open({ adds: [{ source: other, dest: "/hello" }] }), UsageError);
    await assert.rejects(open({ adds: [{ source: other, dest: "/hello/x" }] }), {
      name: "UsageError",
      message: `--add ${other}:/hello/x puts /hello/x below /hello, which ${built.hello} makes a file`,
      hint: "Choose a destination that is not below /hello.",
    });
    await assert.rejects(
      open({
        user: { name: "nonroot", uid: 65532, gid: 65532 },
        adds: [{ source: other, dest: "/etc/passwd" }],
      }),
      UsageError,
    );
  });
});

describe("StaticBinarySource checks", () => {
  test("an overlay whiteout name from --add is refused when the source opens, not while packing", async () => {
    const tree = path.join(workDir, "whiteout-tree");
    await mkdir(tree, { recursive: true });
    await writeFile(path.join(tree, ".wh.old"), "");
    await assert.rejects(open({ adds: [{ source: tree, dest: "/srv/" }] }), {
      name: "SourceError",
      message: `--add ${tree}:/srv/ puts /srv/.wh.old into the image: a ".wh." name in a layer is an overlay whiteout, which the engine takes for a deletion`,
    });
    await assert.rejects(open({ dest: "/.wh.bin/hello" }), SourceError);
  });

  test("a dynamic program is refused, naming its interpreter and libraries", async () => {
    await assert.rejects(open({ binary: built.helloDynamic }), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.match(error.message, /ld-linux-x86-64\.so\.2/);
      assert.match(error.message, /libc\.so\.6/);
      assert.match(error.hint ?? "", /--bundle-libs/);
      assert.match(error.hint ?? "", /-static/);
      // A Go program built with CGO_ENABLED=0 -buildmode=pie still names the loader.
      assert.match(error.hint ?? "", /CGO_ENABLED=0 for Go \(without -buildmode=pie/);
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

  test("--platform may name an amd64 or arm64 level, which no ELF header records", async () => {
    const v3 = { os: "linux", architecture: "amd64", variant: "v3" };
    assert.deepEqual((await open({ platform: v3 })).platform, v3);
    const v82 = { os: "linux", architecture: "arm64", variant: "v8.2" };
    assert.deepEqual((await open({ binary: built.helloArm64, platform: v82 })).platform, v82);
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
    assert.throws(() => source.imageConfig({ Cmd: ["/hello"] }, ["x"]), {
      name: "UsageError",
      message: "both a CMD (--cmd or -c CMD) and arguments after -- set the command",
    });
  });

  test("--user UID:GID sets USER to the numbers and adds no /etc/passwd or /etc/group", async () => {
    const source = await open({ user: { name: undefined, uid: 1000, gid: 2000 } });
    assert.equal(source.imageConfig({}, []).User, "1000:2000");
    const paths = [...source.entries(new AbortController().signal)].map((entry) => entry.path.toString());
    assert.deepEqual(
      paths.filter((p) => p.startsWith("etc")),
      [],
    );
  });

  test("--ca-certs sets SSL_CERT_FILE and --user a numeric USER", async () => {
    const source = await open({ caCerts: true, user: { name: "nonroot", uid: 65532, gid: 65532 } });
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
  test("--user NAME[:UID] or UID[:GID]", () => {
    assert.deepEqual(parseScratchUser("nonroot"), { name: "nonroot", uid: 65532, gid: 65532 });
    assert.deepEqual(parseScratchUser("app:10001"), { name: "app", uid: 10001, gid: 10001 });
    assert.throws(() => parseScratchUser("app"), UsageError);
    assert.deepEqual(parseScratchUser("1000"), { name: undefined, uid: 1000, gid: 1000 });
    assert.deepEqual(parseScratchUser("65532:0"), { name: undefined, uid: 65532, gid: 0 });
    assert.throws(() => parseScratchUser("1000:staff"), UsageError);
    assert.throws(() => parseScratchUser("4294967295"), UsageError);
    assert.throws(() => parseScratchUser("app:x"), UsageError);
    assert.deepEqual(parseScratchUser("root:0"), { name: "root", uid: 0, gid: 0 });
    assert.throws(() => parseScratchUser("app:0"), {
      name: "UsageError",
      message: "--user app:0: uid 0 is root, whatever the name",
    });
  });

  test("a part of --user or --chown that is not a number is named, with the whole value", () => {
    assert.throws(() => parseScratchUser("nonroot:"), {
      name: "UsageError",
      message: "--user nonroot:: an empty part is not a user or group number",
    });
    assert.throws(() => parseScratchUser("1000:staff"), {
      name: "UsageError",
      message: '--user 1000:staff: "staff" is not a user or group number',
    });
    assert.throws(() => parseChown("1000:99999999999", undefined), {
      name: "UsageError",
      message: '--chown 1000:99999999999: "99999999999" is not a user or group number',
    });
  });

  test("--user root:UID is refused: /etc/passwd would name root twice", () => {
    assert.throws(() => parseScratchUser("root:5"), {
      name: "UsageError",
      message: "--user root:5: root is uid 0",
    });
  });

  test("--add SRC:DEST splits at the colon that starts the absolute DEST", () => {
    assert.deepEqual(parseAddSpec("./a:b.txt:/etc/x"), { source: "./a:b.txt", dest: "/etc/x" });
    assert.deepEqual(parseAddSpec("./static/:/srv/static/"), { source: "./static/", dest: "/srv/static/" });
    assert.throws(() => parseAddSpec("./a:relative"), UsageError);
  });

  test("--chown and --chmod", () => {
    assert.deepEqual(parseChown("1000", undefined), { uid: 1000, gid: 1000 });
    assert.deepEqual(parseChown("nonroot:root", { name: "nonroot", uid: 65532, gid: 65532 }), {
      uid: 65532,
      gid: 0,
    });
    assert.throws(() => parseChown("www-data", undefined), UsageError);
    assert.equal(parseChmod("0755"), 0o755);
    assert.throws(() => parseChmod("u+x"), UsageError);
  });

  test("--platform os/arch=FILE names one program per platform", () => {
    const multi = scratchTargets({ beforeDashes: [], afterDashes: ["--port", "1"] }, [
      "linux/amd64=./a",
      "linux/arm64=./b",
    ]);
    assert.equal(multi.perPlatform, true);
    assert.deepEqual(multi.args, ["--port", "1"]);
    assert.deepEqual(
      multi.targets.map((target) => [target.binary, target.platform?.architecture]),
      [
        ["./a", "amd64"],
        ["./b", "arm64"],
      ],
    );
    const single = scratchTargets({ beforeDashes: ["./hello", "x"], afterDashes: [] }, ["linux/arm64"]);
    assert.equal(single.perPlatform, false);
    assert.deepEqual(single.args, ["x"]);
    assert.equal(single.targets[0]?.binary, "./hello");
    // Without --platform os/arch=FILE the first operand is the program, on either side of --.
    const dashed = scratchTargets({ beforeDashes: [], afterDashes: ["./hello", "--port", "1"] }, []);
    assert.equal(dashed.targets[0]?.binary, "./hello");
    assert.deepEqual(dashed.args, ["--port", "1"]);
    const none = { beforeDashes: [], afterDashes: [] };
    assert.throws(() => scratchTargets(none, ["linux/amd64=./a", "linux/amd64=./b"]), UsageError);
    assert.throws(() => scratchTargets(none, ["linux/amd64=./a", "linux/arm64"]), UsageError);
    assert.throws(() => scratchTargets(none, []), UsageError);
    assert.equal(platformTagSuffix({ os: "linux", architecture: "arm64", variant: "v8" }), "arm64");
    assert.equal(platformTagSuffix({ os: "linux", architecture: "arm", variant: "v7" }), "arm-v7");
  });
});

describe("mkbase scratch operands next to --platform os/arch=FILE", () => {
  const bothMessage =
    "the argument ./hello-static and --platform linux/amd64=./hello-musl both name a program: the program is " +
    "given either as the argument or in each --platform os/arch=FILE, not both";

  test("operandsAfterDashes finds the operands after the -- that ended the options", () => {
    assert.deepEqual(operandsAfterDashes(["--platform", "linux/amd64=./a", "--", "--flag"], ["--flag"]), [
      "--flag",
    ]);
    assert.deepEqual(operandsAfterDashes(["--platform", "linux/amd64=./a"], ["./b"]), []);
    // A second -- after the first is an argument for the program.
    assert.deepEqual(operandsAfterDashes(["-t", "x", "--", "a", "--", "b"], ["a", "--", "b"]), [
      "a",
      "--",
      "b",
    ]);
    // A -- given as an option's value is followed by options, so it did not end them.
    assert.deepEqual(operandsAfterDashes(["--label", "--", "-t", "x", "./a", "--", "b"], ["./a", "b"]), [
      "b",
    ]);
    assert.deepEqual(operandsAfterDashes(["./a", "--"], ["./a"]), []);
  });

  test("an operand before -- is refused with --platform os/arch=FILE, exactly as the CLI says it", () => {
    assert.throws(
      () =>
        scratchTargets({ beforeDashes: ["./hello-static"], afterDashes: [] }, ["linux/amd64=./hello-musl"]),
      (error: unknown) => {
        assert.ok(error instanceof UsageError);
        assert.equal(error.message, bothMessage);
        assert.equal(
          error.hint,
          "Arguments for the program (the image's CMD) go after --, as in mkbase scratch --platform linux/amd64=./hello-musl -- --port 8080.",
        );
        return true;
      },
    );
    assert.throws(
      () =>
        scratchTargets({ beforeDashes: ["./x", "y"], afterDashes: ["z"] }, [
          "linux/amd64=./a",
          "linux/arm64=./b",
        ]),
      {
        message:
          "the arguments ./x y and --platform linux/amd64=./a --platform linux/arm64=./b both name a program: " +
          "the program is given either as the argument or in each --platform os/arch=FILE, not both",
      },
    );
  });

  /** Runs `mkbase scratch ARGV` through commander as main() wires it; resolves with the exit code. */
  async function runScratchCommand(argv: readonly string[]): Promise<number | undefined> {
    const program = new Command("mkbase").exitOverride();
    let code: number | undefined;
    registerScratchCommand(
      program,
      () => ({ signal: new AbortController().signal, env: {}, stdout: new PassThrough() }),
      (done) => (code = done),
    );
    await program.parseAsync(["scratch", ...argv], { from: "user" });
    return code;
  }

  test("through commander: a program next to --platform os/arch=FILE is a usage error", async () => {
    // Refused before any file is opened: these paths need not exist.
    for (const argv of [
      ["./hello-static", "--platform", "linux/amd64=./hello-musl", "-t", "x:1"],
      ["--platform", "linux/amd64=./hello-musl", "./hello-static"],
      ["--platform", "linux/amd64=./hello-musl", "./hello-static", "--", "--flag"],
    ]) {
      await assert.rejects(runScratchCommand(argv), { name: "UsageError", message: bothMessage });
    }
    await assert.rejects(runScratchCommand(["./nonexistent", "--platform", "linux/amd64=./hello-musl"]), {
      name: "UsageError",
      message: bothMessage.replace("./hello-static", "./nonexistent"),
    });
  });

  test("through commander: an existing file or directory after the program, without --, is a usage error", async () => {
    const other = path.join(workDir, "other-program");
    await copyFile(built.hello, other);
    const refusal = (operand: string, what: string) => ({
      name: "UsageError",
      message: `${operand}, written after the program ${built.hello}, is ${what} on this machine: mkbase scratch puts one program into an image, and ${operand} would only be an argument of that program (the image's CMD)`,
    });
    await assert.rejects(runScratchCommand([built.hello, other]), refusal(other, "a file"));
    await assert.rejects(runScratchCommand(["-q", built.hello, other, "-t", "x"]), refusal(other, "a file"));
    await assert.rejects(runScratchCommand([built.hello, "serve", workDir]), (error: unknown) => {
      assert.deepEqual(
        { name: (error as Error).name, message: (error as Error).message },
        refusal(workDir, "a directory"),
      );
      assert.equal(
        (error as UsageError).hint,
        `To pass it to the program, write it after --: mkbase scratch ${built.hello} -- serve ${workDir}. To put it into the image, use --add ${workDir}:/DEST; for one program per platform, --platform os/arch=FILE.`,
      );
      return true;
    });
    // After --, with or without an option before it, the same names are arguments: the program is opened
    // (and, dynamic here, refused for that), which the check above comes before.
    for (const argv of [
      [built.helloDynamic, "--", other],
      [built.helloDynamic, "serve", "--", other],
      ["-q", built.helloDynamic, "--", other],
      ["--", built.helloDynamic, other],
    ]) {
      await assert.rejects(runScratchCommand(argv), {
        name: "SourceError",
        message: new RegExp(`^${built.helloDynamic} is dynamically linked`),
      });
    }
  });

  test("through commander: operands after -- become the CMD, also with --platform os/arch=FILE", async () => {
    const cases: [string[], string][] = [
      [["--platform", `linux/amd64=${built.hello}`, "--", "--flag"], '["--flag"]'],
      [
        ["--platform", `linux/amd64=${built.hello}`, "--", "./hello-static", "--", "x"],
        '["./hello-static","--","x"]',
      ],
      [[built.hello, "--", "--port", "8080"], '["--port","8080"]'],
      [["--", built.hello, "--port", "8080"], '["--port","8080"]'],
    ];
    for (const [index, [argv, cmd]] of cases.entries()) {
      const context = path.join(workDir, `context-${index}`);
      // The options come first: after -- they would be arguments too.
      const code = await runScratchCommand(["-q", "-o", `type=context,dest=${context}`, ...argv]);
      assert.equal(code, 0);
      const dockerfile = await readFile(path.join(context, "Dockerfile"), "utf8");
      assert.match(dockerfile, /^ENTRYPOINT \["\/hello"\]$/m);
      assert.ok(dockerfile.includes(`\nCMD ${cmd}\n`), dockerfile);
    }
  });
});

describe("StaticBinarySource: symlinks given as sources", () => {
  let dir: string;
  let real: string;

  before(async () => {
    dir = path.join(workDir, "links");
    await mkdir(dir);
    real = path.join(dir, "hello-static");
    await copyFile(built.hello, real);
    await chmod(real, 0o755);
    await symlink("hello-static", path.join(dir, "hello"));
    await symlink("hello", path.join(dir, "hello-again"));
    await symlink("missing", path.join(dir, "dangling"));
    await symlink("dangling", path.join(dir, "to-dangling"));
    await symlink("loop-b", path.join(dir, "loop-a"));
    await symlink("loop-a", path.join(dir, "loop-b"));
  });

  function contentPath(entry: TarEntry): string | undefined {
    return entry.content?.kind === "path" ? entry.content.path.toString() : undefined;
  }

  test("a symlinked program is followed, and the image names it as given", async () => {
    for (const name of ["hello", "hello-again"]) {
      const source = await open({ binary: path.join(dir, name) });
      assert.deepEqual(listing(source.entryList), [`${name} file 0755 0:0`]);
      assert.equal(source.binaryImagePath, `/${name}`);
      const [entry] = source.entryList;
      assert.ok(entry !== undefined);
      // The packer opens with O_NOFOLLOW: the entry must name the file itself, not the link.
      assert.equal(contentPath(entry), await realpath(real));
      assert.equal(entry.size, (await stat(real)).size);
    }
  });

  test("a dangling or looping symlink is refused, naming the link and its target", async () => {
    const dangling = path.join(dir, "dangling");
    await assert.rejects(open({ binary: dangling }), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.equal(
        error.message,
        `${dangling} is a symbolic link to missing (${path.join(dir, "missing")}), which does not exist`,
      );
      assert.equal(error.hint, "Point the link at an existing file, or give the file's own path.");
      assert.equal(error.path, dangling);
      return true;
    });
    const chained = path.join(dir, "to-dangling");
    await assert.rejects(open({ binary: chained }), {
      name: "SourceError",
      message: `${chained} is a symbolic link to dangling (${dangling}), which leads to ${path.join(dir, "missing")}, which does not exist`,
    });
    const loop = path.join(dir, "loop-a");
    await assert.rejects(open({ binary: loop }), {
      name: "SourceError",
      message: `${loop} is a symbolic link to loop-b, and the links from there go round in a loop`,
    });
    const throughLoop = path.join(loop, "hello");
    await assert.rejects(open({ binary: throughLoop }), {
      name: "SourceError",
      message: `${throughLoop} cannot be reached: the symbolic links on its path go round in a loop`,
    });
    // A path that is no link at all keeps its own message.
    await assert.rejects(open({ binary: path.join(dir, "nothing") }), {
      name: "SourceError",
      message: `${path.join(dir, "nothing")} does not exist`,
    });
  });

  test("--add follows a symlinked file or directory; links inside a directory stay links", async () => {
    const data = path.join(dir, "data.txt");
    await writeFile(data, "data\n");
    await chmod(data, 0o640);
    await symlink("data.txt", path.join(dir, "data-link"));
    const tree = path.join(dir, "tree");
    await mkdir(path.join(tree, "sub"), { recursive: true });
    await writeFile(path.join(tree, "sub", "a.txt"), "a\n");
    await symlink("sub/a.txt", path.join(tree, "inner-link"));
    await symlink("tree", path.join(dir, "tree-link"));

    const source = await open({
      adds: [
        { source: path.join(dir, "data-link"), dest: "/x" },
        { source: path.join(dir, "data-link"), dest: "/etc/" },
        { source: path.join(dir, "tree-link"), dest: "/srv" },
      ],
    });
    assert.deepEqual(listing(source.entryList), [
      "etc directory 0755 0:0",
      "etc/data-link file 0640 0:0",
      "hello file 0755 0:0",
      "srv directory 0755 0:0",
      "srv/inner-link symlink 0777 0:0",
      "srv/sub directory 0755 0:0",
      "srv/sub/a.txt file 0644 0:0",
      "x file 0640 0:0",
    ]);
    assert.equal(contentPath(entryAt(source, "x")), await realpath(data));
    assert.equal(contentPath(entryAt(source, "etc/data-link")), await realpath(data));
    assert.equal(entryAt(source, "srv/inner-link").linkname?.toString(), "sub/a.txt");
    assert.equal(contentPath(entryAt(source, "srv/sub/a.txt")), path.join(await realpath(tree), "sub/a.txt"));

    const dangling = path.join(dir, "dangling");
    await assert.rejects(open({ adds: [{ source: dangling, dest: "/x" }] }), {
      name: "SourceError",
      message: `--add ${dangling}:/x: ${dangling} is a symbolic link to missing (${path.join(dir, "missing")}), which does not exist`,
    });
  });

  test("--add of a symlink to a directory on another filesystem keeps its subdirectories", async () => {
    // The walk keeps a directory on another filesystem than its root's empty, as a mount point: a tmpfs
    // of the test's own is that other filesystem (the suite runs as root).
    const tree = await mkdtemp(path.join(workDir, "other-fs-"));
    await run("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", tree]);
    try {
      await mkdir(path.join(tree, "sub"));
      await writeFile(path.join(tree, "sub", "a.txt"), "a\n");
      const link = path.join(dir, "other-fs-link");
      await symlink(tree, link);
      const source = await open({ adds: [{ source: link, dest: "/srv" }] });
      assert.equal(entryAt(source, "srv/sub/a.txt").type, "file");
    } finally {
      await run("umount", [tree]);
    }
  });
});

describe("StaticBinarySource: shared libraries", () => {
  test("a shared library is refused as not a program, also with --bundle-libs", async () => {
    const library = path.join(workDir, "libx.so");
    await run("gcc", ["-shared", "-fPIC", "-o", library, path.join(fixtures, "hello.c")]);
    for (const bundleLibs of [false, true]) {
      await assert.rejects(open({ binary: library, bundleLibs }), (error: unknown) => {
        assert.ok(error instanceof SourceError);
        assert.equal(
          error.message,
          `${library} is a shared library, not a program: it has no program interpreter (PT_INTERP) and no position-independent executable mark (DF_1_PIE)`,
        );
        assert.equal(
          error.hint,
          "Give mkbase scratch the program that uses the library; --bundle-libs copies the libraries a dynamic program needs, --add SRC:DEST any other file.",
        );
        return true;
      });
    }
    const named = path.join(workDir, "libnamed.so.1");
    await run("gcc", [
      "-shared",
      "-fPIC",
      "-nostdlib",
      "-Wl,-soname,libnamed.so.1",
      "-o",
      named,
      path.join(fixtures, "hello.c"),
    ]);
    await assert.rejects(open({ binary: named }), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.ok(
        error.message.startsWith(`${named} is a shared library (libnamed.so.1), not a program:`),
        error.message,
      );
      return true;
    });
  });

  test("a static PIE (ET_DYN without PT_INTERP, marked DF_1_PIE) is a program", async () => {
    const staticPie = path.join(workDir, "hello-static-pie");
    await run("gcc", ["-static-pie", "-O2", "-o", staticPie, path.join(fixtures, "hello.c")]);
    const source = await open({ binary: staticPie });
    assert.equal(source.elf.type, "DYN");
    assert.deepEqual(listing(source.entryList), ["hello-static-pie file 0755 0:0"]);
  });
});

describe("StaticBinarySource: libraries the loader finds through /etc/ld.so.conf", () => {
  let sysroot: string;
  let program: string;

  before(async () => {
    // A root whose ld.so.conf alone names /opt/greet/lib, where libgreet.so lives: glibc finds it there
    // through /etc/ld.so.cache, which no image built from the bundled files has.
    sysroot = path.join(workDir, "ld-so-conf-root");
    program = await makeGreetRoot({
      root: sysroot,
      ldSoConf: "/opt/greet/lib/\n/lib/x86_64-linux-gnu\n",
      libraryDir: "opt/greet/lib",
      fixtures,
      program: path.join(workDir, "greet-configured"),
    });
  });

  test("their directories go into LD_LIBRARY_PATH; libraries in the loader's own directories need none", async () => {
    const source = await open({ binary: program, bundleLibs: true, sysroot });
    assert.equal(source.lookUp("/opt/greet/lib/libgreet.so")?.type, "file");
    assert.deepEqual(source.libraryPath, ["/opt/greet/lib"]);
    assert.deepEqual(source.imageConfig({}, []).Env, ["LD_LIBRARY_PATH=/opt/greet/lib"]);
    // A value the user gave keeps its precedence; the bundled directory follows it, once.
    assert.deepEqual(source.imageConfig({ Env: ["LD_LIBRARY_PATH=/mine", "A=1"] }, []).Env, [
      "A=1",
      "LD_LIBRARY_PATH=/mine:/opt/greet/lib",
    ]);
    assert.deepEqual(source.imageConfig({ Env: ["LD_LIBRARY_PATH=/opt/greet/lib:/mine"] }, []).Env, [
      "LD_LIBRARY_PATH=/opt/greet/lib:/mine",
    ]);
    assert.deepEqual(source.imageConfig({ Env: ["LD_LIBRARY_PATH="] }, []).Env, [
      "LD_LIBRARY_PATH=/opt/greet/lib",
    ]);

    const plain = await open({ binary: built.helloDynamic, bundleLibs: true, sysroot });
    assert.deepEqual(plain.libraryPath, []);
    assert.deepEqual(plain.imageConfig({}, []), { Entrypoint: ["/hello-dynamic"] });
  });
});

describe("commonProgramPath", () => {
  const linux = (architecture: string, variant?: string) => ({ os: "linux", architecture, variant });

  test("takes a name without its own architecture, so that every platform runs one path", () => {
    assert.equal(
      commonProgramPath([
        { binary: "dist/hello-amd64", platform: linux("amd64") },
        { binary: "dist/hello-arm64", platform: linux("arm64", "v8") },
      ]),
      "/hello",
    );
    assert.equal(
      commonProgramPath([
        { binary: "out/app_linux_x86_64", platform: linux("amd64") },
        { binary: "out/app_linux_aarch64", platform: linux("arm64") },
        { binary: "out/app.armv7", platform: linux("arm", "v7") },
      ]),
      "/app",
    );
    assert.equal(
      commonProgramPath([
        { binary: "amd64/server", platform: linux("amd64") },
        { binary: "arm64/server", platform: linux("arm64") },
      ]),
      "/server",
    );
  });

  test("refuses names that still differ, pointing at --dest", () => {
    assert.throws(
      () =>
        commonProgramPath([
          { binary: "hello-arm64", platform: linux("amd64") },
          { binary: "hello-amd64", platform: linux("arm64") },
        ]),
      (error: unknown) => {
        assert.ok(error instanceof UsageError);
        assert.equal(
          error.message,
          "the programs have different names (hello-arm64, hello-amd64): each platform's image would run another path",
        );
        assert.match(error.hint ?? "", /--dest \/app/);
        return true;
      },
    );
  });
});
