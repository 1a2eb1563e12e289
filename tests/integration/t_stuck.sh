#!/bin/bash
# Replicas that are alive but broken, played by peer.py's fake replica: one that completes the
# handshake and then sends only Heartbeats (never an Ack) is lost after --ack-timeout, alone
# (the push fails, naming why) or beside a healthy replica with --quorum 1 (the push completes on
# the healthy one, the stuck one stays dirty); one that sends its primary a Data frame, or an Ack
# whose selective part wraps past 2^64, is lost naming what it did.
source "$(dirname "$0")/lib.sh"
peer=(python3 "$(dirname "$0")/peer.py")
random_file "$TEST_TMP/src" $((16 << 20))

# fake MODE: starts a fake replica on a free port; sets FAKE_PORT.
fake() {
  coproc FAKE { "${peer[@]}" 0 fake-replica "$1"; }
  local line
  read -r line <&"${FAKE[0]}" || true
  [[ "$line" == listening* ]] || fail "the fake replica did not start"
  FAKE_PORT=${line#listening }
  FAKE_PROC=$FAKE_PID
  PIDS+=("$FAKE_PROC")
}
# push_bounded ARGS...: a push that must end by itself; exit code 124 means it hung.
push_bounded() {
  local rc=0
  timeout 60 "$BLKMIRROR" push --no-progress --json --block-size 64K "$@" > "$TEST_TMP/push.json" \
    2> "$TEST_TMP/push.log" || rc=$?
  [ "$rc" != 124 ] || fail "the push hung: $(tail -n 2 "$TEST_TMP/push.log")"
  return $rc
}

step "a replica that never acks, alone: the push fails after --ack-timeout"
fake heartbeats
rc=0; push_bounded --source "$TEST_TMP/src" --peer "127.0.0.1:$FAKE_PORT" --peer-timeout 2s --meta-dir "$TEST_TMP/m1" || rc=$?
[ "$rc" = 3 ] || fail "exit $rc"
expect_in "$TEST_TMP/push.log" "acknowledged none of its"
expect_in "$TEST_TMP/push.log" "(--ack-timeout)"
kill "$FAKE_PROC" 2>/dev/null || true

step "a replica that never acks beside a healthy one, --quorum 1 --window 8: the push completes"
serve h "$TEST_TMP/rep-h"
fake heartbeats
push_bounded --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_h" --peer "127.0.0.1:$FAKE_PORT" \
  --quorum 1 --window 8 --peer-timeout 2s --meta-dir "$TEST_TMP/m2" || fail "exit $?: $(tail -n 3 "$TEST_TMP/push.log")"
[ "$(json '.peers[0].state')" = in_sync ] || fail "healthy replica: $(json '.peers[0]')"
[ "$(json '.peers[1].state')" = lost ] || fail "stuck replica: $(json '.peers[1]')"
json '.peers[1].lost_reason' | grep -q -- "--ack-timeout" || fail "lost for: $(json '.peers[1].lost_reason')"
[ "$(json '.peers[1].blocks_dirty')" = 256 ] || fail "the stuck replica's blocks: $(json '.peers[1].blocks_dirty') dirty"
same "$TEST_TMP/src" "$TEST_TMP/rep-h"
kill "$FAKE_PROC" 2>/dev/null || true

step "a replica that sends its primary a Data frame"
fake send-data
rc=0; push_bounded --source "$TEST_TMP/src" --peer "127.0.0.1:$FAKE_PORT" --meta-dir "$TEST_TMP/m3" || rc=$?
[ "$rc" = 3 ] || fail "exit $rc"
expect_in "$TEST_TMP/push.log" "unexpected Data frame"
kill "$FAKE_PROC" 2>/dev/null || true

step "an Ack whose selective part wraps past 2^64"
fake wrapping-sack
rc=0; push_bounded --source "$TEST_TMP/src" --peer "127.0.0.1:$FAKE_PORT" --meta-dir "$TEST_TMP/m4" || rc=$?
[ "$rc" = 3 ] || fail "exit $rc"
expect_in "$TEST_TMP/push.log" "18446744073709551615 + 1 that was never sent"
echo PASS
