/**
 * Layer compression settings: the algorithm and level a user chose with `compression=` and
 * `compression-level=`, the defaults, and the OCI media type each one gives a layer.
 */
import { UsageError } from "../errors.js";

export type CompressionAlgorithm = "gzip" | "zstd" | "none";

export interface Compression {
  readonly algorithm: CompressionAlgorithm;
  /** gzip 0–9, zstd 1–19; ignored for `none`. */
  readonly level: number;
}

/** gzip-6 is what Go's `compress/gzip` (and so buildx, containerd, ko) uses by default. */
export const DEFAULT_GZIP_LEVEL = 6;
/** zstd-3 is the `zstd` CLI's own default. */
export const DEFAULT_ZSTD_LEVEL = 3;

const LEVELS: Readonly<Record<CompressionAlgorithm, { min: number; max: number; default: number }>> = {
  gzip: { min: 0, max: 9, default: DEFAULT_GZIP_LEVEL },
  zstd: { min: 1, max: 19, default: DEFAULT_ZSTD_LEVEL },
  none: { min: 0, max: 0, default: 0 },
};

export const GZIP_COMPRESSION: Compression = { algorithm: "gzip", level: DEFAULT_GZIP_LEVEL };
export const NO_COMPRESSION: Compression = { algorithm: "none", level: 0 };

/** Checks an algorithm name as given to `compression=`. */
export function parseCompressionAlgorithm(text: string, origin: string): CompressionAlgorithm {
  if (text === "gzip" || text === "zstd" || text === "none") return text;
  if (text === "uncompressed") return "none";
  throw new UsageError(`${origin}: unknown compression "${text}"`, {
    hint: "Use compression=gzip, compression=zstd or compression=none.",
  });
}

/**
 * The compression for `algorithm` at `level` (the algorithm's default when absent).
 *
 * @throws UsageError when the level is out of the algorithm's range
 */
export function makeCompression(
  algorithm: CompressionAlgorithm,
  level: string | undefined,
  origin: string,
): Compression {
  const range = LEVELS[algorithm];
  if (level === undefined) return { algorithm, level: range.default };
  const value = Number(level);
  if (!/^\d+$/.test(level) || value < range.min || value > range.max) {
    throw new UsageError(`${origin}: compression-level=${level} is not a ${algorithm} level`, {
      hint:
        algorithm === "none"
          ? "An uncompressed layer has no level; drop compression-level."
          : `Give a whole number from ${range.min} to ${range.max}.`,
    });
  }
  return { algorithm, level: value };
}

/** The OCI layer media type for a tar layer with this compression. */
export function layerMediaType(compression: Compression): string {
  const base = "application/vnd.oci.image.layer.v1.tar";
  return compression.algorithm === "none" ? base : `${base}+${compression.algorithm}`;
}

/** `gzip-6`, `zstd-3`, `uncompressed`: for progress lines. */
export function describeCompression(compression: Compression): string {
  return compression.algorithm === "none" ? "uncompressed" : `${compression.algorithm}-${compression.level}`;
}
