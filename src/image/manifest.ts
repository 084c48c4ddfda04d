/** OCI image manifests and indexes for an {@link Image}. */
import { canonicalJson, sha256Digest } from "./digest.js";
import { configJson, type Image } from "./image.js";
import { LAYER_MEDIA_TYPE } from "./layer.js";

export const MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json";
export const INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json";
export const CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json";

export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly annotations?: Readonly<Record<string, string>>;
  readonly platform?: { readonly os: string; readonly architecture: string; readonly variant?: string };
}

/** A JSON document and its descriptor. */
export interface Blob {
  readonly descriptor: Descriptor;
  readonly data: Buffer;
}

export function jsonBlob(mediaType: string, data: Buffer): Blob {
  return { descriptor: { mediaType, digest: sha256Digest(data), size: data.length }, data };
}

/** The config blob of `image`. */
export function configBlob(image: Image): Blob {
  return jsonBlob(CONFIG_MEDIA_TYPE, configJson(image));
}

/** An OCI image manifest over a config and layers, as canonical JSON. */
export function manifestBlob(
  config: Descriptor,
  layers: readonly Descriptor[],
  annotations?: Readonly<Record<string, string>>,
): Blob {
  return jsonBlob(
    MANIFEST_MEDIA_TYPE,
    canonicalJson({ schemaVersion: 2, mediaType: MANIFEST_MEDIA_TYPE, config, layers, annotations }),
  );
}

/**
 * The manifest of `image` with uncompressed layers (what a docker-archive or an engine load carries;
 * compressed variants are made by the sinks that compress).
 */
export function uncompressedManifest(image: Image): { manifest: Blob; config: Blob } {
  const config = configBlob(image);
  const layers = image.layers.map((layer) => ({
    mediaType: LAYER_MEDIA_TYPE,
    digest: layer.diffId,
    size: layer.size,
  }));
  const annotations = Object.keys(image.annotations).length > 0 ? image.annotations : undefined;
  return { manifest: manifestBlob(config.descriptor, layers, annotations), config };
}
