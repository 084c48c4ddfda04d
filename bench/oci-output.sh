#!/usr/bin/env bash
# Benchmark: `mkbase dir DIR -o type=oci` (gzip and zstd) against `tar -C DIR -c . | pigz`, `| gzip` and
# `| zstd -T0`, all writing a file, on the bookworm minbase rootfs. No engine is involved, so no idle
# protocol: a sync before every run (no run pays for the previous one's writeback), the commands
# alternate, the order rotates every round, and medians are compared.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: bench/oci-output.sh [--runs N] [--quick] [--check]

Times `mkbase dir DIR -o type=oci,dest=FILE` with gzip-6 and zstd-3 against `tar -C DIR -c . | pigz -6`,
`| gzip -6` and `| zstd -3 -T0` into a file, then prints medians, ratios and PASS/FAIL per target:
gzip no slower than tar | pigz (ratio <= 1.0), zstd within 1.2x of tar | zstd -T0. A reference row adds
to tar | zstd the two SHA-256 digests an OCI layer needs (openssl sha256 on the tar and on the blob).

  --runs N   rounds of measurements (default 3)
  --quick    smoke test: 1 round on a small tree (usr/share/doc of the rootfs); no real numbers
  --check    exit 1 when a target fails (default: always exit 0, it is a measurement)

Environment: MKBASE_BENCH_ROOTFS=DIR uses DIR instead of the cached debootstrap tree.
EOF_USAGE
}

runs="" quick=0 check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:-}; shift 2 || bench_die "--runs needs a number" ;;
    --runs=*) runs=${1#*=}; shift ;;
    --quick) quick=1; shift ;;
    --check) check=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) bench_die "unknown argument: $1" "run with --help" ;;
  esac
done
[ -n "$runs" ] || runs=$((quick ? 1 : 3))
[[ $runs =~ ^[1-9][0-9]*$ ]] || bench_die "--runs must be a positive integer, not '$runs'"

bench_require node tar pigz gzip zstd openssl
[ -f "$repo/dist/bundle/cli/main.cjs" ] || bench_die "mkbase is not built" "cd $repo && npm run build"

bench_init
mkbase=("$repo/bin/mkbase")
work=$BENCH_SCRATCH

rootfs=$(bench_debian_rootfs)
tree=$rootfs
[ "$quick" -eq 0 ] || tree="$rootfs/usr/share/doc"
[ -d "$tree" ] || bench_die "$tree is not a directory"

bench_warm_page_cache "$tree"

BENCH_LABEL[pigz]="tar | pigz -6"
BENCH_LABEL[gzip]="tar | gzip -6"
BENCH_LABEL[oci_gzip]="mkbase -o type=oci (gzip-6)"
BENCH_LABEL[zstd]="tar | zstd -3 -T0"
BENCH_LABEL[oci_zstd]="mkbase -o type=oci (zstd-3)"
BENCH_LABEL[zstd_digests]="tar | zstd + both sha256 (ref.)"
keys=(pigz oci_gzip zstd oci_zstd gzip zstd_digests)

measure() {
  local key=$1 out="$work/out"
  local -a cmd
  rm -f -- "$out"
  # The previous run's output (~90 MB) is still being written back to disk: let it finish first, so no
  # run pays for the one before it.
  sync
  # The single-quoted scripts are expanded by the inner shell, from its arguments.
  # shellcheck disable=SC2016
  case "$key" in
    pigz) cmd=(bash -c 'set -o pipefail; tar -C "$1" -c . | pigz -6 >"$2"' bash "$tree" "$out") ;;
    gzip) cmd=(bash -c 'set -o pipefail; tar -C "$1" -c . | gzip -6 >"$2"' bash "$tree" "$out") ;;
    zstd) cmd=(bash -c 'set -o pipefail; tar -C "$1" -c . | zstd -q -3 -T0 >"$2"' bash "$tree" "$out") ;;
    # What an OCI layer needs on top of the compressed file: the SHA-256 of the tar (its DiffID) and of
    # the compressed blob, here by OpenSSL (with SHA-NI where the CPU has it, as node's) beside tee. The
    # hashers read FIFOs and are waited for: the layer has no digest before they finish.
    zstd_digests)
      rm -f -- "$work/raw.fifo" "$work/blob.fifo"
      mkfifo "$work/raw.fifo" "$work/blob.fifo"
      cmd=(bash -c 'set -o pipefail
        openssl sha256 <"$3/raw.fifo" >/dev/null & raw=$!
        openssl sha256 <"$3/blob.fifo" >/dev/null & blob=$!
        tar -C "$1" -c . | tee "$3/raw.fifo" | zstd -q -3 -T0 | tee "$3/blob.fifo" >"$2"
        wait "$raw" "$blob"' bash "$tree" "$out" "$work")
      ;;
    oci_gzip) cmd=("${mkbase[@]}" dir "$tree" -q --source-date-epoch 1700000000 -o "type=oci,dest=$out") ;;
    oci_zstd)
      cmd=("${mkbase[@]}" dir "$tree" -q --source-date-epoch 1700000000 -o "type=oci,dest=$out,compression=zstd")
      ;;
  esac
  bench_measure "$key" "${cmd[@]}"
  BENCH_SIZE[$key]=$(stat -c %s "$out")
}
declare -A BENCH_SIZE=()

bench_log "$runs round(s) of ${#keys[@]} commands on $tree"
for ((round = 0; round < runs; round++)); do
  for ((i = 0; i < ${#keys[@]}; i++)); do
    measure "${keys[(i + round) % ${#keys[@]}]}"
  done
done

echo
echo "mkbase -o type=oci against tar | compressor (files written to $work)"
[ "$quick" -eq 0 ] || echo "QUICK MODE: smoke test on a small tree; the numbers mean nothing"
bench_environment
printf 'tree:    %s (%s entries)\n' "$tree" "$(find "$tree" | wc -l)"
printf 'load:    %s (other users of the machine make the numbers noisy; see "other s")\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
echo
bench_table pigz "${keys[@]}"
echo
printf '%-34s %12s\n' output bytes
for key in "${keys[@]}"; do printf '%-34s %12s\n' "${BENCH_LABEL[$key]}" "${BENCH_SIZE[$key]}"; done
echo
bench_target "mkbase -o type=oci gzip wall time / tar | pigz" \
  "$(bench_ratio "$(bench_wall_median oci_gzip)" "$(bench_wall_median pigz)")" "<=" 1.0
bench_target "mkbase -o type=oci zstd wall time / tar | zstd -T0" \
  "$(bench_ratio "$(bench_wall_median oci_zstd)" "$(bench_wall_median zstd)")" "<=" 1.2

# Not a target: how mkbase compares with plain tools doing the same work (compressing and both digests).
printf '%-6s%-51s %s\n' "" "mkbase -o type=oci zstd / tar | zstd + both sha256" \
  "$(bench_ratio "$(bench_wall_median oci_zstd)" "$(bench_wall_median zstd_digests)")"

if [ "$BENCH_FAILURES" -gt 0 ] && [ "$check" -eq 1 ]; then
  exit 1
fi
exit 0
