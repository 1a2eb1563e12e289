# Shared by the project's scripts (sourced, not run).
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# What building and testing blkmirror needs from Debian.
BUILD_PACKAGES=(g++ cmake ninja-build pkg-config liburing-dev libisal-dev libcli11-dev libspdlog-dev
                libfmt-dev nlohmann-json3-dev libsodium-dev libssl-dev openssl libgtest-dev libbenchmark-dev
                libibverbs-dev librdmacm-dev libdpdk-dev libtomlplusplus-dev libsystemd-dev systemd libcpp-httplib-dev prometheus
                liblz4-dev libzstd-dev
                jq python3 iproute2 util-linux netcat-openbsd iperf3
                libnbd-bin python3-libnbd nbdkit fio qemu-utils python3-matplotlib
                help2man man-db bsdextrautils dpkg-dev file systemd-container)
# clang and its sanitizer runtimes: the libFuzzer targets (scripts/fuzz) and the ASan and TSan
# builds of scripts/test.
CLANG_PACKAGES=(clang libclang-rt-14-dev llvm-14)

say() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '%s: FAILED: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# ensure_packages PKG...: installs what is missing with apt-get; silent when nothing is.
ensure_packages() {
  dpkg -s "$@" > /dev/null 2>&1 && return 0
  local missing=() p
  for p in "$@"; do dpkg -s "$p" > /dev/null 2>&1 || missing+=("$p"); done
  [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run: sudo apt-get install ${missing[*]}"
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local log
  log=$(mktemp)
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" > "$log" 2>&1; then
    apt-get update -qq >> "$log" 2>&1 || true
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >> "$log" 2>&1 \
      || { tail -n 20 "$log" >&2; die "apt-get could not install ${missing[*]}"; }
  fi
  rm -f "$log"
}

# release_dir: the Release build the scripts use, BLKMIRROR_BUILD (absolute, or relative to the repo) when
# set, else build/release. Lets one engineer bench a tree of their own while another rebuilds build/release.
release_dir() {
  local d=${BLKMIRROR_BUILD:-build/release}
  case $d in /*) printf '%s\n' "$d" ;; *) printf '%s\n' "$REPO/$d" ;; esac
}

# build DIR CMAKE_ARGS...: configures (once) and builds quietly; prints only on errors.
# BUILD_TARGETS (default: all) limits what ninja builds.
build() {
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    cmake -S "$REPO" -B "$dir" -G Ninja "$@" > "$dir.cmake.log" 2>&1 \
      || { mkdir -p "$dir"; cat "$dir.cmake.log" >&2; die "cmake failed for $dir"; }
  fi
  # shellcheck disable=SC2086
  ninja -C "$dir" --quiet ${BUILD_TARGETS:-} > "$dir.ninja.log" 2>&1 \
    || { cat "$dir.ninja.log" >&2; die "build failed in $dir"; }
}

# reserve_hugepages N: makes sure N 2 MiB hugepages are reserved (root only), so the buffer
# pools get MAP_HUGETLB memory; prints what it did. HUGEPAGES_BEFORE keeps the old count, for
# release_hugepages. Without root, or without the memory, it says so and goes on (the pools fall
# back to THP-advised memory, and log which they got).
reserve_hugepages() {
  local want=$1 f=/proc/sys/vm/nr_hugepages
  HUGEPAGES_BEFORE=$(cat "$f" 2>/dev/null || echo 0)
  [ "$HUGEPAGES_BEFORE" -ge "$want" ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! echo "$want" > "$f" 2>/dev/null; then
    say "cannot reserve $want hugepages (not root?): buffer pools use THP-advised memory"
    return 0
  fi
  local got
  got=$(cat "$f")
  say "reserved $got of $want 2 MiB hugepages for the buffer pools (was $HUGEPAGES_BEFORE)"
}
release_hugepages() {
  [ -n "${HUGEPAGES_BEFORE:-}" ] && [ "$(id -u)" -eq 0 ] && echo "$HUGEPAGES_BEFORE" > /proc/sys/vm/nr_hugepages 2>/dev/null
  return 0
}
