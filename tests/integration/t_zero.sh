#!/bin/bash
# Blocks of zeros go as zero ranges (Zero frames: no payload; the replica punches a hole or zeroes
# the range), for push, a volume's live writes and its resync; the copies are identical and the
# replica's file stays sparse where the source's is. (t_dpdk checks the same over DPDK.)
source "$(dirname "$0")/lib.sh"

step "push: 4 MiB of data, a 12 MiB hole, 1 MiB of data, then 2 MiB written as zeros"
random_file "$TEST_TMP/src" $((4 << 20))
truncate -s $((16 << 20)) "$TEST_TMP/src"
head -c $((1 << 20)) /dev/urandom >> "$TEST_TMP/src"
head -c $((2 << 20)) /dev/zero >> "$TEST_TMP/src"
# The target starts as data everywhere: every zero block must really be zeroed there.
random_file "$TEST_TMP/dst" $((19 << 20))
serve r "$TEST_TMP/dst"
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" || fail "push: $(tail -n 3 "$TEST_TMP/push.log")"
[ "$(json .zero_bytes)" = $((14 << 20)) ] || fail "14 MiB of zeros went as $(json .zero_bytes) bytes of zero ranges"
[ "$(json .bytes_sent)" = $((5 << 20)) ] || fail "sent $(json .bytes_sent) bytes of data, expected 5 MiB"
same "$TEST_TMP/src" "$TEST_TMP/dst"
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --no-progress > /dev/null 2>&1 \
  || fail "verify after the push"
used=$(du -k "$TEST_TMP/dst" | cut -f1)
# The replica punched its 14 MiB of zeros (where the file system can: tmpfs and ext4 do).
[ "$used" -le $(((5 << 10) + 1024)) ] || fail "the replica uses $used KiB: its zero blocks were not punched"
echo "ok   pushed: 5 MiB of data, 14 MiB as zero ranges; the replica uses $used KiB"

step "push: a source whose size is no multiple of 512 and whose last, short block is zeros"
# A zero range is whole sectors (docs/protocol.md, Zero): that tail goes as data.
random_file "$TEST_TMP/odd" $(((3 << 20) + 4096))
head -c 312 /dev/zero >> "$TEST_TMP/odd"
truncate -s $(((4 << 20) + 312)) "$TEST_TMP/odd"
random_file "$TEST_TMP/odd-dst" $(((4 << 20) + 312))
serve o "$TEST_TMP/odd-dst"
push --source "$TEST_TMP/odd" --peer "127.0.0.1:$PORT_o" --block-size 64K \
  || fail "push of a zero tail of 312 bytes: $(tail -n 3 "$TEST_TMP/push.log")"
same "$TEST_TMP/odd" "$TEST_TMP/odd-dst"
[ "$(json .zero_bytes)" = $(((1 << 20) - 65536)) ] || fail "zero ranges of $(json .zero_bytes) bytes"
kill "$PID_o"; wait "$PID_o" 2>/dev/null || true

# zero_bytes_at_least N: until the volume's replica has had N bytes as zero ranges (its status
# file is written once a second), 20 s at most; prints the count.
zero_bytes_at_least() {
  local n=0
  for _ in $(seq 100); do
    n=$(volume_status vol '.peers[0].zero_bytes' 2>/dev/null || echo 0)
    [ "$n" -ge "$1" ] && break
    sleep 0.2
  done
  echo "$n"
}

step "volume: a client's writes of zeros, and a resync of zeros, go as zero ranges"
kill "$PID_r"; wait "$PID_r" 2>/dev/null || true
random_file "$TEST_TMP/disk" $((16 << 20))
serve v "$TEST_TMP/rep"
volume vol "$TEST_TMP/disk" --peer "127.0.0.1:$PORT_v" --block-size 128K --quorum 0
wait_in_sync vol
# A WRITE whose payload is zeros (not WRITE_ZEROES): the volume finds the zero blocks itself.
/usr/bin/python3 -c "
import nbd
h = nbd.NBD(); h.connect_unix('$SOCK_vol')
h.pwrite(bytearray(4 << 20), 0)
h.shutdown()" || fail "writing zeros through the volume"
wait_in_sync vol
live=$(zero_bytes_at_least $((4 << 20)))
[ "$live" -ge $((4 << 20)) ] || fail "4 MiB of zeros written by a client went as $live bytes of zero ranges"
# The replica away: writes of zeros land in its bitmap; the resync sends them as zero ranges.
kill "$PID_v"; wait "$PID_v" 2>/dev/null || true
/usr/bin/python3 -c "
import nbd
h = nbd.NBD(); h.connect_unix('$SOCK_vol')
h.pwrite(bytearray(1 << 20), 8 << 20)
h.pwrite(bytearray(b'x' * (1 << 20)), 10 << 20)
h.shutdown()" || fail "writing through the volume with its replica away"
"$BLKMIRROR" serve --listen "127.0.0.1:$PORT_v" --target "$TEST_TMP/rep" --pool-size 64M \
  > "$TEST_TMP/serve-v2.out" 2> "$TEST_TMP/serve-v2.log" &
PIDS+=("$!")
wait_in_sync vol 60
after=$(zero_bytes_at_least $((live + (1 << 20))))
[ "$after" -ge $((live + (1 << 20))) ] || fail "the resync sent its zero block as data (zero bytes $live -> $after)"
kill "$PID_vol"; wait "$PID_vol" 2>/dev/null || true
same "$TEST_TMP/disk" "$TEST_TMP/rep"
echo "ok   volume: $live bytes of live zeros, then $((after - live)) by resync, as zero ranges; identical"
echo "PASS"
