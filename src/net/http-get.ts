/**
 * GET with redirects followed, over node's http and https. Not fetch: fetch takes no CA certificates,
 * and mkbase's TLS clients must add the ones bin/mkbase kept out of node's start-up (see extra-ca.ts).
 */
import * as http from "node:http";
import * as https from "node:https";
import { extraCaOptions } from "./extra-ca.js";
import { ProxyAgents, proxyRoute } from "./proxy.js";

/** As many as fetch follows. */
const MAX_REDIRECTS = 20;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
/** fetch's own limit on a silent server, for the headers and between chunks of the body alike. */
const IDLE_TIMEOUT_MS = 300_000;
/** Downloads are one request each: no connection is kept for another. */
const proxyAgents = new ProxyAgents({ keepAlive: false });

/**
 * The answer to a GET of `url` once no redirect is left, whatever its status: the caller reads or
 * destroys its body. Rejects with the socket's error (and its errno `code`) when no answer comes.
 */
export async function httpGet(url: URL, signal: AbortSignal): Promise<http.IncomingMessage> {
  let current = url;
  for (let redirects = 0; ; redirects++) {
    const response = await getOnce(current, signal);
    const location = response.headers.location;
    if (!REDIRECT_STATUSES.has(response.statusCode ?? 0) || location === undefined) return response;
    response.resume();
    if (redirects === MAX_REDIRECTS)
      throw new Error(`${url.href} redirects more than ${MAX_REDIRECTS} times`);
    current = new URL(location, current);
    if (current.protocol !== "http:" && current.protocol !== "https:") {
      throw new Error(`${url.href} redirects to ${current.protocol} URL, which is neither HTTP nor HTTPS`);
    }
  }
}

async function getOnce(url: URL, signal: AbortSignal): Promise<http.IncomingMessage> {
  const route = proxyRoute(url);
  const agent = route === undefined ? undefined : await proxyAgents.agentFor(url, route);
  return new Promise((resolve, reject) => {
    const request =
      url.protocol === "https:"
        ? https.get(url, { signal, agent, ...extraCaOptions() })
        : http.get(url, { signal, agent });
    failWhenSilent(request, IDLE_TIMEOUT_MS);
    // `on`: the request may also fail after the answer (a body cut short), and reject ignores that.
    request.on("error", reject);
    request.once("response", resolve);
  });
}

/**
 * Fails `request` with an `ETIMEDOUT` error once its socket has been silent for `ms`, waiting for the
 * answer or between chunks of either body.
 */
export function failWhenSilent(request: http.ClientRequest, ms: number): void {
  request.setTimeout(ms, () => {
    request.destroy(Object.assign(new Error(`no answer for ${ms / 1000} s`), { code: "ETIMEDOUT" }));
  });
}
