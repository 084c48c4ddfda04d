/**
 * Pushing an image or a multi-platform index to a registry.
 *
 * Order matters for readers of the registry: blobs first (each checked for existence, mounted from
 * another repository of the same registry when this process pushed it there, uploaded otherwise), then
 * every manifest by its digest, and the tag last. A tag therefore never points at a manifest whose
 * blobs are missing, and a push that fails half-way leaves only untagged content behind, which the
 * next push reuses.
 */
import { UsageError } from "../errors.js";
import type { Blob } from "../image/manifest.js";
import { formatReference, repositoryOf, type Reference } from "../image/reference.js";
import { formatBytes, type ProgressListener } from "../progress.js";
import { findCredentials } from "./auth.js";
import { RegistryClient, shortDigest, type PushBlob } from "./client.js";

export type { PushBlob } from "./client.js";
export { RegistryResponseError, type RegistryErrorEntry } from "./client.js";

export interface PushOptions {
  readonly signal: AbortSignal;
  readonly onProgress: ProgressListener;
  /** Allow plain HTTP for hosts other than `localhost`, `127.0.0.1` and `[::1]` (`--insecure-registry`). */
  readonly insecureRegistry?: boolean;
  /** A docker `config.json` to take credentials from instead of the discovered one (`--registry-auth-file`). */
  readonly authFile?: string;
  /** `HOME` and `DOCKER_CONFIG` for finding the docker config, `PATH` for credential helpers; `process.env` when absent. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Blobs larger than this are uploaded in chunks of this many bytes (default 16 MiB). */
  readonly chunkSize?: number;
}

/** What the registry holds now. */
export interface PushedManifest {
  /** The tag pushed, e.g. `127.0.0.1:5000/base:1`. */
  readonly reference: string;
  /** The digest of the manifest or index the tag points at. */
  readonly digest: string;
}

/** One platform's image as the registry stores it: its compressed blobs and its manifest. */
export interface PushableImage {
  readonly config: PushBlob;
  readonly layers: readonly PushBlob[];
  readonly manifest: Blob;
}

/**
 * Blobs this process has seen in a registry: host → digest → a repository holding it. A blob pushed to
 * one repository can then be mounted into another of the same registry instead of uploaded again.
 */
const knownBlobs = new Map<string, Map<string, string>>();

function digestLabel(digest: string): string {
  return `${shortDigest(digest)}…`;
}

/**
 * The registry host of `target`. References without one are refused rather than sent to a default
 * registry: publishing somewhere the user did not name is worse than asking.
 */
function registryHost(target: Reference): string {
  if (target.domain === undefined) {
    throw new UsageError(
      `cannot push "${formatReference(target)}": push needs a registry host in the tag, e.g. localhost:5000/x:1`,
      { hint: "Tag the image with the registry it goes to, as host[:port]/name:tag." },
    );
  }
  return target.domain;
}

interface PushSession {
  readonly client: RegistryClient;
  readonly repository: string;
  readonly onProgress: ProgressListener;
}

async function withSession<T>(
  target: Reference,
  options: PushOptions,
  work: (session: PushSession) => Promise<T>,
): Promise<T> {
  const host = registryHost(target);
  const env = options.env ?? process.env;
  const client = new RegistryClient(host, {
    signal: options.signal,
    onProgress: options.onProgress,
    insecure: options.insecureRegistry ?? false,
    chunkSize: options.chunkSize,
    credentials: () => findCredentials(host, { authFile: options.authFile, env, signal: options.signal }),
  });
  try {
    return await work({ client, repository: target.path, onProgress: options.onProgress });
  } finally {
    client.close();
  }
}

async function pushBlob(session: PushSession, blob: PushBlob, kind: string): Promise<void> {
  const { client, repository, onProgress } = session;
  const { digest, size } = blob.descriptor;
  const log = (line: string): void => onProgress({ kind: "log", source: "registry", line });
  onProgress({ kind: "phase", message: `pushing ${kind} ${digestLabel(digest)} (${formatBytes(size)})` });
  let known = knownBlobs.get(client.host);
  if (known === undefined) {
    known = new Map();
    knownBlobs.set(client.host, known);
  }
  if (await client.blobExists(repository, digest)) {
    log(`${digestLabel(digest)} exists`);
  } else {
    const from = known.get(digest);
    if (from !== undefined && from !== repository && (await client.mountBlob(repository, digest, from))) {
      log(`${digestLabel(digest)} mounted from ${from}`);
    } else {
      await client.uploadBlob(repository, blob);
      log(`${digestLabel(digest)} pushed`);
    }
  }
  known.set(digest, repository);
}

/** Pushes the blobs of `image`, then its manifest by digest (untagged). */
async function pushImageContent(session: PushSession, image: PushableImage): Promise<void> {
  for (const layer of image.layers) await pushBlob(session, layer, "layer");
  await pushBlob(session, image.config, "config");
  const { digest } = image.manifest.descriptor;
  session.onProgress({ kind: "phase", message: `pushing manifest ${digestLabel(digest)}` });
  await session.client.putManifest(session.repository, digest, image.manifest);
}

async function putTag(
  session: PushSession,
  target: Reference & { tag: string },
  manifest: Blob,
): Promise<PushedManifest> {
  const reference = `${repositoryOf(target)}:${target.tag}`;
  session.onProgress({ kind: "phase", message: `tagging ${reference}` });
  const digest = await session.client.putManifest(session.repository, target.tag, manifest);
  return { reference, digest };
}

/**
 * Pushes one image to `target`: layers and config, the manifest by digest, then the tag.
 * Throws a {@link UsageError} when `target` names no registry host, a `SinkError` (a
 * {@link RegistryResponseError} for a refusal) when the registry fails or refuses.
 */
export function pushImage(
  target: Reference & { tag: string },
  image: PushableImage,
  options: PushOptions,
): Promise<PushedManifest> {
  return withSession(target, options, async (session) => {
    await pushImageContent(session, image);
    return putTag(session, target, image.manifest);
  });
}

/**
 * Pushes a multi-platform image to `target`: every image's blobs and manifest by digest, the index by
 * digest, then the index under the tag.
 */
export function pushIndex(
  target: Reference & { tag: string },
  images: readonly PushableImage[],
  index: Blob,
  options: PushOptions,
): Promise<PushedManifest> {
  return withSession(target, options, async (session) => {
    for (const image of images) await pushImageContent(session, image);
    session.onProgress({ kind: "phase", message: `pushing index ${digestLabel(index.descriptor.digest)}` });
    await session.client.putManifest(session.repository, index.descriptor.digest, index);
    return putTag(session, target, index);
  });
}
