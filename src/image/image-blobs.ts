/**
 * An image as a registry or an OCI layout stores it: a config blob, compressed layer blobs and a
 * manifest naming them, each with its descriptor. Several platforms make an image index. The config is
 * the same document the engine paths use, so the image ID does not depend on the compression.
 */
import { formatCreated, type Image } from "./image.js";
import {
  INDEX_MEDIA_TYPE,
  manifestBlob,
  configBlob,
  jsonBlob,
  type Blob,
  type Descriptor,
} from "./manifest.js";
import { canonicalJson } from "./digest.js";
import type { Platform } from "./platform.js";

/** A blob whose bytes are kept elsewhere (a spool file) and can be read as often as needed. */
export interface ContentBlob {
  readonly descriptor: Descriptor;
  /** Reads the blob's bytes from the start; each call is a new reader. */
  open(): AsyncIterable<Buffer>;
}

/** A compressed layer: the blob, plus the DiffID of the tar inside (what the config lists). */
export interface CompressedLayer extends ContentBlob {
  readonly diffId: string;
}

/** One image ready to store or push: what a registry client needs, in upload order. */
export interface ImageBlobs {
  readonly platform: Platform;
  readonly config: Blob;
  readonly layers: readonly CompressedLayer[];
  readonly manifest: Blob;
}

/** `org.opencontainers.image.created`, set from the build epoch unless the user gave one. */
export const CREATED_ANNOTATION = "org.opencontainers.image.created";
/** The tag an OCI layout's `index.json` names a manifest by. */
export const REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name";
/** The full name containerd (and `docker load` with the containerd store) reads from `index.json`. */
export const CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name";

function platformField(platform: Platform): Descriptor["platform"] {
  return platform.variant === undefined
    ? { os: platform.os, architecture: platform.architecture }
    : { os: platform.os, architecture: platform.architecture, variant: platform.variant };
}

/**
 * The blobs of `image` with `layers` (in the image's order, their DiffIDs matching it). The manifest
 * carries the image's annotations plus `org.opencontainers.image.created` from the build epoch, so it is
 * reproducible: same image and layers, same manifest digest.
 */
export function imageBlobs(image: Image, layers: readonly CompressedLayer[]): ImageBlobs {
  if (
    layers.length !== image.layers.length ||
    layers.some((layer, i) => layer.diffId !== image.layers[i]?.diffId)
  ) {
    throw new Error("the compressed layers do not match the image's layers");
  }
  const config = configBlob(image);
  const annotations = { [CREATED_ANNOTATION]: formatCreated(image.created), ...image.annotations };
  const manifest = manifestBlob(
    config.descriptor,
    layers.map((layer) => layer.descriptor),
    annotations,
  );
  return { platform: image.platform, config, layers, manifest };
}

/** The descriptor of an image's manifest as an index lists it: with its platform. */
export function manifestDescriptor(
  image: ImageBlobs,
  annotations: Readonly<Record<string, string>> = {},
): Descriptor {
  return {
    ...image.manifest.descriptor,
    platform: platformField(image.platform),
    annotations: Object.keys(annotations).length > 0 ? annotations : undefined,
  };
}

/**
 * An image index over several images (one per platform), in the order given. Descriptor annotations
 * are per image (`manifest-descriptor:` annotations), index annotations apply to the whole.
 */
export function imageIndex(
  images: readonly { readonly image: ImageBlobs; readonly annotations?: Readonly<Record<string, string>> }[],
  annotations: Readonly<Record<string, string>> = {},
): Blob {
  return jsonBlob(
    INDEX_MEDIA_TYPE,
    canonicalJson({
      schemaVersion: 2,
      mediaType: INDEX_MEDIA_TYPE,
      manifests: images.map(({ image, annotations: own }) => manifestDescriptor(image, own)),
      annotations: Object.keys(annotations).length > 0 ? annotations : undefined,
    }),
  );
}
