#!/bin/bash
# The blkmirror CLI end to end over soft-RoCE (runs in the lab guest): serve on rxe1's address,
# push from rxe0's address --transport rdma and --transport auto (a 32 MiB random file, compared
# byte for byte, "transport": "rdma" in the JSON); --transport auto against an address with no
# RDMA device falls back to TCP and says why; a mixed fan-out (one peer over RDMA, one over TCP);
# verify --repair over RDMA; zero ranges and --compress lz4 over RDMA (cmp, verify);
# --transport rdma to that address is a clear error.
set -euo pipefail
. "$LAB_REPO/scripts/lab.d/lib.sh"
. "$LAB_REPO/scripts/lab.d/cli.sh"
require_lab_rdma
lab_defaults
cli_setup cli-rdma
trap cli_cleanup EXIT

head -c $((32 << 20)) /dev/urandom > "$tmp/src"
serve r "$LAB_IP1" 7000 --insecure
grep -q "^listening rdma $LAB_IP1:7000" "$tmp/r.out" || fail "serve does not listen over rdma: $(cat "$tmp/r.out")"

echo "--- push --transport rdma"
push rdma --source "$tmp/src" --peer "$LAB_IP1:7000" --transport rdma --meta-dir "$tmp/m1" || fail "push over rdma"
[ "$(j rdma .transport)" = rdma ] || fail "transport is $(j rdma .transport)"
cmp "$tmp/src" "$tmp/r.img" || fail "the replica differs (rdma)"
echo "rdma: $(j rdma .bytes_per_second | awk '{ printf "%.1f MB/s", $1 / 1e6 }'), p50 ack $(j rdma .ack_latency_us.p50) us"

echo "--- push --transport auto (RDMA reaches the peer)"
head -c $((32 << 20)) /dev/urandom > "$tmp/src2"
rm -f "$tmp/r.img"
push auto --source "$tmp/src2" --peer "$LAB_IP1:7000" --meta-dir "$tmp/m2" || fail "push auto"
[ "$(j auto .transport)" = rdma ] || fail "auto chose $(j auto .transport)"
[ "$(j auto '.peers[0].fallback_reason')" = null ] || fail "unexpected fallback: $(j auto '.peers[0].fallback_reason')"
cmp "$tmp/src2" "$tmp/r.img" || fail "the replica differs (auto)"

echo "--- --transport auto to an address without RDMA falls back to TCP"
serve n "$LAB_NORDMA_IP" 7001 --insecure
grep -q "^listening rdma" "$tmp/n.out" && fail "serve claims rdma on $LAB_NORDMA_IP"
grep -q "not serving rdma" "$tmp/n.log" || fail "serve did not say why it does not serve rdma"
push fb --source "$tmp/src" --peer "$LAB_NORDMA_IP:7001" --meta-dir "$tmp/m3" || fail "push with fallback"
[ "$(j fb .transport)" = tcp ] || fail "fallback transport is $(j fb .transport)"
j fb '.peers[0].fallback_reason' | grep -q "^rdma: " || fail "no fallback_reason: $(j fb '.peers[0]')"
echo "fallback reason: $(j fb '.peers[0].fallback_reason')"
cmp "$tmp/src" "$tmp/n.img" || fail "the replica differs (fallback)"

echo "--- mixed fan-out: one peer over RDMA, one over TCP"
rm -f "$tmp/r.img" "$tmp/n.img"
push mixed --source "$tmp/src" --peer "$LAB_IP1:7000" --peer "$LAB_NORDMA_IP:7001" --meta-dir "$tmp/m4" || fail "mixed push"
[ "$(j mixed .transport)" = mixed ] || fail "transport is $(j mixed .transport)"
[ "$(j mixed '.peers[0].transport')" = rdma ] || fail "peer 0 over $(j mixed '.peers[0].transport')"
[ "$(j mixed '.peers[1].transport')" = tcp ] || fail "peer 1 over $(j mixed '.peers[1].transport')"
cmp "$tmp/src" "$tmp/r.img" && cmp "$tmp/src" "$tmp/n.img" || fail "a replica differs (mixed)"

echo "--- verify over RDMA"
"$bin" verify --source "$tmp/src" --peer "$LAB_IP1:7000" --transport rdma --bind "$LAB_IP0" > "$tmp/v.out" 2> "$tmp/v.log" || fail "verify over rdma"
grep -q matches "$tmp/v.out" || fail "verify: $(cat "$tmp/v.out")"

echo "--- verify --repair over RDMA (the comparison, then a write session, in one process)"
head -c $((1 << 20)) /dev/urandom | dd of="$tmp/r.img" bs=1M seek=7 conv=notrunc status=none
rc=0; "$bin" verify --repair --source "$tmp/src" --peer "$LAB_IP1:7000" --transport rdma --bind "$LAB_IP0" \
  --meta-dir "$tmp/m7" > "$tmp/vr.out" 2> "$tmp/vr.log" || rc=$?
[ "$rc" = 1 ] || fail "verify --repair over rdma exited $rc: $(tail -n 3 "$tmp/vr.log")"
grep -q "repaired: 1048576 bytes resent" "$tmp/vr.out" || fail "verify --repair: $(cat "$tmp/vr.out")"
cmp "$tmp/src" "$tmp/r.img" || fail "the replica differs after verify --repair over rdma"

echo "--- zero ranges and compressed payloads over RDMA"
# 8 MiB of text (compresses), 8 MiB of zeros (a zero range, no payload), 16 MiB random (as is).
seq 1 1300000 > "$tmp/seq"  # 9.3 MB (a file, not a pipe: head would stop seq with SIGPIPE)
{ head -c $((8 << 20)) "$tmp/seq"; head -c $((8 << 20)) /dev/zero; head -c $((16 << 20)) /dev/urandom; } > "$tmp/src3"
push zc --source "$tmp/src3" --peer "$LAB_IP1:7000" --transport rdma --meta-dir "$tmp/m6" --full \
  --compress lz4 --compress-mode always || fail "push --compress over rdma"
[ "$(j zc .transport)" = rdma ] || fail "transport is $(j zc .transport)"
[ "$(j zc .zero_bytes)" = $((8 << 20)) ] || fail "8 MiB of zeros went as $(j zc .zero_bytes) bytes of zero ranges"
[ "$(j zc .bytes_sent)" = $((24 << 20)) ] || fail "bytes_sent $(j zc .bytes_sent), expected 24 MiB"
wire=$(j zc .wire_bytes)
[ "$wire" -gt $((16 << 20)) ] && [ "$wire" -lt $((22 << 20)) ] || fail "wire_bytes $wire for 24 MiB (8 MiB of it text, about 4.7 MiB in lz4)"
[ "$(j zc .crc_mismatches)" = 0 ] || fail "CRC mismatches over rdma with --compress"
cmp "$tmp/src3" "$tmp/r.img" || fail "the replica differs (zeros and compression over rdma)"
"$bin" verify --source "$tmp/src3" --peer "$LAB_IP1:7000" --transport rdma --bind "$LAB_IP0" > "$tmp/v3.out" 2> "$tmp/v3.log" || fail "verify after the compressed push over rdma"
grep -q matches "$tmp/v3.out" || fail "verify: $(cat "$tmp/v3.out")"
echo "zeros and lz4 over rdma: 24 MiB of data in $wire bytes on the wire, 8 MiB as a zero range"

echo "--- --transport rdma where no RDMA device reaches the peer"
rc=0; push nordma --source "$tmp/src" --peer "$LAB_NORDMA_IP:7001" --transport rdma --meta-dir "$tmp/m5" || rc=$?
[ "$rc" = 3 ] || fail "push --transport rdma to $LAB_NORDMA_IP exited $rc"
grep -q "over RDMA" "$tmp/nordma-push.log" || fail "error: $(tail -n 2 "$tmp/nordma-push.log")"
echo "error: $(grep -m1 'error' "$tmp/nordma-push.log")"
echo PASS
