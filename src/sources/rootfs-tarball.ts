/**
 * `mkbase tar FILE|-|URL`: a root filesystem packed as a tarball (ubuntu-base, Alpine minirootfs, a
 * `docker export`, an mmdebstrap output…). The archive is read as a stream and never extracted on the
 * host: its entries go straight to the pipeline, in archive order.
 */
import { createHash } from "node:crypto";
import { closeSync, createReadStream, fstatSync, open } from "node:fs";
import { access, constants, stat } from "node:fs/promises";
import type { IncomingMessage } from "node:http";
import { Socket } from "node:net";
import { basename } from "node:path";
import type { Readable } from "node:stream";
import {
  errnoCode,
  InterruptedError,
  MkbaseError,
  SourceError,
  throwIfAborted,
  UsageError,
} from "../errors.js";
import { isUntrustedCertificate } from "../net/extra-ca.js";
import { httpGet } from "../net/http-get.js";
import { proxyHint } from "../net/proxy.js";
import type { ProgressListener } from "../progress.js";
import { decompress } from "../tar/decompress.js";
import { displayPath, type EntrySource, type TarEntry } from "../tar/entry.js";
import { ArchiveEntryChecker, readTar } from "../tar/read.js";
import { isImageArchive, wrappedRootfsDirs } from "./image-archive.js";

export interface RootfsTarballOptions {
  /** A file path, `-` for stdin, or an `http://` / `https://` URL. */
  input: string;
  /** Expected sha256 of the raw (possibly compressed) bytes, as 64 hex digits (`sha256:` prefix allowed). */
  sha256?: string;
  /** Allow a URL without `sha256`. */
  insecure?: boolean;
  /** What `-` reads; `process.stdin` when not given. */
  stdin?: NodeJS.ReadableStream;
  onProgress?: ProgressListener;
}

/** Large reads keep the per-chunk cost of the whole pipeline low. */
const READ_CHUNK = 1024 * 1024;
const SHA256_HEX = /^[0-9a-f]{64}$/;
const URL_SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;

type Location =
  | { readonly kind: "file"; readonly path: string }
  | { readonly kind: "stdin" }
  | { readonly kind: "url"; readonly url: URL; readonly shown: string };

/** An {@link EntrySource} over a (possibly compressed) tarball from a file, stdin or a URL. */
export class RootfsTarballSource implements EntrySource {
  readonly description: string;
  private readonly location: Location;
  private readonly sha256: string | undefined;
  private readonly options: RootfsTarballOptions;

  /**
   * Checks the options that need no I/O.
   *
   * @throws UsageError for a malformed `sha256`, an unsupported URL scheme, a URL with neither
   *   `sha256` nor `insecure`, or `insecure` without a URL.
   */
  constructor(options: RootfsTarballOptions) {
    this.options = options;
    this.sha256 = options.sha256 === undefined ? undefined : parseSha256(options.sha256);
    this.location = locate(options.input);
    if (this.location.kind !== "url" && options.insecure === true) {
      // It only lets a download go unchecked: given here, the user may think it does more.
      const given = this.location.kind === "stdin" ? "standard input" : this.location.path;
      throw new UsageError(`--insecure applies to a URL, and ${given} is not one`, {
        hint: "Drop --insecure: a local archive or stdin is read as it is (--sha256 HEX checks it).",
      });
    }
    if (this.location.kind === "url" && this.sha256 === undefined && options.insecure !== true) {
      throw new UsageError(`refusing to download ${this.location.shown} without --sha256`, {
        hint: "pass the archive's published checksum with --sha256 HEX, or pass --insecure to use it unverified",
      });
    }
    this.description = describe(this.location);
  }

  /**
   * Creates the source and checks that its input can be read; the CLI calls this before contacting the
   * engine so that a typo fails at once.
   */
  static async create(options: RootfsTarballOptions): Promise<RootfsTarballSource> {
    const source = new RootfsTarballSource(options);
    await source.validate();
    return source;
  }

  /**
   * Checks that a file input exists, is not a directory and is readable, and that stdin is not a
   * terminal. URLs are checked when fetched.
   *
   * @throws SourceError or UsageError saying what to do.
   */
  async validate(): Promise<void> {
    const location = this.location;
    if (location.kind === "stdin") {
      if ((this.stdinStream() as { isTTY?: boolean }).isTTY === true) {
        throw new UsageError("refusing to read a tarball from a terminal", {
          hint: "pipe the archive in (… | mkbase tar -) or give its path",
        });
      }
      return;
    }
    if (location.kind !== "file") return;
    let stats;
    try {
      stats = await stat(location.path);
      await access(location.path, constants.R_OK);
    } catch (error) {
      throw fileError(location.path, error);
    }
    if (stats.isDirectory()) {
      throw new SourceError(`${location.path} is a directory, not a tarball`, {
        path: location.path,
        hint: `to build from a root filesystem directory, use \`mkbase dir ${location.path}\``,
      });
    }
  }

  async *entries(signal: AbortSignal): AsyncGenerator<TarEntry> {
    await this.validate();
    throwIfAborted(signal);
    const location = this.location;
    if (location.kind === "url" && this.sha256 === undefined) {
      this.warn(`downloading ${location.shown} without --sha256: its content is not verified`);
    }
    let raw = this.rawChunks(signal);
    if (this.sha256 !== undefined) raw = verifySha256(raw, this.sha256, this.description);
    const checker = new ArchiveEntryChecker((message) => this.warn(message));
    const topLevel = new Set<string>();
    /** Names right below the first top-level one, gathered only while it is the only one. */
    const belowTop = new Set<string>();
    for await (const entry of readTar(decompress(raw, signal), signal, (message) => this.warn(message))) {
      const checked = checker.check(entry);
      if (checked === undefined) continue;
      const path = checked.path;
      const slash = path.indexOf(0x2f);
      topLevel.add(path.toString("latin1", 0, slash < 0 ? path.length : slash));
      if (slash >= 0 && topLevel.size === 1) {
        const next = path.indexOf(0x2f, slash + 1);
        belowTop.add(path.toString("latin1", slash + 1, next < 0 ? path.length : next));
      }
      yield checked;
    }
    // Checked at the end, before the image exists: failing here stops the build like any bad entry. An
    // image layout archived by its directory (tar -cf img.tar img/) is one too.
    if (isImageArchive(topLevel) || (topLevel.size === 1 && isImageArchive(belowTop))) {
      throw new SourceError(
        `${this.description} is a container image archive (from docker save, or an OCI layout), not a root filesystem`,
        {
          hint: "Load it with `docker load -i FILE`, or `skopeo copy oci-archive:FILE docker-daemon:NAME:TAG` for an OCI archive the engine does not load. To flatten an image into a rootfs tarball, `docker export` a container made from it and give that to mkbase tar.",
        },
      );
    }
    const wrapped = wrappedRootfsDirs(topLevel, belowTop);
    const [first] = wrapped;
    if (first !== undefined) {
      const top = displayPath(Buffer.from([...topLevel][0] ?? "", "latin1"));
      this.warn(
        `every entry of the archive lies below "${top}/", which holds ${wrapped.join(", ")}: the image has ` +
          `/${top}/${first}, not /${first}; to put them at the root, archive the directory's content ` +
          `(tar -C ${top} -c .)`,
      );
    }
  }

  private warn(message: string): void {
    this.options.onProgress?.({ kind: "warning", message });
  }

  private stdinStream(): NodeJS.ReadableStream {
    return this.options.stdin ?? process.stdin;
  }

  private rawChunks(signal: AbortSignal): AsyncGenerator<Buffer> {
    const location = this.location;
    switch (location.kind) {
      case "file":
        return readFile(location.path, signal);
      case "stdin":
        return readStdin(this.stdinStream(), signal);
      case "url":
        return download(location.url, location.shown, signal);
    }
  }
}

function parseSha256(value: string): string {
  const hex = value
    .trim()
    .toLowerCase()
    .replace(/^sha256:/, "");
  if (!SHA256_HEX.test(hex)) {
    throw new UsageError(`--sha256 "${value}" is not a sha256 digest`, {
      hint: "give the 64 hexadecimal digits of the archive's sha256 (as printed by sha256sum)",
    });
  }
  return hex;
}

function locate(input: string): Location {
  if (input === "-") return { kind: "stdin" };
  if (URL_SCHEME.test(input)) {
    let url: URL;
    try {
      url = new URL(input);
    } catch (error) {
      throw new UsageError(`"${input}" is not a valid URL`, { cause: error, hint: "check the URL" });
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new UsageError(`unsupported URL scheme "${url.protocol}" in ${input}`, {
        hint: "give an http:// or https:// URL, a file path, or - for stdin",
      });
    }
    return { kind: "url", url, shown: withoutCredentials(url) };
  }
  return { kind: "file", path: input };
}

/** The URL as it may appear in messages: user and password removed. */
function withoutCredentials(url: URL): string {
  const shown = new URL(url.href);
  shown.username = "";
  shown.password = "";
  return shown.href;
}

function describe(location: Location): string {
  switch (location.kind) {
    case "stdin":
      return "tarball from stdin";
    case "file":
      return `tarball ${basename(location.path)}`;
    case "url":
      return `tarball ${basename(location.url.pathname) || location.url.host}`;
  }
}

function fileError(path: string, error: unknown): SourceError {
  const code = errnoCode(error);
  if (code === "ENOENT" || code === "ENOTDIR") {
    return new SourceError(`${path} does not exist`, {
      cause: error,
      path,
      hint: "check the path of the tarball",
    });
  }
  if (code === "EACCES" || code === "EPERM") {
    return new SourceError(`${path} is not readable`, {
      cause: error,
      path,
      hint: "check the file's permissions, or run mkbase as a user that can read it",
    });
  }
  return new SourceError(`cannot read ${path}${code === undefined ? "" : ` (${code})`}`, {
    cause: error,
    path,
    hint: "check the path of the tarball",
  });
}

/**
 * The chunks of `stream`, ended by an {@link InterruptedError} as soon as `signal` aborts. A writer that
 * stalls (a hung ssh behind a pipe, or behind a FIFO such as `<(…)`) would otherwise keep the pending
 * read, and with it the whole build, waiting after a Ctrl-C or a SIGTERM: destroying a file stream does
 * not end a read of a FIFO that is under way, so each read is raced with the signal.
 */
async function* chunksUntilAborted(
  stream: NodeJS.ReadableStream,
  signal: AbortSignal,
): AsyncGenerator<Buffer | string> {
  const chunks = (stream as AsyncIterable<Buffer | string>)[Symbol.asyncIterator]();
  let stop = (): void => {};
  const aborted = new Promise<never>((_, reject) => {
    stop = () => reject(new InterruptedError("interrupted", { cause: signal.reason }));
  });
  // Settled by an abort while no read waits; the rejection is read through the race.
  aborted.catch(() => {});
  signal.addEventListener("abort", stop, { once: true });
  try {
    throwIfAborted(signal);
    while (true) {
      const next = await Promise.race([chunks.next(), aborted]);
      // A chunk that was already buffered wins the race against an abort.
      throwIfAborted(signal);
      if (next.done === true) return;
      yield next.value;
    }
  } finally {
    signal.removeEventListener("abort", stop);
    (stream as Partial<Pick<Readable, "destroy">>).destroy?.();
  }
}

/**
 * A stream of the file at `path`. A FIFO (`mkbase tar <(ssh host tar -c -C / .)`) is read as a pipe, as
 * stdin is: a file stream reads in node's thread pool, where a read of a FIFO whose writer stalls cannot
 * be stopped, and would keep mkbase from exiting after a Ctrl-C.
 */
async function openFile(path: string): Promise<NodeJS.ReadableStream> {
  const fd = await new Promise<number>((resolve, reject) => {
    open(path, "r", (error, opened) => (error === null ? resolve(opened) : reject(error)));
  });
  let fifo: boolean;
  try {
    fifo = fstatSync(fd).isFIFO();
  } catch (error) {
    closeSync(fd);
    throw error;
  }
  if (fifo) return new Socket({ fd, readable: true, writable: false });
  return createReadStream(path, { fd, highWaterMark: READ_CHUNK });
}

async function* readFile(path: string, signal: AbortSignal): AsyncGenerator<Buffer> {
  try {
    const stream = await openFile(path);
    for await (const chunk of chunksUntilAborted(stream, signal)) yield chunk as Buffer;
  } catch (error) {
    throwIfAborted(signal);
    if (error instanceof MkbaseError) throw error;
    throw fileError(path, error);
  }
}

async function* readStdin(stdin: NodeJS.ReadableStream, signal: AbortSignal): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of chunksUntilAborted(stdin, signal)) {
      yield typeof chunk === "string" ? Buffer.from(chunk) : chunk;
    }
  } catch (error) {
    throwIfAborted(signal);
    if (error instanceof MkbaseError) throw error;
    throw new SourceError(`reading the tarball from stdin failed${describeCode(error)}`, {
      cause: error,
      hint: "check the command that writes to mkbase's stdin",
    });
  }
}

async function* download(url: URL, shown: string, signal: AbortSignal): AsyncGenerator<Buffer> {
  let response: IncomingMessage;
  try {
    response = await httpGet(url, signal);
  } catch (error) {
    throwIfAborted(signal);
    if (error instanceof MkbaseError) throw error;
    throw new SourceError(`could not download ${shown}${describeCause(error)}`, {
      cause: error,
      hint: isUntrustedCertificate(error)
        ? "the server's certificate is not trusted: if its CA is a private one, name a PEM file holding it in NODE_EXTRA_CA_CERTS"
        : (proxyHint(url) ?? "check the URL and the network connection"),
    });
  }
  try {
    const status = response.statusCode ?? 0;
    if (status < 200 || status > 299) {
      throw new SourceError(
        `downloading ${shown} failed: HTTP ${status} ${response.statusMessage ?? ""}`.trim(),
        {
          hint:
            proxyHint(url, status) ??
            (status === 404 ? "check the URL" : "check the URL, or try again later"),
        },
      );
    }
    for await (const chunk of response as AsyncIterable<Buffer>) yield chunk;
  } catch (error) {
    throwIfAborted(signal);
    if (error instanceof MkbaseError) throw error;
    throw new SourceError(`the download of ${shown} was interrupted${describeCode(error)}`, {
      cause: error,
      hint: "check the network connection and try again",
    });
  } finally {
    response.destroy();
  }
}

/** ` (ECONNREFUSED)` for a system error. */
function describeCode(error: unknown): string {
  const code = errnoCode(error);
  return code === undefined ? "" : ` (${code})`;
}

/**
 * {@link describeCode}, or else the error's own words: a redirect loop or a redirect to another scheme
 * has no code, and "could not download URL" alone leaves the user to guess.
 */
function describeCause(error: unknown): string {
  if (errnoCode(error) !== undefined || !(error instanceof Error)) return describeCode(error);
  return `: ${error.message}`;
}

/**
 * Passes `chunks` through while hashing them; at their end, throws when the digest differs. The throw
 * reaches the entry consumer before the last entry is acknowledged, so no image is completed from
 * bytes that were not the expected ones.
 */
async function* verifySha256(
  chunks: AsyncIterable<Buffer>,
  expected: string,
  what: string,
): AsyncGenerator<Buffer> {
  const hash = createHash("sha256");
  for await (const chunk of chunks) {
    hash.update(chunk);
    yield chunk;
  }
  const actual = hash.digest("hex");
  if (actual !== expected) {
    throw new SourceError(`SHA-256 mismatch for ${what}: expected ${expected}, got ${actual}`, {
      hint: "the file is corrupt or not the one you meant; check the --sha256 value against the publisher's checksums",
    });
  }
}
