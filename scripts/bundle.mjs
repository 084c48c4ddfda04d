// Bundles the CLI into dist/bundle/cli/, which bin/mkbase runs: one file instead of some forty small ES
// modules (node resolves, reads and links each in turn), in CommonJS so that the launcher can run it
// through V8's code cache (see src/cli/launcher.ts). Together they take ~60 ms off every run, a large
// share of `mkbase scratch`'s ~250 ms. The tests' own imports use tsc's output in dist/src.
import { rmSync } from "node:fs";
import { build } from "esbuild";

const outdir = "dist/bundle/cli";
const common = {
  outdir,
  bundle: true,
  platform: "node",
  target: "node20",
  sourcemap: "linked",
  logLevel: "warning",
};

// A new bundle makes every code cache of the old one useless.
rmSync(outdir, { recursive: true, force: true });
await build({
  ...common,
  entryPoints: ["src/cli/launcher.ts", "src/cli/main.ts"],
  format: "cjs",
  outExtension: { ".js": ".cjs" },
  // A native addon cannot be bundled. Everything else is, ora and chalk too, and no `import()` is left:
  // V8 drops a script's dynamic-import handler from functions it takes out of a code cache, so an
  // `import()` in a run that used the cache failed. What the code imports on demand (ora and chalk for a
  // terminal, node:https for a TLS engine) is still initialised only when first used.
  // kerberos: an optional peer of the proxy agents, for Negotiate proxy auth, which mkbase never asks for.
  external: ["@napi-rs/xattr", "kerberos"],
  supported: { "dynamic-import": false },
  // The code resolves files next to itself (package.json, the gzip worker) from import.meta.url, which
  // CommonJS lacks: the bundle's own file URL stands in, so the paths from dist/src/cli/ still hold.
  define: { "import.meta.url": "__mkbaseFileUrl" },
  banner: { js: 'const __mkbaseFileUrl = require("node:url").pathToFileURL(__filename).href;' },
});
// The gzip worker is a file of its own for `new Worker()`, an ES module as in dist/src.
await build({ ...common, entryPoints: ["src/compress/gzip-worker.ts"], format: "esm" });
