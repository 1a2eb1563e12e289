#!/bin/bash
# CRC faults injected by the FaultyTransport decorator in serve (--test-fault): each corrupted
# block is NACKed, resent and counted, the replica ends up correct; a block that is corrupted
# every time fails the push with its offset named, and is never written.
source "$(dirname "$0")/lib.sh"
random_file "$TEST_TMP/src" $((64 << 20))
step "every 5th block corrupted once (its first transmission)"
serve r "$TEST_TMP/rep" --once --test-fault flip-rx-data:every=5
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "push: $(cat "$TEST_TMP/push.log")"
wait_exit "$PID_r"
same "$TEST_TMP/src" "$TEST_TMP/rep"
n=$(json .crc_mismatches)
[ "$n" = 12 ] || fail "expected exactly 12 CRC mismatches (blocks 4, 9, ..., 59 of 64), got $n"
[ "$(json .retransmits)" = "$n" ] || fail "retransmits $(json .retransmits) != mismatches $n"
[ "$(json '.peers[0].crc_mismatches')" = "$n" ] || fail "per-peer count"
[ "$(grep -c 'TEST FAULT: flipped' "$TEST_TMP/serve-r.log")" = "$n" ] || fail "injected faults != counted"
expect_in "$TEST_TMP/serve-r.log" "not written, asking for a resend"

step "every 8th block corrupted on its first 5 tries: the 6th and last allowed try arrives"
serve t "$TEST_TMP/rep3" --once --test-fault flip-rx-data:every=8,tries=5
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_t" || fail "push: $(tail -n 3 "$TEST_TMP/push.log")"
wait_exit "$PID_t"
same "$TEST_TMP/src" "$TEST_TMP/rep3"
[ "$(json .crc_mismatches)" = 40 ] || fail "expected 8 blocks x 5 mismatches, got $(json .crc_mismatches)"

step "every block corrupted 5 times: 320 NACKs, said in a few lines"
serve u "$TEST_TMP/rep4" --once --test-fault flip-rx-data:every=1,tries=5
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_u" || fail "push: $(tail -n 3 "$TEST_TMP/push.log")"
wait_exit "$PID_u"
same "$TEST_TMP/src" "$TEST_TMP/rep4"
[ "$(json .crc_mismatches)" = 320 ] || fail "expected 64 blocks x 5 mismatches, got $(json .crc_mismatches)"
for log in "$TEST_TMP/push.log" "$TEST_TMP/serve-u.log"; do
  lines=$(grep -c "failed its CRC32C check" "$log")
  [ "$lines" -lt 100 ] || fail "$lines CRC warnings in $log for 320 mismatches: not rate-limited"
done
expect_in "$TEST_TMP/push.log" "more warnings of rejected blocks were left out of the log"
expect_in "$TEST_TMP/serve-u.log" "320 CRC mismatches ("

step "one block corrupted every time"
bad=$((3 << 20))
serve s "$TEST_TMP/rep2" --once --test-fault "flip-rx-data:offset=$bad"
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_s" || rc=$?
[ "$rc" = 3 ] || fail "push should fail with exit 3, got $rc"
expect_in "$TEST_TMP/push.log" "block at offset $bad"
expect_in "$TEST_TMP/push.log" "giving up"
# The bad block is not on the replica (the target was pre-allocated with zeros).
cmp -s -i "$bad:0" -n $((1 << 20)) "$TEST_TMP/rep2" /dev/zero || fail "the corrupted block was written"
echo PASS
