/**
 * Trees on disk for end-to-end tests: one holding every kind of entry a rootfs can hold, and a small
 * one for fast tests. Both carry a static busybox at /bin/busybox with /bin/sh pointing to it, so an
 * image built from them can run commands, and an /etc directory, so the engine does not make one
 * (see `containerRuntimePaths` in inspect.ts).
 *
 * Everything is fixed: contents (the "random" file is a fixed pseudo-random stream), modes set with
 * chmod rather than left to the umask, owners, and mtimes, which are set last, directories after
 * their children, because creating an entry changes its parent's mtime.
 */
import { createCipheriv } from "node:crypto";
import { existsSync } from "node:fs";
import {
  chmod,
  chown,
  copyFile,
  link,
  lutimes,
  mkdir,
  mkdtemp,
  readdir,
  rm,
  symlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runChecked } from "./cli.js";

/** A tree in its own temp dir; `cleanup` removes it. */
export interface FixtureTree {
  root: string;
  cleanup(): Promise<void>;
}

/** The mtime (seconds since 1970) of every entry of the fixture trees: 2020-09-13T12:26:40Z. */
export const fixtureMtime = 1_600_000_000;

/** The host's static busybox (Debian package busybox-static), copied into the trees. */
export const hostBusybox = "/bin/busybox";

/** A name that is not valid UTF-8 (it ends in byte 0xff), under /names in the every-kind tree. */
export const nonUtf8Name: Buffer = Buffer.concat([Buffer.from("latin1-caf", "latin1"), Buffer.from([0xff])]);

/** Size of /files/random in the every-kind tree: large enough to span several read chunks. */
export const randomFileSize = 3 * 1024 * 1024;

/** Joins path segments that may be raw bytes; the result is a Buffer so any name survives. */
function at(root: string, ...segments: (string | Buffer)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(root)];
  for (const segment of segments) parts.push(Buffer.from("/"), Buffer.from(segment));
  return Buffer.concat(parts);
}

async function newTreeRoot(prefix: string): Promise<string> {
  if (!existsSync(hostBusybox)) {
    throw new Error(`${hostBusybox} is missing: install the Debian package busybox-static`);
  }
  const root = await mkdtemp(join(tmpdir(), prefix));
  // A Unix socket path must fit in sockaddr_un (108 bytes), and the socket lives under the root.
  if (Buffer.byteLength(root) > 60) throw new Error(`temp dir path too long for a Unix socket: ${root}`);
  return root;
}

async function makeDir(path: Buffer, mode: number): Promise<void> {
  await mkdir(path);
  await chmod(path, mode);
}

async function makeFile(path: Buffer, content: Buffer | string, mode = 0o644): Promise<void> {
  await writeFile(path, content);
  await chmod(path, mode);
}

async function addBusybox(root: string): Promise<void> {
  await makeDir(at(root, "bin"), 0o755);
  await copyFile(hostBusybox, at(root, "bin", "busybox"));
  await chmod(at(root, "bin", "busybox"), 0o755);
  await symlink("busybox", at(root, "bin", "sh"));
}

/** Fixed pseudo-random bytes: AES-256-CTR with an all-zero key over zeros. */
function pseudoRandomBytes(size: number): Buffer {
  const cipher = createCipheriv("aes-256-ctr", Buffer.alloc(32), Buffer.alloc(16));
  return Buffer.concat([cipher.update(Buffer.alloc(size)), cipher.final()]);
}

/**
 * Sets every mtime below and including `dir` to {@link fixtureMtime}: entries first, each directory
 * after its contents. `lutimes` never follows a symlink and works on devices, FIFOs and sockets.
 */
async function setFixedMtimes(dir: Buffer): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true, encoding: "buffer" })) {
    const path = Buffer.concat([dir, Buffer.from("/"), entry.name as unknown as Buffer]);
    if (entry.isDirectory()) {
      await setFixedMtimes(path);
    } else {
      await lutimes(path, fixtureMtime, fixtureMtime);
    }
  }
  await lutimes(dir, fixtureMtime, fixtureMtime);
}

async function finish(root: string): Promise<FixtureTree> {
  await chmod(root, 0o755);
  await setFixedMtimes(Buffer.from(root));
  return { root, cleanup: () => rm(root, { recursive: true, force: true }) };
}

/** /bin/busybox, /bin/sh → busybox, an empty /etc and /hello.txt ("hello from mkbase\n"). */
export async function makeMinimalTree(): Promise<FixtureTree> {
  const root = await newTreeRoot("mkbase-min-");
  try {
    await addBusybox(root);
    await makeDir(at(root, "etc"), 0o755);
    await makeFile(at(root, "hello.txt"), "hello from mkbase\n");
    return await finish(root);
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
}

/**
 * A tree with every kind of entry mkbase must carry (needs root, `setcap`, `mkfifo` and `mknod`):
 *
 * - `/bin/busybox`, `/bin/sh` → `busybox`; `/etc/os-release`
 * - `/files/empty` (0 bytes), `/files/small` ("small file\n"), `/files/random` ({@link randomFileSize})
 * - `/modes/private` 0700 holding `file` and `inner` 0751 holding `file`; `/modes/setuid` 4755;
 *   `/modes/setgid-dir` 2775; `/modes/sticky-dir` 1777
 * - `/caps/ping` 0755 with `cap_net_raw+ep` (a `security.capability` xattr)
 * - `/owners/high` 300001:300002, `/owners/mid` 70000:70000 (beyond the old 16-bit and tar octal limits)
 * - `/names/` + a 150-byte name; `/names/deep/…/file`, over 255 bytes in all; {@link nonUtf8Name};
 *   `with space`; `utf8-naïve`
 * - `/links/hardlink-a`, `-b` (a pair); `/links/triple-a`, `-b`, `-c`; `/links/relative` →
 *   `../files/small`, `/links/absolute` → `/files/small`, `/links/dangling` → `no-such-target`
 * - `/special/fifo`, `/special/char-1-3` (c 1:3), `/special/block-7-200` (b 7:200), `/special/socket`
 *
 * Devices sit under /special, not /dev, because the engine mounts a tmpfs over /dev in containers.
 */
export async function makeEveryKindTree(): Promise<FixtureTree> {
  const root = await newTreeRoot("mkbase-all-");
  try {
    await addBusybox(root);
    await makeDir(at(root, "etc"), 0o755);
    await makeFile(at(root, "etc", "os-release"), 'NAME="mkbase fixture"\nID=mkbase-fixture\n');

    await makeDir(at(root, "files"), 0o755);
    await makeFile(at(root, "files", "empty"), Buffer.alloc(0));
    await makeFile(at(root, "files", "small"), "small file\n");
    await makeFile(at(root, "files", "random"), pseudoRandomBytes(randomFileSize));

    await makeDir(at(root, "modes"), 0o755);
    await makeDir(at(root, "modes", "private"), 0o700);
    await makeFile(at(root, "modes", "private", "file"), "in a 0700 directory\n", 0o600);
    await makeDir(at(root, "modes", "private", "inner"), 0o751);
    await makeFile(at(root, "modes", "private", "inner", "file"), "in a 0751 directory\n");
    // chmod after writing: chown and writes by non-root clear setuid/setgid, so the bits come last.
    await makeFile(at(root, "modes", "setuid"), "#!/bin/sh\necho setuid\n", 0o4755);
    await makeDir(at(root, "modes", "setgid-dir"), 0o2775);
    await makeDir(at(root, "modes", "sticky-dir"), 0o1777);

    await makeDir(at(root, "caps"), 0o755);
    const ping = at(root, "caps", "ping");
    await makeFile(ping, "#!/bin/sh\necho ping\n", 0o755);
    // setcap last: a later chown would drop the capability.
    await runChecked("setcap", ["cap_net_raw+ep", ping.toString()]);

    await makeDir(at(root, "owners"), 0o755);
    await makeFile(at(root, "owners", "high"), "owned by 300001:300002\n");
    await chown(at(root, "owners", "high"), 300001, 300002);
    await makeFile(at(root, "owners", "mid"), "owned by 70000:70000\n");
    await chown(at(root, "owners", "mid"), 70000, 70000);

    await makeDir(at(root, "names"), 0o755);
    await makeFile(at(root, "names", "long-" + "x".repeat(145)), "150-byte name\n");
    const deepDirs = ["a", "b", "c", "d", "e"].map((letter) => `${letter}-${"d".repeat(58)}`);
    let deep = at(root, "names", "deep");
    await makeDir(deep, 0o755);
    for (const name of deepDirs) {
      deep = at(deep.toString(), name);
      await makeDir(deep, 0o755);
    }
    await makeFile(at(deep.toString(), "file"), "at the end of a long path\n");
    await makeFile(at(root, "names", nonUtf8Name), "name is not UTF-8\n");
    await makeFile(at(root, "names", "with space"), "name with a space\n");
    await makeFile(at(root, "names", "utf8-naïve"), "name with a non-ASCII UTF-8 letter\n");

    await makeDir(at(root, "links"), 0o755);
    await makeFile(at(root, "links", "hardlink-a"), "two names, one inode\n");
    await link(at(root, "links", "hardlink-a"), at(root, "links", "hardlink-b"));
    await makeFile(at(root, "links", "triple-a"), "three names, one inode\n");
    await link(at(root, "links", "triple-a"), at(root, "links", "triple-b"));
    await link(at(root, "links", "triple-a"), at(root, "links", "triple-c"));
    await symlink("../files/small", at(root, "links", "relative"));
    await symlink("/files/small", at(root, "links", "absolute"));
    await symlink("no-such-target", at(root, "links", "dangling"));

    await makeDir(at(root, "special"), 0o755);
    const special = join(root, "special");
    await runChecked("mkfifo", ["--mode=0644", join(special, "fifo")]);
    await runChecked("mknod", ["--mode=0666", join(special, "char-1-3"), "c", "1", "3"]);
    await runChecked("mknod", ["--mode=0660", join(special, "block-7-200"), "b", "7", "200"]);
    await makeSocket(join(special, "socket"));
    await chmod(join(special, "socket"), 0o755);

    return await finish(root);
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
}

/**
 * Leaves a socket file at `path`. A server in this process would unlink it on close, so a child node
 * binds it and exits without closing, which keeps the file.
 */
async function makeSocket(path: string): Promise<void> {
  const bindAndExit = `require("node:net").createServer().listen(process.argv[1], () => process.exit(0));`;
  await runChecked(process.execPath, ["-e", bindAndExit, path]);
}
