/**
 * The normalising stage between a source and the packer: mtimes clamped to the build epoch (so nothing
 * in the image is newer than the image), and the newest mtime remembered, since it is the default epoch.
 * Every source's entries pass here after `--exclude`, so checks on what a layer may hold live here too.
 */
import { SourceError } from "../errors.js";
import { displayPath, type EntrySource, type TarEntry } from "./entry.js";

export class EntryNormalizer {
  /** Newest mtime seen before clamping (seconds), or undefined when there were no entries. */
  newestMtime: number | undefined;
  /** Entries passed through. */
  count = 0;

  constructor(private readonly epoch: number | undefined) {}

  /** @throws SourceError for an overlay whiteout (a `.wh.` name). */
  normalize(entry: TarEntry): TarEntry {
    if (isWhiteout(entry.path)) throw whiteoutError(entry.path);
    this.count += 1;
    if (this.newestMtime === undefined || entry.mtime > this.newestMtime) this.newestMtime = entry.mtime;
    if (this.epoch !== undefined && entry.mtime > this.epoch) return { ...entry, mtime: this.epoch };
    return entry;
  }

  /** Applies {@link normalize} lazily, keeping a synchronous source synchronous. */
  apply(entries: Iterable<TarEntry> | AsyncIterable<TarEntry>): Iterable<TarEntry> | AsyncIterable<TarEntry> {
    return mapEntries(entries, (entry) => this.normalize(entry));
  }
}

type Entries = Iterable<TarEntry> | AsyncIterable<TarEntry>;

/**
 * `change` applied to each of `entries` as they are read. A synchronous source stays synchronous: the
 * directory walk's speed depends on not awaiting per entry.
 */
function mapEntries(entries: Entries, change: (entry: TarEntry) => TarEntry): Entries {
  if (Symbol.asyncIterator in entries) {
    const source = entries as AsyncIterable<TarEntry>;
    return (async function* () {
      for await (const entry of source) yield change(entry);
    })();
  }
  const source = entries as Iterable<TarEntry>;
  return (function* () {
    for (const entry of source) yield change(entry);
  })();
}

/**
 * `source` with every entry owned by `owner` (`--chown`), as `tar --owner=UID --group=GID` packs: for a
 * tree that an unprivileged user made, whose files would otherwise belong to that user in the image.
 */
export function withOwner(
  source: EntrySource,
  owner: { readonly uid: number; readonly gid: number },
): EntrySource {
  return {
    description: source.description,
    entries: (signal) =>
      mapEntries(source.entries(signal), (entry) => ({ ...entry, uid: owner.uid, gid: owner.gid })),
  };
}

/**
 * Whether the last component of `path` starts with `.wh.`. In an image layer such a name is an overlay
 * whiteout (OCI image-spec, layer.md "Whiteouts"): the engine deletes the path it names instead of
 * creating a file, so the entry would vanish from the container without a word. Byte by byte, since
 * this runs for every entry and decoding the path would cost more than the rest of it.
 */
function isWhiteout(path: Buffer): boolean {
  const start = path.lastIndexOf(0x2f) + 1;
  return (
    path[start] === 0x2e && path[start + 1] === 0x77 && path[start + 2] === 0x68 && path[start + 3] === 0x2e
  );
}

function whiteoutError(path: Buffer): SourceError {
  const shown = displayPath(path);
  return new SourceError(
    `"${shown}" is an overlay whiteout (a ".wh." name), not a file of a root filesystem`,
    {
      path: shown,
      hint:
        `the engine takes a ".wh." name in a layer for a deletion and drops the file; leave it out with ` +
        `--exclude '${excludePattern(path).replaceAll("'", `'\\''`)}', or give a flattened root filesystem ` +
        `instead of an image layer`,
    },
  );
}

/**
 * The `--exclude` pattern (quoted for a POSIX shell by the caller) that matches `path` alone, as the
 * filter sees it: glob characters and a leading `#` (a comment) or `!` (an exception) are escaped; a
 * character the filter cannot be given literally is matched by `?`: the U+FFFD that bytes which are
 * not UTF-8 decode to, and whitespace at either end, which the filter trims from a pattern.
 */
function excludePattern(path: Buffer): string {
  return path
    .toString("utf8")
    .replace(/[\\*?[]/g, "\\$&")
    .replace(/^[#!]/, "\\$&")
    .replace(/\uFFFD|^\s+|\s+$/g, (run) => "?".repeat(run.length));
}
