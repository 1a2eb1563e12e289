#!/bin/bash
# LAB_NORDMA_IP (dum0, no rxe): rdma_cm must fail there, plain TCP must work (for the TCP-fallback tests).
set -euo pipefail
if timeout 30 rping -c -a "$LAB_NORDMA_IP" -C 1 -v > "$TEST_LOGDIR/rping.log" 2>&1; then
    echo "rdma_cm to $LAB_NORDMA_IP unexpectedly worked"; exit 1
fi
echo "rdma_cm to $LAB_NORDMA_IP fails as expected: $(grep -m1 -iE 'error|fail' "$TEST_LOGDIR/rping.log" || tail -n 1 "$TEST_LOGDIR/rping.log")"
port=5999
timeout 30 busybox nc -l -p "$port" > "$TEST_LOGDIR/tcp.out" &
spid=$!
. "$LAB_REPO/scripts/lab.d/lib.sh"
wait_tcp_listen "$port" 10
echo "hello over tcp" > /dev/tcp/"$LAB_NORDMA_IP"/"$port"
wait "$spid" || true
grep -q "hello over tcp" "$TEST_LOGDIR/tcp.out" || { echo "TCP to $LAB_NORDMA_IP failed"; exit 1; }
echo "TCP to $LAB_NORDMA_IP:$port works"
