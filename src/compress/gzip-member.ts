/**
 * One gzip member, byte-reproducible: zlib writes MTIME 0 when no header is given, and the OS byte, which
 * zlib sets from the platform it was compiled for, is overwritten with a fixed value. The XFL byte is
 * derived from the level, which the caller fixes.
 */
import { constants, gzipSync } from "node:zlib";

/** RFC 1952 OS byte 255, "unknown": the same on every machine that builds the image. */
export const GZIP_OS_BYTE = 255;
const OS_BYTE_OFFSET = 9;

export interface MemberRequest {
  readonly id: number;
  readonly input: ArrayBuffer;
  readonly level: number;
}

export interface MemberResult {
  readonly id: number;
  /** The member is its first `length` bytes. */
  readonly output: ArrayBuffer;
  readonly length: number;
  /** The request's input, given back to be filled again. */
  readonly input: ArrayBuffer;
}

/** `input` as one complete gzip member (header, deflate stream, CRC-32 and length trailer). */
export function gzipMember(input: Buffer, level: number): Buffer {
  const output = gzipSync(input, {
    level,
    memLevel: 8,
    strategy: constants.Z_DEFAULT_STRATEGY,
    // Room for the whole member (deflate can grow incompressible input by a few bytes per 16 KiB): zlib
    // then writes it into one buffer, which a worker thread hands over as it is. With the default 16 KiB
    // chunks, each member left ~30 chunks and their concatenation behind as garbage.
    chunkSize: input.length + (input.length >>> 8) + 1024,
  });
  output[OS_BYTE_OFFSET] = GZIP_OS_BYTE;
  return output;
}
