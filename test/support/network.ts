import { networkInterfaces } from "node:os";

/**
 * This machine's first non-loopback IPv4 address: a host of this machine that mkbase treats as any
 * other (verified HTTPS, and proxied when the environment names a proxy), unlike 127.0.0.0/8.
 */
export function ownAddress(): string {
  for (const addresses of Object.values(networkInterfaces())) {
    const found = addresses?.find((address) => address.family === "IPv4" && !address.internal);
    if (found !== undefined) return found.address;
  }
  throw new Error("these tests need a network interface with a non-loopback IPv4 address");
}
