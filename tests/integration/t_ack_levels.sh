#!/bin/bash
# serve + push of a random 64 MiB file, compared byte for byte, at each ack level; the target
# is on the disk's file system (O_DIRECT path). At every level a clean push ends with the
# replica in sync in the primary's bitmap: at sent and received the replica's final flush and
# durable ack after Bye must reach the primary before the connection closes.
source "$(dirname "$0")/lib.sh"
random_file "$TEST_TMP/src" $((64 << 20))
for ack in sent received durable; do
  step "ack $ack"
  serve r "$TEST_TMP/rep-$ack" --once
  push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --ack "$ack" || fail "push --ack $ack failed: $(cat "$TEST_TMP/push.log")"
  wait_exit "$PID_r" || fail "serve --once exited with an error"
  same "$TEST_TMP/src" "$TEST_TMP/rep-$ack"
  [ "$(json .ack)" = "$ack" ] || fail "json ack is $(json .ack)"
  [ "$(json .bytes)" = $((64 << 20)) ] || fail "json bytes is $(json .bytes)"
  [ "$(json .blocks)" = 64 ] || fail "json blocks is $(json .blocks)"
  [ "$(json .transport)" = tcp ] || fail "json transport is $(json .transport)"
  [ "$(json .retransmits)" = 0 ] || fail "unexpected retransmits"
  [ "$(json .crc_mismatches)" = 0 ] || fail "unexpected CRC mismatches"
  [ "$(json '.peers | length')" = 1 ] || fail "json peers"
  jq -e '.seconds > 0 and .bytes_per_second > 0 and .ack_latency_us.p50 > 0 and .ack_latency_us.p99 >= .ack_latency_us.p50' \
    "$TEST_TMP/push.json" > /dev/null || fail "json figures: $(cat "$TEST_TMP/push.json")"
  # The latency histogram: one count per block acked, edges increasing, the p50 one of its edges.
  jq -e '.ack_latency_us as $l | [$l.histogram[] | .[0]] as $edges
         | ([$l.histogram[] | .[1]] | add) == .blocks and $edges == ($edges | sort | unique)
         and any($edges[]; . == $l.p50)' \
    "$TEST_TMP/push.json" > /dev/null || fail "json histogram: $(jq -c .ack_latency_us "$TEST_TMP/push.json")"
  # stdout holds exactly one JSON object and nothing else
  [ "$(wc -l < "$TEST_TMP/push.json")" = 1 ] || fail "stdout is not one line of JSON"
  expect_in "$TEST_TMP/serve-r.log" "session ended: 64 blocks"
  [ "$(json '.peers[0].state')" = in_sync ] || fail "ack $ack: state $(json '.peers[0].state'), $(json '.peers[0].blocks_dirty') blocks dirty"
  "$BLKMIRROR" status --json --source "$TEST_TMP/src" > "$TEST_TMP/status.json" || fail "status"
  dirty=$(jq '[.replicas[].blocks_dirty] | add' "$TEST_TMP/status.json")
  [ "$dirty" = 0 ] || fail "ack $ack: status says $dirty blocks dirty after a clean push"
  rm -rf "$TEST_TMP/src.blkmirror"
done
echo PASS
