#!/bin/bash
# Online verify: verify runs against a replica while a push to it is in flight (a verify
# session alongside the writer). It answers (exit 0 or 1, never an error), and the blocks it
# reports differing are blocks the push had not finished; once the push is done, verify --repair
# finds nothing to repair and verify reports equal.
source "$(dirname "$0")/lib.sh"
netns_peer r 1 400mbit
random_file "$TEST_TMP/src" $((128 << 20))
serve_in "$NS_r" r "$TEST_TMP/rep" "$IP_r" --insecure
push_held 32M --source "$TEST_TMP/src" --peer "$IP_r:7000"
step "verify while the push runs (held at 32 MiB acked, its session open)"
rc=0
"$BLKMIRROR" verify --json --source "$TEST_TMP/src" --peer "$IP_r:7000" > "$TEST_TMP/v.json" 2> "$TEST_TMP/v.log" || rc=$?
[ "$rc" -le 1 ] || fail "verify during a push failed (exit $rc): $(tail -n 2 "$TEST_TMP/v.log")"
differing=$(jq .differing_blocks "$TEST_TMP/v.json")
echo "verify during the push: exit $rc, $differing blocks differing"
[ "$rc" = 1 ] && [ "$differing" -gt 0 ] || fail "verify saw no difference in the middle of the push"
kill -0 "$PUSH_PID" 2>/dev/null || fail "the push ended while held"
release_push
rc=0; wait "$PUSH_PID" || rc=$?
[ "$rc" = 0 ] || fail "the push failed alongside verify: $(tail -n 3 "$TEST_TMP/push.log")"
step "after the push: equal"
"$BLKMIRROR" verify --repair --source "$TEST_TMP/src" --peer "$IP_r:7000" > "$TEST_TMP/v.out" 2>&1 || fail "verify after the push: $(cat "$TEST_TMP/v.out")"
expect_in "$TEST_TMP/v.out" "matches"
same "$TEST_TMP/src" "$TEST_TMP/rep"
echo PASS
