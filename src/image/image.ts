/**
 * The image as an immutable value: platform, config, layers, history, annotations. Changing it returns a
 * new value; sinks only read it. The config JSON is canonical, so its digest (the image ID) depends
 * only on the inputs.
 */
import type { ContainerConfig } from "./config.js";
import { canonicalJson, sha256Digest } from "./digest.js";
import type { Layer } from "./layer.js";
import type { Platform } from "./platform.js";

export interface HistoryEntry {
  readonly created: string;
  readonly createdBy: string;
  readonly comment?: string;
}

export interface Image {
  readonly platform: Platform;
  /** Build epoch in seconds; the config's `created`. */
  readonly created: number;
  readonly config: ContainerConfig;
  readonly layers: readonly Layer[];
  readonly history: readonly HistoryEntry[];
  readonly annotations: Readonly<Record<string, string>>;
}

/**
 * The last second RFC 3339 can write (its years have four digits): 9999-12-31T23:59:59Z. The latest build
 * time mkbase takes or derives.
 */
export const LAST_RFC3339_SECOND = 253402300799;

/**
 * RFC 3339 UTC without fractional seconds, as the OCI config's `created` and Docker both write it. A time
 * after 9999 (the epoch of a tree with a file dated so, which tmpfs and btrfs keep) is written as the last
 * second RFC 3339 has: JavaScript would write a six-digit year (`+011476-…`), which Go's time parser, and
 * with it the engine's load and skopeo, refuses.
 */
export function formatCreated(epochSeconds: number): string {
  const seconds = Math.min(epochSeconds, LAST_RFC3339_SECOND);
  return new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
}

function omitEmpty(config: ContainerConfig): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(config).filter(([, value]) => {
      if (value === undefined) return false;
      if (Array.isArray(value)) return true;
      return typeof value !== "object" || Object.keys(value as object).length > 0;
    }),
  );
}

/** The OCI image config document (`application/vnd.oci.image.config.v1+json`) as canonical JSON. */
export function configJson(image: Image): Buffer {
  return canonicalJson({
    architecture: image.platform.architecture,
    os: image.platform.os,
    variant: image.platform.variant,
    created: formatCreated(image.created),
    config: omitEmpty(image.config),
    rootfs: { type: "layers", diff_ids: image.layers.map((layer) => layer.diffId) },
    history: image.history.map((entry) => ({
      created: entry.created,
      created_by: entry.createdBy,
      comment: entry.comment,
    })),
  });
}

/** The image ID as the engine computes it: the digest of the config document. */
export function imageId(image: Image): string {
  return sha256Digest(configJson(image));
}

/** Returns a copy of `image` with `changes` applied. */
export function withImage(image: Image, changes: Partial<Image>): Image {
  return { ...image, ...changes };
}
