/**
 * The docker-archive format (what `docker save` writes and `docker load` reads), laid out so that both
 * old and new engines read it: `manifest.json` for the classic image store, and an OCI `index.json` +
 * `oci-layout` over the same digest-named blobs for the containerd image store.
 */
import { bytesEntry, directoryEntry, type TarEntry } from "../tar/entry.js";
import { canonicalJson, digestHex } from "../image/digest.js";
import type { Image } from "../image/image.js";
import { CONTAINERD_NAME_ANNOTATION, REF_NAME_ANNOTATION } from "../image/image-blobs.js";
import { INDEX_MEDIA_TYPE, uncompressedManifest } from "../image/manifest.js";
import { familiarName, type Reference } from "../image/reference.js";
import { entryNames } from "./oci-layout.js";

function fileEntry(path: string, data: Buffer, mtime: number): TarEntry {
  return bytesEntry(path, data, 0o644, mtime);
}

function dirEntry(path: string, mtime: number): TarEntry {
  return directoryEntry(path, 0o755, mtime);
}

/**
 * The entries of a docker-archive holding `image`, tagged with `tags` (each reference once, by its full
 * name; none: the engine loads it untagged). The layers must be re-openable, unless `withLayers` is
 * false: then the archive names them in `manifest.json` but does not hold them, which an engine with
 * the classic image store loads when it already has every layer. Entry order and times are fixed, so
 * the archive is reproducible.
 */
export function dockerArchiveEntries(
  image: Image,
  tags: readonly Reference[],
  { withLayers = true }: { readonly withLayers?: boolean } = {},
): TarEntry[] {
  const { manifest, config } = uncompressedManifest(image);
  const mtime = image.created;
  const blobPath = (digest: string): string => `blobs/sha256/${digestHex(digest)}`;
  const blobs: TarEntry[] = [
    fileEntry(blobPath(config.descriptor.digest), config.data, mtime),
    fileEntry(blobPath(manifest.descriptor.digest), manifest.data, mtime),
  ];
  for (const layer of withLayers ? image.layers : []) {
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
  const names = entryNames(tags);
  // As `docker save` writes it: the platform on each descriptor, and the full name, as in an OCI layout.
  const descriptor = { ...manifest.descriptor, platform: image.platform };
  const index = canonicalJson({
    schemaVersion: 2,
    mediaType: INDEX_MEDIA_TYPE,
    manifests:
      names.length === 0
        ? [descriptor]
        : names.map(({ refName, fullName }) => ({
            ...descriptor,
            annotations: { [CONTAINERD_NAME_ANNOTATION]: fullName, [REF_NAME_ANNOTATION]: refName },
          })),
  });
  const dockerManifest = canonicalJson([
    {
      Config: blobPath(config.descriptor.digest),
      RepoTags: names.length === 0 ? null : names.map(({ fullName }) => familiarName(fullName)),
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
