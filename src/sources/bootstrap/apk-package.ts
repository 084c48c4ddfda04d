/**
 * Reading and verifying Alpine packages (`.apk`) and indexes (`APKINDEX.tar.gz`) without apk: both are
 * concatenated gzip members. The first holds a tar with one `.SIGN.RSA.KEYNAME` (SHA-1) or
 * `.SIGN.RSA256.KEYNAME` entry, an RSA signature over the *compressed bytes* of the next member; in a
 * package that member is the control tar whose `.PKGINFO` carries `datahash`, the SHA-256 of the
 * compressed data member(s) that follow. Checking both links verifies every byte.
 */
import { createHash, createPublicKey, verify, type KeyObject } from "node:crypto";
import { gunzipSync, inflateRawSync } from "node:zlib";
import { ToolError } from "../../errors.js";

const FEXTRA = 4;
const FNAME = 8;
const FCOMMENT = 16;
const FHCRC = 2;

function broken(what: string): ToolError {
  return new ToolError(`${what} is not a valid Alpine package or index`, {
    hint: "The mirror served something else (an error page, a truncated file); check the --mirror URL.",
  });
}

/** Splits concatenated gzip members, returning each member's own bytes (header to trailer). */
export function splitGzipMembers(data: Buffer, what = "the download"): Buffer[] {
  const members: Buffer[] = [];
  let offset = 0;
  while (offset < data.length) {
    if (data[offset] !== 0x1f || data[offset + 1] !== 0x8b || data[offset + 2] !== 8) throw broken(what);
    const flags = data[offset + 3] ?? 0;
    let position = offset + 10;
    if (flags & FEXTRA) position += 2 + data.readUInt16LE(position);
    if (flags & FNAME) position = data.indexOf(0, position) + 1;
    if (flags & FCOMMENT) position = data.indexOf(0, position) + 1;
    if (flags & FHCRC) position += 2;
    if (position <= offset || position > data.length) throw broken(what);
    let consumed: number;
    try {
      // inflateRaw stops at the end of the deflate stream and reports how much input that took.
      const result = inflateRawSync(data.subarray(position), { info: true }) as unknown as {
        engine: { bytesWritten: number };
      };
      consumed = result.engine.bytesWritten;
    } catch (error) {
      throw new ToolError(`${what} is not a valid Alpine package or index: ${(error as Error).message}`, {
        cause: error,
      });
    }
    const end = position + consumed + 8;
    if (end > data.length) throw broken(what);
    members.push(data.subarray(offset, end));
    offset = end;
  }
  return members;
}

/**
 * The regular files of a small in-memory ustar archive, by name. Alpine's signature and control tars
 * have their end-of-archive blocks cut off, so a missing end is accepted here.
 */
export function readSmallTar(data: Buffer): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  let offset = 0;
  let longName: string | undefined;
  while (offset + 512 <= data.length) {
    const header = data.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) break;
    const field = (start: number, length: number): string =>
      header
        .subarray(start, start + length)
        .toString("latin1")
        .replace(/\0.*$/s, "");
    const size = parseInt(field(124, 12).trim() || "0", 8);
    const type = field(156, 1);
    const prefix = field(345, 155);
    const name = longName ?? (prefix === "" ? field(0, 100) : `${prefix}/${field(0, 100)}`);
    longName = undefined;
    const body = data.subarray(offset + 512, offset + 512 + size);
    if (type === "L") longName = body.toString("latin1").replace(/\0.*$/s, "");
    else if (type === "0" || type === "") files.set(name.replace(/^\.\//, ""), body);
    offset += 512 + Math.ceil(size / 512) * 512;
  }
  return files;
}

export interface SignatureCheck {
  /** The key file name the signature names, e.g. `KEYNAME-6165ee59.rsa.pub`. */
  readonly keyName: string;
}

/**
 * Verifies the signature member against the next member, with the public key of that name from `keys`.
 * @throws ToolError when there is no signature, no such key, or the signature does not match.
 */
export function verifySignedMember(
  members: readonly Buffer[],
  keys: ReadonlyMap<string, KeyObject>,
  what: string,
): SignatureCheck {
  const [signatureMember, signed] = members;
  if (signatureMember === undefined || signed === undefined) throw broken(what);
  const entries = readSmallTar(gunzipSync(signatureMember));
  const entry = [...entries].find(([name]) => name.startsWith(".SIGN.RSA"));
  if (entry === undefined) {
    throw new ToolError(`${what} is not signed`, {
      hint: "Use a mirror that serves signed Alpine packages.",
    });
  }
  const [name, signature] = entry;
  const match = /^\.SIGN\.(RSA|RSA256)\.(.+)$/.exec(name);
  const keyName = match?.[2] ?? "";
  const key = keys.get(keyName);
  if (key === undefined) {
    throw new ToolError(`${what} is signed with the key ${keyName}, which is not among the trusted keys`, {
      hint: "Put that public key into the --keys-dir directory (Alpine's keys come with the alpine-keys package), or pin the file with --apk-static-sha256.",
    });
  }
  const algorithm = match?.[1] === "RSA256" ? "sha256" : "sha1";
  if (!verify(algorithm, signed, key, signature)) {
    throw new ToolError(`${what}: the signature by ${keyName} does not match; the file was altered`, {
      hint: "Do not use this mirror until you know why; try another one.",
    });
  }
  return { keyName };
}

/** Parses PEM public keys, by file name. */
export function loadKeys(files: ReadonlyMap<string, Buffer>): Map<string, KeyObject> {
  const keys = new Map<string, KeyObject>();
  for (const [name, pem] of files) {
    try {
      keys.set(name, createPublicKey(pem));
    } catch {
      // Not a key (a README in the directory): ignored.
    }
  }
  return keys;
}

/** A verified package: its `.PKGINFO` fields and its data files. */
export interface VerifiedPackage {
  readonly info: ReadonlyMap<string, string>;
  readonly files: ReadonlyMap<string, Buffer>;
}

function parsePkgInfo(text: string): Map<string, string> {
  const info = new Map<string, string>();
  for (const line of text.split("\n")) {
    const match = /^([a-z_]+) = (.*)$/.exec(line);
    if (match !== null && !info.has(match[1] as string)) info.set(match[1] as string, match[2] as string);
  }
  return info;
}

/**
 * Verifies a package: the control member signed by a trusted key, and the data member(s) hashing to
 * the control's `datahash`.
 */
export function verifyApkPackage(
  bytes: Buffer,
  keys: ReadonlyMap<string, KeyObject>,
  what: string,
): VerifiedPackage {
  const members = splitGzipMembers(bytes, what);
  if (members.length < 3) throw broken(what);
  verifySignedMember(members, keys, what);
  return readUnverifiedPackage(members, what, true);
}

/** Reads a package whose file as a whole was checked some other way (a pinned sha256). */
export function readPinnedPackage(bytes: Buffer, what: string): VerifiedPackage {
  const members = splitGzipMembers(bytes, what);
  if (members.length < 3) throw broken(what);
  return readUnverifiedPackage(members, what, false);
}

function readUnverifiedPackage(
  members: readonly Buffer[],
  what: string,
  checkDataHash: boolean,
): VerifiedPackage {
  const control = readSmallTar(gunzipSync(members[1] as Buffer));
  const info = parsePkgInfo(control.get(".PKGINFO")?.toString("utf8") ?? "");
  const data = Buffer.concat(members.slice(2));
  if (checkDataHash) {
    const expected = info.get("datahash");
    const actual = createHash("sha256").update(data).digest("hex");
    if (expected === undefined || expected !== actual) {
      throw new ToolError(`${what}: its contents do not match the signed checksum; the file was altered`, {
        hint: "Do not use this mirror until you know why; try another one.",
      });
    }
  }
  return { info, files: readSmallTar(gunzipSync(data)) };
}

/** One package of an APKINDEX: name, version and architecture. */
export interface IndexEntry {
  readonly name: string;
  readonly version: string;
  readonly architecture: string;
}

/** The `APKINDEX` text of an index's tar (stanzas of `P:`, `V:`, `A:` lines). */
export function parseApkIndex(text: string): IndexEntry[] {
  const entries: IndexEntry[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const line of stanza.split("\n")) if (line[1] === ":") fields.set(line[0] as string, line.slice(2));
    const name = fields.get("P");
    if (name !== undefined)
      entries.push({ name, version: fields.get("V") ?? "", architecture: fields.get("A") ?? "" });
  }
  return entries;
}
