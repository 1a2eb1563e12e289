#!/bin/bash
# rdma_cm + RDMA READ/WRITE/SEND across the wire: rping client on rxe0 (10.0.0.1) -> server on rxe1 (10.0.0.2).
set -euo pipefail
count=${RPING_COUNT:-100} size=${RPING_SIZE:-1024}
# The server needs the same -S: it RDMA-READs the client's buffer into its own (LOC_PROT_ERR, status 4, if smaller).
timeout 120 rping -s -a "$LAB_IP1" -C "$count" -S "$size" -v > "$TEST_LOGDIR/server.log" 2>&1 &
spid=$!
trap 'kill $spid 2>/dev/null || true' EXIT
# rping's exit status says little (the client exits 0 after a failed connect): count the pings instead. The
# server's rdma_cm listen has no TCP port to wait for, so a refused first connect is retried.
n=0
for attempt in 1 2 3 4 5; do
    sleep 1
    timeout 100 rping -c -a "$LAB_IP1" -I "$LAB_IP0" -C "$count" -S "$size" -v > "$TEST_LOGDIR/client.log" 2>&1 || true
    n=$(grep -c 'ping data' "$TEST_LOGDIR/client.log" || true)
    [ "$n" -eq 0 ] || break
    echo "client attempt $attempt: no ping ($(grep -m1 -iE 'error|fail|reject' "$TEST_LOGDIR/client.log" || tail -n 1 "$TEST_LOGDIR/client.log"))"
done
src=0; wait "$spid" || src=$?
echo "rping: $n/$count pings of $size bytes, server rc=$src; last: $(tail -n 1 "$TEST_LOGDIR/client.log" | cut -c1-40)..."
[ "$n" -eq "$count" ] && [ "$src" -eq 0 ] || { tail -n 5 "$TEST_LOGDIR/server.log"; exit 1; }
