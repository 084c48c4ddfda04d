/**
 * HTTP proxies named by the environment, taken as curl, docker, crane and skopeo take them: HTTPS_PROXY
 * for https URLs, HTTP_PROXY for http ones, ALL_PROXY for either, NO_PROXY for the hosts to reach
 * directly (each in lowercase too). As in Go's net/http (docker, buildx, crane, skopeo), NO_PROXY also
 * takes IP addresses and CIDR ranges, and a loopback host is never proxied: a server on this machine is
 * one that a proxy elsewhere cannot reach.
 *
 * The agents are loaded only when a proxy is named, so a command without one pays nothing for them.
 */
import type * as http from "node:http";
import { BlockList, isIP, type Socket } from "node:net";
import { checkServerIdentity, type PeerCertificate } from "node:tls";
import { getProxyForUrl } from "proxy-from-env";
import { UsageError } from "../errors.js";
import { extraCaOptions } from "./extra-ca.js";

/** The proxy a URL goes through, and the variable that named it (for messages). */
export interface ProxyRoute {
  readonly proxy: URL;
  readonly variable: string;
}

/**
 * Whether `hostname` (as `URL.hostname` spells it) is this machine's loopback: `localhost`, 127.0.0.0/8
 * or ::1, as both the Docker Engine (insecure registries) and Go's proxy rules count it.
 */
export function isLoopbackHost(hostname: string): boolean {
  const name = hostname.toLowerCase();
  return name === "localhost" || name === "[::1]" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(name);
}

/** A NO_PROXY entry that names addresses: one address (and maybe a port), or a CIDR range. */
interface AddressRule {
  readonly addresses: BlockList;
  /** Only requests to this port; any port when absent. */
  readonly port?: string;
}

/**
 * The {@link AddressRule} of a NO_PROXY entry, or undefined for a host name (left to proxy-from-env):
 * `10.0.0.0/8`, `fd00::/8`, `10.1.2.3`, `10.1.2.3:5000`, `fd00::1`, `[fd00::1]:5000`, as Go's
 * httpproxy reads them. A range takes no port there either.
 */
function addressRule(entry: string): AddressRule | undefined {
  const range = /^([^/]+)\/(\d{1,3})$/.exec(entry);
  const hostPort = /^\[(.+)\](?::(\d+))?$/.exec(entry) ?? /^([^:]+):(\d+)$/.exec(entry);
  const address = range?.[1] ?? hostPort?.[1] ?? entry;
  const family = isIP(address);
  if (family === 0) return undefined;
  const width = family === 4 ? 32 : 128;
  const prefix = range === null ? width : Number(range[2]);
  if (prefix > width) return undefined;
  const addresses = new BlockList();
  addresses.addSubnet(address, prefix, family === 4 ? "ipv4" : "ipv6");
  return { addresses, port: hostPort?.[2] };
}

/**
 * Whether NO_PROXY names `url`'s host by address: an IP address equal to it or a CIDR range holding it.
 * proxy-from-env compares entries as text: it knows no ranges, and takes an IPv6 entry's last group for
 * a port. Only a host written as an address is matched, as in Go: a name is not resolved to see whether
 * it falls in a range, and an IPv4 entry also matches the IPv4-mapped IPv6 form of its address.
 */
function noProxyNamesAddress(url: URL): boolean {
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const family = isIP(host);
  if (family === 0) return false;
  const port = url.port || (url.protocol === "https:" ? "443" : "80");
  // The variable proxy-from-env reads, so that its entries and these come from one list.
  const list = process.env.no_proxy || process.env.NO_PROXY || "";
  return list
    .toLowerCase()
    .split(/[\s,]+/)
    .some((entry) => {
      const rule = addressRule(entry);
      if (rule === undefined || (rule.port !== undefined && rule.port !== port)) return false;
      return rule.addresses.check(host, family === 4 ? "ipv4" : "ipv6");
    });
}

/** The variable proxy-from-env read the proxy of a `protocol` URL from: the first one set. */
function namingVariable(protocol: string): string {
  const scheme = protocol.replace(/:$/, "");
  const names = [`${scheme}_proxy`, `${scheme.toUpperCase()}_PROXY`, "all_proxy", "ALL_PROXY"];
  return names.find((name) => process.env[name]) ?? `${scheme.toUpperCase()}_PROXY`;
}

/**
 * The proxy the environment names for `url`, or undefined to connect directly. A value that is not an
 * http(s) proxy URL is a usage error: silently going direct would fail later, further from the cause.
 */
export function proxyRoute(url: URL): ProxyRoute | undefined {
  if (isLoopbackHost(url.hostname) || noProxyNamesAddress(url)) return undefined;
  if (getProxyForUrl(url.href) === "") return undefined;
  const variable = namingVariable(url.protocol);
  const named = process.env[variable] ?? "";
  let proxy: URL;
  try {
    // A value without a scheme is an http proxy, as curl and Go take it (proxy-from-env would use the
    // target's scheme, and speak TLS to a proxy that does not).
    proxy = new URL(named.includes("://") ? named : `http://${named}`);
  } catch {
    // The value itself is not shown: it may hold a password.
    throw new UsageError(`${variable} is set, but not to a proxy URL`, {
      hint: `Set ${variable} to http://HOST:PORT (credentials as http://USER:PASSWORD@HOST:PORT), or unset it.`,
    });
  }
  if (proxy.protocol !== "http:" && proxy.protocol !== "https:") {
    throw new UsageError(
      `${variable} names a ${proxy.protocol.slice(0, -1)} proxy, and mkbase speaks only to HTTP(S) proxies`,
      {
        hint: `Point ${variable} at an HTTP proxy (http://HOST:PORT), or add ${url.hostname} to NO_PROXY.`,
      },
    );
  }
  return { proxy, variable };
}

/** `the proxy http://host:port (HTTPS_PROXY)`, without the credentials the URL may hold. */
function describeRoute(route: ProxyRoute): string {
  return `the proxy ${route.proxy.origin} (${route.variable})`;
}

/** The answers a proxy gives of its own: it wants credentials, or cannot reach the host. */
const PROXY_STATUSES = new Set([407, 502, 503, 504]);

/**
 * What to check when `url` could not be fetched through a proxy: the connection failed (no `status`) or
 * the answer is one a proxy gives. Undefined when `url` goes direct or the answer is the server's own,
 * so that the caller's advice applies.
 */
export function proxyHint(url: URL, status?: number): string | undefined {
  if (status !== undefined && !PROXY_STATUSES.has(status)) return undefined;
  const route = proxyRoute(url);
  if (route === undefined) return undefined;
  if (status === 407) {
    return `${describeRoute(route)} asks for credentials: put them in its URL, ${route.variable}=http://USER:PASSWORD@${route.proxy.host}.`;
  }
  return `Requests to ${url.host} go through ${describeRoute(route)}: check that it runs and can reach ${url.host}, or add ${url.hostname} to NO_PROXY to connect directly.`;
}

/**
 * Agents that take requests through proxies, one per proxy and scheme of the target, made on first use.
 * https targets go through a CONNECT tunnel (the proxy sees only the host); http ones as absolute-form
 * requests.
 */
export class ProxyAgents {
  private readonly agents = new Map<string, Promise<http.Agent>>();

  constructor(private readonly options: { readonly keepAlive: boolean }) {}

  /** The agent for a request to `url` along `route`. */
  agentFor(url: URL, route: ProxyRoute): Promise<http.Agent> {
    const key = `${url.protocol} ${route.proxy.href}`;
    let agent = this.agents.get(key);
    if (agent === undefined) {
      agent = this.create(url.protocol === "https:", route.proxy);
      this.agents.set(key, agent);
    }
    return agent;
  }

  /** Closes every socket the agents keep. */
  destroy(): void {
    for (const agent of this.agents.values()) void agent.then((made) => made.destroy());
    this.agents.clear();
  }

  private async create(secureTarget: boolean, proxy: URL): Promise<http.Agent> {
    // The CA options are for an https:// proxy's own certificate; the target's come with each request.
    const ca = extraCaOptions();
    if (secureTarget) {
      const { HttpsProxyAgent } = await import("https-proxy-agent");
      type ConnectOptions = Parameters<InstanceType<typeof HttpsProxyAgent>["connect"]>[1];
      // The agent starts TLS on the tunnel without the target's host, and sends no server name for an
      // IP address: node would then check the certificate against "localhost". Check it against the
      // host the request is for.
      class TunnelAgent extends HttpsProxyAgent<string> {
        override connect(request: http.ClientRequest, options: ConnectOptions): Promise<Socket> {
          if (!options.secureEndpoint) return super.connect(request, options);
          const host = options.host ?? "";
          return super.connect(request, {
            checkServerIdentity: (_name: string, certificate: PeerCertificate) =>
              checkServerIdentity(host, certificate),
            ...options,
          });
        }
      }
      return new TunnelAgent(proxy, { keepAlive: this.options.keepAlive, ...ca });
    }
    // No connection is kept for another request: some proxies (tinyproxy) close it after each answer
    // without saying so, and a request sent on it meanwhile would be lost. A tunnel is the target's own
    // connection, and kept.
    const { HttpProxyAgent } = await import("http-proxy-agent");
    return new HttpProxyAgent(proxy, { keepAlive: false, ...ca });
  }
}
