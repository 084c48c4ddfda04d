/**
 * Image references (`registry[:port]/path[:tag][@digest]`), checked against the distribution reference
 * grammar before any work starts, so a typo in `-t` never costs a full build.
 */
import { UsageError } from "../errors.js";

export interface Reference {
  /** Registry host and port, when the reference names one (`localhost:5000`, `ghcr.io`). */
  readonly domain: string | undefined;
  /** Repository path without the domain (`corp/base`). */
  readonly path: string;
  readonly tag: string | undefined;
  readonly digest: string | undefined;
}

const DOMAIN_COMPONENT = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const DOMAIN = new RegExp(
  `^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::[0-9]+)?$`,
);
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$/;
const MAX_NAME_LENGTH = 255;

function invalid(text: string, why: string): UsageError {
  return new UsageError(`invalid image reference "${text}": ${why}`, {
    hint: "Use [registry[:port]/]name[:tag], lowercase, e.g. corp/base:1.0 or localhost:5000/base:latest.",
  });
}

/** Parses and validates a reference; throws a {@link UsageError} that says what is wrong with it. */
export function parseReference(text: string): Reference {
  if (text === "") throw invalid(text, "it is empty");
  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw invalid(text, `"${digest}" is not a digest`);
  }
  let tag: string | undefined;
  const lastColon = rest.lastIndexOf(":");
  if (lastColon > rest.lastIndexOf("/")) {
    tag = rest.slice(lastColon + 1);
    rest = rest.slice(0, lastColon);
    if (!TAG.test(tag))
      throw invalid(text, `"${tag}" is not a valid tag (letters, digits, _ . -, at most 128)`);
  }
  if (rest.length > MAX_NAME_LENGTH)
    throw invalid(text, `the name is longer than ${MAX_NAME_LENGTH} characters`);
  const components = rest.split("/");
  let domain: string | undefined;
  const first = components[0] ?? "";
  // As in Docker: the first component is a registry only if it looks like a host (has a dot or a port,
  // or is localhost). Otherwise it is part of the repository path and must be lowercase.
  if (components.length > 1 && (first.includes(".") || first.includes(":") || first === "localhost")) {
    domain = first;
    components.shift();
    if (!DOMAIN.test(domain)) throw invalid(text, `"${domain}" is not a valid registry host`);
  }
  if (rest.includes(":") && domain === undefined)
    throw invalid(text, "it has more than one tag separator ':'");
  for (const component of components) {
    if (component === "") throw invalid(text, "it has an empty path component");
    if (component !== component.toLowerCase()) throw invalid(text, "repository names must be lowercase");
    if (!PATH_COMPONENT.test(component)) throw invalid(text, `"${component}" is not a valid path component`);
  }
  return { domain, path: components.join("/"), tag, digest };
}

/** Parses a reference meant for tagging: a digest cannot be given, a missing tag means `latest`. */
export function parseTagReference(text: string): Reference & { readonly tag: string } {
  const reference = parseReference(text);
  if (reference.digest !== undefined) {
    throw new UsageError(`cannot tag an image as "${text}": a tag cannot carry a digest`, {
      hint: "Drop the @sha256:… part; the digest is computed from the image.",
    });
  }
  return { ...reference, tag: reference.tag ?? "latest" };
}

/** The repository part (`domain/path` or `path`). */
export function repositoryOf(reference: Reference): string {
  return reference.domain === undefined ? reference.path : `${reference.domain}/${reference.path}`;
}

/** The full reference as text. */
export function formatReference(reference: Reference): string {
  const tag = reference.tag === undefined ? "" : `:${reference.tag}`;
  const digest = reference.digest === undefined ? "" : `@${reference.digest}`;
  return `${repositoryOf(reference)}${tag}${digest}`;
}

/**
 * `reference` in full, as `io.containerd.image.name` holds it in an OCI layout: normalised as distribution's
 * `ParseNormalizedNamed` and `TagNameOnly` do for buildx's and containerd's exporters (`docker.io/` when
 * no registry is named, `library/` before a single-component name there, `index.docker.io` as
 * `docker.io`, `:latest` when there is neither tag nor digest). Two spellings of one image, `x:1` and
 * `docker.io/library/x:1`, get the same name.
 */
export function normalizedName(reference: Reference): string {
  const domain =
    reference.domain === undefined || reference.domain === "index.docker.io" ? "docker.io" : reference.domain;
  const path =
    domain === "docker.io" && !reference.path.includes("/") ? `library/${reference.path}` : reference.path;
  const tag = reference.tag ?? (reference.digest === undefined ? "latest" : undefined);
  return formatReference({ domain, path, tag, digest: reference.digest });
}

/**
 * A full name from {@link normalizedName} (`docker.io/library/x:1`) as `docker save` lists it in
 * `RepoTags`: distribution's familiar form, without `docker.io/`, and without `library/` before a
 * single-component name there.
 */
export function familiarName(fullName: string): string {
  return fullName.replace(/^docker\.io\/(?:library\/(?=[^/]+$))?/, "");
}
