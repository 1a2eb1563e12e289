#!/bin/bash
# kill -9 of push in the middle, then push again: it resumes from its bitmap (sends less than the
# volume) and the copies match. The replica notices the primary is gone and takes the next one.
# SIGINT (and SIGTERM) in the middle: the push ends its session cleanly, says what is left and
# exits 130 (143); the next push sends exactly the rest.
source "$(dirname "$0")/lib.sh"
netns_peer r 1 600mbit
random_file "$TEST_TMP/src" $((256 << 20))
serve_in "$NS_r" r "$TEST_TMP/rep" "$IP_r" --insecure
push_held 150M --source "$TEST_TMP/src" --peer "$IP_r:7000" --peer-timeout 2s
step "kill -9 push (held at 150 MiB acked)"
kill -9 "$PUSH_PID"
wait "$PUSH_PID" 2>/dev/null || true
step "push again"
for _ in $(seq 50); do
  push --source "$TEST_TMP/src" --peer "$IP_r:7000" --peer-timeout 2s && break
  grep -q "one writer per volume" "$TEST_TMP/push.log" || fail "second push: $(tail -n 3 "$TEST_TMP/push.log")"
  sleep 0.2  # the replica has not yet seen the old session die
done
sent=$(json .bytes_sent)
echo "resent $sent of $((256 << 20)) bytes"
[ "$(json .resumed)" = true ] || fail "the second push did not resume"
[ "$sent" -lt $((200 << 20)) ] || fail "resent $sent bytes: not well below the volume size"
same "$TEST_TMP/src" "$TEST_TMP/rep"
kill -0 "$PID_r" || fail "serve died"

for sig in INT TERM; do
  step "SIG$sig to push (held at 100 MiB acked), then push again"
  random_file "$TEST_TMP/src" $((256 << 20))  # all new: every block is sent
  push_held 100M --source "$TEST_TMP/src" --peer "$IP_r:7000" --peer-timeout 2s
  kill -s "$sig" "$PUSH_PID"
  rc=0; wait_exit "$PUSH_PID" || rc=$?
  want=$((128 + $(kill -l "$sig")))
  [ "$rc" = "$want" ] || fail "push exited $rc on SIG$sig, not $want: $(tail -n 3 "$TEST_TMP/push.log")"
  expect_in "$TEST_TMP/push.log" "interrupted by SIG$sig after 100.00 MiB of 256.00 MiB; 156 blocks"
  push --source "$TEST_TMP/src" --peer "$IP_r:7000" --peer-timeout 2s \
    || fail "push after SIG$sig: $(tail -n 3 "$TEST_TMP/push.log")"
  [ "$(json .bytes_sent)" = $((156 << 20)) ] || fail "resent $(json .bytes_sent) bytes after SIG$sig, not the 156 MiB left"
  same "$TEST_TMP/src" "$TEST_TMP/rep"
  echo "SIG$sig: exit $rc, then the rest, 156 MiB, and no more"
done
echo PASS
