/**
 * `--exclude` / `--exclude-from`: paths to leave out of the image, in `.dockerignore` syntax (Docker's
 * own matching rules: `*` stays within one directory, `**` crosses them, `!` re-includes, a matched
 * directory takes its contents with it).
 */
import { readFile } from "node:fs/promises";
import dockerignore from "@balena/dockerignore";
import { SourceError, UsageError, errnoCode } from "../errors.js";
import { displayPath, type TarEntry } from "./entry.js";

export class PathFilter {
  private readonly matcher: ReturnType<typeof dockerignore.default>;
  private readonly exceptions: readonly string[];

  /** @param patterns dockerignore lines; blank lines and `#` comments are ignored. */
  constructor(readonly patterns: readonly string[]) {
    const lines = patterns.map((p) => p.trim()).filter((p) => p !== "" && !p.startsWith("#"));
    // The package is CommonJS; under Node ESM its function is the `default` member.
    this.matcher = dockerignore.default().add(lines.map((p) => p.replace(/^\/+/, "")));
    this.exceptions = lines.filter((p) => p.startsWith("!")).map((p) => p.slice(1).replace(/^\/+/, ""));
  }

  /** Whether the entry at `path` (relative, `/`-separated) is left out. */
  excludes(path: string): boolean {
    return this.matcher.ignores(path);
  }

  /**
   * Whether an exception pattern could re-include something below the excluded directory `dir`, so the
   * walk must still descend into it. Without exceptions a whole excluded subtree is skipped unread.
   */
  mayIncludeUnder(dir: string): boolean {
    return this.exceptions.some(
      (pattern) => pattern.startsWith(`${dir}/`) || pattern.startsWith("**") || pattern.includes("*"),
    );
  }

  get isEmpty(): boolean {
    return this.patterns.length === 0;
  }
}

/** Builds the filter from `--exclude` values and the lines of each `--exclude-from` file. */
export async function loadPathFilter(
  excludes: readonly string[],
  excludeFrom: readonly string[],
): Promise<PathFilter> {
  const lines = [...excludes];
  for (const file of excludeFrom) {
    try {
      lines.push(...(await readFile(file, "utf8")).split(/\r?\n/));
    } catch (error) {
      throw new UsageError(`cannot read --exclude-from file ${file}: ${(error as Error).message}`, {
        cause: error,
        hint: errnoCode(error) === "ENOENT" ? "Check the path of the exclude file." : undefined,
      });
    }
  }
  return new PathFilter(lines);
}

/**
 * Leaves out the entries of an archive-order stream that `filter` excludes. A hardlink whose target was
 * left out cannot be written (the content is gone), so it is an error that names both paths.
 */
export async function* excludeEntries(
  entries: Iterable<TarEntry> | AsyncIterable<TarEntry>,
  filter: PathFilter,
): AsyncGenerator<TarEntry> {
  const excluded = new Set<string>();
  for await (const entry of entries) {
    const path = entry.path.toString("utf8");
    if (filter.excludes(path)) {
      if (entry.type === "file") excluded.add(path);
      continue;
    }
    if (entry.type === "hardlink" && excluded.has(entry.linkname?.toString("utf8") ?? "")) {
      throw new SourceError(
        `${displayPath(entry.path)} is a hardlink to ${displayPath(entry.linkname ?? Buffer.alloc(0))}, which --exclude leaves out`,
        {
          path: displayPath(entry.path),
          hint: "Exclude both paths, or neither.",
        },
      );
    }
    yield entry;
  }
}
