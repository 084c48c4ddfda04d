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
