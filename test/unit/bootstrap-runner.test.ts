/**
 * The bootstrap runner and its workspace: tools found on PATH or reported with their package, output
 * streamed line by line, the whole process group stopped on cancellation, the temp dir removed only
 * when nothing is mounted below it, and a TMPDIR that cannot hold it reported as the user's to fix.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { InterruptedError, ToolError, UsageError } from "../../src/errors.js";
import { makeTemporaryDirectory } from "../../src/forced-exit.js";
import type { ProgressEvent } from "../../src/progress.js";
import { findOnPath, forwardLines, requireTool, runTool } from "../../src/sources/bootstrap/run-tool.js";
import {
  BootstrapWorkspace,
  mountPointsUnder,
  parseMountPoints,
  planWorkspace,
  removeSafely,
  workspaceFacts,
} from "../../src/sources/bootstrap/workspace.js";

let scratch: string;
before(() => {
  scratch = mkdtempSync(join(tmpdir(), "mkbase-unit-runner-"));
});
after(() => {
  rmSync(scratch, { recursive: true, force: true });
});

const env = { PATH: process.env.PATH };

/** Whether `pid` exists and is not a zombie waiting for its (new) parent to reap it. */
function isRunning(pid: number): boolean {
  try {
    const stat = execFileSync("cat", [`/proc/${pid}/stat`], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

describe("finding tools", () => {
  it("finds an executable on PATH and nothing on an empty PATH", async () => {
    assert.match((await findOnPath("sh", env)) ?? "", /\/sh$/);
    assert.equal(await findOnPath("sh", { PATH: scratch }), undefined);
  });

  it("names the Debian package of a missing tool", async () => {
    await assert.rejects(requireTool("mmdebstrap", "mmdebstrap", { PATH: scratch }), (error: unknown) => {
      assert.ok(error instanceof ToolError);
      assert.match(error.hint ?? "", /apt-get install mmdebstrap/);
      return true;
    });
  });
});

describe("running a tool", () => {
  const signal = new AbortController().signal;

  it("streams stdout and stderr as lines", async () => {
    const lines: string[] = [];
    await runTool({
      name: "sh",
      command: "/bin/sh",
      args: ["-c", "echo one; echo two >&2; printf three"],
      env,
      signal,
      onLine: (line) => lines.push(line),
    });
    assert.deepEqual([...lines].sort(), ["one", "three", "two"]);
  });

  it("passes the uppercase proxy variables as lowercase too, which wget and apt read; a lowercase one wins", async () => {
    const lines: string[] = [];
    await runTool({
      name: "sh",
      command: "/bin/sh",
      args: ["-c", 'echo "$https_proxy|$http_proxy|$no_proxy|$HTTPS_PROXY"'],
      env: {
        ...env,
        HTTPS_PROXY: "http://proxy.example:3128",
        HTTP_PROXY: "http://upper.example:3128",
        http_proxy: "http://lower.example:8080",
        NO_PROXY: ".internal.example",
      },
      signal,
      onLine: (line) => lines.push(line),
    });
    assert.deepEqual(lines, [
      "http://proxy.example:3128|http://lower.example:8080|.internal.example|http://proxy.example:3128",
    ]);
  });

  it("reports a failure with the tool's last error line", async () => {
    await assert.rejects(
      runTool({
        name: "fake-bootstrap",
        command: "/bin/sh",
        args: ["-c", "echo 'I: working'; echo 'E: Release signed by unknown key' >&2; exit 1"],
        env,
        signal,
        onLine: () => undefined,
      }),
      (error: unknown) => {
        assert.ok(error instanceof ToolError);
        assert.match(
          error.message,
          /fake-bootstrap failed \(exit status 1\): E: Release signed by unknown key/,
        );
        return true;
      },
    );
  });

  it("stops the whole process group when cancelled", async () => {
    const pidFile = join(scratch, "grandchild.pid");
    const controller = new AbortController();
    const started = Date.now();
    const run = runTool({
      name: "sh",
      command: "/bin/sh",
      // The grandchild ignores nothing special; it must die with the group even though sh waits on it.
      args: ["-c", `sleep 60 & echo $! > ${pidFile}; echo started; wait`],
      env,
      signal: controller.signal,
      onLine: (line) => {
        if (line === "started") controller.abort();
      },
    });
    await assert.rejects(run, InterruptedError);
    assert.ok(Date.now() - started < 5000, "cancellation took too long");
    const grandchild = Number(execFileSync("cat", [pidFile], { encoding: "utf8" }).trim());
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(isRunning(grandchild), false, `the grandchild ${grandchild} is still running`);
  });

  it("forwards only step lines unless verbose", () => {
    const events: ProgressEvent[] = [];
    const isStep = (line: string): boolean => line.startsWith("I: ");
    const quiet = forwardLines("tool", (e) => events.push(e), false, isStep);
    quiet("I: step");
    quiet("Unpacking libc6");
    const verbose = forwardLines("tool", (e) => events.push(e), true, isStep);
    verbose("Unpacking libc6");
    assert.deepEqual(events, [
      { kind: "log", source: "tool", line: "I: step" },
      { kind: "log", source: "tool", line: "Unpacking libc6" },
    ]);
  });
});

describe("mount table", () => {
  const mountinfo = [
    "22 1 8:1 / / rw - ext4 /dev/sda1 rw",
    "30 22 0:5 / /tmp/work/rootfs/proc rw - proc proc rw",
    "31 22 0:6 / /tmp/work/rootfs/dev rw - devtmpfs udev rw",
    "32 31 0:7 / /tmp/work/rootfs/dev/pts rw - devpts devpts rw",
    "33 22 0:8 / /tmp/work-other rw - tmpfs tmpfs rw",
    "34 22 0:9 / /tmp/work/with\\040space rw - tmpfs tmpfs rw",
  ].join("\n");

  it("decodes octal escapes in mount points", () => {
    assert.ok(parseMountPoints(mountinfo).includes("/tmp/work/with space"));
  });

  it("lists the mounts below a dir deepest first, and not a sibling with the same prefix", () => {
    const under = mountPointsUnder("/tmp/work", mountinfo);
    assert.equal(under[0], "/tmp/work/rootfs/dev/pts");
    assert.deepEqual([...under].sort(), [
      "/tmp/work/rootfs/dev",
      "/tmp/work/rootfs/dev/pts",
      "/tmp/work/rootfs/proc",
      "/tmp/work/with space",
    ]);
  });
});

describe("workspace", () => {
  it("is private and removed completely", async () => {
    const workspace = await BootstrapWorkspace.create();
    assert.equal(statSync(workspace.dir).mode & 0o777, 0o700);
    assert.equal(statSync(workspace.rootfs).mode & 0o777, 0o755);
    writeFileSync(join(workspace.rootfs, "file"), "x");
    await workspace.dispose();
    assert.equal(existsSync(workspace.dir), false);
  });

  it(
    "unmounts a bind of a host directory before deleting, leaving the host's files alone",
    { skip: process.geteuid?.() !== 0 },
    async () => {
      const host = join(scratch, "host-dev");
      mkdirSync(host);
      writeFileSync(join(host, "precious"), "keep me");
      const workspace = await BootstrapWorkspace.create();
      const target = join(workspace.rootfs, "dev");
      mkdirSync(target);
      execFileSync("mount", ["--bind", host, target]);
      execFileSync("mount", ["-t", "tmpfs", "tmpfs", join(target)]);
      await removeSafely(workspace.dir);
      assert.equal(existsSync(workspace.dir), false);
      assert.equal(existsSync(join(host, "precious")), true);
    },
  );

  it("moves the rootfs to --keep-rootfs", async () => {
    const workspace = await BootstrapWorkspace.create();
    writeFileSync(join(workspace.rootfs, "file"), "x");
    chmodSync(workspace.rootfs, 0o755);
    const dest = join(scratch, "kept");
    await workspace.keepRootfs(dest);
    await workspace.dispose();
    assert.equal(existsSync(join(dest, "file")), true);
    assert.equal(existsSync(workspace.dir), false);
  });

  it("in a TMPDIR that does not exist is a usage error that names it, as every temp dir is", async () => {
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = join(scratch, "missing");
    try {
      for (const make of [() => BootstrapWorkspace.create(), () => makeTemporaryDirectory("mkbase-x-")]) {
        await assert.rejects(make(), (error: unknown) => {
          assert.ok(error instanceof UsageError);
          assert.equal(
            error.message,
            `the temporary directory could not be made in TMPDIR=${join(scratch, "missing")} (ENOENT: it does not exist)`,
          );
          assert.match(error.hint ?? "", /Point TMPDIR at a writable directory/);
          return true;
        });
      }
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
    }
  });
});

describe("where the workspace lives (--tmpfs)", () => {
  const GiB = 1024 * 1024 * 1024;
  const roomy = { root: true, memoryBytes: 16 * GiB, tmpdirInMemory: false };

  it("auto: a tmpfs of half the free memory as root with room, the disk otherwise", () => {
    const plan = planWorkspace("auto", roomy);
    assert.equal(plan.tmpfsBytes, 8 * GiB);
    assert.equal(plan.tmpfsRequired, false);
    assert.match(plan.description, /tmpfs of up to 8\.00 GiB/);
    assert.equal(planWorkspace("auto", { ...roomy, root: false }).tmpfsBytes, undefined);
    assert.equal(planWorkspace("auto", { ...roomy, memoryBytes: 3 * GiB }).tmpfsBytes, undefined);
    assert.match(planWorkspace("auto", { ...roomy, memoryBytes: 3 * GiB }).description, /on disk/);
  });

  it("always: a tmpfs whatever the memory, an error without root; never: the disk", () => {
    const small = planWorkspace("always", { ...roomy, memoryBytes: 1 * GiB + 12345 });
    assert.equal(small.tmpfsBytes, 512 * 1024 * 1024);
    assert.equal(small.tmpfsRequired, true);
    assert.throws(() => planWorkspace("always", { ...roomy, root: false }), UsageError);
    assert.equal(planWorkspace("never", roomy).tmpfsBytes, undefined);
  });

  it("mounts nothing when TMPDIR is a tmpfs already", () => {
    const plan = planWorkspace("always", { ...roomy, tmpdirInMemory: true });
    assert.equal(plan.tmpfsBytes, undefined);
    assert.match(plan.description, /is a tmpfs/);
  });

  it("reads this machine's memory and privileges", async () => {
    const facts = await workspaceFacts();
    assert.equal(facts.root, process.geteuid?.() === 0);
    assert.ok(facts.memoryBytes > 0 && facts.memoryBytes <= totalmem());
  });

  it(
    "a tmpfs workspace is private, mounted while in use and gone after dispose",
    { skip: process.geteuid?.() !== 0 },
    async () => {
      const workspace = await BootstrapWorkspace.create(
        planWorkspace("always", { ...roomy, memoryBytes: 64 * 1024 * 1024 }),
      );
      const mounted = () => mountPointsUnder(workspace.dir, readFileSync("/proc/self/mountinfo", "utf8"));
      try {
        assert.deepEqual(mounted(), [workspace.dir]);
        assert.equal(statSync(workspace.dir).mode & 0o777, 0o700);
        assert.equal(statSync(workspace.rootfs).mode & 0o777, 0o755);
        assert.equal(await workspace.isFull(), false);
        // 32 MiB tmpfs: filling it leaves less room than a bootstrapper needs.
        assert.throws(() => writeFileSync(join(workspace.rootfs, "big"), Buffer.alloc(40 * 1024 * 1024)), {
          code: "ENOSPC",
        });
        assert.equal(await workspace.isFull(), true);
      } finally {
        await workspace.dispose();
      }
      assert.deepEqual(mounted(), []);
      assert.equal(existsSync(workspace.dir), false);
    },
  );

  it(
    "a workspace in TMPDIR knows when the tree filled TMPDIR's filesystem",
    { skip: process.geteuid?.() !== 0 },
    async () => {
      // A small filesystem as TMPDIR, as a CI runner's nearly full disk would be.
      const small = join(scratch, "small-tmpdir");
      mkdirSync(small);
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=16m", "mkbase-test", small]);
      const saved = process.env.TMPDIR;
      process.env.TMPDIR = small;
      try {
        const workspace = await BootstrapWorkspace.create();
        try {
          assert.equal(workspace.plan.tmpfsBytes, undefined);
          assert.equal(await workspace.isFull(), false);
          assert.throws(() => writeFileSync(join(workspace.rootfs, "big"), Buffer.alloc(20 * 1024 * 1024)), {
            code: "ENOSPC",
          });
          assert.equal(await workspace.isFull(), true);
        } finally {
          await workspace.dispose();
        }
      } finally {
        if (saved === undefined) delete process.env.TMPDIR;
        else process.env.TMPDIR = saved;
        execFileSync("umount", [small]);
      }
    },
  );
});
