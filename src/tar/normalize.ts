/**
 * The normalising stage between a source and the packer: mtimes clamped to the build epoch (so nothing
 * in the image is newer than the image), and the newest mtime remembered, since it is the default epoch.
 */
import type { TarEntry } from "./entry.js";

export class EntryNormalizer {
  /** Newest mtime seen before clamping (seconds), or undefined when there were no entries. */
  newestMtime: number | undefined;
  /** Entries passed through. */
  count = 0;

  constructor(private readonly epoch: number | undefined) {}

  normalize(entry: TarEntry): TarEntry {
    this.count += 1;
    if (this.newestMtime === undefined || entry.mtime > this.newestMtime) this.newestMtime = entry.mtime;
    if (this.epoch !== undefined && entry.mtime > this.epoch) return { ...entry, mtime: this.epoch };
    return entry;
  }

  /** Applies {@link normalize} lazily, keeping a synchronous source synchronous. */
  apply(entries: Iterable<TarEntry> | AsyncIterable<TarEntry>): Iterable<TarEntry> | AsyncIterable<TarEntry> {
    if (Symbol.asyncIterator in entries) {
      const source = entries as AsyncIterable<TarEntry>;
      return (async function* (self: EntryNormalizer) {
        for await (const entry of source) yield self.normalize(entry);
      })(this);
    }
    const source = entries as Iterable<TarEntry>;
    return (function* (self: EntryNormalizer) {
      for (const entry of source) yield self.normalize(entry);
    })(this);
  }
}
