#!/bin/bash
# `blkmirror daemon` for real: three nodes (alpha, beta, gamma), each a daemon configured only by
# files (the same resource files on every node; daemon.toml names the node and its admin socket),
# alpha in one network namespace and beta and gamma in another, linked by a veth pair.
#   vol0: alpha primary (NBD export, 64K blocks), beta replica; gamma joins it by a reload.
#   vol1: beta primary, alpha replica: each daemon runs a volume and a replica target at once.
# Then: `blkmirror status` through the admin socket (text, --json, NAME, --watch, an unknown
# NAME), the socket's mode and its refusal of another user, and reloads (SIGHUP) while an NBD
# client writes to vol0 without pause: a resync rate and the log level changed live, a broken
# file refused, a change that needs a restart reported, a peer added (vol0 restarted inside the
# daemon; the client reconnects), a resource removed. At the end no acked write is missing from
# any copy, and every copy of vol0 is identical.
source "$(dirname "$0")/lib.sh"
command -v ip > /dev/null || skip "no iproute2"
command -v setpriv > /dev/null || fail "setpriv is missing (util-linux)"
client=(/usr/bin/python3 "$(dirname "$0")/nbd_client.py")

NS_A="bm$$-alpha" NS_B="bm$$-beta"
ip netns add "$NS_A" 2>/dev/null || skip "cannot create network namespaces (needs root and iproute2)"
CLEANUPS+=("ip netns del $NS_A")
ip netns add "$NS_B"
CLEANUPS+=("ip netns del $NS_B")
ip link add "bda$$" netns "$NS_A" type veth peer name "bdb$$" netns "$NS_B"
NET="10.$((64 + $$ % 128)).77"
ip -n "$NS_A" addr add "$NET.1/24" dev "bda$$"
ip -n "$NS_B" addr add "$NET.2/24" dev "bdb$$"
ip -n "$NS_A" link set lo up
ip -n "$NS_B" link set lo up
ip -n "$NS_A" link set "bda$$" up
ip -n "$NS_B" link set "bdb$$" up

# The admin sockets live in a directory every user may enter (so that the refusal of another
# user is the socket's and the daemon's, not a parent directory's), with a copy of the binary that
# user may run.
PUB=$(mktemp -d /tmp/blkmirror-daemon.XXXXXX)
chmod 0755 "$PUB"
CLEANUPS+=("rm -rf $PUB")
cp "$BLKMIRROR" "$PUB/blkmirror"
chmod 0755 "$PUB/blkmirror"

"$BLKMIRROR" keygen "$TEST_TMP/key" > /dev/null
truncate -s 256M "$TEST_TMP/alpha0.img"
truncate -s 32M "$TEST_TMP/beta1.img"
# resource_files GAMMA WINDOW RATE: vol0 as every node has it (with node gamma when GAMMA is
# yes), in each node's directory.
resource_files() {
  local gamma=$1 window=$2 rate=$3
  for node in alpha beta gamma; do
    mkdir -p "$TEST_TMP/etc-$node"
    cp "$TEST_TMP/key" "$TEST_TMP/etc-$node/vol.key"
    {
      echo '[resource]'
      echo 'block-size = "64K"'
      echo "window = $window"
      echo 'quorum = 1'
      echo "resync-rate = \"$rate\""
      echo "key-file = \"$TEST_TMP/etc-$node/vol.key\""
      echo 'peer-timeout = "5s"'
      echo '[node.alpha]'
      echo 'role = "primary"'
      echo "disk = \"$TEST_TMP/alpha0.img\""
      echo "address = \"$NET.1:7100\""
      echo "export = [\"unix:$TEST_TMP/vol0.nbd\"]"
      echo '[node.beta]'
      echo 'role = "replica"'
      echo "disk = \"$TEST_TMP/beta0.img\""
      echo "address = \"$NET.2:7100\""
      if [ "$gamma" = yes ]; then
        echo '[node.gamma]'
        echo 'role = "replica"'
        echo "disk = \"$TEST_TMP/gamma0.img\""
        echo "address = \"$NET.2:7102\""
      fi
    } > "$TEST_TMP/etc-$node/vol0.toml"
  done
}
resource_files no 32 100M
for node in alpha beta; do
  cat > "$TEST_TMP/etc-$node/vol1.toml" <<EOF
[resource]
key-file = "$TEST_TMP/etc-$node/vol.key"
peer-timeout = "5s"
[node.beta]
role = "primary"
disk = "$TEST_TMP/beta1.img"
address = "$NET.2:7101"
export = ["unix:$TEST_TMP/vol1.nbd"]
[node.alpha]
role = "replica"
disk = "$TEST_TMP/alpha1.img"
address = "$NET.1:7101"
EOF
done
for node in alpha beta gamma; do
  printf 'node = "%s"\nadmin-socket = "%s"\n' "$node" "$PUB/$node/admin.sock" \
    > "$TEST_TMP/etc-$node/daemon.toml"
done

step "check-config on every node's directory"
for node in alpha beta gamma; do
  "$BLKMIRROR" --config-dir "$TEST_TMP/etc-$node" check-config > /dev/null 2> "$TEST_TMP/cc.err" \
    || fail "check-config $node: $(cat "$TEST_TMP/cc.err")"
done

# daemon NODE NS: starts NODE's daemon in namespace NS (only --config-dir); PID_<NODE>.
daemon() {
  local node=$1 ns=$2
  ip netns exec "$ns" "$BLKMIRROR" --config-dir "$TEST_TMP/etc-$node" daemon \
    >> "$TEST_TMP/daemon-$node.out" 2>> "$TEST_TMP/daemon-$node.log" &
  local pid=$!
  PIDS+=("$pid")
  printf -v "PID_$node" '%s' "$pid"
}
# st NODE [ARGS...]: `blkmirror status` against NODE's daemon (from its daemon.toml).
st() { local node=$1; shift; "$BLKMIRROR" --config-dir "$TEST_TMP/etc-$node" status "$@"; }
# wait_for NODE SECONDS JQ: until NODE's status (JSON) satisfies JQ, or fail with the status.
wait_for() {
  local node=$1 until=$((SECONDS + $2)) filter=$3
  while [ "$SECONDS" -lt "$until" ]; do
    if st "$node" --json > "$TEST_TMP/st.json" 2> /dev/null &&
      jq -e "$filter" "$TEST_TMP/st.json" > /dev/null 2>&1; then
      return 0
    fi
    sleep 0.3
  done
  fail "$node: not ($filter) after $2 s: $(st "$node" 2>&1 | head -n 20) (log: $(tail -n 5 "$TEST_TMP/daemon-$node.log"))"
}
resource() { echo ".resources[] | select(.name == \"$1\")"; }
in_sync() {  # in_sync NAME N: volume NAME runs with N peers, all in sync
  echo "([$(resource "$1") | select(.state == \"running\") | .status.peers[] | select(.state == \"in_sync\")] | length == $2)"
}

step "two daemons in two namespaces, configured only by files"
daemon beta "$NS_B"
daemon alpha "$NS_A"
wait_for alpha 60 "$(in_sync vol0 1) and ([$(resource vol1) | select(.state == \"running\")] | length == 1)"
wait_for beta 60 "$(in_sync vol1 1) and ([$(resource vol0) | select(.state == \"running\")] | length == 1)"
grep -q "^vol0 listening nbd unix:$TEST_TMP/vol0.nbd" "$TEST_TMP/daemon-alpha.out" \
  || fail "alpha did not announce vol0's export: $(cat "$TEST_TMP/daemon-alpha.out")"
grep -q "^vol1 listening tcp $NET.1:7101" "$TEST_TMP/daemon-alpha.out" \
  || fail "alpha did not announce vol1's replica address: $(cat "$TEST_TMP/daemon-alpha.out")"
grep -q '\[vol0\] ' "$TEST_TMP/daemon-alpha.log" || fail "alpha's log lines do not name their resource"

step "status through the admin socket: text, --json, NAME, --watch, an unknown NAME"
st alpha > "$TEST_TMP/status.txt" || fail "status"
expect_in "$TEST_TMP/status.txt" "node alpha"
expect_in "$TEST_TMP/status.txt" "vol0: primary, running"
expect_in "$TEST_TMP/status.txt" "vol1: replica, running"
expect_in "$TEST_TMP/status.txt" "$NET.2:7100 (tcp): in_sync"
st alpha vol1 --json > "$TEST_TMP/vol1.json" || fail "status vol1 --json"
jq -e '(.resources | length == 1) and .resources[0].status.target != null' "$TEST_TMP/vol1.json" > /dev/null \
  || fail "status vol1: $(cat "$TEST_TMP/vol1.json")"
expect_fail 2 "no resource 'nosuch' in the daemon (it runs: vol0, vol1)" \
  --config-dir "$TEST_TMP/etc-alpha" status nosuch
timeout 20 "$BLKMIRROR" --config-dir "$TEST_TMP/etc-alpha" status --watch --json 2> /dev/null \
  | head -n 2 > "$TEST_TMP/watch.out" || true
[ "$(jq -s 'map(.resources | length) | join(",")' "$TEST_TMP/watch.out")" = '"2,2"' ] \
  || fail "status --watch --json did not print two reports: $(cat "$TEST_TMP/watch.out")"
expect_fail 3 "cannot reach the daemon's admin socket $PUB/none.sock" \
  status --admin-socket "$PUB/none.sock"

step "the admin socket is 0600 and refuses other users"
[ "$(stat -c %a "$PUB/alpha/admin.sock")" = 600 ] \
  || fail "admin socket mode $(stat -c %a "$PUB/alpha/admin.sock")"
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$PUB/blkmirror" status --admin-socket "$PUB/alpha/admin.sock"; }
set +e; as_nobody > "$TEST_TMP/nobody.out" 2>&1; rc=$?; set -e
[ "$rc" = 3 ] && grep -q "Permission denied" "$TEST_TMP/nobody.out" \
  || fail "another user got through the socket's mode: exit $rc: $(cat "$TEST_TMP/nobody.out")"
chmod 0755 "$PUB/alpha"
chmod 0666 "$PUB/alpha/admin.sock"
set +e; as_nobody > "$TEST_TMP/nobody.out" 2>&1; rc=$?; set -e
chmod 0600 "$PUB/alpha/admin.sock"
[ "$rc" = 3 ] && grep -q "refused: uid 65534 is not root or the daemon's user" "$TEST_TMP/nobody.out" \
  || fail "the daemon answered another user: exit $rc: $(cat "$TEST_TMP/nobody.out")"
expect_in "$TEST_TMP/daemon-alpha.log" "refused uid 65534"

step "reloads under load: an NBD client writes to vol0 throughout"
"${client[@]}" "$TEST_TMP/vol0.nbd" loadwrites "$TEST_TMP/stop-load" "$TEST_TMP/acked.log" \
  > "$TEST_TMP/load.out" 2> "$TEST_TMP/load.log" &
PID_load=$!
PIDS+=("$PID_load")
for _ in $(seq 100); do grep -q writing "$TEST_TMP/load.out" && break; sleep 0.1; done
grep -q writing "$TEST_TMP/load.out" || fail "the NBD client did not start: $(cat "$TEST_TMP/load.log")"
sleep 1
reload() {  # reload NODE TEXT: SIGHUP, then until NODE's log says TEXT
  local node=$1 text=$2 pid
  pid=PID_$node
  kill -HUP "${!pid}"
  for _ in $(seq 100); do grep -qF -- "$text" "$TEST_TMP/daemon-$node.log" && return 0; sleep 0.1; done
  fail "$node after SIGHUP: no '$text' in its log: $(tail -n 5 "$TEST_TMP/daemon-$node.log")"
}

# How often each resource has started so far (a volume started before its replica listened
# failed once and started again): the reloads below are checked against these counts.
st alpha --json > "$TEST_TMP/st.json" || fail "status alpha"
A0=$(jq "$(resource vol0) | .starts" "$TEST_TMP/st.json")
st beta --json > "$TEST_TMP/st.json" || fail "status beta"
B0=$(jq "$(resource vol0) | .starts" "$TEST_TMP/st.json")

# Live: the resync rate and the log level. vol0 is not restarted.
resource_files no 32 50M
printf 'log-level = "debug"\n' >> "$TEST_TMP/etc-alpha/daemon.toml"
reload alpha "resync-rate '100M' → '50M' (live)"
expect_in "$TEST_TMP/daemon-alpha.log" "daemon: log level debug"
wait_for alpha 10 "$(resource vol0) | .starts == $A0 and .status.resync_rate == 52428800"

# A broken file: refused, every resource runs on.
echo 'bogus = 1' >> "$TEST_TMP/etc-alpha/vol0.toml"
reload alpha "reload refused"
expect_in "$TEST_TMP/daemon-alpha.log" "vol0.toml:17: node.beta.bogus: unknown key"
wait_for alpha 5 "([.resources[] | select(.state == \"running\")] | length == 2) and ($(resource vol0) | .starts == $A0)"

# What needs a restart is said, and the resource runs on as it was.
resource_files no 16 50M
reload alpha "window changed ('32' → '16'): needs a restart of the daemon"
wait_for alpha 5 "$(resource vol0) | .starts == $A0 and .restart_needed == [\"window\"]"

# A peer added: gamma's daemon starts, alpha restarts vol0 inside the daemon with both peers.
resource_files yes 32 50M
daemon gamma "$NS_B"
wait_for gamma 30 "$(resource vol0) | .state == \"running\""
reload alpha "restarting the volume in the daemon"
wait_for alpha 90 "$(in_sync vol0 2) and ($(resource vol0) | .starts == $A0 + 1)"
reload beta "reload done"
wait_for beta 5 "$(resource vol0) | .starts == $B0"

# A resource removed: alpha stops its vol1 replica.
rm "$TEST_TMP/etc-alpha/vol1.toml"
reload alpha "resource vol1: no longer in the configuration for this node: stopping it"
wait_for alpha 30 "(.resources | map(.name) == [\"vol0\"])"

sleep 1
touch "$TEST_TMP/stop-load"
wait_exit "$PID_load" || fail "the NBD client failed: $(tail -n 5 "$TEST_TMP/load.out" "$TEST_TMP/load.log")"
read -r _ acked _ reconnects < <(grep '^acked' "$TEST_TMP/load.out")
echo "ok   the client had $acked writes acked, reconnected $reconnects time(s)"
[ "$acked" -gt 0 ] && [ "$reconnects" -ge 1 ] || fail "load: $(cat "$TEST_TMP/load.out")"

step "every acked write is on every copy; the copies of vol0 are identical"
wait_for alpha 90 "$(in_sync vol0 2)"
for node in alpha beta gamma; do
  pid=PID_$node
  kill -TERM "${!pid}"
  wait_exit "${!pid}" || fail "daemon $node did not exit 0 on SIGTERM: $(tail -n 5 "$TEST_TMP/daemon-$node.log")"
done
[ ! -e "$PUB/alpha/admin.sock" ] || fail "alpha's admin socket outlived the daemon"
for img in alpha0 beta0 gamma0; do
  "${client[@]}" none checklog "$TEST_TMP/acked.log" "$TEST_TMP/$img.img" > "$TEST_TMP/check.out" \
    || fail "an acked write is missing from $img: $(cat "$TEST_TMP/check.out")"
done
same "$TEST_TMP/alpha0.img" "$TEST_TMP/beta0.img"
same "$TEST_TMP/alpha0.img" "$TEST_TMP/gamma0.img"
echo "PASS"
