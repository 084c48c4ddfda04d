import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdir, readdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Command } from "commander";
import { DaemonUnavailableError, UsageError } from "../../src/errors.js";
import { resolveEndpoint, type DiscoveryEnvironment } from "../../src/docker/connection.js";
import { compareApiVersions } from "../../src/docker/engine.js";
import {
  describeResult,
  mkbaseLauncher,
  repositoryRoot,
  runCommand,
  runMkbase,
  spawnMkbase,
  waitForExit,
} from "../e2e/support/cli.js";
import { makeRenderer } from "../../src/cli/render.js";
import { temporaryDirectory } from "../support/temporary-directory.js";
import { prepareImageFlags } from "../../src/cli/run-build.js";
import {
  addImageOptions,
  configFromFlags,
  parseEpoch,
  tagsFromFlags,
  type ImageFlags,
} from "../../src/cli/image-options.js";

function flags(args: string[]): ImageFlags {
  const command = addImageOptions(new Command("x").exitOverride());
  command.parse(args, { from: "user" });
  return command.opts<ImageFlags>();
}

describe("epoch choice", () => {
  it("prefers the flag, then SOURCE_DATE_EPOCH, then the input", () => {
    assert.deepEqual(parseEpoch(flags(["--source-date-epoch", "5"]), { SOURCE_DATE_EPOCH: "7" }), {
      kind: "fixed",
      seconds: 5,
    });
    assert.deepEqual(parseEpoch(flags([]), { SOURCE_DATE_EPOCH: "7" }), { kind: "fixed", seconds: 7 });
    assert.deepEqual(parseEpoch(flags([]), {}), { kind: "newest-input" });
    assert.deepEqual(parseEpoch(flags([]), { SOURCE_DATE_EPOCH: "" }), { kind: "newest-input" });
    assert.deepEqual(parseEpoch(flags(["--created", "now"]), {}), { kind: "now" });
  });

  for (const bad of ["-1", "1.5", "abc", "99999999999999"]) {
    it(`rejects ${bad}`, () => {
      assert.throws(() => parseEpoch(flags(["--source-date-epoch", bad]), {}), UsageError);
      assert.throws(() => parseEpoch(flags([]), { SOURCE_DATE_EPOCH: bad }), UsageError);
    });
  }

  it("rejects contradictions and unknown --created values", () => {
    assert.throws(() => parseEpoch(flags(["--created", "now", "--source-date-epoch", "1"]), {}), UsageError);
    assert.throws(() => parseEpoch(flags(["--created", "yesterday"]), {}), UsageError);
  });
});

describe("config flags", () => {
  it("builds the config, then applies -c in order", () => {
    const config = configFromFlags(
      flags([
        "--env",
        "A=1",
        "--cmd",
        "run",
        "--label",
        "k=v",
        "--expose",
        "80",
        "-c",
        "ENV A=2",
        "-c",
        "USER 7",
        "--workdir",
        "/w",
      ]),
    );
    assert.deepEqual(config.Env, ["A=2"]);
    assert.deepEqual(config.Cmd, ["/bin/sh", "-c", "run"]);
    assert.deepEqual(config.Labels, { k: "v" });
    assert.equal(config.User, "7");
    assert.equal(config.WorkingDir, "/w");
    assert.throws(() => configFromFlags(flags(["--workdir", "rel"])), UsageError);
    assert.throws(() => configFromFlags(flags(["--volume", "/ok", "--volume", "data"])), UsageError);
    assert.throws(() => configFromFlags(flags(["--env", "=x"])), UsageError);
  });

  it("refuses, before any work, a line break that the import and build paths cannot carry", () => {
    const multiline = ["--env", "A=one\ntwo"];
    assert.equal(prepareImageFlags(flags(multiline), {}).config.Env?.[0], "A=one\ntwo");
    for (const via of ["import", "build"]) {
      assert.throws(
        () => prepareImageFlags(flags([...multiline, "--via", via]), {}),
        new RegExp(`a value with a line break cannot go through the engine's ${via} endpoint`),
      );
    }
  });

  it("keeps one tag for spellings of one name, the first given", () => {
    const tags = tagsFromFlags(
      flags(["-t", "x:1", "-t", "docker.io/library/x:1", "-t", "x", "-t", "x:latest", "-t", "reg:5000/x:1"]),
    );
    assert.deepEqual(
      tags.map((tag) => `${tag.domain ?? ""}/${tag.path}:${tag.tag}`),
      ["/x:1", "/x:latest", "reg:5000/x:1"],
    );
  });

  it("refuses a stop signal on the import path, naming the flag that set it", () => {
    assert.throws(
      () => prepareImageFlags(flags(["--stop-signal", "SIGINT", "--via", "import"]), {}),
      /^UsageError: --stop-signal cannot be set through the engine's import endpoint$/,
    );
    assert.throws(
      () => prepareImageFlags(flags(["-c", "STOPSIGNAL SIGINT", "--via", "import"]), {}),
      /^UsageError: -c STOPSIGNAL cannot be set through the engine's import endpoint$/,
    );
  });
});

describe("engine discovery", () => {
  const discovery = (env: Record<string, string>, existing: string[] = []): DiscoveryEnvironment => ({
    env,
    exists: (path) => existing.includes(path),
    readFile: (path) => Buffer.from(`pem:${path}`),
    home: "/home/u",
  });

  it("uses DOCKER_HOST as given", () => {
    assert.deepEqual(resolveEndpoint(discovery({ DOCKER_HOST: "unix:///x.sock" })).address, {
      kind: "unix",
      socketPath: "/x.sock",
    });
    assert.deepEqual(resolveEndpoint(discovery({ DOCKER_HOST: "tcp://h:2375" })).address, {
      kind: "tcp",
      host: "h",
      port: 2375,
    });
    const tls = resolveEndpoint(
      discovery({ DOCKER_HOST: "tcp://h:1234", DOCKER_TLS_VERIFY: "1", DOCKER_CERT_PATH: "/c" }),
    );
    assert.ok(tls.address.kind === "tcp" && tls.address.tls !== undefined);
    assert.equal(String(tls.address.tls.ca), "pem:/c/ca.pem");
    assert.equal(resolveEndpoint(discovery({ DOCKER_HOST: "tcp://h" })).address.kind, "tcp");
    assert.deepEqual(resolveEndpoint(discovery({ DOCKER_HOST: "ssh://me@box:2222" })).address, {
      kind: "ssh",
      host: "box",
      port: 2222,
      user: "me",
    });
    assert.deepEqual(resolveEndpoint(discovery({ DOCKER_HOST: "ssh://box" })).address, {
      kind: "ssh",
      host: "box",
      port: undefined,
      user: undefined,
    });
    assert.throws(() => resolveEndpoint(discovery({ DOCKER_HOST: "ftp://x" })), UsageError);
  });

  it("falls back to the system socket, then the rootless one", () => {
    assert.equal(
      resolveEndpoint(discovery({}, ["/var/run/docker.sock"])).description,
      "unix:///var/run/docker.sock",
    );
    const rootless = resolveEndpoint(
      discovery({ XDG_RUNTIME_DIR: "/run/user/1000" }, ["/run/user/1000/docker.sock"]),
    );
    assert.equal(rootless.description, "unix:///run/user/1000/docker.sock");
  });

  it("names every place it looked when there is no engine", () => {
    assert.throws(
      () => resolveEndpoint(discovery({ XDG_RUNTIME_DIR: "/run/user/1000" })),
      (error: unknown) =>
        error instanceof DaemonUnavailableError &&
        error.message.includes("/var/run/docker.sock") &&
        error.message.includes("/run/user/1000/docker.sock") &&
        error.message.includes("DOCKER_HOST"),
    );
  });

  describe("docker contexts", () => {
    /** The CLI's files for `contexts` (name → meta Endpoints.docker, TLS files) under `configDir`. */
    const withContexts = (
      env: Record<string, string>,
      contexts: Record<string, { docker: object; tls?: string[] }>,
      config?: object,
      configDir = "/home/u/.docker",
    ): DiscoveryEnvironment => {
      const files = new Map<string, string>();
      if (config !== undefined) files.set(`${configDir}/config.json`, JSON.stringify(config));
      for (const [name, context] of Object.entries(contexts)) {
        const id = createHash("sha256").update(name).digest("hex");
        files.set(
          `${configDir}/contexts/meta/${id}/meta.json`,
          JSON.stringify({ Name: name, Metadata: {}, Endpoints: { docker: context.docker } }),
        );
        for (const file of context.tls ?? [])
          files.set(`${configDir}/contexts/tls/${id}/docker/${file}`, `pem:${file}`);
      }
      return {
        env,
        exists: (path) => files.has(path) || path === "/var/run/docker.sock",
        readFile: (path) => {
          const text = files.get(path);
          if (text === undefined) throw Object.assign(new Error(`ENOENT: ${path}`), { code: "ENOENT" });
          return Buffer.from(text);
        },
        home: "/home/u",
      };
    };
    const rootless = { docker: { Host: "unix:///run/user/1000/docker.sock", SkipTLSVerify: false } };

    it("uses the context DOCKER_CONTEXT names, and says so", () => {
      const endpoint = resolveEndpoint(withContexts({ DOCKER_CONTEXT: "rootless" }, { rootless }));
      assert.deepEqual(endpoint.address, { kind: "unix", socketPath: "/run/user/1000/docker.sock" });
      assert.equal(endpoint.description, "unix:///run/user/1000/docker.sock (docker context rootless)");
      assert.equal(endpoint.context, "rootless");
    });

    it("uses the config's currentContext, from DOCKER_CONFIG when set", () => {
      const endpoint = resolveEndpoint(
        withContexts({ DOCKER_CONFIG: "/cfg" }, { rootless }, { currentContext: "rootless" }, "/cfg"),
      );
      assert.equal(endpoint.context, "rootless");
    });

    it("lets DOCKER_HOST win over any context, and DOCKER_CONTEXT=default mean the usual sockets", () => {
      const discovery = withContexts(
        { DOCKER_HOST: "unix:///x.sock", DOCKER_CONTEXT: "rootless" },
        { rootless },
      );
      assert.equal(resolveEndpoint(discovery).description, "unix:///x.sock");
      const fallback = withContexts(
        { DOCKER_CONTEXT: "default" },
        { rootless },
        { currentContext: "rootless" },
      );
      assert.equal(resolveEndpoint(fallback).description, "unix:///var/run/docker.sock");
    });

    it("takes a tcp context's TLS files, and SkipTLSVerify", () => {
      const remote = {
        docker: { Host: "tcp://build.example:2376", SkipTLSVerify: true },
        tls: ["ca.pem", "cert.pem", "key.pem"],
      };
      const endpoint = resolveEndpoint(withContexts({ DOCKER_CONTEXT: "remote" }, { remote }));
      assert.ok(endpoint.address.kind === "tcp" && endpoint.address.tls !== undefined);
      assert.equal(String(endpoint.address.tls.ca), "pem:ca.pem");
      assert.equal(String(endpoint.address.tls.key), "pem:key.pem");
      assert.equal(endpoint.address.tls.rejectUnauthorized, false);
      const plain = { docker: { Host: "tcp://build.example", SkipTLSVerify: false } };
      const open = resolveEndpoint(withContexts({ DOCKER_CONTEXT: "plain" }, { plain }));
      assert.deepEqual(open.address, { kind: "tcp", host: "build.example", port: 2375 });
    });

    it("refuses a context that does not exist, naming where its name came from", () => {
      assert.throws(
        () => resolveEndpoint(withContexts({}, {}, { currentContext: "gone" })),
        (error: unknown) =>
          error instanceof UsageError &&
          error.message.includes('docker context "gone" (currentContext in /home/u/.docker/config.json)') &&
          (error.hint ?? "").includes("docker context ls"),
      );
    });
  });

  it("compares API versions numerically", () => {
    assert.ok(compareApiVersions("1.9", "1.41") < 0);
    assert.ok(compareApiVersions("1.44", "1.41") > 0);
    assert.equal(compareApiVersions("1.41", "1.41"), 0);
  });
});

describe("--help", () => {
  const commands = ["dir", "tar", "scratch", "debootstrap", "pacstrap", "alpine"];

  it("wraps every command's description to the width, without the source's line breaks", async () => {
    for (const command of commands) {
      const result = await runMkbase([command, "--help"]);
      assert.equal(result.code, 0, describeResult(result));
      // The description: from the line after "Usage:" and its blank line up to the first section heading.
      const lines = result.stdout.split("\n");
      const end = lines.findIndex((line) => /^(Arguments|Options):$/.test(line));
      const paragraphs = lines.slice(2, end).join("\n").trim().split("\n\n");
      for (const paragraph of paragraphs) {
        const wrapped = paragraph.split("\n");
        assert.ok(
          wrapped.every((line) => line.length <= 80),
          `${command}: a line is wider than 80`,
        );
        // A hard line break in the source shows as a short line in the middle of a paragraph.
        const short = wrapped.slice(0, -1).filter((line) => line.length < 60);
        assert.deepEqual(short, [], `${command}: ragged description\n${paragraph}`);
      }
    }
  });
});

describe("stdout and stderr in scripts", () => {
  const scratch = temporaryDirectory("mkbase-unit-streams-");
  const rootfs = join(repositoryRoot, "fixtures", "demo-rootfs");
  /** Runs `mkbase ARGS` through sh with `redirect` appended, e.g. `2>/dev/full`. */
  const runRedirected = (args: readonly string[], redirect: string) =>
    runCommand("sh", ["-c", `"$@" ${redirect}`, "sh", mkbaseLauncher, ...args], { cwd: scratch.path });

  it("a build that fails before its outputs open leaves no --iidfile of an earlier build", async () => {
    const idFile = join(scratch.path, "image-id");
    for (const args of [
      ["scratch", join(scratch.path, "no-such-program")],
      ["dir", join(scratch.path, "no-such-tree")],
    ]) {
      await writeFile(idFile, "sha256:an-earlier-build\n");
      const result = await runMkbase([
        ...args,
        "--iidfile",
        idFile,
        "-o",
        `type=tar,dest=${join(scratch.path, "o.tar")}`,
      ]);
      assert.equal(result.code, 3, describeResult(result));
      await assert.rejects(stat(idFile), { code: "ENOENT" }, `${args[0] ?? ""} left the old ID file`);
    }
  });

  it("builds to the end when stderr cannot be written, leaving no temporary file", async () => {
    const archive = join(scratch.path, "stderr-full.tar");
    const result = await runRedirected(["dir", rootfs, "-o", `type=oci,dest=${archive}`], "2>/dev/full");
    assert.equal(result.code, 0, describeResult(result));
    assert.match(result.stdout, /^sha256:[0-9a-f]{64}\n$/);
    assert.ok((await stat(archive)).size > 0);
    assert.deepEqual(
      (await readdir(scratch.path)).filter((name) => name.startsWith(".mkbase-tmp-")),
      [],
    );
  });

  it("exits 5 with one line, no stack trace, when stdout cannot take the result", async () => {
    const archive = join(scratch.path, "stdout-full.tar");
    for (const args of [["dir", rootfs, "-o", `type=tar,dest=${archive}`], ["--help"], ["--version"]]) {
      const result = await runRedirected(args, ">/dev/full");
      assert.equal(result.code, 5, describeResult(result));
      assert.equal(
        result.stderr
          .split("\n")
          .filter((line) => line.startsWith("mkbase: error: cannot write to stdout: ENOSPC")).length,
        1,
        describeResult(result),
      );
      assert.doesNotMatch(result.stderr, /\n\s+at /, "a stack trace");
    }
  });

  it("takes a reader that stops early as having seen enough, and still removes its spools", async () => {
    const tmp = join(scratch.path, "tmp");
    await mkdir(tmp);
    for (const args of [
      ["--version"],
      // Two outputs with one compression share a spool in TMPDIR.
      [
        "dir",
        rootfs,
        "-o",
        `type=oci,dest=${join(scratch.path, "a.tar")}`,
        "-o",
        `type=oci,dest=${join(scratch.path, "b.tar")}`,
      ],
    ]) {
      const child = spawnMkbase(args, { env: { ...process.env, TMPDIR: tmp } });
      // Closed before node has started: the first write fails with EPIPE.
      child.stdout?.destroy();
      const result = await waitForExit(child);
      assert.equal(result.code, 0, describeResult(result));
      assert.doesNotMatch(result.stderr, /error/);
      assert.deepEqual(await readdir(tmp), []);
    }
  });

  it("refuses an argument that is not UTF-8 instead of using another name", async () => {
    const dest = join(scratch.path, "latin1");
    await mkdir(dest);
    // "caf\xe9.tar" in Latin-1, which node would read as "caf\ufffd.tar".
    const result = await runCommand(
      "sh",
      ["-c", `"$0" dir "$1" -o "type=tar,dest=$(printf 'caf\\351.tar')"`, mkbaseLauncher, rootfs],
      { cwd: dest, env: { ...process.env, LC_ALL: "C" } },
    );
    assert.equal(result.code, 2, describeResult(result));
    assert.match(result.stderr, /^mkbase: error: an argument is not valid UTF-8/);
    assert.deepEqual(await readdir(dest), []);
  });
});

describe("progress on stderr", () => {
  /** A terminal 80 columns wide that keeps what is written to it. */
  function terminal(): NodeJS.WriteStream & { text: string } {
    const stream = {
      isTTY: true,
      columns: 80,
      text: "",
      write: (chunk: string) => ((stream.text += chunk), true),
      cursorTo: () => true,
      clearLine: () => true,
      moveCursor: () => true,
    };
    return stream as unknown as NodeJS.WriteStream & { text: string };
  }

  async function withEnv(env: Record<string, string | undefined>, run: () => Promise<void>): Promise<void> {
    const saved = Object.fromEntries(Object.keys(env).map((key) => [key, process.env[key]]));
    const set = (values: Record<string, string | undefined>): void => {
      for (const [key, value] of Object.entries(values)) {
        if (value === undefined) delete process.env[key];
        else process.env[key] = value;
      }
    };
    set(env);
    try {
      await run();
    } finally {
      set(saved);
    }
  }

  it("is plain lines on a dumb terminal, each phase once", async () => {
    await withEnv({ TERM: "dumb", CI: undefined }, async () => {
      const stream = terminal();
      const renderer = await makeRenderer({ quiet: false, stream });
      renderer.onProgress({ kind: "phase", message: "packing directory t" });
      renderer.onProgress({ kind: "phase", message: "writing the OCI archive x.tar" });
      renderer.stop(true);
      assert.equal(stream.text, "packing directory t\nwriting the OCI archive x.tar\n");
    });
  });

  it("leaves no bare failure mark when a command fails before its first phase", async () => {
    await withEnv({ TERM: "xterm", CI: undefined, NO_COLOR: "1" }, async () => {
      const stream = terminal();
      const renderer = await makeRenderer({ quiet: false, stream });
      renderer.stop(false);
      assert.doesNotMatch(stream.text, /✖/);
    });
  });
});
