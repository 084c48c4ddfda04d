/**
 * A second Docker Engine of the test's own, for the faults that would hurt the shared one: killing the
 * daemon in the middle of a load or an import. It keeps everything under one temp dir (data root, exec
 * root, pidfile, socket, log), has no network of its own, and can be SIGKILLed and started again on the
 * same data root to see what a crash left behind. Its managed containerd dies with it (dockerd starts
 * it with a parent-death signal).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mountPointsUnder } from "./debian-rootfs.js";
import { openSync, closeSync, readFileSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describeResult, runCommand } from "./cli.js";

/** How long a start may take before the engine's log is shown and the start fails. */
const START_TIMEOUT_MS = 60_000;
/** How long a graceful stop may take before the daemon is killed. */
const STOP_TIMEOUT_MS = 15_000;

/** A dockerd of the test's own; see the module comment. */
export interface PrivateEngine {
  /** The temp dir holding everything of this engine. */
  readonly dir: string;
  /** `unix://DIR/docker.sock`, for `DOCKER_HOST`. */
  readonly host: string;
  /** The test's environment with `DOCKER_HOST` pointing at this engine. */
  readonly env: NodeJS.ProcessEnv;
  /** The running daemon's pid, or undefined while it is stopped. */
  readonly pid: number | undefined;
  /** Starts the daemon again on the same data root (after {@link kill}) and waits until it answers. */
  start(): Promise<void>;
  /** SIGKILLs the daemon, as a crash would, and waits until it is gone. */
  kill(): Promise<void>;
  /** Every image ID this engine holds, intermediate ones included. */
  imageIds(): Promise<Set<string>>;
  /** The end of the daemon's log, for assertion messages. */
  logTail(lines?: number): string;
  /** Stops the daemon (SIGTERM, then SIGKILL), unmounts what it left under its dir, and removes the dir. */
  dispose(): Promise<void>;
}

/**
 * Starts a private `dockerd` in a new temp dir and waits until it answers `/_ping`. The shared engine is
 * never touched. Call {@link PrivateEngine.dispose} in an `after` hook; a test process that exits
 * without it still SIGKILLs the daemon.
 */
export async function startPrivateEngine(): Promise<PrivateEngine> {
  // Short: the socket path must fit in sockaddr_un (108 bytes), and containerd's sockets live deeper.
  const dir = await mkdtemp(join(tmpdir(), "mkbase-engine-"));
  const engine = new DockerdProcess(dir);
  try {
    await engine.start();
  } catch (error) {
    await engine.dispose();
    throw error;
  }
  return engine;
}

class DockerdProcess implements PrivateEngine {
  readonly host: string;
  readonly env: NodeJS.ProcessEnv;
  private readonly socketPath: string;
  private readonly logPath: string;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private readonly killOnExit = (): void => {
    if (this.child?.pid !== undefined && this.child.exitCode === null) this.child.kill("SIGKILL");
  };

  constructor(readonly dir: string) {
    this.socketPath = join(dir, "docker.sock");
    this.logPath = join(dir, "dockerd.log");
    this.host = `unix://${this.socketPath}`;
    this.env = { ...process.env, DOCKER_HOST: this.host };
    process.on("exit", this.killOnExit);
  }

  get pid(): number | undefined {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null
      ? this.child.pid
      : undefined;
  }

  async start(): Promise<void> {
    if (this.pid !== undefined) throw new Error(`the private engine in ${this.dir} is already running`);
    await this.removeStaleContainerdPidfile();
    const log = openSync(this.logPath, "a");
    let child: ChildProcess;
    try {
      child = spawn(
        "dockerd",
        [
          "--data-root",
          join(this.dir, "data"),
          "--exec-root",
          join(this.dir, "exec"),
          "--pidfile",
          join(this.dir, "dockerd.pid"),
          "--host",
          this.host,
          // The machines have no bridge, and the shared engine owns the host's firewall rules.
          "--iptables=false",
          "--ip6tables=false",
          "--bridge=none",
        ],
        { stdio: ["ignore", log, log] },
      );
    } finally {
      closeSync(log);
    }
    this.child = child;
    // A dockerd that could not be spawned has no exit event, only an error.
    this.exited = new Promise((resolve) => {
      child.once("exit", () => resolve());
      child.once("error", () => resolve());
    });
    const spawnFailed = new Promise<never>((_, reject) => child.once("error", reject));
    spawnFailed.catch(() => undefined);
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!(await this.answers())) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`the private dockerd exited during start:\n${this.logTail()}`);
      }
      if (Date.now() > deadline) {
        throw new Error(
          `the private dockerd did not answer within ${START_TIMEOUT_MS} ms:\n${this.logTail()}`,
        );
      }
      await Promise.race([new Promise((resolve) => setTimeout(resolve, 100)), spawnFailed]);
    }
  }

  /** Whether `GET /_ping` on the socket returns 200. */
  private answers(): Promise<boolean> {
    return new Promise((resolve) => {
      const ping = request({ socketPath: this.socketPath, path: "/_ping", timeout: 2000 }, (response) => {
        response.resume();
        resolve(response.statusCode === 200);
      });
      ping.on("timeout", () => ping.destroy());
      ping.on("error", () => resolve(false));
      ping.end();
    });
  }

  async kill(): Promise<void> {
    const containerd = await this.managedContainerdPid();
    this.child?.kill("SIGKILL");
    await this.exited;
    // containerd gets its parent-death signal but may take a moment to exit; a dockerd started while
    // it is still alive finds its pidfile, waits for it to answer, and gives up.
    if (containerd !== undefined) await waitForProcessEnd(containerd);
  }

  /**
   * After a crash the containerd of the previous run may linger as a zombie until init reaps it, and
   * dockerd takes any pid in the pidfile that still answers kill(0) for a live containerd: it waits for
   * it and gives up. A zombie holds no locks, so its pidfile can go.
   */
  private async removeStaleContainerdPidfile(): Promise<void> {
    const pidfile = join(this.dir, "exec", "containerd", "containerd.pid");
    const pid = Number((await readFile(pidfile, "utf8").catch(() => "")).trim());
    if (Number.isInteger(pid) && pid > 0 && !isRunning(pid)) await rm(pidfile, { force: true });
  }

  /** The pid of the containerd this engine started, if it is running (checked against its cmdline). */
  private async managedContainerdPid(): Promise<number | undefined> {
    const text = await readFile(join(this.dir, "exec", "containerd", "containerd.pid"), "utf8").catch(
      () => "",
    );
    const pid = Number(text.trim());
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    return cmdline.startsWith("containerd\0") && cmdline.includes(this.dir) ? pid : undefined;
  }

  async imageIds(): Promise<Set<string>> {
    const result = await runCommand("docker", [
      "--host",
      this.host,
      "images",
      "--all",
      "--quiet",
      "--no-trunc",
    ]);
    if (result.code !== 0)
      throw new Error(`listing the private engine's images failed: ${describeResult(result)}`);
    return new Set(result.stdout.split("\n").filter((line) => line !== ""));
  }

  logTail(lines = 30): string {
    try {
      return readFileSync(this.logPath, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }

  async dispose(): Promise<void> {
    if (this.pid !== undefined) {
      const containerd = await this.managedContainerdPid();
      this.child?.kill("SIGTERM");
      const stopped = await Promise.race([
        this.exited.then(() => true),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(false), STOP_TIMEOUT_MS)),
      ]);
      if (!stopped) await this.kill();
      if (containerd !== undefined) await waitForProcessEnd(containerd);
    }
    process.off("exit", this.killOnExit);
    // dockerd bind-mounts its data root onto itself and does not undo it on exit; a crash can also leave
    // overlay mounts. Unmount deepest first, and never remove through a mount into other files.
    for (const mountPoint of (await mountPointsUnder(this.dir)).sort((a, b) => b.length - a.length)) {
      const result = await runCommand("umount", [mountPoint]);
      if (result.code !== 0) await runCommand("umount", ["--lazy", mountPoint]);
    }
    const remaining = await mountPointsUnder(this.dir);
    if (remaining.length > 0) {
      throw new Error(`not removing ${this.dir}: still mounted inside it: ${remaining.join(", ")}`);
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Waits until `pid` is gone; SIGKILLs it after {@link STOP_TIMEOUT_MS}. */
async function waitForProcessEnd(pid: number): Promise<void> {
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while (isRunning(pid)) {
    if (Date.now() > deadline) process.kill(pid, "SIGKILL");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Whether `pid` exists and is not a zombie (one that nobody reaped holds no locks and no files). */
function isRunning(pid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return false;
  }
  // The state follows the command name, which is in parentheses and may itself hold spaces.
  return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
}
