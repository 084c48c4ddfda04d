/**
 * What every bootstrapper does once its tool has finished: make sure nothing is left mounted in the
 * tree, record the installed packages, apply the cleanup profile (with `--no-clean`, remove only the
 * secrets), and say what the image should carry (labels, the distribution's date) — then hand the
 * directory to the directory source.
 */
import type { ProgressListener } from "../../progress.js";
import { writeFileAtomically } from "../../sinks/atomic-file.js";
import type { EntrySource } from "../../tar/entry.js";
import type { PathFilter } from "../../tar/exclude.js";
import { RootfsDirSource } from "../rootfs-dir.js";
import { cleanRootfs, removeSecrets, type Distribution } from "./cleanup.js";
import { DevNodesSource } from "./dev-nodes.js";
import {
  formatPackageList,
  packageListLabel,
  readInstalledPackages,
  type InstalledPackage,
} from "./installed-packages.js";
import { unmountUnder } from "./workspace.js";

/** Label holding the installed packages (`name=version,…`). */
export const PACKAGES_LABEL = "mkbase.packages";
/** Label present (value `true`) when signatures were not checked. */
export const INSECURE_LABEL = "mkbase.insecure";

export interface FinishOptions {
  readonly distribution: Distribution;
  /** Apply the cleanup profile (`--no-clean` turns it off; secrets are removed either way). */
  readonly clean: boolean;
  readonly slim: boolean;
  /** The build epoch, when known: dates inside files are clamped to it. */
  readonly epoch?: number;
  readonly insecure: boolean;
  /** `--package-list FILE`. */
  readonly packageListFile?: string;
  /** Add the minimal `/dev` node set to the image (pacstrap). */
  readonly devNodes?: boolean;
  /** `--exclude` patterns of the shared image flags. */
  readonly filter?: PathFilter;
  readonly onProgress: ProgressListener;
}

export interface FinishedRootfs {
  readonly source: EntrySource;
  readonly packages: readonly InstalledPackage[];
  readonly labels: Readonly<Record<string, string>>;
}

/** Finishes the tree at `root` and opens it as an entry source. */
export async function finishRootfs(root: string, options: FinishOptions): Promise<FinishedRootfs> {
  // A tool killed halfway, or one that does not clean up after itself, may leave /proc or a bind of the
  // host's /dev mounted: nothing below may be read or deleted through those.
  await unmountUnder(root);
  const packages = await readInstalledPackages(root, options.distribution);
  if (options.clean) {
    options.onProgress({
      kind: "phase",
      message: options.slim ? "cleaning the root filesystem (slim)" : "cleaning the root filesystem",
    });
    await cleanRootfs(root, { distribution: options.distribution, slim: options.slim, epoch: options.epoch });
  } else {
    await removeSecrets(root, options.distribution);
  }
  if (options.packageListFile !== undefined) {
    const file = options.packageListFile;
    await writeFileAtomically(file, `the package list ${file}`, [Buffer.from(formatPackageList(packages))]);
  }
  const labels: Record<string, string> = { [PACKAGES_LABEL]: packageListLabel(packages) };
  if (options.insecure) {
    labels[INSECURE_LABEL] = "true";
    options.onProgress({
      kind: "warning",
      message: `--insecure: package signatures were NOT checked; the image carries the label ${INSECURE_LABEL}=true`,
    });
  }
  const dir = await RootfsDirSource.open({
    path: root,
    filter: options.filter,
    onProgress: options.onProgress,
  });
  return { source: options.devNodes === true ? new DevNodesSource(dir) : dir, packages, labels };
}
