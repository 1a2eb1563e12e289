#!/bin/bash
# perftest between the lab's two rxe devices: server on rxe1 (10.0.0.2), client on rxe0.
#
#   perftest.sh bw  [SIZE [ITERS [EXTRA perftest ARGS...]]]   -> ib_write_bw_MBps=<BW average>
#   perftest.sh lat [SIZE [ITERS [EXTRA perftest ARGS...]]]   -> ib_write_lat_us_p50=<t_typical>
#                                                                ib_write_lat_us_p99=<99% percentile>
# From the host:   scripts/lab scripts/lab.d/perftest.sh bw 1048576 200
# In the guest:    scripts/lab.d/perftest.sh lat 4096 2000       (inside a lab job; uses LAB_* or the defaults)
#
# The key=value lines come last on stdout; the client's perftest output is printed above them.
# Env: PERFTEST_PORT (default 18515), PERFTEST_TIMEOUT seconds (default 300), PERFTEST_LOGDIR (keep both logs).
# Exit status: 0 if both sides succeeded and the figure was parsed.
#
# Under emulation use iterations (-n), never -D: perftest's duration mode calibrates a cycle clock and
# misreports under TCG. -F: do not fail on the (meaningless in a VM) cpufreq check.
set -euo pipefail
# shellcheck source=scripts/lab.d/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
mode=$1; shift
case "$mode" in
    bw)  tool=ib_write_bw  size=${1:-65536} iters=${2:-1000};;
    lat) tool=ib_write_lat size=${1:-8}     iters=${2:-1000};;
    *)   usage;;
esac
[ $# -gt 0 ] && shift; [ $# -gt 0 ] && shift
extra=("$@")

require_lab_rdma
lab_defaults
[ -n "$LAB_GID0" ] && [ -n "$LAB_GID1" ] || { echo "perftest.sh: no RoCE v2 IPv4 GID on $LAB_RXE0/$LAB_RXE1" >&2; exit 1; }
command -v "$tool" >/dev/null || { echo "perftest.sh: $tool not installed (apt-get install perftest)" >&2; exit 1; }

port=${PERFTEST_PORT:-18515}
tmo=${PERFTEST_TIMEOUT:-300}
tmp=$(mktemp -d /tmp/perftest.XXXXXX)
spid=
cleanup() {
    [ -n "$spid" ] && kill "$spid" 2>/dev/null
    if [ -n "${PERFTEST_LOGDIR:-}" ]; then mkdir -p "$PERFTEST_LOGDIR" && cp "$tmp"/*.log "$PERFTEST_LOGDIR/" 2>/dev/null; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

common=(-F -s "$size" -n "$iters" -p "$port" "${extra[@]}")

# run_once: one server + client pair; 0 = both exited 0.
run_once() {
    local crc=0 src=0
    timeout "$tmo" "$tool" -d "$LAB_RXE1" -x "$LAB_GID1" "${common[@]}" > "$tmp/$tool-server.log" 2>&1 &
    spid=$!
    if ! wait_tcp_listen "$port" 30; then
        echo "perftest.sh: $tool server did not listen on :$port" >&2; cat "$tmp/$tool-server.log" >&2; return 1
    fi
    timeout "$tmo" "$tool" -d "$LAB_RXE0" -x "$LAB_GID0" "${common[@]}" "$LAB_IP1" > "$tmp/$tool-client.log" 2>&1 || crc=$?
    wait "$spid" || src=$?
    spid=
    [ "$crc" -eq 0 ] && [ "$src" -eq 0 ] && return 0
    echo "perftest.sh: $tool failed (client rc=$crc, server rc=$src)" >&2
    tail -n 20 "$tmp/$tool-client.log" "$tmp/$tool-server.log" >&2
    return 1
}

# column <log> <header-name>: the value under a column of perftest's result table (header names normalised:
# "BW average[MB/sec]" -> BW_average[MB/sec], "99% percentile[usec]" -> p99[usec]).
column() {
    awk -v want="$2" '
        /^ *#bytes/ {
            h = $0
            gsub(/BW peak/, "BW_peak", h); gsub(/BW average/, "BW_average", h)
            gsub(/99\.9% percentile/, "p999", h); gsub(/99% percentile/, "p99", h)
            n = split(h, names); col = 0
            for (i = 1; i <= n; i++) if (index(names[i], want) == 1) col = i
            next
        }
        col && $1 ~ /^[0-9]+$/ { print $col; exit }
    ' "$1"
}

log=$tmp/$tool-client.log
# perftest turns cycles into time with a CPU MHz it measures by linear regression at start-up; under TCG that fit
# sometimes fails ("Correlation coefficient r^2: 0.86 < 0.9") and every figure comes out 0.00: run it again.
retries=${PERFTEST_RETRIES:-3}
for ((attempt = 1; ; attempt++)); do
    run_once || exit 1
    case "$mode" in
        bw)  v=$(column "$log" 'BW_average[');                      ok=$v;;
        lat) p50=$(column "$log" 't_typical[') p99=$(column "$log" 'p99['); ok=$p50;;
    esac
    awk -v x="${ok:-0}" 'BEGIN { exit !(x > 0) }' && break
    if [ "$attempt" -ge "$retries" ]; then
        cat "$log"
        echo "perftest.sh: no usable figure from $tool after $attempt attempts (clock calibration under emulation?)" >&2
        exit 1
    fi
    echo "perftest.sh: attempt $attempt gave no figure ($(grep -m1 'Correlation' "$log" || echo 'zero result')); retrying" >&2
done
cat "$log"
case "$mode" in
    bw)  echo "ib_write_bw_MBps=$v";;
    lat) [ -n "$p99" ] || { echo "perftest.sh: no 99% percentile column in $tool output" >&2; exit 1; }
         echo "ib_write_lat_us_p50=$p50"
         echo "ib_write_lat_us_p99=$p99";;
esac
