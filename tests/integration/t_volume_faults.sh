#!/bin/bash
# The replicated volume when things break, with real clients: a replica killed (kill -9) and
# restarted in the middle of a fio job is resynced in the background while fio goes on; a replica
# cut off by a real partition (netns + veth, link down) the same; and kill -9 of the volume
# daemon in the middle of writes loses no write a client saw completed (each one read back from
# the replica's target).
source "$(dirname "$0")/lib.sh"
command -v fio > /dev/null || fail "fio is missing (scripts/lib.sh installs it)"
client=(/usr/bin/python3 "$(dirname "$0")/nbd_client.py")
SIZE=$((64 << 20))

stop_volume() {
  local pid_var="PID_$1"
  kill -TERM "${!pid_var}"
  wait_exit "${!pid_var}" || fail "volume $1 did not exit cleanly"
}

# fio_bg NAME URI SECONDS: a time-based random-write fio job in the background (verify at the end
# of its run); sets FIO_PID.
fio_bg() {
  fio --name="$1" --ioengine=nbd --uri="$2" --size=48M --rw=randwrite --bs=4k --iodepth=16 \
    --verify_state_save=0 --time_based --runtime="$3" --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --output="$TEST_TMP/fio-$1.txt" &
  FIO_PID=$!
}

step "kill -9 of a replica in the middle of fio, then a restart: resynced while fio goes on"
serve a "$TEST_TMP/rep-a"
serve b "$TEST_TMP/rep-b"
truncate -s "$SIZE" "$TEST_TMP/disk"
volume v "$TEST_TMP/disk" --peer "127.0.0.1:$PORT_a" --peer "127.0.0.1:$PORT_b" --quorum 1 \
  --peer-timeout 2s
wait_in_sync v
fio_bg killed "$URI_v" 10
sleep 2  # fio writes for 10 s: this is in its middle
kill -9 "$PID_b"
wait "$PID_b" 2>/dev/null || true
sleep 1
# Same port: the volume reconnects to it.
"$BLKMIRROR" serve --listen "127.0.0.1:$PORT_b" --target "$TEST_TMP/rep-b" --pool-size 64M \
  > "$TEST_TMP/serve-b2.out" 2> "$TEST_TMP/serve-b2.log" &
PIDS+=("$!")
rc=0; wait "$FIO_PID" || rc=$?
[ "$rc" = 0 ] || fail "fio failed while a replica was down: $(tail -n 5 "$TEST_TMP/fio-killed.txt")"
expect_in "$TEST_TMP/volume-v.log" "127.0.0.1:$PORT_b lost"
expect_in "$TEST_TMP/volume-v.log" "resyncing"
wait_in_sync v
[ "$(volume_status v '.peers[1].reconnects')" -ge 1 ] || fail "no reconnect counted"
stop_volume v
same "$TEST_TMP/disk" "$TEST_TMP/rep-a"
same "$TEST_TMP/disk" "$TEST_TMP/rep-b"
echo "replica b killed and restarted mid-fio: resynced, both replicas identical"

step "a partition of a replica above the quorum in the middle of fio, then healed"
netns_peer c 1 800mbit
serve_in "$NS_c" c "$TEST_TMP/rep-c" "$IP_c" --insecure
volume p "$TEST_TMP/disk" --peer "127.0.0.1:$PORT_a" --peer "$IP_c:7000" --quorum 1 \
  --peer-timeout 2s  # the same node as v (its metadata): a is in sync, c is new
wait_in_sync p 120
fio_bg partitioned "$URI_p" 12
sleep 2
ip link set "$IF_c" down
sleep 4  # past the peer timeout: c is lost, writes go on on a
ip link set "$IF_c" up
tc qdisc replace dev "$IF_c" root tbf rate 800mbit burst 256kb latency 200ms
rc=0; wait "$FIO_PID" || rc=$?
[ "$rc" = 0 ] || fail "fio failed during the partition: $(tail -n 5 "$TEST_TMP/fio-partitioned.txt")"
expect_in "$TEST_TMP/volume-p.log" "$IP_c:7000 lost"
wait_in_sync p 120
stop_volume p
same "$TEST_TMP/disk" "$TEST_TMP/rep-a"
same "$TEST_TMP/disk" "$TEST_TMP/rep-c"
echo "replica c partitioned mid-fio: lost, reconnected, resynced, identical"

step "kill -9 of the volume daemon in the middle of writes: every write seen completed is on the replica"
serve d "$TEST_TMP/rep-d"
truncate -s $((256 << 20)) "$TEST_TMP/disk-d"
volume k "$TEST_TMP/disk-d" --peer "127.0.0.1:$PORT_d"
wait_in_sync k
"${client[@]}" "$SOCK_k" logwrites 4096 "$TEST_TMP/acked.log" > "$TEST_TMP/writer.out" 2>&1 &
writer=$!
for _ in $(seq 600); do
  [ -f "$TEST_TMP/acked.log" ] && [ "$(wc -l < "$TEST_TMP/acked.log")" -ge 1000 ] && break
  sleep 0.05
done
kill -9 "$PID_k"
wait "$writer" 2>/dev/null || true
n=$(wc -l < "$TEST_TMP/acked.log")
[ "$n" -ge 1000 ] && [ "$n" -lt 4096 ] || fail "the kill was not in the middle of the writes ($n of 4096 acked)"
"${client[@]}" x checklog "$TEST_TMP/acked.log" "$TEST_TMP/rep-d" || fail "an acked write was lost"
echo PASS
