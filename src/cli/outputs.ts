/**
 * `-o/--output type=…[,key=value…]` (buildx's names: docker, oci, tar, context, registry), `--push`,
 * and the set of sinks they make for a command. Every output of a command is fed from one walk: the file
 * and registry outputs are made once and take each build's image (one per platform), then `complete`
 * writes what covers them all (OCI index, archive, push) and the `--metadata-file`.
 */
import { rm } from "node:fs/promises";
import { resolve } from "node:path";
import type { BuildResult } from "../build.js";
import {
  makeCompression,
  parseCompressionAlgorithm,
  type Compression,
  type CompressionAlgorithm,
} from "../compress/compression.js";
import type { ImageStore } from "../docker/engine.js";
import { UsageError } from "../errors.js";
import { makeTemporaryDirectory, type TemporaryDirectory } from "../forced-exit.js";
import { OCI_ANNOTATION_KEYS, parseAnnotation, type Annotation } from "../image/annotations.js";
import { uncompressedManifest } from "../image/manifest.js";
import { formatPlatform, platformsMatch, type Platform } from "../image/platform.js";
import { formatReference, type Reference } from "../image/reference.js";
import type { ProgressEvent, ProgressListener } from "../progress.js";
import type { CompressedLayerSpool, LayerStore } from "../sinks/compressed-layer-spool.js";
import { isEngineResult, madeAnyway, type Sink, type SinkResult } from "../sinks/sink.js";
import type { ImageFlags } from "./image-options.js";
import { checkDestination, destinationKind, writeFileAtomically } from "../sinks/atomic-file.js";

export type OutputSpec =
  /** The Docker Engine (no dest) or a docker-archive file. */
  | { readonly type: "docker"; readonly dest?: string }
  /** An OCI layout: a tar (oci-archive) unless `tar=false`. */
  | { readonly type: "oci"; readonly dest: string; readonly tar: boolean; readonly compression: Compression }
  /** The normalised rootfs only. */
  | { readonly type: "tar"; readonly dest: string; readonly compression: Compression }
  /** A FROM scratch build context directory. */
  | { readonly type: "context"; readonly dest: string }
  | { readonly type: "registry"; readonly compression: Compression; readonly insecure: boolean };

/** Splits `a=1,"b=x,y",c=2` at commas outside double quotes, as buildx's CSV reader does. */
function splitFields(text: string): string[] {
  const fields: string[] = [];
  let current = "";
  let quoted = false;
  for (const c of text) {
    if (c === '"') quoted = !quoted;
    else if (c === "," && !quoted) {
      fields.push(current);
      current = "";
    } else current += c;
  }
  if (quoted) throw new UsageError(`--output ${text}: unterminated quote`);
  fields.push(current);
  return fields;
}

const KEYS: Readonly<Record<OutputSpec["type"], readonly string[]>> = {
  docker: ["dest"],
  oci: ["dest", "tar", "compression", "compression-level", "force-compression", "oci-mediatypes"],
  tar: ["dest", "compression", "compression-level"],
  context: ["dest"],
  registry: [
    "compression",
    "compression-level",
    "force-compression",
    "oci-mediatypes",
    "registry.insecure",
    "push",
  ],
};

function parseBool(value: string, key: string, origin: string): boolean {
  if (value === "true" || value === "1") return true;
  if (value === "false" || value === "0") return false;
  throw new UsageError(`${origin}: ${key}=${value} must be true or false`);
}

/** The compression a rootfs tar gets from its file name when `compression=` is not given. */
export function compressionForName(dest: string): CompressionAlgorithm {
  if (/\.(tar\.gz|tgz|gz)$/i.test(dest)) return "gzip";
  if (/\.(tar\.zst|tzst|zst|zstd)$/i.test(dest)) return "zstd";
  return "none";
}

/**
 * The compression a file name promises that mkbase does not write (`xz` for `rootfs.tar.xz`): without
 * `compression=`, such a file would hold a plain tar that `tar -xJf` cannot read.
 */
function foreignCompressionOf(dest: string): string | undefined {
  const match = /\.(?:tar\.)?(xz|txz|bz2|tbz2?|lz4|lzma|tlz|lz|z)$/i.exec(dest)?.[1]?.toLowerCase();
  if (match === undefined) return undefined;
  return match === "txz" ? "xz" : match.startsWith("tbz") ? "bz2" : match === "tlz" ? "lzma" : match;
}

/** The command that makes a file of the compression a name promises (`bz2` for `x.tar.bz2`). */
const COMPRESSOR_COMMANDS: Readonly<Record<string, string>> = { bz2: "bzip2", lz: "lzip", z: "compress" };

/**
 * Refuses an archive output named as a compressed file (`image.tar.gz`): the archive is a plain tar whose
 * layers are compressed inside, so `tar -xzf` on it would fail, whatever the name promised.
 *
 * @throws UsageError naming the compression the name promises, with the command that would give it
 */
function refuseCompressedName(dest: string, type: "docker" | "oci", origin: string): void {
  const own = compressionForName(dest);
  const promised = own === "none" ? foreignCompressionOf(dest) : own;
  if (promised === undefined) return;
  const what = type === "docker" ? "a docker-archive" : "an OCI archive";
  const command = COMPRESSOR_COMMANDS[promised] ?? promised;
  throw new UsageError(
    `${origin}: ${what} is a plain tar (its layers are compressed inside), not ${promised}`,
    {
      hint: `Name it .tar, or compress the archive yourself: -o type=${type},dest=- | ${command} > ${dest}.`,
    },
  );
}

/**
 * Parses one `-o` value.
 *
 * @throws UsageError for an unknown type or key, a missing dest, or a bad compression setting
 */
export function parseOutput(text: string): OutputSpec {
  const origin = `--output ${text}`;
  // buildx's shorthand: `-o -` is the rootfs as a tar on stdout.
  if (text === "-") return parseOutput("type=tar,dest=-");
  const values = new Map<string, string>();
  for (const field of splitFields(text)) {
    const eq = field.indexOf("=");
    if (eq <= 0) {
      throw new UsageError(`${origin}: "${field}" is not key=value`, {
        hint: "Write -o type=oci,dest=image.tar (buildx's syntax); a bare path is not an output here, `-o -` is the rootfs tar on stdout.",
      });
    }
    const key = field.slice(0, eq).trim().toLowerCase();
    if (values.has(key)) throw new UsageError(`${origin}: ${key} is given twice`);
    values.set(key, field.slice(eq + 1));
  }
  const type = values.get("type");
  if (type === undefined) {
    throw new UsageError(`${origin}: no type`, {
      hint: "Start with type=docker, type=oci, type=tar, type=context or type=registry.",
    });
  }
  if (!(type in KEYS)) {
    const hint =
      type === "local"
        ? "mkbase writes no unpacked tree: use type=tar for the rootfs, or type=context for a build context."
        : type === "image"
          ? "Use type=registry (or --push) to push, type=docker to load into the engine."
          : "Use type=docker, type=oci, type=tar, type=context or type=registry.";
    throw new UsageError(`${origin}: unknown output type "${type}"`, { hint });
  }
  const spec = type as OutputSpec["type"];
  for (const key of values.keys()) {
    if (key !== "type" && !KEYS[spec].includes(key)) {
      throw new UsageError(`${origin}: type=${spec} has no key "${key}"`, {
        hint:
          key === "name"
            ? "Name images with -t."
            : `Keys of type=${spec}: ${KEYS[spec].join(", ") || "none"}.`,
      });
    }
  }
  const dest = values.get("dest");
  if (dest === "") throw new UsageError(`${origin}: dest is empty`);
  if (dest === "-" && (spec === "context" || (spec === "oci" && values.get("tar") === "false"))) {
    throw new UsageError(`${origin}: dest=- (stdout) takes an archive, and this output is a directory`, {
      hint: "Give a directory name, or write an archive to stdout: -o type=oci,dest=- or -o type=docker,dest=-.",
    });
  }
  const requireDest = (): string => {
    if (dest === undefined) {
      throw new UsageError(`${origin}: type=${spec} needs dest=PATH`, {
        hint: `For example -o type=${spec},dest=${spec === "context" ? "./context" : spec === "tar" ? "rootfs.tar.gz" : "image.tar"}.`,
      });
    }
    return dest;
  };
  const compression = (fallback: CompressionAlgorithm): Compression => {
    const name = values.get("compression");
    const algorithm = name === undefined ? fallback : parseCompressionAlgorithm(name, origin);
    return makeCompression(algorithm, values.get("compression-level"), origin);
  };
  const mediaTypes = values.get("oci-mediatypes");
  if (mediaTypes !== undefined && !parseBool(mediaTypes, "oci-mediatypes", origin)) {
    throw new UsageError(`${origin}: mkbase writes OCI media types only`, {
      hint: "Drop oci-mediatypes=false.",
    });
  }
  // Every layer is compressed as it is packed, so buildx's force-compression (recompress a base image's
  // layers) always holds; its value must still be one.
  const force = values.get("force-compression");
  if (force !== undefined) parseBool(force, "force-compression", origin);
  switch (spec) {
    case "docker":
      if (dest !== undefined) refuseCompressedName(dest, spec, origin);
      return dest === undefined ? { type: spec } : { type: spec, dest };
    case "oci": {
      const tar = values.get("tar");
      const archive = tar === undefined ? true : parseBool(tar, "tar", origin);
      if (archive) refuseCompressedName(requireDest(), spec, origin);
      return { type: spec, dest: requireDest(), tar: archive, compression: compression("gzip") };
    }
    case "tar": {
      const path = requireDest();
      const foreign = values.has("compression") ? undefined : foreignCompressionOf(path);
      if (foreign !== undefined) {
        throw new UsageError(`${origin}: mkbase compresses a rootfs tar with gzip or zstd, not ${foreign}`, {
          hint: `Name it .tar, .tar.gz or .tar.zst, or compress the stream yourself: -o type=tar,dest=- | ${COMPRESSOR_COMMANDS[foreign] ?? foreign} > ${path}.`,
        });
      }
      return { type: spec, dest: path, compression: compression(compressionForName(path)) };
    }
    case "context":
      return { type: spec, dest: requireDest() };
    default: {
      const push = values.get("push");
      if (push !== undefined && !parseBool(push, "push", origin)) {
        throw new UsageError(`${origin}: type=registry always pushes`, { hint: "Drop push=false." });
      }
      const insecure = values.get("registry.insecure");
      return {
        type: spec,
        compression: compression("gzip"),
        insecure: insecure === undefined ? false : parseBool(insecure, "registry.insecure", origin),
      };
    }
  }
}

/**
 * The outputs of a command: every `-o`, plus `--push` as `type=registry`; the Docker Engine when there
 * is none. Two outputs to the same place are refused.
 */
export function parseOutputs(outputs: readonly string[], push: boolean | undefined): OutputSpec[] {
  const specs = outputs.map(parseOutput);
  if (push === true && !specs.some((spec) => spec.type === "registry")) {
    specs.push({
      type: "registry",
      compression: makeCompression("gzip", undefined, "--push"),
      insecure: false,
    });
  }
  if (specs.length === 0) specs.push({ type: "docker" });
  if (specs.some(writesStdout) && process.stdout.isTTY) {
    throw new UsageError("refusing to write an archive to a terminal (dest=-)", {
      hint: "Redirect standard output (`> image.tar`, `| docker load`) or give dest=FILE.",
    });
  }
  const places = new Set<string>();
  for (const spec of specs) {
    // Resolved: `same.tar` and `./same.tar` are one file, and the second output would replace the first.
    const place =
      "dest" in spec && spec.dest !== undefined
        ? `file ${spec.dest === "-" ? "-" : resolve(spec.dest)}`
        : spec.type;
    if (places.has(place)) {
      throw new UsageError(
        `two outputs go to the same ${place.startsWith("file") ? "dest" : "place"} (${place})`,
        {
          hint: "Give each -o its own dest, and --push or type=registry only once.",
        },
      );
    }
    places.add(place);
  }
  return specs;
}

/** Whether `spec` writes to standard output (`dest=-`), which then carries nothing else. */
export function writesStdout(spec: OutputSpec): boolean {
  return "dest" in spec && spec.dest === "-";
}

/** What `spec` makes, for a plan: "OCI archive base.tar (zstd-3)". */
export function describeOutput(spec: OutputSpec, via: ImageFlags["via"]): string {
  const compressed = (compression: Compression): string =>
    compression.algorithm === "none" ? "" : ` (${compressionKey(compression)})`;
  switch (spec.type) {
    case "docker":
      return spec.dest === undefined
        ? `Docker Engine (--via ${via ?? "load"})`
        : `docker-archive ${spec.dest}`;
    case "oci":
      return `OCI ${spec.tar ? "archive" : "layout"} ${spec.dest}${compressed(spec.compression)}`;
    case "tar":
      return `rootfs tar ${spec.dest}${compressed(spec.compression)}`;
    case "context":
      return `build context ${spec.dest}`;
    default:
      return `registry push${compressed(spec.compression)}`;
  }
}

/** Whether `spec` is the Docker Engine itself (`-o type=docker` without a file). */
function isEngineOutput(spec: OutputSpec): boolean {
  return spec.type === "docker" && spec.dest === undefined;
}

/** Whether `specs` include the Docker Engine (a `docker` output without dest). */
export function wantsEngine(specs: readonly OutputSpec[]): boolean {
  return specs.some(isEngineOutput);
}

export interface OutputSetOptions {
  readonly tags: readonly (Reference & { readonly tag: string })[];
  readonly annotations: readonly Annotation[];
  readonly env: Readonly<Record<string, string | undefined>>;
  /** How many images the command builds (one per platform). */
  readonly images: number;
  readonly insecureRegistry?: boolean;
  readonly registryAuthFile?: string;
  readonly metadataFile?: string;
}

function compressionKey(compression: Compression): string {
  return `${compression.algorithm}-${compression.level}`;
}

/**
 * The OCI outputs that keep their layers themselves instead of taking them from a shared spool: those
 * whose compression no other output shares. A layout directory renames each layer into `blobs/`; an
 * archive takes it straight into the file, which must be new or a regular file (stdout, a FIFO or a
 * device cannot go back to write a header).
 */
async function outputsOwningTheirLayers(specs: readonly OutputSpec[]): Promise<Set<OutputSpec>> {
  const users = new Map<string, number>();
  for (const spec of specs) {
    if (spec.type === "oci" || spec.type === "registry") {
      const key = compressionKey(spec.compression);
      users.set(key, (users.get(key) ?? 0) + 1);
    }
  }
  const owning = new Set<OutputSpec>();
  for (const spec of specs) {
    if (spec.type !== "oci" || users.get(compressionKey(spec.compression)) !== 1) continue;
    if (!spec.tar) {
      owning.add(spec);
      continue;
    }
    if ((await destinationKind(spec.dest)) === "file") owning.add(spec);
  }
  return owning;
}

/**
 * The sinks of a command's outputs. File and registry sinks are made once and see every build; the
 * engine sink is made per build by the caller (its tags differ per platform).
 */
export class OutputSet {
  private readonly builds: BuildResult[] = [];
  /** The `--json` object of each build (one per platform), printed in one by {@link completeOutputs}. */
  readonly reports: Record<string, unknown>[] = [];
  /** Warnings about the command as a whole (not one build's), for the same object's `warnings`. */
  readonly warnings: string[] = [];
  /** The lines each build printed on stdout, so that {@link completeOutputs} does not repeat them. */
  readonly printed: string[] = [];
  private readonly sinks: (Sink | "engine")[];
  private lastSinks: Sink[] = [];

  private constructor(
    readonly specs: readonly OutputSpec[],
    private readonly options: OutputSetOptions,
    private readonly relay: { listener: ProgressListener },
    private readonly spoolDir: TemporaryDirectory | undefined,
    private readonly spools: CompressedLayerSpool[],
    sinks: (Sink | "engine")[],
  ) {
    this.sinks = sinks;
  }

  /** Makes the sinks of `specs`; nothing is written until a build runs. */
  static async open(specs: readonly OutputSpec[], options: OutputSetOptions): Promise<OutputSet> {
    if (options.images > 1) {
      const single = specs.find(
        (spec) =>
          spec.type === "tar" ||
          spec.type === "context" ||
          (spec.type === "docker" && spec.dest !== undefined),
      );
      if (single !== undefined) {
        throw new UsageError(
          `-o type=${single.type},dest=… holds one image, and this command builds ${options.images}`,
          {
            hint: "Use -o type=oci (an image index for all platforms) or --push, or build one platform at a time.",
          },
        );
      }
    }
    const owning = await outputsOwningTheirLayers(specs);
    const needsSpool = specs.some(
      (spec) => (spec.type === "oci" || spec.type === "registry") && !owning.has(spec),
    );
    // Private (0700): the spooled layers hold every file of the tree.
    const spoolDir = needsSpool ? await makeTemporaryDirectory("mkbase-out-") : undefined;
    const spools = new Map<string, CompressedLayerSpool>();
    const ownSpools: CompressedLayerSpool[] = [];
    const sinks: (Sink | "engine")[] = [];
    // The sinks outlive one build's progress display: they report through this relay.
    const relay: { listener: ProgressListener } = { listener: () => undefined };
    const onProgress: ProgressListener = (event: ProgressEvent) => relay.listener(event);
    try {
      const { CompressedLayerSpool, TemporaryLayerFiles } =
        await import("../sinks/compressed-layer-spool.js");
      const spoolFor = (compression: Compression): CompressedLayerSpool => {
        const key = compressionKey(compression);
        let spool = spools.get(key);
        if (spool === undefined) {
          spool = new CompressedLayerSpool(
            compression,
            new TemporaryLayerFiles((spoolDir as TemporaryDirectory).path),
          );
          spools.set(key, spool);
        }
        return spool;
      };
      // The only output of its compression keeps its layers itself (see outputsOwningTheirLayers).
      const ownSpool = (compression: Compression, store: LayerStore): CompressedLayerSpool => {
        const spool = new CompressedLayerSpool(compression, store);
        ownSpools.push(spool);
        return spool;
      };
      const { tags, annotations } = options;
      for (const spec of specs) {
        switch (spec.type) {
          case "docker":
            if (spec.dest === undefined) {
              sinks.push("engine");
            } else {
              const { DockerArchiveFileSink } = await import("../sinks/docker-archive-file.js");
              sinks.push(new DockerArchiveFileSink({ dest: spec.dest, tags, onProgress }));
            }
            break;
          case "oci": {
            const common = { dest: spec.dest, tags, annotations, onProgress };
            if (spec.tar && owning.has(spec)) {
              const { ArchiveFile, OciArchiveSink } = await import("../sinks/oci-archive.js");
              const archive = new ArchiveFile(spec.dest);
              sinks.push(
                new OciArchiveSink({ ...common, spool: ownSpool(spec.compression, archive) }, archive),
              );
            } else if (spec.tar) {
              const { OciArchiveSink } = await import("../sinks/oci-archive.js");
              sinks.push(new OciArchiveSink({ ...common, spool: spoolFor(spec.compression) }));
            } else if (owning.has(spec)) {
              const { LayoutDirectory, LayoutLayerFiles, OciLayoutSink } =
                await import("../sinks/oci-layout.js");
              const layout = new LayoutDirectory(spec.dest);
              const spool = ownSpool(spec.compression, new LayoutLayerFiles(layout));
              sinks.push(new OciLayoutSink({ ...common, spool }, layout));
            } else {
              const { OciLayoutSink } = await import("../sinks/oci-layout.js");
              sinks.push(new OciLayoutSink({ ...common, spool: spoolFor(spec.compression) }));
            }
            break;
          }
          case "tar": {
            const { RootfsTarSink } = await import("../sinks/rootfs-tar.js");
            sinks.push(new RootfsTarSink({ dest: spec.dest, compression: spec.compression, onProgress }));
            break;
          }
          case "context": {
            const { BuildContextSink } = await import("../sinks/build-context.js");
            sinks.push(new BuildContextSink({ dest: spec.dest, onProgress }));
            break;
          }
          default: {
            const { RegistrySink } = await import("../sinks/registry.js");
            sinks.push(
              new RegistrySink({
                spool: spoolFor(spec.compression),
                tags,
                annotations,
                onProgress,
                env: options.env,
                insecureRegistry: spec.insecure || options.insecureRegistry === true,
                authFile: options.registryAuthFile,
              }),
            );
          }
        }
      }
    } catch (error) {
      await spoolDir?.remove();
      throw error;
    }
    return new OutputSet(specs, options, relay, spoolDir, [...spools.values(), ...ownSpools], sinks);
  }

  /** Every annotation of the command; the engine paths and the OCI outputs pick theirs. */
  get annotations(): readonly Annotation[] {
    return this.options.annotations;
  }

  /** Whether an output writes to standard output: the result is then not printed there. */
  get writesStdout(): boolean {
    return this.specs.some(writesStdout);
  }

  /** Whether one of the outputs is the Docker Engine (the caller then connects to it). */
  get wantsEngine(): boolean {
    return this.sinks.includes("engine");
  }

  /** The sinks for one build, in the order of the `-o` flags; `engine` stands in for the Docker Engine. */
  sinksForBuild(engine: Sink | undefined, onProgress: ProgressListener): Sink[] {
    this.relay.listener = onProgress;
    this.lastSinks = this.sinks.flatMap((sink) =>
      sink === "engine" ? (engine === undefined ? [] : [engine]) : [sink],
    );
    return this.lastSinks;
  }

  /** Records a finished build, for the metadata file and the final results. */
  recordBuild(result: BuildResult): void {
    this.builds.push(result);
  }

  /**
   * Writes what covers every build (archives, OCI index, registry push), then the metadata file.
   * Returns the final result of each output, in `-o` order.
   */
  async complete(signal: AbortSignal, onProgress: ProgressListener): Promise<SinkResult[]> {
    this.relay.listener = onProgress;
    // The engine and the single-image outputs were done with each build: build() returns their results
    // in the order of the sinks it was given (the engine has an image per platform; the single-image
    // outputs take one build only). The others finish now, in `-o` order.
    const done = new Map<Sink | "engine", SinkResult[]>();
    for (const sink of this.sinks) {
      if (sink !== "engine" && sink.finish !== undefined) continue;
      const index = this.lastSinks.findIndex((used) =>
        sink === "engine" ? !this.sinks.includes(used) : used === sink,
      );
      if (index >= 0)
        done.set(
          sink,
          this.builds.flatMap((built) => built.results[index] ?? []),
        );
    }
    for (const sink of this.sinks) {
      if (sink === "engine" || sink.finish === undefined) continue;
      try {
        done.set(sink, [await sink.finish(signal)]);
      } catch (error) {
        throw madeAnyway(error, [...done.values()].flat());
      }
    }
    const results = this.sinks.flatMap((sink) => done.get(sink) ?? []);
    if (this.options.metadataFile !== undefined) {
      await writeFileAtomically(this.options.metadataFile, `the metadata file ${this.options.metadataFile}`, [
        Buffer.from(`${JSON.stringify(buildMetadata(this.builds, results, this.options.tags), null, 2)}\n`),
      ]).catch((error: unknown) => Promise.reject(madeAnyway(error, results)));
    }
    return results;
  }

  /** Removes the spooled layers, and what an output began but did not complete. */
  async close(): Promise<void> {
    for (const sink of this.sinks) if (sink !== "engine") await sink.discard?.();
    for (const spool of this.spools) await spool.discard();
    await this.spoolDir?.remove();
  }
}

/**
 * The `--metadata-file` document, with buildx's keys: `containerimage.descriptor` and
 * `containerimage.digest` (the manifest, or the index of a multi-platform build, that the first OCI or
 * registry output holds; for the engine and docker archives the manifest of the uncompressed layers,
 * single-platform builds only), `containerimage.config.digest` (the image ID, single-platform builds
 * only), `image.name` (the tags, comma-separated), and `mkbase.outputs` with one entry per output (and
 * per platform in the engine).
 */
export function buildMetadata(
  builds: readonly BuildResult[],
  results: readonly SinkResult[],
  tags: readonly Reference[],
): Record<string, unknown> {
  const only = builds.length === 1 ? builds[0] : undefined;
  const indexed = results.find((r) => r.destination === "registry" || r.destination.startsWith("oci "));
  // Several images into the engine alone have no one digest: no index holds them.
  const digest =
    indexed?.id ??
    (only === undefined ? undefined : uncompressedManifest(only.image).manifest.descriptor.digest);
  return {
    "containerimage.descriptor":
      indexed?.descriptor ??
      (only === undefined ? undefined : uncompressedManifest(only.image).manifest.descriptor),
    "containerimage.digest": digest,
    "containerimage.config.digest": only?.imageId,
    "image.name": tags.length > 0 ? tags.map(formatReference).join(",") : undefined,
    "mkbase.outputs": results.map((r) => ({ destination: r.destination, id: r.id, tags: r.tags })),
  };
}

/**
 * What stdout shows for a finished command: the pushed references (`repository@digest`) when the first
 * output is a registry, else the first output's ID or digest.
 */
export function resultLines(results: readonly SinkResult[]): string[] {
  const [first] = results;
  if (first === undefined) return [];
  if (first.destination === "registry") return [...new Set(first.tags)];
  return [first.id];
}

/**
 * The annotations from the flags: the standard `org.opencontainers.image.*` ones first (on the manifest
 * and, for multi-platform builds, the index), then every `--annotation`, which may override them.
 * With one image there is no image index: an OCI layout's `index.json` describes the whole layout,
 * whose other images this image's source and version do not describe.
 */
export function annotationsFromFlags(flags: ImageFlags, images: number): Annotation[] {
  const standard: [string, string | undefined][] = [
    [OCI_ANNOTATION_KEYS.source, flags.imageSource],
    [OCI_ANNOTATION_KEYS.revision, flags.imageRevision],
    [OCI_ANNOTATION_KEYS.version, flags.imageVersion],
    [OCI_ANNOTATION_KEYS.baseName, flags.imageBaseName],
  ];
  return [
    ...standard.flatMap(([key, value]): Annotation[] =>
      value === undefined ? [] : [{ targets: images > 1 ? ["manifest", "index"] : ["manifest"], key, value }],
    ),
    ...(flags.annotation ?? []).map(parseAnnotation),
  ];
}

/** The flags given that annotate the image: `--annotation` and the standard `--image-*` ones. */
function annotationFlags(flags: ImageFlags): string[] {
  const given: [string, boolean][] = [
    ["--annotation", (flags.annotation ?? []).length > 0],
    ["--image-source", flags.imageSource !== undefined],
    ["--image-revision", flags.imageRevision !== undefined],
    ["--image-version", flags.imageVersion !== undefined],
    ["--image-base-name", flags.imageBaseName !== undefined],
  ];
  return given.filter(([, isGiven]) => isGiven).map(([flag]) => flag);
}

/** `--annotation is` or `--annotation and --image-version are`: the subject of a message about `flags`. */
function flagsSubject(flags: readonly string[]): string {
  return `${new Intl.ListFormat("en").format(flags)} ${flags.length === 1 ? "is" : "are"}`;
}

/**
 * Whether `spec` may keep the image's annotations. A rootfs tar and a build context hold no manifest.
 * The engine keeps them only in its containerd image store, which --via load gives the whole manifest:
 * its classic store reads the archive's `manifest.json`, and the import and build endpoints take no
 * manifest at all. Which store the engine has is known once connected: see
 * {@link checkEngineAnnotations}.
 */
function mayKeepAnnotations(spec: OutputSpec, via: ImageFlags["via"]): boolean {
  if (spec.type === "tar" || spec.type === "context") return false;
  if (isEngineOutput(spec)) return (via ?? "load") === "load";
  return true;
}

const KEEP_ANNOTATIONS_HINT =
  "Add an output that keeps them: -o type=oci,dest=…, a docker-archive file (-o type=docker,dest=FILE) or --push";

/**
 * The flags for one kind of output, before anything is built: without that output they would be
 * ignored (a forgotten --push, a --via with only file outputs, annotations on a rootfs tar), and an
 * auth file that cannot be used would otherwise fail the push only after the whole layer was packed and
 * compressed. `images` is how many images the command builds (a bootstrapper's: one).
 */
export async function checkOutputFlags(
  flags: ImageFlags,
  specs: readonly OutputSpec[],
  images = 1,
): Promise<void> {
  if (flags.via !== undefined && !wantsEngine(specs)) {
    throw new UsageError("--via chooses how the image enters the Docker Engine, and no output goes there", {
      hint: "Add -o type=docker (the engine) to the outputs, or leave --via out.",
    });
  }
  const annotating = annotationFlags(flags);
  if (annotating.length > 0 && !specs.some((spec) => mayKeepAnnotations(spec, flags.via))) {
    throw new UsageError(
      `${flagsSubject(annotating)} only kept by an OCI output, a docker-archive file or a push, and this command writes none`,
      {
        hint: `${KEEP_ANNOTATIONS_HINT}, or leave the flag out. The Docker Engine keeps them only in its containerd image store, with the default --via load.`,
      },
    );
  }
  checkIndexAnnotations(flags, specs, images);
  const given = [
    flags.registryAuthFile !== undefined ? "--registry-auth-file" : undefined,
    flags.insecureRegistry === true ? "--insecure-registry" : undefined,
  ].filter((flag) => flag !== undefined);
  if (given.length === 0) return;
  if (!specs.some((spec) => spec.type === "registry")) {
    throw new UsageError(`${flagsSubject(given)} only used by a push, and this command pushes nothing`, {
      hint: "Add --push (or -o type=registry) to push the image, or leave the flag out.",
    });
  }
  if (flags.registryAuthFile !== undefined) {
    const { readAuthFile } = await import("../registry/auth.js");
    await readAuthFile(flags.registryAuthFile);
  }
}

/**
 * Refuses annotations that only the Docker Engine would get, once it is known to drop them: its classic
 * image store makes the image from the archive's `manifest.json`, without the manifest that holds them.
 * Checked when the engine is connected, before the source is opened.
 */
export function checkEngineAnnotations(
  flags: ImageFlags,
  specs: readonly OutputSpec[],
  store: ImageStore | undefined,
): void {
  const annotating = annotationFlags(flags);
  if (store !== "classic" || annotating.length === 0) return;
  const elsewhere = specs.some((spec) => !isEngineOutput(spec) && mayKeepAnnotations(spec, flags.via));
  if (elsewhere) return;
  throw new UsageError(
    `${flagsSubject(annotating)} lost in the Docker Engine's classic image store, and no other output keeps annotations`,
    {
      hint: `${KEEP_ANNOTATIONS_HINT}, switch the engine to the containerd image store, or leave the flag out.`,
    },
  );
}

/**
 * Refuses an `--annotation` limited to a platform (`manifest[linux/arm64]:k=v`) that none of the images
 * built has: it would reach no manifest, and the command would succeed without it. Checked once the
 * platforms are known (a program's from its ELF header), before anything is packed.
 */
export function checkAnnotationPlatforms(flags: ImageFlags, platforms: readonly Platform[]): void {
  for (const text of flags.annotation ?? []) {
    const wanted = parseAnnotation(text).platform;
    if (wanted === undefined || platforms.some((platform) => platformsMatch(wanted, platform))) continue;
    const built = new Intl.ListFormat("en").format(platforms.map(formatPlatform));
    throw new UsageError(`--annotation ${text}: no image for that platform is built, only for ${built}`, {
      hint: "Name a platform the command builds, or leave out [os/arch] to annotate every manifest.",
    });
  }
}

/** Whether the output holds an image index when several images go into it (OCI and registry outputs). */
function holdsIndex(spec: OutputSpec): boolean {
  return spec.type === "oci" || spec.type === "registry";
}

/**
 * Refuses an annotation for an image index, or for a manifest's entry in one, that an output would
 * drop: one image is pushed, loaded or archived for docker as a manifest alone, with no index to carry
 * it. BuildKit refuses `index:` and `index-descriptor:` ones so ("index annotations not supported for
 * single platform export"); a `manifest-descriptor:` one is refused alike, since buildx, whose
 * attestations make an index of a single platform's push too, puts it on the manifest's entry there.
 * An OCI output's `index.json` carries `index:` ones; its entry for one image is the manifest's
 * descriptor, which takes `manifest-descriptor:` ones, and no descriptor of an index is there for
 * `index-descriptor:`.
 */
function checkIndexAnnotations(flags: ImageFlags, specs: readonly OutputSpec[], images: number): void {
  if (images !== 1) return;
  for (const annotation of flags.annotation ?? []) {
    const { targets } = parseAnnotation(annotation);
    const dropping = specs.find(
      (spec) =>
        (spec.type === "registry" || spec.type === "docker") &&
        targets.some((target) => target !== "manifest"),
    );
    const oci = targets.includes("index-descriptor") ? specs.find((spec) => spec.type === "oci") : undefined;
    const output =
      dropping !== undefined
        ? dropping.type === "registry"
          ? "a push"
          : "a docker output"
        : oci !== undefined
          ? "an OCI output"
          : undefined;
    if (output === undefined) continue;
    throw new UsageError(
      `--annotation ${annotation}: ${output} of one image has no image index to carry it`,
      {
        hint:
          dropping === undefined
            ? "Annotate the manifest (manifest:, the default) or its entry in index.json (manifest-descriptor:) instead."
            : "Annotate the manifest (manifest:, the default) instead, or write it to -o type=oci, whose index.json takes index and manifest-descriptor annotations.",
      },
    );
  }
}

/** The outputs of a command from its flags; `images` is how many images it builds (one per platform). */
export async function openOutputs(
  flags: ImageFlags,
  options: {
    readonly tags: readonly (Reference & { readonly tag: string })[];
    readonly env: Readonly<Record<string, string | undefined>>;
    readonly images: number;
  },
): Promise<OutputSet> {
  const specs = await checkOutputs(flags, options.images);
  return OutputSet.open(specs, {
    ...options,
    annotations: annotationsFromFlags(flags, options.images),
    insecureRegistry: flags.insecureRegistry,
    registryAuthFile: flags.registryAuthFile,
    metadataFile: flags.metadataFile,
  });
}

/**
 * The outputs' flags checked, every destination tested and the previous `--iidfile` removed: what a
 * command does before any work, so that a build that fails early (a missing program) fails as one that
 * fails late. Returns the parsed outputs.
 */
export async function checkOutputs(flags: ImageFlags, images: number): Promise<OutputSpec[]> {
  const specs = parseOutputs(flags.output ?? [], flags.push);
  await checkOutputFlags(flags, specs, images);
  if (images > 1 && flags.iidfile !== undefined && !specs.some(holdsIndex)) {
    throw new UsageError(
      "--iidfile holds one image ID, and --platform os/arch=FILE gives the engine one image per platform",
      {
        hint: "Add an OCI or registry output (-o type=oci,dest=… or --push): the file then gets the digest of its index. Or read the IDs from stdout (one per line), or use --json.",
      },
    );
  }
  if (flags.json === true && specs.some(writesStdout)) {
    throw new UsageError("--json prints to stdout, which carries the archive (dest=-)", {
      hint: "Use --metadata-file FILE or --iidfile FILE for the result, or give dest=FILE.",
    });
  }
  // Archives are written only once the layer is packed, after a bootstrap of minutes: a path where no
  // file can be made (a missing directory, a read-only place) fails now.
  for (const spec of specs) {
    if (!("dest" in spec) || spec.dest === undefined || spec.dest === "-") continue;
    if (spec.type === "context") {
      const { checkContextDest } = await import("../sinks/build-context.js");
      await checkContextDest(spec.dest);
      continue;
    }
    if (spec.type === "oci" && !spec.tar) {
      const { checkLayoutDest } = await import("../sinks/oci-layout.js");
      await checkLayoutDest(spec.dest);
      continue;
    }
    const kind =
      spec.type === "docker" ? "docker-archive" : spec.type === "oci" ? "OCI archive" : "rootfs tar";
    await checkDestination(spec.dest, `the ${kind} ${spec.dest}`);
  }
  // Each file is renamed into place whole, so of two at one path only the last would stay (an archive
  // replaced by the image ID); and --iidfile is removed below, before the build, whatever it is.
  const files = new Map<string, string>();
  for (const spec of specs) {
    if ("dest" in spec && spec.dest !== undefined && spec.dest !== "-")
      files.set(resolve(spec.dest), `-o type=${spec.type},dest=${spec.dest}`);
  }
  for (const [flag, file] of [
    ["--iidfile", flags.iidfile],
    ["--metadata-file", flags.metadataFile],
  ] as const) {
    if (file === undefined || file === "-") continue;
    const other = files.get(resolve(file));
    if (other !== undefined) {
      throw new UsageError(`${flag} ${file} is the same file as ${other}`, {
        hint: "Give each its own path.",
      });
    }
    files.set(resolve(file), `${flag} ${file}`);
  }
  // Written once the image exists: a wrong path must fail now, before anything is made or tagged.
  for (const [flag, file, what] of [
    ["--iidfile", flags.iidfile, "the image ID file"],
    ["--metadata-file", flags.metadataFile, "the metadata file"],
  ] as const) {
    if (file === undefined) continue;
    if (file === "-") {
      throw new UsageError(`${flag} - would write to stdout, which already carries the result`, {
        hint: "Stdout holds the image ID, or with --json the whole result as one object; give the flag a file name.",
      });
    }
    await checkDestination(file, `${what} ${file}`);
  }
  // As buildx does: a build that fails must not leave the previous build's ID where a script reads it.
  if (flags.iidfile !== undefined) await rm(flags.iidfile, { force: true });
  return specs;
}

/**
 * Completes outputs that several builds went into (`mkbase scratch` with one program per platform):
 * writes the index, archives and pushes with a progress display of its own, writes `--iidfile` (the
 * first OCI or registry output's index digest), and prints what the non-engine outputs hold now (the
 * engine's images were printed per build).
 */
export async function completeOutputs(
  outputs: OutputSet,
  context: { readonly signal: AbortSignal; readonly stdout: NodeJS.WritableStream },
  flags: ImageFlags,
): Promise<void> {
  const { makeRenderer } = await import("./render.js");
  const renderer = await makeRenderer({ quiet: flags.quiet === true });
  let results: SinkResult[];
  try {
    results = await outputs.complete(context.signal, renderer.onProgress);
  } catch (error) {
    renderer.stop(false);
    throw error;
  }
  renderer.stop(true);
  const shown = results.filter((result) => !isEngineResult(result));
  const [index] = shown;
  if (flags.iidfile !== undefined && index !== undefined) {
    await writeFileAtomically(flags.iidfile, `the image ID file ${flags.iidfile}`, [
      Buffer.from(index.id),
    ]).catch((error: unknown) => Promise.reject(madeAnyway(error, results)));
  }
  if (outputs.writesStdout) return;
  if (flags.json) {
    const completed = shown.map((r) => ({ id: r.id, tags: r.tags, destination: r.destination }));
    context.stdout.write(
      `${JSON.stringify({ platforms: outputs.reports, outputs: completed, warnings: outputs.warnings })}\n`,
    );
  } else {
    // One platform's build already printed its OCI output's ID, which the completed output keeps.
    for (const line of resultLines(shown)) {
      if (!outputs.printed.includes(line)) context.stdout.write(`${line}\n`);
    }
  }
}
