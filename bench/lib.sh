# Shared by the bench/ scripts (sourced): small figures helpers.
# shellcheck shell=bash

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# gbps SECONDS [BYTES]: GB/s for BYTES (default 1 GiB) in SECONDS.
gbps() { awk -v b="${2:-$((1 << 30))}" -v s="$1" 'BEGIN { printf "%.3f", b / s / 1e9 }'; }
# ratio A B: A / B, two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# Results for bench/report. A script prints its figures as KEY=VALUE lines; when BENCH_OUT names
# a directory, it also records them there: BENCH_OUT/results holds the KEY=VALUE pairs alone (no
# notes after them), and sample files sit beside it. What a person reads and what the report
# reads come from the same call.
# result KEY VALUE [NOTE...]: prints "KEY=VALUE[ NOTE...]" and records KEY=VALUE.
result() {
  local key=$1 value=$2
  shift 2
  echo "$key=$value${*:+ $*}"
  [ -z "${BENCH_OUT:-}" ] || echo "$key=$value" >> "$BENCH_OUT/results"
}
# round_result R KEY=VALUE...: prints "round=R KEY=VALUE ..." on one line; records each pair as
# round.R.KEY=VALUE.
round_result() {
  local r=$1 kv
  shift
  echo "round=$r $*"
  [ -n "${BENCH_OUT:-}" ] || return 0
  for kv in "$@"; do echo "round.$r.$kv" >> "$BENCH_OUT/results"; done
}
# result_file NAME PATH: keeps a copy of PATH (samples, a push's JSON) as BENCH_OUT/NAME.
result_file() { [ -z "${BENCH_OUT:-}" ] || cp "$2" "$BENCH_OUT/$1"; }
