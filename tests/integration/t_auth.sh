#!/bin/bash
# Peer authentication: keygen makes a 0600 key; a primary without the key, or with another key,
# is refused before it can write a byte (the replica file is unchanged, hash before and after),
# and serve names its address; the right key works; serve will not listen beyond loopback
# without a key unless --insecure.
source "$(dirname "$0")/lib.sh"
"$BLKMIRROR" keygen "$TEST_TMP/key" > /dev/null || fail "keygen"
"$BLKMIRROR" keygen "$TEST_TMP/other" > /dev/null || fail "keygen"
[ "$(stat -c %a "$TEST_TMP/key")" = 600 ] || fail "key mode $(stat -c %a "$TEST_TMP/key")"
rc=0; "$BLKMIRROR" keygen "$TEST_TMP/key" > /dev/null 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "keygen overwrote an existing key"
cp "$TEST_TMP/key" "$TEST_TMP/open-key" && chmod 644 "$TEST_TMP/open-key"
rc=0; "$BLKMIRROR" serve --listen 127.0.0.1:0 --target "$TEST_TMP/x" --key-file "$TEST_TMP/open-key" 2> "$TEST_TMP/e" || rc=$?
[ "$rc" = 2 ] && grep -q "readable by others" "$TEST_TMP/e" || fail "a world-readable key was accepted"

random_file "$TEST_TMP/src" $((8 << 20))
random_file "$TEST_TMP/rep" $((8 << 20))
before=$(sha256sum < "$TEST_TMP/rep")
serve r "$TEST_TMP/rep" --key-file "$TEST_TMP/key"
step "no key"
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || rc=$?
[ "$rc" = 3 ] || fail "a push without a key exited $rc"
expect_in "$TEST_TMP/push.log" "requires authentication"
step "another key"
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --key-file "$TEST_TMP/other" || rc=$?
[ "$rc" = 3 ] || fail "a push with the wrong key exited $rc"
expect_in "$TEST_TMP/push.log" "authentication failed"
expect_in "$TEST_TMP/serve-r.log" "authentication failed"
grep "authentication failed" "$TEST_TMP/serve-r.log" | grep -q "127.0.0.1:" || fail "serve did not name the refused address"
[ "$(sha256sum < "$TEST_TMP/rep")" = "$before" ] || fail "the replica changed under unauthenticated primaries"
step "verify with the wrong key is refused too"
rc=0; "$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --key-file "$TEST_TMP/other" > /dev/null 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "verify with the wrong key exited $rc"
step "the right key"
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --key-file "$TEST_TMP/key" || fail "push with the key: $(tail -n 3 "$TEST_TMP/push.log")"
same "$TEST_TMP/src" "$TEST_TMP/rep"
step "a primary with a key refuses a replica that cannot prove it"
serve open "$TEST_TMP/rep2"
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_open" --key-file "$TEST_TMP/key" --meta-dir "$TEST_TMP/m2" || rc=$?
[ "$rc" = 3 ] || fail "push to an unauthenticated replica exited $rc"
expect_in "$TEST_TMP/push.log" "did not prove it holds our key"
step "no key beyond loopback"
rc=0; "$BLKMIRROR" serve --listen 0.0.0.0:0 --target "$TEST_TMP/x" 2> "$TEST_TMP/e" || rc=$?
[ "$rc" = 2 ] || fail "serve on 0.0.0.0 without a key exited $rc"
grep -q "without --key-file" "$TEST_TMP/e" || fail "message: $(cat "$TEST_TMP/e")"
serve insecure "$TEST_TMP/rep3" --insecure
echo PASS
