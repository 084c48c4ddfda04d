# shellcheck shell=bash
# Helpers shared by the benchmark scripts in this directory. Source it, do not run it:
#   . "$(dirname "$0")/lib.sh"
#
# What it gives:
#   - bench_init                   scratch dir and exit/interrupt traps (call after parsing arguments)
#   - bench_measure KEY CMD...     run CMD under /usr/bin/time; record wall time, peak RSS, client CPU and
#                                  the engine's CPU for KEY (one sample per call, in call order)
#   - bench_median/min/max, bench_ratio, bench_pair_ratio   statistics over the recorded samples
#   - bench_settle                 the idle protocol: sync, wait (images stay until exit)
#   - bench_settle_deletions       remove the tracked images, sync, wait out the ext4 deleted-inode penalty
#   - bench_target                 one PASS/FAIL line per target; failures counted in BENCH_FAILURES
#   - bench_track_image / bench_remove_images / bench_on_exit   cleanup of everything a run created
#   - bench_debian_rootfs          the cached `debootstrap --variant=minbase bookworm` tree
#   - bench_warm_page_cache        reads trees once so that every timed command finds them cached
#
# Units: /usr/bin/time reports peak RSS in KiB; tables print MiB (KiB / 1024).

BENCH_FAILURES=0
BENCH_IDLE=${BENCH_IDLE:-5}
# The stdout of the last measured command (read by the scripts that source this file).
# shellcheck disable=SC2034
BENCH_LAST_STDOUT=""
declare -gA BENCH_WALL=() BENCH_RSS=() BENCH_CPU=() BENCH_ENGINE_CPU=() BENCH_OTHER_CPU=() BENCH_LABEL=()
declare -ga BENCH_IMAGES=() BENCH_CLEANUP=()
BENCH_SCRATCH=""

bench_log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

bench_die() {
  printf 'error: %s\n' "$1" >&2
  [ $# -lt 2 ] || printf 'hint: %s\n' "$2" >&2
  exit 2
}

bench_require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || bench_die "$tool is not installed" "apt-get install -y $tool"
  done
  # The shell keyword `time` cannot report peak RSS; GNU time (package `time`) can.
  [ -x /usr/bin/time ] || bench_die "/usr/bin/time (GNU time) is missing" "apt-get install -y time"
}

# --- cleanup -------------------------------------------------------------------------------------------

# Call once the arguments are parsed: makes the private scratch dir BENCH_SCRATCH and installs the traps
# that remove it and every tracked image on exit, Ctrl-C or SIGTERM.
bench_init() {
  trap bench_on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  BENCH_SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/mkbase-bench.XXXXXX")
  bench_at_exit "rm -rf -- '$BENCH_SCRATCH'"
}

# Runs the registered cleanup commands (last registered first) after removing the tracked images.
bench_on_exit() {
  local status=$? i
  trap - EXIT INT TERM
  bench_remove_images
  for ((i = ${#BENCH_CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${BENCH_CLEANUP[i]}" || true
  done
  exit "$status"
}

# Registers a shell command to run at exit (e.g. removing a work dir).
bench_at_exit() { BENCH_CLEANUP+=("$1"); }

# Remembers a tag the benchmark is about to create, so that the exit (or bench_settle_deletions) removes it.
bench_track_image() { BENCH_IMAGES+=("$1"); }

# Removes every tracked tag. By tag only, never by ID and never with -f: an image that someone else also
# tagged keeps its other names and its layers.
bench_remove_images() {
  [ ${#BENCH_IMAGES[@]} -gt 0 ] || return 0
  docker image rm "${BENCH_IMAGES[@]}" >/dev/null 2>&1 || true
  BENCH_IMAGES=()
}

# --- the idle protocol ---------------------------------------------------------------------------------

# On ext4 without a journal (the disk under /var/lib/docker on the machines these numbers come from), the
# inode allocator passes over every inode freed in the last 60 s (5 min while its inode table block is
# dirty), re-reading inode tables as it goes (recently_deleted() in the kernel's fs/ext4/ialloc.c): an
# import right after `docker rmi` of a like-sized image ran 2-4x slower, and by how much depended on where
# the allocator happened to look. So no image is removed between timed runs (they all go at exit), and a
# script that deleted files before its runs waits BENCH_DELETION_QUIET seconds once, after a sync.
BENCH_DELETION_QUIET=65

# Before every timed run: write back the previous run's dirty pages and leave the disk idle BENCH_IDLE s.
bench_settle() {
  sync
  sleep "$BENCH_IDLE"
}

# Removes the tracked images now, then lets the disk forget the deletions (see above).
bench_settle_deletions() {
  bench_remove_images
  sync
  sleep "$BENCH_DELETION_QUIET"
}

# --- measuring -----------------------------------------------------------------------------------------

# CPU seconds (user + system) the local dockerd and its waited-for children have used so far, or "" when
# there is no local dockerd (DOCKER_HOST pointing elsewhere). Engine 20.10 unpacks layers in re-executed
# children (docker-untar, docker-applyLayer), whose time only shows in the cutime/cstime fields.
bench_engine_cpu() {
  local pid stat ticks
  case "${DOCKER_HOST:-unix://}" in unix://*) ;; *) return 0 ;; esac
  # By process name, not by executable: the re-executed children run the dockerd binary too (pidof would
  # list them), but their name is "exe".
  pid=$(cat /var/run/docker.pid 2>/dev/null || pgrep -o -x dockerd) || return 0
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 0
  ticks=$(getconf CLK_TCK)
  # Fields after "pid (comm) ": state is the 1st; utime, stime, cutime, cstime the 12th to 15th.
  awk -v t="$ticks" '{ printf "%.2f\n", ($12 + $13 + $14 + $15) / t }' <<<"${stat##*) }"
}

# CPU seconds the whole machine has been busy (all cores, everything but idle and iowait).
bench_machine_cpu() {
  awk -v t="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / t; exit }' /proc/stat
}

# bench_measure KEY CMD...: runs CMD once and appends one sample to KEY's lists. CMD's stdout is kept in
# BENCH_LAST_STDOUT; if CMD fails, its stderr is shown and the benchmark stops.
bench_measure() {
  local key=$1 wall rss user sys engine_before engine_after machine_before machine_after engine client
  shift
  local timing="$BENCH_SCRATCH/time" out="$BENCH_SCRATCH/stdout" err="$BENCH_SCRATCH/stderr"
  engine_before=$(bench_engine_cpu)
  machine_before=$(bench_machine_cpu)
  if ! /usr/bin/time -o "$timing" -f '%e %M %U %S' "$@" >"$out" 2>"$err"; then
    printf 'error: the measured command failed: %s\n' "$*" >&2
    tail -n 30 "$err" >&2
    exit 2
  fi
  machine_after=$(bench_machine_cpu)
  engine_after=$(bench_engine_cpu)
  read -r wall rss user sys <"$timing"
  # shellcheck disable=SC2034
  BENCH_LAST_STDOUT=$(cat "$out")
  BENCH_WALL[$key]+="$wall "
  BENCH_RSS[$key]+="$rss "
  client=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  BENCH_CPU[$key]+="$client "
  engine=0
  if [ -n "$engine_before" ] && [ -n "$engine_after" ]; then
    engine=$(awk -v a="$engine_before" -v b="$engine_after" 'BEGIN { printf "%.2f", b - a }')
    BENCH_ENGINE_CPU[$key]+="$engine "
  fi
  # What the rest of the machine did meanwhile: a large value means the run was disturbed.
  BENCH_OTHER_CPU[$key]+="$(awk -v a="$machine_before" -v b="$machine_after" -v c="$client" -v e="$engine" \
    'BEGIN { o = b - a - c - e; printf "%.2f", o < 0 ? 0 : o }') "
  bench_log "$(printf '%-34s %6.2f s  %7.1f MiB' "${BENCH_LABEL[$key]:-$key}" "$wall" "$(bench_mib "$rss")")"
}

# --- statistics ----------------------------------------------------------------------------------------

bench_median() {
  [ $# -gt 0 ] || { echo "-"; return; }
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { if (NR % 2) printf "%.2f\n", v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
bench_min() {
  [ $# -gt 0 ] || { echo "-"; return; }
  printf '%s\n' "$@" | sort -g | head -n 1
}
bench_max() {
  [ $# -gt 0 ] || { echo "-"; return; }
  printf '%s\n' "$@" | sort -g | tail -n 1
}

# bench_ratio A B: A / B with two decimals ("-" when either is missing).
bench_ratio() {
  if [ -z "$1" ] || [ -z "$2" ] || [ "$1" = "-" ] || [ "$2" = "-" ]; then
    echo "-"
    return
  fi
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "-" }'
}

# bench_mib KIB: KiB as MiB with one decimal.
bench_mib() {
  if [ -z "$1" ] || [ "$1" = "-" ]; then
    echo "-"
    return
  fi
  awk -v k="$1" 'BEGIN { printf "%.1f\n", k / 1024 }'
}

# bench_pair_ratio KEY BASE: median over rounds of KEY's wall time / BASE's wall time in the same round.
# Samples pair up by index, so both keys must be measured once per round.
bench_pair_ratio() {
  local -a a b ratios=()
  read -r -a a <<<"${BENCH_WALL[$1]:-}"
  read -r -a b <<<"${BENCH_WALL[$2]:-}"
  local i
  for ((i = 0; i < ${#a[@]} && i < ${#b[@]}; i++)); do
    ratios+=("$(bench_ratio "${a[i]}" "${b[i]}")")
  done
  bench_median "${ratios[@]}"
}

# Accessors over a key's samples (word-split on purpose: the lists hold numbers separated by spaces).
# shellcheck disable=SC2086
bench_wall_median() { bench_median ${BENCH_WALL[$1]:-}; }
# shellcheck disable=SC2086
bench_wall_min() { bench_min ${BENCH_WALL[$1]:-}; }
# shellcheck disable=SC2086
bench_wall_max() { bench_max ${BENCH_WALL[$1]:-}; }
# shellcheck disable=SC2086
bench_rss_max() { bench_max ${BENCH_RSS[$1]:-}; }
# shellcheck disable=SC2086
bench_cpu_median() { bench_median ${BENCH_CPU[$1]:-}; }
# shellcheck disable=SC2086
bench_engine_cpu_median() { bench_median ${BENCH_ENGINE_CPU[$1]:-}; }
# shellcheck disable=SC2086
bench_other_cpu_max() { bench_max ${BENCH_OTHER_CPU[$1]:-}; }

# Prints how many runs (over all keys) had the rest of the machine busy for more than half a core on
# average ("other" CPU > wall / 2), then the number of runs, e.g. "3 15".
bench_disturbed_runs() {
  local key i disturbed=0 total=0
  local -a walls others
  for key in "${!BENCH_WALL[@]}"; do
    read -r -a walls <<<"${BENCH_WALL[$key]}"
    read -r -a others <<<"${BENCH_OTHER_CPU[$key]:-}"
    for ((i = 0; i < ${#walls[@]} && i < ${#others[@]}; i++)); do
      total=$((total + 1))
      if awk -v o="${others[i]}" -v w="${walls[i]}" 'BEGIN { exit o > w / 2 ? 0 : 1 }'; then
        disturbed=$((disturbed + 1))
      fi
    done
  done
  echo "$disturbed $total"
}

# --- reporting -----------------------------------------------------------------------------------------

# bench_table BASE KEY...: one row per key; ratios are to BASE (the baseline command, usually GNU tar).
# "ratio" is median / median of BASE; "pair" is the median of the per-round ratios; "other s" is the most
# CPU time the rest of the machine used during one run.
bench_table() {
  local base=$1 key base_median n
  local -a samples
  shift
  base_median=$(bench_wall_median "$base")
  printf '%-34s %4s %8s %8s %8s %9s %9s %8s %8s %6s %6s\n' \
    command runs "median s" "min s" "max s" "client s" "engine s" "other s" "RSS MiB" ratio pair
  for key in "$@"; do
    read -r -a samples <<<"${BENCH_WALL[$key]:-}"
    n=${#samples[@]}
    printf '%-34s %4s %8s %8s %8s %9s %9s %8s %8s %6s %6s\n' "${BENCH_LABEL[$key]:-$key}" "$n" \
      "$(bench_wall_median "$key")" "$(bench_wall_min "$key")" "$(bench_wall_max "$key")" \
      "$(bench_cpu_median "$key")" "$(bench_engine_cpu_median "$key")" "$(bench_other_cpu_max "$key")" \
      "$(bench_mib "$(bench_rss_max "$key")")" \
      "$(bench_ratio "$(bench_wall_median "$key")" "$base_median")" \
      "$(if [ "$key" = "$base" ]; then echo 1.00; else bench_pair_ratio "$key" "$base"; fi)"
  done
}

# bench_target DESCRIPTION ACTUAL OP LIMIT: prints "PASS"/"FAIL" with the numbers; OP is one of < <= > >=.
# A missing ACTUAL ("-") fails.
bench_target() {
  local description=$1 actual=$2 op=$3 limit=$4 verdict
  if [ "$actual" != "-" ] && awk -v a="$actual" -v l="$limit" -v op="$op" 'BEGIN {
      ok = (op == "<") ? a < l : (op == "<=") ? a <= l : (op == ">") ? a > l : (op == ">=") ? a >= l : 0
      exit ok ? 0 : 1 }'; then
    verdict=PASS
  else
    verdict=FAIL
    BENCH_FAILURES=$((BENCH_FAILURES + 1))
  fi
  printf '%s  %-52s %s %s %s\n' "$verdict" "$description" "$actual" "$op" "$limit"
}

# What the numbers depend on: engine, storage driver, cores, Node, kernel.
bench_environment() {
  local version
  # Without a running engine `docker version` still prints its client half (an empty field here) and fails.
  if version=$(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null); then
    printf 'engine:  Docker %s, storage driver %s\n' "$version" "$(docker info --format '{{.Driver}}' 2>/dev/null)"
  else
    printf 'engine:  none running\n'
  fi
  printf 'host:    nproc %s, %s, kernel %s, node %s\n' "$(nproc)" \
    "$(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)" \
    "$(node --version 2>/dev/null || echo '?')"
}

# --- inputs --------------------------------------------------------------------------------------------

# Reads every file below each DIR once, so that no timed command pays for the first read from disk. Through
# a pipe: GNU tar skips reading file contents when it writes to /dev/null.
bench_warm_page_cache() {
  local dir
  for dir in "$@"; do tar -C "$dir" -c . | cat >/dev/null; done
}

# Prints the path of a `debootstrap --variant=minbase bookworm` tree: $MKBASE_BENCH_ROOTFS if set, else the
# end-to-end tests' cache, built there on first use. debootstrap picks its default mirror. The build runs
# in a sibling temp dir renamed into place only when it succeeded, so a half-built tree is never used.
bench_debian_rootfs() {
  if [ -n "${MKBASE_BENCH_ROOTFS:-}" ]; then
    [ -d "$MKBASE_BENCH_ROOTFS" ] || bench_die "MKBASE_BENCH_ROOTFS=$MKBASE_BENCH_ROOTFS is not a directory"
    printf '%s\n' "$MKBASE_BENCH_ROOTFS"
    return
  fi
  local cache="${TMPDIR:-/tmp}/mkbase-test-cache/bookworm-minbase" partial
  # Only a finished build has a dpkg status file (same rule as the end-to-end tests' helper).
  if [ -e "$cache/var/lib/dpkg/status" ]; then
    printf '%s\n' "$cache"
    return
  fi
  command -v debootstrap >/dev/null || bench_die "debootstrap is not installed" "apt-get install -y debootstrap"
  mkdir -p "$(dirname "$cache")"
  partial=$(mktemp -d "$cache.partial-XXXXXX")
  bench_log "building a bookworm minbase rootfs with debootstrap (about 30 s) in $partial"
  if ! debootstrap --variant=minbase bookworm "$partial" >"$partial.log" 2>&1; then
    tail -n 30 "$partial.log" >&2
    bench_remove_build_dir "$partial"
    rm -f -- "$partial.log"
    bench_die "debootstrap --variant=minbase bookworm failed" \
      "check network access to the Debian archive, or set MKBASE_BENCH_ROOTFS to an existing rootfs"
  fi
  rm -f -- "$partial.log"
  chmod 755 "$partial"
  if ! mv -T -- "$partial" "$cache" 2>/dev/null; then
    # Another process finished first: its tree is as good as ours.
    [ -e "$cache/var/lib/dpkg/status" ] || bench_die "could not move $partial to $cache"
    bench_remove_build_dir "$partial"
  fi
  printf '%s\n' "$cache"
}

# Removes a debootstrap target, first unmounting what a killed run may have left mounted inside it
# (/proc, /sys), deepest first, so that the removal never reaches through a mount into the host's files.
bench_remove_build_dir() {
  local dir=$1 mount_point
  while read -r mount_point; do
    umount -- "$mount_point" || true
  done < <(bench_mounts_under "$dir" | sort -r)
  if [ -n "$(bench_mounts_under "$dir")" ]; then
    printf 'warning: not removing %s: something is still mounted inside it\n' "$dir" >&2
    return 0
  fi
  rm -rf -- "$dir"
}

# Mount points at or below a directory (field 5 of mountinfo, octal escapes decoded).
bench_mounts_under() {
  awk -v dir="$1" '{
    p = $5; out = ""
    while (match(p, /\\[0-7][0-7][0-7]/)) {
      out = out substr(p, 1, RSTART - 1) sprintf("%c", (substr(p, RSTART + 1, 1) * 64) + (substr(p, RSTART + 2, 1) * 8) + substr(p, RSTART + 3, 1))
      p = substr(p, RSTART + RLENGTH)
    }
    p = out p
    if (p == dir || index(p, dir "/") == 1) print p
  }' /proc/self/mountinfo
}
