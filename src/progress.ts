/**
 * Events the library reports while it works. The library never prints: the CLI renders these on stderr
 * (a spinner on a TTY, plain lines otherwise).
 */
export type ProgressEvent =
  /** A new phase started, e.g. "walking ./rootfs" or "loading into the Docker Engine". */
  | { readonly kind: "phase"; readonly message: string }
  /** Packing progress, cumulative. */
  | { readonly kind: "pack"; readonly entries: number; readonly bytes: number }
  /** A line of output from the engine or a child process. */
  | { readonly kind: "log"; readonly source: string; readonly line: string }
  /** Something the user should know but that does not stop the build. */
  | { readonly kind: "warning"; readonly message: string };

export type ProgressListener = (event: ProgressEvent) => void;

/** A listener that drops everything, for library callers that do not care. */
export const ignoreProgress: ProgressListener = () => {};

/** A byte count for progress messages, in binary units (`12.3 MiB`). */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 * 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  return `${(bytes / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}
