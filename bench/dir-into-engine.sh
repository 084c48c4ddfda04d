#!/usr/bin/env bash
# Benchmark: `mkbase dir` into the Docker Engine (import and load paths) against `tar | docker import`,
# plus the memory check on a tree twice the size. See bench/README.md for the protocol and the targets.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

usage() {
  cat <<'EOF'
Usage: bench/dir-into-engine.sh [--runs N] [--idle S] [--quick] [--check]

Times `tar -C DIR -c . | docker import -`, `mkbase dir DIR --via import`, `mkbase dir DIR` (load) and
`docker load -i` of a saved image on a debootstrap bookworm minbase rootfs, alternating the commands and
idling before each run, then prints medians, ratios and PASS/FAIL per target.

  --runs N   rounds of measurements (default 3)
  --idle S   seconds of idle disk before every timed run (default 5; see README)
  --quick    smoke test: 1 round, 2 s idle, a small tree (usr/share/doc of the rootfs); no real numbers
  --check    exit 1 when a target fails (default: always exit 0, it is a measurement)

Environment: MKBASE_BENCH_ROOTFS=DIR uses DIR instead of the cached debootstrap tree.
EOF
}

runs="" idle="" quick=0 check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:-}; shift 2 || bench_die "--runs needs a number" ;;
    --runs=*) runs=${1#*=}; shift ;;
    --idle) idle=${2:-}; shift 2 || bench_die "--idle needs a number of seconds" ;;
    --idle=*) idle=${1#*=}; shift ;;
    --quick) quick=1; shift ;;
    --check) check=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) bench_die "unknown argument: $1" "run with --help" ;;
  esac
done
[ -n "$runs" ] || runs=$((quick ? 1 : 3))
[ -n "$idle" ] || idle=$((quick ? 2 : 5))
[[ $runs =~ ^[1-9][0-9]*$ ]] || bench_die "--runs must be a positive integer, not '$runs'"
[[ $idle =~ ^[0-9]+([.][0-9]+)?$ ]] || bench_die "--idle must be a number of seconds, not '$idle'"
BENCH_IDLE=$idle

bench_require docker node tar cp
[ -f "$repo/dist/bundle/cli/main.cjs" ] || bench_die "mkbase is not built" "cd $repo && npm run build"
docker version >/dev/null 2>&1 || bench_die "the Docker Engine does not answer" "start dockerd, then run again"

bench_init
mkbase=("$repo/bin/mkbase")
work=$BENCH_SCRATCH
tag_prefix="mkbase-bench/dir-into-engine:$$"

rootfs=$(bench_debian_rootfs)
source_tree=$rootfs
[ "$quick" -eq 0 ] || source_tree="$rootfs/usr/share/doc"
[ -d "$source_tree" ] || bench_die "$source_tree is not a directory"

# Private copies, so that every timed run can get a layer the engine has never seen: `docker load` skips
# unpacking a layer whose chain ID the engine already holds, and other images (anyone's) may hold the very
# layer of an unchanged tree. The doubled tree is two copies side by side, for the memory check.
bench_log "copying $source_tree into $work"
cp -a -- "$source_tree" "$work/tree"
mkdir "$work/doubled"
cp -a -- "$source_tree" "$work/doubled/a"
cp -a -- "$source_tree" "$work/doubled/b"
chmod 755 "$work/tree" "$work/doubled"

# A new file with a unique content makes the tree's layer (and so its DiffID and chain ID) new.
stamp_tree() {
  printf '%s %s %s\n' "$$" "$(date +%s.%N)" "$RANDOM" >"$1/.mkbase-bench-nonce"
}

# The engine's own load path as a reference: docker-archives written by `docker save`, sent by the CLI,
# one per round (each with a layer the engine does not hold). Making them removes images, so the rounds
# start only once the disk has forgotten those deletions.
bench_log "making $runs docker-archive(s) for the docker load reference"
saved_tag="$tag_prefix-saved"
for ((round = 0; round < runs; round++)); do
  stamp_tree "$work/tree"
  bench_track_image "$saved_tag-$round"
  "${mkbase[@]}" dir "$work/tree" -t "$saved_tag-$round" -q >/dev/null
  docker save -o "$work/saved-$round.tar" "$saved_tag-$round"
done
bench_log "removing them, then ${BENCH_DELETION_QUIET} s for the disk to forget the deletions"
bench_settle_deletions

bench_warm_page_cache "$work/tree" "$work/doubled"

# The first import after the quiet minute ran 1.5-2x slower than the rest, whatever the command: one
# untimed import takes that cost, so that it does not land on the first command of the first round.
bench_log "one untimed import to warm the engine and the disk"
stamp_tree "$work/tree"
bench_track_image "$tag_prefix-warm-up"
tar -C "$work/tree" -c . | docker import - "$tag_prefix-warm-up" >/dev/null

BENCH_LABEL[tar]="tar | docker import"
BENCH_LABEL[import]="mkbase dir --via import"
BENCH_LABEL[load]="mkbase dir (load)"
BENCH_LABEL[saved]="docker load -i (docker save file)"
BENCH_LABEL[doubled]="mkbase dir (load), doubled tree"
keys=(tar import load saved doubled)

# measure KEY ROUND: one timed run of a command after the idle protocol. Its image stays until the exit.
measure() {
  local key=$1 round=$2 tag="$tag_prefix-r$2-$1"
  local -a cmd
  case "$key" in
    tar)
      stamp_tree "$work/tree"
      # shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
      cmd=(bash -c 'set -o pipefail; tar -C "$1" -c . | docker import - "$2"' bash "$work/tree" "$tag")
      ;;
    import)
      stamp_tree "$work/tree"
      cmd=("${mkbase[@]}" dir "$work/tree" --via import -t "$tag" -q)
      ;;
    load)
      stamp_tree "$work/tree"
      cmd=("${mkbase[@]}" dir "$work/tree" -t "$tag" -q)
      ;;
    saved)
      tag="$saved_tag-$round"
      cmd=(docker load -q -i "$work/saved-$round.tar")
      ;;
    doubled)
      stamp_tree "$work/doubled"
      cmd=("${mkbase[@]}" dir "$work/doubled" -t "$tag" -q)
      ;;
  esac
  bench_settle
  bench_track_image "$tag"
  bench_measure "$key" "${cmd[@]}"
  case "$key" in
    import | load | doubled)
      [[ $BENCH_LAST_STDOUT =~ ^sha256:[0-9a-f]{64}$ ]] ||
        bench_die "mkbase printed '$BENCH_LAST_STDOUT' instead of an image ID"
      ;;
  esac
}

bench_log "$runs round(s) of ${#keys[@]} commands, ${idle} s idle before each: about $((runs * ${#keys[@]} * (${idle%.*} + 6) / 60 + 1)) min"
for ((round = 0; round < runs; round++)); do
  # Rotate the order every round, so that no command always runs first or right after the same one.
  for ((i = 0; i < ${#keys[@]}; i++)); do
    measure "${keys[(i + round) % ${#keys[@]}]}" "$round"
  done
done
bench_remove_images

tree_bytes=$(du -sb "$work/tree" | cut -f1)
tree_entries=$(find "$work/tree" | wc -l)
tar_bytes=$(tar -C "$work/tree" -c . | wc -c)

echo
echo "mkbase dir into the Docker Engine"
[ "$quick" -eq 0 ] || echo "QUICK MODE: smoke test on a small tree; the numbers mean nothing"
bench_environment
printf 'tree:    %s (%s entries, %.1f MiB on disk, %.1f MiB as tar); doubled tree: 2 copies\n' \
  "$source_tree" "$tree_entries" "$(awk -v b="$tree_bytes" 'BEGIN { print b / 1048576 }')" \
  "$(awk -v b="$tar_bytes" 'BEGIN { print b / 1048576 }')"
printf 'runs:    %s round(s), order rotated each round, %s s idle + sync before every run, no image removed\n' "$runs" "$idle"
echo
bench_table tar "${keys[@]}"
echo
cat <<'EOF'
client s: user+system CPU of the command (median); engine s: dockerd and its children (median);
other s: the most CPU the rest of the machine used during one run (kernel writeback included; seconds
  of it mean other work competed for the cores);
RSS: highest peak RSS over the runs (for the docker CLI rows: their largest process);
ratio: median / median of tar | docker import; pair: median of the per-round ratios.
EOF
read -r disturbed total < <(bench_disturbed_runs)
if [ "$disturbed" -gt 0 ]; then
  echo "warning: in $disturbed of $total runs other work used more than half a core; the numbers are suspect,"
  echo "  run again on a quiet machine"
fi
echo

single_rss=$(bench_rss_max load)
doubled_rss=$(bench_rss_max doubled)
mkbase_rss=$(bench_max "$(bench_rss_max import)" "$single_rss")
bench_target "mkbase --via import wall time / tar | docker import" \
  "$(bench_ratio "$(bench_wall_median import)" "$(bench_wall_median tar)")" "<=" 1.1
bench_target "mkbase (load) wall time / tar | docker import" \
  "$(bench_ratio "$(bench_wall_median load)" "$(bench_wall_median tar)")" "<=" 1.3
bench_target "mkbase peak RSS, MiB (import and load)" "$(bench_mib "$mkbase_rss")" "<" 150
bench_target "doubled-tree RSS / single-tree RSS (load)" "$(bench_ratio "$doubled_rss" "$single_rss")" "<=" 1.15

if [ "$BENCH_FAILURES" -gt 0 ] && [ "$check" -eq 1 ]; then
  exit 1
fi
exit 0
