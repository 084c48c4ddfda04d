// Bundles the CLI into dist/bundle/cli/, which bin/mkbase runs. One file instead of some forty small ES
// modules saves ~35 ms on every run (node resolves, reads and links each module in turn), which is a
// large share of `mkbase scratch`'s ~200 ms. The tests' own imports use tsc's output in dist/src.
import { build } from "esbuild";

await build({
  // The gzip worker is a file of its own for `new Worker()`; next to main.js, the URL in the compressor
  // finds it, and package.json is three levels up, as from dist/src/cli/main.js.
  entryPoints: ["src/cli/main.ts", "src/compress/gzip-worker.ts"],
  outdir: "dist/bundle/cli",
  entryNames: "[name]",
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  sourcemap: "linked",
  // A native addon cannot be bundled; ora and chalk load only for a terminal or an error, so they stay
  // out of the file every run reads.
  external: ["@napi-rs/xattr", "ora", "chalk"],
  // commander is CommonJS and requires node's modules: an ES module bundle needs a require for it.
  banner: {
    js: 'import { createRequire as __mkbaseRequire } from "node:module";\nconst require = __mkbaseRequire(import.meta.url);',
  },
  logLevel: "warning",
});
