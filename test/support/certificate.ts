import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

export interface KeyPair {
  /** Path of the PEM private key. */
  readonly key: string;
  /** Path of the PEM certificate. */
  readonly cert: string;
}

function openssl(args: readonly string[]): void {
  execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
}

/** `openssl req` arguments for a new P-256 key, unencrypted, for subject CN=`name`. */
function newKey(name: string, key: string): string[] {
  return [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-subj",
    `/CN=${name}`,
    "-keyout",
    key,
  ];
}

const VALIDITY = ["-days", "2"];

/**
 * Writes a self-signed certificate for `ip` and its key into `dir` (with OpenSSL's CLI): a server that
 * only a client given this certificate as a CA trusts, as with a private CA.
 */
export function writeSelfSignedCertificate(dir: string, ip: string): KeyPair {
  const pair = { key: join(dir, `${ip}.key`), cert: join(dir, `${ip}.crt`) };
  openssl([
    "req",
    "-x509",
    ...newKey(ip, pair.key),
    ...VALIDITY,
    "-addext",
    `subjectAltName=IP:${ip}`,
    "-out",
    pair.cert,
  ]);
  return pair;
}

/** Writes a certificate authority (`NAME-ca.pem`, `NAME-ca.key`) into `dir`. */
export function writeCertificateAuthority(dir: string, name: string): KeyPair {
  const pair = { key: join(dir, `${name}-ca.key`), cert: join(dir, `${name}-ca.pem`) };
  openssl(["req", "-x509", ...newKey(`${name} CA`, pair.key), ...VALIDITY, "-out", pair.cert]);
  return pair;
}

/**
 * Writes `NAME.pem` and `NAME.key` into `dir`: a certificate that `ca` signed, with the X.509v3
 * `extensions` given as config lines (`subjectAltName=IP:127.0.0.1`, `extendedKeyUsage=clientAuth`).
 */
export function writeSignedCertificate(
  dir: string,
  name: string,
  ca: KeyPair,
  extensions: readonly string[],
): KeyPair {
  const pair = { key: join(dir, `${name}.key`), cert: join(dir, `${name}.pem`) };
  const request = join(dir, `${name}.csr`);
  const extensionFile = join(dir, `${name}.ext`);
  openssl(["req", "-new", ...newKey(name, pair.key), "-out", request]);
  writeFileSync(extensionFile, `${extensions.join("\n")}\n`);
  openssl([
    "x509",
    "-req",
    "-in",
    request,
    "-CA",
    ca.cert,
    "-CAkey",
    ca.key,
    "-CAcreateserial",
    ...VALIDITY,
    "-extfile",
    extensionFile,
    "-out",
    pair.cert,
  ]);
  return pair;
}
