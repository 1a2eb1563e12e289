#!/bin/bash
# The project's RDMA suite: the default job of scripts/lab (runs inside the guest).
#
#   suite.sh [PATTERN...]   run every executable scripts/lab.d/suite.d/*.sh in name order (or only those whose
#                           name contains one of the PATTERNs), report PASS/FAIL per test and a summary.
#
# Adding a test: drop an executable NN-name.sh into suite.d/ (exit 0 = PASS). It runs from the repo root with the
# LAB_* environment (see net.sh) and its own TEST_LOGDIR (on the writable share). Per-test timeout:
# SUITE_TEST_TIMEOUT seconds (default 400: the whole suite must fit scripts/lab's LAB_TIMEOUT); 15 s before it, the
# state of the test's processes and the tails of its logs go to TEST_LOGDIR/hang.txt and the console
# (lab_hang_report). Exit status: number of failed tests (capped at 100), 0 if all passed.
set -uo pipefail
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=scripts/lab.d/lib.sh
. "$here/lib.sh"
tmo=${SUITE_TEST_TIMEOUT:-400}
logroot=${LAB_OUT:-/tmp}/suite
rm -rf "$logroot" && mkdir -p "$logroot"

selected() {   # selected <name>: no patterns, or one matches
    [ ${#patterns[@]} -eq 0 ] && return 0
    local p; for p in "${patterns[@]}"; do [[ "$1" == *"$p"* ]] && return 0; done; return 1
}
patterns=("$@")

results=() fails=0 n=0
for t in "$here"/suite.d/*.sh; do
    [ -x "$t" ] || continue
    name=$(basename "$t" .sh)
    selected "$name" || continue
    n=$((n + 1))
    echo "=== RUN  $name"
    export TEST_LOGDIR=$logroot/$name
    mkdir -p "$TEST_LOGDIR"
    t0=$EPOCHREALTIME
    # The report goes to the console as it is made: a test stuck in the kernel may never let the
    # pipeline below end, and then only the console tells what it was stuck on.
    (sleep $((tmo > 30 ? tmo - 15 : tmo / 2)) &&
        lab_hang_report 2>&1 | tee "$TEST_LOGDIR/hang.txt" | sed -u 's/^/    hang: /') &
    watcher=$!
    timeout -k 10 "$tmo" "$t" 2>&1 | tee "$logroot/$name.log" | sed -u 's/^/    /'
    rc=${PIPESTATUS[0]}
    kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
    dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" -eq 0 ]; then
        verdict=PASS
    else
        verdict=FAIL; fails=$((fails + 1))
        [ "$rc" -eq 124 ] && verdict="FAIL (timeout ${tmo}s)"
    fi
    echo "=== $verdict $name (${dt}s$([ "$rc" -eq 0 ] || echo ", rc=$rc"))"
    results+=("$(printf '%-6s %-40s %7ss' "${verdict%% *}" "$name" "$dt")")
done

echo "=== suite summary: $n run, $((n - fails)) passed, $fails failed (logs: $logroot)"
for r in "${results[@]}"; do echo "    $r"; done
[ "$n" -gt 0 ] || { echo "=== no tests selected"; exit 1; }
[ "$fails" -le 100 ] || fails=100
exit "$fails"
