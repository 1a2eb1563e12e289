#!/bin/bash
# serve runs until SIGINT/SIGTERM and exits 0 on them, cleanly.
source "$(dirname "$0")/lib.sh"
for sig in TERM INT; do
  serve r "$TEST_TMP/rep"
  kill -s "$sig" "$PID_r"
  wait_exit "$PID_r" || fail "serve exited non-zero on SIG$sig"
  expect_in "$TEST_TMP/serve-r.log" "signal received; shutting down"
done
echo PASS
