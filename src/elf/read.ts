/**
 * Reads what `mkbase scratch` needs to know about an ELF program: its class, byte order and machine (the
 * image platform), whether it needs a program interpreter and shared libraries, and where the dynamic
 * loader would look for them. Everything comes from the ELF header, the program headers and the dynamic
 * segment, because that is all the kernel and the loader use: section headers may be stripped.
 */
import { open, stat } from "node:fs/promises";
import path from "node:path";
import { SourceError, errnoCode } from "../errors.js";

/** What the ELF header and the dynamic segment say about a program or a shared library. */
export interface ElfInfo {
  readonly class: 32 | 64;
  readonly endianness: "little" | "big";
  /** `e_machine`, e.g. 62 for x86-64 or 183 for AArch64. */
  readonly machine: number;
  /** A readable name for `machine`, e.g. `x86-64`, `AArch64`, or `machine 1234` when unknown. */
  readonly machineName: string;
  /** `ET_EXEC` (fixed address) or `ET_DYN` (position-independent program or shared library). */
  readonly type: "EXEC" | "DYN";
  /** `e_flags`; on 32-bit ARM it carries the EABI version and the hard-float bit. */
  readonly flags: number;
  /** `e_entry`: 0 for most shared libraries. */
  readonly entry: number;
  /** The `PT_INTERP` path, e.g. `/lib64/ld-linux-x86-64.so.2`. */
  readonly interpreter: string | undefined;
  /** `DT_NEEDED` names in the order the loader visits them. */
  readonly needed: readonly string[];
  /** `DT_RUNPATH`, verbatim (colon-separated, may hold `$ORIGIN`). */
  readonly runpath: string | undefined;
  /** `DT_RPATH`, verbatim. The loader ignores it when `DT_RUNPATH` is present. */
  readonly rpath: string | undefined;
  readonly soname: string | undefined;
  /** `DT_FLAGS_1` (0 when absent); `DF_1_PIE` and `DF_1_NODEFLIB` live here. */
  readonly flags1: number;
  /** The file has a `PT_DYNAMIC` segment. */
  readonly hasDynamicSegment: boolean;
  /** No `PT_INTERP` and no `DT_NEEDED`: the program runs with nothing else in the image. */
  readonly isStatic: boolean;
  /**
   * Static and `ET_DYN`, marked `DF_1_PIE`: a static-PIE program (`gcc -static-pie`, Go, Rust and musl
   * toolchains), which relocates itself.
   */
  readonly isStaticPie: boolean;
  /**
   * `ET_DYN` with neither a `PT_INTERP` nor `DF_1_PIE`: a shared library. Started as a program, it jumps to
   * an entry point that is usually 0 and dies of SIGSEGV (the dynamic loader has this shape too, and alone
   * prints only its usage). A dynamic PIE names its interpreter, and linkers mark a PIE, static ones
   * included, with `DF_1_PIE`; a library that also runs as a program (glibc's `libc.so.6`) carries a
   * `PT_INTERP` for that.
   */
  readonly isSharedLibrary: boolean;
  /**
   * `Tag_CPU_arch` from the `.ARM.attributes` section of a 32-bit ARM file (10 = ARMv7, 6 = ARMv6, …),
   * when the section headers are present; undefined otherwise.
   */
  readonly armCpuArch: number | undefined;
}

/** `e_machine` values this module names. */
export const ElfMachine = {
  sparc: 2,
  i386: 3,
  m68k: 4,
  mips: 8,
  parisc: 15,
  ppc: 20,
  ppc64: 21,
  s390: 22,
  arm: 40,
  superH: 42,
  sparcv9: 43,
  ia64: 50,
  x86_64: 62,
  aarch64: 183,
  riscv: 243,
  loongarch: 258,
} as const;

const machineNames = new Map<number, string>([
  [ElfMachine.sparc, "SPARC"],
  [ElfMachine.i386, "Intel 80386"],
  [ElfMachine.m68k, "Motorola 68000"],
  [ElfMachine.mips, "MIPS"],
  [ElfMachine.parisc, "PA-RISC"],
  [ElfMachine.ppc, "PowerPC"],
  [ElfMachine.ppc64, "PowerPC64"],
  [ElfMachine.s390, "IBM S/390"],
  [ElfMachine.arm, "ARM"],
  [ElfMachine.superH, "SuperH"],
  [ElfMachine.sparcv9, "SPARC V9"],
  [ElfMachine.ia64, "IA-64"],
  [ElfMachine.x86_64, "x86-64"],
  [ElfMachine.aarch64, "AArch64"],
  [ElfMachine.riscv, "RISC-V"],
  [ElfMachine.loongarch, "LoongArch"],
]);

/** `e_flags` bit of a 32-bit ARM file built for the hard-float ABI (armhf). */
export const EF_ARM_ABI_FLOAT_HARD = 0x400;
/** `DT_FLAGS_1` bit: the object is a position-independent executable. */
export const DF_1_PIE = 0x08000000;
/** `DT_FLAGS_1` bit: do not search the default library directories for this object's dependencies. */
export const DF_1_NODEFLIB = 0x800;

const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const PT_INTERP = 3;
const SHT_ARM_ATTRIBUTES = 0x70000003;
const MAX_PROGRAM_HEADERS = 1 << 16;

const DT_NULL = 0;
const DT_NEEDED = 1;
const DT_STRTAB = 5;
const DT_STRSZ = 10;
const DT_SONAME = 14;
const DT_RPATH = 15;
const DT_RUNPATH = 29;
const DT_FLAGS_1 = 0x6ffffffb;

/** The kernel refuses a `PT_INTERP` longer than `PATH_MAX`. */
const PATH_MAX = 4096;
/** Upper bounds on what a sane file asks us to read, so a corrupt header cannot make us allocate gigabytes. */
const MAX_DYNAMIC_SEGMENT = 1 << 20;
const MAX_ARM_ATTRIBUTES = 1 << 16;
const MAX_SECTION_HEADERS = 1 << 22;
/** Enough of the start of a non-ELF file to name a `#!` interpreter or recognise text. */
const SNIFF_BYTES = 512;

/**
 * Parses an ELF file held in memory.
 *
 * @param data the whole file, or at least every part the headers point at
 * @param name how messages name the file (a path or a description)
 * @throws SourceError when `data` is not an ELF program or library, or is corrupt
 */
export function readElf(data: Buffer, name = "the input"): ElfInfo {
  const parse = parseElf(data.length, name);
  let step = parse.next();
  while (!step.done) {
    const { offset, length } = step.value;
    step = parse.next(data.subarray(offset, offset + length));
  }
  return step.value;
}

/**
 * Parses the ELF file at `file`, reading only the header, the program headers, the dynamic segment, the
 * strings it references and (for 32-bit ARM) the attributes section, so a 100 MB program costs a few reads.
 *
 * @throws SourceError when the file is missing, unreadable, not a regular file, not ELF or corrupt
 */
export async function inspectElfFile(file: string): Promise<ElfInfo> {
  let size: number;
  try {
    const stats = await stat(file);
    if (stats.isDirectory()) {
      throw new SourceError(`${file} is a directory, not a program`, {
        path: file,
        hint: "give the path of the program file itself",
      });
    }
    if (!stats.isFile()) {
      throw new SourceError(`${file} is not a regular file`, {
        path: file,
        hint: "give the path of a compiled program",
      });
    }
    size = stats.size;
  } catch (error) {
    if (error instanceof SourceError) throw error;
    throw fileAccessError(file, error);
  }

  let handle;
  try {
    handle = await open(file, "r");
  } catch (error) {
    throw fileAccessError(file, error);
  }
  try {
    const parse = parseElf(size, file);
    let step = parse.next();
    while (!step.done) {
      const { offset, length } = step.value;
      const buffer = Buffer.alloc(length);
      let filled = 0;
      // A read may return fewer bytes than asked; keep going until the range is complete or the file ends.
      while (filled < length) {
        const { bytesRead } = await handle.read(buffer, filled, length - filled, offset + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      step = parse.next(buffer.subarray(0, filled));
    }
    return step.value;
  } catch (error) {
    if (error instanceof SourceError) throw error;
    throw fileAccessError(file, error);
  } finally {
    await handle.close();
  }
}

function fileAccessError(file: string, error: unknown): SourceError {
  switch (errnoCode(error)) {
    case "ENOENT":
      return new SourceError(`${file} does not exist`, { path: file, cause: error, hint: "check the path" });
    case "EACCES":
    case "EPERM":
      return new SourceError(`${file} cannot be read: permission denied`, {
        path: file,
        cause: error,
        hint: "run mkbase as a user that can read the file",
      });
    case "EISDIR":
      return new SourceError(`${file} is a directory, not a program`, { path: file, cause: error });
    case "ENOTDIR":
      return new SourceError(`${file} does not exist: a name before a / in it is a file, not a directory`, {
        path: file,
        cause: error,
        hint: "check the path (a / after a file name asks for a directory)",
      });
    default:
      return new SourceError(`${file} could not be read`, { path: file, cause: error });
  }
}

/** A range of the file the parser needs next; the driver answers with the bytes (fewer at end of file). */
interface ReadRequest {
  readonly offset: number;
  readonly length: number;
}

/**
 * The parser is written once, as a generator that asks for byte ranges, so that an in-memory buffer and a
 * file on disk are read by the same code: the buffer driver slices, the file driver reads only those ranges.
 */
type ElfParse<T> = Generator<ReadRequest, T, Buffer>;

interface ProgramHeader {
  readonly type: number;
  readonly offset: number;
  readonly vaddr: number;
  readonly filesz: number;
}

function* parseElf(size: number, name: string): ElfParse<ElfInfo> {
  if (size === 0) {
    throw new SourceError(`${name} is empty, not a program`, {
      path: name,
      hint: "give the path of a compiled Linux program",
    });
  }
  const start = yield { offset: 0, length: Math.min(size, SNIFF_BYTES) };
  if (start.length < 4 || start.readUInt32BE(0) !== 0x7f454c46) {
    throw notElfError(start, size, name);
  }

  const elfClass = start[4];
  const data = start[5];
  if (elfClass !== 1 && elfClass !== 2) {
    throw corrupt(name, `its ELF class byte is ${String(elfClass)} (1 for 32-bit or 2 for 64-bit expected)`);
  }
  if (data !== 1 && data !== 2) {
    throw corrupt(name, `its byte-order byte is ${String(data)} (1 or 2 expected)`);
  }
  const is64 = elfClass === 2;
  const headerSize = is64 ? 64 : 52;
  if (size < headerSize) {
    throw new SourceError(
      `${name} is a truncated ELF file: its header needs ${headerSize} bytes, the file has ${size}`,
      {
        path: name,
        hint: "the file was cut short (an interrupted copy or download?); build or copy it again",
      },
    );
  }
  const header = new FieldReader(start.subarray(0, headerSize), is64, data === 1, name, "ELF header");

  const typeValue = header.u16(16);
  const type = elfType(typeValue, name);
  const machine = header.u16(18);
  const entry = header.word(24);
  const phoff = header.word(is64 ? 32 : 28);
  const shoff = header.word(is64 ? 40 : 32);
  const flags = header.u32(is64 ? 48 : 36);
  const phentsize = header.u16(is64 ? 54 : 42);
  const phnum = header.u16(is64 ? 56 : 44);
  const shentsize = header.u16(is64 ? 58 : 46);
  const shnum = header.u16(is64 ? 60 : 48);

  // The kernel insists on the exact entry size and on at most 64 KiB of program headers (fs/binfmt_elf.c).
  const expectedPhentsize = is64 ? 56 : 32;
  if (phnum === 0) throw corrupt(name, "it has no program headers, so nothing can load it");
  if (phentsize !== expectedPhentsize) {
    throw corrupt(name, `its program header size is ${phentsize} bytes, ${expectedPhentsize} expected`);
  }
  if (phnum * phentsize > MAX_PROGRAM_HEADERS) {
    throw corrupt(name, `it claims ${phnum} program headers, more than the kernel accepts`);
  }

  const programHeaders: ProgramHeader[] = [];
  const table = yield* need(phoff, phnum * phentsize, size, name, "program headers");
  const fields = new FieldReader(table, is64, data === 1, name, "program headers");
  for (let index = 0; index < phnum; index++) {
    const at = index * phentsize;
    programHeaders.push({
      type: fields.u32(at),
      offset: fields.word(at + (is64 ? 8 : 4)),
      vaddr: fields.word(at + (is64 ? 16 : 8)),
      filesz: fields.word(at + (is64 ? 32 : 16)),
    });
  }

  let interpreter: string | undefined;
  const interpHeader = programHeaders.find((ph) => ph.type === PT_INTERP);
  if (interpHeader !== undefined) {
    if (interpHeader.filesz === 0 || interpHeader.filesz > PATH_MAX) {
      throw corrupt(name, `its PT_INTERP segment is ${interpHeader.filesz} bytes long`);
    }
    const bytes = yield* need(interpHeader.offset, interpHeader.filesz, size, name, "PT_INTERP segment");
    const end = bytes.indexOf(0);
    if (end <= 0) throw corrupt(name, "its PT_INTERP segment is not a NUL-terminated path");
    interpreter = bytes.toString("utf8", 0, end);
  }

  const dynamic = yield* readDynamic(programHeaders, is64, data === 1, size, name);

  let armCpuArch: number | undefined;
  if (machine === ElfMachine.arm && !is64 && shoff !== 0 && shnum > 0 && shentsize >= 40) {
    armCpuArch = yield* readArmCpuArch(shoff, shnum, shentsize, data === 1, size, name);
  }

  const hasDynamicSegment = programHeaders.some((ph) => ph.type === PT_DYNAMIC);
  const isStatic = interpreter === undefined && dynamic.needed.length === 0;
  const markedPie = (dynamic.flags1 & DF_1_PIE) !== 0;
  return {
    class: is64 ? 64 : 32,
    endianness: data === 1 ? "little" : "big",
    machine,
    machineName: machineNames.get(machine) ?? `machine ${machine}`,
    type,
    flags,
    entry,
    interpreter,
    needed: dynamic.needed,
    runpath: dynamic.runpath,
    rpath: dynamic.rpath,
    soname: dynamic.soname,
    flags1: dynamic.flags1,
    hasDynamicSegment,
    isStatic,
    isStaticPie: isStatic && type === "DYN" && markedPie,
    isSharedLibrary: type === "DYN" && interpreter === undefined && !markedPie,
    armCpuArch,
  };
}

function elfType(value: number, name: string): "EXEC" | "DYN" {
  switch (value) {
    case 2:
      return "EXEC";
    case 3:
      return "DYN";
    case 1:
      throw new SourceError(`${name} is a relocatable object file (ET_REL), not a linked program`, {
        path: name,
        hint: "link it into a program first, for example with `gcc -static -o prog file.o`",
      });
    case 4:
      throw new SourceError(`${name} is a core dump, not a program`, { path: name });
    default:
      throw corrupt(name, `its ELF type is ${value} (2 for a program or 3 for a PIE or library expected)`);
  }
}

interface DynamicInfo {
  readonly needed: string[];
  readonly runpath: string | undefined;
  readonly rpath: string | undefined;
  readonly soname: string | undefined;
  readonly flags1: number;
}

function* readDynamic(
  programHeaders: readonly ProgramHeader[],
  is64: boolean,
  little: boolean,
  size: number,
  name: string,
): ElfParse<DynamicInfo> {
  const none: DynamicInfo = {
    needed: [],
    runpath: undefined,
    rpath: undefined,
    soname: undefined,
    flags1: 0,
  };
  const dynamicHeader = programHeaders.find((ph) => ph.type === PT_DYNAMIC);
  if (dynamicHeader === undefined || dynamicHeader.filesz === 0) return none;

  const entrySize = is64 ? 16 : 8;
  const length = Math.min(dynamicHeader.filesz, MAX_DYNAMIC_SEGMENT);
  const bytes = yield* need(dynamicHeader.offset, length, size, name, "dynamic segment");
  const fields = new FieldReader(bytes, is64, little, name, "dynamic segment");

  const neededOffsets: number[] = [];
  let strtab: number | undefined;
  let strsz: number | undefined;
  let runpathOffset: number | undefined;
  let rpathOffset: number | undefined;
  let sonameOffset: number | undefined;
  let flags1 = 0;
  for (let at = 0; at + entrySize <= bytes.length; at += entrySize) {
    // d_tag is signed and may be a processor-specific value beyond 2^53; only small tags matter here.
    const tag = fields.wordUnchecked(at);
    if (tag === DT_NULL) break;
    const value = fields.wordUnchecked(at + entrySize / 2);
    switch (tag) {
      case DT_NEEDED:
        neededOffsets.push(value);
        break;
      case DT_STRTAB:
        strtab = value;
        break;
      case DT_STRSZ:
        strsz = value;
        break;
      case DT_RUNPATH:
        runpathOffset = value;
        break;
      case DT_RPATH:
        rpathOffset = value;
        break;
      case DT_SONAME:
        sonameOffset = value;
        break;
      case DT_FLAGS_1:
        flags1 = value >>> 0;
        break;
    }
  }

  const wanted = [...neededOffsets, runpathOffset, rpathOffset, sonameOffset];
  if (wanted.every((offset) => offset === undefined)) return { ...none, flags1 };
  if (strtab === undefined) {
    throw corrupt(name, "its dynamic segment references strings but has no DT_STRTAB");
  }
  // DT_STRTAB is a virtual address: find the PT_LOAD segment that maps it to learn where it is in the file.
  const address = strtab;
  const load = programHeaders.find(
    (ph) => ph.type === PT_LOAD && address >= ph.vaddr && address < ph.vaddr + ph.filesz,
  );
  if (load === undefined) {
    throw corrupt(
      name,
      `its string table address 0x${address.toString(16)} is not inside any PT_LOAD segment`,
    );
  }
  const tableOffset = load.offset + (address - load.vaddr);
  const tableEnd = Math.min(
    size,
    load.offset + load.filesz,
    strsz === undefined ? Infinity : tableOffset + strsz,
  );

  const readString = function* (offset: number, what: string): ElfParse<string> {
    return yield* readCString(tableOffset + offset, tableEnd, size, name, what);
  };
  const needed: string[] = [];
  for (const offset of neededOffsets) needed.push(yield* readString(offset, "a DT_NEEDED name"));
  return {
    needed,
    runpath: runpathOffset === undefined ? undefined : yield* readString(runpathOffset, "DT_RUNPATH"),
    rpath: rpathOffset === undefined ? undefined : yield* readString(rpathOffset, "DT_RPATH"),
    soname: sonameOffset === undefined ? undefined : yield* readString(sonameOffset, "DT_SONAME"),
    flags1,
  };
}

/** Reads a NUL-terminated string that must end before `end`, in growing chunks (most names are short). */
function* readCString(
  offset: number,
  end: number,
  size: number,
  name: string,
  what: string,
): ElfParse<string> {
  if (!Number.isSafeInteger(offset) || offset >= end) {
    throw corrupt(name, `${what} points outside the string table`);
  }
  const parts: Buffer[] = [];
  let at = offset;
  let chunk = 256;
  while (at < end) {
    const piece = yield* need(at, Math.min(chunk, end - at), size, name, what);
    const nul = piece.indexOf(0);
    if (nul >= 0) {
      parts.push(piece.subarray(0, nul));
      return Buffer.concat(parts).toString("utf8");
    }
    parts.push(piece);
    at += piece.length;
    chunk *= 4;
  }
  throw corrupt(name, `${what} is not NUL-terminated inside the string table`);
}

/**
 * Finds `Tag_CPU_arch` in the `.ARM.attributes` section (ARM IHI 0045, "Build Attributes"). Section headers
 * are optional for running a program, so anything missing or malformed here yields undefined, not an error.
 */
function* readArmCpuArch(
  shoff: number,
  shnum: number,
  shentsize: number,
  little: boolean,
  size: number,
  name: string,
): ElfParse<number | undefined> {
  if (shnum * shentsize > MAX_SECTION_HEADERS || shoff + shnum * shentsize > size) return undefined;
  const table = yield* need(shoff, shnum * shentsize, size, name, "section headers");
  const fields = new FieldReader(table, false, little, name, "section headers");
  for (let index = 0; index < shnum; index++) {
    const at = index * shentsize;
    if (fields.u32(at + 4) !== SHT_ARM_ATTRIBUTES) continue;
    const offset = fields.u32(at + 16);
    const length = Math.min(fields.u32(at + 20), MAX_ARM_ATTRIBUTES);
    if (length === 0 || offset + length > size) return undefined;
    const section = yield* need(offset, length, size, name, ".ARM.attributes");
    return parseArmCpuArch(section, little);
  }
  return undefined;
}

const TAG_FILE = 1;
const TAG_CPU_RAW_NAME = 4;
const TAG_CPU_NAME = 5;
const TAG_CPU_ARCH = 6;
const TAG_COMPATIBILITY = 32;
const TAG_ALSO_COMPATIBLE_WITH = 65;
const TAG_CONFORMANCE = 67;

/** Exported for tests: parses the body of an `.ARM.attributes` section. */
export function parseArmCpuArch(section: Buffer, little: boolean): number | undefined {
  // Format: 'A', then subsections [u32 length][vendor NUL][sub-subsections]; each sub-subsection is
  // [uleb tag][u32 length][attributes]. Only the "aeabi" vendor's file-scope attributes describe the whole file.
  if (section[0] !== 0x41) return undefined;
  const u32 = (at: number): number | undefined =>
    at + 4 > section.length ? undefined : little ? section.readUInt32LE(at) : section.readUInt32BE(at);
  let at = 1;
  while (at < section.length) {
    const length = u32(at);
    if (length === undefined || length < 5 || at + length > section.length) return undefined;
    const end = at + length;
    const vendorEnd = section.indexOf(0, at + 4);
    if (vendorEnd < 0 || vendorEnd >= end) return undefined;
    const vendor = section.toString("latin1", at + 4, vendorEnd);
    let sub = vendorEnd + 1;
    while (vendor === "aeabi" && sub < end) {
      const tag = readUleb(section, sub, end);
      if (tag === undefined) return undefined;
      const subLength = u32(tag.next);
      if (subLength === undefined || subLength < 5 || sub + subLength > end) return undefined;
      if (tag.value === TAG_FILE) {
        return findCpuArch(section, tag.next + 4, sub + subLength);
      }
      sub += subLength;
    }
    at = end;
  }
  return undefined;
}

function findCpuArch(section: Buffer, start: number, end: number): number | undefined {
  let at = start;
  while (at < end) {
    const tag = readUleb(section, at, end);
    if (tag === undefined) return undefined;
    at = tag.next;
    const stringValued =
      tag.value === TAG_CPU_RAW_NAME ||
      tag.value === TAG_CPU_NAME ||
      tag.value === TAG_CONFORMANCE ||
      // Unknown tags above 32 follow the rule "odd: string, even: number" so that readers can skip them.
      (tag.value > TAG_COMPATIBILITY && tag.value !== TAG_ALSO_COMPATIBLE_WITH && tag.value % 2 === 1);
    if (tag.value === TAG_COMPATIBILITY) {
      const flag = readUleb(section, at, end);
      if (flag === undefined) return undefined;
      const nul = section.indexOf(0, flag.next);
      if (nul < 0 || nul >= end) return undefined;
      at = nul + 1;
    } else if (tag.value === TAG_ALSO_COMPATIBLE_WITH) {
      // Its value is a nested tag/value pair terminated by NUL.
      const nul = section.indexOf(0, at);
      if (nul < 0 || nul >= end) return undefined;
      at = nul + 1;
    } else if (stringValued) {
      const nul = section.indexOf(0, at);
      if (nul < 0 || nul >= end) return undefined;
      at = nul + 1;
    } else {
      const value = readUleb(section, at, end);
      if (value === undefined) return undefined;
      if (tag.value === TAG_CPU_ARCH) return value.value;
      at = value.next;
    }
  }
  return undefined;
}

function readUleb(bytes: Buffer, start: number, end: number): { value: number; next: number } | undefined {
  let value = 0;
  let shift = 0;
  for (let at = start; at < end && shift < 35; at++) {
    const byte = bytes[at] ?? 0;
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if ((byte & 0x80) === 0) return { value, next: at + 1 };
  }
  return undefined;
}

/** Asks the driver for a range after checking that it lies inside the file; a short answer is corruption. */
function* need(offset: number, length: number, size: number, name: string, what: string): ElfParse<Buffer> {
  if (
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    offset + length > size
  ) {
    throw corrupt(
      name,
      `its ${what} would need bytes ${offset} to ${offset + length}, but the file has ${size} (cut short?)`,
    );
  }
  const bytes = yield { offset, length };
  if (bytes.length < length) {
    throw corrupt(name, `its ${what} could not be read in full (the file shrank while being read?)`);
  }
  return bytes;
}

/** Bounds-checked field access in the file's byte order and word size. */
class FieldReader {
  constructor(
    private readonly bytes: Buffer,
    private readonly is64: boolean,
    private readonly little: boolean,
    private readonly name: string,
    private readonly what: string,
  ) {}

  u16(at: number): number {
    this.check(at, 2);
    return this.little ? this.bytes.readUInt16LE(at) : this.bytes.readUInt16BE(at);
  }

  u32(at: number): number {
    this.check(at, 4);
    return this.little ? this.bytes.readUInt32LE(at) : this.bytes.readUInt32BE(at);
  }

  /** An address, offset or size (`Elf32_Addr`/`Elf64_Off`…); values beyond 2^53 are corruption. */
  word(at: number): number {
    const value = this.wordUnchecked(at);
    if (!Number.isSafeInteger(value)) {
      throw corrupt(this.name, `a value in its ${this.what} is out of range`);
    }
    return value;
  }

  /** Like {@link word}, but a value beyond 2^53 comes back imprecise instead of failing. */
  wordUnchecked(at: number): number {
    if (!this.is64) return this.u32(at);
    this.check(at, 8);
    return Number(this.little ? this.bytes.readBigUInt64LE(at) : this.bytes.readBigUInt64BE(at));
  }

  private check(at: number, length: number): void {
    if (at < 0 || at + length > this.bytes.length) {
      throw corrupt(this.name, `a field lies outside its ${this.what}`);
    }
  }
}

function corrupt(name: string, detail: string): SourceError {
  return new SourceError(`${name} is not a valid ELF file: ${detail}`, {
    path: name,
    hint: "the file is damaged or truncated; build or copy it again",
  });
}

/** Explains what a file that does not start with the ELF magic is, as precisely as its first bytes allow. */
function notElfError(start: Buffer, size: number, name: string): SourceError {
  const hint = "give the path of a compiled Linux program (for example built with `gcc -static`)";
  if (start.length >= 2 && start[0] === 0x23 && start[1] === 0x21) {
    const interpreter = shebangInterpreter(start);
    if (interpreter === undefined) {
      return new SourceError(`${name} is a script whose #! line names no interpreter`, { path: name, hint });
    }
    return new SourceError(
      `${name} is a script for ${interpreter}; a FROM scratch image has no ${interpreter}`,
      {
        path: name,
        hint: "give mkbase scratch a compiled program, or build the image from a root filesystem that has the interpreter (mkbase dir, mkbase debootstrap)",
      },
    );
  }
  if (start.length < 4 && start.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]).subarray(0, start.length))) {
    return new SourceError(`${name} is a truncated ELF file: only ${size} bytes`, {
      path: name,
      hint: "the file was cut short; build or copy it again",
    });
  }
  const format = knownFormat(start);
  if (format !== undefined) {
    return new SourceError(`${name} is ${format}, not a Linux ELF program`, { path: name, hint });
  }
  if (looksLikeText(start, start.length === size)) {
    return new SourceError(`${name} is a text file, not a program`, { path: name, hint });
  }
  const shown = [...start.subarray(0, 4)].map((byte) => byte.toString(16).padStart(2, "0")).join(" ");
  return new SourceError(`${name} is not an ELF program (it starts with the bytes ${shown})`, {
    path: name,
    hint,
  });
}

/** The program a `#!` line runs, looking through `/usr/bin/env [-S] [-i] [VAR=value] prog`. */
function shebangInterpreter(start: Buffer): string | undefined {
  const lineEnd = start.indexOf(0x0a);
  const line = start.toString("utf8", 2, lineEnd < 0 ? start.length : lineEnd).trim();
  const words = line.split(/\s+/).filter((word) => word !== "");
  const program = words[0];
  if (program === undefined) return undefined;
  if (path.posix.basename(program) !== "env") return program;
  const target = words
    .slice(1)
    .find((word) => !word.startsWith("-") && !/^[A-Za-z_][A-Za-z0-9_]*=/.test(word));
  return target ?? program;
}

function knownFormat(start: Buffer): string | undefined {
  if (start.length >= 2 && start[0] === 0x4d && start[1] === 0x5a) return "a Windows program (PE format)";
  if (start.length >= 4) {
    const magic = start.readUInt32BE(0);
    if ([0xfeedface, 0xfeedfacf, 0xcefaedfe, 0xcffaedfe].includes(magic)) return "a macOS program (Mach-O)";
  }
  if (start.subarray(0, 8).toString("latin1") === "!<arch>\n") return "a static library archive (.a)";
  if (start.length >= 2 && start[0] === 0x1f && start[1] === 0x8b) return "gzip-compressed data";
  if (start.subarray(0, 4).toString("latin1") === "PK\x03\x04") return "a zip archive";
  return undefined;
}

/** Tab, newline, form feed, carriage return. */
const allowedTextControls = new Set([0x09, 0x0a, 0x0c, 0x0d]);

function looksLikeText(start: Buffer, complete: boolean): boolean {
  // Valid UTF-8 (allowing a character cut at the end of the sniffed bytes) without control characters
  // other than tab, newline, carriage return and form feed.
  for (let cut = 0; cut <= (complete ? 0 : 3); cut++) {
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(start.subarray(0, start.length - cut));
    } catch {
      continue;
    }
    return ![...text].some((char) => {
      const code = char.charCodeAt(0);
      return (code < 0x20 && !allowedTextControls.has(code)) || code === 0x7f;
    });
  }
  return false;
}
