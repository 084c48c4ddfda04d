import { execFileSync } from "node:child_process";
import { join } from "node:path";

/**
 * Writes a self-signed certificate for `ip` and its key into `dir` (with OpenSSL's CLI): a server that
 * only a client given this certificate as a CA trusts, as with a private CA.
 */
export function writeSelfSignedCertificate(dir: string, ip: string): { key: string; cert: string } {
  const key = join(dir, `${ip}.key`);
  const cert = join(dir, `${ip}.crt`);
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      "2",
      "-subj",
      `/CN=${ip}`,
      "-addext",
      `subjectAltName=IP:${ip}`,
      "-keyout",
      key,
      "-out",
      cert,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  return { key, cert };
}
