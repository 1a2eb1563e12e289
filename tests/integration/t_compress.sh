#!/bin/bash
# --compress lz4|zstd[:LEVEL]: push and the volume send compressed payloads where they save (the
# CRC32C is the data's, checked after decompression on the replica); the copies are identical and
# verify agrees; fewer bytes on the wire. --compress-mode auto measures and logs its decision. A replica NACKs, and never writes, a compressed frame
# that does not decompress to its length or whose CRC is wrong (tests/integration/peer.py).
source "$(dirname "$0")/lib.sh"

# Text-like data (compresses) followed by random data (does not).
/usr/bin/python3 -c '
import glob, sys
text = b"".join(open(f, "rb").read() for f in sorted(glob.glob(sys.argv[1] + "/*.sh")))
sys.stdout.buffer.write((text * (1 + (6 << 20) // len(text)))[: 6 << 20])' "$(dirname "$0")" > "$TEST_TMP/src"
head -c $((2 << 20)) /dev/urandom >> "$TEST_TMP/src"
serve r "$TEST_TMP/dst"
for codec in lz4 zstd zstd:9; do
  step "push --compress $codec"
  push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --full --compress "$codec" \
    --compress-mode always || fail "push --compress $codec: $(tail -n 3 "$TEST_TMP/push.log")"
  same "$TEST_TMP/src" "$TEST_TMP/dst"
  "$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --no-progress > /dev/null 2>&1 \
    || fail "verify after push --compress $codec"
  wire=$(json .wire_bytes) sent=$(json .bytes_sent)
  [ "$sent" = $((8 << 20)) ] || fail "bytes_sent $sent"
  # The random 2 MiB go as they are; the text in less than its 6 MiB.
  [ "$wire" -gt $((2 << 20)) ] && [ "$wire" -lt $((6 << 20)) ] \
    || fail "--compress $codec put $wire bytes on the wire for $sent"
  [ "$(json .crc_mismatches)" = 0 ] || fail "CRC mismatches with --compress $codec"
  echo "ok   $codec: $sent bytes in $wire on the wire"
done
expect_fail 2 "--compress: 'gzip': expected lz4, zstd, zstd:LEVEL or none" \
  push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --compress gzip
expect_fail 2 "--compress-mode: 'often': expected auto or always" \
  push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --compress lz4 --compress-mode often

step "push --compress lz4 --compress-mode auto: it measures, decides, and says so"
# Which way it decides depends on this machine (loopback: usually not compressing); what is
# checked is that the copy is exact, and that the push logs its decision with both rates. The
# probes end within about four windows of writes (the window's fill, a plain probe of a window,
# the compressing probe's settling and count), whatever the speed: 512 blocks are plenty.
for _ in $(seq 64); do cat "$TEST_TMP/src"; done > "$TEST_TMP/big"
kill "$PID_r"; wait "$PID_r" 2>/dev/null || true
serve r "$TEST_TMP/dst"
push --source "$TEST_TMP/big" --peer "127.0.0.1:$PORT_r" --full --compress lz4 \
  || fail "push --compress lz4 (auto): $(tail -n 3 "$TEST_TMP/push.log")"
same "$TEST_TMP/big" "$TEST_TMP/dst"
[ "$(json .compress_mode)" = auto ] || fail "push --json compress_mode $(json .compress_mode), expected auto"
line=$(grep -E -- "--compress-mode auto: (compressing|not compressing) \([0-9]+ MB/s compressing, [0-9]+ MB/s not" "$TEST_TMP/push.log") \
  || fail "the push logged no compression decision: $(grep -i compress "$TEST_TMP/push.log")"
echo "ok   auto: ${line#* info }; $(json .wire_bytes) of $(json .bytes_sent) bytes on the wire"
rm -f "$TEST_TMP/big"

step "volume --compress zstd: a client's writes go compressed"
kill "$PID_r"; wait "$PID_r" 2>/dev/null || true
truncate -s $((16 << 20)) "$TEST_TMP/disk"
serve v "$TEST_TMP/rep"
volume vol "$TEST_TMP/disk" --peer "127.0.0.1:$PORT_v" --compress zstd --compress-mode always
wait_in_sync vol
nbdcopy "$TEST_TMP/src" "$URI_vol" || fail "nbdcopy into the volume"
wait_in_sync vol
for _ in $(seq 50); do
  wire=$(volume_status vol '.peers[0].wire_bytes'); sent=$(volume_status vol '.peers[0].bytes_sent')
  [ "$sent" -ge $((8 << 20)) ] && break
  sleep 0.2
done
[ "$wire" -lt $((sent - (2 << 20))) ] || fail "the volume put $wire bytes on the wire for $sent"
kill "$PID_vol"; wait "$PID_vol" 2>/dev/null || true
same "$TEST_TMP/disk" "$TEST_TMP/rep"
echo "ok   volume: $sent bytes in $wire on the wire; identical"

step "a bad compressed frame is NACKed and never written"
head -c $((64 << 10)) /dev/urandom > "$TEST_TMP/raw"
serve b "$TEST_TMP/raw"
/usr/bin/python3 "$(dirname "$0")/peer.py" "$PORT_b" bad-compressed "$TEST_TMP/raw" \
  || fail "the replica took a bad compressed frame: $(tail -n 5 "$TEST_TMP/serve-b.log")"
expect_in "$TEST_TMP/serve-b.log" "compressed payload does not decompress to 4096 bytes"
echo "PASS"
