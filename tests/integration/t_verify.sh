#!/bin/bash
# verify: equal copies exit 0; differing blocks are named by offset and length, exit 1.
source "$(dirname "$0")/lib.sh"
random_file "$TEST_TMP/src" $(((20 << 20) + 777))
serve r "$TEST_TMP/rep"
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "push: $(cat "$TEST_TMP/push.log")"
step "equal"
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > "$TEST_TMP/v.out" 2> "$TEST_TMP/v.log" \
  || fail "verify of equal copies failed: $(cat "$TEST_TMP/v.log")"
expect_in "$TEST_TMP/v.out" "matches"
step "three blocks differ"
printf 'X' | dd of="$TEST_TMP/rep" bs=1 seek=$(((5 << 20) + 7)) conv=notrunc status=none
head -c $((2 << 20)) /dev/urandom | dd of="$TEST_TMP/rep" bs=1M seek=10 conv=notrunc status=none
printf 'Y' | dd of="$TEST_TMP/rep" bs=1 seek=$(((20 << 20) + 700)) conv=notrunc status=none
rc=0; "$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > "$TEST_TMP/v.out" 2> "$TEST_TMP/v.log" || rc=$?
[ "$rc" = 1 ] || fail "verify of differing copies exited $rc: $(cat "$TEST_TMP/v.log")"
expect_in "$TEST_TMP/v.out" "offset 5242880 length 1048576"
expect_in "$TEST_TMP/v.out" "offset 10485760 length 2097152"
expect_in "$TEST_TMP/v.out" "offset 20971520 length 777"
rc=0; "$BLKMIRROR" verify --json --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > "$TEST_TMP/v.json" 2>/dev/null || rc=$?
[ "$rc" = 1 ] || fail "verify --json exited $rc"
jq -e '.equal == false and .differing_blocks == 4 and (.diffs | length) == 3' "$TEST_TMP/v.json" > /dev/null \
  || fail "verify json: $(cat "$TEST_TMP/v.json")"
step "repair by pushing again, then equal"
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "second push"
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > /dev/null 2>&1 || fail "not equal after a full push"
step "a replica without a copy"
serve e "$TEST_TMP/nothing-here"
rc=0; "$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_e" > /dev/null 2> "$TEST_TMP/v.log" || rc=$?
[ "$rc" = 3 ] || fail "verify against a replica without a copy exited $rc"
expect_in "$TEST_TMP/v.log" "does not exist: nothing to verify"
echo PASS
