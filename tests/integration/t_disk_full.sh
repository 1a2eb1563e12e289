#!/bin/bash
# A replica whose disk is too small: the push fails with "replica disk full", naming the target.
source "$(dirname "$0")/lib.sh"
mkdir -p "$TEST_TMP/small"
mount -t tmpfs -o size=8m tmpfs "$TEST_TMP/small" 2>/dev/null || skip "cannot mount a small tmpfs (needs root)"
CLEANUPS+=("umount '$TEST_TMP/small'")
random_file "$TEST_TMP/src" $((32 << 20))
serve r "$TEST_TMP/small/rep"
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || rc=$?
[ "$rc" = 3 ] || fail "push to a full disk exited $rc"
expect_in "$TEST_TMP/push.log" "replica disk full"
expect_in "$TEST_TMP/push.log" "$TEST_TMP/small/rep"
grep -q "No space left on device: No space left on device" "$TEST_TMP/push.log" && fail "the error repeats itself"
kill -0 "$PID_r" || fail "serve died on a full disk"
step "a volume that fits still works"
random_file "$TEST_TMP/src2" $((4 << 20))
rm -f "$TEST_TMP/small/rep"
push --source "$TEST_TMP/src2" --peer "127.0.0.1:$PORT_r" || fail "push that fits: $(cat "$TEST_TMP/push.log")"
same "$TEST_TMP/src2" "$TEST_TMP/small/rep"
echo PASS
