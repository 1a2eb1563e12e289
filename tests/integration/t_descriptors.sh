#!/bin/bash
# Running out of file descriptors does not stop serve for good: when accept fails with EMFILE
# (the open-file limit lowered under a running serve, then more idle connections than it
# allows), serve says so, retries with a backoff, and accepts again once descriptors free up.
# And --max-connections refuses connections beyond it at accept, before the process runs out.
source "$(dirname "$0")/lib.sh"
command -v prlimit > /dev/null || skip "no prlimit (util-linux)"
peer=(python3 "$(dirname "$0")/peer.py")
random_file "$TEST_TMP/src" $((4 << 20))

step "EMFILE: accept resumes once descriptors are free"
serve r "$TEST_TMP/rep" --handshake-timeout 60s
prlimit --pid "$PID_r" --nofile=64:64 || skip "cannot lower serve's open-file limit"
coproc IDLE { "${peer[@]}" "$PORT_r" idle 70; }
read -r line <&"${IDLE[0]}" || true
[ "$line" = "holding 70" ] || fail "peer.py could not open 70 connections"
for _ in $(seq 100); do grep -q "accept failed: Too many open files" "$TEST_TMP/serve-r.log" && break; sleep 0.1; done
expect_in "$TEST_TMP/serve-r.log" "accept failed: Too many open files; retrying"
exec {IDLE[1]}>&-
wait "$IDLE_PID" || true
push_retrying 30 --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --meta-dir "$TEST_TMP/m1" \
  || fail "serve did not accept again after the idle connections closed: $(tail -n 2 "$TEST_TMP/push.log")"
same "$TEST_TMP/src" "$TEST_TMP/rep"
expect_in "$TEST_TMP/serve-r.log" "accepting again after"

step "--max-connections: one more is refused at once"
serve m "$TEST_TMP/rep-m" --max-connections 8 --handshake-timeout 2s
coproc IDLE2 { "${peer[@]}" "$PORT_m" idle 10; }
read -r line <&"${IDLE2[0]}" || true
[ "$line" = "holding 10" ] || fail "peer.py could not open 10 connections"
for _ in $(seq 100); do [ "$(grep -c "refused: 8 connections are open (--max-connections)" "$TEST_TMP/serve-m.log")" -ge 2 ] && break; sleep 0.1; done
[ "$(grep -c "refused: 8 connections are open (--max-connections)" "$TEST_TMP/serve-m.log")" = 2 ] \
  || fail "expected 2 refusals: $(grep -c refused "$TEST_TMP/serve-m.log")"
# The 8 idle ones are closed by the handshake limit; then a primary gets in.
push_retrying 30 --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_m" --meta-dir "$TEST_TMP/m2" \
  || fail "no push got in after the idle connections were closed: $(tail -n 2 "$TEST_TMP/push.log")"
same "$TEST_TMP/src" "$TEST_TMP/rep-m"
exec {IDLE2[1]}>&-
wait "$IDLE2_PID" || true
echo PASS
