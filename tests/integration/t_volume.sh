#!/bin/bash
# The replicated volume with real NBD clients, no mocks of them: libnbd's nbdinfo, nbdcopy and
# nbdsh, qemu-img, and fio's nbd engine with verify=crc32c, over a volume with one and with two
# replicas. After each client, the volume is stopped cleanly and its disk and every replica's
# target are compared byte for byte, and `blkmirror verify` agrees. Also: malformed and hostile
# NBD clients (tests/integration/nbd_client.py bad), more clients than allowed, and the status
# command.
source "$(dirname "$0")/lib.sh"
for tool in nbdinfo nbdcopy nbdsh qemu-img fio; do
  command -v "$tool" > /dev/null || fail "$tool is missing (scripts/lib.sh installs it)"
done
client=(/usr/bin/python3 "$(dirname "$0")/nbd_client.py")
# nbdsh runs on Debian's python3 (libnbd's module), whatever python3 comes first in PATH.
nbdsh=(/usr/bin/python3 -m nbd)
SIZE=$((64 << 20))

# stop_volume NAME: SIGTERM, and wait for its clean exit.
stop_volume() {
  local pid_var="PID_$1"
  kill -TERM "${!pid_var}"
  wait_exit "${!pid_var}" || fail "volume $1 did not exit cleanly"
}
# same_everywhere DISK REPLICA...: the volume's disk equals each replica's target.
same_everywhere() {
  local disk=$1; shift
  for rep in "$@"; do same "$disk" "$rep"; done
}

step "one replica: nbdinfo, nbdcopy, qemu-img, nbdsh"
serve a "$TEST_TMP/rep-a"
truncate -s "$SIZE" "$TEST_TMP/disk"
volume v "$TEST_TMP/disk" --peer "127.0.0.1:$PORT_a"
nbdinfo --json "$URI_v" > "$TEST_TMP/info.json" || fail "nbdinfo"
jq -e ".exports[0][\"export-size\"] == $SIZE and .exports[0].can_flush and .exports[0].can_fua
       and .exports[0].can_trim and .exports[0].can_zero and .exports[0].can_multi_conn
       and .exports[0].block_size_minimum == 512" "$TEST_TMP/info.json" > /dev/null \
  || fail "nbdinfo: $(cat "$TEST_TMP/info.json")"
random_file "$TEST_TMP/src" "$SIZE"
nbdcopy "$TEST_TMP/src" "$URI_v" || fail "nbdcopy into the volume"
nbdcopy "$URI_v" "$TEST_TMP/back" || fail "nbdcopy out of the volume"
same "$TEST_TMP/src" "$TEST_TMP/back"
random_file "$TEST_TMP/src2" $((8 << 20))
qemu-img convert -n -f raw -O raw "$TEST_TMP/src2" "$URI_v" || fail "qemu-img convert"
# Through nbdsh: FUA write, TRIM, WRITE_ZEROES (no hole), FLUSH, odd sizes and offsets.
"${nbdsh[@]}" -u "$URI_v" -c '
import os
h.pwrite(b"\x5a" * 3584, 512 + 4096, nbd.CMD_FLAG_FUA)
h.trim(128 * 1024, 1 << 20)
h.zero(1536, 3 << 20, nbd.CMD_FLAG_NO_HOLE)
h.flush()
assert h.pread(512, 1 << 20) == b"\0" * 512
' || fail "nbdsh"
"$BLKMIRROR" status --volume v --run-dir "$TEST_TMP/run" > "$TEST_TMP/status.txt" || fail "status"
expect_in "$TEST_TMP/status.txt" "127.0.0.1:$PORT_a (tcp)"
# The status file is rewritten once a second: wait for one written after the clients.
for _ in $(seq 50); do [ "$(volume_status v '.writes')" -gt 0 ] && break; sleep 0.1; done
[ "$(volume_status v '.writes')" -gt 0 ] || fail "status counts no writes: $(volume_status v .)"
wait_in_sync v
stop_volume v
same_everywhere "$TEST_TMP/disk" "$TEST_TMP/rep-a"
qemu-img compare -f raw -F raw "$TEST_TMP/disk" "$TEST_TMP/rep-a" > /dev/null || fail "qemu-img compare"
# status of a volume that is not running, or of a file that is not a status file: clear errors.
! "$BLKMIRROR" status --volume v --run-dir "$TEST_TMP/run" 2> "$TEST_TMP/status.err" \
  || fail "status of a stopped volume succeeded"
expect_in "$TEST_TMP/status.err" "no running volume 'v'"
echo '{"pid": "12"}' > "$TEST_TMP/run/bad.json"
! "$BLKMIRROR" status --volume bad --run-dir "$TEST_TMP/run" 2> "$TEST_TMP/status.err" \
  || fail "status of a broken status file succeeded"
expect_in "$TEST_TMP/status.err" "is not a blkmirror volume status file"

step "two replicas: fio random writes with verify=crc32c, at each ack level"
serve b "$TEST_TMP/rep-b"
for ack in durable received sent; do
  volume w "$TEST_TMP/disk" --peer "127.0.0.1:$PORT_a" --peer "127.0.0.1:$PORT_b" --ack "$ack"
  wait_in_sync w
  fio --name=verify --ioengine=nbd --uri="$URI_w" --size=32M --rw=randwrite --bs=4k \
    --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 \
    --randseed=$RANDOM \
    --output="$TEST_TMP/fio-$ack.txt" || fail "fio at $ack: $(tail -n 5 "$TEST_TMP/fio-$ack.txt")"
  fio --name=mixed --ioengine=nbd --uri="$URI_w" --size=32M --rw=randrw --bsrange=512-256k \
    --bs_unaligned=0 --blockalign=512 --iodepth=8 --io_size=16M --output="$TEST_TMP/fio2-$ack.txt" \
    || fail "fio mixed sizes at $ack: $(tail -n 5 "$TEST_TMP/fio2-$ack.txt")"
  # The replicas' dirty bits settle while the volume runs, at every level: below durable at the
  # acks of the volume's own flushes (about one a second), without a client FLUSH.
  deadline=$((SECONDS + 20))
  until [ "$(volume_status w '[.peers[].dirty_bytes] | add')" = 0 ]; do
    [ "$SECONDS" -lt "$deadline" ] \
      || fail "ack $ack: dirty bytes $(volume_status w '[.peers[].dirty_bytes]') 20 s after the writes"
    sleep 0.3
  done
  stop_volume w
  same_everywhere "$TEST_TMP/disk" "$TEST_TMP/rep-a" "$TEST_TMP/rep-b"
  echo "ack $ack: fio verified, disk and both replicas identical"
done
for port in "$PORT_a" "$PORT_b"; do
  "$BLKMIRROR" verify --source "$TEST_TMP/disk" --peer "127.0.0.1:$port" > "$TEST_TMP/v.out" \
    2> "$TEST_TMP/v.log" || fail "verify against $port: $(cat "$TEST_TMP/v.out")"
  expect_in "$TEST_TMP/v.out" "matches"
done

step "bad clients: malformed, oversized, out of range, truncated, vanishing, flooding, silent; too many"
volume x "$TEST_TMP/disk" --peer "127.0.0.1:$PORT_a" --max-clients 4
wait_in_sync x
cp "$TEST_TMP/disk" "$TEST_TMP/before"
"${client[@]}" "$SOCK_x" bad || fail "the volume mishandled a bad client"
coproc HOLD { "${client[@]}" "$SOCK_x" hold 6; }
read -r line <&"${HOLD[0]}" || true
[ "$line" = "held 4" ] || fail "expected 4 of 6 clients admitted, got '$line'"
expect_in "$TEST_TMP/volume-x.log" "clients connected (--max-clients)"
exec {HOLD[1]}>&-
wait "$HOLD_PID" || true
# Connections that never do the handshake take every place, and are closed after 10 s.
coproc SILENT { "${client[@]}" "$SOCK_x" silent 4; }
read -r line <&"${SILENT[0]}" || true
[ "$line" = "connected 4" ] || fail "silent clients: '$line'"
for _ in $(seq 300); do
  [ "$(grep -c "no handshake within 10 s" "$TEST_TMP/volume-x.log")" -ge 4 ] && break
  sleep 0.1
done
[ "$(grep -c "no handshake within 10 s" "$TEST_TMP/volume-x.log")" = 4 ] \
  || fail "clients that never did the handshake were not all closed: $(grep -c "no handshake" "$TEST_TMP/volume-x.log") of 4"
exec {SILENT[1]}>&-
read -r line <&"${SILENT[0]}" || true
[ "$line" = "closed 4" ] || fail "silent clients: '$line'"
nbdinfo "$URI_x" > /dev/null || fail "nbdinfo after the silent clients were closed"
kill -0 "$PID_x" || fail "the volume died"
stop_volume x
same "$TEST_TMP/before" "$TEST_TMP/disk"
same_everywhere "$TEST_TMP/disk" "$TEST_TMP/rep-a"

step "SIGTERM while a client writes at depth 8: every request in flight is answered"
volume t "$TEST_TMP/disk" --peer "127.0.0.1:$PORT_a"
wait_in_sync t
"${client[@]}" "$SOCK_t" logwrites 100000 "$TEST_TMP/term.log" 8 > "$TEST_TMP/term-writer.out" 2>&1 &
writer=$!
for _ in $(seq 300); do
  [ -f "$TEST_TMP/term.log" ] && [ "$(wc -l < "$TEST_TMP/term.log")" -ge 50 ] && break
  sleep 0.05
done
kill -TERM "$PID_t"
wait_exit "$PID_t" || fail "volume t did not exit cleanly"
wait "$writer" || true  # its connection closes under it
# A request whose header came in before the TERM and whose payload after it stayed unanswered
# until the shutdown deadline (30 s), every time.
if grep -q "at the shutdown deadline" "$TEST_TMP/volume-t.log"; then
  fail "SIGTERM left requests in flight: $(grep "shutdown deadline" "$TEST_TMP/volume-t.log")"
fi
for image in "$TEST_TMP/disk" "$TEST_TMP/rep-a"; do
  "${client[@]}" "$SOCK_t" checklog "$TEST_TMP/term.log" "$image" \
    || fail "a write acked before the shutdown is not in $image"
done
same_everywhere "$TEST_TMP/disk" "$TEST_TMP/rep-a"
echo "SIGTERM during writes: $(wc -l < "$TEST_TMP/term.log") acked, all on both copies; none left in flight"
echo PASS
