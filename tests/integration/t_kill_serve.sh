#!/bin/bash
# kill -9 of serve in the middle of a 256 MiB push (over a shaped veth link into a network
# namespace; the push holds at 150 MiB acked while serve is killed), then a restart: every block the primary saw acked
# durable reads back right, the next push resends only the dirty blocks, the copies match.
source "$(dirname "$0")/lib.sh"
netns_peer r 1 600mbit
"$BLKMIRROR" keygen "$TEST_TMP/key" > /dev/null
random_file "$TEST_TMP/src" $((256 << 20))
serve_in "$NS_r" r "$TEST_TMP/rep" "$IP_r" --key-file "$TEST_TMP/key"
push_held 150M --source "$TEST_TMP/src" --peer "$IP_r:7000" --key-file "$TEST_TMP/key" --peer-timeout 2s
step "kill -9 serve"
kill -9 "$PID_r"
release_push
rc=0; wait "$PUSH_PID" || rc=$?
[ "$rc" = 3 ] || fail "push should fail when its only replica dies (exit $rc)"
expect_in "$TEST_TMP/push.log" "lost replica $IP_r:7000"
step "restart serve; what was acked durable is there"
serve_in "$NS_r" r "$TEST_TMP/rep" "$IP_r" --key-file "$TEST_TMP/key"
dirty_covers_diffs "$TEST_TMP/src" "$IP_r:7000" --key-file "$TEST_TMP/key"
step "the next push resends only the dirty blocks"
push --source "$TEST_TMP/src" --peer "$IP_r:7000" --key-file "$TEST_TMP/key" || fail "second push: $(tail -n 3 "$TEST_TMP/push.log")"
sent=$(json .bytes_sent)
echo "resent $sent of $((256 << 20)) bytes"
[ "$(json .resumed)" = true ] || fail "the second push did not resume"
[ "$sent" -lt $((200 << 20)) ] || fail "resent $sent bytes: not well below the volume size"
[ "$sent" -gt 0 ] || fail "nothing resent after a crash mid-push?"
[ "$(json '.peers[0].state')" = in_sync ] || fail "state $(json '.peers[0].state')"
same "$TEST_TMP/src" "$TEST_TMP/rep"
echo PASS
