/**
 * A registry as a destination (`--push`, `-o type=registry`): the images of the command, with the
 * compressed layers spooled during the walk, handed to the registry client. One image is pushed as a
 * manifest, several (one per platform) as an image index; every tag is put only after its content.
 */
import { UsageError } from "../errors.js";
import type { Annotation } from "../image/annotations.js";
import { annotationsFor } from "../image/annotations.js";
import { imageIndex, type ImageBlobs } from "../image/image-blobs.js";
import type { Image } from "../image/image.js";
import { formatReference, repositoryOf, type Reference } from "../image/reference.js";
import type { ProgressListener } from "../progress.js";
import type { Blob } from "../image/manifest.js";
import {
  pushImage,
  pushIndex,
  registryHost,
  type PushableImage,
  type PushedManifest,
  type PushOptions,
} from "../registry/push.js";
import type { CompressedLayerSpool } from "./compressed-layer-spool.js";
import { CollectedImages, contentOf } from "./oci-layout.js";
import type { LayerConsumer, Sink, SinkResult } from "./sink.js";

export interface RegistrySinkOptions {
  readonly spool: CompressedLayerSpool;
  readonly tags: readonly (Reference & { readonly tag: string })[];
  readonly annotations: readonly Annotation[];
  readonly onProgress: ProgressListener;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** The registry may lack TLS or a verifiable certificate (`--insecure-registry`, `registry.insecure=true`). */
  readonly insecureRegistry?: boolean;
  /** `--registry-auth-file`: a docker config.json to take credentials from. */
  readonly authFile?: string;
}

type PushTarget = Reference & { readonly tag: string };

/** What a push puts under each tag (a manifest or an index), and the push of it to one tag. */
interface TopPush {
  readonly top: Blob;
  readonly to: (tag: PushTarget) => Promise<PushedManifest>;
}

function pushable(image: ImageBlobs): PushableImage {
  return { config: contentOf(image.config), layers: image.layers, manifest: image.manifest };
}

export class RegistrySink implements Sink {
  readonly destination = "registry";
  readonly needsLayerFile = false;
  private readonly collected: CollectedImages;

  constructor(private readonly options: RegistrySinkOptions) {
    if (options.tags.length === 0) {
      throw new UsageError("pushing needs a name: give -t registry[:port]/name:tag", {
        hint: "For example -t localhost:5000/base:1 --push.",
      });
    }
    // Before the build: a tag refused only when its turn came would leave the tags before it pushed.
    for (const tag of options.tags) registryHost(tag);
    this.collected = new CollectedImages(options.spool);
  }

  streamLayer(signal: AbortSignal): LayerConsumer | undefined {
    return this.collected.streamLayer(signal);
  }

  async write(image: Image): Promise<SinkResult> {
    const blobs = await this.collected.add(image);
    return { destination: this.destination, id: blobs.manifest.descriptor.digest, tags: [] };
  }

  /** Pushes to every tag; the result names each pushed reference as `repository@digest`. */
  async finish(signal: AbortSignal): Promise<SinkResult> {
    const { tags, onProgress, env, insecureRegistry, authFile } = this.options;
    const images = this.collected.images;
    const options = { signal, onProgress, env, insecureRegistry, authFile };
    const [only] = images;
    // One image is pushed as its manifest, several as an index of theirs.
    const push =
      images.length === 1 && only !== undefined
        ? { top: only.manifest, to: (tag: PushTarget) => pushImage(tag, pushable(only), options) }
        : this.indexPush(images, options);
    const pushed: string[] = [];
    for (const tag of tags) {
      onProgress({ kind: "phase", message: `pushing ${formatReference(tag)}` });
      const result = await push.to(tag);
      pushed.push(`${repositoryOf(tag)}@${result.digest}`);
    }
    return {
      destination: this.destination,
      id: push.top.descriptor.digest,
      tags: pushed,
      descriptor: push.top.descriptor,
    };
  }

  /** The index of `images`, with the annotations for it and for each image's entry, and its push. */
  private indexPush(images: readonly ImageBlobs[], options: PushOptions): TopPush {
    const { annotations } = this.options;
    const index = imageIndex(
      images.map((image) => ({
        image,
        annotations: annotationsFor(annotations, "manifest-descriptor", image.platform),
      })),
      annotationsFor(annotations, "index"),
    );
    return { top: index, to: (tag) => pushIndex(tag, images.map(pushable), index, options) };
  }
}
