#!/bin/bash
# Every error is one clear line naming what failed and where, with a non-zero exit:
# bad arguments (2), unreachable peer, refused handshakes, bad sources (3).
source "$(dirname "$0")/lib.sh"
random_file "$TEST_TMP/src" $((8 << 20))

step "bad arguments"
expect_fail 2 "--block-size 3000" push --source "$TEST_TMP/src" --peer 127.0.0.1:1 --block-size 3000
expect_fail 2 "'12Q'" push --source "$TEST_TMP/src" --peer 127.0.0.1:1 --block-size 12Q
expect_fail 2 "--window 0" push --source "$TEST_TMP/src" --peer 127.0.0.1:1 --window 0
expect_fail 2 "expected HOST:PORT" push --source "$TEST_TMP/src" --peer localhost
expect_fail 2 "port '99999'" push --source "$TEST_TMP/src" --peer 127.0.0.1:99999
expect_fail 2 "--ack" push --source "$TEST_TMP/src" --peer 127.0.0.1:1 --ack maybe
expect_fail 2 "--transport" push --source "$TEST_TMP/src" --peer 127.0.0.1:1 --transport carrier-pigeon
expect_fail 2 "--listen is required" serve --target "$TEST_TMP/x"
expect_fail 2 "--max-block-size 5000" serve --listen 127.0.0.1:0 --target "$TEST_TMP/x" --max-block-size 5000

step "bad sources"
expect_fail 3 "$TEST_TMP/missing: no such file" push --source "$TEST_TMP/missing" --peer 127.0.0.1:1
expect_fail 3 "$TEST_TMP: not a regular file or block device" push --source "$TEST_TMP" --peer 127.0.0.1:1
: > "$TEST_TMP/empty"
expect_fail 3 "the source $TEST_TMP/empty is empty" push --source "$TEST_TMP/empty" --peer 127.0.0.1:1

step "unreachable peer"
expect_fail 3 "cannot connect to 127.0.0.1:1 over tcp" push --source "$TEST_TMP/src" --peer 127.0.0.1:1
expect_fail 3 "cannot connect to 127.0.0.1:1 over tcp" verify --source "$TEST_TMP/src" --peer 127.0.0.1:1
expect_fail 3 "cannot resolve host 'no-such-host.invalid'" push --source "$TEST_TMP/src" --peer no-such-host.invalid:7000

step "refused handshakes"
serve small "$TEST_TMP/rep" --max-block-size 1M --pool-size 16M
expect_fail 3 "block size 4194304 exceeds this replica's maximum 1048576" \
  push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_small" --block-size 4M
head -c $((16 << 20)) /dev/zero > "$TEST_TMP/big-target"
serve big "$TEST_TMP/big-target"
expect_fail 3 "is larger than the volume" push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_big"
cmp -s "$TEST_TMP/big-target" <(head -c $((16 << 20)) /dev/zero) || fail "the refused target was modified"

step "one writer per volume"
serve w "$TEST_TMP/w"
coproc HOLD { python3 "$(dirname "$0")/peer.py" "$PORT_w" hold-writer $((8 << 20)); }
read -r line <&"${HOLD[0]}"
[ "$line" = holding ] || fail "peer.py could not open a write session"
expect_fail 3 "one writer per volume" push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_w"
exec {HOLD[1]}>&-
wait "$HOLD_PID" || true
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_w" || fail "push after the writer left: $(cat "$TEST_TMP/push.log")"
same "$TEST_TMP/src" "$TEST_TMP/w"
echo PASS
