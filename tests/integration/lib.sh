# Helpers for the integration tests: real blkmirror processes on 127.0.0.1.
# Each test sources this file; ctest provides BLKMIRROR (the binary) and TEST_TMP (a scratch
# directory). Exit 0 = pass, 77 = skipped (ctest reports it as skipped, and we say why), else fail.
set -euo pipefail

BLKMIRROR=${BLKMIRROR:?BLKMIRROR must name the blkmirror binary}
TEST_TMP=${TEST_TMP:-$(mktemp -d)}
rm -rf "$TEST_TMP" && mkdir -p "$TEST_TMP"
PIDS=()
CLEANUPS=()

cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for c in "${CLEANUPS[@]}"; do eval "$c" || true; done
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
    echo "--- logs in $TEST_TMP:"
    for f in "$TEST_TMP"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }; done
  fi
  exit "$rc"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIPPED: $*" >&2; exit 77; }
step() { echo "--- $*"; }

# random_file PATH BYTES
random_file() { head -c "$2" /dev/urandom > "$1"; }

# serve NAME TARGET [ARGS...]: starts a replica on a free port; sets PORT_<NAME> and PID_<NAME>.
serve() {
  local name=$1 target=$2; shift 2
  local out=$TEST_TMP/serve-$name.out
  "$BLKMIRROR" serve --listen 127.0.0.1:0 --target "$target" --pool-size 64M "$@" \
    > "$out" 2> "$TEST_TMP/serve-$name.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do
    if grep -q '^listening ' "$out" 2>/dev/null; then
      local addr
      addr=$(awk '/^listening /{print $3; exit}' "$out")
      printf -v "PORT_$name" '%s' "${addr##*:}"
      printf -v "PID_$name" '%s' "$pid"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || fail "serve $name exited early: $(cat "$TEST_TMP/serve-$name.log")"
    sleep 0.1
  done
  fail "serve $name did not start listening"
}

# volume NAME DISK [ARGS...]: starts `blkmirror volume` on DISK, exporting NBD on the unix socket
# $TEST_TMP/NAME.sock; sets SOCK_<NAME>, URI_<NAME> (nbd+unix URI) and PID_<NAME>. Its status
# file goes to $TEST_TMP/run.
volume() {
  local name=$1 disk=$2; shift 2
  local out=$TEST_TMP/volume-$name.out
  : > "$out"
  "$BLKMIRROR" volume --disk "$disk" --name "$name" --export "unix:$TEST_TMP/$name.sock" \
    --run-dir "$TEST_TMP/run" --pool-size 32M "$@" > "$out" 2> "$TEST_TMP/volume-$name.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 200); do
    if grep -q '^listening nbd' "$out" 2>/dev/null; then
      printf -v "SOCK_$name" '%s' "$TEST_TMP/$name.sock"
      printf -v "URI_$name" '%s' "nbd+unix:///?socket=$TEST_TMP/$name.sock"
      printf -v "PID_$name" '%s' "$pid"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || fail "volume $name exited early: $(tail -n 3 "$TEST_TMP/volume-$name.log")"
    sleep 0.1
  done
  fail "volume $name did not start listening"
}

# volume_status NAME JQ: a field of the running volume's status (blkmirror status --volume).
volume_status() {
  "$BLKMIRROR" status --volume "$1" --run-dir "$TEST_TMP/run" --json | jq -r "$2"
}

# wait_in_sync NAME [SECONDS]: until every peer of volume NAME is in sync (status file, updated
# once a second), or fail naming their states. Only a status written after the call counts: one
# written before it may predate what the caller just did (a replica killed, a link cut).
wait_in_sync() {
  local until=$((SECONDS + ${2:-60})) states="" asked=$TEST_TMP/.wait-in-sync
  touch "$asked"
  while [ "$SECONDS" -lt "$until" ]; do
    [ "$TEST_TMP/run/$1.json" -nt "$asked" ] || { sleep 0.1; continue; }
    states=$(volume_status "$1" '[.peers[].state] | join(",")' 2>/dev/null || true)
    if [ -n "$states" ] && [ "$(echo "$states" | tr ',' '\n' | grep -vc '^in_sync$')" = 0 ]; then
      return 0
    fi
    sleep 0.3
  done
  fail "volume $1 not in sync after ${2:-60} s: peers $states"
}

# push ARGS...: runs blkmirror push with --json, stdout into $TEST_TMP/push.json; returns its rc.
push() {
  local rc=0
  "$BLKMIRROR" push --no-progress --json "$@" > "$TEST_TMP/push.json" 2> "$TEST_TMP/push.log" || rc=$?
  return $rc
}

json() { jq -r "$1" "$TEST_TMP/push.json"; }

# push_retrying SECONDS ARGS...: runs push until it succeeds (0) or SECONDS have passed (1), for a
# replica expected to take a primary again soon (a slot or a descriptor freeing up).
push_retrying() {
  local until=$((SECONDS + $1)); shift
  while :; do
    push "$@" && return 0
    [ "$SECONDS" -lt "$until" ] || return 1
    sleep 0.2
  done
}

# same FILE1 FILE2 [BYTES]: byte-for-byte compare (of the first BYTES bytes if given).
same() {
  if [ $# -eq 3 ]; then
    cmp -n "$3" "$1" "$2" || fail "$2 differs from $1 in the first $3 bytes"
  else
    cmp "$1" "$2" || fail "$2 differs from $1"
  fi
}

# wait_exit PID: waits for a process to end (up to 30 s) and returns its exit status.
wait_exit() {
  local pid=$1
  for _ in $(seq 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      local rc=0
      wait "$pid" || rc=$?
      return $rc
    fi
    sleep 0.1
  done
  fail "process $pid did not exit"
}

# expect_fail RC TEXT ARGS...: `blkmirror ARGS` exits RC with TEXT on stderr (kept in
# $TEST_TMP/err, stdout in $TEST_TMP/out).
expect_fail() {
  local want=$1 text=$2; shift 2
  set +e; "$BLKMIRROR" "$@" > "$TEST_TMP/out" 2> "$TEST_TMP/err"; local rc=$?; set -e
  [ "$rc" = "$want" ] || fail "blkmirror $*: exit $rc, expected $want ($(cat "$TEST_TMP/err"))"
  grep -qF -- "$text" "$TEST_TMP/err" || fail "blkmirror $*: stderr lacks '$text': $(cat "$TEST_TMP/err")"
  echo "ok   $* -> $rc: $(grep -F -- "$text" "$TEST_TMP/err" | head -n 1)"
}

expect_in() {  # expect_in FILE TEXT
  grep -qF -- "$2" "$1" || fail "expected '$2' in $1: $(tail -n 5 "$1")"
}

# ---- network namespaces: real links to break ------------------------------------------------

NET_A=$((64 + $$ % 128))  # second octet, per test process, so parallel runs do not collide

# netns_peer NAME N [RATE]: a network namespace with one veth link to the host: the host end
# 10.NET_A.N.1, the namespace end 10.NET_A.N.2; RATE (e.g. 400mbit) shapes the host end with tbf
# (the direction blocks flow in). Sets NS_<NAME>, IF_<NAME> (host end), IP_<NAME>.
netns_peer() {
  local name=$1 n=$2 rate=${3:-}
  local ns="bm$$-$name" hif="bh$$n$n" rif="br$$n$n"
  ip netns add "$ns" 2>/dev/null || skip "cannot create network namespaces (needs root and iproute2)"
  CLEANUPS+=("ip netns del $ns" "ip link del $hif 2>/dev/null")
  ip link add "$hif" type veth peer name "$rif"
  ip link set "$rif" netns "$ns"
  ip addr add "10.$NET_A.$n.1/24" dev "$hif"
  ip link set "$hif" up
  ip -n "$ns" addr add "10.$NET_A.$n.2/24" dev "$rif"
  ip -n "$ns" link set "$rif" up
  ip -n "$ns" link set lo up
  if [ -n "$rate" ]; then
    tc qdisc add dev "$hif" root tbf rate "$rate" burst 256kb latency 200ms
  fi
  printf -v "NS_$name" '%s' "$ns"
  printf -v "IF_$name" '%s' "$hif"
  printf -v "IP_$name" '%s' "10.$NET_A.$n.2"
}

# serve_in NS NAME TARGET IP [ARGS...]: like serve, inside network namespace NS, on IP:7000.
serve_in() {
  local ns=$1 name=$2 target=$3 ip=$4; shift 4
  local out=$TEST_TMP/serve-$name.out
  : > "$out"
  ip netns exec "$ns" "$BLKMIRROR" serve --listen "$ip:7000" --target "$target" --pool-size 64M \
    "$@" >> "$out" 2>> "$TEST_TMP/serve-$name.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do
    if grep -q '^listening ' "$out" 2>/dev/null; then
      printf -v "PID_$name" '%s' "$pid"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || fail "serve $name exited early: $(tail -n 3 "$TEST_TMP/serve-$name.log")"
    sleep 0.1
  done
  fail "serve $name did not start listening"
}

# push_bg [ARGS...]: push in the background (JSON in $TEST_TMP/push.json); sets PUSH_PID.
push_bg() {
  "$BLKMIRROR" push --no-progress --json "$@" > "$TEST_TMP/push.json" 2> "$TEST_TMP/push.log" &
  PUSH_PID=$!
  PIDS+=("$PUSH_PID")
}

# push_held BYTES [ARGS...]: push in the background with --test-hold-at BYTES: it stops once
# BYTES are submitted (and waits for their acks), until release_push. Returns once it holds (fails if the push ended first), so
# what a test breaks next happens in the middle of the push, whatever the machine's speed. Sets
# PUSH_PID.
push_held() {
  local bytes=$1; shift
  "$BLKMIRROR" push --no-progress --json --test-hold-at "$bytes" "$@" > "$TEST_TMP/push.json" \
    2> "$TEST_TMP/push.log" &
  PUSH_PID=$!
  PIDS+=("$PUSH_PID")
  for _ in $(seq 1200); do
    grep -q "TEST HOLD: " "$TEST_TMP/push.log" 2>/dev/null && return 0
    kill -0 "$PUSH_PID" 2>/dev/null || fail "the push ended before it reached $bytes bytes: $(tail -n 3 "$TEST_TMP/push.log")"
    sleep 0.05
  done
  fail "the push did not reach $bytes bytes in 60 s"
}
release_push() {
  kill -USR1 "$PUSH_PID" 2>/dev/null && return 0
  local rc=0
  wait "$PUSH_PID" || rc=$?
  fail "the held push ended before its release (exit $rc)"
}

# dirty_covers_diffs: every range `verify` found differing lies within the blocks the primary's
# bitmap still has dirty for that replica (what was acked durable is on the replica).
dirty_covers_diffs() {  # dirty_covers_diffs SOURCE PEER [KEYARGS...]
  local src=$1 peer=$2; shift 2
  "$BLKMIRROR" status --json --source "$src" > "$TEST_TMP/status.json" || fail "status failed"
  local rc=0
  "$BLKMIRROR" verify --json --source "$src" --peer "$peer" "$@" > "$TEST_TMP/verify.json" 2>> "$TEST_TMP/verify.log" || rc=$?
  [ "$rc" -le 1 ] || fail "verify failed: $(tail -n 2 "$TEST_TMP/verify.log")"
  python3 - "$TEST_TMP/status.json" "$TEST_TMP/verify.json" <<'PY' || fail "a durably acked block is missing on the replica"
import json, sys
status = json.load(open(sys.argv[1])); verify = json.load(open(sys.argv[2]))
dirty = []
for r in status["replicas"]:
    dirty += [(d["offset"], d["offset"] + d["length"]) for d in r["dirty_ranges"]]
bad = [d for d in verify["diffs"]
       if not any(a <= d["offset"] and d["offset"] + d["length"] <= b for a, b in dirty)]
print(f"differing ranges: {len(verify['diffs'])}, all within dirty blocks: {not bad}")
sys.exit(1 if bad else 0)
PY
}
