/** Content digests and canonical JSON: the two things every image identity is made of. */
import { createHash } from "node:crypto";
import { fstatSync, readSync } from "node:fs";

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

/**
 * The digest of what another process appends to a file from `start` on, hashed as the file grows: each
 * {@link catchUp} reads (from the page cache) and hashes what was appended since the one before, so that
 * little is left to hash when the writer is done. `fd` must be open for reading.
 */
export class AppendedDigest {
  private readonly hash = new RunningDigest();
  private readonly buffer = Buffer.allocUnsafe(1024 * 1024);

  constructor(
    private readonly fd: number,
    private position: number,
  ) {}

  /** Hashes what was appended up to the file's current size. */
  catchUp(): void {
    // The kernel moves a file's size only once the bytes are in place, so everything before it is readable.
    const end = fstatSync(this.fd).size;
    while (this.position < end) {
      const length = Math.min(this.buffer.length, end - this.position);
      const n = readSync(this.fd, this.buffer, 0, length, this.position);
      if (n === 0) throw new Error("the file shrank while it was being hashed");
      this.hash.update(this.buffer.subarray(0, n));
      this.position += n;
    }
  }

  /** The digest of everything appended, once the writer is done. */
  digest(): string {
    this.catchUp();
    return this.hash.digest();
  }
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
