#!/bin/bash
# Roles and failover (issue 11), with real clients:
#  1. kill -9 of the primary volume daemon in the middle of writes (fio with verify=crc32c at
#     QD1, whose verify state records what completed, and a libnbd client at QD16 logging each
#     completed write); `promote` the replica (refused while the primary is connected, then after
#     the kill accepted); export it; every completed write reads back the same through the new
#     primary and fio's verify pass over it succeeds; it takes new writes alone (--quorum 0).
#     The old primary comes back as a replica (`demote`, `serve`) and is resynced from the new one,
#     ending byte-identical.
#  2. A split brain made on purpose (a partition with a network namespace, a forced promote,
#     writes on both sides): detected when they meet, on both sides, naming the generations and
#     the command; nothing is overwritten; resolved with `demote --discard-my-data`; identical.
source "$(dirname "$0")/lib.sh"
for tool in fio nbdsh; do
  command -v "$tool" > /dev/null || fail "$tool is missing (scripts/lib.sh installs it)"
done
client=(/usr/bin/python3 "$(dirname "$0")/nbd_client.py")
nbdsh=(/usr/bin/python3 -m nbd)
SIZE=$((256 << 20))
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
disk_state() { "$BLKMIRROR" status --disk "$1" --json | jq -r "$2"; }
stop_volume() { kill -TERM "$1"; wait_exit "$1" || fail "volume did not exit cleanly"; }
# fio_job URI MODE...: the same random-write job over the first half of the volume, QD1, with
# its verify state in $TEST_TMP (MODE: the write run, or the verify-only run).
fio_job() {
  local uri=$1; shift
  (cd "$TEST_TMP" && fio --name=fo --ioengine=nbd --uri="$uri" --size=$((SIZE / 2)) \
     --rw=randwrite --bs=4k --iodepth=1 --verify=crc32c --randseed=1234 "$@")
}

step "kill -9 of the primary in the middle of writes, then promote the replica"
serve b "$TEST_TMP/rep-b"
truncate -s "$SIZE" "$TEST_TMP/disk-a"
volume a "$TEST_TMP/disk-a" --peer "127.0.0.1:$PORT_b"
wait_in_sync a
old_gen=$(disk_state "$TEST_TMP/rep-b" .generation)
[ "$(disk_state "$TEST_TMP/disk-a" .role)" = primary ] || fail "disk-a is not primary"
[ "$(disk_state "$TEST_TMP/rep-b" .role)" = replica ] || fail "rep-b is not a replica"
[ "$old_gen" = "$(disk_state "$TEST_TMP/disk-a" .generation)" ] || fail "generations differ in sync"
fio_job "$URI_a" --do_verify=0 --verify_state_save=1 --time_based --runtime=60 \
  --output="$TEST_TMP/fio-write.txt" &
fio_pid=$!
"${client[@]}" "$SOCK_a" logwrites 8000 "$TEST_TMP/acked.log" 8 $((SIZE / 2)) \
  > "$TEST_TMP/writer.out" 2>&1 &
writer=$!
for _ in $(seq 600); do
  [ -f "$TEST_TMP/acked.log" ] && [ "$(wc -l < "$TEST_TMP/acked.log")" -ge 300 ] && break
  sleep 0.05
done
# The primary is connected: promote refuses (exit 4), naming it.
rc=0; "$BLKMIRROR" promote --disk "$TEST_TMP/rep-b" > /dev/null 2> "$TEST_TMP/promote.err" || rc=$?
[ "$rc" = 4 ] || fail "promote while the primary is connected exited $rc"
expect_in "$TEST_TMP/promote.err" "is connected to this replica"
sleep 0.5  # fio, started beside the logging client, is writing too (checked below)
kill -9 "$PID_a"
wait "$writer" 2>/dev/null || true
wait "$fio_pid" 2>/dev/null || true
n=$(wc -l < "$TEST_TMP/acked.log")
[ "$n" -ge 300 ] && [ "$n" -lt 8000 ] || fail "the kill was not in the middle of the writes ($n of 8000)"
[ -f "$TEST_TMP/local-fo-0-verify.state" ] \
  || fail "fio kept no verify state: $(tail -n 3 "$TEST_TMP/fio-write.txt")"
grep -q 'issued rwts: total=0,[1-9]' "$TEST_TMP/fio-write.txt" || fail "fio wrote nothing before the kill"
# The replica's serve still thinks the dead primary is connected until its peer timeout (6 s).
for _ in $(seq 150); do
  [ -z "$(disk_state "$TEST_TMP/rep-b" .writer)" ] && break
  sleep 0.1
done
"$BLKMIRROR" promote --disk "$TEST_TMP/rep-b" > "$TEST_TMP/promote.out" 2>&1 \
  || fail "promote: $(cat "$TEST_TMP/promote.out")"
kill -0 "$PID_b" 2> /dev/null && fail "promote left serve running on the new primary's disk"
[ "$(disk_state "$TEST_TMP/rep-b" .role)" = primary ] || fail "rep-b is not primary after promote"
[ "$(disk_state "$TEST_TMP/rep-b" '.history[0]')" = "$old_gen" ] \
  || fail "promote did not start a generation after $old_gen"
echo "$(grep '^promoted' "$TEST_TMP/promote.out")"

step "the new primary exports the volume alone: every completed write reads back the same"
port_a=$(free_port)
volume b2 "$TEST_TMP/rep-b" --peer "127.0.0.1:$port_a" --quorum 0
"${client[@]}" "$SOCK_b2" checklog "$TEST_TMP/acked.log" nbd || fail "an acked write is missing"
fio_job "$URI_b2" --verify_only --verify_state_load=1 --output="$TEST_TMP/fio-verify.txt" \
  || fail "fio's verify over the new primary: $(grep -m3 -i 'verify\|err' "$TEST_TMP/fio-verify.txt")"
echo "fio verified $(grep -o 'total=[0-9]*' "$TEST_TMP/fio-verify.txt" | head -n 1) reads"
"${nbdsh[@]}" -u "$URI_b2" -c 'h.pwrite(b"\x42" * 65536, 4 << 20); h.flush()' \
  || fail "the new primary took no write while alone"
[ "$(volume_status b2 '.peers[0].state')" != in_sync ] || fail "the old primary counted in sync"

step "the old primary comes back as a replica and is resynced from the new one"
"$BLKMIRROR" demote --disk "$TEST_TMP/disk-a" > "$TEST_TMP/demote.out" 2>&1 \
  || fail "demote: $(cat "$TEST_TMP/demote.out")"
rc=0; "$BLKMIRROR" volume --disk "$TEST_TMP/disk-a" --peer "127.0.0.1:$PORT_b" \
  --export "unix:$TEST_TMP/again.sock" --run-dir "$TEST_TMP/run" > /dev/null \
  2> "$TEST_TMP/again.err" || rc=$?
[ "$rc" = 4 ] || fail "volume on a demoted disk exited $rc"
expect_in "$TEST_TMP/again.err" "promote it first"
"$BLKMIRROR" serve --listen "127.0.0.1:$port_a" --target "$TEST_TMP/disk-a" --pool-size 64M \
  > "$TEST_TMP/serve-a2.out" 2> "$TEST_TMP/serve-a2.log" &
PIDS+=("$!")
wait_in_sync b2 120
stop_volume "$PID_b2"
same "$TEST_TMP/rep-b" "$TEST_TMP/disk-a"
[ "$(disk_state "$TEST_TMP/disk-a" .generation)" = "$(disk_state "$TEST_TMP/rep-b" .generation)" ] \
  || fail "the resynced replica did not take the new primary's generation"
echo "the old primary, demoted, resynced from the new one: identical"

step "split brain on purpose: a partition, a forced promote, writes on both sides"
netns_peer c 1
serve_in "$NS_c" c "$TEST_TMP/rep-c" "$IP_c" --insecure --max-peer-timeout 60s
truncate -s $((64 << 20)) "$TEST_TMP/disk-p"
volume p "$TEST_TMP/disk-p" --peer "$IP_c:7000" --quorum 0 --peer-timeout 2s
wait_in_sync p
ip link set "$IF_c" down
for _ in $(seq 100); do
  [ "$(volume_status p '.peers[0].state')" != in_sync ] && break
  sleep 0.1
done
[ "$(volume_status p '.peers[0].state')" != in_sync ] || fail "p did not lose c"
"${nbdsh[@]}" -u "$URI_p" -c 'h.pwrite(b"P" * 131072, 0); h.flush()' || fail "write on p"
"$BLKMIRROR" promote --force --disk "$TEST_TMP/rep-c" > "$TEST_TMP/promote-c.out" 2>&1 \
  || fail "promote --force: $(cat "$TEST_TMP/promote-c.out")"
port_p=$(free_port)
volume c2 "$TEST_TMP/rep-c" --peer "127.0.0.1:$port_p" --quorum 0 --peer-timeout 2s
"${nbdsh[@]}" -u "$URI_c2" -c 'h.pwrite(b"C" * 131072, 1 << 20); h.flush()' || fail "write on c"
ip link set "$IF_c" up
# p's node steps down without knowing better: demoted with its data kept, served as a replica.
"$BLKMIRROR" demote --disk "$TEST_TMP/disk-p" > /dev/null 2>&1 || fail "demote p"
sum_p=$(sha256sum < "$TEST_TMP/disk-p")
"$BLKMIRROR" serve --listen "127.0.0.1:$port_p" --target "$TEST_TMP/disk-p" --pool-size 64M \
  > "$TEST_TMP/serve-p2.out" 2> "$TEST_TMP/serve-p2.log" &
PIDS+=("$!")
for _ in $(seq 300); do  # c2 retries with a backoff of up to 30 s
  [ "$(volume_status c2 '.peers[0].state')" = diverged ] && break
  sleep 0.2
done
[ "$(volume_status c2 '.peers[0].state')" = diverged ] \
  || fail "c2 does not see the split brain: $(volume_status c2 '.peers[0]')"
volume_status c2 '.peers[0].lost_reason' | grep -q "split brain" \
  || fail "c2's reason: $(volume_status c2 '.peers[0].lost_reason')"
expect_in "$TEST_TMP/serve-p2.log" "split brain"
expect_in "$TEST_TMP/serve-p2.log" "demote --discard-my-data"
[ "$(sha256sum < "$TEST_TMP/disk-p")" = "$sum_p" ] || fail "the split-brain side was overwritten"
echo "split brain seen on both sides: $(grep -m1 -o 'split brain: .*nothing is synced' "$TEST_TMP/serve-p2.log")"

step "resolved: p's changes discarded, copied in full from c"
"$BLKMIRROR" demote --discard-my-data --disk "$TEST_TMP/disk-p" > /dev/null 2>&1 \
  || fail "demote --discard-my-data"
wait_in_sync c2 120
stop_volume "$PID_c2"
same "$TEST_TMP/rep-c" "$TEST_TMP/disk-p"
echo PASS
