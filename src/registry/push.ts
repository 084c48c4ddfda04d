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
import { formatReference, normalizedName, repositoryOf, type Reference } from "../image/reference.js";
import { formatBytes, type ProgressListener } from "../progress.js";
import { findCredentials } from "./auth.js";
import { RegistryClient, shortDigest, type PushBlob } from "./client.js";

export type { PushBlob } from "./client.js";
export { RegistryResponseError, type RegistryErrorEntry } from "./client.js";

export interface PushOptions {
  readonly signal: AbortSignal;
  readonly onProgress: ProgressListener;
  /**
   * Treat the registry as `localhost`, `127.0.0.1` and `[::1]` are treated (`--insecure-registry`): HTTPS
   * without verifying the certificate, or plain HTTP when it does not speak TLS.
   */
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
 * The registry host of `target`; a registry output checks every tag with it before the build. Docker
 * Hub is refused, and so are names without a host, which docker sends there: Hub's API is not served at
 * the host its references name, and `docker login` keeps Hub credentials under yet another key.
 * Publishing somewhere the user did not name is worse than asking.
 */
export function registryHost(target: Reference): string {
  const host = target.domain;
  // normalizedName spells every Docker Hub reference (no host, `index.docker.io`) as `docker.io/…`.
  if (host !== undefined && !normalizedName(target).startsWith("docker.io/")) return host;
  const named =
    host === undefined
      ? "names no registry host (docker would push it to Docker Hub)"
      : `names Docker Hub (${host})`;
  throw new UsageError(
    `cannot push "${formatReference(target)}": the tag ${named}, and mkbase pushes only to a registry named by its host, as in localhost:5000/x:1`,
    {
      hint: "To publish on Docker Hub, write the image to a file and push that: -o type=oci,dest=x.tar, then `skopeo copy oci-archive:x.tar docker://USER/NAME:TAG` (or -o type=oci,dest=x,tar=false, then `crane push x USER/NAME:TAG`); or load it into the engine (without --push) and `docker push USER/NAME:TAG`.",
    },
  );
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
    const mount =
      from !== undefined && from !== repository
        ? await client.mountBlob(repository, digest, from)
        : undefined;
    if (mount === "mounted") {
      log(`${digestLabel(digest)} mounted from ${from}`);
    } else {
      // A mount the registry did not do may have opened the session to upload in.
      await client.uploadBlob(repository, blob, mount);
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
 * Throws a {@link UsageError} when `target` names no registry host or Docker Hub, a `SinkError` (a
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
