/**
 * The docker-archive format (what `docker save` writes and `docker load` reads), laid out so that both
 * old and new engines read it: `manifest.json` for the classic image store, and an OCI `index.json` +
 * `oci-layout` over the same digest-named blobs for the containerd image store.
 *
 * A second, streamed form puts the layer first, under a fixed name, so it can be sent while it is packed;
 * the config (named by its digest, known once the layer is hashed) and `manifest.json` follow it. It has
 * no `index.json`: the classic store reads the whole archive before it looks at `manifest.json`, and the
 * containerd store's importer falls back to `manifest.json` when there is no `index.json`.
 */
import { bytesEntry, directoryEntry, type TarEntry } from "../tar/entry.js";
import { canonicalJson, digestHex } from "../image/digest.js";
import type { Image } from "../image/image.js";
import { INDEX_MEDIA_TYPE, configBlob, uncompressedManifest } from "../image/manifest.js";
import { encodeHeader } from "../tar/header.js";
import { formatReference, type Reference } from "../image/reference.js";

function fileEntry(path: string, data: Buffer, mtime: number): TarEntry {
  return bytesEntry(path, data, 0o644, mtime);
}

function dirEntry(path: string, mtime: number): TarEntry {
  return directoryEntry(path, 0o755, mtime);
}

/**
 * The entries of a docker-archive holding `image`, tagged with `tags` (none: the engine loads it
 * untagged). The layer must be re-openable. Entry order and times are fixed, so the archive is
 * reproducible.
 */
export function dockerArchiveEntries(image: Image, tags: readonly Reference[]): TarEntry[] {
  const { manifest, config } = uncompressedManifest(image);
  const mtime = image.created;
  const blobPath = (digest: string): string => `blobs/sha256/${digestHex(digest)}`;
  const blobs: TarEntry[] = [
    fileEntry(blobPath(config.descriptor.digest), config.data, mtime),
    fileEntry(blobPath(manifest.descriptor.digest), manifest.data, mtime),
  ];
  for (const layer of image.layers) {
    const open = layer.open;
    if (open === undefined) throw new Error("a docker-archive needs a re-openable layer");
    blobs.push({
      path: Buffer.from(blobPath(layer.diffId)),
      type: "file",
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtime,
      size: layer.size,
      content: { kind: "stream", chunks: open() },
    });
  }
  // Two layers with the same content share one blob; the archive must not hold the path twice.
  const uniqueBlobs = [...new Map(blobs.map((entry) => [entry.path.toString(), entry])).values()].sort(
    (a, b) => Buffer.compare(a.path, b.path),
  );
  const names = tags.map(formatReference);
  const index = canonicalJson({
    schemaVersion: 2,
    mediaType: INDEX_MEDIA_TYPE,
    manifests: (names.length === 0 ? [undefined] : names).map((name) => ({
      ...manifest.descriptor,
      annotations:
        name === undefined
          ? undefined
          : {
              "io.containerd.image.name": name,
              "org.opencontainers.image.ref.name": name.slice(name.lastIndexOf(":") + 1),
            },
    })),
  });
  const dockerManifest = canonicalJson([
    {
      Config: blobPath(config.descriptor.digest),
      RepoTags: names.length === 0 ? null : names,
      Layers: image.layers.map((layer) => blobPath(layer.diffId)),
    },
  ]);
  return [
    dirEntry("blobs", mtime),
    dirEntry("blobs/sha256", mtime),
    ...uniqueBlobs,
    fileEntry("index.json", index, mtime),
    fileEntry("manifest.json", dockerManifest, mtime),
    fileEntry("oci-layout", canonicalJson({ imageLayoutVersion: "1.0.0" }), mtime),
  ];
}

/** Name of the layer member in the streamed form. */
export const STREAMED_LAYER_PATH = "layer.tar";

/**
 * The header of the streamed form's first member, the layer of `size` bytes; the layer tar itself
 * follows (its length is a multiple of the block size, so it needs no padding).
 */
export function streamedArchiveLayerHeader(size: number, mtime: number): Buffer {
  return encodeHeader({
    path: Buffer.from(STREAMED_LAYER_PATH),
    type: "file",
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime,
    size,
  });
}

/**
 * The members of the streamed form that follow the layer: the config and `manifest.json` (untagged: the
 * engine loads it by ID). `image` has the one streamed layer.
 */
export function streamedArchiveTail(image: Image): TarEntry[] {
  if (image.layers.length !== 1) throw new Error("the streamed docker-archive holds exactly one layer");
  const config = configBlob(image);
  const configPath = `${digestHex(config.descriptor.digest)}.json`;
  const dockerManifest = canonicalJson([
    { Config: configPath, RepoTags: null, Layers: [STREAMED_LAYER_PATH] },
  ]);
  return [
    fileEntry(configPath, config.data, image.created),
    fileEntry("manifest.json", dockerManifest, image.created),
  ];
}
