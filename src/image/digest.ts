/** Content digests and canonical JSON: the two things every image identity is made of. */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";

/** `sha256:<hex>` of `data`. */
export function sha256Digest(data: Buffer | string): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

/** A `sha256:<hex>` digest of bytes that arrive a chunk at a time. */
export class RunningDigest {
  private readonly hash = createHash("sha256");

  update(chunk: Buffer): void {
    this.hash.update(chunk);
  }

  digest(): string {
    return `sha256:${this.hash.digest("hex")}`;
  }
}

/** The digest of the `size` bytes of the file at `path` that start at `start`. */
export async function fileRangeDigest(path: string, start: number, size: number): Promise<string> {
  const hash = new RunningDigest();
  if (size > 0) {
    const range = createReadStream(path, { start, end: start + size - 1, highWaterMark: 4 * 1024 * 1024 });
    for await (const chunk of range) hash.update(chunk as Buffer);
  }
  return hash.digest();
}

/** The hex part of a `sha256:<hex>` digest. */
export function digestHex(digest: string): string {
  return digest.slice(digest.indexOf(":") + 1);
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === "object") {
    const record = value as Record<string, unknown>;
    return Object.fromEntries(
      Object.keys(record)
        .filter((key) => record[key] !== undefined)
        .sort()
        .map((key) => [key, sortKeys(record[key])]),
    );
  }
  return value;
}

/**
 * Canonical JSON: keys sorted at every level, no whitespace, `undefined` members dropped. The same value
 * always serialises to the same bytes, so config and manifest digests are reproducible.
 */
export function canonicalJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(sortKeys(value)), "utf8");
}
