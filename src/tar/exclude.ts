/**
 * `--exclude` / `--exclude-from`: paths to leave out of the image, in `.dockerignore` syntax (Docker's
 * own matching rules: `*` stays within one directory, `**` crosses them, `!` re-includes, a matched
 * directory takes its contents with it).
 */
import { readFile } from "node:fs/promises";
import dockerignore from "@balena/dockerignore";
import { SourceError, UsageError, errnoCode } from "../errors.js";
import { displayPath, type TarEntry } from "./entry.js";

/**
 * The matcher turns a pattern into a regular expression: it translates `*`, `?` and `\\`, escapes `.` and
 * `$`, and copies every other character (so `[a-z]` stays a class). Docker matches with Go's
 * `filepath.Match`, where `( ) + | { } ^` outside a class are plain characters; escaped here, they stay
 * plain: `c++` names a directory instead of making an expression that does not compile.
 */
function escapeRegExpOnly(pattern: string): string {
  let out = "";
  let inClass = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string;
    if (c === "\\") {
      out += pattern.slice(i, i + 2);
      i++;
    } else if (inClass) {
      if (c === "]") inClass = false;
      out += c;
    } else if (c === "[") {
      inClass = true;
      // `[^a]` negates in Go as in a regular expression: skip the `^` so it is not escaped.
      if (pattern[i + 1] === "^") {
        out += "[^";
        i++;
        continue;
      }
      out += c;
    } else {
      out += "()+|{}^".includes(c) ? `\\${c}` : c;
    }
  }
  return out;
}

/** A matcher for `lines`, case-sensitive as Docker's (the package ignores case unless told not to). */
function matcherFor(lines: readonly string[]): ReturnType<typeof dockerignore.default> {
  // The package is CommonJS; under Node ESM its function is the `default` member.
  return dockerignore.default({ ignorecase: false }).add(lines.map(escapeRegExpOnly));
}

/**
 * Checks each pattern now: the matcher compiles a pattern only when it first matches a path, so a bad
 * one (`[`, an unclosed class) would otherwise fail in the middle of the walk.
 */
function checkPatterns(lines: readonly string[]): void {
  for (const line of lines) {
    try {
      matcherFor([line]).ignores("x");
    } catch (error) {
      throw new UsageError(
        `--exclude pattern ${JSON.stringify(line)} is not valid: ${(error as Error).message}`,
        {
          cause: error,
          hint: "Close every [ with ], or escape a literal [ as \\[ (the syntax is .dockerignore's).",
        },
      );
    }
  }
}

export class PathFilter {
  private readonly matcher: ReturnType<typeof dockerignore.default>;
  private readonly exceptions: readonly string[];

  /** @param patterns dockerignore lines; blank lines and `#` comments are ignored. */
  constructor(readonly patterns: readonly string[]) {
    const lines = patterns
      .map((p) => p.trim())
      .filter((p) => p !== "" && !p.startsWith("#"))
      .map((p) => p.replace(/^(!?)\/+/, "$1"));
    checkPatterns(lines);
    this.matcher = matcherFor(lines);
    this.exceptions = lines.filter((p) => p.startsWith("!")).map((p) => p.slice(1));
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
