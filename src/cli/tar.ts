/** `mkbase tar FILE|-|URL`: a root filesystem tarball into an image, re-packed without extracting it. */
import type { Command } from "commander";
import { CHOWN_HELP, addImageOptions, parseChown, type ImageFlags } from "./image-options.js";
import type { CommandContext } from "./run-build.js";

interface TarFlags extends ImageFlags {
  readonly sha256?: string;
  readonly insecure?: boolean;
  readonly chown?: string;
}

export function registerTarCommand(
  program: Command,
  context: () => CommandContext,
  done: (code: number) => void,
): void {
  const command = program
    .command("tar")
    .argument("<archive>", "rootfs tarball: a file, - for stdin, or an http(s) URL")
    .summary("build an image from a root filesystem tarball (file, stdin or URL)")
    .description(
      "Build an image from a root filesystem tarball. Plain, gzip, bzip2, xz and zstd archives are detected by " +
        "their first bytes. The archive is read as a stream and re-packed through the same normaliser as `mkbase " +
        "dir`; it is never extracted on this machine. Entries with `..` components, hardlinks to missing targets, " +
        "entries under a symlinked parent, duplicate paths and overlay whiteouts (.wh.*) are refused; absolute " +
        "paths are made relative with a warning. GNU sparse files (tar -S) become whole files, zeros in their " +
        "holes. A URL needs --sha256 (or --insecure).",
    )
    .option(
      "--sha256 <hex>",
      "expected sha256 of the archive as given (compressed bytes); the build fails on a mismatch",
    )
    .option("--insecure", "download a URL without --sha256 (its content is not verified)")
    .option("--chown <uid[:gid]>", CHOWN_HELP);
  addImageOptions(command)
    .addHelpText(
      "after",
      `
Examples:
  mkbase tar ubuntu-base-24.04-base-amd64.tar.gz -t ubuntu:24.04 --label org.opencontainers.image.version=24.04
  curl -sL https://example.org/rootfs.tar.xz | mkbase tar - -t x:1
  mkbase tar https://example.org/rootfs.tar.gz --sha256 <hex> -t x:1`,
    )
    .action(async (archive: string, flags: TarFlags) => {
      const { runBuild } = await import("./run-build.js");
      const { RootfsTarballSource } = await import("../sources/rootfs-tarball.js");
      const { excludeEntries, loadPathFilter } = await import("../tar/exclude.js");
      const { withOwner } = await import("../tar/normalize.js");
      const owner = flags.chown === undefined ? undefined : parseChown(flags.chown, undefined);
      const filter = await loadPathFilter(flags.exclude, flags.excludeFrom);
      done(
        await runBuild(
          context(),
          flags,
          async (onProgress) => {
            const source = await RootfsTarballSource.create({
              input: archive,
              sha256: flags.sha256,
              insecure: flags.insecure,
              onProgress,
            });
            const kept = filter.isEmpty
              ? source
              : {
                  description: source.description,
                  entries: (signal: AbortSignal) => excludeEntries(source.entries(signal), filter),
                };
            return owner === undefined ? kept : withOwner(kept, owner);
          },
          "mkbase tar",
        ),
      );
    });
}
