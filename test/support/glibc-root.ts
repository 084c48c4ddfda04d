import { execFile } from "node:child_process";
import { copyFile, mkdir, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/**
 * Makes `root` a small x86-64 glibc root filesystem, laid out as Debian's: this machine's loader and libc
 * under `/lib/x86_64-linux-gnu`, `/lib64/ld-linux-x86-64.so.2` linking to the loader, and `/etc/ld.so.conf`
 * with `ldSoConf`; then builds `libgreet.so` (soname `libgreet.so`, from `greet.c`) into `libraryDir` of
 * that root and a program from `greet-main.c` that needs it.
 *
 * @param fixtures the directory holding `greet.c` and `greet-main.c`
 * @returns the program's path, `program` outside the root
 */
export async function makeGreetRoot(options: {
  readonly root: string;
  readonly ldSoConf: string;
  readonly libraryDir: string;
  readonly fixtures: string;
  readonly program: string;
}): Promise<string> {
  const { root, fixtures, program } = options;
  const libDir = path.join(root, "lib/x86_64-linux-gnu");
  const libraryDir = path.join(root, options.libraryDir);
  await mkdir(libDir, { recursive: true });
  await mkdir(path.join(root, "lib64"));
  await mkdir(path.join(root, "etc"));
  await mkdir(libraryDir, { recursive: true });
  await copyFile("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", path.join(libDir, "ld-linux-x86-64.so.2"));
  await symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", path.join(root, "lib64/ld-linux-x86-64.so.2"));
  await copyFile("/lib/x86_64-linux-gnu/libc.so.6", path.join(libDir, "libc.so.6"));
  await writeFile(path.join(root, "etc/ld.so.conf"), options.ldSoConf);
  await run("gcc", [
    ...["-shared", "-fPIC", "-Wl,-soname,libgreet.so"],
    ...["-o", path.join(libraryDir, "libgreet.so"), path.join(fixtures, "greet.c")],
  ]);
  // The library after the source, so that a linker defaulting to --as-needed keeps it.
  await run("gcc", ["-o", program, path.join(fixtures, "greet-main.c"), "-L", libraryDir, "-lgreet"]);
  return program;
}
