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

# push ARGS...: runs blkmirror push with --json, stdout into $TEST_TMP/push.json; returns its rc.
push() {
  local rc=0
  "$BLKMIRROR" push --no-progress --json "$@" > "$TEST_TMP/push.json" 2> "$TEST_TMP/push.log" || rc=$?
  return $rc
}

json() { jq -r "$1" "$TEST_TMP/push.json"; }

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

expect_in() {  # expect_in FILE TEXT
  grep -qF -- "$2" "$1" || fail "expected '$2' in $1: $(tail -n 5 "$1")"
}
