#!/bin/bash
# Resource files (docs/config.md) for real: two nodes on this host (alpha and beta, by --node)
# configured only by one file. serve, push, verify, volume (with an NBD client), status, flags
# that override the file, and check-config on good and broken directories, each mistake with its
# file, line and key and exit 2.
source "$(dirname "$0")/lib.sh"

CONF=$TEST_TMP/etc
mkdir -p "$CONF"
free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PA=$(free_port) PB=$(free_port)
"$BLKMIRROR" keygen "$CONF/vol0.key" > /dev/null || fail "keygen"
cat > "$CONF/vol0.toml" <<EOF
[resource]
ack = "durable"
block-size = "128K"
window = 8
key-file = "$CONF/vol0.key"
peer-timeout = "5s"

[node.alpha]
role = "primary"
disk = "$TEST_TMP/alpha.img"
address = "127.0.0.1:$PA"
export = ["unix:$TEST_TMP/vol0.nbd"]

[node.beta]
role = "replica"
disk = "$TEST_TMP/beta.img"
address = "127.0.0.1:$PB"
EOF
# Not a function: a background job of it would be a subshell, whose PID is not blkmirror's.
BM=("$BLKMIRROR" --config-dir "$CONF")
bm() { "${BM[@]}" "$@"; }

step "check-config: a good directory"
bm check-config > "$TEST_TMP/cc.out" 2> "$TEST_TMP/cc.err" || fail "check-config: $(cat "$TEST_TMP/cc.err")"
expect_in "$TEST_TMP/cc.out" "every resource file is good"
bm check-config vol0 > "$TEST_TMP/cc.out" || fail "check-config vol0"

step "serve and push configured by the file alone (beta serves, alpha pushes)"
random_file "$TEST_TMP/alpha.img" $(((24 << 20) + 4096))
"${BM[@]}" serve --resource vol0 --node beta --pool-size 64M > "$TEST_TMP/serve-beta.out" \
  2> "$TEST_TMP/serve-beta.log" &
PID_beta=$!
PIDS+=("$PID_beta")
for _ in $(seq 100); do grep -q '^listening' "$TEST_TMP/serve-beta.out" && break; sleep 0.1; done
expect_in "$TEST_TMP/serve-beta.out" "127.0.0.1:$PB"
bm push --resource vol0 --node alpha --json --no-progress > "$TEST_TMP/push.json" \
  2> "$TEST_TMP/push.log" || fail "push --resource: $(tail -n 3 "$TEST_TMP/push.log")"
same "$TEST_TMP/alpha.img" "$TEST_TMP/beta.img"
[ "$(jq -r .block_size "$TEST_TMP/push.json")" = 131072 ] \
  || fail "push took block size $(jq -r .block_size "$TEST_TMP/push.json"), not the file's 128K"
grep -q ", authenticated" "$TEST_TMP/serve-beta.log" \
  || fail "the session was not authenticated with the file's key: $(tail -n 3 "$TEST_TMP/serve-beta.log")"

step "flags beside --resource win over the file"
bm push --resource vol0 --node alpha --block-size 64K --full --json --no-progress \
  > "$TEST_TMP/push2.json" 2> "$TEST_TMP/push2.log" || fail "push --block-size 64K: $(tail -n 3 "$TEST_TMP/push2.log")"
[ "$(jq -r .block_size "$TEST_TMP/push2.json")" = 65536 ] || fail "--block-size did not win over the file"
bm verify --resource vol0 --node alpha --json --no-progress > "$TEST_TMP/verify.json" \
  2> "$TEST_TMP/verify.log" || fail "verify --resource: $(tail -n 3 "$TEST_TMP/verify.log")"

step "volume configured by the file: an NBD client writes, beta gets it"
kill "$PID_beta"; wait "$PID_beta" 2>/dev/null || true
"${BM[@]}" serve --resource vol0 --node beta --pool-size 64M > "$TEST_TMP/serve-beta.out" \
  2>> "$TEST_TMP/serve-beta.log" &
PID_beta=$!
PIDS+=("$PID_beta")
for _ in $(seq 100); do grep -q '^listening' "$TEST_TMP/serve-beta.out" && break; sleep 0.1; done
"${BM[@]}" volume --resource vol0 --node alpha --run-dir "$TEST_TMP/run" --pool-size 32M \
  > "$TEST_TMP/volume.out" 2> "$TEST_TMP/volume.log" &
PID_vol=$!
PIDS+=("$PID_vol")
for _ in $(seq 100); do grep -q '^listening nbd' "$TEST_TMP/volume.out" && break; sleep 0.1; done
grep -q '^listening nbd' "$TEST_TMP/volume.out" || fail "volume --resource: $(tail -n 3 "$TEST_TMP/volume.log")"
wait_in_sync vol0
random_file "$TEST_TMP/w" $((4 << 20))
nbdcopy "$TEST_TMP/w" "nbd+unix:///?socket=$TEST_TMP/vol0.nbd" || fail "nbdcopy into the volume"
wait_in_sync vol0
bm status --resource vol0 --run-dir "$TEST_TMP/run" > "$TEST_TMP/status.txt" || fail "status --resource"
expect_in "$TEST_TMP/status.txt" "127.0.0.1:$PB"
kill -TERM "$PID_vol"
wait_exit "$PID_vol" || fail "volume did not exit cleanly"
same "$TEST_TMP/alpha.img" "$TEST_TMP/beta.img"
kill "$PID_beta"; wait "$PID_beta" 2>/dev/null || true

step "a node the file does not name, a resource that does not exist: exit 2, naming them"
expect_fail 2 "has no [node.gamma] table (its nodes: alpha, beta)" --config-dir "$CONF" serve --resource vol0 --node gamma
expect_fail 2 "$CONF/nope.toml: no resource 'nope': the file does not exist" --config-dir "$CONF" push --resource nope
expect_fail 2 "--listen is required (or --resource NAME" --config-dir "$CONF" serve --target "$TEST_TMP/x"

step "check-config: every mistake, with file, line and key; exit 2"
cat > "$CONF/vol1.toml" <<EOF
[resource]
windw = 3
ack = "maybe"

[node.alpha]
disk = "/x"
address = "127.0.0.1:$PA"

[node.gamma]
role = "primary"
EOF
chmod 0644 "$CONF/vol0.key"
expect_fail 2 "$CONF/vol1.toml:2: resource.windw: unknown key" --config-dir "$CONF" check-config
for want in "$CONF/vol1.toml:3: resource.ack: 'maybe': expected sent, received, durable" \
            "$CONF/vol1.toml:9: node.gamma.disk: missing" \
            "$CONF/vol1.toml:9: node.gamma.address: missing" \
            "$CONF/vol1.toml:7: node.alpha.address: 127.0.0.1:$PA is resource vol0's too: the same port twice" \
            "$CONF/vol0.toml:5: resource.key-file:" \
            "6 mistake(s)"; do
  grep -qF -- "$want" "$TEST_TMP/err" || fail "check-config lacks '$want': $(cat "$TEST_TMP/err")"
done
# A command on a broken resource refuses to start, naming the same mistakes.
expect_fail 2 "$CONF/vol0.toml:5: resource.key-file:" --config-dir "$CONF" serve --resource vol0 --node beta
echo '[node.a' > "$CONF/vol1.toml"
expect_fail 2 "$CONF/vol1.toml:1: not TOML:" --config-dir "$CONF" check-config vol1
