#!/bin/bash
# perftest sanity: RDMA WRITE bandwidth rxe0 -> rxe1 (expect ~7-15 MB/s under TCG; only > 0 is checked).
set -euo pipefail
out=$(PERFTEST_LOGDIR=$TEST_LOGDIR "$LAB_REPO/scripts/lab.d/perftest.sh" bw 65536 1000)
echo "$out" | tail -n 4
bw=$(echo "$out" | sed -n 's/^ib_write_bw_MBps=//p')
awk -v b="$bw" 'BEGIN { exit !(b > 0) }'
