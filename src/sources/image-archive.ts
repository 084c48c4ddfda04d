/**
 * Telling an image (a `docker save` archive, an OCI layout) from a root filesystem by its top-level
 * names. Given to `mkbase tar` or `mkbase dir` by mistake, an image would be packed as a rootfs: an
 * image of JSON files and layer tarballs, which `docker import` makes without a word.
 */

/** The top-level directories of any root filesystem worth the name; an image has none of them. */
const ROOTFS_DIRS = ["bin", "etc", "lib", "sbin", "usr", "var"];

/**
 * Whether top-level `names` are those of an image: `oci-layout` (OCI, and `docker save` since Docker
 * 25), or `manifest.json` with `repositories` or `blobs/` (older `docker save`), and no rootfs directory.
 */
export function isImageArchive(names: ReadonlySet<string>): boolean {
  const image =
    names.has("oci-layout") ||
    (names.has("manifest.json") && (names.has("repositories") || names.has("blobs")));
  return image && !ROOTFS_DIRS.some((name) => names.has(name));
}

/**
 * The rootfs directories below `top` when it is the archive's only top-level name: a tree archived by
 * its directory (`tar -czf rootfs.tar.gz rootfs`) instead of its content puts `/rootfs/bin/sh` where
 * `/bin/sh` was meant, and `docker import` takes it without a word. Empty for anything else.
 */
export function wrappedRootfsDirs(topLevel: ReadonlySet<string>, belowTop: ReadonlySet<string>): string[] {
  if (topLevel.size !== 1 || ROOTFS_DIRS.some((name) => topLevel.has(name))) return [];
  const found = ROOTFS_DIRS.filter((name) => belowTop.has(name));
  return found.length >= 2 ? found : [];
}
