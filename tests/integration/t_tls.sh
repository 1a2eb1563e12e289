#!/bin/bash
# TLS on TCP (--tls): push, verify and a volume over TLS with certificates and with the pre-shared
# key of a key file, each copy compared byte for byte; every refusal named on both sides where
# both can know it: a peer without TLS (either way), a certificate from another CA, an expired
# certificate, another key file, certificates against a pre-shared key; a peer that stops in the
# middle of the handshake is cut by the handshake timeout (serve) or the connect timeout (push).
# The replica never changes under a refused primary. The certificates are made here with the
# openssl CLI (an expired one with -days -1: valid from now, until yesterday).
source "$(dirname "$0")/lib.sh"
command -v openssl > /dev/null || skip "no openssl CLI"
C=$TEST_TMP/certs
mkdir -p "$C"
ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$C/$1.key" \
         -out "$C/$1.pem" -days 30 -subj "/CN=$1" 2> /dev/null || fail "openssl: CA $1"; }
cert() {  # cert NAME CA DAYS
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$C/$1.key" \
    -out "$C/$1.csr" -subj "/CN=$1" 2> /dev/null || fail "openssl: request $1"
  openssl x509 -req -in "$C/$1.csr" -CA "$C/$2.pem" -CAkey "$C/$2.key" -CAcreateserial \
    -out "$C/$1.pem" -days "$3" 2> /dev/null || fail "openssl: certificate $1"
  chmod 600 "$C/$1.key"
}
ca ca; ca otherca
cert replica ca 30; cert primary ca 30; cert expired ca -1; cert stranger otherca 30
openssl verify -CAfile "$C/ca.pem" "$C/expired.pem" > /dev/null 2>&1 && fail "the expired certificate verifies"
certs() { echo --tls --cert "$C/$1.pem" --cert-key "$C/$1.key" --ca "$C/${2:-ca}.pem"; }
"$BLKMIRROR" keygen "$TEST_TMP/key" > /dev/null
"$BLKMIRROR" keygen "$TEST_TMP/other" > /dev/null

random_file "$TEST_TMP/src" $((24 << 20))

step "certificates: push, verify, cmp"
# shellcheck disable=SC2046
serve c "$TEST_TMP/rep-c" $(certs replica)
# shellcheck disable=SC2046
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_c" $(certs primary) \
  || fail "push with certificates: $(tail -n 3 "$TEST_TMP/push.log")"
same "$TEST_TMP/src" "$TEST_TMP/rep-c"
[ "$(json .peers[0].transport)" = tcp ] || fail "transport $(json .peers[0].transport)"
expect_in "$TEST_TMP/push.log" "--tls: TCP only"
expect_in "$TEST_TMP/push.log" "tls: no kTLS here"  # this host's kernel has no tls module; the lab's has
[ "$(grep -c "kTLS" "$TEST_TMP/push.log")" = 1 ] || fail "kTLS said more than once"
# shellcheck disable=SC2046
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_c" $(certs primary) \
  > "$TEST_TMP/verify.out" 2>&1 || fail "verify over TLS: $(cat "$TEST_TMP/verify.out")"
# verify --repair: its write session is TLS too.
head -c 4096 /dev/urandom | dd of="$TEST_TMP/rep-c" bs=4096 seek=5 conv=notrunc status=none
rc=0
# shellcheck disable=SC2046
"$BLKMIRROR" verify --repair --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_c" $(certs primary) \
  > "$TEST_TMP/verify.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "verify --repair over TLS exited $rc: $(cat "$TEST_TMP/verify.out")"
expect_in "$TEST_TMP/verify.out" "repaired: 1048576 bytes resent"
same "$TEST_TMP/src" "$TEST_TMP/rep-c"
before=$(sha256sum < "$TEST_TMP/rep-c")

step "refused: a certificate of another CA, both sides say so"
# shellcheck disable=SC2046
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_c" $(certs stranger) --full --meta-dir "$TEST_TMP/m1" || rc=$?
[ "$rc" = 3 ] || fail "a stranger's certificate: push exited $rc"
expect_in "$TEST_TMP/push.log" "refused us in the TLS handshake (alert \"unknown CA\"): it does not trust our certificate: not signed by its --ca"
expect_in "$TEST_TMP/serve-c.log" "in the TLS handshake: its certificate is not signed by our --ca (a wrong CA?)"

step "refused: the replica's certificate is not signed by the primary's CA"
# shellcheck disable=SC2046
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_c" $(certs primary otherca) --full --meta-dir "$TEST_TMP/m2" || rc=$?
[ "$rc" = 3 ] || fail "another CA at the primary: push exited $rc"
expect_in "$TEST_TMP/push.log" "refused 127.0.0.1:$PORT_c in the TLS handshake: its certificate is not signed by our --ca (a wrong CA?)"
expect_in "$TEST_TMP/serve-c.log" "refused us in the TLS handshake (alert \"unknown CA\")"

step "refused: an expired certificate, both sides say so"
# shellcheck disable=SC2046
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_c" $(certs expired) --full --meta-dir "$TEST_TMP/m3" || rc=$?
[ "$rc" = 3 ] || fail "an expired certificate: push exited $rc"
expect_in "$TEST_TMP/push.log" "tls: --cert $C/expired.pem expired on"
expect_in "$TEST_TMP/push.log" "(alert \"certificate expired\"): our certificate (--cert) has expired"
expect_in "$TEST_TMP/serve-c.log" "in the TLS handshake: its certificate has expired"

step "refused: a pre-shared key against certificates"
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_c" --tls --key-file "$TEST_TMP/key" --full --meta-dir "$TEST_TMP/m4" || rc=$?
[ "$rc" = 3 ] || fail "PSK against certificates: push exited $rc"
expect_in "$TEST_TMP/push.log" "(alert \"certificate required\"): it wants a certificate and we have none"
expect_in "$TEST_TMP/serve-c.log" "it sent no certificate"

step "refused: a primary without TLS, both sides say so"
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_c" --full --meta-dir "$TEST_TMP/m5" || rc=$?
[ "$rc" = 3 ] || fail "a plain primary: push exited $rc"
expect_in "$TEST_TMP/push.log" "reported: this replica requires TLS: give the primary --tls"
expect_in "$TEST_TMP/serve-c.log" "speaks plain blkmirror, without TLS: this side requires TLS (--tls)"

step "a peer that stops in the middle of the handshake is cut by the handshake timeout"
# shellcheck disable=SC2046
serve h "$TEST_TMP/rep-h" $(certs replica) --handshake-timeout 1s
exec 3<> "/dev/tcp/127.0.0.1/$PORT_h"
printf '\x16\x03\x01\x02\x00\x01\x00' >&3  # the first bytes of a ClientHello, and no more
sleep 2.5
expect_in "$TEST_TMP/serve-h.log" "within 1000 ms of connecting (handshake limit)"
exec 3>&-
# And a replica that accepts and never answers: push gives up at its connect timeout (10 s).
python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4)
print(s.getsockname()[1], flush=True)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
' > "$TEST_TMP/silent.port" &
PIDS+=("$!")
for _ in $(seq 50); do [ -s "$TEST_TMP/silent.port" ] && break; sleep 0.1; done
silent=$(cat "$TEST_TMP/silent.port")
start=$SECONDS
# shellcheck disable=SC2046
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$silent" $(certs primary) --peer-timeout 2s --meta-dir "$TEST_TMP/m6" || rc=$?
[ "$rc" = 3 ] || fail "a silent replica: push exited $rc"
[ $((SECONDS - start)) -le 20 ] || fail "push took $((SECONDS - start)) s against a silent replica"
expect_in "$TEST_TMP/push.log" "TLS handshake with 127.0.0.1:$silent did not complete within"

step "pre-shared key from the key file: push, verify, cmp"
serve p "$TEST_TMP/rep-p" --tls --key-file "$TEST_TMP/key"
push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_p" --tls --key-file "$TEST_TMP/key" --meta-dir "$TEST_TMP/mp" \
  || fail "push with a PSK: $(tail -n 3 "$TEST_TMP/push.log")"
same "$TEST_TMP/src" "$TEST_TMP/rep-p"
"$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_p" --tls --key-file "$TEST_TMP/key" \
  > "$TEST_TMP/verify.out" 2>&1 || fail "verify with a PSK: $(cat "$TEST_TMP/verify.out")"
before_p=$(sha256sum < "$TEST_TMP/rep-p")

step "refused: another key file, both sides say so"
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_p" --tls --key-file "$TEST_TMP/other" --full --meta-dir "$TEST_TMP/m7" || rc=$?
[ "$rc" = 3 ] || fail "another key: push exited $rc"
expect_in "$TEST_TMP/push.log" "our pre-shared keys differ: the two sides have different --key-file keys"
expect_in "$TEST_TMP/serve-p.log" "its pre-shared key differs from ours (the two sides have different --key-file keys)"

step "refused: certificates against a pre-shared key"
# shellcheck disable=SC2046
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_p" $(certs primary) --full --meta-dir "$TEST_TMP/m8" || rc=$?
[ "$rc" = 3 ] || fail "certificates against a PSK: push exited $rc"
expect_in "$TEST_TMP/serve-p.log" "it offered no pre-shared key of ours (it uses certificates?"

step "refused: a TLS primary to a replica without TLS, both sides say so"
serve plain "$TEST_TMP/rep-plain"
rc=0; push --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_plain" --tls --key-file "$TEST_TMP/key" --meta-dir "$TEST_TMP/m9" || rc=$?
[ "$rc" = 3 ] || fail "TLS to a plain replica: push exited $rc"
expect_in "$TEST_TMP/push.log" "answered in plain blkmirror, not TLS: it runs without --tls"
expect_in "$TEST_TMP/serve-plain.log" "speaks TLS (its first bytes are a TLS handshake record) and this side runs without --tls"

step "bad flags"
expect_fail 2 "--tls with certificates needs all three of --cert, --cert-key and --ca" \
  push --source "$TEST_TMP/src" --peer 127.0.0.1:1 --tls --cert "$C/primary.pem"
expect_fail 2 "--tls needs certificates (--cert, --cert-key, --ca) or a key file" \
  push --source "$TEST_TMP/src" --peer 127.0.0.1:1 --tls
expect_fail 2 "--tls is TLS on TCP: --transport rdma would carry the data in the clear" \
  push --source "$TEST_TMP/src" --peer 127.0.0.1:1 --tls --key-file "$TEST_TMP/key" --transport rdma
expect_fail 2 "--cert-key $C/replica.key is not the key of --cert $C/primary.pem" \
  serve --listen 127.0.0.1:0 --target "$TEST_TMP/x" --tls --cert "$C/primary.pem" --cert-key "$C/replica.key" --ca "$C/ca.pem"
expect_fail 2 "--ca $TEST_TMP/nothing: No such file or directory" \
  serve --listen 127.0.0.1:0 --target "$TEST_TMP/x" --tls --cert "$C/replica.pem" --cert-key "$C/replica.key" --ca "$TEST_TMP/nothing"

[ "$(sha256sum < "$TEST_TMP/rep-c")" = "$before" ] || fail "the replica changed under refused primaries"
[ "$(sha256sum < "$TEST_TMP/rep-p")" = "$before_p" ] || fail "the PSK replica changed under refused primaries"

step "a volume over TLS (a resource file: tls, cert, cert-key, ca)"
# shellcheck disable=SC2046
serve vr "$TEST_TMP/rep-v" $(certs replica)
mkdir -p "$TEST_TMP/conf"
cat > "$TEST_TMP/conf/tv.toml" <<EOF
[resource]
tls = true
cert = "$C/primary.pem"
cert-key = "$C/primary.key"
ca = "$C/ca.pem"
[node.a]
address = "127.0.0.1:9"
disk = "$TEST_TMP/vdisk"
[node.b]
address = "127.0.0.1:$PORT_vr"
disk = "$TEST_TMP/rep-v"
EOF
"$BLKMIRROR" --config-dir "$TEST_TMP/conf" check-config tv > /dev/null || fail "check-config: $("$BLKMIRROR" --config-dir "$TEST_TMP/conf" check-config tv 2>&1)"
truncate -s $((16 << 20)) "$TEST_TMP/vdisk"
volume v "$TEST_TMP/vdisk" --config-dir "$TEST_TMP/conf" --resource tv --node a --meta-dir "$TEST_TMP/mv"
random_file "$TEST_TMP/vsrc" $((16 << 20))
if command -v nbdcopy > /dev/null; then
  nbdcopy "$TEST_TMP/vsrc" "$URI_v" || fail "nbdcopy into the volume"
else
  /usr/bin/python3 -c '
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); data = open(sys.argv[2], "rb").read()
for off in range(0, len(data), 1 << 20): h.pwrite(data[off:off + (1 << 20)], off)
h.flush(); h.shutdown()' "$URI_v" "$TEST_TMP/vsrc" || fail "writing the volume"
fi
kill -TERM "$PID_v"; wait_exit "$PID_v" || fail "volume did not exit cleanly"
expect_in "$TEST_TMP/volume-v.log" "--tls: TCP only"
same "$TEST_TMP/vsrc" "$TEST_TMP/vdisk"
same "$TEST_TMP/vsrc" "$TEST_TMP/rep-v"
echo PASS
