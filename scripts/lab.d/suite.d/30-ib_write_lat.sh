#!/bin/bash
# perftest sanity: RDMA WRITE latency rxe0 -> rxe1 (expect ~70 us typical under TCG; only > 0 is checked).
set -euo pipefail
out=$(PERFTEST_LOGDIR=$TEST_LOGDIR "$LAB_REPO/scripts/lab.d/perftest.sh" lat 8 2000)
echo "$out" | tail -n 4
p50=$(echo "$out" | sed -n 's/^ib_write_lat_us_p50=//p')
awk -v t="$p50" 'BEGIN { exit !(t > 0) }'
