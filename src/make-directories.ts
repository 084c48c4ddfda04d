/** `mkdir -p` that fails where it cannot work, instead of never returning. */
import { mkdir, stat } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { errnoCode } from "./errors.js";

/**
 * Makes `path` and any missing parents (with `mode`) and returns the first directory it made, undefined
 * when `path` was there already, as node's recursive mkdir does. That one never returns below /proc or
 * /sys, where making a missing name fails with ENOENT although its parent exists: it retries forever, on
 * a thread no Ctrl-C reaches. Here each missing component is one plain mkdir, so that is an error.
 */
export async function makeDirectories(path: string, mode?: number): Promise<string | undefined> {
  const missing: string[] = [];
  for (let current = resolve(path); ; current = dirname(current)) {
    const found = await stat(current).catch((error: unknown) => {
      if (errnoCode(error) === "ENOENT") return undefined;
      throw error;
    });
    if (found !== undefined) {
      if (!found.isDirectory()) {
        throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${path}'`), {
          code: "ENOTDIR",
          path: current,
        });
      }
      break;
    }
    missing.unshift(current);
    if (dirname(current) === current) break;
  }
  for (const dir of missing) {
    await mkdir(dir, mode === undefined ? undefined : { mode }).catch((error: unknown) => {
      // Made meanwhile by someone else: as good as made here.
      if (errnoCode(error) !== "EEXIST") throw error;
    });
  }
  return missing[0];
}
