#!/bin/bash
# Failure scenarios over RDMA verbs (runs in the lab guest): CRC faults injected on the replica
# (NACK -> resend, exactly the number injected, replica correct), a block that fails every try
# (the push gives up naming it, exit 3, never written), kill -9 of serve in the middle of a push
# (the push fails clearly; after a restart the next push resends only the dirty blocks and the
# copies match), a wrong key (refused, replica unchanged), a link taken down (peer lost by
# timeout, --quorum 1 with a second, TCP peer, completes). "In the middle" is made so: the push
# holds at a known byte count (--test-hold-at) while the failure is injected, whatever the speed
# of the emulator.
set -euo pipefail
. "$LAB_REPO/scripts/lab.d/lib.sh"
. "$LAB_REPO/scripts/lab.d/cli.sh"
require_lab_rdma
lab_defaults
cli_setup fail-rdma
link_down=0
cleanup() { cli_cleanup; [ "$link_down" = 0 ] || lab_link_up veth1 || true; }
trap cleanup EXIT
"$bin" keygen "$tmp/key" > /dev/null
"$bin" keygen "$tmp/other" > /dev/null

# Every push here goes over RDMA.
push_rdma() { local name=$1; shift; push "$name" --transport rdma "$@"; }
head -c $((24 << 20)) /dev/urandom > "$tmp/src"

echo "--- CRC faults over RDMA"
serve crc "$LAB_IP1" 7100 --key-file "$tmp/key" --test-fault flip-rx-data:every=4
push_rdma crc --source "$tmp/src" --peer "$LAB_IP1:7100" --key-file "$tmp/key" --meta-dir "$tmp/m-crc" || fail "push with CRC faults"
[ "$(j crc .transport)" = rdma ] || fail "transport $(j crc .transport)"
# Seqs 3, 7, ..., 23 of the 24 blocks, on their first transmission: exactly 6.
[ "$(j crc .crc_mismatches)" = 6 ] || fail "crc_mismatches $(j crc .crc_mismatches), expected 6"
[ "$(j crc .retransmits)" = "$(j crc .crc_mismatches)" ] || fail "retransmits != mismatches"
cmp "$tmp/src" "$tmp/crc.img" || fail "the replica differs after CRC faults"
echo "CRC faults: $(j crc .crc_mismatches) mismatches, all resent, replica identical"

echo "--- wrong key over RDMA"
cp "$tmp/crc.img" "$tmp/before"
rc=0; push_rdma wrongkey --source "$tmp/src" --peer "$LAB_IP1:7100" --key-file "$tmp/other" --meta-dir "$tmp/m-wk" || rc=$?
[ "$rc" = 3 ] || fail "wrong key exited $rc"
grep -q "authentication failed" "$tmp/wrongkey-push.log" || fail "$(tail -n 2 "$tmp/wrongkey-push.log")"
cmp "$tmp/before" "$tmp/crc.img" || fail "the replica changed under a wrong key"
kill "$SPID"

echo "--- a block that fails every try over RDMA"
serve bad "$LAB_IP1" 7150 --key-file "$tmp/key" --test-fault flip-rx-data:offset=$((5 << 20))
rc=0; push_rdma bad --source "$tmp/src" --peer "$LAB_IP1:7150" --key-file "$tmp/key" --meta-dir "$tmp/m-bad" || rc=$?
[ "$rc" = 3 ] || fail "push with a block that always fails exited $rc"
grep -q "block at offset $((5 << 20)) (length 1048576) was rejected by $LAB_IP1:7150 6 times" "$tmp/bad-push.log" \
  || fail "no clear error: $(grep error "$tmp/bad-push.log" | head -n 3)"
cmp -s -i "$((5 << 20)):0" -n $((1 << 20)) "$tmp/bad.img" /dev/zero || fail "the corrupted block was written"
echo "gave up: $(grep -m1 'giving up' "$tmp/bad-push.log" | sed 's/.*error[^ ]* //')"
kill "$SPID"

echo "--- kill -9 serve mid-push over RDMA"
serve k "$LAB_IP1" 7200 --key-file "$tmp/key"
push_held k1 8M --transport rdma --source "$tmp/src" --peer "$LAB_IP1:7200" --key-file "$tmp/key" \
  --meta-dir "$tmp/m-k" --peer-timeout 3s
kill -9 "$SPID"
release_push
rc=0; wait "$PPID_PUSH" || rc=$?
[ "$rc" = 3 ] || fail "push whose replica died exited $rc"
grep -q "lost replica" "$tmp/k1-push.log" || fail "$(tail -n 2 "$tmp/k1-push.log")"
serve k "$LAB_IP1" 7200 --key-file "$tmp/key"
push_rdma k2 --source "$tmp/src" --peer "$LAB_IP1:7200" --key-file "$tmp/key" --meta-dir "$tmp/m-k" || fail "push after restart"
[ "$(j k2 .resumed)" = true ] || fail "did not resume"
[ "$(j k2 .bytes_sent)" -lt $((24 << 20)) ] || fail "resent everything: $(j k2 .bytes_sent)"
cmp "$tmp/src" "$tmp/k.img" || fail "the replica differs after the restart"
echo "after kill -9: resent $(j k2 .bytes_sent) of $((24 << 20)) bytes, replica identical"
kill "$SPID"

echo "--- link down mid-push: quorum 1 with an RDMA peer and a TCP peer"
serve a "$LAB_IP1" 7300 --key-file "$tmp/key"
serve b "$LAB_NORDMA_IP" 7301 --key-file "$tmp/key"
push_held q 4M --source "$tmp/src" --peer "$LAB_IP1:7300" --peer "$LAB_NORDMA_IP:7301" \
  --key-file "$tmp/key" --meta-dir "$tmp/m-q" --quorum 1 --peer-timeout 3s
link_down=1
ip link set veth1 down
release_push
rc=0; wait "$PPID_PUSH" || rc=$?
kill_pids
lab_link_up veth1
link_down=0
[ "$rc" = 0 ] || fail "quorum push exited $rc: $(tail -n 3 "$tmp/q-push.log")"
[ "$(j q '.peers[0].state')" = lost ] || fail "rdma peer: $(j q '.peers[0]')"
acked=$(j q '.peers[0].bytes_acked')
[ "$acked" -lt $((24 << 20)) ] || fail "the rdma peer was not lost mid-push: $acked bytes acked"
[ "$(j q '.peers[0].transport')" = rdma ] || fail "peer 0 transport $(j q '.peers[0].transport')"
[ "$(j q '.peers[1].state')" = in_sync ] || fail "tcp peer: $(j q '.peers[1].state')"
cmp "$tmp/src" "$tmp/b.img" || fail "the TCP replica differs"
echo "link down: rdma peer lost ($(j q '.peers[0].lost_reason')), push completed on the tcp peer"
echo PASS
