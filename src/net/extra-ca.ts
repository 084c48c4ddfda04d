/**
 * The CA certificates named by `NODE_EXTRA_CA_CERTS`, for mkbase's own TLS clients. bin/mkbase starts
 * node without that variable, since node 20 parses the file and every bundled root certificate before
 * running any code (~50 ms of every command, most of which never speak TLS), and leaves the file's name
 * in `MKBASE_DEFERRED_CA_CERTS`. Every TLS connection mkbase opens passes {@link extraCaOptions}, so the
 * user's certificates are trusted as node would have trusted them.
 */
import { readFileSync } from "node:fs";
import { rootCertificates, type SecureContextOptions } from "node:tls";
import { errnoCode } from "../errors.js";

type CaOptions = Pick<SecureContextOptions, "ca">;

let cached: { readonly file: string | undefined; readonly options: CaOptions } | undefined;

/**
 * `{ ca }` (node's bundled roots plus the file's certificates) for a TLS client, or `{}` when there is
 * no deferred file, so node's default trust applies. The file is read once; one that cannot be read is
 * skipped with the warning node itself gives.
 */
export function extraCaOptions(): CaOptions {
  const file = process.env.MKBASE_DEFERRED_CA_CERTS || undefined;
  if (cached === undefined || cached.file !== file) cached = { file, options: readCaFile(file) };
  return cached.options;
}

function readCaFile(file: string | undefined): CaOptions {
  if (file === undefined) return {};
  try {
    // An explicit `ca` replaces node's roots, so they are listed too: NODE_EXTRA_CA_CERTS adds to them.
    return { ca: [...rootCertificates, readFileSync(file, "utf8")] };
  } catch (error) {
    process.emitWarning(`Ignoring extra certs from \`${file}\`, load failed: ${(error as Error).message}`);
    return {};
  }
}

/** OpenSSL's verification failures that a private CA causes, as node names them in `code`. */
const UNTRUSTED_CERTIFICATE_CODES = new Set([
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
]);

/** Whether a TLS connection failed because no trusted CA vouches for the server (NODE_EXTRA_CA_CERTS can). */
export function isUntrustedCertificate(error: unknown): boolean {
  return UNTRUSTED_CERTIFICATE_CODES.has(errnoCode(error) ?? "");
}
