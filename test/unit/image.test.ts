import assert from "node:assert/strict";
import { appendFileSync, closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { UsageError } from "../../src/errors.js";
import {
  applyChange,
  checkStopSignal,
  checkVolume,
  configToInstructions,
  parseCommand,
  parsePort,
} from "../../src/image/config.js";
import { AppendedDigest, canonicalJson, sha256Digest } from "../../src/image/digest.js";
import { configJson, formatCreated, imageId, type Image } from "../../src/image/image.js";
import { formatReference, parseReference, parseTagReference } from "../../src/image/reference.js";

describe("image references", () => {
  it("accepts the forms docker accepts", () => {
    assert.deepEqual(parseTagReference("corp/base:1.0"), {
      domain: undefined,
      path: "corp/base",
      tag: "1.0",
      digest: undefined,
    });
    assert.equal(parseTagReference("ubuntu").tag, "latest");
    const withPort = parseReference("localhost:5000/a/b:x");
    assert.deepEqual([withPort.domain, withPort.path, withPort.tag], ["localhost:5000", "a/b", "x"]);
    assert.equal(parseReference("Registry.Example.com/x").domain, "Registry.Example.com");
    assert.equal(formatReference(parseReference("a__b/c-d.e:T_1")), "a__b/c-d.e:T_1");
  });

  for (const bad of [
    "UPPER/case",
    "a:b:c",
    "",
    "a//b",
    "-a",
    "a:",
    "a:-x",
    `${"a".repeat(256)}`,
    "a@sha256:zz",
    "a/B",
  ]) {
    it(`rejects ${JSON.stringify(bad)}`, () => {
      assert.throws(() => parseTagReference(bad), UsageError);
    });
  }

  it("refuses a digest in a tag", () => {
    assert.throws(() => parseTagReference(`a@sha256:${"0".repeat(64)}`), /cannot carry a digest/);
  });
});

/** Each change line is refused with a usage error whose message matches, and which has a hint. */
function assertRefused(refusals: readonly (readonly [string, RegExp])[]): void {
  for (const [line, message] of refusals) {
    assert.throws(
      () => applyChange({}, line),
      (error: unknown) =>
        error instanceof UsageError && message.test(error.message) && error.hint !== undefined,
      line,
    );
  }
}
describe("container config", () => {
  it("parses exec and shell forms", () => {
    assert.deepEqual(parseCommand('["/bin/app","-x"]', "--cmd"), ["/bin/app", "-x"]);
    assert.deepEqual(parseCommand("echo hi", "--cmd"), ["/bin/sh", "-c", "echo hi"]);
    assert.throws(() => parseCommand("[not json", "--cmd"), UsageError);
    assert.throws(() => parseCommand("[1,2]", "--cmd"), UsageError);
  });

  it("parses ports and ranges", () => {
    assert.deepEqual(parsePort("80", "--expose"), ["80/tcp"]);
    assert.deepEqual(parsePort("53/UDP", "--expose"), ["53/udp"]);
    assert.deepEqual(parsePort("8000-8002", "--expose"), ["8000/tcp", "8001/tcp", "8002/tcp"]);
    assert.throws(() => parsePort("0", "--expose"), UsageError);
    assert.throws(() => parsePort("http", "--expose"), UsageError);
    // A port given in a change is named with the change, not with a flag the user did not pass.
    assert.throws(() => applyChange({}, "EXPOSE 80/xyz"), {
      name: "UsageError",
      message: '--change "EXPOSE 80/xyz": "80/xyz" is not a port',
    });
  });

  it("applies docker import --change instructions", () => {
    let config = applyChange({}, 'ENV A=1 B="two words"');
    config = applyChange(config, "ENV LEGACY some value");
    config = applyChange(config, 'LABEL "org.x"="y z"');
    config = applyChange(config, "EXPOSE 80 443/tcp");
    config = applyChange(config, 'VOLUME ["/data"]');
    config = applyChange(config, 'cmd ["/bin/sh"]');
    config = applyChange(config, "ENV A=3");
    assert.deepEqual(config.Env, ["B=two words", "LEGACY=some value", "A=3"]);
    assert.deepEqual(config.Labels, { "org.x": "y z" });
    assert.deepEqual(Object.keys(config.ExposedPorts ?? {}), ["80/tcp", "443/tcp"]);
    assert.deepEqual(Object.keys(config.Volumes ?? {}), ["/data"]);
    assert.deepEqual(config.Cmd, ["/bin/sh"]);
    assert.throws(() => applyChange({}, "RUN apt-get update"), UsageError);
    assert.throws(() => applyChange({}, "USER"), UsageError);
    // Docker's parser refuses a legacy ENV or LABEL without a value rather than take an empty one.
    for (const line of ["ENV A", "LABEL org.x"]) {
      assert.throws(() => applyChange({}, line), {
        name: "UsageError",
        message: `${line} has no value`,
      });
    }
  });

  it("reads line continuations, comments and several lines in a change as docker import does", () => {
    assert.deepEqual(applyChange({}, "ENV A=1 \\\n  B=2").Env, ["A=1", "B=2"]);
    assert.deepEqual(applyChange({}, 'CMD ["a", \\\r\n "b"]').Cmd, ["a", "b"]);
    // Blank and comment lines inside a continuation are skipped; a continued line keeps its blanks.
    assert.equal(applyChange({}, "USER x \\\n  # note\n\n  y").User, "x   y");
    assert.deepEqual(applyChange({}, "ENV A=1\\ \t\n B=2").Env, ["A=1", "B=2"]);
    const several = applyChange({}, "# base settings\nCMD echo a\n  USER x");
    assert.deepEqual(several.Cmd, ["/bin/sh", "-c", "echo a"]);
    assert.equal(several.User, "x");
    assert.throws(() => applyChange({}, "# nothing else"), UsageError);
  });

  it("substitutes $NAME in a change as the engine does, from the Env before the instruction", () => {
    let config = applyChange({}, 'ENV A=1 B="two words"');
    config = applyChange(config, "ENV PATH=/opt/bin:$A SAME_LINE=$A X=5 Y=$X");
    config = applyChange(
      config,
      String.raw`ENV C=${"${A}"}x D=${"${UNSET:-dflt}"} E=${"${A:+alt}"} F='$A' G=\$A H="$A $B" I=$`,
    );
    assert.deepEqual(config.Env, [
      "A=1",
      "B=two words",
      "PATH=/opt/bin:1",
      "SAME_LINE=1",
      "X=5",
      // Y was read before X was set on the same line, as the engine does.
      "Y=",
      "C=1x",
      "D=dflt",
      "E=alt",
      "F=$A",
      "G=$A",
      "H=1 two words",
      "I=$",
    ]);
    config = [
      "LABEL q=$A",
      "USER $A:$X",
      "WORKDIR /srv/$A",
      'VOLUME ["/data/$A"]',
      "EXPOSE 80$A",
      "ENV LEGACY value of $A",
    ].reduce(applyChange, config);
    assert.equal(config.Labels?.q, "1");
    assert.equal(config.User, "1:5");
    assert.equal(config.WorkingDir, "/srv/1");
    assert.deepEqual(Object.keys(config.Volumes ?? {}), ["/data/1"]);
    assert.deepEqual(Object.keys(config.ExposedPorts ?? {}), ["801/tcp"]);
    assert.equal(config.Env?.at(-1), "LEGACY=value of 1");
    // CMD and ENTRYPOINT are not substituted: the shell in the container does that.
    assert.deepEqual(applyChange(config, "CMD echo $A").Cmd, ["/bin/sh", "-c", "echo $A"]);
    assert.throws(() => applyChange(config, "ENV Z=${A"), /is not a variable mkbase can substitute/);
    assert.throws(() => applyChange(config, "ENV Z=${A%x}"), /is not a variable mkbase can substitute/);
  });

  it("resolves a relative WORKDIR against the current one, as the engine's import does", () => {
    assert.equal(applyChange({}, "WORKDIR relative").WorkingDir, "/relative");
    assert.equal(applyChange({ WorkingDir: "/srv" }, "WORKDIR app").WorkingDir, "/srv/app");
    assert.equal(applyChange({ WorkingDir: "/srv" }, "WORKDIR ../x").WorkingDir, "/x");
    assert.equal(applyChange({ WorkingDir: "/srv" }, "WORKDIR /opt/../app").WorkingDir, "/opt/../app");
  });

  it("takes a stop signal the engine can read, as written, and refuses others", () => {
    for (const signal of ["SIGTERM", "TERM", "sigquit", "15", "255", "SIGRTMIN+3", "RTMAX-14", "SIGWINCH"]) {
      assert.equal(checkStopSignal(signal, "--stop-signal"), signal);
      assert.equal(applyChange({}, `STOPSIGNAL ${signal}`).StopSignal, signal);
    }
    for (const signal of ["FOO", "0", "256", "SIGRTMIN+16", "RTMAX-15", "-9", "SIG", "TERM "]) {
      assert.throws(
        () => checkStopSignal(signal, "--stop-signal"),
        /--stop-signal: ".*" is not a signal/,
        signal,
      );
    }
    assert.throws(
      () => applyChange({}, "STOPSIGNAL FOO"),
      /--change "STOPSIGNAL FOO": "FOO" is not a signal/,
    );
  });

  it("refuses a relative volume, which newer runtimes will not mount", () => {
    assert.deepEqual(applyChange({}, "VOLUME /data /var/lib/x").Volumes, { "/data": {}, "/var/lib/x": {} });
    assert.deepEqual(applyChange({}, 'VOLUME ["/a", "/b"]').Volumes, { "/a": {}, "/b": {} });
    assert.throws(
      () => applyChange({}, "VOLUME /ok data"),
      (error: unknown) =>
        error instanceof UsageError &&
        error.message === '--change "VOLUME /ok data": the volume "data" is not an absolute path' &&
        error.hint === "Name the mount point from the container's root, e.g. /data.",
    );
    assert.throws(
      () => applyChange({}, 'VOLUME ["./cache"]'),
      /the volume "\.\/cache" is not an absolute path/,
    );
    assert.equal(checkVolume("/srv", "--volume"), "/srv");
    assert.throws(
      () => checkVolume("./srv/x", "--volume"),
      (error: unknown) => error instanceof UsageError && /e\.g\. \/srv\/x\.$/.test(error.hint ?? ""),
    );
    assert.throws(() => checkVolume("", "--volume"), /--volume: the volume "" is not an absolute path/);
  });

  it("round-trips through Dockerfile instructions", () => {
    const config = {
      // Values the engine would read specially, unless quoted: they must come back as they are.
      Env: ["A=1", 'Q=say "hi"', "LITERAL=$A ${A} \\$ back\\slash 'single'"],
      Labels: { b: "2", a: "$A", "with space": "x" },
      Cmd: ["/bin/sh", "-c", "echo $A"],
      Entrypoint: ["/tini", "--"],
      User: "1000:1000",
      WorkingDir: "/srv",
      StopSignal: "SIGQUIT",
      ExposedPorts: { "80/tcp": {} },
      Volumes: { "/data": {}, "/with space/$A": {} },
    };
    const rebuilt = configToInstructions(config).reduce(applyChange, {});
    assert.deepEqual(rebuilt, config);
  });

  it("reads HEALTHCHECK as Docker's parser does", () => {
    assert.deepEqual(applyChange({}, "HEALTHCHECK none").Healthcheck, { Test: ["NONE"] });
    assert.deepEqual(
      applyChange({}, 'HEALTHCHECK --interval=5s --retries=2 CMD ["/bin/true", "-x"]').Healthcheck,
      {
        Test: ["CMD", "/bin/true", "-x"],
        Interval: 5_000_000_000,
        Retries: 2,
      },
    );
    // The shell form is the rest of the line, quotes and $ untouched; the durations are Go's, in ns (the
    // values an engine 20.10 import recorded for this line).
    assert.deepEqual(
      applyChange(
        { Env: ["A=1"] },
        'HEALTHCHECK --interval=1m30.5s --timeout=1.5ms --start-period=2h --start-interval="250ms"  cmd   curl -f "http://x/$A"  ',
      ).Healthcheck,
      {
        Test: ["CMD-SHELL", 'curl -f "http://x/$A"'],
        Interval: 90_500_000_000,
        Timeout: 1_500_000,
        StartPeriod: 7_200_000_000_000,
        StartInterval: 250_000_000,
      },
    );
    // 0 (or an empty value) is the engine's default, which it leaves out of the config.
    assert.deepEqual(
      applyChange({}, "HEALTHCHECK --interval=0 --timeout=0s --start-period= --retries=0 CMD x").Healthcheck,
      { Test: ["CMD-SHELL", "x"] },
    );
    assert.deepEqual(applyChange({}, "HEALTHCHECK --timeout=.5s --retries=+3 CMD x").Healthcheck, {
      Test: ["CMD-SHELL", "x"],
      Timeout: 500_000_000,
      Retries: 3,
    });
    // A later HEALTHCHECK replaces the earlier one as a whole.
    const replaced = ["HEALTHCHECK --retries=5 CMD a", "HEALTHCHECK CMD b"].reduce(applyChange, {});
    assert.deepEqual(replaced.Healthcheck, { Test: ["CMD-SHELL", "b"] });
  });

  it("refuses a HEALTHCHECK Docker refuses, with a hint", () => {
    const refusals: [string, RegExp][] = [
      ["HEALTHCHECK --bogus=1 CMD x", /HEALTHCHECK has no flag --bogus$/],
      ["HEALTHCHECK --interval CMD x", /--interval has no value$/],
      ["HEALTHCHECK --interval=1s --interval=2s CMD x", /--interval is given twice$/],
      ["HEALTHCHECK --interval=5 CMD x", /--interval=5 is not a duration$/],
      ["HEALTHCHECK --timeout=1x CMD x", /--timeout=1x is not a duration$/],
      ["HEALTHCHECK --interval=500us CMD x", /--interval=500us is shorter than 1ms$/],
      ["HEALTHCHECK --start-period=-1s CMD x", /--start-period=-1s is shorter than 1ms$/],
      ["HEALTHCHECK --interval=2501h59m59.254740993s CMD x", /cannot be recorded exactly$/],
      ["HEALTHCHECK --retries=-1 CMD x", /--retries=-1 is not a number of retries$/],
      ["HEALTHCHECK --retries=two CMD x", /--retries=two is not a number of retries$/],
      ["HEALTHCHECK --retries=2147483648 CMD x", /is not a number of retries$/],
      ["HEALTHCHECK --interval=5s", /HEALTHCHECK needs CMD or NONE$/],
      ["HEALTHCHECK RUN x", /HEALTHCHECK needs CMD or NONE, not RUN$/],
      ["HEALTHCHECK CMD", /HEALTHCHECK CMD has no command$/],
      ["HEALTHCHECK --retries=1 CMD []", /HEALTHCHECK CMD has no command$/],
      ["HEALTHCHECK NONE x", /HEALTHCHECK NONE takes no arguments$/],
      // The engine ignores flags before NONE; they can only be a mistake.
      ["HEALTHCHECK --interval=5s NONE", /HEALTHCHECK NONE takes no flags$/],
      ["HEALTHCHECK CMD [1]", /the exec form must be a JSON array of strings/],
    ];
    assertRefused(refusals);
    assert.throws(() => applyChange({}, "HEALTHCHECK"), /HEALTHCHECK needs an argument/);
  });

  it("records ONBUILD triggers verbatim, in order, and refuses those Docker refuses", () => {
    const config = [
      "ONBUILD RUN echo $A   ",
      "onbuild  copy . /src",
      "ONBUILD RUN make \\\n  && make install",
    ].reduce(applyChange, { Env: ["A=1"] });
    // Not substituted, spacing and case kept (trailing blanks too), continued lines joined: as the engine
    // records the triggers.
    assert.deepEqual(config.OnBuild, ["RUN echo $A   ", "copy . /src", "RUN make   && make install"]);
    const refusals: [string, RegExp][] = [
      ["ONBUILD ONBUILD RUN x", /ONBUILD is not allowed as an ONBUILD trigger$/],
      ["ONBUILD from alpine", /FROM is not allowed as an ONBUILD trigger$/],
      ["ONBUILD MAINTAINER me", /MAINTAINER is not allowed as an ONBUILD trigger$/],
      ["ONBUILD --x RUN y", /ONBUILD has no flag --x$/],
      ["ONBUILD --", /ONBUILD needs an instruction$/],
    ];
    assertRefused(refusals);
    assert.throws(() => applyChange({}, "ONBUILD"), /ONBUILD needs an argument/);
  });

  it("writes HEALTHCHECK and ONBUILD back as the engine reads them", () => {
    const config = {
      Healthcheck: {
        Test: ["CMD-SHELL", 'curl -f "http://localhost/$PORT" || exit 1'],
        Interval: 90_500_000_000,
        Timeout: 1_500_000,
        StartPeriod: 7_200_000_000_000,
        StartInterval: 1_000_000_000,
        Retries: 3,
      },
      OnBuild: ["RUN echo $A   ", "COPY . /src"],
    };
    const lines = configToInstructions(config);
    assert.deepEqual(lines, [
      'HEALTHCHECK --interval=1m30.5s --timeout=1.5ms --start-period=2h0m0s --start-interval=1s --retries=3 CMD curl -f "http://localhost/$PORT" || exit 1',
      "ONBUILD RUN echo $A   ",
      "ONBUILD COPY . /src",
    ]);
    assert.deepEqual(lines.reduce(applyChange, {}), config);
    for (const Healthcheck of [
      { Test: ["NONE"] },
      { Test: ["CMD", "/bin/check", "a b"], Interval: 5_000_000_000 },
    ]) {
      assert.deepEqual(configToInstructions({ Healthcheck }).reduce(applyChange, {}), { Healthcheck });
    }
  });
});

describe("image identity", () => {
  const image: Image = {
    platform: { os: "linux", architecture: "arm64", variant: "v8" },
    created: 1_700_000_000,
    config: { Cmd: ["/hello"], Labels: {} },
    layers: [{ diffId: `sha256:${"a".repeat(64)}`, size: 1024, open: undefined }],
    history: [{ created: "2023-11-14T22:13:20Z", createdBy: "mkbase dir" }],
    annotations: {},
  };

  it("writes a canonical OCI config", () => {
    const parsed = JSON.parse(configJson(image).toString()) as Record<string, unknown>;
    assert.equal(parsed.created, "2023-11-14T22:13:20Z");
    assert.equal(parsed.architecture, "arm64");
    assert.equal(parsed.variant, "v8");
    assert.deepEqual(parsed.config, { Cmd: ["/hello"] }, "empty members are omitted");
    assert.deepEqual(parsed.rootfs, { type: "layers", diff_ids: [`sha256:${"a".repeat(64)}`] });
    assert.equal(configJson(image).toString(), canonicalJson(parsed).toString());
  });

  it("writes created as RFC 3339, whose years have four digits, also for a time after 9999", () => {
    // Go's time.Parse(time.RFC3339, …), which the engine and skopeo read `created` with, takes no other form.
    const rfc3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;
    const cases: [number, string][] = [
      [0, "1970-01-01T00:00:00Z"],
      [10_413_792_000, "2300-01-01T00:00:00Z"],
      [253_402_300_799, "9999-12-31T23:59:59Z"],
      // A tree with a file dated in the year 11476 (tmpfs keeps such a time) makes this epoch.
      [300_000_000_000, "9999-12-31T23:59:59Z"],
    ];
    for (const [created, expected] of cases) {
      const written = formatCreated(created);
      assert.match(written, rfc3339);
      assert.equal(written, expected);
      const parsed = JSON.parse(configJson({ ...image, created }).toString()) as { created: string };
      assert.equal(parsed.created, expected);
    }
  });

  it("carries Docker's Healthcheck and OnBuild in the config it writes", () => {
    const config = {
      Healthcheck: { Test: ["CMD", "/bin/true"], Interval: 5_000_000_000, Retries: 2 },
      OnBuild: ["RUN echo hi"],
    };
    const parsed = JSON.parse(configJson({ ...image, config }).toString()) as Record<string, unknown>;
    assert.deepEqual(parsed.config, config);
  });

  // The golden value was computed independently: sha256 of the same document written by Python json.dumps(sort_keys).
  it("pins the image ID of a fixed image (golden digest)", () => {
    assert.equal(imageId(image), "sha256:45889b8a2224c027d09535e2c86cbf8b990748fe9055aee9775dbe7e5358fb5f");
  });
});

describe("digest of what another writer appends", () => {
  it("hashes only the appended bytes, however the appends and the catching up interleave", () => {
    const dir = mkdtempSync(join(tmpdir(), "mkbase-digest-test-"));
    try {
      const path = join(dir, "file");
      writeFileSync(path, "header bytes that are not part of the blob");
      const start = "header bytes that are not part of the blob".length;
      const fd = openSync(path, "a+");
      try {
        const appended = new AppendedDigest(fd, start);
        const pieces = [
          Buffer.alloc(3_000_000, 1),
          Buffer.from("x"),
          Buffer.alloc(0),
          Buffer.alloc(1_500_000, 2),
        ];
        for (const piece of pieces) {
          appendFileSync(path, piece);
          appended.catchUp();
        }
        appendFileSync(path, "tail written after the last catch-up");
        assert.equal(
          appended.digest(),
          sha256Digest(Buffer.concat([...pieces, Buffer.from("tail written after the last catch-up")])),
        );
      } finally {
        closeSync(fd);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
