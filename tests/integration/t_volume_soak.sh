#!/bin/bash
# A randomized soak of the volume with two replicas (--quorum 1; block size, ack level,
# compression and peer security (none, key-file authentication, TLS with the key's PSK) drawn at
# random): rounds of a writer at depth 8 (every completed write logged)
# broken one random way:
#   crash   one replica killed, then the volume killed (kill -9) in the middle of the writes; the
#           replica restarted, the volume restarted on the same disk;
#   pause   the volume stopped (SIGSTOP) past the replicas' peer timeout, so that both end their
#           sessions, then resumed.
# After each round every write a client saw completed reads back through the volume, and the
# volume gets back in sync; at the end, stopped cleanly, the disk and both replicas are equal and
# hold every write of the last round.
#
#   VOLUME_SOAK_ROUNDS  rounds (default 4)
#   VOLUME_SOAK_SEED    random seed of the schedule and the settings (default: the pid; printed)
source "$(dirname "$0")/lib.sh"
client=(/usr/bin/python3 "$(dirname "$0")/nbd_client.py")
rounds=${VOLUME_SOAK_ROUNDS:-4}
seed=${VOLUME_SOAK_SEED:-$$}
RANDOM=$seed
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

size=$(((RANDOM % 4 + 1) * 32 << 20))
sizes=(64K 128K 1M) acks=(durable received sent) codecs=(none lz4 zstd) secs=(none key tls)
bs=${sizes[RANDOM % 3]} ack=${acks[RANDOM % 3]} codec=${codecs[RANDOM % 3]} sec=${secs[RANDOM % 3]}
echo "volume soak: seed $seed, $rounds rounds, $((size >> 20)) MiB, block $bs, ack $ack," \
  "compress $codec, security $sec"
security=()
if [ "$sec" != none ]; then
  "$BLKMIRROR" keygen "$TEST_TMP/key" > /dev/null
  security=(--key-file "$TEST_TMP/key")
  [ "$sec" = tls ] && security+=(--tls)
fi
truncate -s "$size" "$TEST_TMP/disk"
declare -A port pid
# replica NAME: serve NAME's target on its own port (the same one after a restart).
replica() {
  local out=$TEST_TMP/serve-$1.out
  : > "$out"
  "$BLKMIRROR" serve --listen "127.0.0.1:${port[$1]}" --target "$TEST_TMP/rep-$1" --pool-size 64M \
    "${security[@]}" > "$out" 2>> "$TEST_TMP/serve-$1.log" &
  pid[$1]=$!
  PIDS+=("$!")
  for _ in $(seq 100); do
    grep -q '^listening ' "$out" && return 0
    sleep 0.1
  done
  fail "serve $1 did not start: $(tail -n 3 "$TEST_TMP/serve-$1.log")"
}
for r in a b; do
  port[$r]=$(free_port)
  replica "$r"
done
start_volume() {
  volume v "$TEST_TMP/disk" --peer "127.0.0.1:${port[a]}" --peer "127.0.0.1:${port[b]}" --quorum 1 \
    --block-size "$bs" --ack "$ack" --compress "$codec" --peer-timeout 2s "${security[@]}"
}
start_volume
wait_in_sync v 120

for round in $(seq "$rounds"); do
  log=$TEST_TMP/acked-$round.log
  "${client[@]}" "$SOCK_v" logwrites 4000 "$log" 8 > "$TEST_TMP/writer-$round.out" 2>&1 &
  writer=$!
  want=$((RANDOM % 600 + 50))
  for _ in $(seq 600); do
    [ -f "$log" ] && [ "$(wc -l < "$log")" -ge "$want" ] && break
    sleep 0.05
  done
  if [ $((RANDOM % 2)) = 0 ]; then
    victim=a
    [ $((RANDOM % 2)) = 0 ] && victim=b
    kill -9 "${pid[$victim]}"
    sleep 0.$((RANDOM % 5))
    kill -9 "$PID_v"
    wait "$writer" 2> /dev/null || true
    wait "$PID_v" 2> /dev/null || true
    replica "$victim"
    start_volume
    what="crash: $victim killed, then the volume"
  else
    lost=$(grep -c 'lost replica' "$TEST_TMP/volume-v.log" || true)
    kill -STOP "$PID_v"
    sleep $((RANDOM % 3 + 3))
    kill -CONT "$PID_v"
    wait "$writer" 2> /dev/null || true
    # Both replicas end their sessions during the pause (unless their loops were late). Its
    # status file said in sync before it, and may say so once more before the volume has read
    # that: wait until it has seen both go (wait_in_sync below then trusts only a status
    # written since); a replica that has not ended its session in 10 s kept it.
    for _ in $(seq 100); do
      [ "$(grep -c 'lost replica' "$TEST_TMP/volume-v.log" || true)" -ge $((lost + 2)) ] && break
      sleep 0.1
    done
    what="pause: the volume stopped past the peer timeout"
  fi
  "${client[@]}" "$SOCK_v" checklog "$log" nbd > /dev/null \
    || fail "round $round ($what): a completed write does not read back"
  wait_in_sync v 120
  echo "round $round: $what; $(wc -l < "$log") completed writes read back; in sync"
done
kill -TERM "$PID_v"
wait_exit "$PID_v" || fail "the volume did not exit cleanly"
for r in a b; do same "$TEST_TMP/disk" "$TEST_TMP/rep-$r"; done
# (Earlier rounds' writes may be overwritten by later ones: each was read back in its round.)
for image in disk rep-a rep-b; do
  "${client[@]}" x checklog "$TEST_TMP/acked-$rounds.log" "$TEST_TMP/$image" > /dev/null \
    || fail "a write completed in the last round is not in $image"
done
echo PASS
