/**
 * Registry credentials and the two auth schemes of the distribution protocol.
 *
 * Credentials come from a docker `config.json` (the one the docker CLI writes on `docker login`):
 * `credHelpers[host]`, else `credsStore`, run as `docker-credential-NAME get` with the server on stdin;
 * else `auths[host]` with `auth` (base64 `user:password`) or `username`/`password`, or `identitytoken`.
 * They are read only when a registry asks for them, so an anonymous push never runs a helper.
 *
 * Auth follows the `WWW-Authenticate` challenge of a 401: `Basic` sends the credentials with every
 * request; `Bearer realm=…,service=…,scope=…` trades them at the realm for a token that covers the
 * scopes asked for (the distribution token spec), and a new token is fetched when a request needs a
 * scope the current one lacks (a cross-repository mount needs `pull` on the source repository).
 */
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { SinkError, ToolError, UsageError, errnoCode } from "../errors.js";
import type { RegistryRequest, RegistryResponse } from "./client.js";

/** What a registry may accept from us. */
export interface RegistryCredentials {
  readonly username?: string;
  readonly password?: string;
  /** An OAuth2 refresh token (`identitytoken`), traded at the token realm instead of a password. */
  readonly identityToken?: string;
  /** Where they came from, for messages: a file path or `docker-credential-NAME`. */
  readonly origin: string;
}

/** Where to look for credentials. */
export interface CredentialOptions {
  /** A docker `config.json` to use instead of the discovered one (`--registry-auth-file`). */
  readonly authFile?: string;
  /** `HOME` and `DOCKER_CONFIG` for discovery, `PATH` for credential helpers. */
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly signal: AbortSignal;
}

interface DockerConfigFile {
  readonly auths?: Record<
    string,
    { auth?: string; username?: string; password?: string; identitytoken?: string }
  >;
  readonly credHelpers?: Record<string, string>;
  readonly credsStore?: string;
}

/** `https://host:5000/v1/`, `http://host`, `host` → `host`, as the docker CLI matches `auths` keys. */
function hostOfServerKey(key: string): string {
  return key.replace(/^[a-z][a-z0-9+.-]*:\/\//i, "").replace(/\/.*$/, "");
}

/** The docker config path: `authFile`, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. */
export function dockerConfigPath(options: Pick<CredentialOptions, "authFile" | "env">): string {
  if (options.authFile !== undefined) return options.authFile;
  const dir = options.env.DOCKER_CONFIG ?? join(options.env.HOME ?? homedir(), ".docker");
  return join(dir, "config.json");
}

async function readDockerConfig(path: string, explicit: boolean): Promise<DockerConfigFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    // A missing discovered file means "not logged in"; a missing file the user named is a mistake.
    if (!explicit && errnoCode(error) === "ENOENT") return undefined;
    const code = errnoCode(error);
    const why =
      code === "ENOENT" ? "does not exist" : `cannot be read${code === undefined ? "" : ` (${code})`}`;
    throw new UsageError(`the registry auth file ${path} ${why}`, {
      cause: error,
      hint: "Pass a readable docker config.json to --registry-auth-file, or log in with `docker login`.",
    });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new UsageError(`${path} is not valid JSON`, {
      cause: error,
      hint: "Fix the file (it has the format of a docker config.json) or move it away.",
    });
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new UsageError(`${path} is not a docker config.json (expected a JSON object)`, {
      hint: 'Write it as {"auths": {"HOST": {"auth": "BASE64(user:password)"}}}.',
    });
  }
  return parsed as DockerConfigFile;
}

/** Reads and checks a docker config.json the user named, so that a mistake shows before any work. */
export async function readAuthFile(path: string): Promise<void> {
  await readDockerConfig(path, true);
}

function credentialsFromEntry(
  path: string,
  host: string,
  entry: NonNullable<DockerConfigFile["auths"]>[string],
): RegistryCredentials | undefined {
  if (typeof entry.identitytoken === "string" && entry.identitytoken !== "") {
    return { username: entry.username, identityToken: entry.identitytoken, origin: path };
  }
  if (typeof entry.auth === "string" && entry.auth !== "") {
    const decoded = Buffer.from(entry.auth, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon === -1) {
      throw new UsageError(`the "auth" of ${host} in ${path} is not base64 of user:password`, {
        hint: `Log in again with \`docker login ${host}\`, or rewrite the entry.`,
      });
    }
    return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1), origin: path };
  }
  if (typeof entry.username === "string" && typeof entry.password === "string") {
    return { username: entry.username, password: entry.password, origin: path };
  }
  return undefined;
}

/**
 * The protocol's one "no credentials" answer: a helper exits non-zero and prints this exact text
 * (docker-credential-helpers' `ErrCredentialsNotFound`); there is no dedicated exit code for it.
 */
const HELPER_NOT_FOUND = "credentials not found in native keychain";

/** Runs `docker-credential-NAME get` with `server` on stdin and parses its JSON answer. */
export async function runCredentialHelper(
  name: string,
  server: string,
  options: Pick<CredentialOptions, "env" | "signal">,
): Promise<RegistryCredentials | undefined> {
  const program = `docker-credential-${name}`;
  const child = spawn(program, ["get"], {
    env: options.env as NodeJS.ProcessEnv,
    signal: options.signal,
    stdio: ["pipe", "pipe", "pipe"],
  });
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk));
  child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
  // A helper that exits without reading stdin makes our write fail with EPIPE; its exit status tells more.
  child.stdin.on("error", () => undefined);
  child.stdin.end(server);
  const exit = await new Promise<{ code: number | null; error?: unknown }>((resolve) => {
    child.once("error", (error) => resolve({ code: null, error }));
    child.once("close", (code) => resolve({ code }));
  });
  if (exit.error !== undefined) {
    if (errnoCode(exit.error) === "ENOENT") {
      throw new ToolError(`the credential helper ${program} is not installed (not found on PATH)`, {
        cause: exit.error,
        hint: `Install ${program}, or remove "${name}" from credsStore/credHelpers in the docker config.json.`,
      });
    }
    throw new ToolError(`cannot run the credential helper ${program}`, { cause: exit.error });
  }
  const out = Buffer.concat(stdout).toString("utf8").trim();
  if (exit.code !== 0) {
    if (out === HELPER_NOT_FOUND) return undefined;
    const detail = [out, Buffer.concat(stderr).toString("utf8").trim()].filter((s) => s !== "").join("; ");
    throw new ToolError(
      `the credential helper ${program} failed for ${server} (exit ${exit.code}): ${detail}`,
      {
        hint: `Check that \`echo ${server} | ${program} get\` works, or log in again with \`docker login ${server}\`.`,
      },
    );
  }
  let answer: { Username?: unknown; Secret?: unknown } | null;
  try {
    answer = JSON.parse(out) as typeof answer;
  } catch (error) {
    // docker fails here as well: only the not-found error above means "no credentials".
    const printed = out === "" ? "nothing" : "something that is not JSON";
    throw new ToolError(`the credential helper ${program} printed ${printed} for ${server}`, {
      cause: error,
      hint: `It must print {"ServerURL":…,"Username":…,"Secret":…}; check \`echo ${server} | ${program} get\`.`,
    });
  }
  if (typeof answer?.Secret !== "string" || answer.Secret === "") return undefined;
  const username = typeof answer.Username === "string" ? answer.Username : undefined;
  // Helpers store OAuth refresh tokens with this placeholder user name (docker CLI convention).
  if (username === "<token>") return { identityToken: answer.Secret, origin: program };
  return { username, password: answer.Secret, origin: program };
}

/**
 * Credentials for registry `host` (`host[:port]`), or undefined when none are configured. Reads the
 * auth file or the discovered docker config, running a credential helper when one is configured for
 * the host; a helper that knows nothing about the host falls back to the file's `auths`.
 */
export async function findCredentials(
  host: string,
  options: CredentialOptions,
): Promise<RegistryCredentials | undefined> {
  const path = dockerConfigPath(options);
  const config = await readDockerConfig(path, options.authFile !== undefined);
  if (config === undefined) return undefined;
  const helper = config.credHelpers?.[host] ?? config.credsStore;
  if (typeof helper === "string" && helper !== "") {
    const fromHelper = await runCredentialHelper(helper, host, options);
    if (fromHelper !== undefined) return fromHelper;
  }
  for (const [key, entry] of Object.entries(config.auths ?? {})) {
    if (hostOfServerKey(key) !== host || entry === null || typeof entry !== "object") continue;
    const credentials = credentialsFromEntry(path, host, entry);
    if (credentials !== undefined) return credentials;
  }
  return undefined;
}

/** A parsed `WWW-Authenticate` challenge. */
export type AuthChallenge =
  | { readonly scheme: "basic"; readonly realm: string | undefined }
  | {
      readonly scheme: "bearer";
      readonly realm: string;
      readonly service: string | undefined;
      /** Scopes the registry named, e.g. `repository:x:pull,push` (space-separated in the header). */
      readonly scopes: readonly string[];
      /** `insufficient_scope` when the token we sent lacked a scope. */
      readonly error: string | undefined;
    };

/**
 * Parses the first `Basic` or `Bearer` challenge of a `WWW-Authenticate` header (RFC 7235 auth-params,
 * quoted strings with backslash escapes), or undefined when it holds neither.
 */
export function parseChallenge(header: string): AuthChallenge | undefined {
  const scheme = /^\s*([A-Za-z]+)(?:\s+|$)/.exec(header);
  if (scheme === null) return undefined;
  const params = new Map<string, string>();
  const param = /([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?\s*/gy;
  param.lastIndex = scheme[0].length;
  for (let match = param.exec(header); match !== null; match = param.exec(header)) {
    const name = (match[1] as string).toLowerCase();
    const value = match[2] !== undefined ? match[2].replace(/\\(.)/g, "$1") : (match[3] ?? "");
    if (!params.has(name)) params.set(name, value);
    if (param.lastIndex >= header.length) break;
  }
  switch ((scheme[1] as string).toLowerCase()) {
    case "basic":
      return { scheme: "basic", realm: params.get("realm") };
    case "bearer": {
      const realm = params.get("realm");
      if (realm === undefined || realm === "") return undefined;
      const scope = params.get("scope");
      return {
        scheme: "bearer",
        realm,
        service: params.get("service"),
        scopes: scope === undefined ? [] : scope.split(" ").filter((s) => s !== ""),
        error: params.get("error"),
      };
    }
    default:
      return undefined;
  }
}

/** `repository:NAME:ACTIONS`, the scope a token must cover to act on a repository. */
export function repositoryScope(repository: string, actions: "pull" | "pull,push"): string {
  return `repository:${repository}:${actions}`;
}

export interface AuthenticatorOptions {
  /** The registry, `host[:port]`: the key for credentials and the name in messages. */
  readonly host: string;
  /** One HTTP exchange, no auth added (the client's, with its transport rules and failure handling). */
  readonly send: (request: RegistryRequest) => Promise<RegistryResponse>;
  /** Checks that a token realm may be contacted (HTTPS, or plain HTTP where the client allows it). */
  readonly checkUrl: (url: URL) => void;
  readonly credentials: () => Promise<RegistryCredentials | undefined>;
}

function basicHeader(credentials: RegistryCredentials): string {
  const pair = `${credentials.username ?? ""}:${credentials.password ?? ""}`;
  return `Basic ${Buffer.from(pair, "utf8").toString("base64")}`;
}

/**
 * Keeps the auth state of one registry for one push: which scheme it asked for, the credentials (loaded
 * on the first challenge) and the current bearer token with the scopes it covers.
 */
export class RegistryAuthenticator {
  private mode: "anonymous" | "basic" | "bearer" = "anonymous";
  private bearer: { realm: string; service: string | undefined } | undefined;
  private token: { value: string; scopes: Set<string> } | undefined;
  private loaded: Promise<RegistryCredentials | undefined> | undefined;

  constructor(private readonly options: AuthenticatorOptions) {}

  private loadCredentials(): Promise<RegistryCredentials | undefined> {
    this.loaded ??= this.options.credentials();
    return this.loaded;
  }

  /** The `Authorization` header for a request that needs `scopes`, or undefined while anonymous. */
  async authorization(scopes: readonly string[]): Promise<string | undefined> {
    switch (this.mode) {
      case "anonymous":
        return undefined;
      case "basic": {
        const credentials = await this.loadCredentials();
        return credentials === undefined ? undefined : basicHeader(credentials);
      }
      case "bearer":
        if (this.token === undefined || !scopes.every((scope) => this.token?.scopes.has(scope))) {
          await this.fetchToken(scopes);
        }
        return `Bearer ${this.token?.value ?? ""}`;
    }
  }

  /**
   * Answers a 401: learns the challenge and returns the header to retry with. Throws a
   * {@link SinkError} when there is nothing new to try (no credentials, or they were just refused).
   */
  async answer(
    header: string | undefined,
    scopes: readonly string[],
    sent: string | undefined,
  ): Promise<string> {
    const challenge = header === undefined ? undefined : parseChallenge(header);
    if (challenge === undefined) {
      throw new SinkError(
        `the registry ${this.options.host} asks for authentication in a way mkbase does not know`,
        {
          hint: `It answered 401 with WWW-Authenticate: ${header ?? "(none)"}; only Basic and Bearer are supported.`,
        },
      );
    }
    if (challenge.scheme === "basic") {
      const credentials = await this.loadCredentials();
      if (
        credentials === undefined ||
        credentials.username === undefined ||
        credentials.password === undefined
      ) {
        throw await this.refusal("requires a user name and password");
      }
      const retry = basicHeader(credentials);
      if (sent === retry) throw await this.refusal("refused the credentials");
      this.mode = "basic";
      return retry;
    }
    const previous = this.token;
    this.mode = "bearer";
    this.bearer = { realm: challenge.realm, service: challenge.service };
    // A token we just sent for these very scopes, refused again: a new one would be refused too.
    if (
      previous !== undefined &&
      sent === `Bearer ${previous.value}` &&
      challenge.error === "insufficient_scope" &&
      [...scopes, ...challenge.scopes].every((scope) => previous.scopes.has(scope))
    ) {
      throw await this.refusal("refused access");
    }
    await this.fetchToken([...scopes, ...challenge.scopes]);
    return `Bearer ${this.token?.value ?? ""}`;
  }

  /** The error for a request answered 401 again after the header {@link answer} returned was sent. */
  refusedAgain(): Promise<SinkError> {
    // A token server that issued a token took the credentials (or anonymity): what is refused is the
    // access the token was asked for, mostly push rights on the repository.
    return this.refusal(this.mode === "bearer" ? "refused access" : "refused the credentials");
  }

  /** The error for a registry that still says no; the hint depends on whether we had credentials. */
  async refusal(what: string): Promise<SinkError> {
    const { host } = this.options;
    const credentials = await this.loadCredentials();
    if (credentials === undefined) {
      return new SinkError(`the registry ${host} ${what} and no credentials for it were found`, {
        hint: `Log in with \`docker login ${host}\`, or pass a docker config.json with --registry-auth-file.`,
      });
    }
    return new SinkError(`the registry ${host} ${what} (credentials from ${credentials.origin})`, {
      hint: `Check the user name, password and push rights for ${host}, or log in again with \`docker login ${host}\`.`,
    });
  }

  private async fetchToken(scopes: readonly string[]): Promise<void> {
    if (this.bearer === undefined) throw new Error("fetchToken before a Bearer challenge");
    const wanted = new Set([...(this.token?.scopes ?? []), ...scopes]);
    const credentials = await this.loadCredentials();
    const url = new URL(this.bearer.realm);
    this.options.checkUrl(url);
    let response: RegistryResponse;
    if (credentials?.identityToken !== undefined) {
      // OAuth2 refresh-token grant, the one form a stored identity token can be used in.
      const form = new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: credentials.identityToken,
        client_id: "mkbase",
        scope: [...wanted].join(" "),
      });
      if (this.bearer.service !== undefined) form.set("service", this.bearer.service);
      response = await this.options.send({
        method: "POST",
        url,
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: Buffer.from(form.toString(), "utf8"),
      });
    } else {
      if (this.bearer.service !== undefined) url.searchParams.set("service", this.bearer.service);
      for (const scope of wanted) url.searchParams.append("scope", scope);
      const headers: Record<string, string> = {};
      if (credentials?.username !== undefined && credentials.password !== undefined) {
        headers.authorization = basicHeader(credentials);
      }
      response = await this.options.send({ method: "GET", url, headers });
    }
    if (response.status === 401 || response.status === 403) {
      // Said of the registry, as every refusal is: "the registry H refused access (…)".
      throw await this.refusal(`refused access (its token server ${url.host} answered ${response.status})`);
    }
    if (response.status !== 200) {
      throw new SinkError(
        `the token server ${url.origin} of ${this.options.host} answered ${response.status}: ${response.body.toString("utf8").slice(0, 300)}`,
        { hint: "Check that the registry's auth service works, then push again." },
      );
    }
    let value: unknown;
    try {
      const parsed = JSON.parse(response.body.toString("utf8")) as {
        token?: unknown;
        access_token?: unknown;
      };
      value = parsed.token ?? parsed.access_token;
    } catch (error) {
      throw new SinkError(`the token server ${url.origin} answered with something that is not JSON`, {
        cause: error,
      });
    }
    if (typeof value !== "string" || value === "") {
      throw new SinkError(`the token server ${url.origin} answered without a token`);
    }
    this.token = { value, scopes: wanted };
  }
}
