#!/usr/bin/env bash
# Benchmark: `mkbase debootstrap bookworm` against the seed recipe
# `debootstrap bookworm DIR && tar -C DIR -c . | docker import -`, cold and with a warm --cache-dir.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

usage() {
  cat <<'EOF'
Usage: bench/debootstrap.sh [--runs N] [--idle S] [--variant V] [--check]

Times, in each round and in this order:
  recipe   debootstrap --variant=V bookworm DIR && tar -C DIR -c . | docker import -
  cold     mkbase debootstrap bookworm --variant V              (mmdebstrap when installed; nothing cached)
  warm     mkbase debootstrap bookworm --variant V --cache-dir C (C filled by one untimed run first)
then prints medians, ratios to the recipe and PASS/FAIL for the targets (cold <= 0.8x, warm <= 0.5x).
Both sides build the same package set (minbase by default). Every run downloads from Debian's archive
(the tools' default mirror, or the machine's apt sources), so network speed is part of every number.

  --runs N     rounds (default 1; one round takes about 3 minutes plus the idle time)
  --idle S     seconds of idle disk before every timed run (default 65; see README)
  --variant V  debootstrap variant for both sides (default minbase)
  --check      exit 1 when a target fails (default: always exit 0, it is a measurement)
EOF
}

runs=1 idle="" variant=minbase check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:-}; shift 2 || bench_die "--runs needs a number" ;;
    --runs=*) runs=${1#*=}; shift ;;
    --idle) idle=${2:-}; shift 2 || bench_die "--idle needs a number of seconds" ;;
    --idle=*) idle=${1#*=}; shift ;;
    --variant) variant=${2:-}; shift 2 || bench_die "--variant needs a name" ;;
    --variant=*) variant=${1#*=}; shift ;;
    --check) check=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) bench_die "unknown argument: $1" "run with --help" ;;
  esac
done
# 65: the recipe deletes its tree every round, and the disk needs a minute to forget deletions (lib.sh).
[ -n "$idle" ] || idle=65
[[ $runs =~ ^[1-9][0-9]*$ ]] || bench_die "--runs must be a positive integer, not '$runs'"
[[ $idle =~ ^[0-9]+([.][0-9]+)?$ ]] || bench_die "--idle must be a number of seconds, not '$idle'"
BENCH_IDLE=$idle

bench_require docker node tar debootstrap
[ "$(id -u)" -eq 0 ] || bench_die "the bootstrappers need root" "run it with sudo"
[ -f "$repo/dist/bundle/cli/main.cjs" ] || bench_die "mkbase is not built" "cd $repo && npm run build"
docker version >/dev/null 2>&1 || bench_die "the Docker Engine does not answer" "start dockerd, then run again"

bench_init
mkbase=("$repo/bin/mkbase")
work=$BENCH_SCRATCH
cache="$work/cache"
tag_prefix="mkbase-bench/debootstrap:$$"
BENCH_LABEL[recipe]="debootstrap && tar | docker import"
BENCH_LABEL[cold]="mkbase debootstrap (cold)"
BENCH_LABEL[warm]="mkbase debootstrap --cache-dir (warm)"
# The recipe's target dir is removed after each run, outside the timing, and mount-safely on exit.
bench_at_exit "bench_remove_build_dir '$work/recipe-rootfs'"

bench_log "filling the package cache with one untimed mkbase run"
bench_track_image "$tag_prefix-prime"
"${mkbase[@]}" debootstrap bookworm --variant "$variant" --cache-dir "$cache" -t "$tag_prefix-prime" -q >/dev/null

bench_log "$runs round(s) of 3 commands, ${idle} s idle before each: about $((runs * (3 * ${idle%.*} + 200) / 60 + 1)) min"
for ((round = 1; round <= runs; round++)); do
  bench_settle
  bench_track_image "$tag_prefix-recipe-$round"
  # shellcheck disable=SC2016
  bench_measure recipe sh -c 'debootstrap --variant="$1" bookworm "$2" >/dev/null && tar -C "$2" -c . | docker import - "$3"' \
    sh "$variant" "$work/recipe-rootfs" "$tag_prefix-recipe-$round"
  bench_remove_build_dir "$work/recipe-rootfs"

  bench_settle
  bench_track_image "$tag_prefix-cold-$round"
  bench_measure cold "${mkbase[@]}" debootstrap bookworm --variant "$variant" -t "$tag_prefix-cold-$round" -q

  bench_settle
  bench_track_image "$tag_prefix-warm-$round"
  bench_measure warm "${mkbase[@]}" debootstrap bookworm --variant "$variant" --cache-dir "$cache" \
    -t "$tag_prefix-warm-$round" -q
done
bench_remove_images

echo
bench_environment
printf 'tools:   %s, %s\n' "$(mmdebstrap --version 2>/dev/null || echo 'no mmdebstrap')" "$(debootstrap --version)"
echo
bench_table recipe recipe cold warm
echo
bench_target "mkbase cold / recipe wall time" \
  "$(bench_ratio "$(bench_wall_median cold)" "$(bench_wall_median recipe)")" "<=" 0.8
bench_target "mkbase warm (--cache-dir) / recipe wall time" \
  "$(bench_ratio "$(bench_wall_median warm)" "$(bench_wall_median recipe)")" "<=" 0.5
if [ "$check" -eq 1 ] && [ "$BENCH_FAILURES" -gt 0 ]; then exit 1; fi
exit 0
