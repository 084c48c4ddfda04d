import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  linkSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
  chmodSync,
} from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { SourceError } from "../../src/errors.js";
import { TEMP_PREFIX } from "../../src/sinks/atomic-file.js";
import { RootfsDirSource } from "../../src/sources/rootfs-dir.js";
import type { TarEntry } from "../../src/tar/entry.js";
import { PathFilter } from "../../src/tar/exclude.js";
import { EntryNormalizer, withOwner } from "../../src/tar/normalize.js";
import { walkTree } from "../../src/tar/walk.js";

const signal = new AbortController().signal;
let root: string;

function walk(options: Partial<Parameters<typeof walkTree>[1]> = {}): TarEntry[] {
  return [...walkTree(root, { signal, ...options })];
}

const names = (entries: TarEntry[]): string[] => entries.map((e) => e.path.toString("latin1"));

before(async () => {
  root = mkdtempSync(join(tmpdir(), "mkbase-walk-test-"));
  mkdirSync(join(root, "b/sub"), { recursive: true });
  writeFileSync(join(root, "a.txt"), "a");
  writeFileSync(join(root, "b/sub/file"), "12345");
  writeFileSync(join(root, "B"), "upper");
  linkSync(join(root, "b/sub/file"), join(root, "z-hard"));
  symlinkSync("../nowhere", join(root, "b/dangling"));
  chmodSync(join(root, "a.txt"), 0o4755);
  writeFileSync(Buffer.concat([Buffer.from(join(root, "raw-")), Buffer.from([0xff])]), "raw");
  execFileSync("mkfifo", [join(root, "fifo")]);
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(join(root, "sock"), resolve));
  // Leave the socket file behind: closing the server would unlink it.
  server.unref();
  for (const dir of ["proc", "tmp"]) {
    mkdirSync(join(root, dir));
    writeFileSync(join(root, dir, "inside"), "x");
  }
  utimesSync(join(root, "a.txt"), 1_600_000_000.9, 1_600_000_000.9);
});
after(() => rmSync(root, { recursive: true, force: true }));

describe("walkTree", () => {
  it("yields entries depth-first, sorted bytewise within each directory, without the root", () => {
    assert.deepEqual(names(walk()), [
      "B",
      "a.txt",
      "b",
      "b/dangling",
      "b/sub",
      "b/sub/file",
      "fifo",
      "proc",
      "proc/inside",
      "raw-\xff",
      "tmp",
      "tmp/inside",
      "z-hard",
    ]);
  });

  it("describes each kind faithfully", () => {
    const byName = new Map(walk().map((e) => [e.path.toString("latin1"), e]));
    const file = byName.get("a.txt");
    assert.equal(file?.type, "file");
    assert.equal(file?.mode, 0o4755);
    assert.equal(file?.mtime, 1_600_000_000, "mtime is floored, never rounded up");
    assert.equal(byName.get("b/dangling")?.type, "symlink");
    assert.equal(byName.get("b/dangling")?.linkname?.toString(), "../nowhere");
    assert.equal(byName.get("fifo")?.type, "fifo");
    assert.equal(byName.get("b/sub/file")?.type, "file");
    assert.equal(byName.get("z-hard")?.type, "hardlink");
    assert.equal(byName.get("z-hard")?.linkname?.toString(), "b/sub/file");
    assert.equal(byName.get("raw-\xff")?.path.at(-1), 0xff);
  });

  it("reports sockets instead of yielding them", () => {
    const skipped: string[] = [];
    const entries = walk({ onSkip: (kind, path) => skipped.push(`${kind}:${path}`) });
    assert.ok(!names(entries).includes("sock"));
    assert.deepEqual(skipped, ["socket:sock"]);
  });

  it("keeps runtime directories empty in system mode", () => {
    const entries = names(walk({ contentsExcluded: ["proc", "tmp"] }));
    assert.ok(entries.includes("proc") && entries.includes("tmp"));
    assert.ok(!entries.includes("proc/inside") && !entries.includes("tmp/inside"));
  });

  it("prunes excluded paths, and a hardlink whose first path is excluded becomes a file", () => {
    const entries = walk({ filter: new PathFilter(["b", "*.txt"]) });
    assert.ok(!names(entries).some((n) => n.startsWith("b/") || n === "b" || n === "a.txt"));
    const hard = entries.find((e) => e.path.toString() === "z-hard");
    assert.equal(hard?.type, "file");
    assert.equal(hard?.size, 5);
  });

  it("re-includes exceptions below an excluded directory, with their parents as Docker keeps them", () => {
    const entries = walk({ filter: new PathFilter(["b", "!b/sub/file"]) });
    const bEntries = entries.filter((e) => e.path.toString().startsWith("b"));
    assert.deepEqual(names(bEntries), ["b", "b/sub", "b/sub/file"]);
    assert.deepEqual(
      bEntries.map((e) => e.type),
      ["directory", "directory", "file"],
    );
    // A parent is held back only until something below it is kept: none is, none is packed.
    assert.ok(
      !names(walk({ filter: new PathFilter(["b", "!b/sub/missing"]) })).some((n) => n.startsWith("b")),
    );
  });

  it("does not cross into a runtime directory or another mount for an exception", () => {
    const entries = names(
      walk({ filter: new PathFilter(["tmp", "!tmp/inside"]), contentsExcluded: ["proc", "tmp"] }),
    );
    assert.ok(!entries.some((n) => n.startsWith("tmp")));
    const skipped: string[] = [];
    const mounted = walk({
      filter: new PathFilter(["b", "!b/sub/file"]),
      mountPoints: new Set(["b"]),
      onSkip: (kind, path) => skipped.push(`${kind}:${path}`),
    });
    assert.ok(!names(mounted).some((n) => n.startsWith("b")));
    assert.deepEqual(skipped, ["mount:b", "socket:sock"]);
  });

  it("warns about a large file that is mostly holes, and only about that one", () => {
    const dir = mkdtempSync(join(tmpdir(), "mkbase-walk-sparse-"));
    try {
      // Holes only: no disk space is used. 8 GiB stands for a lastlog after useradd with a large uid.
      execFileSync("truncate", ["-s", "8G", join(dir, "lastlog")]);
      execFileSync("truncate", ["-s", "1M", join(dir, "small-holes")]);
      // Large but not sparse would need gigabytes of disk; the size check alone is in tar-read's tests.
      const warnings: string[] = [];
      const entries = [...walkTree(dir, { signal, onWarning: (message) => warnings.push(message) })];
      assert.deepEqual(names(entries), ["lastlog", "small-holes"]);
      assert.equal(warnings.length, 1, warnings.join("\n"));
      assert.match(warnings[0] ?? "", /^lastlog is a sparse file of 8\.00 GiB holding 0 B of data/);
      assert.match(warnings[0] ?? "", /--exclude lastlog$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("fails with a SourceError naming a path that vanished", () => {
    assert.throws(
      () => [...walkTree(join(root, "missing"), { signal })],
      (error: unknown) => error instanceof SourceError && /missing/.test(error.message),
    );
  });

  it("stops when the signal is aborted", () => {
    const controller = new AbortController();
    const iterator = walkTree(root, { signal: controller.signal });
    iterator.next();
    controller.abort();
    assert.throws(() => iterator.next(), { name: "InterruptedError" });
  });
});

describe("a tree with overlay whiteouts, walked and normalised as mkbase dir does", () => {
  let tree: string;

  before(() => {
    tree = mkdtempSync(join(tmpdir(), "mkbase-walk-whiteout-"));
    const files = [
      "!bang/.wh.y",
      "#top/.wh.x",
      ".wh.dir/inside",
      "etc/.wh.keep",
      "etc/hosts",
      "odd/.wh.a*[b]?",
      "odd/.wh.ab",
      "opq/.wh..wh..opq",
      "opq/kept",
      "q/.wh.it's ",
    ];
    for (const file of files) {
      mkdirSync(join(tree, file, ".."), { recursive: true });
      writeFileSync(join(tree, file), "x");
    }
    mkdirSync(join(tree, "raw"));
    writeFileSync(Buffer.concat([Buffer.from(join(tree, "raw/.wh.")), Buffer.from([0xff])]), "x");
  });
  after(() => rmSync(tree, { recursive: true, force: true }));

  function packed(patterns: string[]): string[] {
    const normalizer = new EntryNormalizer(undefined);
    const walked = walkTree(tree, { signal, filter: new PathFilter(patterns) });
    return names([...(normalizer.apply(walked) as Iterable<TarEntry>)]);
  }

  function refusal(patterns: string[]): SourceError {
    let refused: SourceError | undefined;
    assert.throws(
      () => packed(patterns),
      (error: unknown) => {
        assert.ok(error instanceof SourceError, String(error));
        refused = error;
        return true;
      },
    );
    return refused as SourceError;
  }

  /** The pattern of the hint's `--exclude '…'`, unquoted as a POSIX shell would. */
  function hintedPattern(error: SourceError): string {
    const quoted = /--exclude '((?:[^']|'\\'')*)'/.exec(error.hint ?? "")?.[1];
    assert.ok(quoted !== undefined, `no --exclude in the hint: ${error.hint}`);
    return quoted.replaceAll("'\\''", "'");
  }

  it("refuses a whiteout, naming it, with the --exclude that leaves it out", () => {
    const error = refusal(["?bang", "?top", ".wh.dir"]);
    assert.equal(
      error.message,
      '"etc/.wh.keep" is an overlay whiteout (a ".wh." name), not a file of a root filesystem',
    );
    assert.equal(error.path, "etc/.wh.keep");
    assert.equal(hintedPattern(error), "etc/.wh.keep");
  });

  it("each hinted pattern leaves out that whiteout alone, until the rest of the tree is packed", () => {
    const patterns: string[] = [];
    const refused: string[] = [];
    for (let round = 0; round < 20; round++) {
      let error: SourceError | undefined;
      try {
        packed(patterns);
        break;
      } catch (caught) {
        if (!(caught instanceof SourceError)) throw caught;
        error = caught;
      }
      refused.push(error.path ?? "");
      patterns.push(hintedPattern(error));
    }
    // In walk order; a glob character in a name must not leave out a neighbour (odd/.wh.ab).
    assert.deepEqual(refused, [
      "!bang/.wh.y",
      "#top/.wh.x",
      ".wh.dir",
      "etc/.wh.keep",
      "odd/.wh.a*[b]?",
      "odd/.wh.ab",
      "opq/.wh..wh..opq",
      "q/.wh.it's ",
      "raw/.wh.\\xff",
    ]);
    assert.deepEqual(patterns, [
      "\\!bang/.wh.y",
      "\\#top/.wh.x",
      ".wh.dir",
      "etc/.wh.keep",
      "odd/.wh.a\\*\\[b]\\?",
      "odd/.wh.ab",
      "opq/.wh..wh..opq",
      "q/.wh.it's?",
      "raw/.wh.?",
    ]);
    assert.deepEqual(packed(patterns), [
      "!bang",
      "#top",
      "etc",
      "etc/hosts",
      "odd",
      "opq",
      "opq/kept",
      "q",
      "raw",
    ]);
  });
});

describe("outputs inside the tree", () => {
  it("are left out with the temporary files beside them, and named in one warning", async () => {
    const base = mkdtempSync(join(tmpdir(), "mkbase-unit-outputs-"));
    try {
      // The tree is reached through a symlink, as the outputs' resolved paths are not.
      const tree = join(base, "tree");
      mkdirSync(join(tree, "out/layout"), { recursive: true });
      writeFileSync(join(tree, "out/image.tar"), "old archive");
      writeFileSync(join(tree, `out/${TEMP_PREFIX}image.tar-1-ab`), "being written");
      writeFileSync(join(tree, `${TEMP_PREFIX}elsewhere`), "not beside an output");
      writeFileSync(join(tree, "out/kept"), "kept");
      symlinkSync(tree, join(base, "link"));
      const warnings: string[] = [];
      const source = await RootfsDirSource.open({
        path: join(base, "link"),
        outputs: [join(tree, "out/image.tar"), join(tree, "out/layout"), join(base, "outside.tar")],
        onProgress: (event) => {
          if (event.kind === "warning") warnings.push(event.message);
        },
      });
      const paths = [...source.entries(new AbortController().signal)].map((entry) => entry.path.toString());
      assert.deepEqual(paths, [`${TEMP_PREFIX}elsewhere`, "out", "out/kept"]);
      assert.deepEqual(warnings, [
        "left out out/image.tar, out/layout: outputs of this command inside the tree",
      ]);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});

describe("mount points inside the tree", () => {
  it(
    "a bind mount of the tree's own filesystem is kept empty unless --cross-mounts",
    { skip: process.getuid?.() !== 0 && "only root can bind mount" },
    async () => {
      const base = mkdtempSync(join(tmpdir(), "mkbase-unit-mounts-"));
      const mountPoint = join(base, "tree/var/cache/apt");
      mkdirSync(mountPoint, { recursive: true });
      mkdirSync(join(base, "host-cache"));
      writeFileSync(join(base, "host-cache/pkg.deb"), "host");
      execFileSync("mount", ["--bind", join(base, "host-cache"), mountPoint]);
      try {
        const packed = async (crossMounts: boolean): Promise<{ paths: string[]; warnings: string[] }> => {
          const warnings: string[] = [];
          const source = await RootfsDirSource.open({
            path: join(base, "tree"),
            crossMounts,
            onProgress: (event) => {
              if (event.kind === "warning") warnings.push(event.message);
            },
          });
          const entries = [...source.entries(new AbortController().signal)];
          return { paths: entries.map((entry) => entry.path.toString()), warnings };
        };
        const kept = await packed(false);
        assert.deepEqual(kept.paths, ["var", "var/cache", "var/cache/apt"]);
        assert.match(kept.warnings.join("\n"), /mounted at var\/cache\/apt \(use --cross-mounts/);
        assert.deepEqual((await packed(true)).paths, [
          "var",
          "var/cache",
          "var/cache/apt",
          "var/cache/apt/pkg.deb",
        ]);
      } finally {
        execFileSync("umount", [mountPoint]);
        rmSync(base, { recursive: true, force: true });
      }
    },
  );
});

it("withOwner (--chown) gives every entry the owner, and keeps a synchronous source synchronous", async () => {
  const dir = { description: "d", entries: () => walkTree(root, { signal }) };
  const owned = withOwner(dir, { uid: 1234, gid: 5678 }).entries(signal);
  assert.ok(!(Symbol.asyncIterator in owned), "the walk must stay synchronous");
  const entries = [...(owned as Iterable<TarEntry>)];
  assert.deepEqual(names(entries), names(walk()));
  assert.ok(entries.every((entry) => entry.uid === 1234 && entry.gid === 5678));

  const fromArchive = {
    description: "a",
    entries: async function* () {
      yield* walkTree(root, { signal });
    },
  };
  const streamed: TarEntry[] = [];
  for await (const entry of withOwner(fromArchive, { uid: 0, gid: 0 }).entries(
    signal,
  ) as AsyncIterable<TarEntry>) {
    streamed.push(entry);
  }
  assert.ok(streamed.length > 0 && streamed.every((entry) => entry.uid === 0 && entry.gid === 0));
});
