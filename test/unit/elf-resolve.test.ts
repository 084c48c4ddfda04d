import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import {
  copyFile,
  cp,
  lstat,
  mkdir,
  mkdtemp,
  readlink,
  realpath,
  rename,
  rm,
  symlink,
  writeFile,
} from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { InterruptedError, SourceError } from "../../src/errors.js";
import { ElfMachine, inspectElfFile } from "../../src/elf/read.js";
import { resolveLibraries, type ResolvedFile } from "../../src/elf/resolve.js";
import { makeGreetRoot } from "../support/glibc-root.js";

const run = promisify(execFile);
const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../fixtures/c");
const source = (name: string): string => path.join(fixtures, name);
/** Debian's cross libc: a directory laid out like a root filesystem, with lib/ holding libc and the loader. */
const arm64Sysroot = "/usr/aarch64-linux-gnu";

let workDir: string;
/** Programs and libraries built once for the whole file. */
const built = {
  helloDynamic: "",
  helloArm64: "",
  helloMusl: "",
  helloStatic: "",
  /** app/greet with RUNPATH $ORIGIN/lib; app/lib/libgreet.so needs app/lib/libinner.so. */
  greetRunpath: "",
  /** rpath/greet with RPATH $ORIGIN/lib (old dtags), same libraries under rpath/lib. */
  greetRpath: "",
  /** plain/greet: needs libgreet.so with no search path of its own, for the sysroot tests. */
  greetPlain: "",
  libgreet: "",
  libgreetArm64: "",
};

async function compile(compiler: string, args: string[]): Promise<void> {
  await run(compiler, ["-O2", ...args]);
}

/** Builds libinner.so, libgreet.so (needing libinner) and a greet program linked with `linkFlags` in `dir`. */
async function buildGreet(dir: string, linkFlags: string[]): Promise<string> {
  const lib = path.join(dir, "lib");
  await mkdir(lib, { recursive: true });
  const inner = path.join(dir, "inner.c");
  await writeFile(inner, "int inner_value(void) { return 42; }\n");
  await compile("gcc", [
    "-shared",
    "-fPIC",
    "-Wl,-soname,libinner.so",
    "-o",
    path.join(lib, "libinner.so"),
    inner,
  ]);
  await compile("gcc", [
    ...[
      "-shared",
      "-fPIC",
      "-Wl,-soname,libgreet.so",
      "-o",
      path.join(lib, "libgreet.so"),
      source("greet.c"),
    ],
    ...["-L", lib, "-Wl,--no-as-needed", "-linner"],
  ]);
  const program = path.join(dir, "greet");
  await compile("gcc", ["-o", program, source("greet-main.c"), "-L", lib, "-lgreet", ...linkFlags]);
  return program;
}

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), "mkbase-elf-resolve-"));
  const out = (name: string): string => path.join(workDir, name);
  const hello = source("hello.c");
  built.helloDynamic = out("hello");
  built.helloArm64 = out("hello-arm64");
  built.helloMusl = out("hello-musl");
  built.helloStatic = out("hello-static");
  built.libgreetArm64 = out("arm64/libgreet.so");
  await mkdir(out("arm64"));
  await Promise.all([
    compile("gcc", ["-o", built.helloDynamic, hello]),
    compile("aarch64-linux-gnu-gcc", ["-o", built.helloArm64, hello]),
    compile("musl-gcc", ["-o", built.helloMusl, hello]),
    compile("gcc", ["-static", "-o", built.helloStatic, hello]),
    compile("aarch64-linux-gnu-gcc", ["-shared", "-fPIC", "-o", built.libgreetArm64, source("greet.c")]),
    (async () => {
      built.greetRunpath = await buildGreet(out("app"), ["-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/lib"]);
    })(),
    (async () => {
      built.greetRpath = await buildGreet(out("rpath"), [
        "-Wl,--disable-new-dtags",
        "-Wl,-rpath,$ORIGIN/lib",
      ]);
    })(),
    (async () => {
      built.greetPlain = await buildGreet(out("plain"), []);
      built.libgreet = out("plain/lib/libgreet.so");
    })(),
  ]);
});

after(async () => {
  if (workDir !== undefined) await rm(workDir, { recursive: true, force: true });
});

/**
 * Recreates what an image would hold for `files` (their symlinks, and a file at each real path) and checks
 * that opening each `imagePath` there leads to its `realImagePath`, as it will in the image.
 */
async function assertLayoutReproducesLookups(files: readonly ResolvedFile[]): Promise<void> {
  const image = await mkdtemp(path.join(workDir, "image-"));
  for (const file of files) {
    for (const link of file.symlinks) {
      await mkdir(path.join(image, path.dirname(link.path)), { recursive: true });
      const existing = await lstat(path.join(image, link.path)).catch(() => undefined);
      if (existing === undefined) await symlink(link.target, path.join(image, link.path));
    }
  }
  for (const file of files) {
    const real = path.join(image, file.realImagePath);
    await mkdir(path.dirname(real), { recursive: true });
    await writeFile(real, file.hostPath);
  }
  for (const file of files) {
    // realpath inside the temp dir follows absolute targets to the host, so follow them by hand.
    assert.equal(await resolveInside(image, file.imagePath), file.realImagePath, file.imagePath);
  }
}

async function resolveInside(root: string, imagePath: string): Promise<string> {
  const pending = imagePath.split("/").filter((part) => part !== "");
  let current = "/";
  for (let hops = 0; pending.length > 0 && hops < 100; hops++) {
    const part = pending.shift() as string;
    const next = path.posix.join(current, part);
    const stats = await lstat(path.join(root, next));
    if (stats.isSymbolicLink()) {
      const target = await readlink(path.join(root, next));
      if (target.startsWith("/")) current = "/";
      pending.unshift(...target.split("/").filter((piece) => piece !== ""));
    } else {
      current = next;
    }
  }
  return current;
}

describe("resolveLibraries", () => {
  test("a sysroot that is not a directory is refused", async () => {
    const info = await inspectElfFile(built.helloDynamic);
    const missing = path.join(workDir, "no-such-root");
    await assert.rejects(
      resolveLibraries(built.helloDynamic, info, { sysroot: missing }),
      (error: unknown) => {
        assert.ok(error instanceof SourceError);
        assert.match(error.message, /the sysroot .*no-such-root does not exist/);
        return true;
      },
    );
  });

  test("an aborted signal stops the search", async () => {
    const info = await inspectElfFile(built.helloDynamic);
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(
      resolveLibraries(built.helloDynamic, info, { signal: controller.signal }),
      InterruptedError,
    );
  });

  test("a static program needs nothing", async () => {
    const result = await resolveLibraries(built.helloStatic, await inspectElfFile(built.helloStatic));
    assert.deepEqual(result, { interpreter: undefined, libraries: [] });
  });

  test("dynamic x86-64 hello on this machine: the glibc loader and libc", async () => {
    const info = await inspectElfFile(built.helloDynamic);
    const result = await resolveLibraries(built.helloDynamic, info);

    const interpreter = result.interpreter;
    assert.ok(interpreter !== undefined);
    assert.equal(interpreter.imagePath, "/lib64/ld-linux-x86-64.so.2");
    assert.equal(interpreter.hostPath, await realpath("/lib64/ld-linux-x86-64.so.2"));
    assert.equal(interpreter.info.machine, ElfMachine.x86_64);

    const libc = result.libraries.find((library) => library.name === "libc.so.6");
    assert.ok(libc !== undefined, JSON.stringify(result.libraries.map((library) => library.name)));
    assert.equal(libc.imagePath, "/lib/x86_64-linux-gnu/libc.so.6");
    assert.equal(libc.hostPath, await realpath("/lib/x86_64-linux-gnu/libc.so.6"));
    assert.equal(libc.neededBy, "/hello");
    assert.equal(libc.foundBy, "default");
    assert.ok((await lstat(libc.hostPath)).isFile());
    // libc.so.6 needs the loader by its soname: that is the interpreter, not a second copy.
    assert.ok(!result.libraries.some((library) => library.name === "ld-linux-x86-64.so.2"));

    await assertLayoutReproducesLookups([interpreter, ...result.libraries]);
  });

  test("dynamic aarch64 hello with --sysroot /usr/aarch64-linux-gnu", async () => {
    const info = await inspectElfFile(built.helloArm64);
    const result = await resolveLibraries(built.helloArm64, info, { sysroot: arm64Sysroot });
    assert.equal(result.interpreter?.imagePath, "/lib/ld-linux-aarch64.so.1");
    assert.equal(result.interpreter?.hostPath, path.join(arm64Sysroot, "lib/ld-linux-aarch64.so.1"));
    const libc = result.libraries.find((library) => library.name === "libc.so.6");
    assert.ok(libc !== undefined);
    // The cross libc sits directly in lib/, which is the default directory /lib of that root.
    assert.equal(libc.imagePath, "/lib/libc.so.6");
    assert.ok(libc.hostPath.startsWith(arm64Sysroot + "/"), libc.hostPath);
    assert.equal(libc.info.machine, ElfMachine.aarch64);
  });

  test("dynamic aarch64 hello without a sysroot is refused with a hint", async () => {
    const info = await inspectElfFile(built.helloArm64);
    await assert.rejects(resolveLibraries(built.helloArm64, info), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.match(
        error.message,
        /interpreter \/lib\/ld-linux-aarch64\.so\.1 .* was not found on this machine/,
      );
      assert.match(error.hint ?? "", /--sysroot/);
      return true;
    });
  });

  test("musl: the loader is libc, so libc.so needs no separate file", async () => {
    const info = await inspectElfFile(built.helloMusl);
    const result = await resolveLibraries(built.helloMusl, info);
    assert.equal(result.interpreter?.imagePath, "/lib/ld-musl-x86_64.so.1");
    assert.deepEqual(result.libraries, []);
    assert.ok(result.interpreter !== undefined);
    await assertLayoutReproducesLookups([result.interpreter]);
  });

  test("glibc: /usr/lib64 is searched in a root without multiarch directories only, as its loader does", async () => {
    // Debian's loader searches /lib/<triplet>, /usr/lib/<triplet>, /lib and /usr/lib: a library found in
    // /usr/lib64 there would be bundled, and then not load in the image.
    const debian = path.join(workDir, "multiarch-root");
    const program = await makeGreetRoot({
      root: debian,
      ldSoConf: "",
      libraryDir: "usr/lib64",
      fixtures,
      program: path.join(workDir, "greet-usr-lib"),
    });
    const info = await inspectElfFile(program);
    await assert.rejects(resolveLibraries(program, info, { sysroot: debian }), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.match(error.message, /needs a library not found .*: libgreet\.so/);
      assert.doesNotMatch(error.message, /lib64/);
      return true;
    });
    // Without the multiarch directory, the root is laid out as Fedora's, whose loader searches lib64.
    const fedora = path.join(workDir, "fedora-root");
    await cp(debian, fedora, { recursive: true, verbatimSymlinks: true });
    for (const file of ["ld-linux-x86-64.so.2", "libc.so.6"]) {
      await rename(path.join(fedora, "lib/x86_64-linux-gnu", file), path.join(fedora, "usr/lib64", file));
    }
    await rm(path.join(fedora, "lib"), { recursive: true });
    await rm(path.join(fedora, "lib64"), { recursive: true });
    await symlink("usr/lib64", path.join(fedora, "lib64"));
    const result = await resolveLibraries(program, info, { sysroot: fedora });
    const greet = result.libraries.find((entry) => entry.imagePath.endsWith("/libgreet.so"));
    assert.equal(greet?.imagePath, "/lib64/libgreet.so", "found through /lib64, searched first");
    assert.equal(greet?.foundBy, "default");
  });

  test("musl: a directory only /etc/ld-musl-<arch>.path names is not one the loader searches by itself", async () => {
    // The path file replaces musl's built-in /lib:/usr/local/lib:/usr/lib; an image has no such file.
    const root = path.join(workDir, "musl-root");
    await mkdir(path.join(root, "lib"), { recursive: true });
    await mkdir(path.join(root, "etc"));
    await mkdir(path.join(root, "opt/musl/lib"), { recursive: true });
    await copyFile("/lib/ld-musl-x86_64.so.1", path.join(root, "lib/ld-musl-x86_64.so.1"));
    await writeFile(path.join(root, "etc/ld-musl-x86_64.path"), "/opt/musl/lib/\n/usr/lib/:/lib/\n");
    const library = (directory: string, name: string) =>
      compile("musl-gcc", [
        ...["-shared", "-fPIC", `-Wl,-soname,${name}.so`],
        ...["-o", path.join(root, directory, `${name}.so`), source("greet.c")],
      ]);
    await library("opt/musl/lib", "libgreet");
    await library("lib", "libgreetdefault");
    const program = path.join(workDir, "greet-musl");
    await compile("musl-gcc", [
      ...["-o", program, source("greet-main.c")],
      ...["-L", path.join(root, "opt/musl/lib"), "-L", path.join(root, "lib")],
      ...["-Wl,--no-as-needed", "-lgreet", "-lgreetdefault"],
    ]);
    const info = await inspectElfFile(program);
    const result = await resolveLibraries(program, info, { sysroot: root });
    const foundBy = new Map(result.libraries.map((entry) => [entry.imagePath, entry.foundBy]));
    assert.deepEqual(
      foundBy,
      new Map([
        ["/opt/musl/lib/libgreet.so", "ld.so.conf"],
        ["/lib/libgreetdefault.so", "default"],
      ]),
    );
  });

  test("$ORIGIN in DT_RUNPATH finds the library next to the program", async () => {
    const info = await inspectElfFile(built.greetRunpath);
    assert.equal(info.runpath, "$ORIGIN/lib");
    // libgreet.so needs libinner.so; DT_RUNPATH is not inherited, and libgreet.so has none of its own.
    await assert.rejects(
      resolveLibraries(built.greetRunpath, info, { binaryImagePath: "/app/greet" }),
      (error: unknown) => {
        assert.ok(error instanceof SourceError);
        assert.match(error.message, /needs a library not found on this machine: libinner\.so/);
        assert.match(
          error.message,
          /libinner\.so \(needed by \/app\/lib\/libgreet\.so\): searched .*\/usr\/lib/,
        );
        assert.match(error.hint ?? "", /--sysroot/);
        return true;
      },
    );
  });

  test("$ORIGIN in DT_RPATH also serves the libraries the program loads", async () => {
    const info = await inspectElfFile(built.greetRpath);
    assert.equal(info.rpath, "$ORIGIN/lib");
    assert.equal(info.runpath, undefined);
    const result = await resolveLibraries(built.greetRpath, info, { binaryImagePath: "/app/greet" });
    const byName = new Map(result.libraries.map((library) => [library.name, library]));
    const greet = byName.get("libgreet.so");
    const inner = byName.get("libinner.so");
    assert.ok(greet !== undefined && inner !== undefined, [...byName.keys()].join(", "));
    assert.equal(greet.imagePath, "/app/lib/libgreet.so");
    assert.equal(greet.hostPath, await realpath(path.join(workDir, "rpath/lib/libgreet.so")));
    assert.equal(greet.foundBy, "rpath");
    assert.equal(inner.imagePath, "/app/lib/libinner.so");
    assert.equal(inner.neededBy, "/app/lib/libgreet.so");
    assert.equal(inner.foundBy, "rpath");
    assert.ok(byName.has("libc.so.6"));
    await assertLayoutReproducesLookups(result.libraries);
  });

  test("$ORIGIN with the default image path puts the libraries under /lib of the image", async () => {
    const result = await resolveLibraries(built.greetRpath, await inspectElfFile(built.greetRpath));
    const greet = result.libraries.find((library) => library.name === "libgreet.so");
    // The program lands at /greet, so $ORIGIN/lib is /lib at run time.
    assert.equal(greet?.imagePath, "/lib/libgreet.so");
    assert.ok(result.interpreter !== undefined);
    await assertLayoutReproducesLookups([result.interpreter, ...result.libraries]);
  });
});

describe("resolveLibraries in a sysroot", () => {
  let sysroot: string;

  before(async () => {
    // A small root: the loader and libc copied from this machine, ld.so.conf with an include glob, a
    // directory holding an aarch64 libgreet.so (to be skipped) listed before one holding the x86-64 one.
    sysroot = path.join(workDir, "sysroot");
    const libDir = path.join(sysroot, "lib/x86_64-linux-gnu");
    await mkdir(libDir, { recursive: true });
    await mkdir(path.join(sysroot, "lib64"));
    await copyFile("/lib64/ld-linux-x86-64.so.2", path.join(libDir, "ld-linux-x86-64.so.2"));
    await symlink(
      "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
      path.join(sysroot, "lib64/ld-linux-x86-64.so.2"),
    );
    await copyFile("/lib/x86_64-linux-gnu/libc.so.6", path.join(libDir, "libc.so.6.real"));
    await symlink("libc.so.6.real", path.join(libDir, "libc.so.6"));
    await mkdir(path.join(sysroot, "etc/ld.so.conf.d"), { recursive: true });
    await writeFile(
      path.join(sysroot, "etc/ld.so.conf"),
      "# system libraries\ninclude ld.so.conf.d/*.conf\n",
    );
    await writeFile(path.join(sysroot, "etc/ld.so.conf.d/00-arm.conf"), "/opt/arm/lib/\n");
    await writeFile(path.join(sysroot, "etc/ld.so.conf.d/10-custom.conf"), "/opt/custom/lib # comment\n");
    await writeFile(path.join(sysroot, "etc/ld.so.conf.d/.hidden.conf"), "/opt/hidden\n");
    await mkdir(path.join(sysroot, "opt/arm/lib"), { recursive: true });
    await mkdir(path.join(sysroot, "opt/custom/lib"), { recursive: true });
    await copyFile(built.libgreetArm64, path.join(sysroot, "opt/arm/lib/libgreet.so"));
    await copyFile(built.libgreet, path.join(sysroot, "opt/custom/lib/libgreet.so"));
    await copyFile(path.join(path.dirname(built.libgreet), "libinner.so"), path.join(libDir, "libinner.so"));
  });

  test("follows ld.so.conf includes, skips the wrong architecture, stays inside the root", async () => {
    const info = await inspectElfFile(built.greetPlain);
    const result = await resolveLibraries(built.greetPlain, info, { sysroot });

    const interpreter = result.interpreter;
    assert.ok(interpreter !== undefined);
    assert.equal(interpreter.imagePath, "/lib64/ld-linux-x86-64.so.2");
    // The absolute symlink target is read inside the sysroot, not on this machine.
    assert.equal(interpreter.hostPath, path.join(sysroot, "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"));
    assert.deepEqual(interpreter.symlinks, [
      { path: "/lib64/ld-linux-x86-64.so.2", target: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" },
    ]);

    const byName = new Map(result.libraries.map((library) => [library.name, library]));
    const greet = byName.get("libgreet.so");
    assert.equal(greet?.imagePath, "/opt/custom/lib/libgreet.so");
    assert.equal(greet?.foundBy, "ld.so.conf");
    assert.equal(greet?.info.machine, ElfMachine.x86_64);

    const libc = byName.get("libc.so.6");
    assert.equal(libc?.imagePath, "/lib/x86_64-linux-gnu/libc.so.6");
    assert.equal(libc?.realImagePath, "/lib/x86_64-linux-gnu/libc.so.6.real");
    assert.equal(libc?.hostPath, path.join(sysroot, "lib/x86_64-linux-gnu/libc.so.6.real"));
    assert.deepEqual(libc?.symlinks, [{ path: "/lib/x86_64-linux-gnu/libc.so.6", target: "libc.so.6.real" }]);

    const inner = byName.get("libinner.so");
    assert.equal(inner?.neededBy, "/opt/custom/lib/libgreet.so");
    assert.equal(inner?.foundBy, "default");

    for (const file of [interpreter, ...result.libraries]) {
      assert.ok(file.hostPath.startsWith(sysroot + path.sep), file.hostPath);
    }
    await assertLayoutReproducesLookups([interpreter, ...result.libraries]);
  });

  test("a missing library names what was searched and what was skipped", async () => {
    await rm(path.join(sysroot, "opt/custom/lib/libgreet.so"));
    const info = await inspectElfFile(built.greetPlain);
    await assert.rejects(resolveLibraries(built.greetPlain, info, { sysroot }), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.match(
        error.message,
        new RegExp(`needs a library not found under the sysroot .*: libgreet\\.so`),
      );
      assert.match(error.message, /searched \/opt\/arm\/lib, \/opt\/custom\/lib, \/lib\/x86_64-linux-gnu/);
      assert.doesNotMatch(error.message, /\/opt\/hidden/);
      assert.match(error.message, /skipped \/opt\/arm\/lib\/libgreet\.so \(built for 64-bit AArch64\)/);
      assert.match(error.hint ?? "", /sysroot/);
      return true;
    });
  });
});
