#!/bin/bash
# Connections that never complete a handshake get nothing and are bounded: no receive buffer
# for a Data frame before Hello and the key check, a handshake limit counted from connect that
# Heartbeats do not extend; and a writer that asks for no peer timeout and goes silent does not
# hold the writer slot longer than the replica's --max-peer-timeout.
source "$(dirname "$0")/lib.sh"
peer=(python3 "$(dirname "$0")/peer.py")
"$BLKMIRROR" keygen "$TEST_TMP/key" > /dev/null
random_file "$TEST_TMP/src" $((8 << 20))

step "strangers announcing Data before any Hello take no receive buffer"
# 31 buffers of 1 MiB + headroom: one stranger per buffer.
serve r "$TEST_TMP/rep" --key-file "$TEST_TMP/key" --pool-size 32M --max-block-size 1M
coproc HOG { "${peer[@]}" "$PORT_r" hog 31; }
read -r line <&"${HOG[0]}" || true
[ "$line" = "holding 31" ] || fail "peer.py could not open its connections"
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --key-file "$TEST_TMP/key" \
  --peer-timeout 3s || fail "an authenticated push failed beside 31 strangers: $(tail -n 2 "$TEST_TMP/push.log")"
same "$TEST_TMP/src" "$TEST_TMP/rep"
expect_in "$TEST_TMP/serve-r.log" "Data frame before its session was admitted"
exec {HOG[1]}>&-
wait "$HOG_PID" || true

step "Heartbeats do not extend the handshake limit"
serve h "$TEST_TMP/rep-h" --key-file "$TEST_TMP/key" --handshake-timeout 2s
"${peer[@]}" "$PORT_h" hello-heartbeats 20 || fail "a connection that never said Hello stayed open"
expect_in "$TEST_TMP/serve-h.log" "no Hello within 2000 ms of connecting"

step "a silent writer that asked for no peer timeout is closed after --max-peer-timeout"
serve w "$TEST_TMP/rep-w" --max-peer-timeout 2s
coproc HOLD { "${peer[@]}" "$PORT_w" hold-writer $((8 << 20)); }
read -r line <&"${HOLD[0]}" || true
[ "$line" = holding ] || fail "peer.py could not open a write session"
push_retrying 30 --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_w" --meta-dir "$TEST_TMP/meta-w" \
  || fail "the silent writer held the target for 30 s: $(tail -n 2 "$TEST_TMP/push.log")"
expect_in "$TEST_TMP/serve-w.log" "primary lost: no frame for"
same "$TEST_TMP/src" "$TEST_TMP/rep-w"
exec {HOLD[1]}>&-
wait "$HOLD_PID" || true
echo PASS
