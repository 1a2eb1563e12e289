#!/bin/bash
# A randomized delta soak on two replicas: a source of mixed content (random bytes, text, runs of
# zeros; an odd size whose short tail may be zeros), then rounds of random damage to the replicas
# and new writes to the source, each mended a random way: push --checksum-skip with pieces of
# 4K to 64K, push --full, verify --repair of each replica, or (after new writes to the source
# only) a plain push; --compress lz4|zstd (auto or always), block size, window and ack level
# random too. After every round both replicas must
# equal the source, and after a push a resumed push must send nothing (the bitmaps and the
# source stamp say in sync). The bugs this shape of test found: a range of differing pieces
# across a block boundary left unsent, a zero tail of part of a sector sent as a malformed Zero,
# a verify session still holding a target that must grow (replicas are truncated now and then),
# verify --repair without --tls.
#
#   DELTA_SOAK_SECONDS  time budget for the rounds (default 40; 3 rounds at least)
#   DELTA_SOAK_SEED     random seed (default: the pid; printed, so a failure can be replayed:
#                       the content is drawn from it too)
source "$(dirname "$0")/lib.sh"
budget=${DELTA_SOAK_SECONDS:-40}
seed=${DELTA_SOAK_SEED:-$$}
RANDOM=$seed
echo "delta soak: budget ${budget}s, seed $seed"

drawn=0
# bytes N: N pseudo-random bytes drawn from the seed (AES-CTR of zeros).
bytes() {
  drawn=$((drawn + 1))
  # (The writers die of SIGPIPE when head has enough: not a failure.)
  { openssl enc -aes-128-ctr -nosalt -pass "pass:$seed.$drawn" -in /dev/zero 2> /dev/null || true; } \
    | head -c "$1"
}
# region N: N bytes of one kind: random, text (compresses) or zeros.
region() {
  case $((RANDOM % 3)) in
    0) bytes "$1" ;;
    1) { yes "blkmirror delta soak $seed $RANDOM" || true; } | head -c "$1" ;;
    2) head -c "$1" /dev/zero ;;
  esac
}
src=$TEST_TMP/src
size=$(((RANDOM % 24 + 2) * 262144 + RANDOM % 5000))
: > "$src"
while [ "$(stat -c %s "$src")" -lt "$size" ]; do
  region $(((RANDOM % 64 + 1) * 4096 + (RANDOM % 3 == 0 ? RANDOM % 4096 : 0))) >> "$src"
done
truncate -s "$size" "$src"
# Half the time, the last 100 KiB and the short tail are zeros.
[ $((RANDOM % 2)) = 0 ] && head -c 102400 /dev/zero | dd of="$src" bs=1 seek=$((size - 102400)) \
  conv=notrunc status=none
echo "source: $size bytes"

serve a "$TEST_TMP/rep-a"
serve b "$TEST_TMP/rep-b"
peers=(--peer "127.0.0.1:$PORT_a" --peer "127.0.0.1:$PORT_b")
push --source "$src" "${peers[@]}" --compress lz4 || fail "first push: $(tail -n 3 "$TEST_TMP/push.log")"
same "$src" "$TEST_TMP/rep-a"
same "$src" "$TEST_TMP/rep-b"

# change FILE: up to 5 ranges of FILE rewritten (random bytes or zeros, any alignment).
change() {
  local off len
  for _ in $(seq $((RANDOM % 5 + 1))); do
    off=$(((RANDOM * 32768 + RANDOM) % size))
    len=$((RANDOM % 30000 + 1))
    [ $((off + len)) -le "$size" ] || len=$((size - off))
    if [ $((RANDOM % 2)) = 0 ]; then bytes "$len"; else head -c "$len" /dev/zero; fi \
      | dd of="$1" bs=1M seek="$off" oflag=seek_bytes conv=notrunc status=none
  done
}
block_sizes=(64K 128K 256K 1M)
piece_sizes=(4K 8K 16K 64K)
codecs=(lz4 zstd zstd:1)
modes=(auto always)
acks=(sent received durable)
rounds=0
start=$SECONDS
while [ "$rounds" -lt 3 ] || [ $((SECONDS - start)) -lt "$budget" ]; do
  rounds=$((rounds + 1))
  bs=${block_sizes[RANDOM % 4]}
  common=(--source "$src" --block-size "$bs" --window $((RANDOM % 16 + 1)) --ack "${acks[RANDOM % 3]}")
  compress=""
  [ $((RANDOM % 2)) = 0 ] && compress=" --compress ${codecs[RANDOM % 3]} --compress-mode ${modes[RANDOM % 2]}"
  how=$((RANDOM % 4))
  case $how in
    0) what="push --checksum-skip --checksum-block-size ${piece_sizes[RANDOM % 4]}$compress" ;;
    1) what="push --full$compress" ;;
    2) what="push$compress" ;;
    3) what="verify --repair" ;;
  esac
  # Damage to a replica (outside blkmirror) is what a comparison finds: a plain push, which
  # trusts the bitmaps, gets only new writes to the source (its stamp changes: a full copy).
  if [ "$how" != 2 ]; then
    change "$TEST_TMP/rep-a"
    [ $((RANDOM % 2)) = 0 ] && change "$TEST_TMP/rep-b"
    # Now and then a replica lost its end: the write session after the comparison grows it.
    [ $((RANDOM % 6)) = 0 ] && truncate -s $((RANDOM * 32 % size)) "$TEST_TMP/rep-b"
  fi
  [ $((RANDOM % 2)) = 0 ] && change "$src"
  echo "round $rounds: $what, block $bs"
  if [ "$how" = 3 ]; then
    for p in "$PORT_a" "$PORT_b"; do
      rc=0
      "$BLKMIRROR" verify --repair --source "$src" --peer "127.0.0.1:$p" --block-size "$bs" \
        > "$TEST_TMP/verify.out" 2> "$TEST_TMP/verify.log" || rc=$?
      [ "$rc" -le 1 ] || fail "round $rounds (seed $seed): verify --repair of 127.0.0.1:$p exited $rc: $(tail -n 3 "$TEST_TMP/verify.log")"
    done
  else
    # shellcheck disable=SC2086
    push "${common[@]}" "${peers[@]}" ${what#push} \
      || fail "round $rounds (seed $seed): $what: $(tail -n 3 "$TEST_TMP/push.log")"
  fi
  for n in a b; do
    cmp -s "$src" "$TEST_TMP/rep-$n" \
      || fail "round $rounds (seed $seed): after $what, block $bs, replica $n differs: $(cmp "$src" "$TEST_TMP/rep-$n" | head -n 1)"
  done
  if [ "$how" != 3 ]; then
    push --source "$src" "${peers[@]}" --block-size "$bs" || fail "round $rounds: resumed push"
    [ "$(json .bytes_sent)" = 0 ] \
      || fail "round $rounds (seed $seed): a resumed push after $what sent $(json .bytes_sent) bytes"
  fi
done
echo "delta soak: $rounds rounds, seed $seed, every replica equal to the source after each"
echo PASS
