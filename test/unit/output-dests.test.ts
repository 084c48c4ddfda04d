/**
 * What a file output does to a dest that exists: writes through a symlink, also a dangling one, to its
 * target, and gives the new file the mode and owner of the one it replaces; and what a build context
 * output refuses (a file, a directory with files) before anything is written.
 */
import assert from "node:assert/strict";
import {
  chmod,
  chown,
  lstat,
  mkdir,
  readFile,
  readdir,
  readlink,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { UsageError } from "../../src/errors.js";
import { writeFileAtomically } from "../../src/sinks/atomic-file.js";
import type { ImageFlags } from "../../src/cli/image-options.js";
import { openOutputs } from "../../src/cli/outputs.js";
import { temporaryDirectory } from "../support/temporary-directory.js";

describe("a file dest that exists", () => {
  const scratch = temporaryDirectory("mkbase-unit-file-dest-");

  it("writes through a dangling symlink (and a chain of them) to the file it names, as a shell's > does", async () => {
    await mkdir(join(scratch.path, "releases"));
    await symlink("releases/v2.tar", join(scratch.path, "next.tar"));
    await symlink("next.tar", join(scratch.path, "latest.tar"));
    await writeFileAtomically(join(scratch.path, "latest.tar"), "the test archive", [Buffer.from("new")]);
    assert.equal(await readlink(join(scratch.path, "latest.tar")), "next.tar");
    assert.equal(await readlink(join(scratch.path, "next.tar")), "releases/v2.tar");
    assert.equal(await readFile(join(scratch.path, "releases", "v2.tar"), "utf8"), "new");
  });

  it("gives the new file the mode of the one it replaces, whatever the umask", async () => {
    for (const mode of [0o640, 0o666, 0o600]) {
      const path = join(scratch.path, `mode-${mode.toString(8)}.tar`);
      await writeFile(path, "old");
      await chmod(path, mode);
      await writeFileAtomically(path, "the test archive", [Buffer.from("new")]);
      assert.equal((await stat(path)).mode & 0o7777, mode);
      assert.equal(await readFile(path, "utf8"), "new");
    }
  });

  it(
    "gives the new file the owner of the one it replaces, where the process may",
    {
      skip: process.getuid?.() !== 0 && "only root gives a file to another user",
    },
    async () => {
      const target = join(scratch.path, "owned.tar");
      await writeFile(target, "old");
      await chown(target, 1000, 1000);
      await chmod(target, 0o640);
      await symlink("owned.tar", join(scratch.path, "owned-link.tar"));
      await writeFileAtomically(join(scratch.path, "owned-link.tar"), "the test archive", [
        Buffer.from("new"),
      ]);
      const written = await stat(target);
      assert.deepEqual([written.uid, written.gid, written.mode & 0o7777], [1000, 1000, 0o640]);
      assert.ok((await lstat(join(scratch.path, "owned-link.tar"))).isSymbolicLink());
    },
  );
});

describe("a build context dest that exists", () => {
  const scratch = temporaryDirectory("mkbase-unit-context-dest-");

  /** The check the outputs make before anything is built. */
  async function checked(dest: string): Promise<void> {
    const outputs = await openOutputs({ output: [`type=context,dest=${dest}`] } as ImageFlags, {
      tags: [],
      env: {},
      images: 1,
    });
    await outputs.close();
  }

  it("is refused when it holds files, which would replace or change the context, and left as it was", async () => {
    const dest = join(scratch.path, "mine");
    await mkdir(dest);
    await writeFile(join(dest, "Dockerfile"), "FROM mine\n");
    await writeFile(join(dest, ".dockerignore"), "*.tar\n");
    await assert.rejects(checked(dest), (error: unknown) => {
      assert.ok(error instanceof UsageError);
      assert.equal(
        error.message,
        `cannot write the build context ${dest}: it is not empty (.dockerignore, Dockerfile)`,
      );
      return true;
    });
    assert.equal(await readFile(join(dest, "Dockerfile"), "utf8"), "FROM mine\n");
    assert.deepEqual((await readdir(dest)).sort(), [".dockerignore", "Dockerfile"]);
  });

  it("is refused when it is a file, saying so", async () => {
    const dest = join(scratch.path, "a-file");
    await writeFile(dest, "data");
    await assert.rejects(checked(dest), {
      name: "UsageError",
      message: `cannot write the build context ${dest}: it is a file, not a directory`,
    });
  });

  it("is taken when it is new or empty", async () => {
    await mkdir(join(scratch.path, "empty"));
    await checked(join(scratch.path, "empty"));
    await checked(join(scratch.path, "new"));
    assert.deepEqual((await readdir(scratch.path)).sort(), ["a-file", "empty", "mine"]);
  });
});
