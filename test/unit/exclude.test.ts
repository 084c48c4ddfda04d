/** `--exclude` patterns: Docker's `.dockerignore` matching, case and all. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { UsageError } from "../../src/errors.js";
import { PathFilter } from "../../src/tar/exclude.js";

describe("PathFilter", () => {
  it("matches case-sensitively, as Docker does on Linux", () => {
    const filter = new PathFilter(["BIN", "ETC/*"]);
    assert.equal(filter.excludes("bin"), false);
    assert.equal(filter.excludes("etc/passwd"), false);
    assert.equal(filter.excludes("BIN"), true);
    assert.equal(filter.excludes("ETC/passwd"), true);
  });

  it("takes ( ) + | { } ^ as plain characters and keeps classes, negated ones included", () => {
    const filter = new PathFilter(["c++", "a(1)", "x|y", "v{2}", "^top", "[ab]*.log", "n[^0-9]"]);
    for (const path of ["c++", "a(1)", "x|y", "v{2}", "^top", "a1.log", "b.log", "nx"]) {
      assert.equal(filter.excludes(path), true, path);
    }
    for (const path of ["cc", "c+", "a1", "x", "y", "vv", "top", "c.log", "n5"]) {
      assert.equal(filter.excludes(path), false, path);
    }
  });

  it("strips a leading / after a ! as Docker does", () => {
    const filter = new PathFilter(["var/*", "!/var/keep"]);
    assert.equal(filter.excludes("var/log"), true);
    assert.equal(filter.excludes("var/keep"), false);
    assert.equal(filter.mayIncludeUnder("var"), true);
  });

  it("refuses an invalid pattern when it is given, not in the middle of the walk", () => {
    assert.throws(
      () => new PathFilter(["ok", "["]),
      (error: unknown) => {
        assert.ok(error instanceof UsageError);
        assert.match(error.message, /^--exclude pattern "\[" is not valid: /);
        assert.match(error.hint ?? "", /Close every \[ with \]/);
        return true;
      },
    );
  });
});
