#!/bin/bash
# Disk faults through a fault-injecting block device (serve --test-disk-fault, push
# --test-source-fault): a failed write and a full disk on the replica, an EIO reading the
# source, an EIO reading the replica's copy. Each is a clear error naming what and where, and no
# acked data is lost: what the primary saw acked durable is on the replica, and a later push
# completes the copy.
source "$(dirname "$0")/lib.sh"
random_file "$TEST_TMP/src" $((32 << 20))

step "the 10th write fails with EIO"
serve r "$TEST_TMP/rep" --test-disk-fault fail-write:nth=10
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || rc=$?
[ "$rc" = 3 ] || fail "push over a failing disk exited $rc"
expect_in "$TEST_TMP/push.log" "replica disk error: writing"
expect_in "$TEST_TMP/push.log" "Input/output error"
expect_in "$TEST_TMP/serve-r.log" "TEST DISK FAULT"
kill "$PID_r"; wait_exit "$PID_r" || true
serve r "$TEST_TMP/rep"
dirty_covers_diffs "$TEST_TMP/src" "127.0.0.1:$PORT_r"
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "push after the fault: $(tail -n 3 "$TEST_TMP/push.log")"
[ "$(json .resumed)" = true ] || fail "did not resume"
same "$TEST_TMP/src" "$TEST_TMP/rep"

step "the disk fills up after 8 MiB"
serve f "$TEST_TMP/rep-full" --test-disk-fault enospc-after=$((8 << 20))
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_f" --meta-dir "$TEST_TMP/meta-f" || rc=$?
[ "$rc" = 3 ] || fail "push to a full disk exited $rc"
expect_in "$TEST_TMP/push.log" "replica disk full"
expect_in "$TEST_TMP/push.log" "No space left on device"

step "the source cannot be read at 5 MiB"
serve s "$TEST_TMP/rep-s"
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_s" --meta-dir "$TEST_TMP/meta-s" \
  --test-source-fault eio-read:offset=$((5 << 20)) || rc=$?
[ "$rc" = 3 ] || fail "push from a failing source exited $rc"
expect_in "$TEST_TMP/push.log" "cannot read the source $TEST_TMP/src at offset $((5 << 20)): Input/output error"

step "the replica cannot read its copy for verify"
kill "$PID_r"; wait_exit "$PID_r" || true  # one serve per disk
serve v "$TEST_TMP/rep" --test-disk-fault eio-read:offset=$((3 << 20))
rc=0; "$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_v" > /dev/null 2> "$TEST_TMP/v.log" || rc=$?
[ "$rc" = 3 ] || fail "verify over a failing replica disk exited $rc"
expect_in "$TEST_TMP/v.log" "could not read its copy at offset"
echo PASS
