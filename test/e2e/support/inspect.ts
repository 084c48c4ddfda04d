/**
 * Listing a tree entry by entry with `fixtures/c/inspect.c`, on the host and inside a container, so a
 * test can compare what mkbase was given with what the engine runs. The format of a line is described
 * at the top of inspect.c; {@link parseListingLine} reads one back.
 */
import { rmSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import { repositoryRoot, runChecked } from "./cli.js";
import { dockerRun } from "./docker.js";

/** Where the inspector's directory is mounted inside containers (read-only). */
export const inspectorMountPoint = "/.inspect";

/**
 * Paths that `docker run` puts into every container, whatever the image holds; {@link inspectImage}
 * always leaves them (and what is under them) out. Pass the same list to {@link inspectHostTree} when
 * comparing a tree on the host with an image built from it.
 *
 * - `/proc`, `/sys`, `/dev`: mounted at start (procfs, sysfs, a tmpfs with default device nodes, `pts`,
 *   `shm`, `mqueue`), so whatever the image has there is hidden. The engine's init layer also creates
 *   them when the image lacks them.
 * - `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`: bind-mounted from the container's own files,
 *   created empty by the init layer when absent.
 * - `/etc/mtab`: the init layer's symlink to `/proc/mounts`, made only when the image has none, so an
 *   image's own `/etc/mtab` is not checked either.
 * - `/.dockerenv`: an empty marker file the init layer creates.
 * - `/.inspect`: the inspector's own mount.
 *
 * Two more effects are not in this list. The root directory of a container belongs to the container's
 * writable layer, not to the image, which is why the inspector prints no line for ROOT itself. And when
 * an image has no `/etc`, the init layer creates it as `0755 0:0` to hold the files above: give test
 * trees an `/etc` (the fixture trees have one) or pass `"/etc"` in `excludes` for such an image.
 */
export const containerRuntimePaths: readonly string[] = [
  "/.dockerenv",
  inspectorMountPoint,
  "/dev",
  "/etc/hostname",
  "/etc/hosts",
  "/etc/mtab",
  "/etc/resolv.conf",
  "/proc",
  "/sys",
];

let inspectorPath: Promise<string> | undefined;

/**
 * Compiles `fixtures/c/inspect.c` with `gcc -static -O2` (static, so it runs in any image, even one with
 * no libc) once per process into its own temp dir, and returns the binary's path. The directory holds
 * nothing else, so it can be mounted into containers as is; it is removed when the process exits.
 */
export function buildInspector(): Promise<string> {
  inspectorPath ??= compileInspector().catch((error: unknown) => {
    inspectorPath = undefined;
    throw error;
  });
  return inspectorPath;
}

async function compileInspector(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "mkbase-inspect-"));
  process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
  const binary = join(dir, "inspect");
  await runChecked("gcc", [
    "-static",
    "-O2",
    "-Wall",
    "-o",
    binary,
    join(repositoryRoot, "fixtures", "c", "inspect.c"),
  ]);
  return binary;
}

function excludeFlags(excludes: readonly string[]): string[] {
  return excludes.flatMap((path) => ["--exclude", path]);
}

function toLines(stdout: string): string[] {
  return stdout.split("\n").filter((line) => line !== "");
}

/** Lists the tree at `root` on the host; `excludes` are listing paths (`/proc`), each with its subtree. */
export async function inspectHostTree(root: string, excludes: readonly string[] = []): Promise<string[]> {
  const inspector = await buildInspector();
  return toLines(await runChecked(inspector, [...excludeFlags(excludes), root]));
}

/**
 * Lists the tree at `root` inside a container of `image` (which may be empty: the inspector is static and
 * mounted in), leaving out {@link containerRuntimePaths} and `excludes`. With a `root` other than `/`,
 * listing paths are relative to it and excludes must be written that way too. Throws with the
 * container's output if the inspector fails.
 */
export async function inspectImage(
  image: string,
  root = "/",
  excludes: readonly string[] = [],
): Promise<string[]> {
  const inspector = await buildInspector();
  const runtimeExcludes = containerRuntimePaths.flatMap((path) => {
    const relative = posix.relative(posix.resolve("/", root), path);
    return relative.startsWith("..") || relative === "" ? [] : [`/${relative}`];
  });
  const result = await dockerRun(image, [...excludeFlags([...runtimeExcludes, ...excludes]), root], {
    entrypoint: posix.join(inspectorMountPoint, "inspect"),
    dockerArgs: ["--volume", `${posix.dirname(inspector)}:${inspectorMountPoint}:ro`],
  });
  if (result.code !== 0) {
    throw new Error(`inspecting ${root} in ${image} failed: exit ${String(result.code)}\n${result.stderr}`);
  }
  return toLines(result.stdout);
}

/** One line of a listing, read back. */
export interface ListingEntry {
  /** Escaped listing path, as printed (`/names/caf\xff`). */
  path: string;
  type: "file" | "dir" | "symlink" | "char" | "block" | "fifo" | "socket";
  /** Permission bits including setuid/setgid/sticky. */
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  /** Escaped symlink target. */
  target?: string;
  /** `major:minor` of a device. */
  dev?: string;
  /** FNV-1a 64 of a regular file's bytes, 16 hex digits. */
  fnv?: string;
  /** Hex of the `security.capability` xattr. */
  cap?: string;
  /** Escaped first path with the same inode, on entries with more than one link. */
  hardlink?: string;
}

const entryTypes = new Set<string>(["file", "dir", "symlink", "char", "block", "fifo", "socket"]);

/** Reads a listing line back into its fields; throws on a line the inspector cannot have printed. */
export function parseListingLine(line: string): ListingEntry {
  const [path, type, ...fields] = line.split(" ");
  if (path === undefined || type === undefined || !entryTypes.has(type)) {
    throw new Error(`not a listing line: ${JSON.stringify(line)}`);
  }
  const values = new Map<string, string>();
  for (const field of fields) {
    const equals = field.indexOf("=");
    if (equals <= 0) throw new Error(`not a listing line: ${JSON.stringify(line)}`);
    values.set(field.slice(0, equals), field.slice(equals + 1));
  }
  const number = (name: string): number | undefined => {
    const value = values.get(name);
    return value === undefined ? undefined : Number(value);
  };
  const mode = values.get("mode");
  const uid = number("uid");
  const gid = number("gid");
  if (mode === undefined || uid === undefined || gid === undefined) {
    throw new Error(`listing line without mode, uid or gid: ${JSON.stringify(line)}`);
  }
  const entry: ListingEntry = { path, type: type as ListingEntry["type"], mode: parseInt(mode, 8), uid, gid };
  const size = number("size");
  if (size !== undefined) entry.size = size;
  for (const name of ["target", "dev", "fnv", "cap", "hardlink"] as const) {
    const value = values.get(name);
    if (value !== undefined) entry[name] = value;
  }
  return entry;
}

/** Parses a whole listing into a map keyed by escaped listing path. */
export function listingByPath(lines: readonly string[]): Map<string, ListingEntry> {
  return new Map(
    lines.map((line) => {
      const entry = parseListingLine(line);
      return [entry.path, entry];
    }),
  );
}

/**
 * A raw path as the inspector prints it: bytes below 0x21, at or above 0x7f, and the backslash become
 * `\xHH`. `escapeListingPath(Buffer.from([0x61, 0xff]))` is `a\xff`.
 */
export function escapeListingPath(path: Buffer | string): string {
  const bytes = typeof path === "string" ? Buffer.from(path, "utf8") : path;
  let text = "";
  for (const byte of bytes) {
    text +=
      byte < 0x21 || byte >= 0x7f || byte === 0x5c
        ? `\\x${byte.toString(16).padStart(2, "0")}`
        : String.fromCharCode(byte);
  }
  return text;
}

/** FNV-1a 64 of `data` as the inspector prints it (16 hex digits), to predict a file's `fnv`. */
export function fnv1a64(data: Uint8Array): string {
  // The 64-bit state as two 32-bit halves (BigInt is ~50x slower on multi-megabyte files). The prime
  // is 2^40 + 0x1b3, so hash * prime = hash * 0x1b3 + (low << 40), all taken mod 2^64.
  let high = 0xcbf29ce4;
  let low = 0x84222325;
  for (const byte of data) {
    low = (low ^ byte) >>> 0;
    const lowProduct = low * 0x1b3; // < 2^41: exact in a double
    const carry = Math.floor(lowProduct / 0x1_0000_0000);
    high = (Math.imul(high, 0x1b3) + carry + (low << 8)) >>> 0;
    low = lowProduct >>> 0;
  }
  return high.toString(16).padStart(8, "0") + low.toString(16).padStart(8, "0");
}

/**
 * A diff of two listings for assertion messages, empty when they are equal. Lines are matched by path:
 * `- line` is only in `expected`, `+ line` only in `actual`, and a changed entry shows both lines. At
 * most `maxLines` lines are shown, then a count of the rest.
 */
export function diffListings(expected: readonly string[], actual: readonly string[], maxLines = 60): string {
  const pathOf = (line: string): string => line.split(" ", 1)[0] ?? line;
  const expectedByPath = new Map(expected.map((line) => [pathOf(line), line]));
  const actualByPath = new Map(actual.map((line) => [pathOf(line), line]));
  const out: string[] = [];
  const shown = new Set<string>();
  // Walk both in their own order, merged: each path is reported once, where it first appears.
  const merged = mergeInOrder(expected.map(pathOf), actual.map(pathOf));
  for (const path of merged) {
    if (shown.has(path)) continue;
    shown.add(path);
    const before = expectedByPath.get(path);
    const after = actualByPath.get(path);
    if (before === after) continue;
    if (before !== undefined) out.push(`- ${before}`);
    if (after !== undefined) out.push(`+ ${after}`);
  }
  if (out.length === 0) {
    const length = Math.max(expected.length, actual.length);
    for (let i = 0; i < length; i++) {
      if (expected[i] !== actual[i]) {
        return `same entries, but in another order or repeated; line ${i + 1} is\n- ${String(expected[i])}\n+ ${String(actual[i])}`;
      }
    }
    return "";
  }
  const hidden = out.length - maxLines;
  return hidden > 0 ? [...out.slice(0, maxLines), `… and ${hidden} more lines`].join("\n") : out.join("\n");
}

/**
 * Both sequences in one, each in its own order: an item only in `b` comes just before the next item the
 * two share, so an added entry shows up next to its neighbours.
 */
function mergeInOrder(a: readonly string[], b: readonly string[]): string[] {
  const inA = new Set(a);
  const inB = new Set(b);
  const merged: string[] = [];
  let j = 0;
  for (const item of a) {
    if (inB.has(item)) {
      for (; j < b.length && b[j] !== item; j++) {
        const onlyInB = b[j] as string;
        if (!inA.has(onlyInB)) merged.push(onlyInB);
      }
      j++;
    }
    merged.push(item);
  }
  merged.push(...b.slice(j).filter((item) => !inA.has(item)));
  return merged;
}
