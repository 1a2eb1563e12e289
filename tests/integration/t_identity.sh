#!/bin/bash
# Whatever another volume writes to a replica's target renews the replica's data identity, even
# while other sessions (here a verify session) keep the target open: the next push of the first
# volume must not trust its bitmap, and sends everything again.
source "$(dirname "$0")/lib.sh"
random_file "$TEST_TMP/a" $((16 << 20))
random_file "$TEST_TMP/b" $((16 << 20))
serve r "$TEST_TMP/rep"
common=(--peer "127.0.0.1:$PORT_r" --block-size 64K)

step "push volume a"
push --source "$TEST_TMP/a" "${common[@]}" || fail "push a: $(tail -n 3 "$TEST_TMP/push.log")"
same "$TEST_TMP/a" "$TEST_TMP/rep"

step "volume b writes the target while a verify session holds it open"
coproc HOLD { python3 "$(dirname "$0")/peer.py" "$PORT_r" hold-verifier $((16 << 20)); }
read -r line <&"${HOLD[0]}" || true
[ "$line" = holding ] || fail "peer.py could not open a verify session"
push --source "$TEST_TMP/b" "${common[@]}" || fail "push b: $(tail -n 3 "$TEST_TMP/push.log")"
same "$TEST_TMP/b" "$TEST_TMP/rep"
exec {HOLD[1]}>&-
wait "$HOLD_PID" || true

step "push volume a again: a new identity, so everything is sent"
push --source "$TEST_TMP/a" "${common[@]}" || fail "push a again: $(tail -n 3 "$TEST_TMP/push.log")"
[ "$(json .bytes_sent)" = $((16 << 20)) ] || fail "sent $(json .bytes_sent) bytes of $((16 << 20)) (resumed: $(json .resumed))"
same "$TEST_TMP/a" "$TEST_TMP/rep"
expect_in "$TEST_TMP/serve-r.log" "new replica identity"
echo PASS
