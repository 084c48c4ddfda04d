/**
 * What a forced exit (a second Ctrl-C, or SIGTERM after SIGINT) must still undo. The process then exits
 * at once, so the asynchronous cleanup in `finally` blocks never runs: every temporary file, directory
 * and mount registers a synchronous undo here for as long as it exists. What no synchronous step can
 * undo (an image the engine makes of a body it has all received) is registered too, so that the message
 * of the exit can name it.
 */
import { rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UsageError, errnoCode } from "./errors.js";

const undos = new Set<Undo>();
const unstoppable = new Set<{ readonly what: string }>();

interface Undo {
  readonly what: string;
  readonly run: () => void;
}

/** What a forced exit did not remove. */
export interface ForcedExitLeftovers {
  /** What its undo failed to remove, with why. */
  readonly failed: readonly string[];
  /** What may still come to exist, as nothing in this process can stop it any more. */
  readonly mayRemain: readonly string[];
}

/** Registers `run`, which removes `what`; call the returned function once it is gone anyway. */
export function onForcedExit(what: string, run: () => void): () => void {
  const undo = { what, run };
  undos.add(undo);
  return () => undos.delete(undo);
}

/**
 * Registers `what`, which a forced exit cannot stop or undo; call the returned function once it is
 * settled (done with, or removed again).
 */
export function mayRemainAfterForcedExit(what: string): () => void {
  const entry = { what };
  unstoppable.add(entry);
  return () => unstoppable.delete(entry);
}

/** Runs every registered undo, newest first; returns what could not be removed, and what may remain. */
export function undoForForcedExit(): ForcedExitLeftovers {
  const failed: string[] = [];
  for (const undo of [...undos].reverse()) {
    try {
      undo.run();
    } catch (error) {
      failed.push(`${undo.what} (${error instanceof Error ? error.message : String(error)})`);
    }
    undos.delete(undo);
  }
  return { failed, mayRemain: [...new Set([...unstoppable].map((entry) => entry.what))] };
}

/** A private (0700) directory under TMPDIR whose removal is registered for a forced exit. */
export interface TemporaryDirectory {
  readonly path: string;
  /** Removes it with everything in it; never throws. */
  remove(): Promise<void>;
}

/** Why a directory could not be made in TMPDIR, for the errnos a wrong TMPDIR gives. */
const TMPDIR_FAULTS: Readonly<Record<string, string>> = {
  ENOENT: "it does not exist",
  ENOTDIR: "it is not a directory",
  EACCES: "permission denied",
  EPERM: "permission denied",
  EROFS: "its filesystem is read-only",
  ENOSPC: "its disk is full",
  EDQUOT: "the disk quota is exhausted",
};

/**
 * Makes a new directory `PREFIX…` under TMPDIR with mkdtemp, which creates it 0700: what goes in may hold
 * every file of a tree. Removing it is the caller's business.
 *
 * @throws UsageError when TMPDIR cannot hold it. TMPDIR is the user's setting, given like a flag, and
 *   nothing has started yet: a usage error (2), which scripts tell from a bug (1), and from a tool or a
 *   destination that failed halfway (6, 5).
 */
export async function makePrivateDirectory(prefix: string): Promise<string> {
  const parent = tmpdir();
  try {
    return await mkdtemp(join(parent, prefix));
  } catch (error) {
    const code = errnoCode(error) ?? String(error);
    const fault = TMPDIR_FAULTS[code];
    const why = fault === undefined ? code : `${code}: ${fault}`;
    throw new UsageError(`the temporary directory could not be made in TMPDIR=${parent} (${why})`, {
      cause: error,
      hint: "Point TMPDIR at a writable directory with room for the build, e.g. TMPDIR=/var/tmp.",
    });
  }
}

/** Makes a {@link TemporaryDirectory} named `PREFIX…` with {@link makePrivateDirectory}. */
export async function makeTemporaryDirectory(prefix: string): Promise<TemporaryDirectory> {
  const path = await makePrivateDirectory(prefix);
  const forget = onForcedExit(path, () => rmSync(path, { recursive: true, force: true }));
  return {
    path,
    remove: async () => {
      await rm(path, { recursive: true, force: true }).catch(() => undefined);
      forget();
    },
  };
}
