/**
 * OCI annotations as `docker buildx build --annotation` writes them: `[TYPE[,TYPE…][PLATFORM]:]KEY=VALUE`,
 * where TYPE says which document carries the annotation (`manifest` by default, `index`,
 * `manifest-descriptor`, `index-descriptor`) and an optional `[os/arch]` limits a manifest annotation to
 * one platform of a multi-platform build.
 */
import { UsageError } from "../errors.js";
import { parsePlatform, platformsMatch, type Platform } from "./platform.js";

export type AnnotationTarget = "manifest" | "index" | "manifest-descriptor" | "index-descriptor";

const TARGETS: readonly AnnotationTarget[] = ["manifest", "index", "manifest-descriptor", "index-descriptor"];

export interface Annotation {
  readonly targets: readonly AnnotationTarget[];
  /** Only for this platform's manifest (or its descriptor); every platform when absent. */
  readonly platform?: Platform;
  readonly key: string;
  readonly value: string;
}

const PREFIX = /^([a-z-]+(?:,[a-z-]+)*)(?:\[([^\]]*)\])?:(.*)$/s;

/**
 * Parses one `--annotation` value.
 *
 * @throws UsageError for an unknown type, a platform on an index annotation, or a missing `=`
 */
export function parseAnnotation(text: string): Annotation {
  let targets: AnnotationTarget[] = ["manifest"];
  let platform: Platform | undefined;
  let rest = text;
  const match = PREFIX.exec(text);
  const named = match?.[1]?.split(",") ?? [];
  // Keys may hold colons (`com.example:x=1`), but a prefix of lowercase words is a type, as buildx reads
  // it: a misspelt one (`manfest:k=v`) is refused rather than made part of the key.
  if (match !== null && !named.every((name) => TARGETS.includes(name as AnnotationTarget))) {
    throw new UsageError(`--annotation ${text}: unknown annotation type "${match[1]}"`, {
      hint: `Use one of ${TARGETS.join(", ")} before the colon, or none for the manifest.`,
    });
  }
  if (match !== null) {
    targets = named as AnnotationTarget[];
    rest = match[3] ?? "";
    if (match[2] !== undefined) {
      platform = parsePlatform(match[2]);
      if (targets.some((target) => target.startsWith("index"))) {
        throw new UsageError(`--annotation ${text}: an index annotation cannot name a platform`, {
          hint: "Give the platform only with manifest or manifest-descriptor, e.g. manifest[linux/arm64]:key=value.",
        });
      }
    }
  }
  const eq = rest.indexOf("=");
  if (eq <= 0) {
    throw new UsageError(`--annotation ${text}: expected [TYPE:]KEY=VALUE`, {
      hint: "For example --annotation org.opencontainers.image.description=base or --annotation index:key=value.",
    });
  }
  return { targets, platform, key: rest.slice(0, eq), value: rest.slice(eq + 1) };
}

/**
 * The annotations for one document: `target`'s annotations, later ones overriding earlier ones with the
 * same key; for manifests, only those without a platform or for `platform`.
 */
export function annotationsFor(
  annotations: readonly Annotation[],
  target: AnnotationTarget,
  platform?: Platform,
): Record<string, string> {
  const result: Record<string, string> = {};
  for (const annotation of annotations) {
    if (!annotation.targets.includes(target)) continue;
    if (
      annotation.platform !== undefined &&
      platform !== undefined &&
      !platformsMatch(annotation.platform, platform)
    )
      continue;
    result[annotation.key] = annotation.value;
  }
  return result;
}

/** The standard `org.opencontainers.image.*` keys mkbase sets from its own flags. */
export const OCI_ANNOTATION_KEYS = {
  source: "org.opencontainers.image.source",
  revision: "org.opencontainers.image.revision",
  version: "org.opencontainers.image.version",
  baseName: "org.opencontainers.image.base.name",
} as const;
