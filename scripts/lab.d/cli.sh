# Shared by the lab suites that drive the blkmirror CLI in the guest (suite.d/60-, 70-): sourced
# after lib.sh. cli_setup NAME sets bin, tmp (a fresh /tmp/NAME.XXXXXX) and pids; then:
#   serve NAME IP PORT ARGS...   starts `blkmirror serve` on IP:PORT into $tmp/NAME.img, waits until
#                                it listens, sets SPID; output in $tmp/NAME.out, log in $tmp/NAME.log
#   push NAME ARGS...            `blkmirror push --json` from LAB_IP0; JSON in $tmp/NAME.json
#   push_held NAME BYTES ARGS... `blkmirror push --json --test-hold-at BYTES` in the background:
#                                it stops once BYTES are sent and acked, until `release_push`;
#                                sets PPID_PUSH
#                                and returns once the push holds (fails if it ends first)
#   release_push                 lets the held push go on (SIGUSR1)
#   volume NAME DISK TRANSPORT PEER ARGS...
#                                `blkmirror volume` on DISK exporting $tmp/NAME.sock (run dir $tmp/run); returns
#                                once it listens; sets VPID
#   j NAME JQ                    a field of $tmp/NAME.json
#   fail MESSAGE                 prints it and the tail of every log, exits 1
#   kill_pids                    stops every process started by serve
#   cli_cleanup                  kill_pids, then removes the test's files (the guest's /tmp is RAM: what one test
#                                leaves there is memory the next ones do not have)
# shellcheck shell=bash

cli_setup() {
    bin=$(lab_build_dir)/blkmirror
    [ -x "$bin" ] || { echo "$bin is missing: build it on the host first (scripts/build, BLKMIRROR_BUILD)"; exit 1; }
    tmp=$(mktemp -d "/tmp/$1.XXXXXX")
    [ -z "${TEST_LOGDIR:-}" ] || echo "$tmp" > "$TEST_LOGDIR/tmpdir"     # for lab_hang_report
    pids=()
}
kill_pids() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
cli_cleanup() { kill_pids; rm -rf "$tmp"; }
fail() { echo "FAIL: $*"; for f in "$tmp"/*.log; do echo "--- $f"; tail -n 15 "$f"; done; exit 1; }
serve() {
    "$bin" serve --listen "$2:$3" --target "$tmp/$1.img" --pool-size 64M "${@:4}" \
        > "$tmp/$1.out" 2> "$tmp/$1.log" &
    SPID=$!
    pids+=("$SPID")
    for _ in $(seq 100); do grep -q '^listening tcp' "$tmp/$1.out" 2>/dev/null && return 0; sleep 0.1; done
    fail "serve $1 did not start"
}
push() {
    local name=$1; shift
    "$bin" push --no-progress --json --bind "$LAB_IP0" "$@" > "$tmp/$name.json" 2> "$tmp/$name-push.log"
}
push_held() {
    local name=$1 bytes=$2; shift 2
    "$bin" push --no-progress --json --bind "$LAB_IP0" --test-hold-at "$bytes" "$@" \
        > "$tmp/$name.json" 2> "$tmp/$name-push.log" &
    PPID_PUSH=$!
    for _ in $(seq 1200); do
        grep -q "TEST HOLD: " "$tmp/$name-push.log" 2>/dev/null && return 0
        kill -0 "$PPID_PUSH" 2>/dev/null || fail "push $name ended before it reached $bytes bytes"
        sleep 0.05
    done
    fail "push $name did not reach $bytes bytes in 60 s"
}
release_push() {
    kill -USR1 "$PPID_PUSH" 2>/dev/null && return 0
    local rc=0
    wait "$PPID_PUSH" || rc=$?
    fail "the held push ended before its release (exit $rc)"
}
j() { jq -r "$2" "$tmp/$1.json"; }
volume() {
    local name=$1 disk=$2 transport=$3 peer=$4; shift 4
    "$bin" volume --disk "$disk" --name "$name" --peer "$peer" --transport "$transport" \
        --bind "$LAB_IP0" --export "unix:$tmp/$name.sock" --run-dir "$tmp/run" \
        --pool-size 32M "$@" > "$tmp/$name-volume.out" 2> "$tmp/$name-volume.log" &
    VPID=$!
    pids+=("$VPID")
    for _ in $(seq 300); do
        grep -q '^listening nbd' "$tmp/$name-volume.out" 2>/dev/null && return 0
        kill -0 "$VPID" 2>/dev/null || fail "volume $name exited early"
        sleep 0.1
    done
    fail "volume $name did not start"
}
