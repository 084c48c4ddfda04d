#!/usr/bin/env bash
# Benchmark: `mkbase scratch hello` against `docker build` of the equivalent FROM scratch Dockerfile, and
# the start-up time of `mkbase --version` against `node -e 0`. Prints medians, ratios and PASS/FAIL per
# target. A measurement, not a test: exits 0 even when a target fails, unless --check is given.
#
# Usage: bench/scratch.sh [--runs N] [--check]
# Needs: mkbase built (npm run build), a running Docker Engine, gcc; hyperfine is used when installed.
# Other users of the engine slow both sides unevenly: numbers taken on a busy engine are indicative only.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
mkbase=("$repo/bin/mkbase")
runs=5
check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --check) check=1; shift ;;
    -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/mkbase-bench-scratch-XXXXXX")
tag_mkbase="mkbase-bench/scratch-mkbase:$$"
tag_docker="mkbase-bench/scratch-docker:$$"
cleanup() {
  docker image rm --force "$tag_mkbase" "$tag_docker" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wall time of a command in milliseconds; its output is discarded.
time_ms() {
  local start end
  start=$(date +%s%N)
  "$@" >/dev/null 2>&1
  end=$(date +%s%N)
  echo $(((end - start) / 1000000))
}

median() {
  sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Prints "ratio PASS|FAIL" for measured/baseline against a maximum ratio.
judge() {
  awk -v m="$1" -v b="$2" -v max="$3" 'BEGIN { r = m / b; printf "%.2f %s\n", r, (r <= max ? "PASS" : "FAIL") }'
}

echo "building the static hello program" >&2
gcc -static -O2 -o "$work/hello" "$repo/fixtures/c/hello.c"
mkdir "$work/context"
cp "$work/hello" "$work/context/hello"
printf 'FROM scratch\nCOPY hello /\nENTRYPOINT ["/hello"]\n' >"$work/context/Dockerfile"

# Both sides start from an engine without their image, and docker build without its cache, so each run
# creates a new image; the commands alternate so that a busy moment of the engine hits both.
mkbase_times=()
docker_times=()
for ((i = 1; i <= runs; i++)); do
  echo "round $i/$runs" >&2
  docker image rm --force "$tag_mkbase" "$tag_docker" >/dev/null 2>&1 || true
  sync
  if ((i % 2)); then
    mkbase_times+=("$(time_ms "${mkbase[@]}" scratch "$work/hello" -t "$tag_mkbase" --quiet)")
    docker_times+=("$(time_ms docker build --no-cache --quiet -t "$tag_docker" "$work/context")")
  else
    docker_times+=("$(time_ms docker build --no-cache --quiet -t "$tag_docker" "$work/context")")
    mkbase_times+=("$(time_ms "${mkbase[@]}" scratch "$work/hello" -t "$tag_mkbase" --quiet)")
  fi
done
docker run --rm --network none "$tag_mkbase" >/dev/null # the measured image really runs
mkbase_median=$(printf '%s\n' "${mkbase_times[@]}" | median)
docker_median=$(printf '%s\n' "${docker_times[@]}" | median)

echo "measuring start-up" >&2
# Bare node: with NODE_EXTRA_CA_CERTS set, node parses the CA file and its own roots before running any
# code (~50 ms here), which bin/mkbase spares mkbase; a baseline that paid it would flatter mkbase.
extra_ca=${NODE_EXTRA_CA_CERTS-}
unset NODE_EXTRA_CA_CERTS
if command -v hyperfine >/dev/null; then
  hyperfine --warmup 3 --runs 30 --style none --export-json "$work/startup.json" \
    "node -e 0" "${mkbase[*]} --version" >/dev/null 2>&1
  read -r node_median version_median < <(node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).results;
    console.log(r.map((x) => Math.round(x.median * 1000)).join(" "));' "$work/startup.json")
  startup_tool="hyperfine, 30 runs"
else
  node_times=()
  version_times=()
  for ((i = 1; i <= 30; i++)); do
    node_times+=("$(time_ms node -e 0)")
    version_times+=("$(time_ms "${mkbase[@]}" --version)")
  done
  node_median=$(printf '%s\n' "${node_times[@]}" | median)
  version_median=$(printf '%s\n' "${version_times[@]}" | median)
  startup_tool="loop, 30 runs"
fi

read -r build_ratio build_verdict < <(judge "$mkbase_median" "$docker_median" 1.0)
read -r startup_ratio startup_verdict < <(judge "$version_median" "$node_median" 1.5)

printf '\n%-44s %10s\n' "command (median)" "wall ms"
printf '%-44s %10s\n' "mkbase scratch hello" "$mkbase_median"
printf '%-44s %10s\n' "docker build (FROM scratch + COPY hello /)" "$docker_median"
printf '%-44s %10s\n' "mkbase --version ($startup_tool)" "$version_median"
printf '%-44s %10s\n' "node -e 0" "$node_median"
[ -z "$extra_ca" ] || printf '(NODE_EXTRA_CA_CERTS is set: the start-up rows ran without it, the build rows with it)\n'
printf '\nruns: mkbase %s | docker build %s\n\n' "${mkbase_times[*]}" "${docker_times[*]}"
printf '%s  mkbase scratch / docker build = %s (target <= 1.0)\n' "$build_verdict" "$build_ratio"
printf '%s  mkbase --version / node -e 0 = %s (target <= 1.5)\n' "$startup_verdict" "$startup_ratio"

if ((check)) && [ "$build_verdict$startup_verdict" != "PASSPASS" ]; then exit 1; fi
