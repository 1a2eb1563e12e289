#!/bin/bash
# No allocation per block (docs/design.md), checked on the real processes: their calls to malloc,
# calloc and realloc, counted by an LD_PRELOAD library (malloc_count.cc), do not grow with the
# data they move.
#  1. push and serve over TCP, plain and with --compress lz4 (a text source, so blocks go
#     compressed): a 64 MiB push makes as many calls as a 16 MiB one (768 blocks of 64 KiB more),
#     give or take a few, on both sides.
#  2. The volume under NBD writes: two 10-second fio runs of 4 KiB writes, rate-limited to 200 and
#     2000 a second, so that both see as many once-a-second status updates (which allocate; one
#     more in either is allowed for): the faster run's extra writes cost less than one call in
#     32. (A std::deque in the NBD frontend's queues cost 0.15 a write: 2700 calls here.)
#  3. TLS, printed and not checked: OpenSSL's record layer allocates per record (design.md).
source "$(dirname "$0")/lib.sh"
[ -n "${MALLOC_COUNT_LIB:-}" ] && [ -f "$MALLOC_COUNT_LIB" ] \
  || skip "MALLOC_COUNT_LIB (the build's tests/libmalloc_count.so) is not set: ctest sets it"
command -v fio > /dev/null || fail "fio is missing (scripts/lib.sh installs it)"
# `counted ARGS...` is blkmirror ARGS with its calls counted into $COUNT_TO.
counted=$TEST_TMP/counted
cat > "$counted" << EOF
#!/bin/sh
exec env LD_PRELOAD="$MALLOC_COUNT_LIB" MALLOC_COUNT_OUT="\$COUNT_TO" "$BLKMIRROR" "\$@"
EOF
chmod +x "$counted"
calls() { tail -n 1 "$TEST_TMP/$1.calls"; }

# pushed NAME MIB KIND: one push of a MIB MiB source (KIND: random or text) to a new replica,
# 64 KiB blocks, with the arguments in the arrays push_args and serve_args; both processes are
# counted (calls NAME.push, NAME.serve). No --json: its latency histogram grows with the blocks
# (up to its fixed number of buckets) once, at the end.
pushed() {
  local name=$1 mib=$2 kind=$3
  local src=$TEST_TMP/$name.src rep=$TEST_TMP/$name.rep
  if [ "$kind" = text ]; then
    head -c $((mib * 3 << 18)) /dev/urandom | base64 -w 100 > "$src"  # 4/3 of 3/4 MiB, and newlines
    truncate -s $((mib << 20)) "$src"
  else
    random_file "$src" $((mib << 20))
  fi
  COUNT_TO=$TEST_TMP/$name.serve.calls BLKMIRROR=$counted serve "$name" "$rep" "${serve_args[@]}"
  local port=PORT_$name pid=PID_$name
  COUNT_TO=$TEST_TMP/$name.push.calls "$counted" push --no-progress --source "$src" \
    --peer "127.0.0.1:${!port}" --block-size 64K "${push_args[@]}" > "$TEST_TMP/$name.out" \
    2> "$TEST_TMP/$name.log" || fail "push $name: $(tail -n 3 "$TEST_TMP/$name.log")"
  kill -TERM "${!pid}"
  wait_exit "${!pid}" || fail "serve $name did not exit cleanly"
  same "$src" "$rep"
}
# flat WHAT SMALL LARGE BLOCKS: LARGE, for BLOCKS blocks more than SMALL, is no more than 32 over.
flat() {
  local what=$1 small=$2 large=$3 blocks=$4
  [ $((large - small)) -le 32 ] \
    || fail "$what allocates per block: $small calls for the small push, $large for $blocks blocks more"
  echo "ok   $what: $small and $large calls ($blocks blocks more)"
}

step "push and serve: as many calls for 64 MiB as for 16 MiB"
serve_args=()
for mode in plain lz4; do
  push_args=(); kind=random
  [ "$mode" = lz4 ] && { push_args=(--compress lz4 --compress-mode always); kind=text; }
  pushed "${mode}16" 16 "$kind"
  pushed "${mode}64" 64 "$kind"
  flat "push ($mode)" "$(calls "${mode}16.push")" "$(calls "${mode}64.push")" 768
  flat "serve ($mode)" "$(calls "${mode}16.serve")" "$(calls "${mode}64.serve")" 768
done

step "the volume: extra NBD writes at the same status rate cost less than one call in 32"
truncate -s $((256 << 20)) "$TEST_TMP/disk"
serve vr "$TEST_TMP/vol.rep"
volume warm "$TEST_TMP/disk" --peer "127.0.0.1:$PORT_vr"
wait_in_sync warm
kill -TERM "$PID_warm"
wait_exit "$PID_warm" || fail "volume warm did not exit cleanly"
declare -A writes
for rate in 200 2000; do
  COUNT_TO=$TEST_TMP/vol$rate.calls BLKMIRROR=$counted volume "v$rate" "$TEST_TMP/disk" \
    --peer "127.0.0.1:$PORT_vr"
  uri=URI_v$rate pid=PID_v$rate
  wait_in_sync "v$rate"
  fio --name=w --ioengine=nbd --uri="${!uri}" --rw=randwrite --bs=4k --iodepth=8 --size=256M \
    --time_based --runtime=10 --rate_iops="$rate" --output-format=json \
    > "$TEST_TMP/fio$rate.json" 2> "$TEST_TMP/fio$rate.log" || fail "fio: $(cat "$TEST_TMP/fio$rate.log")"
  writes[$rate]=$(sed -n '/^{/,$p' "$TEST_TMP/fio$rate.json" | jq '.jobs[0].write.total_ios')  # after the engine's line
  kill -TERM "${!pid}"
  wait_exit "${!pid}" || fail "volume v$rate did not exit cleanly"
done
slow=$(calls vol200) fast=$(calls vol2000)
more=$((writes[2000] - writes[200]))
[ "$more" -ge 10000 ] || fail "fio wrote only ${writes[2000]} times at 2000 a second (and ${writes[200]} at 200)"
# Slack: the two volumes' lives may differ by one status update (about 260 calls here).
[ $((fast - slow)) -le $((512 + more / 32)) ] \
  || fail "the volume allocates per write: $slow calls for ${writes[200]} writes, $fast for ${writes[2000]}"
echo "ok   volume: $slow calls for ${writes[200]} writes, $fast for ${writes[2000]}"

step "TLS (printed, not checked): OpenSSL's own calls per 16 KiB record"
"$BLKMIRROR" keygen "$TEST_TMP/key" > /dev/null
push_args=(--tls --key-file "$TEST_TMP/key") serve_args=(--tls --key-file "$TEST_TMP/key")
pushed tls16 16 random
pushed tls64 64 random
records=$(((64 - 16) << 6))
per_record() { awk -v a="$(calls "$1")" -v b="$(calls "$2")" -v r="$records" 'BEGIN { printf "%.1f", (b - a) / r }'; }
echo "TLS: $(per_record tls16.push tls64.push) calls per record sending," \
  "$(per_record tls16.serve tls64.serve) receiving (in libssl's SSL_write and SSL_read)"
echo PASS
