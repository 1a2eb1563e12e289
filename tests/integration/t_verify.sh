#!/bin/bash
# verify: equal copies exit 0; differing blocks are named by offset and length, exit 1.
source "$(dirname "$0")/lib.sh"
# change_byte OFFSET: the replica's byte at OFFSET becomes the complement of the source's (a
# fixed letter would equal a random source byte now and then, and change nothing).
change_byte() {
  local b
  b=$(od -An -tu1 -j "$1" -N1 "$TEST_TMP/src" | tr -d ' ')
  printf "\\$(printf %03o $((b ^ 255)))" | dd of="$TEST_TMP/rep" bs=1 seek="$1" conv=notrunc status=none
}
random_file "$TEST_TMP/src" $(((20 << 20) + 777))
serve r "$TEST_TMP/rep"
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "push: $(cat "$TEST_TMP/push.log")"
step "equal"
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > "$TEST_TMP/v.out" 2> "$TEST_TMP/v.log" \
  || fail "verify of equal copies failed: $(cat "$TEST_TMP/v.log")"
expect_in "$TEST_TMP/v.out" "matches"
step "three blocks differ"
change_byte $(((5 << 20) + 7))
head -c $((2 << 20)) /dev/urandom | dd of="$TEST_TMP/rep" bs=1M seek=10 conv=notrunc status=none
change_byte $(((20 << 20) + 700))
rc=0; "$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > "$TEST_TMP/v.out" 2> "$TEST_TMP/v.log" || rc=$?
[ "$rc" = 1 ] || fail "verify of differing copies exited $rc: $(cat "$TEST_TMP/v.log")"
expect_in "$TEST_TMP/v.out" "offset 5242880 length 1048576"
expect_in "$TEST_TMP/v.out" "offset 10485760 length 2097152"
expect_in "$TEST_TMP/v.out" "offset 20971520 length 777"
rc=0; "$BLKMIRROR" verify --json --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > "$TEST_TMP/v.json" 2>/dev/null || rc=$?
[ "$rc" = 1 ] || fail "verify --json exited $rc"
jq -e '.equal == false and .differing_blocks == 4 and (.diffs | length) == 3' "$TEST_TMP/v.json" > /dev/null \
  || fail "verify json: $(cat "$TEST_TMP/v.json")"
step "a resumed push sends nothing: the bitmap says in sync (the damage was not made through blkmirror)"
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "second push"
[ "$(json .bytes_sent)" = 0 ] || fail "a push with a clean bitmap sent $(json .bytes_sent) bytes"
[ "$(json .blocks_skipped)" = 21 ] || fail "blocks_skipped $(json .blocks_skipped)"
[ "$(json .resumed)" = true ] || fail "resumed should be true"
[ "$(json '.peers[0].state')" = in_sync ] || fail "state $(json '.peers[0].state')"
step "verify --repair resends exactly the differing blocks"
rc=0; "$BLKMIRROR" verify --repair --json --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > "$TEST_TMP/v.json" 2> "$TEST_TMP/v.log" || rc=$?
[ "$rc" = 1 ] || fail "verify --repair exited $rc: $(cat "$TEST_TMP/v.log")"
jq -e '.repaired == true and .repair.bytes_sent == (2 * 1048576 + 1048576 + 777)' "$TEST_TMP/v.json" > /dev/null \
  || fail "repair: $(jq -c '{repaired, repair}' "$TEST_TMP/v.json")"
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > /dev/null 2>&1 || fail "not equal after verify --repair"
step "push --checksum-skip sends only the pieces whose CRCs differ (4K; 1M with --checksum-block-size 1M)"
change_byte $(((7 << 20) + 3))
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --checksum-skip || fail "push --checksum-skip: $(cat "$TEST_TMP/push.log")"
[ "$(json .bytes_sent)" = 4096 ] || fail "--checksum-skip sent $(json .bytes_sent) bytes for a 1-byte change"
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > /dev/null 2>&1 || fail "not equal after --checksum-skip"
# The block sent in pieces is clean in the bitmap again: a resumed push sends nothing.
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "push after --checksum-skip"
[ "$(json .bytes_sent)" = 0 ] || fail "a push after --checksum-skip resent $(json .bytes_sent) bytes"
# Two differing pieces on either side of a block boundary come back as one range: both blocks
# are dirty, and each sends its piece.
change_byte $(((12 << 20) - 2))
change_byte $(((12 << 20) + 2))
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --checksum-skip || fail "push --checksum-skip across a block boundary: $(cat "$TEST_TMP/push.log")"
[ "$(json .bytes_sent)" = 8192 ] || fail "--checksum-skip sent $(json .bytes_sent) bytes for two pieces on either side of a block boundary"
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > /dev/null 2>&1 || fail "not equal after --checksum-skip across a block boundary"
change_byte $(((9 << 20) + 5))
change_byte $(((20 << 20) + 700))
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --checksum-skip --checksum-block-size 1M \
  || fail "push --checksum-block-size 1M: $(cat "$TEST_TMP/push.log")"
[ "$(json .bytes_sent)" = $(((1 << 20) + 777)) ] || fail "--checksum-block-size 1M sent $(json .bytes_sent) bytes"
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > /dev/null 2>&1 || fail "not equal after --checksum-block-size 1M"
expect_fail 2 "--checksum-block-size 12K must divide --block-size 1M" \
  push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --checksum-skip --checksum-block-size 12K
expect_fail 2 "--full, --resume and --checksum-skip each choose what to send: give at most one" \
  push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --checksum-skip --resume
step "a source written outside blkmirror since the last push: the bitmap is blind to it, every block goes"
b=$(od -An -tu1 -j $(((3 << 20) + 5)) -N1 "$TEST_TMP/src" | tr -d ' ')
printf "\\$(printf %03o $((b ^ 255)))" | dd of="$TEST_TMP/src" bs=1 seek=$(((3 << 20) + 5)) conv=notrunc status=none
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "push after an outside write"
expect_in "$TEST_TMP/push.log" "changed since this replica's last push"
[ "$(json .bytes_sent)" = $(((20 << 20) + 777)) ] || fail "after an outside write, sent $(json .bytes_sent) bytes"
[ "$(json .resumed)" = false ] || fail "resumed should be false after an outside write"
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" > /dev/null 2>&1 || fail "not equal after the full copy"
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "push after the full copy"
[ "$(json .bytes_sent)" = 0 ] || fail "the stamp was not renewed: $(json .bytes_sent) bytes sent again"
step "push --checksum-skip to a replica that must grow, right after its comparison, 30 times"
# The comparison's verify session must be over on the replica before the write session asks
# for the larger target; it once was not, now and then ("in use by verify sessions").
head -c $((3 << 20)) /dev/urandom > "$TEST_TMP/grow-src"
serve g "$TEST_TMP/grow-rep"
for i in $(seq 30); do
  truncate -s 1M "$TEST_TMP/grow-rep"
  push --source "$TEST_TMP/grow-src" --peer "127.0.0.1:$PORT_g" --checksum-skip \
    || fail "push --checksum-skip to a shorter replica, round $i: $(tail -n 2 "$TEST_TMP/push.log")"
  cmp -s "$TEST_TMP/grow-src" "$TEST_TMP/grow-rep" || fail "the grown replica differs, round $i"
done
step "push --full sends everything"
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --full || fail "push --full"
[ "$(json .bytes_sent)" = $(((20 << 20) + 777)) ] || fail "--full sent $(json .bytes_sent) bytes"
step "a replica whose copy is longer than the source: the volume's bytes match, and verify says so"
cp "$TEST_TMP/src" "$TEST_TMP/long-rep"
head -c $((1 << 20)) /dev/urandom >> "$TEST_TMP/long-rep"
serve l "$TEST_TMP/long-rep"
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_l" > "$TEST_TMP/v.out" 2> "$TEST_TMP/v.log" \
  || fail "verify of a longer copy: $(cat "$TEST_TMP/v.log")"
expect_in "$TEST_TMP/v.out" "its copy holds $(((21 << 20) + 777)) bytes, the source $(((20 << 20) + 777))"
"$BLKMIRROR" verify --json --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_l" 2> /dev/null \
  | jq -e ".replica_bytes == $(((21 << 20) + 777))" > /dev/null || fail "verify --json has no replica_bytes"
step "a replica without a copy"
serve e "$TEST_TMP/nothing-here"
rc=0; "$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_e" > /dev/null 2> "$TEST_TMP/v.log" || rc=$?
[ "$rc" = 3 ] || fail "verify against a replica without a copy exited $rc"
expect_in "$TEST_TMP/v.log" "does not exist: nothing to verify"
echo PASS
