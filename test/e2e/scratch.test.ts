/**
 * `mkbase scratch` into the real Docker Engine: programs compiled here become FROM scratch images that
 * `docker run` starts, holding exactly the expected files; programs that could not run there are refused
 * before any image exists.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { connect, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { createServer as createTlsServer } from "node:tls";
import {
  describeResult,
  escapeRegExp,
  mkbaseLauncher,
  repositoryRoot,
  runChecked,
  runCommand,
  runMkbase,
  type RunResult,
} from "./support/cli.js";
import {
  dockerRun,
  engineSocket,
  imageIds,
  imageInspect,
  removeImages,
  uniqueTag,
} from "./support/docker.js";
import { registerArm64Emulation } from "./support/emulation.js";
import { containerRuntimePaths } from "./support/inspect.js";
import { makeGreetRoot } from "../support/glibc-root.js";
import { writeCertificateAuthority, writeSignedCertificate, type KeyPair } from "../support/certificate.js";

const imageIdPattern = /^sha256:[0-9a-f]{64}$/;
const greeting = "hello from mkbase";

/** Tags and IDs this file made; all removed at the end. */
const made = new Set<string>();
let work: string;
const programs = {
  hello: "",
  helloDynamic: "",
  helloArm64: "",
  certsTz: "",
  whoami: "",
};
/** Whether the kernel runs arm64 programs through qemu (binfmt_misc), so arm64 images can be started. */
let arm64Runs = false;

async function compile(
  compiler: string,
  name: string,
  output: string,
  flags: readonly string[],
): Promise<void> {
  await runChecked(compiler, ["-O2", ...flags, "-o", output, join(repositoryRoot, "fixtures", "c", name)]);
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), "mkbase-e2e-scratch-"));
  programs.hello = join(work, "hello");
  programs.helloDynamic = join(work, "hello-dynamic");
  programs.helloArm64 = join(work, "hello-arm64");
  programs.certsTz = join(work, "certs-tz");
  programs.whoami = join(work, "whoami");
  await compile("gcc", "hello.c", programs.hello, ["-static"]);
  await compile("gcc", "hello.c", programs.helloDynamic, []);
  await compile("aarch64-linux-gnu-gcc", "hello.c", programs.helloArm64, ["-static"]);
  await compile("gcc", "certs-tz.c", programs.certsTz, ["-static"]);
  await compile("gcc", "whoami.c", programs.whoami, ["-static"]);
  arm64Runs = await registerArm64Emulation();
});

after(async () => {
  await removeImages(made);
  await rm(work, { recursive: true, force: true });
});

/** `mkbase scratch ARGS… -t TAG`, which must succeed; returns the printed image ID. */
async function scratch(tag: string, args: readonly string[]): Promise<string> {
  made.add(tag);
  const result = await runMkbase(["scratch", ...args, "-t", tag, "--quiet"]);
  assert.equal(result.code, 0, describeResult(result));
  const id = result.stdout.trim();
  assert.match(id, imageIdPattern);
  made.add(id);
  return id;
}

/**
 * The image's files, from `docker export` of a created container, without what the engine adds to every
 * container (and without `/etc` itself when the image has no `/etc`, since the engine creates it then).
 */
async function imageFiles(image: string, imageHasEtc: boolean): Promise<string[]> {
  const container = (await runChecked("docker", ["create", image])).trim();
  try {
    const listing = await runChecked("sh", ["-c", 'docker export "$1" | tar -t', "sh", container]);
    return listing
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => `/${line.replace(/\/$/, "")}`)
      .filter(
        (path) =>
          !containerRuntimePaths.some((runtime) => path === runtime || path.startsWith(`${runtime}/`)),
      )
      .filter((path) => imageHasEtc || path !== "/etc")
      .sort();
  } finally {
    await runChecked("docker", ["rm", container]);
  }
}

/** Runs mkbase expecting a refusal: non-zero exit, the expected message, no new image, no tag. */
async function assertRefused(args: readonly string[], pattern: RegExp, exitCode: number): Promise<RunResult> {
  const tag = uniqueTag("scratch-refused");
  made.add(tag);
  const before = await imageIds();
  const result = await runMkbase(["scratch", ...args, "-t", tag]);
  assert.equal(result.code, exitCode, describeResult(result));
  assert.match(result.stderr, pattern);
  assert.equal(result.stdout, "");
  assert.equal(await imageInspect(tag), undefined);
  assert.deepEqual(
    [...(await imageIds())].filter((id) => !before.has(id)),
    [],
  );
  return result;
}

describe("mkbase scratch", () => {
  test("a static program runs, and the image holds exactly that program", async () => {
    const tag = uniqueTag("scratch-hello");
    await scratch(tag, [programs.hello]);
    const run = await dockerRun(tag, []);
    assert.equal(run.code, 0, describeResult(run));
    assert.equal(run.stdout, `${greeting}\n`);
    assert.deepEqual(await imageFiles(tag, false), ["/hello"]);
    const inspect = await imageInspect(tag);
    assert.deepEqual(inspect?.Config?.Entrypoint, ["/hello"]);
    assert.equal(inspect?.Architecture, "amd64");
  });

  test("a dynamic program is refused with its loader and library named; --bundle-libs makes it run", async () => {
    const refused = await assertRefused([programs.helloDynamic], /ld-linux-x86-64\.so\.2/, 3);
    assert.match(refused.stderr, /libc\.so\.6/);
    assert.match(refused.stderr, /--bundle-libs/);

    const tag = uniqueTag("scratch-bundled");
    await scratch(tag, [programs.helloDynamic, "--bundle-libs"]);
    const run = await dockerRun(tag, []);
    assert.equal(run.code, 0, describeResult(run));
    assert.equal(run.stdout, `${greeting}\n`);
    const files = await imageFiles(tag, false);
    assert.ok(files.includes("/hello-dynamic"), files.join("\n"));
    assert.ok(
      files.some((file) => file.endsWith("/libc.so.6")),
      files.join("\n"),
    );
    assert.ok(
      files.some((file) => file.endsWith("/ld-linux-x86-64.so.2")),
      files.join("\n"),
    );
  });

  test("--bundle-libs: a library only /etc/ld.so.conf names is found in the image through LD_LIBRARY_PATH", async () => {
    // The sysroot's ld.so.conf names /opt/greet/lib, as /usr/local/lib is named on most machines: its
    // loader finds libgreet.so there through /etc/ld.so.cache, which the image does not have.
    const sysroot = join(work, "ld-so-conf-root");
    const program = await makeGreetRoot({
      root: sysroot,
      ldSoConf: "/opt/greet/lib\n",
      libraryDir: "opt/greet/lib",
      fixtures: join(repositoryRoot, "fixtures", "c"),
      program: join(work, "greet"),
    });

    const tag = uniqueTag("scratch-ld-so-conf");
    await scratch(tag, [program, "--bundle-libs", "--sysroot", sysroot]);
    const run = await dockerRun(tag, []);
    assert.equal(run.code, 0, describeResult(run));
    assert.equal(run.stdout, "hello from libgreet\n");
    assert.deepEqual((await imageInspect(tag))?.Config?.Env, ["LD_LIBRARY_PATH=/opt/greet/lib"]);
  });

  test("an existing file after the program, without --, is refused; after -- it is an argument", async () => {
    const refused = await assertRefused([programs.hello, programs.whoami], /written after the program/, 2);
    assert.match(
      refused.stderr,
      new RegExp(escapeRegExp(`mkbase scratch ${programs.hello} -- ${programs.whoami}`)),
    );
    // No option before the --: the top level of the command line takes it, and it still counts.
    const result = await runMkbase(["scratch", programs.hello, "--", programs.whoami]);
    assert.equal(result.code, 0, describeResult(result));
    const id = result.stdout.trim();
    assert.match(id, imageIdPattern);
    made.add(id);
    assert.deepEqual((await imageInspect(id))?.Config?.Cmd, [programs.whoami]);
  });

  test("an arm64 program makes an arm64 image; --platform linux/amd64 contradicts it", async (t) => {
    const tag = uniqueTag("scratch-arm64");
    await scratch(tag, [programs.helloArm64]);
    const inspect = await imageInspect(tag);
    assert.equal(inspect?.Architecture, "arm64");
    if (arm64Runs) {
      const run = await dockerRun(tag, [], { dockerArgs: ["--platform", "linux/arm64"] });
      assert.equal(run.code, 0, describeResult(run));
      assert.equal(run.stdout, `${greeting}\n`);
    } else {
      t.diagnostic("qemu-aarch64 is not registered with binfmt_misc: the arm64 image was not started");
    }
    await assertRefused(
      [programs.helloArm64, "--platform", "linux/amd64"],
      /linux\/arm64.*--platform asks for linux\/amd64/,
      2,
    );
  });

  test("--ca-certs and --tzdata put both in place; --user nonroot runs as 65532 with a home of its own, --user 1000:2000 as those numbers", async () => {
    const certsTag = uniqueTag("scratch-certs");
    await scratch(certsTag, [programs.certsTz, "--ca-certs", "--tzdata"]);
    const certs = await dockerRun(certsTag, []);
    assert.equal(certs.code, 0, describeResult(certs));
    assert.match(certs.stdout, /^OK ca-certificates\.crt=\d+ UTC=\d+$/m);
    assert.ok(
      (await imageInspect(certsTag))?.Config?.Env?.includes(
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
      ),
    );

    const userTag = uniqueTag("scratch-whoami");
    await scratch(userTag, [programs.whoami, "--user", "nonroot", "--tmp"]);
    const whoami = await dockerRun(userTag, []);
    assert.equal(whoami.code, 0, describeResult(whoami));
    assert.equal(whoami.stdout, "uid=65532 gid=65532 home=/home/nonroot writable\n");
    assert.deepEqual(await imageFiles(userTag, true), [
      "/etc",
      "/etc/group",
      "/etc/passwd",
      "/home",
      "/home/nonroot",
      "/tmp",
      "/whoami",
    ]);

    const numericTag = uniqueTag("scratch-whoami-numeric");
    await scratch(numericTag, [programs.whoami, "--user", "1000:2000"]);
    const numeric = await dockerRun(numericTag, []);
    assert.equal(numeric.code, 0, describeResult(numeric));
    assert.equal(numeric.stdout, "uid=1000 gid=2000 home=/ unwritable\n");
    assert.deepEqual(await imageFiles(numericTag, false), ["/whoami"]);
  });

  test("inputs that could not run are refused before any image exists", async () => {
    const script = join(work, "script.sh");
    await writeFile(script, "#!/bin/sh\necho hi\n", { mode: 0o755 });
    const empty = join(work, "empty");
    await writeFile(empty, "");
    const directory = join(work, "a-directory");
    await mkdir(directory, { recursive: true });
    const data = join(work, "data.txt");
    await writeFile(data, "not a program\n", { mode: 0o644 });

    await assertRefused([script], /script for \/bin\/sh/, 3);
    await assertRefused([empty], /empty/, 3);
    await assertRefused([directory], /directory/, 3);
    await assertRefused([join(work, "missing")], /does not exist/, 3);
    await assertRefused(
      [programs.hello, "--add", `${data}:/data.txt`, "--cmd", '["/data.txt"]'],
      /not executable/,
      2,
    );
    await assertRefused([programs.hello, "--cmd", '["/nowhere"]'], /not a file in the image/, 2);
    await assertRefused([programs.hello, "--cmd", "echo hi"], /no \/bin\/sh/, 2);
  });

  test("the same program and flags give the same image ID", async () => {
    const first = await scratch(uniqueTag("scratch-repro"), [programs.hello, "--tmp", "--user", "nonroot"]);
    const secondTag = uniqueTag("scratch-repro");
    made.add(secondTag);
    const second = await runMkbase([
      "scratch",
      programs.hello,
      "--tmp",
      "--user",
      "nonroot",
      "-t",
      secondTag,
    ]);
    assert.equal(second.code, 0, describeResult(second));
    assert.equal(second.stdout.trim(), first);
    // The engine holds that image already: the rebuild only tags it, and says so.
    assert.match(second.stderr, /already holds sha256:[0-9a-f]{12}…: tagging it/);
    assert.doesNotMatch(second.stderr, /Loaded image/);
    assert.equal((await imageInspect(secondTag))?.Id, first);
    const pinned = await scratch(uniqueTag("scratch-repro"), [
      programs.hello,
      "--source-date-epoch",
      "1700000000",
    ]);
    assert.equal((await imageInspect(pinned))?.Created, "2023-11-14T22:13:20Z");
  });

  test("DOCKER_HOST=ssh:// goes through ssh and `docker system dial-stdio`, as the docker CLI does", async () => {
    // There is no sshd here: a stand-in ssh records its arguments and runs the remote command locally.
    // The engine and the docker CLI's dial-stdio at the other end are the real ones.
    const bin = join(work, "ssh-bin");
    await mkdir(bin);
    const standIn = [
      "#!/bin/sh",
      'echo "$@" >>"$(dirname "$0")/calls"',
      'while [ "$1" != "--" ]; do shift; done',
      "shift 2",
      // The remote side has its own engine: DOCKER_HOST=ssh://… here would make dial-stdio call ssh again.
      "unset DOCKER_HOST",
      'exec "$@"',
    ].join("\n");
    await writeFile(join(bin, "ssh"), `${standIn}\n`, { mode: 0o755 });
    const env = {
      ...process.env,
      PATH: `${bin}:${process.env.PATH ?? ""}`,
      DOCKER_HOST: "ssh://builder@engine.example:2200",
    };
    // One small image (a single load) and one whose layer passes 16 MiB (import, load, remove).
    const payload = join(work, "payload.bin");
    await writeFile(payload, randomBytes(20 * 1024 * 1024));
    for (const extra of [[], ["--add", `${payload}:/payload.bin`]]) {
      const tag = uniqueTag("scratch-ssh");
      made.add(tag);
      const result = await runMkbase(["scratch", programs.hello, ...extra, "-t", tag, "--quiet"], { env });
      assert.equal(result.code, 0, describeResult(result));
      made.add(result.stdout.trim());
      const run = await dockerRun(tag, []);
      assert.equal(run.stdout, `${greeting}\n`, describeResult(run));
      const files = await imageFiles(tag, false);
      assert.deepEqual(files, extra.length === 0 ? ["/hello"] : ["/hello", "/payload.bin"]);
    }
    // Two ssh logins per command, as /_ping and /info go out together; every later request reuses them.
    const calls = (await readFile(join(bin, "calls"), "utf8")).trim().split("\n");
    assert.equal(calls.length, 4, calls.join("\n"));
    for (const call of new Set(calls)) {
      assert.equal(
        call,
        "-o ConnectTimeout=30 -T -l builder -p 2200 -- engine.example docker system dial-stdio",
      );
    }
  });

  test("DOCKER_HOST=tcp:// with DOCKER_TLS_VERIFY speaks mutual TLS with DOCKER_CERT_PATH's certificates", async () => {
    // As a dockerd started with --tlsverify: a TLS front that wants a client certificate signed by the
    // engine's CA, in front of the real engine's socket.
    const certs = join(work, "tls");
    await mkdir(certs);
    const ca = writeCertificateAuthority(certs, "engine");
    const server = writeSignedCertificate(certs, "server", ca, [
      "subjectAltName=IP:127.0.0.1",
      "extendedKeyUsage=serverAuth",
    ]);
    const front = createTlsServer(
      {
        key: await readFile(server.key),
        cert: await readFile(server.cert),
        ca: await readFile(ca.cert),
        requestCert: true,
        rejectUnauthorized: true,
      },
      (socket) => {
        const engine = connect(engineSocket());
        socket.pipe(engine).pipe(socket);
        socket.on("error", () => engine.destroy());
        engine.on("error", () => socket.destroy());
      },
    );
    let handshakes = 0;
    front.on("secureConnection", () => (handshakes += 1));
    await new Promise<void>((resolve) => front.listen(0, "127.0.0.1", resolve));
    /** A DOCKER_CERT_PATH as the docker CLI reads it: ca.pem, and a client's cert.pem and key.pem. */
    const certPath = async (name: string, clientCa: KeyPair): Promise<string> => {
      const dir = join(certs, name);
      await mkdir(dir);
      const client = writeSignedCertificate(dir, "client", clientCa, ["extendedKeyUsage=clientAuth"]);
      await copyFile(ca.cert, join(dir, "ca.pem"));
      await copyFile(client.cert, join(dir, "cert.pem"));
      await copyFile(client.key, join(dir, "key.pem"));
      return dir;
    };
    const env = (dir: string) => ({
      ...process.env,
      DOCKER_HOST: `tcp://127.0.0.1:${(front.address() as AddressInfo).port}`,
      DOCKER_TLS_VERIFY: "1",
      DOCKER_CERT_PATH: dir,
    });
    try {
      const tag = uniqueTag("scratch-tls");
      made.add(tag);
      const good = await certPath("good", ca);
      const result = await runMkbase(["scratch", programs.hello, "-t", tag, "--quiet"], { env: env(good) });
      assert.equal(result.code, 0, describeResult(result));
      made.add(result.stdout.trim());
      assert.ok(handshakes > 0, "mkbase did not go through the TLS front");
      assert.equal((await dockerRun(tag, [])).stdout, `${greeting}\n`);

      // A client certificate from another CA: the engine refuses the handshake, and mkbase says so.
      const refusedTag = uniqueTag("scratch-tls-refused");
      made.add(refusedTag);
      const stranger = await certPath("stranger", writeCertificateAuthority(certs, "stranger"));
      const refused = await runMkbase(["scratch", programs.hello, "-t", refusedTag], { env: env(stranger) });
      assert.equal(refused.code, 4, describeResult(refused));
      assert.match(refused.stderr, /TLS|certificate/i);
      assert.equal(await imageInspect(refusedTag), undefined);
    } finally {
      await new Promise((resolve) => front.close(resolve));
    }
  });

  test("on a terminal: a spinner; on a terminal that reports no width: plain progress lines", async () => {
    // util-linux's script(1) gives mkbase a pty; stty sets the width the terminal reports.
    const env = { ...process.env };
    delete env.CI;
    const onTerminal = async (columns: number): Promise<string> => {
      const tag = uniqueTag(`scratch-tty-${columns}`);
      made.add(tag);
      const command = `stty cols ${columns} rows 40; exec "$0" scratch "$1" -t "$2"`;
      const result = await runCommand(
        "script",
        ["-qec", `sh -c '${command}' ${mkbaseLauncher} ${programs.hello} ${tag}`, "/dev/null"],
        { env, timeoutMs: 60_000 },
      );
      assert.equal(result.code, 0, describeResult(result));
      assert.ok((await imageInspect(tag)) !== undefined, describeResult(result));
      return result.stdout;
    };
    const sized = await onTerminal(100);
    const hideCursor = "\u001b[?25l";
    const lineUp = "\u001b[1A";
    assert.ok(sized.includes(hideCursor), "the spinner hides the cursor");
    assert.match(sized, /✔.* packing program/);
    const unsized = await onTerminal(0);
    assert.ok(!unsized.includes(hideCursor) && !unsized.includes(lineUp), JSON.stringify(unsized));
    assert.match(unsized, /^packing program .*\r?$/m);
  });

  test("NO_COLOR on a terminal: the spinner draws without colour", async () => {
    const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: "1" };
    delete env.CI;
    delete env.FORCE_COLOR;
    const command = `stty cols 100 rows 40; exec "$0" scratch "$1" -o type=tar,dest=/dev/null`;
    const result = await runCommand(
      "script",
      ["-qec", `sh -c '${command}' ${mkbaseLauncher} ${programs.hello}`, "/dev/null"],
      { env, timeoutMs: 60_000 },
    );
    assert.equal(result.code, 0, describeResult(result));
    assert.ok(result.stdout.includes("\u001b[?25l"), "the spinner hides the cursor");
    // A select graphic rendition sequence (ESC [ … m) is what sets a colour.
    assert.doesNotMatch(result.stdout.replaceAll("\u001b", "<ESC>"), /<ESC>\[[0-9;]*m/);
  });

  test("one program per --platform: suffixed tags, and the plain tag on this machine's platform", async () => {
    const tag = uniqueTag("scratch-multi");
    const [repository, version] = tag.split(":") as [string, string];
    for (const suffix of ["amd64", "arm64"]) made.add(`${repository}:${version}-${suffix}`);
    made.add(tag);
    const result = await runMkbase([
      "scratch",
      "--platform",
      `linux/amd64=${programs.hello}`,
      "--platform",
      `linux/arm64=${programs.helloArm64}`,
      "-t",
      tag,
      "--metadata-file",
      join(work, "multi-metadata.json"),
    ]);
    assert.equal(result.code, 0, describeResult(result));
    const ids = result.stdout.trim().split("\n");
    assert.equal(ids.length, 2, result.stdout);
    for (const id of ids) {
      assert.match(id, imageIdPattern);
      made.add(id);
    }
    const amd64 = await imageInspect(`${repository}:${version}-amd64`);
    const arm64 = await imageInspect(`${repository}:${version}-arm64`);
    const plain = await imageInspect(tag);
    assert.equal(amd64?.Architecture, "amd64");
    assert.equal(arm64?.Architecture, "arm64");
    assert.equal(amd64?.Id, ids[0]);
    assert.equal(arm64?.Id, ids[1]);
    assert.equal(plain?.Id, amd64?.Id);
    assert.match(result.stderr, /linux\/amd64: .*-amd64, .*\(this machine's platform\)/);
    // Both images in the metadata, and no digest that would stand for one of them alone.
    const metadata = JSON.parse(await readFile(join(work, "multi-metadata.json"), "utf8")) as Record<
      string,
      unknown
    >;
    assert.equal(metadata["containerimage.digest"], undefined);
    assert.equal(metadata["containerimage.config.digest"], undefined);
    assert.deepEqual(
      (metadata["mkbase.outputs"] as { id: string }[]).map((output) => output.id),
      ids,
    );
  });
});

describe("mkbase scratch: symlinks as sources, shared libraries, a program next to --platform os/arch=FILE", () => {
  let links: string;

  before(async () => {
    links = join(work, "links");
    await mkdir(links);
    await copyFile(programs.hello, join(links, "hello-static"));
    await chmod(join(links, "hello-static"), 0o755);
    await symlink("hello-static", join(links, "hello"));
    await writeFile(join(links, "note.txt"), "a note\n", { mode: 0o644 });
    await symlink("note.txt", join(links, "note-link"));
    await mkdir(join(links, "assets"));
    await writeFile(join(links, "assets", "a.txt"), "a\n", { mode: 0o644 });
    await symlink("a.txt", join(links, "assets", "inner"));
    await symlink("assets", join(links, "assets-link"));
    await symlink("missing-program", join(links, "dangling"));
  });

  /** `tar -tv` of the image's files, as `docker export` of a created container gives them. */
  async function exportListing(image: string): Promise<string> {
    const container = (await runChecked("docker", ["create", image])).trim();
    try {
      return await runChecked("sh", ["-c", 'docker export "$1" | tar -tv', "sh", container]);
    } finally {
      await runChecked("docker", ["rm", container]);
    }
  }

  /** The content of one file of the image. */
  async function imageFileText(image: string, file: string): Promise<string> {
    const container = (await runChecked("docker", ["create", image])).trim();
    try {
      return await runChecked("sh", ["-c", 'docker export "$1" | tar -xO "$2"', "sh", container, file]);
    } finally {
      await runChecked("docker", ["rm", container]);
    }
  }

  /** The one line mkbase prints for a refusal: the message and the hint, each ending in a full stop. */
  function errorLine(message: string, hint: string): RegExp {
    return new RegExp(`^mkbase: error: ${escapeRegExp(message)}\\. ${escapeRegExp(hint)}\\.\n$`);
  }

  test("a symlinked program and --add sources are followed, under the names given", async () => {
    const tag = uniqueTag("scratch-symlinks");
    await scratch(tag, [
      join(links, "hello"),
      "--add",
      `${join(links, "note-link")}:/etc/note`,
      "--add",
      `${join(links, "assets-link")}:/srv/`,
    ]);
    const run = await dockerRun(tag, []);
    assert.equal(run.code, 0, describeResult(run));
    assert.equal(run.stdout, `${greeting}\n`);
    assert.deepEqual((await imageInspect(tag))?.Config?.Entrypoint, ["/hello"]);
    assert.deepEqual(await imageFiles(tag, true), [
      "/etc",
      "/etc/note",
      "/hello",
      "/srv",
      "/srv/a.txt",
      "/srv/inner",
    ]);
    assert.equal(await imageFileText(tag, "etc/note"), "a note\n");
    // A link inside an added directory stays a link, as with COPY.
    assert.match(await exportListing(tag), /^l\S+ .* srv\/inner -> a\.txt$/m);
  });

  test("a dangling symlink as the program or an --add source is refused, naming the link and its target", async () => {
    const dangling = join(links, "dangling");
    const message = `${dangling} is a symbolic link to missing-program (${join(links, "missing-program")}), which does not exist`;
    const hint = "Point the link at an existing file, or give the file's own path";
    await assertRefused([dangling], errorLine(message, hint), 3);
    await assertRefused(
      [programs.hello, "--add", `${dangling}:/x`],
      errorLine(`--add ${dangling}:/x: ${message}`, hint),
      3,
    );
  });

  test("a shared library is refused as not a program; a static PIE runs", async () => {
    const library = join(work, "libhello.so");
    await compile("gcc", "hello.c", library, ["-shared", "-fPIC"]);
    const refusal = errorLine(
      `${library} is a shared library, not a program: it has no program interpreter (PT_INTERP) and no position-independent executable mark (DF_1_PIE)`,
      "Give mkbase scratch the program that uses the library; --bundle-libs copies the libraries a dynamic program needs, --add SRC:DEST any other file",
    );
    await assertRefused([library, "--bundle-libs"], refusal, 3);
    await assertRefused([library], refusal, 3);

    const staticPie = join(work, "hello-static-pie");
    await compile("gcc", "hello.c", staticPie, ["-static-pie"]);
    const tag = uniqueTag("scratch-static-pie");
    await scratch(tag, [staticPie]);
    const run = await dockerRun(tag, []);
    assert.equal(run.code, 0, describeResult(run));
    assert.equal(run.stdout, `${greeting}\n`);
  });

  test("a program next to --platform os/arch=FILE is a usage error; arguments after -- are the CMD", async () => {
    const platform = `linux/amd64=${programs.hello}`;
    const hint = `Arguments for the program (the image's CMD) go after --, as in mkbase scratch --platform ${platform} -- --port 8080`;
    for (const program of [programs.helloDynamic, join(work, "nonexistent")]) {
      await assertRefused(
        [program, "--platform", platform],
        errorLine(
          `the argument ${program} and --platform ${platform} both name a program: the program is given either as the argument or in each --platform os/arch=FILE, not both`,
          hint,
        ),
        2,
      );
    }

    const tag = uniqueTag("scratch-platform-args");
    const [repository, version] = tag.split(":") as [string, string];
    made.add(tag);
    made.add(`${repository}:${version}-amd64`);
    const result = await runMkbase(["scratch", "--platform", platform, "-t", tag, "--quiet", "--", "--flag"]);
    assert.equal(result.code, 0, describeResult(result));
    for (const id of result.stdout.trim().split("\n")) made.add(id);
    const inspect = await imageInspect(`${repository}:${version}-amd64`);
    assert.deepEqual(inspect?.Config?.Entrypoint, ["/hello"]);
    assert.deepEqual(inspect?.Config?.Cmd, ["--flag"]);
  });

  test("--chown or --chmod without --add is refused: the program's owner and mode are fixed", async () => {
    for (const flag of [
      ["--chown", "5:5"],
      ["--chmod", "600"],
    ]) {
      await assertRefused(
        [programs.hello, ...flag],
        new RegExp(`^mkbase: error: ${flag[0] ?? ""} applies to --add files, and there are none\\. `, "m"),
        2,
      );
    }
  });

  test("one --platform os/arch=FILE into an OCI archive prints its ID once", async () => {
    const archive = join(work, "one-platform.oci.tar");
    const result = await runMkbase([
      "scratch",
      "--platform",
      `linux/amd64=${programs.hello}`,
      "-o",
      `type=oci,dest=${archive}`,
      "-q",
    ]);
    assert.equal(result.code, 0, describeResult(result));
    assert.match(result.stdout, /^sha256:[0-9a-f]{64}\n$/);
  });
});
