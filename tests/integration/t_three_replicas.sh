#!/bin/bash
# Fan-out: one push, three replicas at once, all byte-identical.
source "$(dirname "$0")/lib.sh"
random_file "$TEST_TMP/src" $((48 << 20))
serve a "$TEST_TMP/a" --once
serve b "$TEST_TMP/b" --once
serve c /dev/shm/blkmirror-test-c.$$ --once
CLEANUPS+=("rm -rf /dev/shm/blkmirror-test-c.$$ /dev/shm/blkmirror-test-c.$$.blkmirror")
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_a" --peer "127.0.0.1:$PORT_b" \
  --peer "127.0.0.1:$PORT_c" --window 16 || fail "push: $(cat "$TEST_TMP/push.log")"
for p in "$PID_a" "$PID_b" "$PID_c"; do wait_exit "$p" || fail "a serve failed"; done
same "$TEST_TMP/src" "$TEST_TMP/a"
same "$TEST_TMP/src" "$TEST_TMP/b"
same "$TEST_TMP/src" /dev/shm/blkmirror-test-c.$$
[ "$(json '.peers | length')" = 3 ] || fail "expected 3 peers in the JSON"
[ "$(json '[.peers[].blocks_acked] | add')" = 144 ] || fail "each peer should ack 48 blocks"
echo PASS
