/**
 * What a forced exit (a second Ctrl-C, or SIGTERM after SIGINT) must still undo. The process then exits
 * at once, so the asynchronous cleanup in `finally` blocks never runs: every temporary file, directory
 * and mount registers a synchronous undo here for as long as it exists.
 */
import { rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const undos = new Set<Undo>();

interface Undo {
  readonly what: string;
  readonly run: () => void;
}

/** Registers `run`, which removes `what`; call the returned function once it is gone anyway. */
export function onForcedExit(what: string, run: () => void): () => void {
  const undo = { what, run };
  undos.add(undo);
  return () => undos.delete(undo);
}

/** Runs every registered undo, newest first; returns what could not be removed, with why. */
export function undoForForcedExit(): string[] {
  const failed: string[] = [];
  for (const undo of [...undos].reverse()) {
    try {
      undo.run();
    } catch (error) {
      failed.push(`${undo.what} (${error instanceof Error ? error.message : String(error)})`);
    }
    undos.delete(undo);
  }
  return failed;
}

/** A private (0700) directory under TMPDIR whose removal is registered for a forced exit. */
export interface TemporaryDirectory {
  readonly path: string;
  /** Removes it with everything in it; never throws. */
  remove(): Promise<void>;
}

/** Makes a {@link TemporaryDirectory} named `PREFIX…` (0700: what goes in may hold every file of a tree). */
export async function makeTemporaryDirectory(prefix: string): Promise<TemporaryDirectory> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  const forget = onForcedExit(path, () => rmSync(path, { recursive: true, force: true }));
  return {
    path,
    remove: async () => {
      await rm(path, { recursive: true, force: true }).catch(() => undefined);
      forget();
    },
  };
}
