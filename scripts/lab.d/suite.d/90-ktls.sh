#!/bin/bash
# TLS with kTLS (runs in the lab guest, whose kernel has the tls module): serve on veth1's
# address with --tls and a key file's pre-shared key, push a 64 MiB random file to it from veth0's
# address over TCP; both sides must say "kTLS active" (once), /proc/net/tls_stat must count the
# sessions in the kernel's software TLS (TlsTxSw and TlsRxSw up by 2: one each way per side; the
# TlsCurr* gauges back where they were once both ends closed) and no decryption error, and the
# replica must equal the source. Then the same push with --no-ktls on the primary: user-space TLS
# talks to a kTLS replica (the wire is the same TLS 1.3).
set -euo pipefail
. "$LAB_REPO/scripts/lab.d/lib.sh"
. "$LAB_REPO/scripts/lab.d/cli.sh"
lab_defaults
cli_setup ktls
trap cli_cleanup EXIT
# The tls module, and AES-GCM for it (the kernel asks for "gcm(aes)" when the keys go in; nothing
# loads it by itself in the guest).
for m in tls aesni_intel gcm ghash_generic ctr; do modprobe "$m" 2> /dev/null || true; done
[ -r /proc/net/tls_stat ] || fail "no /proc/net/tls_stat: the tls module did not load"
stat_of() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat; }

"$bin" keygen "$tmp/key" > /dev/null
head -c $((64 << 20)) /dev/urandom > "$tmp/src"
tx0=$(stat_of TlsTxSw); rx0=$(stat_of TlsRxSw); dec0=$(stat_of TlsDecryptError)
serve r "$LAB_IP1" 7100 --tls --key-file "$tmp/key" --transport tcp
echo "--- push --tls (kTLS)"
push ktls --source "$tmp/src" --peer "$LAB_IP1:7100" --tls --key-file "$tmp/key" --transport tcp --meta-dir "$tmp/m1" \
  || fail "push over TLS"
cmp "$tmp/src" "$tmp/r.img" || fail "the replica differs"
grep -q "tls: kTLS active" "$tmp/ktls-push.log" || fail "push did not use kTLS: $(grep -h tls "$tmp/ktls-push.log")"
grep -q "tls: kTLS active" "$tmp/r.log" || fail "serve did not use kTLS: $(grep -h tls "$tmp/r.log")"
[ "$(grep -c kTLS "$tmp/ktls-push.log")" = 1 ] || fail "push said kTLS more than once"
tx1=$(stat_of TlsTxSw); rx1=$(stat_of TlsRxSw); dec1=$(stat_of TlsDecryptError)
echo "tls_stat: TlsTxSw $tx0 -> $tx1, TlsRxSw $rx0 -> $rx1, TlsDecryptError $dec0 -> $dec1"
[ $((tx1 - tx0)) -ge 2 ] && [ $((rx1 - rx0)) -ge 2 ] || fail "the kernel's TLS counters did not move: $(cat /proc/net/tls_stat)"
[ "$dec1" = "$dec0" ] || fail "kTLS decryption errors: $(cat /proc/net/tls_stat)"
echo "ktls: $(j ktls .bytes_per_second | awk '{ printf "%.1f MB/s", $1 / 1e6 }')"

echo "--- push --tls --no-ktls (user space) to the kTLS replica"
head -c $((64 << 20)) /dev/urandom > "$tmp/src2"
push user --source "$tmp/src2" --peer "$LAB_IP1:7100" --tls --key-file "$tmp/key" --transport tcp --no-ktls --meta-dir "$tmp/m2" \
  || fail "user-space TLS push"
cmp "$tmp/src2" "$tmp/r.img" || fail "the replica differs (user-space TLS)"
grep -q "kTLS" "$tmp/user-push.log" && fail "--no-ktls still used kTLS"
echo "user-space TLS: $(j user .bytes_per_second | awk '{ printf "%.1f MB/s", $1 / 1e6 }')"
echo PASS
