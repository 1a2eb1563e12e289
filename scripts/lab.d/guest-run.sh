#!/bin/bash
# Runs inside the guest, in the chroot of the host root (started by lab.d/init; read live from the host over 9p,
# so edits need no initramfs rebuild). Usage: guest-run.sh <run dir>  (spec + argv written by scripts/lab)
# Sets up the RDMA network (net.sh), exports the LAB_* variables, runs the job from the repo root, returns its rc.
set -uo pipefail
run=$1
# shellcheck source=/dev/null
. "$run/spec"
here=$LAB_REPO/scripts/lab.d

fatal() { echo "LAB_FATAL=$*"; exit 255; }
# devtmpfs has no /dev/fd (udev makes it elsewhere): bash's process substitution needs it.
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd

# heartbeat PERIOD: every PERIOD seconds one console line with the uptime, the load and every
# task in D state with its kernel wait channel, plus the kernel stack of each task found in D state twice in a row.
# Only bash builtins on /proc and the console: no exec and no 9p, so it keeps reporting when the share or a
# device is stuck, and stops only if the guest's timers do (its silence says so).
heartbeat() {
    local period=$1 stat pid comm state wchan line up load stuck prev=' ' n
    exec {idle}<> <(:)           # a pipe nobody writes: read -t is the sleep
    while ! read -r -t "$period" -u "$idle"; do
        read -r up _ < /proc/uptime; read -r load _ < /proc/loadavg
        stuck=' ' n=0
        for stat in /proc/[0-9]*/stat; do
            read -r line 2>/dev/null < "$stat" || continue
            pid=${line%% *}; comm=${line#*(}; comm=${comm%)*}; state=${line##*) }; state=${state%% *}
            [ "$state" = D ] || continue
            { wchan=$(< "/proc/$pid/wchan"); } 2>/dev/null
            stuck+="$pid " n=$((n + 1))
            line="LAB: heartbeat: D $pid $comm in $wchan"
            if [[ "$prev" == *" $pid "* ]]; then
                while read -r wchan; do line+=$'\n'"LAB:   $wchan"; done 2>/dev/null < "/proc/$pid/stack"
            fi
            echo "$line" > /dev/console
        done
        echo "LAB: heartbeat: up ${up}s load $load, $n task(s) in D state" > /dev/console
        prev=$stuck
    done
}
heartbeat 60 &
heartbeat_pid=$!

echo "LAB: guest $(uname -r), $(nproc) vCPU, $(awk '/MemTotal/ { printf "%d MiB", $2/1024 }' /proc/meminfo), up $(cut -d' ' -f1 /proc/uptime)s"
"$here/net.sh" || fatal "network setup (scripts/lab.d/net.sh) failed"
# shellcheck source=/dev/null
. /run/lab/net.env          # LAB_RXE0 LAB_RXE1 LAB_IP0 LAB_IP1 LAB_NORDMA_IP LAB_GID0 LAB_GID1 (exported)
export LAB_OUT LAB_REPO LAB_PAIR
[ -z "${BLKMIRROR_BUILD:-}" ] || export BLKMIRROR_BUILD   # the host's choice of build tree (lab_build_dir)
export LAB_GUEST=1

mapfile -d '' argv < "$run/argv"
job=${argv[0]}
# A non-executable script still runs: through its #! interpreter, else /bin/sh.
if [ ! -x "$job" ] && [ -f "$job" ]; then
    read -r first < "$job" || true
    if [[ "$first" == '#!'* ]]; then read -ra interp <<< "${first#\#!}"; else interp=(/bin/sh); fi
    argv=("${interp[@]}" "${argv[@]}")
fi

cd "$LAB_REPO" || fatal "cannot cd to $LAB_REPO"
echo "LAB: job start: $(printf '%q ' "${argv[@]}")"
"${argv[@]}"
rc=$?
kill "$heartbeat_pid" 2>/dev/null
echo "LAB: job end rc=$rc"
exit "$rc"
