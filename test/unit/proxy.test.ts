import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { UsageError } from "../../src/errors.js";
import { isLoopbackHost, proxyHint, proxyRoute } from "../../src/net/proxy.js";

const PROXY_VARIABLES = [
  "http_proxy",
  "HTTP_PROXY",
  "https_proxy",
  "HTTPS_PROXY",
  "all_proxy",
  "ALL_PROXY",
  "no_proxy",
  "NO_PROXY",
];
const saved = new Map(PROXY_VARIABLES.map((name) => [name, process.env[name]]));

/** Sets exactly these proxy variables, the others unset. */
function environment(values: Record<string, string>): void {
  for (const name of PROXY_VARIABLES) delete process.env[name];
  Object.assign(process.env, values);
}

afterEach(() => {
  for (const [name, value] of saved) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
});

test("loopback hosts are localhost, 127.0.0.0/8 and ::1, and nothing that merely looks like them", () => {
  for (const host of ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "[::1]"]) {
    assert.equal(isLoopbackHost(host), true, host);
  }
  for (const host of ["128.0.0.1", "127.example.com", "localhost.example.com", "10.0.0.1", "[::2]"]) {
    assert.equal(isLoopbackHost(host), false, host);
  }
});

test("no proxy variable: every URL goes direct", () => {
  environment({});
  assert.equal(proxyRoute(new URL("https://registry.example.com/v2/")), undefined);
});

test("https URLs take HTTPS_PROXY, http ones HTTP_PROXY, each naming the variable it came from", () => {
  environment({ HTTPS_PROXY: "http://secure.proxy:3128", http_proxy: "http://plain.proxy:8080" });
  const secure = proxyRoute(new URL("https://registry.example.com/v2/"));
  assert.equal(secure?.proxy.href, "http://secure.proxy:3128/");
  assert.equal(secure?.variable, "HTTPS_PROXY");
  const plain = proxyRoute(new URL("http://mirror.example.com/x.tar"));
  assert.equal(plain?.proxy.href, "http://plain.proxy:8080/");
  assert.equal(plain?.variable, "http_proxy");
});

test("ALL_PROXY serves either scheme, and a bare host:port is taken as an http proxy", () => {
  environment({ ALL_PROXY: "proxy.example.com:3128" });
  const route = proxyRoute(new URL("https://registry.example.com/"));
  assert.equal(route?.proxy.href, "http://proxy.example.com:3128/");
  assert.equal(route?.variable, "ALL_PROXY");
});

test("NO_PROXY names hosts (and domain suffixes) that are reached directly", () => {
  environment({ HTTPS_PROXY: "http://proxy:3128", NO_PROXY: "internal.example.com,.corp.example.com" });
  assert.equal(proxyRoute(new URL("https://internal.example.com/")), undefined);
  assert.equal(proxyRoute(new URL("https://registry.corp.example.com/")), undefined);
  assert.notEqual(proxyRoute(new URL("https://registry.example.com/")), undefined);
});

test("NO_PROXY takes IP addresses and CIDR ranges, matched against a host written as an address", () => {
  environment({
    HTTPS_PROXY: "http://proxy:3128",
    HTTP_PROXY: "http://proxy:3128",
    // Commas and spaces both separate entries; case does not matter.
    NO_PROXY: "10.0.0.0/8, 192.168.1.0/24 FD00::/8,172.16.0.5,[2001:db8::1]:5000,172.16.0.6:5000",
  });
  const direct = [
    "https://10.1.2.3:5000/v2/",
    "http://192.168.1.77/x.tar",
    "https://[fd00::1]/",
    "https://[fdff:1::2]:8443/",
    "https://172.16.0.5/",
    "https://172.16.0.6:5000/",
    "https://[2001:db8::1]:5000/",
    // The IPv4-mapped IPv6 form of an address in a range, as Go matches it.
    "https://[::ffff:10.0.0.1]/",
  ];
  for (const url of direct) assert.equal(proxyRoute(new URL(url)), undefined, url);
  const proxied = [
    "https://11.0.0.1/",
    "http://192.168.2.1/",
    "https://[fe80::1]/",
    "https://172.16.0.4/",
    // An address with a port in NO_PROXY is direct on that port only.
    "https://172.16.0.6/",
    "https://[2001:db8::1]/",
    // A name is not resolved to see whether it falls in a range.
    "https://10.0.0.1.example.com/",
  ];
  for (const url of proxied) assert.notEqual(proxyRoute(new URL(url)), undefined, url);
});

test("NO_PROXY=* sends every host direct, whatever its form", () => {
  environment({ HTTPS_PROXY: "http://proxy:3128", no_proxy: "*" });
  for (const url of ["https://registry.example.com/", "https://10.1.2.3/", "https://[fd00::1]:5000/"]) {
    assert.equal(proxyRoute(new URL(url)), undefined, url);
  }
});

test("a loopback host is never proxied, whatever the variables say", () => {
  environment({ HTTPS_PROXY: "http://proxy:3128", HTTP_PROXY: "http://proxy:3128" });
  assert.equal(proxyRoute(new URL("http://127.0.0.1:5000/v2/")), undefined);
  assert.equal(proxyRoute(new URL("https://localhost:5000/v2/")), undefined);
  assert.equal(proxyRoute(new URL("http://[::1]:5000/v2/")), undefined);
});

test("a proxy that is not an HTTP(S) URL is a usage error naming the variable", () => {
  environment({ HTTPS_PROXY: "socks5://proxy:1080" });
  assert.throws(
    () => proxyRoute(new URL("https://registry.example.com/")),
    (error: unknown) =>
      error instanceof UsageError &&
      /HTTPS_PROXY names a socks5 proxy/.test(error.message) &&
      /NO_PROXY/.test(error.hint ?? ""),
  );
  environment({ HTTP_PROXY: "http://user:pw@proxy:99999" });
  assert.throws(
    () => proxyRoute(new URL("http://mirror.example.com/")),
    (error: unknown) =>
      error instanceof UsageError &&
      /HTTP_PROXY is set, but not to a proxy URL/.test(error.message) &&
      !error.message.includes("pw"),
  );
});

test("the proxy hint names the proxy without its credentials, and the 407 one says where they go", () => {
  environment({ HTTPS_PROXY: "http://user:secret@proxy.example.com:3128" });
  const url = new URL("https://registry.example.com/v2/");
  const connection = proxyHint(url) ?? "";
  assert.match(connection, /the proxy http:\/\/proxy\.example\.com:3128 \(HTTPS_PROXY\)/);
  assert.match(connection, /NO_PROXY/);
  assert.doesNotMatch(connection, /secret/);
  assert.match(proxyHint(url, 407) ?? "", /HTTPS_PROXY=http:\/\/USER:PASSWORD@proxy\.example\.com:3128/);
  assert.match(proxyHint(url, 502) ?? "", /can reach registry\.example\.com/);
  // The server's own answers, and URLs that go direct, keep the caller's advice.
  assert.equal(proxyHint(url, 404), undefined);
  assert.equal(proxyHint(new URL("https://127.0.0.1:5000/")), undefined);
});
