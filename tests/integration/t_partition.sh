#!/bin/bash
# A network partition in the middle of a push, made for real: two replicas in their own network
# namespaces, the link to one taken down (ip link set down). With --quorum 1 the peer is declared
# lost after --peer-timeout and the push completes on the other; with the default quorum (all)
# the push fails, clearly. After the link comes back, the next push resyncs what was missed and
# the copies are equal.
source "$(dirname "$0")/lib.sh"
netns_peer a 1 600mbit
netns_peer b 2 600mbit
random_file "$TEST_TMP/src" $((192 << 20))
serve_in "$NS_a" a "$TEST_TMP/rep-a" "$IP_a" --insecure
serve_in "$NS_b" b "$TEST_TMP/rep-b" "$IP_b" --insecure
peers=(--peer "$IP_a:7000" --peer "$IP_b:7000")

step "partition b during a push with --quorum 1"
push_held 40M --source "$TEST_TMP/src" "${peers[@]}" --quorum 1 --peer-timeout 2s
ip link set "$IF_b" down
release_push
rc=0; wait "$PUSH_PID" || rc=$?
[ "$rc" = 0 ] || fail "push with --quorum 1 should complete on a: exit $rc: $(tail -n 3 "$TEST_TMP/push.log")"
[ "$(json '.peers[0].state')" = in_sync ] || fail "a: $(json '.peers[0].state')"
[ "$(json '.peers[1].state')" = lost ] || fail "b: $(json '.peers[1].state')"
json '.peers[1].lost_reason' | grep -q "peer-timeout" || fail "b lost for: $(json '.peers[1].lost_reason')"
expect_in "$TEST_TMP/push.log" "lost replica $IP_b:7000"
same "$TEST_TMP/src" "$TEST_TMP/rep-a"
dirty_b=$(json '.peers[1].blocks_dirty')
echo "b missed $dirty_b blocks"
[ "$dirty_b" -gt 0 ] || fail "b's missing blocks were not recorded"

step "heal, then resync: only b's dirty blocks go, only to b"
ip link set "$IF_b" up
tc qdisc replace dev "$IF_b" root tbf rate 600mbit burst 256kb latency 200ms
for _ in $(seq 50); do
  push --source "$TEST_TMP/src" "${peers[@]}" --peer-timeout 2s && break
  grep -qE "one writer per volume|cannot connect" "$TEST_TMP/push.log" || fail "resync push: $(tail -n 3 "$TEST_TMP/push.log")"
  sleep 0.3  # b's replica has not yet timed out the old session
done
[ "$(json '.peers[0].bytes_sent')" = 0 ] || fail "a got $(json '.peers[0].bytes_sent') bytes it did not miss"
[ "$(json '.peers[1].blocks_sent')" = "$dirty_b" ] || fail "b got $(json '.peers[1].blocks_sent') blocks, it missed $dirty_b"
[ "$(json '.peers[1].state')" = in_sync ] || fail "b after resync: $(json '.peers[1].state')"
same "$TEST_TMP/src" "$TEST_TMP/rep-a"
same "$TEST_TMP/src" "$TEST_TMP/rep-b"

step "partition with the default quorum (all): the push fails clearly"
random_file "$TEST_TMP/src2" $((192 << 20))
push_held 32M --source "$TEST_TMP/src2" "${peers[@]}" --peer-timeout 2s --meta-dir "$TEST_TMP/meta2"
ip link set "$IF_b" down
release_push
rc=0; wait "$PUSH_PID" || rc=$?
[ "$rc" = 3 ] || fail "push without quorum should fail: exit $rc"
expect_in "$TEST_TMP/push.log" "the quorum needs 2"
echo PASS
