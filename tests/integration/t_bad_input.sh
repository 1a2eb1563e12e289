#!/bin/bash
# Garbage, truncated and malformed frames sent to serve: each connection is closed with a logged
# reason (and an Error frame where the frame was well-formed), nothing is written, the server
# keeps serving, and a following push succeeds.
source "$(dirname "$0")/lib.sh"
serve r "$TEST_TMP/rep"
python3 "$(dirname "$0")/peer.py" "$PORT_r" malformed || fail "serve mishandled malformed input"
kill -0 "$PID_r" || fail "serve died"
log=$TEST_TMP/serve-r.log
expect_in "$log" "bad frame magic"
expect_in "$log" "truncated frame"
expect_in "$log" "unsupported frame format version 2"
expect_in "$log" "frame header CRC mismatch"
expect_in "$log" "unknown frame type 99"
expect_in "$log" "failed its CRC32C check"
if grep -qiE 'abort|segfault|sanitizer' "$log"; then fail "serve crashed"; fi
step "a real push after all that"
random_file "$TEST_TMP/src" $((64 << 20))
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "push after bad input: $(cat "$TEST_TMP/push.log")"
same "$TEST_TMP/src" "$TEST_TMP/rep"
echo PASS
