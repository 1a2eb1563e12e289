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
echo "LAB: job end rc=$rc"
exit "$rc"
