/**
 * A streaming tar reader. It turns an archive (ustar, GNU or PAX, as written by GNU tar, bsdtar, Go,
 * Python and the like) into {@link TarEntry} values without extracting anything and without holding a
 * file's content in memory.
 *
 * It is our own because tar-stream's extract and node-tar decode PAX values and names as UTF-8 strings:
 * that corrupts binary `security.capability` xattrs and names that are not valid UTF-8. Here every name
 * and every PAX value stays a Buffer from the input bytes to the entry.
 */
import { InterruptedError, SourceError, throwIfAborted } from "../errors.js";
import { HOST_ONLY_XATTRS, displayPath, sparseFileWarning, type EntryType, type TarEntry } from "./entry.js";

const BLOCK = 512;
const EMPTY = Buffer.alloc(0);
const ROOT = Buffer.from(".");

/**
 * PAX records and GNU long names are read into memory; real ones are a few kilobytes (an xattr value is
 * at most 64 KiB on Linux). The limit keeps a corrupt size field from allocating gigabytes. It holds for
 * all the extended headers before one entry together, and for all the global ones: a run of headers
 * each under it would otherwise add up without bound, as would an old GNU sparse map's extension blocks.
 */
const MAX_METADATA_SIZE = 16 * 1024 * 1024;

/** A header field: where it starts and ends in the 512-byte block. */
const FIELD = {
  name: [0, 100],
  mode: [100, 108],
  uid: [108, 116],
  gid: [116, 124],
  size: [124, 136],
  mtime: [136, 148],
  checksum: [148, 156],
  linkname: [157, 257],
  magic: [257, 263],
  version: [263, 265],
  devmajor: [329, 337],
  devminor: [337, 345],
  prefix: [345, 500],
  /** star writes a shorter prefix followed by atime and ctime, and marks it with `tar\0` at 508. */
  starPrefix: [345, 476],
  starMagic: [508, 512],
} as const satisfies Record<string, readonly [number, number]>;

const TYPEFLAG_OFFSET = 156;

/**
 * Reads a tar archive from `chunks` (already decompressed) and yields its entries in archive order.
 *
 * A file's content is `{ kind: "stream" }` yielding exactly `size` bytes as slices of the input chunks.
 * Read it before asking for the next entry: content is only available while its entry is current, and
 * whatever was not read is skipped when the next entry is requested.
 *
 * After the end-of-archive marker the input is read to its end, so that a decompressor or a digest over
 * the input sees every byte and can report a truncated or altered stream.
 *
 * Paths and link names are raw bytes with leading `./` and trailing `/` removed; they are not checked
 * for safety here (see {@link ArchiveEntryChecker}).
 *
 * A GNU sparse file (`tar -S`, in any of GNU tar's four formats) becomes a regular file of its real
 * size: its holes read as zeros, as when GNU tar or Go's archive/tar (`docker import`) extract it. A
 * large one that is mostly holes is reported to `onWarning`. A GNU volume label (`tar -V`) is skipped.
 * The directories of a GNU incremental dump (`tar -g`) are directories, as GNU tar extracts them without
 * `-g`; the entries their lists mark as not dumped (a dump above level 0 leaves out what did not change)
 * are reported to `onWarning` once, at the end.
 *
 * @throws SourceError for a truncated or corrupt archive, an input that is not a tar archive, and
 *   unknown entry types.
 */
export async function* readTar(
  chunks: AsyncIterable<Buffer>,
  signal: AbortSignal,
  onWarning?: (message: string) => void,
): AsyncGenerator<TarEntry> {
  const input = new TarInput(chunks[Symbol.asyncIterator]());
  const globals = new Map<string, Buffer>();
  /** Bytes of global PAX headers read so far. */
  let globalsSize = 0;
  let pending = emptyPending();
  let headers = 0;
  /** Entries that the directories of a GNU incremental dump list as not in the archive. */
  const notDumped: NotDumped = { count: 0, first: undefined };
  try {
    while (true) {
      throwIfAborted(signal);
      const headerOffset = input.offset;
      const block = await input.readBlock(
        headers === 0 ? () => notTarArchive("it is shorter than one tar header") : undefined,
      );
      if (block === undefined) {
        if (headers === 0) throw notTarArchive("the input is empty");
        throw truncated("it ends without the end-of-archive marker");
      }
      if (isZeroBlock(block)) {
        if (pending.started) throw truncated("an extended header is not followed by an entry");
        const next = await input.readBlock();
        // Zeros before anything else and data after them are no tar archive: an ext4 or ISO 9660 image
        // starts that way, and GNU tar and the engine read it as an empty archive without a word.
        if (headers === 0 && ((next !== undefined && !isZeroBlock(next)) || !(await input.drainZeros()))) {
          throw new SourceError(
            "not a tar archive: it starts with zero bytes and holds other data after them (a disk or file system image?)",
            {
              hint: "give a tar archive; to build from a file system image, mount it (mount -o loop,ro IMAGE DIR) and use `mkbase dir DIR`",
            },
          );
        }
        if (next !== undefined && !isZeroBlock(next)) {
          throw new SourceError(
            `corrupt tar archive: a zero block at byte ${headerOffset} is followed by more data`,
            {
              hint: "the archive was probably concatenated from several archives; recreate it as one archive",
            },
          );
        }
        if (notDumped.count > 0) onWarning?.(incrementalDumpWarning(notDumped));
        await input.drain();
        return;
      }
      if (!checksumMatches(block)) {
        if (headers === 0) throw notTarArchive("its first header has no valid checksum");
        throw new SourceError(
          `corrupt tar archive: the header at byte ${headerOffset} has a wrong checksum`,
          {
            hint: "the file is damaged; download or create it again",
          },
        );
      }
      headers++;
      const header = parseHeader(block, headerOffset);
      const flag = header.typeflag;
      if (flag === "S") pending.oldGnuSparse = await readOldGnuSparseMap(block, input, pending.size);

      if (flag === "x" || flag === "g" || flag === "L" || flag === "K") {
        const before = flag === "g" ? globalsSize : pending.size;
        if (header.size > MAX_METADATA_SIZE - before) {
          throw new SourceError(
            `corrupt tar archive: the extended header at byte ${headerOffset} claims ${header.size} bytes` +
              (before === 0
                ? ""
                : `, after ${before} bytes of ${flag === "g" ? "global" : "other"} extended headers`),
            { hint: "the file is damaged; download or create it again" },
          );
        }
        if (flag === "g") globalsSize += header.size;
        else pending.size += header.size;
        const data = await input.readBytes(header.size);
        await input.skip(padding(header.size));
        // A global record stands alone (git archive starts with one); the others describe the next entry.
        if (flag !== "g") pending.started = true;
        if (flag === "x") {
          for (const [key, value] of parsePaxRecords(data, headerOffset)) pending.pax.set(key, value);
        } else if (flag === "g") {
          for (const [key, value] of parsePaxRecords(data, headerOffset)) {
            if (value.length === 0) globals.delete(key);
            else globals.set(key, value);
          }
        } else if (flag === "L") {
          pending.longName = untilNul(data, 0, data.length);
        } else {
          pending.longLink = untilNul(data, 0, data.length);
        }
        continue;
      }

      // A GNU volume label (tar -V) names the archive, not a file: GNU tar and bsdtar extract nothing for it.
      if (flag === "V") {
        pending = emptyPending();
        await input.skip(header.size + padding(header.size));
        continue;
      }

      const { entry, dataSize, sparse, where } = buildEntry(header, pending, globals);
      const dumpdir = entry.type === "directory" ? pending.pax.get("GNU.dumpdir") : undefined;
      if (dumpdir !== undefined) new DumpdirScan(entry.path, notDumped).feed(dumpdir);
      pending = emptyPending();
      if (entry.type === "file" && entry.size > 0) {
        const layout = sparse === undefined ? undefined : await sparseLayout(input, sparse, dataSize, where);
        const stored = layout?.stored ?? dataSize;
        const content = new EntryContentStream(input, stored, signal);
        if (layout !== undefined) {
          const warning = sparseFileWarning(entry.path, layout.realSize, stored);
          if (warning !== undefined) onWarning?.(warning);
        }
        const chunks = layout === undefined ? content : expandSparse(content, layout, signal);
        yield { ...entry, content: { kind: "stream", chunks } };
        await content.finish();
        // The content ends at a block boundary; a sparse map read from the data filled whole blocks, so
        // the padding left is that of the stored bytes.
        await input.skip(padding(stored));
      } else {
        yield entry;
        if (flag === "D") {
          // The data of an incremental dump's directory is its list of entries.
          const scan = new DumpdirScan(entry.path, notDumped);
          for (let remaining = dataSize; remaining > 0;) {
            const chunk = await input.take(remaining);
            remaining -= chunk.length;
            scan.feed(chunk);
          }
          await input.skip(padding(dataSize));
        } else if (entry.type !== "directory" && dataSize > 0) {
          // GNU tar skips the data of every non-directory entry by its size field (a pax hardlink may
          // carry the file's data); a directory's size is informational.
          await input.skip(dataSize + padding(dataSize));
        }
      }
    }
  } finally {
    await input.close();
  }
}

interface PendingMetadata {
  /** An extended header has been read and an entry header must follow. */
  started: boolean;
  /** Bytes of the extended headers read for the entry, held against {@link MAX_METADATA_SIZE}. */
  size: number;
  pax: Map<string, Buffer>;
  longName: Buffer | undefined;
  longLink: Buffer | undefined;
  /** The map of an old GNU sparse header (type `S`), read from it and its extension blocks. */
  oldGnuSparse: Sparse | undefined;
}

function emptyPending(): PendingMetadata {
  return {
    started: false,
    size: 0,
    pax: new Map(),
    longName: undefined,
    longLink: undefined,
    oldGnuSparse: undefined,
  };
}

interface RawHeader {
  offset: number;
  name: Buffer;
  linkname: Buffer;
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  devmajor: number;
  devminor: number;
}

function parseHeader(block: Buffer, offset: number): RawHeader {
  const numeric = (field: readonly [number, number], what: string): number =>
    parseNumeric(block, field[0], field[1], what, offset);
  const magic = block.toString("latin1", FIELD.magic[0], FIELD.magic[1]);
  let name = untilNul(block, FIELD.name[0], FIELD.name[1]);
  // Only POSIX ustar has a prefix field; GNU's "ustar  " format keeps atime/ctime/sparse data there.
  if (magic === "ustar\0") {
    const star = block.toString("latin1", FIELD.starMagic[0], FIELD.starMagic[1]) === "tar\0";
    const field = star ? FIELD.starPrefix : FIELD.prefix;
    const prefix = untilNul(block, field[0], field[1]);
    if (prefix.length > 0) name = Buffer.concat([prefix, Buffer.from("/"), name]);
  }
  return {
    offset,
    name,
    linkname: untilNul(block, FIELD.linkname[0], FIELD.linkname[1]),
    typeflag: String.fromCharCode(block[TYPEFLAG_OFFSET] ?? 0),
    mode: numeric(FIELD.mode, "mode"),
    uid: numeric(FIELD.uid, "uid"),
    gid: numeric(FIELD.gid, "gid"),
    size: numeric(FIELD.size, "size"),
    mtime: numeric(FIELD.mtime, "mtime"),
    devmajor: numeric(FIELD.devmajor, "devmajor"),
    devminor: numeric(FIELD.devminor, "devminor"),
  };
}

const TYPES: Readonly<Record<string, EntryType>> = {
  "0": "file",
  "\0": "file",
  "7": "file",
  // An old GNU sparse file; its map is read with the header.
  S: "file",
  "1": "hardlink",
  "2": "symlink",
  "3": "char",
  "4": "block",
  "5": "directory",
  "6": "fifo",
  // A directory of a GNU incremental dump (tar -g); its data lists the directory's entries.
  D: "directory",
};

/** The entries a GNU incremental dump leaves out: how many, and the path of the first. */
interface NotDumped {
  count: number;
  first: Buffer | undefined;
}

/**
 * Reads the list of a GNU incremental dump's directory (`tar -g`, `--listed-incremental`): the data of a
 * `D` entry, or the PAX `GNU.dumpdir` of a directory in the POSIX format. It holds one record per entry
 * of the directory, a letter and the name ending in a NUL, and an empty record at the end. `N` marks an
 * entry that is not in the archive: unchanged since the dump of the level before, or excluded.
 * Extracted without `-g`, GNU tar and bsdtar make the directory and ignore the list; the entries marked
 * `N` are counted here, since an image made from a dump above level 0 lacks them.
 */
class DumpdirScan {
  private atRecord = true;
  private ended = false;
  /** The name of the first `N` record while it is read. */
  private name: Buffer[] | undefined;

  constructor(
    private readonly directory: Buffer,
    private readonly notDumped: NotDumped,
  ) {}

  /** The next bytes of the list. */
  feed(chunk: Buffer): void {
    let i = 0;
    while (!this.ended && i < chunk.length) {
      if (this.atRecord) {
        const letter = chunk[i++];
        if (letter === 0) this.ended = true;
        else if (letter === 0x4e) {
          this.notDumped.count++;
          if (this.notDumped.first === undefined && this.name === undefined) this.name = [];
        }
        this.atRecord = false;
        continue;
      }
      const nul = chunk.indexOf(0, i);
      const end = nul < 0 ? chunk.length : nul;
      this.name?.push(Buffer.from(chunk.subarray(i, end)));
      i = end;
      if (nul >= 0) {
        i++;
        this.atRecord = true;
        if (this.name !== undefined) {
          const parent = this.directory.equals(ROOT) ? [] : [this.directory, Buffer.from("/")];
          this.notDumped.first = Buffer.concat([...parent, ...this.name]);
          this.name = undefined;
        }
      }
    }
  }
}

function incrementalDumpWarning(notDumped: NotDumped): string {
  const first = displayPath(notDumped.first ?? Buffer.alloc(0));
  return (
    `the archive is a GNU incremental dump (tar -g) that leaves out ${notDumped.count} ` +
    `entr${notDumped.count === 1 ? "y" : "ies"} of its directories (first: "${first}"), unchanged since ` +
    `an earlier dump or excluded: the image lacks them; for a whole tree, give a dump of level 0 or a plain archive`
  );
}

/**
 * Applies the header, then GNU long names, then global PAX records, then per-entry PAX records. For a
 * sparse file, `dataSize` is what the archive stores and the entry's size is the file's real size.
 */
function buildEntry(
  header: RawHeader,
  pending: PendingMetadata,
  globals: ReadonlyMap<string, Buffer>,
): { entry: TarEntry; dataSize: number; sparse: Sparse | undefined; where: (what: string) => string } {
  const pax = new Map(globals);
  for (const [key, value] of pending.pax) {
    // An empty value in an `x` record cancels a global record and the header field is used again.
    if (value.length === 0) pax.delete(key);
    else pax.set(key, value);
  }
  // The PAX sparse formats keep the real name apart, and put a made-up one in the header.
  const rawName = pax.get("GNU.sparse.name") ?? pax.get("path") ?? pending.longName ?? header.name;
  const rawLink = pax.get("linkpath") ?? pending.longLink ?? header.linkname;

  let type = TYPES[header.typeflag];
  if (header.typeflag === "M") {
    throw new SourceError(
      `"${displayPath(stripPath(rawName))}" continues a file from the previous volume of a multi-volume archive (tar -M)`,
      {
        path: displayPath(stripPath(rawName)),
        hint: "extract all the volumes (tar -x -M -f VOL1 -f VOL2 …) and use `mkbase dir`, or recreate the archive without -M: mkbase reads a whole archive, not one volume",
      },
    );
  }
  if (type === undefined) {
    const flag = header.typeflag.charCodeAt(0);
    const shownFlag = flag >= 0x21 && flag < 0x7f ? `'${header.typeflag}'` : `byte ${flag}`;
    throw new SourceError(
      `"${displayPath(stripPath(rawName))}" has the entry type ${shownFlag}, which mkbase does not support`,
      {
        path: displayPath(stripPath(rawName)),
        hint: "recreate the archive with only files, directories, links, devices and FIFOs",
      },
    );
  }
  // Old (pre-POSIX) archivers mark directories only by a trailing slash on a regular-file entry.
  if ((header.typeflag === "0" || header.typeflag === "\0") && rawName[rawName.length - 1] === 0x2f) {
    type = "directory";
  }

  const path = stripPath(rawName);
  const where = (what: string): string =>
    `${what} of "${displayPath(path)}" (header at byte ${header.offset})`;
  const dataSize = paxInteger(pax, "size", where) ?? header.size;
  const sparse = type === "file" ? (pending.oldGnuSparse ?? paxSparse(pax, where)) : undefined;
  const size = sparse?.realSize ?? dataSize;
  const entry: {
    -readonly [K in keyof TarEntry]: TarEntry[K];
  } = {
    path,
    type,
    mode: header.mode & 0o7777,
    uid: ownerId(paxInteger(pax, "uid", where) ?? header.uid, "uid", where),
    gid: ownerId(paxInteger(pax, "gid", where) ?? header.gid, "gid", where),
    mtime: paxMtime(pax, where) ?? header.mtime,
    size: type === "file" ? size : 0,
  };
  if (type === "symlink" || type === "hardlink") {
    entry.linkname = type === "hardlink" ? stripPath(rawLink) : Buffer.from(rawLink);
  }
  if (type === "char" || type === "block") {
    entry.devmajor = paxInteger(pax, "SCHILY.devmajor", where) ?? header.devmajor;
    entry.devminor = paxInteger(pax, "SCHILY.devminor", where) ?? header.devminor;
  }
  const xattrs = paxXattrs(pax, where);
  if (xattrs.size > 0) entry.xattrs = xattrs;
  // The data blocks follow the PAX size when there is one.
  return { entry, dataSize, sparse, where };
}

const MAX_OWNER_ID = 0xffff_ffff;

/**
 * A uid or gid, which Linux keeps in 32 bits. GNU tar refuses others; packed, a negative one would be
 * written as it is and one above 2^32 would lose its high bits in the engine (2^40 + 5 becomes 5).
 */
function ownerId(value: number, what: "uid" | "gid", where: (what: string) => string): number {
  if (value < 0 || value > MAX_OWNER_ID) {
    throw corruptHeader(`the ${what} ${value} is out of range (0 to ${MAX_OWNER_ID})`, where);
  }
  return value;
}

/** Removes leading `./` and trailing `/`; the result is a copy that does not pin an input chunk. */
function stripPath(raw: Buffer): Buffer {
  let start = 0;
  let end = raw.length;
  while (end > 1 && raw[end - 1] === 0x2f) end--;
  while (end - start >= 2 && raw[start] === 0x2e && raw[start + 1] === 0x2f) {
    start += 2;
    while (start < end && raw[start] === 0x2f) start++;
  }
  if (start === end) return Buffer.from(".");
  return Buffer.from(raw.subarray(start, end));
}

/** A run of bytes a sparse file's entry stores, at `offset` in the file; the rest of the file is holes. */
interface SparseRegion {
  readonly offset: number;
  readonly length: number;
}

/** A sparse file's real size and stored regions; `regions` is undefined when they head its data (1.0). */
interface Sparse {
  readonly realSize: number;
  readonly regions: readonly SparseRegion[] | undefined;
}

/**
 * Where an old GNU sparse header (type `S`) keeps its map: four regions of two 12-byte numbers from byte
 * 386, then a flag saying that an extension block follows, then the real size. Each extension block
 * holds 21 more regions and a flag of its own.
 */
const OLD_GNU_SPARSE = { regions: 386, slots: 4, extended: 482, realSize: [483, 495] } as const;
const OLD_GNU_SPARSE_EXTENSION = { regions: 0, slots: 21, extended: 504 } as const;

/**
 * Reads the map of an old GNU sparse header and of the extension blocks that follow it, which may take
 * up what `metadataSize` bytes of extended headers before it left of {@link MAX_METADATA_SIZE}.
 */
async function readOldGnuSparseMap(block: Buffer, input: TarInput, metadataSize: number): Promise<Sparse> {
  const headerOffset = input.offset - BLOCK;
  const regions: SparseRegion[] = [];
  const readSlots = (
    from: Buffer,
    layout: typeof OLD_GNU_SPARSE_EXTENSION | typeof OLD_GNU_SPARSE,
    at: number,
  ) => {
    for (let slot = 0; slot < layout.slots; slot++) {
      const start = layout.regions + 24 * slot;
      // An unused slot starts with a NUL; GNU tar and libarchive stop at the first one too.
      if (from[start] === 0) break;
      regions.push({
        offset: parseNumeric(from, start, start + 12, "sparse offset", at),
        length: parseNumeric(from, start + 12, start + 24, "sparse length", at),
      });
    }
    return from[layout.extended] !== 0;
  };
  let extended = readSlots(block, OLD_GNU_SPARSE, headerOffset);
  let size = metadataSize;
  while (extended) {
    size += BLOCK;
    if (size > MAX_METADATA_SIZE) {
      throw new SourceError(
        `corrupt tar archive: the map of the sparse file at byte ${headerOffset} runs past ${MAX_METADATA_SIZE} bytes`,
        { hint: "the file is damaged; download or create it again" },
      );
    }
    const at = input.offset;
    const extension = await input.readBlock();
    if (extension === undefined) throw truncated("it ends inside the map of a sparse file");
    extended = readSlots(extension, OLD_GNU_SPARSE_EXTENSION, at);
  }
  const [start, end] = OLD_GNU_SPARSE.realSize;
  return { realSize: parseNumeric(block, start, end, "sparse real size", headerOffset), regions };
}

/**
 * The sparse map of the PAX formats: 0.0 (`GNU.sparse.offset`/`numbytes` pairs, turned into a map by
 * {@link parsePaxRecords}), 0.1 (`GNU.sparse.map`) and 1.0 (the map heads the data).
 */
function paxSparse(pax: ReadonlyMap<string, Buffer>, where: (what: string) => string): Sparse | undefined {
  const major = pax.get("GNU.sparse.major")?.toString("latin1");
  const minor = pax.get("GNU.sparse.minor")?.toString("latin1");
  const map = pax.get("GNU.sparse.map");
  const requiredInteger = (key: string): number => {
    const value = paxInteger(pax, key, where);
    if (value === undefined) throw corruptHeader(`a sparse file without the PAX ${key}`, where);
    return value;
  };
  if (major === "1" && minor === "0")
    return { realSize: requiredInteger("GNU.sparse.realsize"), regions: undefined };
  if (map !== undefined && (major ?? "0") === "0") {
    const text = map.toString("latin1");
    const regions = sparseRegions(text === "" ? [] : text.split(","), where);
    const count = paxInteger(pax, "GNU.sparse.numblocks", where);
    if (count !== undefined && count !== regions.length) {
      throw corruptHeader(`the sparse map has ${regions.length} regions, not the ${count} announced`, where);
    }
    return { realSize: requiredInteger("GNU.sparse.size"), regions };
  }
  if (major !== undefined || minor !== undefined) {
    throw new SourceError(
      `${where("entry")} is a GNU sparse file of format ${major ?? "?"}.${minor ?? "?"}, which mkbase does not read`,
      {
        hint: "recreate the archive with GNU tar's default sparse format (--sparse-version=1.0) or without --sparse (-S)",
      },
    );
  }
  if ([...pax.keys()].some((key) => key.startsWith("GNU.sparse."))) {
    throw corruptHeader("a sparse file without its map", where);
  }
  return undefined;
}

/** Regions from their numbers in order: offset, length, offset, length… */
function sparseRegions(numbers: readonly string[], where: (what: string) => string): SparseRegion[] {
  if (numbers.length % 2 !== 0) throw corruptHeader("the sparse map has an offset without a length", where);
  const values = numbers.map((text) => {
    const value = decimal(text);
    if (value === undefined)
      throw corruptHeader(`the sparse map holds "${text}", which is not a valid number`, where);
    return value;
  });
  const regions: SparseRegion[] = [];
  for (let i = 0; i < values.length; i += 2)
    regions.push({ offset: values[i] ?? 0, length: values[i + 1] ?? 0 });
  return regions;
}

/**
 * Reads the map that heads the data of a format 1.0 sparse file: decimal numbers, one a line (the count
 * of regions, then offset and length of each), padded with NULs to a whole block.
 */
async function readSparseMapInData(
  input: TarInput,
  dataSize: number,
  where: (what: string) => string,
): Promise<{ regions: SparseRegion[]; size: number }> {
  const numbers: string[] = [];
  let wanted = 1;
  let partial = "";
  let size = 0;
  while (numbers.length < wanted) {
    if (size + BLOCK > Math.min(dataSize, MAX_METADATA_SIZE)) {
      throw corruptHeader("the sparse map runs past the entry's data", where);
    }
    const block = await input.readBlock();
    if (block === undefined) throw truncated("it ends inside the map of a sparse file");
    size += BLOCK;
    const lines = (partial + block.toString("latin1")).split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      if (numbers.length === wanted) break;
      numbers.push(line);
      if (numbers.length === 1) {
        const count = decimal(line);
        if (count === undefined) {
          throw corruptHeader(`the sparse map starts with "${line}", not a count of regions`, where);
        }
        wanted = 1 + 2 * count;
      }
    }
  }
  return { regions: sparseRegions(numbers.slice(1), where), size };
}

/**
 * A sparse file's regions and the bytes of them the archive stores, its map read first when it heads the
 * data (1.0), and checked: in order, inside the file, covering exactly the bytes stored.
 */
async function sparseLayout(
  input: TarInput,
  sparse: Sparse,
  dataSize: number,
  where: (what: string) => string,
): Promise<{ realSize: number; regions: readonly SparseRegion[]; stored: number }> {
  let regions = sparse.regions;
  let stored = dataSize;
  if (regions === undefined) {
    const map = await readSparseMapInData(input, dataSize, where);
    regions = map.regions;
    stored -= map.size;
  }
  const { realSize } = sparse;
  let end = 0;
  let covered = 0;
  for (const { offset, length } of regions) {
    if (offset < end || offset + length > realSize) {
      throw corruptHeader(
        `the sparse map has a region out of order or past the file's ${realSize} bytes`,
        where,
      );
    }
    end = offset + length;
    covered += length;
  }
  if (covered !== stored) {
    throw corruptHeader(`the sparse map covers ${covered} bytes, but the archive stores ${stored}`, where);
  }
  return { realSize, regions, stored };
}

/**
 * Zeros for the holes of sparse files. Shared: every reader of content chunks (the packer, hashes,
 * compressors, sockets) only reads them, as they do the slices of the input.
 */
const ZEROS = Buffer.alloc(1024 * 1024);

/** The whole content of a sparse file: `stored` (its regions, in order) with the holes between as zeros. */
async function* expandSparse(
  stored: AsyncIterable<Buffer>,
  sparse: { readonly realSize: number; readonly regions: readonly SparseRegion[] },
  signal: AbortSignal,
): AsyncGenerator<Buffer> {
  const data = stored[Symbol.asyncIterator]();
  let pending: Buffer = EMPTY;
  let position = 0;
  const zeros = function* (count: number): Generator<Buffer> {
    for (let left = count; left > 0; left -= ZEROS.length) {
      throwIfAborted(signal);
      yield ZEROS.subarray(0, Math.min(left, ZEROS.length));
    }
  };
  for (const { offset, length } of sparse.regions) {
    yield* zeros(offset - position);
    let left = length;
    while (left > 0) {
      if (pending.length === 0) {
        const next = await data.next();
        // Cannot happen: the regions were checked to cover exactly the stored bytes.
        if (next.done === true) throw new Error("a sparse file's data ended before its map");
        pending = next.value;
      }
      const part = pending.subarray(0, left);
      pending = pending.subarray(part.length);
      left -= part.length;
      yield part;
    }
    position = offset + length;
  }
  yield* zeros(sparse.realSize - position);
}

const DECIMAL = /^\d+$/;

/** `text` as a whole decimal number, or undefined when it is not one (or too large to be exact). */
function decimal(text: string): number | undefined {
  const value = Number(text);
  return DECIMAL.test(text) && Number.isSafeInteger(value) ? value : undefined;
}

function paxInteger(
  pax: ReadonlyMap<string, Buffer>,
  key: string,
  where: (what: string) => string,
): number | undefined {
  const value = pax.get(key);
  if (value === undefined) return undefined;
  const text = value.toString("latin1");
  const number = decimal(text);
  if (number === undefined) throw corruptHeader(`the PAX ${key} "${text}" is not a valid number`, where);
  return number;
}

const PAX_TIME = /^(-?)(\d+)(?:\.(\d*))?$/;

/**
 * PAX times may carry a fraction; the entry keeps whole seconds, rounded down (so -1.5 is -2), reading
 * the value as the decimal number POSIX says it is. (libarchive writes -1000.5 s as "-1001.5", seconds
 * rounded down plus a positive fraction, so a negative fractional time from bsdtar comes out a second
 * early; GNU tar writes the decimal value.)
 */
function paxMtime(pax: ReadonlyMap<string, Buffer>, where: (what: string) => string): number | undefined {
  const value = pax.get("mtime");
  if (value === undefined) return undefined;
  const text = value.toString("latin1");
  const match = PAX_TIME.exec(text);
  const whole = match === null ? NaN : Number(match[2]);
  if (match === null || !Number.isSafeInteger(whole)) {
    throw corruptHeader(`the PAX mtime "${text}" is not a valid time`, where);
  }
  if (match[1] !== "-") return whole;
  const fractional = /[1-9]/.test(match[3] ?? "");
  return -whole - (fractional ? 1 : 0);
}

const SCHILY_XATTR = "SCHILY.xattr.";
const LIBARCHIVE_XATTR = "LIBARCHIVE.xattr.";

/**
 * `SCHILY.xattr.NAME` (GNU tar, star, bsdtar) carries the value as raw bytes; `LIBARCHIVE.xattr.NAME`
 * (bsdtar) carries it in base64 with a URL-encoded name. bsdtar writes both with the same value.
 */
function paxXattrs(pax: ReadonlyMap<string, Buffer>, where: (what: string) => string): Map<string, Buffer> {
  const xattrs = new Map<string, Buffer>();
  for (const [key, value] of pax) {
    if (key.startsWith(LIBARCHIVE_XATTR)) {
      let name: string;
      try {
        name = decodeURIComponent(key.slice(LIBARCHIVE_XATTR.length));
      } catch (error) {
        throw corruptHeader(`the PAX key "${key}" is not URL-encoded`, where, error);
      }
      xattrs.set(name, Buffer.from(value.toString("latin1"), "base64"));
    }
  }
  // The raw SCHILY value wins when both are present: it needs no decoding.
  for (const [key, value] of pax) {
    if (key.startsWith(SCHILY_XATTR)) xattrs.set(key.slice(SCHILY_XATTR.length), value);
  }
  for (const name of HOST_ONLY_XATTRS) xattrs.delete(name);
  return xattrs;
}

/** Parses `LENGTH KEY=VALUE\n` records; values stay bytes (they may be binary or not UTF-8). */
function parsePaxRecords(data: Buffer, headerOffset: number): Map<string, Buffer> {
  const records = new Map<string, Buffer>();
  const corrupt = (): SourceError =>
    new SourceError(`corrupt tar archive: the PAX header at byte ${headerOffset} has a malformed record`, {
      hint: "the file is damaged; download or create it again",
    });
  const sparsePairs: string[] = [];
  let position = 0;
  while (position < data.length) {
    // Some writers pad the record block with NULs.
    if (data[position] === 0) break;
    const space = data.indexOf(0x20, position);
    if (space < 0) throw corrupt();
    const lengthText = data.toString("latin1", position, space);
    const length = Number(lengthText);
    const end = position + length;
    if (!DECIMAL.test(lengthText) || end > data.length || end <= space + 1 || data[end - 1] !== 0x0a) {
      throw corrupt();
    }
    const equals = data.indexOf(0x3d, space + 1);
    if (equals < 0 || equals >= end - 1) throw corrupt();
    const key = data.toString("utf8", space + 1, equals);
    const value = data.subarray(equals + 1, end - 1);
    if (key === "GNU.sparse.offset" || key === "GNU.sparse.numbytes")
      sparsePairs.push(value.toString("latin1"));
    else records.set(key, value);
    position = end;
  }
  // Sparse format 0.0 repeats these two keys, once per data region, in order: the same list as the
  // `GNU.sparse.map` of format 0.1.
  if (sparsePairs.length > 0) records.set("GNU.sparse.map", Buffer.from(sparsePairs.join(","), "latin1"));
  return records;
}

/**
 * Numeric header fields: octal text (optionally padded with spaces or NULs), or GNU base-256 (first byte
 * 0x80 for positive, 0xff for negative two's complement) for values that do not fit.
 */
function parseNumeric(block: Buffer, start: number, end: number, what: string, offset: number): number {
  const first = block[start] ?? 0;
  if (first & 0x80) {
    let value = 0n;
    for (let i = start; i < end; i++) {
      const byte = block[i] ?? 0;
      value = (value << 8n) | BigInt(i === start ? byte & 0x7f : byte);
    }
    // 0xff marks a negative number: the whole field is two's complement.
    if (first === 0xff) value -= 1n << BigInt(8 * (end - start) - 1);
    const number = Number(value);
    if (!Number.isSafeInteger(number)) {
      throw corruptField(what, offset, "is out of range");
    }
    return number;
  }
  let i = start;
  while (i < end && (block[i] === 0x20 || block[i] === 0)) i++;
  let value = 0;
  for (; i < end; i++) {
    const byte = block[i] ?? 0;
    if (byte === 0x20 || byte === 0) break;
    if (byte < 0x30 || byte > 0x37) throw corruptField(what, offset, "is not an octal number");
    value = value * 8 + (byte - 0x30);
  }
  // Only spaces or NULs may follow the digits.
  for (; i < end; i++) {
    if (block[i] !== 0x20 && block[i] !== 0) throw corruptField(what, offset, "is not an octal number");
  }
  return value;
}

/**
 * Whether a 512-byte header block carries a valid checksum: the sum of the header bytes with the
 * checksum field counted as spaces. Historic writers summed signed chars, so either sum is accepted.
 */
export function checksumMatches(block: Buffer): boolean {
  if (block.length < BLOCK) return false;
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const byte = i >= FIELD.checksum[0] && i < FIELD.checksum[1] ? 0x20 : (block[i] ?? 0);
    unsigned += byte;
    signed += byte >= 0x80 ? byte - 0x100 : byte;
  }
  let stored = 0;
  let digits = 0;
  let i = FIELD.checksum[0];
  while (i < FIELD.checksum[1] && block[i] === 0x20) i++;
  for (; i < FIELD.checksum[1]; i++) {
    const byte = block[i] ?? 0;
    if (byte < 0x30 || byte > 0x37) break;
    stored = stored * 8 + (byte - 0x30);
    digits++;
  }
  return digits > 0 && (stored === unsigned || stored === signed);
}

function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false;
  return true;
}

/** The bytes of a field up to its first NUL, copied so that they do not pin the input chunk. */
function untilNul(buffer: Buffer, start: number, end: number): Buffer {
  const field = buffer.subarray(start, end);
  const nul = field.indexOf(0);
  return Buffer.from(nul >= 0 ? field.subarray(0, nul) : field);
}

function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

function truncated(detail: string): SourceError {
  return new SourceError(`truncated archive: ${detail}`, {
    hint: "the file is incomplete; download or create it again",
  });
}

function notTarArchive(detail: string): SourceError {
  return new SourceError(`not a tar archive: ${detail}`, {
    hint: "give a tar archive, optionally compressed with gzip, bzip2, xz or zstd",
  });
}

function corruptField(what: string, offset: number, problem: string): SourceError {
  return new SourceError(
    `corrupt tar archive: the ${what} field of the header at byte ${offset} ${problem}`,
    {
      hint: "the file is damaged; download or create it again",
    },
  );
}

function corruptHeader(problem: string, where: (what: string) => string, cause?: unknown): SourceError {
  return new SourceError(`corrupt tar archive: ${problem} (${where("header")})`, {
    cause,
    hint: "the file is damaged; download or create it again",
  });
}

/**
 * The input as a byte cursor over the incoming chunks. Headers are sliced out of a chunk when they lie
 * within one (copied only when they straddle two); content is handed on as slices of the chunks.
 */
class TarInput {
  private chunk: Buffer = EMPTY;
  private position = 0;
  private ended = false;
  /** Bytes consumed so far, for messages. */
  offset = 0;

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  /**
   * The next 512 bytes, or `undefined` at the end of the input.
   *
   * @param partial the error for an input that ends inside the block; "truncated archive" by default.
   */
  async readBlock(partial?: () => SourceError): Promise<Buffer | undefined> {
    if (this.chunk.length - this.position >= BLOCK) return this.slice(BLOCK);
    if (!(await this.fill())) return undefined;
    if (this.chunk.length - this.position >= BLOCK) return this.slice(BLOCK);
    const parts: Buffer[] = [];
    let missing = BLOCK;
    while (missing > 0) {
      if (!(await this.fill())) throw partial?.() ?? truncated("it ends inside a header");
      const part = this.slice(Math.min(missing, this.chunk.length - this.position));
      parts.push(part);
      missing -= part.length;
    }
    return Buffer.concat(parts, BLOCK);
  }

  /** Up to `max` bytes (at least one), as a slice of the current chunk. */
  async take(max: number): Promise<Buffer> {
    if (!(await this.fill())) throw truncated("it ends inside a file's content");
    return this.slice(Math.min(max, this.chunk.length - this.position));
  }

  /** Exactly `size` bytes in a new buffer. */
  async readBytes(size: number): Promise<Buffer> {
    const data = Buffer.allocUnsafe(size);
    let filled = 0;
    while (filled < size) {
      const part = await this.take(size - filled);
      part.copy(data, filled);
      filled += part.length;
    }
    return data;
  }

  async skip(size: number): Promise<void> {
    let remaining = size;
    while (remaining > 0) {
      const part = await this.take(remaining);
      remaining -= part.length;
    }
  }

  /** Reads and discards the rest of the input. */
  async drain(): Promise<void> {
    this.offset += this.chunk.length - this.position;
    this.chunk = EMPTY;
    this.position = 0;
    while (!this.ended) {
      const result = await this.source.next();
      if (result.done) this.ended = true;
      else this.offset += result.value.length;
    }
  }

  /** Reads and discards the rest of the input; false, and the rest left unread, at a byte that is not 0. */
  async drainZeros(): Promise<boolean> {
    while (await this.fill()) {
      const part = this.slice(this.chunk.length - this.position);
      if (part.some((byte) => byte !== 0)) return false;
    }
    return true;
  }

  /** Stops the source early (the consumer went away or an error is on its way up). */
  async close(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    await this.source.return?.();
  }

  private slice(length: number): Buffer {
    const part = this.chunk.subarray(this.position, this.position + length);
    this.position += length;
    this.offset += length;
    return part;
  }

  private async fill(): Promise<boolean> {
    while (this.position >= this.chunk.length) {
      if (this.ended) return false;
      const result = await this.source.next();
      if (result.done) {
        this.ended = true;
        return false;
      }
      this.chunk = result.value;
      this.position = 0;
    }
    return true;
  }
}

/** The content of the current file entry: readable once, and only until the next entry is requested. */
class EntryContentStream implements AsyncIterable<Buffer> {
  private remaining: number;
  private started = false;
  private finished = false;

  constructor(
    private readonly input: TarInput,
    size: number,
    private readonly signal: AbortSignal,
  ) {
    this.remaining = size;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    if (this.started) throw new Error("a tar entry's content can be read only once");
    this.started = true;
    while (this.remaining > 0) {
      if (this.finished) throw new Error("a tar entry's content was read after the next entry was requested");
      if (this.signal.aborted) throw new InterruptedError("interrupted", { cause: this.signal.reason });
      const chunk = await this.input.take(this.remaining);
      this.remaining -= chunk.length;
      yield chunk;
    }
  }

  /** Skips whatever the consumer did not read. */
  async finish(): Promise<void> {
    this.finished = true;
    const remaining = this.remaining;
    this.remaining = 0;
    await this.input.skip(remaining);
  }
}

/**
 * Checks that an archive's entries are safe to turn into an image layer, in archive order, and makes
 * their paths canonical (relative, no `.` or empty components).
 *
 * Refused, with a {@link SourceError} naming the entry: `..` components; an entry below an earlier
 * symlink or non-directory (extracting it would write through the link); a non-directory at a path that
 * earlier entries lie below (extracting it would drop them, or send a later hard link through it); a
 * hard link whose target is not an earlier entry, is absolute, contains `..` or is a directory; a path
 * that appears twice; a name over 255 bytes or a symlink target over 4095, which Linux cannot hold (the
 * engine fails to unpack the layer). Absolute paths are made relative with one warning per archive. The root entry
 * (`.`) is dropped. A hard link's absolute target is refused, unless the archive's paths are absolute
 * too (`tar -P`): then it is made relative like them.
 *
 * Overlay whiteouts (`.wh.` names) pass here: the normaliser refuses them, for every source alike, once
 * `--exclude` has had its chance to leave them out.
 */
export class ArchiveEntryChecker {
  /** Canonical path (as latin1, so byte-exact) → type, for every entry seen so far. */
  private readonly seen = new Map<string, EntryType>();
  /**
   * Directories that entries lie below but that have no entry yet. GNU tar with `--no-recursion`, and
   * some other tools, list a directory after its contents, so its own entry may still come; anything
   * else at that path would replace the directory on extraction. An archive that lists parents first
   * (almost all do) leaves this empty.
   */
  private readonly implicitDirs = new Set<string>();
  private warnedAbsolute = false;

  /** @param warn called at most once, when the first absolute path is met. */
  constructor(private readonly warn: (message: string) => void) {}

  /** The entry with its canonical path, or `undefined` for the root entry. */
  check(entry: TarEntry): TarEntry | undefined {
    // Only messages show the path: decoding it for every entry cost ~19 ms on a 6,800-entry archive.
    const shown = (): string => displayPath(entry.path);
    const raw = entry.path.toString("latin1");
    const components = raw.split("/").filter((component) => component !== "" && component !== ".");
    if (components.includes("..")) {
      throw new SourceError(`unsafe entry "${shown()}" in the archive: its path contains ".."`, {
        path: shown(),
        hint: "an entry must stay inside the root; create the archive from inside the root directory (tar -C ROOT -c .)",
      });
    }
    const long = components.find((component) => component.length > NAME_MAX);
    if (long !== undefined) {
      throw new SourceError(
        `"${shown()}" has a name of ${long.length} bytes, longer than the ${NAME_MAX} that Linux allows`,
        {
          path: shown(),
          hint: 'no container could hold it: the engine fails with "file name too long" when it unpacks the layer; recreate the archive without it',
        },
      );
    }
    if (entry.type === "symlink" && (entry.linkname?.length ?? 0) > SYMLINK_MAX) {
      throw new SourceError(
        `symbolic link "${shown()}" has a target of ${entry.linkname?.length} bytes, longer than the ${SYMLINK_MAX} that Linux allows`,
        {
          path: shown(),
          hint: 'no container could hold it: the engine fails with "file name too long" when it unpacks the layer; recreate the archive without it',
        },
      );
    }
    if (components.length === 0) {
      if (entry.type === "directory") return undefined;
      throw new SourceError(`the archive's root entry "${shown()}" is a ${entry.type}, not a directory`, {
        path: shown(),
        hint: "create the archive from inside the root directory (tar -C ROOT -c .)",
      });
    }
    if (raw.startsWith("/") && !this.warnedAbsolute) {
      this.warnedAbsolute = true;
      this.warn(
        `the archive holds absolute paths (first: "${shown()}"); they were made relative to the image root`,
      );
    }

    let ancestor = "";
    for (let i = 0; i < components.length - 1; i++) {
      ancestor = i === 0 ? (components[0] ?? "") : `${ancestor}/${components[i] ?? ""}`;
      const type = this.seen.get(ancestor);
      if (type === "directory") continue;
      if (type === undefined) {
        this.implicitDirs.add(ancestor);
        continue;
      }
      const ancestorShown = displayPath(Buffer.from(ancestor, "latin1"));
      if (type === "symlink") {
        throw new SourceError(
          `"${shown()}" is below "${ancestorShown}", which is a symbolic link earlier in the archive`,
          {
            path: shown(),
            hint: "extracting it would write through the link; recreate the archive without the link or without the entries below it",
          },
        );
      }
      throw new SourceError(
        `"${shown()}" is below "${ancestorShown}", which is a ${typeName(type)}, not a directory`,
        {
          path: shown(),
          hint: "the archive does not describe a valid tree; recreate it from a directory",
        },
      );
    }

    const canonical = components.join("/");
    if (this.seen.has(canonical)) {
      throw new SourceError(`"${shown()}" appears more than once in the archive`, {
        path: shown(),
        hint: "an image layer holds each path once; recreate the archive without the duplicate (an appended archive, tar -r, repeats paths)",
      });
    }
    if (this.implicitDirs.size > 0 && this.implicitDirs.delete(canonical) && entry.type !== "directory") {
      this.refuseReplacedDirectory(entry, canonical, shown);
    }

    let linkname = entry.linkname;
    if (entry.type === "hardlink") linkname = this.checkHardlinkTarget(entry, shown);

    this.seen.set(canonical, entry.type);
    const path = canonical === raw ? entry.path : Buffer.from(canonical, "latin1");
    if (path === entry.path && linkname === entry.linkname) return entry;
    return { ...entry, path, ...(linkname === undefined ? {} : { linkname }) };
  }

  /**
   * Refuses `entry`, a non-directory at `canonical`, which earlier entries lie below. Extracted, it
   * replaces their directory: a file or device leaves them out of the image, and a symlink sends a later
   * hard link to one of them through the link.
   */
  private refuseReplacedDirectory(entry: TarEntry, canonical: string, shown: () => string): never {
    // Only this error needs the entry below: looking it up here keeps every other entry's cost flat.
    const prefix = `${canonical}/`;
    let below = prefix;
    for (const path of this.seen.keys()) {
      if (path.startsWith(prefix)) {
        below = path;
        break;
      }
    }
    const belowShown = displayPath(Buffer.from(below, "latin1"));
    throw new SourceError(
      `"${shown()}" is a ${typeName(entry.type)}, but the earlier entry "${belowShown}" is below it in the archive`,
      {
        path: shown(),
        hint:
          entry.type === "symlink"
            ? "extracting it would hide the entries below it, and a later hard link to one of them would go through the link; recreate the archive without the link or without the entries below it"
            : "extracting it would replace their directory and drop them; recreate the archive from a directory",
      },
    );
  }

  private checkHardlinkTarget(entry: TarEntry, shown: () => string): Buffer {
    const target = entry.linkname ?? Buffer.alloc(0);
    const targetShown = (): string => displayPath(target);
    const raw = target.toString("latin1");
    const components = raw.split("/").filter((component) => component !== "" && component !== ".");
    // An absolute target is the host's path unless the archive's own paths are absolute (tar -P), in
    // which case it names one of them and is made relative with them.
    const absoluteRefused = raw.startsWith("/") && !this.warnedAbsolute;
    if (absoluteRefused || components.includes("..") || components.length === 0) {
      throw new SourceError(`hard link "${shown()}" has the unsafe target "${targetShown()}"`, {
        path: shown(),
        hint: "a hard link must name an earlier entry of the archive by its relative path; recreate the archive",
      });
    }
    const canonical = components.join("/");
    const type = this.seen.get(canonical);
    if (type === undefined) {
      throw new SourceError(
        `hard link "${shown()}" points to "${targetShown()}", which is not an earlier entry of the archive`,
        {
          path: shown(),
          hint: "the link target must be archived before the link; recreate the archive with GNU tar or bsdtar",
        },
      );
    }
    if (type === "directory") {
      throw new SourceError(`hard link "${shown()}" points to the directory "${targetShown()}"`, {
        path: shown(),
        hint: "directories cannot be hard-linked; recreate the archive",
      });
    }
    return canonical === raw ? target : Buffer.from(canonical, "latin1");
  }
}

/** The longest name (path component) Linux file systems allow, in bytes. */
const NAME_MAX = 255;
/** The longest symbolic link target Linux allows, in bytes (PATH_MAX less the NUL). */
const SYMLINK_MAX = 4095;

/** An entry type as messages name it. */
function typeName(type: EntryType): string {
  switch (type) {
    case "symlink":
      return "symbolic link";
    case "hardlink":
      return "hard link";
    case "char":
      return "character device";
    case "block":
      return "block device";
    case "fifo":
      return "FIFO";
    default:
      return type;
  }
}
