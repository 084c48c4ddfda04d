/**
 * Checking images with the `docker` CLI rather than the client mkbase uses, so a test never agrees with
 * mkbase only because both share a bug. Containers always run with `--rm --network none`: the test
 * machines have no bridge, and a test must not leave containers behind.
 */
import { randomBytes } from "node:crypto";
import { runChecked, runCommand, type RunOptions, type RunResult } from "./cli.js";

export interface DockerRunOptions extends RunOptions {
  /** Replaces the image's entrypoint (`--entrypoint`). */
  entrypoint?: string;
  /** `--user`, e.g. `"1000:1000"`. */
  user?: string;
  /** Variables set inside the container (`-e NAME=VALUE`), not in the docker client. */
  containerEnv?: Readonly<Record<string, string>>;
  /** More `docker run` flags, placed before the image (`-v`, `--platform`, …). */
  dockerArgs?: readonly string[];
}

/**
 * `docker run --rm --network none [flags] IMAGE ARGS...`; resolves with the result whatever the exit
 * status (a test may expect a failure). Pass `input` to give the container a stdin (`-i` is added).
 */
export function dockerRun(
  image: string,
  args: readonly string[],
  options: DockerRunOptions = {},
): Promise<RunResult> {
  const flags = ["run", "--rm", "--network", "none"];
  if (options.input !== undefined) flags.push("--interactive");
  if (options.entrypoint !== undefined) flags.push("--entrypoint", options.entrypoint);
  if (options.user !== undefined) flags.push("--user", options.user);
  for (const [name, value] of Object.entries(options.containerEnv ?? {}))
    flags.push("--env", `${name}=${value}`);
  flags.push(...(options.dockerArgs ?? []));
  return runCommand("docker", [...flags, image, ...args], options);
}

/**
 * `docker image inspect REF` parsed, or undefined when the engine has no such image. Any other failure
 * (engine unreachable, unparsable output) throws.
 */
export async function imageInspect(ref: string): Promise<DockerImageInspect | undefined> {
  const result = await runCommand("docker", ["image", "inspect", ref]);
  // The CLI exits 1 both for a missing image and for an unreachable engine; only the first prints an
  // empty JSON array on stdout, which tells them apart without reading the error text.
  let parsed: unknown;
  try {
    parsed = JSON.parse(result.stdout);
  } catch {
    parsed = undefined;
  }
  if (!Array.isArray(parsed)) {
    throw new Error(
      `docker image inspect ${ref} gave no JSON array: exit ${String(result.code)}\n${result.stderr}`,
    );
  }
  if (parsed.length === 0) return undefined;
  if (result.code !== 0 || parsed.length !== 1) {
    throw new Error(`docker image inspect ${ref}: exit ${String(result.code)}, ${parsed.length} results`);
  }
  return parsed[0] as DockerImageInspect;
}

/** The fields of `docker image inspect` that tests read; the rest is kept as `unknown`. */
export interface DockerImageInspect {
  Id: string;
  RepoTags: string[] | null;
  RepoDigests: string[] | null;
  Created: string;
  Architecture: string;
  Variant?: string;
  Os: string;
  Author?: string;
  Comment?: string;
  Size: number;
  Config: {
    Cmd?: string[] | null;
    Entrypoint?: string[] | null;
    Env?: string[] | null;
    Labels?: Record<string, string> | null;
    User?: string;
    WorkingDir?: string;
    ExposedPorts?: Record<string, unknown> | null;
    Volumes?: Record<string, unknown> | null;
    StopSignal?: string;
  } | null;
  RootFS: { Type: string; Layers?: string[] };
  [field: string]: unknown;
}

/** Every image ID the engine holds, intermediate ones included, for "no new image was created" checks. */
export async function imageIds(): Promise<Set<string>> {
  const stdout = await runChecked("docker", ["images", "--all", "--quiet", "--no-trunc"]);
  return new Set(stdout.split("\n").filter((line) => line !== ""));
}

/**
 * Removes images by tag or ID, for test cleanup: references the engine does not hold are skipped, and
 * `--force` removes an ID that has several tags. Throws if a present image cannot be removed.
 */
export async function removeImages(refs: Iterable<string>): Promise<void> {
  for (const ref of refs) {
    if ((await imageInspect(ref)) === undefined) continue;
    await runChecked("docker", ["image", "rm", "--force", ref]);
  }
}

/**
 * A tag no other test uses: `mkbase-test/PREFIX:RANDOM`. PREFIX is lowercased and every run of other
 * characters than `a-z0-9` becomes one `-`, because a repository name component may neither start nor
 * end with a separator nor hold two different ones in a row.
 */
export function uniqueTag(prefix: string): string {
  const name =
    prefix
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, "-")
      .replace(/^-+|-+$/g, "") || "image";
  return `mkbase-test/${name}:${randomBytes(6).toString("hex")}`;
}

/**
 * A label for a build that must fail, so that an image it left behind is recognised even while other
 * builds add images to the shared engine.
 */
export function failureLabel(): { flag: string; key: string; value: string } {
  const value = randomBytes(8).toString("hex");
  return { flag: `mkbase.test.failure=${value}`, key: "mkbase.test.failure", value };
}

/**
 * Images the engine gained since `before` that carry `label` or `tag`: what a failed build left. Other
 * builds may add images meanwhile; the label tells ours apart, since mkbase gives every image the config
 * it was asked for.
 */
export async function leftBehind(
  before: ReadonlySet<string>,
  label: { key: string; value: string },
  tag: string,
): Promise<string[]> {
  const found: string[] = [];
  for (const id of await imageIds()) {
    if (before.has(id)) continue;
    const inspected = await imageInspect(id);
    if (inspected === undefined) continue;
    if (inspected.Config?.Labels?.[label.key] === label.value || (inspected.RepoTags ?? []).includes(tag)) {
      found.push(id);
    }
  }
  return found;
}

/** The unix socket of the engine the tests use: the one DOCKER_HOST names, else the default. */
export function engineSocket(): string {
  const host = process.env.DOCKER_HOST;
  return host?.startsWith("unix://") ? host.slice("unix://".length) : "/var/run/docker.sock";
}
