/**
 * Tar header encoding: ustar headers, with a PAX extended header in front when a value does not fit.
 *
 * We own this instead of using tar-stream's packer because tar-stream writes PAX values as UTF-8 strings
 * (binary `security.capability` bytes get corrupted), clamps uid/gid, and defaults a missing mtime to
 * the current time. Every field is written explicitly here.
 */
import { isUtf8 } from "node:buffer";
import type { TarEntry } from "./entry.js";

export const BLOCK = 512;

const TYPE_FLAGS: Record<TarEntry["type"], number> = {
  file: 0x30, // '0'
  hardlink: 0x31,
  symlink: 0x32,
  char: 0x33,
  block: 0x34,
  directory: 0x35,
  fifo: 0x36,
};

const PAX_TYPE = 0x78; // 'x'
/** Name of the PAX pseudo-entry; constant so archives are reproducible. */
const PAX_NAME = Buffer.from("@PaxHeader");
const EMPTY = Buffer.alloc(0);
const SLASH = Buffer.from("/");
/** ustar's magic and version: "ustar", NUL, "00". */
const USTAR_MAGIC = Buffer.from("ustar\u000000", "latin1");
/** A block of zeros: padding and blank headers are copied from it. */
export const ZERO_BLOCK = Buffer.alloc(BLOCK);
const CHECKSUM_SPACES = Buffer.from("        ");

/** Largest values the ustar octal fields can hold (digits = field width - 1). */
const MAX_OCTAL_7 = 0o7777777;
const MAX_OCTAL_11 = 0o77777777777;

/** Bytes of padding needed after `size` content bytes to reach a block boundary. */
export function paddingFor(size: number): number {
  const rest = size % BLOCK;
  return rest === 0 ? 0 : BLOCK - rest;
}

function writeOctal(block: Buffer, offset: number, width: number, value: number): void {
  // width - 1 digits, zero-padded, then NUL: the form every reader accepts. Written digit by digit: this
  // runs seven times for every entry, and going through a string cost most of the header's time.
  block[offset + width - 1] = 0;
  let rest = value;
  for (let i = offset + width - 2; i >= offset; i--) {
    block[i] = 0x30 + (rest % 8);
    rest = Math.floor(rest / 8);
  }
}

/** Splits a path into ustar `prefix` and `name` at a `/`, or returns undefined when it cannot fit. */
function splitUstarPath(path: Buffer): { prefix: Buffer; name: Buffer } | undefined {
  if (path.length <= 100) return { prefix: EMPTY, name: path };
  if (path.length > 256) return undefined;
  // The name part must be ≤ 100 bytes and the prefix ≤ 155: pick the first slash that satisfies both.
  for (let i = Math.max(0, path.length - 101); i < path.length && i <= 155; i++) {
    if (path[i] === 0x2f && i > 0 && path.length - i - 1 <= 100 && path.length - i - 1 > 0) {
      return { prefix: path.subarray(0, i), name: path.subarray(i + 1) };
    }
  }
  return undefined;
}

/** One PAX record, `"%d %s=%s\n"`, where the decimal length counts the whole record including itself. */
function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, "latin1"), value, Buffer.from("\n")]);
  let length = body.length + 1;
  while (String(length).length + body.length !== length) length = String(length).length + body.length;
  return Buffer.concat([Buffer.from(String(length), "latin1"), body]);
}

function withRecord(pax: Map<string, Buffer> | undefined, key: string, value: Buffer): Map<string, Buffer> {
  const records = pax ?? new Map<string, Buffer>();
  records.set(key, value);
  return records;
}

/** The tar path of an entry: directories end in `/`, as GNU tar and the engine write them. */
export function tarPath(entry: TarEntry): Buffer {
  return entry.type === "directory" ? Buffer.concat([entry.path, SLASH]) : entry.path;
}

function ustarBlock(fields: {
  name: Buffer;
  prefix: Buffer;
  linkname: Buffer;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  typeflag: number;
  devmajor: number;
  devminor: number;
}): Buffer {
  // From the shared pool (a fresh zeroed allocation per entry cost a third of the header's time), zeroed by
  // a copy: fill would be one more function for V8 to optimise.
  const block = Buffer.allocUnsafe(BLOCK);
  ZERO_BLOCK.copy(block);
  // Copies bounded by the field widths; longer values travel in the PAX header instead.
  fields.name.copy(block, 0, 0, Math.min(fields.name.length, 100));
  writeOctal(block, 100, 8, fields.mode);
  writeOctal(block, 108, 8, fields.uid);
  writeOctal(block, 116, 8, fields.gid);
  writeOctal(block, 124, 12, fields.size);
  writeOctal(block, 136, 12, fields.mtime);
  block[156] = fields.typeflag;
  fields.linkname.copy(block, 157, 0, Math.min(fields.linkname.length, 100));
  USTAR_MAGIC.copy(block, 257);
  // uname/gname stay empty: owners are numeric only, so no host user database leaks into the image.
  writeOctal(block, 329, 8, fields.devmajor);
  writeOctal(block, 337, 8, fields.devminor);
  fields.prefix.copy(block, 345, 0, Math.min(fields.prefix.length, 155));
  writeChecksum(block);
  return block;
}

/** (Re)writes the checksum of a header block: the sum of its bytes, with its own field read as eight spaces. */
export function writeChecksum(block: Buffer): void {
  CHECKSUM_SPACES.copy(block, 148);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += block[i] ?? 0;
  writeOctal(block, 148, 7, sum);
  block[155] = 0x20;
}

/**
 * Encodes the header block(s) of `entry`: a PAX header (when needed) followed by the ustar header.
 * The content and its padding are the caller's job.
 */
export function encodeHeader(entry: TarEntry): Buffer {
  const path = tarPath(entry);
  const linkname = entry.linkname ?? EMPTY;
  const size = entry.type === "file" ? entry.size : 0;
  // Most entries need no PAX header: the map is made only for one that does.
  let pax: Map<string, Buffer> | undefined;
  const split = splitUstarPath(path);
  if (split === undefined) pax = withRecord(pax, "path", path);
  if (linkname.length > 100) pax = withRecord(pax, "linkpath", linkname);
  if (entry.uid > MAX_OCTAL_7 || entry.uid < 0) pax = withRecord(pax, "uid", Buffer.from(String(entry.uid)));
  if (entry.gid > MAX_OCTAL_7 || entry.gid < 0) pax = withRecord(pax, "gid", Buffer.from(String(entry.gid)));
  if (size > MAX_OCTAL_11) pax = withRecord(pax, "size", Buffer.from(String(size)));
  if (entry.mtime > MAX_OCTAL_11 || entry.mtime < 0) {
    pax = withRecord(pax, "mtime", Buffer.from(String(entry.mtime)));
  }
  if (entry.xattrs !== undefined) {
    for (const [name, value] of entry.xattrs) pax = withRecord(pax, `SCHILY.xattr.${name}`, value);
  }
  // PAX says path values are UTF-8; raw names must be flagged so GNU tar does not transcode them.
  if ((pax?.has("path") === true && !isUtf8(path)) || (pax?.has("linkpath") === true && !isUtf8(linkname))) {
    pax = withRecord(pax, "hdrcharset", Buffer.from("BINARY"));
  }

  const header = ustarBlock({
    name: split?.name ?? path,
    prefix: split?.prefix ?? EMPTY,
    linkname,
    mode: entry.mode & 0o7777,
    uid: entry.uid >= 0 && entry.uid <= MAX_OCTAL_7 ? entry.uid : 0,
    gid: entry.gid >= 0 && entry.gid <= MAX_OCTAL_7 ? entry.gid : 0,
    size: size <= MAX_OCTAL_11 ? size : 0,
    mtime: entry.mtime >= 0 && entry.mtime <= MAX_OCTAL_11 ? entry.mtime : 0,
    typeflag: TYPE_FLAGS[entry.type],
    devmajor: entry.devmajor ?? 0,
    devminor: entry.devminor ?? 0,
  });
  if (pax === undefined) return header;

  // Sorted keys: the same entry always gives the same bytes.
  const records = Buffer.concat(
    [...pax].sort(([a], [b]) => (a < b ? -1 : 1)).map(([key, value]) => paxRecord(key, value)),
  );
  const paxHeader = ustarBlock({
    name: PAX_NAME,
    prefix: EMPTY,
    linkname: EMPTY,
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: records.length,
    mtime: entry.mtime >= 0 && entry.mtime <= MAX_OCTAL_11 ? entry.mtime : 0,
    typeflag: PAX_TYPE,
    devmajor: 0,
    devminor: 0,
  });
  return Buffer.concat([paxHeader, records, Buffer.alloc(paddingFor(records.length)), header]);
}

/** The end-of-archive marker: two zero blocks. */
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);
