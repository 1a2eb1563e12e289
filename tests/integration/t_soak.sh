#!/bin/bash
# A randomized soak across three replicas in their own network namespaces: pushes with
# --quorum 2 while random things break (kill -9 of a replica, kill -9 of the primary, a
# partition, bit flips on the wire, new writes to the source), then everything heals, one last
# push resyncs, and every replica is verified. It prints how many scenarios ran and how many
# bytes were lost (must be 0); after each crash it also checks that what the primary saw acked
# durable is on the replica.
#
#   SOAK_SECONDS   time budget (default 100; CI keeps the whole test under 3 minutes)
#   SOAK_SEED      random seed (default: the pid; printed, so a failure can be replayed)
source "$(dirname "$0")/lib.sh"
budget=${SOAK_SECONDS:-100}
seed=${SOAK_SEED:-$$}
RANDOM=$seed
echo "soak: budget ${budget}s, seed $seed"

names=(a b c)
for i in 0 1 2; do netns_peer "${names[$i]}" $((i + 1)) 800mbit; done
"$BLKMIRROR" keygen "$TEST_TMP/key" > /dev/null
random_file "$TEST_TMP/src" $((96 << 20))
key=(--key-file "$TEST_TMP/key")

start_replica() {  # start_replica NAME [SERVE ARGS...]
  local n=$1; shift
  local ns_var="NS_$n" ip_var="IP_$n"
  serve_in "${!ns_var}" "$n" "$TEST_TMP/rep-$n" "${!ip_var}" "${key[@]}" "$@"
}
stop_replica() {  # stop_replica NAME [SIGNAL]
  local pid_var="PID_$1"
  kill "-${2:-TERM}" "${!pid_var}" 2>/dev/null || true
  wait "${!pid_var}" 2>/dev/null || true
}
peers=()
for n in "${names[@]}"; do ip_var="IP_$n"; peers+=(--peer "${!ip_var}:7000"); start_replica "$n"; done

push_now() {  # push_now [ARGS...]: a push in the background with the soak's settings
  push_bg --source "$TEST_TMP/src" "${peers[@]}" "${key[@]}" --quorum 2 --peer-timeout 1s "$@"
}
# Pushes until one is accepted by every replica (after a crash a replica may still be timing
# out the old session: "one writer per volume").
push_until_ok() {
  for _ in $(seq 40); do
    push --source "$TEST_TMP/src" "${peers[@]}" "${key[@]}" --peer-timeout 1s && return 0
    sleep 0.5
  done
  fail "no push succeeded: $(tail -n 3 "$TEST_TMP/push.log")"
}

scenarios=0 crashes=0 partitions=0 flips=0 primary_kills=0 writes=0
deadline=$((SECONDS + budget))
while [ $SECONDS -lt "$deadline" ]; do
  scenarios=$((scenarios + 1))
  victim=${names[$((RANDOM % 3))]}
  kind=$((RANDOM % 5))
  delay=$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.1 + (r % 80) / 100 }')
  case $kind in
    0)  # kill -9 a replica mid-push, restart it
      echo "scenario $scenarios: kill -9 replica $victim after ${delay}s"
      push_now; sleep "$delay"; stop_replica "$victim" KILL
      wait "$PUSH_PID" 2>/dev/null || true
      start_replica "$victim"
      ip_var="IP_$victim"
      if [ -e "$TEST_TMP/rep-$victim" ]; then
        dirty_covers_diffs "$TEST_TMP/src" "${!ip_var}:7000" "${key[@]}"
      else
        # Killed before its first session: serve makes the target before it acks anything.
        echo "replica $victim was killed before its first session: nothing was acked to check"
      fi
      crashes=$((crashes + 1)) ;;
    1)  # partition a replica mid-push, heal after
      echo "scenario $scenarios: partition $victim after ${delay}s"
      if_var="IF_$victim"
      push_now; sleep "$delay"; ip link set "${!if_var}" down
      wait "$PUSH_PID" 2>/dev/null || true
      ip link set "${!if_var}" up
      tc qdisc replace dev "${!if_var}" root tbf rate 800mbit burst 256kb latency 200ms
      partitions=$((partitions + 1)) ;;
    2)  # bit flips on the wire into one replica for one push
      echo "scenario $scenarios: bit flips into $victim"
      stop_replica "$victim"
      start_replica "$victim" --test-fault "flip-rx-data:every=$((2 + RANDOM % 5))"
      push_now; wait "$PUSH_PID" 2>/dev/null || true
      stop_replica "$victim"; start_replica "$victim"
      flips=$((flips + 1)) ;;
    3)  # kill -9 the primary mid-push
      echo "scenario $scenarios: kill -9 push after ${delay}s"
      push_now; sleep "$delay"; kill -9 "$PUSH_PID" 2>/dev/null || true
      wait "$PUSH_PID" 2>/dev/null || true
      primary_kills=$((primary_kills + 1)) ;;
    4)  # new writes to the source between pushes
      echo "scenario $scenarios: new writes to the source"
      for _ in $(seq 8); do
        head -c 65536 /dev/urandom | dd of="$TEST_TMP/src" bs=65536 seek=$((RANDOM % 1536)) conv=notrunc status=none
      done
      push_now; wait "$PUSH_PID" 2>/dev/null || true
      writes=$((writes + 1)) ;;
  esac
done

echo "soak: healing, final resync"
for n in "${names[@]}"; do if_var="IF_$n"; ip link set "${!if_var}" up; done
push_until_ok
lost=0
for n in "${names[@]}"; do
  ip_var="IP_$n"
  rc=0
  "$BLKMIRROR" verify --json --source "$TEST_TMP/src" --peer "${!ip_var}:7000" "${key[@]}" \
    > "$TEST_TMP/verify-$n.json" 2>> "$TEST_TMP/verify.log" || rc=$?
  [ "$rc" -le 1 ] || fail "verify of $n failed"
  bytes=$(jq '[.diffs[].length] | add // 0' "$TEST_TMP/verify-$n.json")
  lost=$((lost + bytes))
  cmp -s "$TEST_TMP/src" "$TEST_TMP/rep-$n" || lost=$((lost + 1))
done
echo "soak: scenarios=$scenarios (replica kills $crashes, partitions $partitions, bit-flip pushes $flips, primary kills $primary_kills, source writes $writes) bytes_lost=$lost seed=$seed"
[ "$lost" = 0 ] || fail "bytes lost: $lost (replay with SOAK_SEED=$seed)"
echo PASS
