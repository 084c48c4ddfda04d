/** Running arm64 programs on this machine through qemu-user-static, for the tests that need it. */
import { existsSync, readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { runCommand } from "./cli.js";

/**
 * Registers qemu-aarch64 with binfmt_misc when this machine can (root, qemu-user-static installed);
 * true when arm64 programs run here afterwards.
 */
export async function registerArm64Emulation(): Promise<boolean> {
  const binfmt = "/proc/sys/fs/binfmt_misc";
  if (!existsSync(join(binfmt, "register"))) {
    await runCommand("mount", ["-t", "binfmt_misc", "binfmt_misc", binfmt]);
  }
  const config = "/usr/lib/binfmt.d/qemu-aarch64.conf";
  if (!existsSync(join(binfmt, "qemu-aarch64")) && existsSync(config)) {
    // An entry registered meanwhile by someone else makes the write fail with EEXIST, which is fine.
    await writeFile(join(binfmt, "register"), readFileSync(config)).catch(() => undefined);
  }
  return existsSync(join(binfmt, "qemu-aarch64"));
}
