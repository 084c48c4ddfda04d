import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, truncate, writeFile, copyFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { SourceError, UsageError } from "../../src/errors.js";
import { platformOfElf } from "../../src/elf/platform.js";
import { formatPlatform, parsePlatform, platformsMatch } from "../../src/image/platform.js";
import { DF_1_PIE, ElfMachine, inspectElfFile, readElf, type ElfInfo } from "../../src/elf/read.js";

const run = promisify(execFile);
const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../fixtures/c");
const hello = path.join(fixtures, "hello.c");

/** One build of fixtures/c/hello.c per variant, compiled once for the whole file. */
const variants = {
  static: ["gcc", "-static"],
  dynamic: ["gcc"],
  staticPie: ["gcc", "-static-pie"],
  sharedLibrary: ["gcc", "-shared", "-fPIC"],
  bareSharedLibrary: ["gcc", "-shared", "-fPIC", "-nostdlib"],
  muslStatic: ["musl-gcc", "-static"],
  arm64Static: ["aarch64-linux-gnu-gcc", "-static"],
  arm64Dynamic: ["aarch64-linux-gnu-gcc"],
} as const;
type Variant = keyof typeof variants;

let workDir: string;
const binaries = {} as Record<Variant, string>;

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), "mkbase-elf-"));
  await Promise.all(
    Object.entries(variants).map(async ([variant, [compiler, ...flags]]) => {
      const output = path.join(workDir, variant);
      await run(compiler, [...flags, "-O2", "-o", output, hello]);
      binaries[variant as Variant] = output;
    }),
  );
});

after(async () => {
  if (workDir !== undefined) await rm(workDir, { recursive: true, force: true });
});

describe("inspectElfFile on compiled programs", () => {
  test("gcc -static: 64-bit x86-64, fixed-address, static, linux/amd64", async () => {
    const info = await inspectElfFile(binaries.static);
    assert.equal(info.class, 64);
    assert.equal(info.endianness, "little");
    assert.equal(info.machine, ElfMachine.x86_64);
    assert.equal(info.machineName, "x86-64");
    assert.equal(info.type, "EXEC");
    assert.equal(info.interpreter, undefined);
    assert.deepEqual(info.needed, []);
    assert.equal(info.isStatic, true);
    assert.equal(info.isStaticPie, false);
    assert.deepEqual(platformOfElf(info), { os: "linux", architecture: "amd64" });
  });

  test("plain gcc: dynamic, with the glibc interpreter and libc.so.6", async () => {
    const info = await inspectElfFile(binaries.dynamic);
    assert.equal(info.interpreter, "/lib64/ld-linux-x86-64.so.2");
    assert.ok(info.needed.includes("libc.so.6"), `needed: ${info.needed.join(", ")}`);
    assert.equal(info.isStatic, false);
    assert.equal(info.isStaticPie, false);
    assert.equal(info.type, "DYN");
    assert.notEqual(info.flags1 & DF_1_PIE, 0);
  });

  test("gcc -static-pie: position-independent yet static", async () => {
    const info = await inspectElfFile(binaries.staticPie);
    assert.equal(info.type, "DYN");
    assert.equal(info.hasDynamicSegment, true);
    assert.equal(info.interpreter, undefined);
    assert.deepEqual(info.needed, []);
    assert.equal(info.isStatic, true);
    assert.equal(info.isStaticPie, true);
    assert.equal(info.isSharedLibrary, false);
  });

  test("programs of every kind are not shared libraries", async () => {
    for (const variant of [
      "static",
      "dynamic",
      "staticPie",
      "muslStatic",
      "arm64Static",
      "arm64Dynamic",
    ] as const) {
      assert.equal((await inspectElfFile(binaries[variant])).isSharedLibrary, false, variant);
    }
  });

  test("gcc -shared: ET_DYN without PT_INTERP or DF_1_PIE is a shared library", async () => {
    const info = await inspectElfFile(binaries.sharedLibrary);
    assert.equal(info.type, "DYN");
    assert.equal(info.interpreter, undefined);
    assert.equal(info.flags1 & DF_1_PIE, 0);
    assert.equal(info.isStatic, false);
    assert.equal(info.isSharedLibrary, true);
    // Without dependencies it has a static PIE's shape, but no DF_1_PIE.
    const bare = await inspectElfFile(binaries.bareSharedLibrary);
    assert.equal(bare.isStatic, true);
    assert.equal(bare.hasDynamicSegment, true);
    assert.equal(bare.isStaticPie, false);
    assert.equal(bare.isSharedLibrary, true);
  });

  test("glibc's libc.so.6 also runs as a program: its PT_INTERP keeps it from counting as a library", async () => {
    const libc = (await run("gcc", ["-print-file-name=libc.so.6"])).stdout.trim();
    const info = await inspectElfFile(libc);
    assert.equal(info.soname, "libc.so.6");
    assert.notEqual(info.interpreter, undefined);
    assert.equal(info.isSharedLibrary, false);
  });

  test("musl-gcc -static: static", async () => {
    const info = await inspectElfFile(binaries.muslStatic);
    assert.equal(info.isStatic, true);
    assert.equal(info.machine, ElfMachine.x86_64);
  });

  test("aarch64 -static: linux/arm64/v8", async () => {
    const info = await inspectElfFile(binaries.arm64Static);
    assert.equal(info.class, 64);
    assert.equal(info.machine, ElfMachine.aarch64);
    assert.equal(info.machineName, "AArch64");
    assert.equal(info.isStatic, true);
    assert.deepEqual(platformOfElf(info), { os: "linux", architecture: "arm64", variant: "v8" });
  });

  test("aarch64 dynamic: the aarch64 interpreter and libc.so.6", async () => {
    const info = await inspectElfFile(binaries.arm64Dynamic);
    assert.equal(info.interpreter, "/lib/ld-linux-aarch64.so.1");
    assert.ok(info.needed.includes("libc.so.6"));
    assert.equal(info.isStatic, false);
  });

  test("readElf on the bytes agrees with inspectElfFile on the file", async () => {
    for (const file of Object.values(binaries)) {
      assert.deepEqual(readElf(await readFile(file), file), await inspectElfFile(file));
    }
  });

  test("reads only the parts it needs: an 8 GiB file (sparse) is inspected", async () => {
    const big = path.join(workDir, "big");
    await copyFile(binaries.dynamic, big);
    // Reading the whole file would fail: Node refuses to read more than 2 GiB into one buffer.
    await truncate(big, 8 * 1024 ** 3);
    const info = await inspectElfFile(big);
    assert.equal(info.interpreter, "/lib64/ld-linux-x86-64.so.2");
  });
});

describe("inputs that are not ELF programs", () => {
  async function write(name: string, content: string | Buffer): Promise<string> {
    const file = path.join(workDir, name);
    await writeFile(file, content);
    return file;
  }

  test("a shell script names its interpreter", async () => {
    const script = await write("script.sh", "#!/bin/sh\necho hi\n");
    await assert.rejects(inspectElfFile(script), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.match(error.message, /is a script for \/bin\/sh; a FROM scratch image has no \/bin\/sh/);
      assert.equal(error.path, script);
      return true;
    });
  });

  test("an env script names the program env runs", async () => {
    const script = await write("script.py", "#!/usr/bin/env -S python3 -u\nprint(1)\n");
    await assert.rejects(
      inspectElfFile(script),
      /is a script for python3; a FROM scratch image has no python3/,
    );
  });

  test("an empty file", async () => {
    const empty = await write("empty", "");
    await assert.rejects(inspectElfFile(empty), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.match(error.message, /is empty/);
      return true;
    });
  });

  test("a text file", async () => {
    const text = await write("notes.txt", "just some notes\nwith two lines, and ünïcödé\n");
    await assert.rejects(inspectElfFile(text), /is a text file, not a program/);
  });

  test("a truncated ELF header", async () => {
    const bytes = (await readFile(binaries.dynamic)).subarray(0, 40);
    const truncated = await write("truncated", bytes);
    await assert.rejects(inspectElfFile(truncated), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.match(error.message, /truncated ELF file: its header needs 64 bytes, the file has 40/);
      return true;
    });
    assert.throws(() => readElf(bytes.subarray(0, 3), "three"), /three is a truncated ELF file/);
  });

  test("an ELF file cut after its header", async () => {
    const bytes = (await readFile(binaries.dynamic)).subarray(0, 200);
    assert.throws(
      () => readElf(bytes, "cut"),
      (error: unknown) => {
        assert.ok(error instanceof SourceError);
        assert.match(
          error.message,
          /cut is not a valid ELF file: its program headers would need bytes 64 to \d+, but the file has 200/,
        );
        return true;
      },
    );
  });

  test("random bytes", () => {
    const bytes = randomBytes(4096);
    bytes[0] = 0x00; // never the ELF magic, never "#!"
    bytes[1] = 0x01;
    assert.throws(
      () => readElf(bytes, "noise"),
      /noise is not an ELF program \(it starts with the bytes 00 01 /,
    );
  });

  test("other executable formats are named", () => {
    assert.throws(() => readElf(Buffer.from("MZ\x90\x00\x03\x00", "latin1"), "app.exe"), /Windows program/);
    const machO = Buffer.alloc(64);
    machO.writeUInt32BE(0xcffaedfe, 0);
    assert.throws(() => readElf(machO, "a.out"), /macOS program/);
  });

  test("a relocatable object file", async () => {
    const object = path.join(workDir, "hello.o");
    await run("gcc", ["-c", "-o", object, hello]);
    await assert.rejects(inspectElfFile(object), /relocatable object file/);
  });

  test("a directory and a missing path", async () => {
    await assert.rejects(inspectElfFile(workDir), (error: unknown) => {
      assert.ok(error instanceof SourceError);
      assert.match(error.message, /is a directory/);
      return true;
    });
    await assert.rejects(inspectElfFile(path.join(workDir, "absent")), /does not exist/);
  });

  test("a file given with a trailing slash", async () => {
    await assert.rejects(inspectElfFile(`${binaries.static}/`), {
      name: "SourceError",
      message: `${binaries.static}/ does not exist: a name before a / in it is a file, not a directory`,
    });
  });

  test("corrupt files give a SourceError, never another exception", async () => {
    const original = await readFile(binaries.dynamic);
    const outcomes: unknown[] = [];
    const attempt = (bytes: Buffer): void => {
      try {
        readElf(bytes, "mutated");
        outcomes.push("parsed");
      } catch (error) {
        outcomes.push(error);
      }
    };
    // Cut at every 8th byte of the first 16 KiB (headers, dynamic segment, string table).
    for (let length = 0; length < Math.min(original.length, 16384); length += 8) {
      attempt(original.subarray(0, length));
    }
    // Overwrite each header and program-header byte with 0xff and 0x80.
    for (let offset = 0; offset < 64 + 56 * 14; offset++) {
      for (const value of [0xff, 0x80]) {
        const bytes = Buffer.from(original);
        bytes[offset] = value;
        attempt(bytes);
      }
    }
    const unexpected = outcomes.filter(
      (outcome) => outcome !== "parsed" && !(outcome instanceof SourceError),
    );
    assert.deepEqual(unexpected, []);
    assert.ok(outcomes.some((outcome) => outcome instanceof SourceError));
  });
});

/** Builds a minimal ELF file: one PT_LOAD mapping the whole file at 0x10000, and what the options ask for. */
function syntheticElf(options: {
  class: 32 | 64;
  little: boolean;
  machine: number;
  type?: number;
  flags?: number;
  interpreter?: string;
  needed?: string[];
  runpath?: string;
  armAttributes?: Buffer;
}): Buffer {
  const is64 = options.class === 64;
  const word = is64 ? 8 : 4;
  const headerSize = is64 ? 64 : 52;
  const phentsize = is64 ? 56 : 32;
  const shentsize = is64 ? 64 : 40;
  const base = 0x10000;

  const strings: Buffer[] = [Buffer.from([0])];
  let stringsLength = 1;
  const addString = (text: string): number => {
    const offset = stringsLength;
    const bytes = Buffer.from(`${text}\0`);
    strings.push(bytes);
    stringsLength += bytes.length;
    return offset;
  };
  const dynamicEntries: [number, number][] = [];
  for (const name of options.needed ?? []) dynamicEntries.push([1, addString(name)]);
  if (options.runpath !== undefined) dynamicEntries.push([29, addString(options.runpath)]);
  const hasDynamic = dynamicEntries.length > 0;

  const phnum = 1 + (options.interpreter === undefined ? 0 : 1) + (hasDynamic ? 1 : 0);
  let at = headerSize + phnum * phentsize;
  const interpOffset = at;
  const interp =
    options.interpreter === undefined ? Buffer.alloc(0) : Buffer.from(`${options.interpreter}\0`);
  at += interp.length;
  const strtabOffset = at;
  const strtab = Buffer.concat(strings);
  at += strtab.length;
  at = Math.ceil(at / word) * word;
  const dynamicOffset = at;
  // The entries, DT_STRTAB, DT_STRSZ and the terminating DT_NULL.
  const dynamicSize = hasDynamic ? (dynamicEntries.length + 3) * 2 * word : 0;
  at += dynamicSize;
  const attributesOffset = at;
  const attributes = options.armAttributes ?? Buffer.alloc(0);
  at += attributes.length;
  at = Math.ceil(at / word) * word;
  const shoff = options.armAttributes === undefined ? 0 : at;
  const shnum = options.armAttributes === undefined ? 0 : 2;
  const total = at + shnum * shentsize;

  const file = Buffer.alloc(total);
  const u16 = (offset: number, value: number) =>
    options.little ? file.writeUInt16LE(value, offset) : file.writeUInt16BE(value, offset);
  const u32 = (offset: number, value: number) =>
    options.little ? file.writeUInt32LE(value, offset) : file.writeUInt32BE(value, offset);
  const addr = (offset: number, value: number) => {
    if (!is64) return u32(offset, value);
    return options.little
      ? file.writeBigUInt64LE(BigInt(value), offset)
      : file.writeBigUInt64BE(BigInt(value), offset);
  };

  file.write("\x7fELF", 0, "latin1");
  file[4] = is64 ? 2 : 1;
  file[5] = options.little ? 1 : 2;
  file[6] = 1;
  u16(16, options.type ?? 2);
  u16(18, options.machine);
  u32(20, 1);
  addr(24, base + headerSize);
  addr(is64 ? 32 : 28, headerSize);
  addr(is64 ? 40 : 32, shoff);
  u32(is64 ? 48 : 36, options.flags ?? 0);
  u16(is64 ? 52 : 40, headerSize);
  u16(is64 ? 54 : 42, phentsize);
  u16(is64 ? 56 : 44, phnum);
  u16(is64 ? 58 : 46, shentsize);
  u16(is64 ? 60 : 48, shnum);

  let ph = headerSize;
  const programHeader = (type: number, offset: number, size: number) => {
    u32(ph, type);
    if (is64) {
      addr(ph + 8, offset);
      addr(ph + 16, base + offset);
      addr(ph + 32, size);
      addr(ph + 40, size);
    } else {
      addr(ph + 4, offset);
      addr(ph + 8, base + offset);
      addr(ph + 16, size);
      addr(ph + 20, size);
    }
    ph += phentsize;
  };
  programHeader(1, 0, total);
  if (options.interpreter !== undefined) programHeader(3, interpOffset, interp.length);
  if (hasDynamic) programHeader(2, dynamicOffset, dynamicSize);

  interp.copy(file, interpOffset);
  strtab.copy(file, strtabOffset);
  if (hasDynamic) {
    let entry = dynamicOffset;
    for (const [tag, value] of [...dynamicEntries, [5, base + strtabOffset], [10, strtab.length]] as const) {
      addr(entry, tag);
      addr(entry + word, value);
      entry += 2 * word;
    }
  }
  attributes.copy(file, attributesOffset);
  if (shnum > 0) {
    const section = shoff + shentsize; // section 0 stays all zeros, as the spec requires
    u32(section + 4, 0x70000003);
    addr(section + (is64 ? 24 : 16), attributesOffset);
    addr(section + (is64 ? 32 : 20), attributes.length);
  }
  return file;
}

/** An `.ARM.attributes` section body with the given file-scope attributes (pairs of uleb tag and value). */
function armAttributes(pairs: Buffer): Buffer {
  const fileScope = Buffer.concat([Buffer.from([1]), Buffer.alloc(4), pairs]);
  fileScope.writeUInt32LE(fileScope.length, 1);
  const vendor = Buffer.from("aeabi\0");
  const subsection = Buffer.concat([Buffer.alloc(4), vendor, fileScope]);
  subsection.writeUInt32LE(subsection.length, 0);
  return Buffer.concat([Buffer.from("A"), subsection]);
}

describe("synthetic ELF files", () => {
  test("32-bit ARM with Tag_CPU_arch v6 (after a name string) is linux/arm/v6", () => {
    // Tag_CPU_name (5) = "ARM1176JZF-S", Tag_CPU_arch (6) = 6 (ARMv6KZ is 7; 6 is ARMv6).
    const pairs = Buffer.concat([Buffer.from([5]), Buffer.from("ARM1176JZF-S\0"), Buffer.from([6, 6])]);
    const info = readElf(
      syntheticElf({ class: 32, little: true, machine: 40, armAttributes: armAttributes(pairs) }),
    );
    assert.equal(info.armCpuArch, 6);
    assert.deepEqual(platformOfElf(info), { os: "linux", architecture: "arm", variant: "v6" });
  });

  test("32-bit ARM with Tag_CPU_arch v7 is linux/arm/v7, without sections v7 too", () => {
    const pairs = Buffer.from([4, 0x37, 0x00, 6, 10]); // Tag_CPU_raw_name "7", Tag_CPU_arch 10
    const v7 = readElf(
      syntheticElf({ class: 32, little: true, machine: 40, armAttributes: armAttributes(pairs) }),
    );
    assert.equal(v7.armCpuArch, 10);
    assert.equal(platformOfElf(v7).variant, "v7");
    const stripped = readElf(syntheticElf({ class: 32, little: true, machine: 40 }));
    assert.equal(stripped.armCpuArch, undefined);
    assert.deepEqual(platformOfElf(stripped), { os: "linux", architecture: "arm", variant: "v7" });
  });

  test("little-endian PowerPC64 is linux/ppc64le; big-endian is refused", () => {
    const le = readElf(syntheticElf({ class: 64, little: true, machine: ElfMachine.ppc64 }));
    assert.deepEqual(platformOfElf(le), { os: "linux", architecture: "ppc64le" });
    const be = readElf(
      syntheticElf({ class: 64, little: false, machine: ElfMachine.ppc64, needed: ["libc.so.6"] }),
    );
    assert.equal(be.endianness, "big");
    assert.deepEqual(be.needed, ["libc.so.6"]);
    assert.throws(
      () => platformOfElf(be, "prog"),
      (error: unknown) => {
        assert.ok(error instanceof SourceError);
        assert.match(
          error.message,
          /prog is a 64-bit big-endian PowerPC64 program, which has no OCI platform/,
        );
        return true;
      },
    );
  });

  test("s390x (big-endian), riscv64 and 386 map to their platforms", () => {
    const s390x = readElf(
      syntheticElf({ class: 64, little: false, machine: ElfMachine.s390, interpreter: "/lib/ld64.so.1" }),
    );
    assert.equal(s390x.interpreter, "/lib/ld64.so.1");
    assert.equal(platformOfElf(s390x).architecture, "s390x");
    const riscv = readElf(syntheticElf({ class: 64, little: true, machine: ElfMachine.riscv }));
    assert.equal(platformOfElf(riscv).architecture, "riscv64");
    const i386 = readElf(
      syntheticElf({
        class: 32,
        little: true,
        machine: ElfMachine.i386,
        needed: ["libc.so.6"],
        runpath: "$ORIGIN",
      }),
    );
    assert.equal(i386.class, 32);
    assert.equal(i386.runpath, "$ORIGIN");
    assert.deepEqual(platformOfElf(i386), { os: "linux", architecture: "386" });
  });

  test("other machines are refused by name", () => {
    const mips = readElf(syntheticElf({ class: 32, little: false, machine: ElfMachine.mips }));
    assert.throws(() => platformOfElf(mips, "router"), /router is a 32-bit big-endian MIPS program/);
    const unknown = readElf(syntheticElf({ class: 64, little: true, machine: 9999 }));
    assert.throws(() => platformOfElf(unknown), /machine 9999/);
  });

  test("a string table address outside every PT_LOAD segment is corruption", () => {
    const bytes = syntheticElf({
      class: 64,
      little: true,
      machine: ElfMachine.x86_64,
      needed: ["libc.so.6"],
    });
    const info = readElf(bytes);
    assert.deepEqual(info.needed, ["libc.so.6"]);
    // Point the PT_LOAD segment somewhere else: DT_STRTAB no longer maps into the file.
    bytes.writeBigUInt64LE(0x900000n, 64 + 16);
    assert.throws(
      () => readElf(bytes, "moved"),
      /string table address 0x[0-9a-f]+ is not inside any PT_LOAD/,
    );
  });
});

describe("parsePlatform", () => {
  test("normalises aliases", () => {
    const cases: [string, string][] = [
      ["linux/amd64", "linux/amd64"],
      ["linux/x86_64", "linux/amd64"],
      ["amd64", "linux/amd64"],
      ["linux/amd64/v1", "linux/amd64"],
      ["linux/amd64/v3", "linux/amd64/v3"],
      ["linux/aarch64", "linux/arm64/v8"],
      ["linux/arm64", "linux/arm64/v8"],
      ["linux/armhf", "linux/arm/v7"],
      ["linux/armel", "linux/arm/v6"],
      ["linux/arm", "linux/arm/v7"],
      ["linux/arm/v6", "linux/arm/v6"],
      ["linux/i686", "linux/386"],
      ["linux/ppc64el", "linux/ppc64le"],
      ["Linux/S390X", "linux/s390x"],
      ["linux/riscv64", "linux/riscv64"],
      ["linux/mips64el", "linux/mips64le"],
      ["linux/loongarch64", "linux/loong64"],
    ];
    for (const [text, expected] of cases) assert.equal(formatPlatform(parsePlatform(text)), expected, text);
  });

  test("rejects nonsense with a UsageError", () => {
    for (const text of [
      "",
      "linux/",
      "/amd64",
      "linux/sparc",
      "windows/amd64",
      "linux/arm/v9",
      "linux/amd64/v8",
      "linux/armhf/v6",
      "linux/arm64/v8/x",
    ]) {
      assert.throws(() => parsePlatform(text), UsageError, text);
    }
  });

  test("a buildx-style list of platforms gets its own message", () => {
    assert.throws(
      () => parsePlatform("linux/amd64,linux/arm64"),
      (error: unknown) => {
        assert.ok(error instanceof UsageError);
        assert.match(error.message, /lists several platforms where one is expected/);
        assert.match(error.hint ?? "", /once per platform/);
        return true;
      },
    );
  });

  test("platformsMatch treats a missing variant as the default one", () => {
    const arm64 = { os: "linux", architecture: "arm64" } as const;
    assert.ok(platformsMatch(arm64, { ...arm64, variant: "v8" }));
    assert.ok(platformsMatch(parsePlatform("linux/arm"), { os: "linux", architecture: "arm" }));
    assert.ok(!platformsMatch(parsePlatform("linux/arm/v6"), parsePlatform("linux/arm/v7")));
    assert.ok(!platformsMatch(parsePlatform("linux/amd64"), arm64));
  });

  test("the platform of a compiled program matches the parsed flag", async () => {
    const info: ElfInfo = await inspectElfFile(binaries.arm64Static);
    assert.ok(platformsMatch(platformOfElf(info), parsePlatform("linux/aarch64")));
    assert.ok(!platformsMatch(platformOfElf(info), parsePlatform("linux/amd64")));
  });
});
