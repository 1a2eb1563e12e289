#!/bin/bash
# Block devices (loop devices over files) as source and as target: a target too small is refused
# with a clear error; one that fits gets the volume; a block device source pushes like a file.
source "$(dirname "$0")/lib.sh"
command -v losetup > /dev/null || skip "losetup is not installed"
truncate -s 16M "$TEST_TMP/disk.img"
dev=$(losetup -f --show "$TEST_TMP/disk.img" 2>/dev/null) || skip "cannot attach a loop device (needs root and /dev/loop-control)"
CLEANUPS+=("losetup -d $dev")
echo "target device: $dev"
serve r "$dev"
step "a volume larger than the device"
random_file "$TEST_TMP/big" $((64 << 20))
rc=0; push --source "$TEST_TMP/big" --peer "127.0.0.1:$PORT_r" || rc=$?
[ "$rc" = 3 ] || fail "push to a too-small device exited $rc"
expect_in "$TEST_TMP/push.log" "does not fit the replica's block device $dev"
step "a volume that fits"
random_file "$TEST_TMP/src" $(((8 << 20) + 1234))
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "push to the device: $(cat "$TEST_TMP/push.log")"
same "$TEST_TMP/src" "$dev" $(((8 << 20) + 1234))
step "a block device as the source"
serve f "$TEST_TMP/from-dev" --once
push --source "$dev" --peer "127.0.0.1:$PORT_f" || fail "push from the device: $(cat "$TEST_TMP/push.log")"
wait_exit "$PID_f"
same "$dev" "$TEST_TMP/from-dev"
echo PASS
