#!/bin/bash
# kill -9 of push in the middle, then push again: it resumes from its bitmap (sends less than the
# volume) and the copies match. The replica notices the primary is gone and takes the next one.
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
echo PASS
