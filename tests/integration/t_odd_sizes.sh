#!/bin/bash
# Sources whose size is a multiple of neither the block size nor 4 KiB; small blocks; a source
# smaller than one block.
source "$(dirname "$0")/lib.sh"
check() {  # check NAME BYTES [PUSH ARGS...]
  local name=$1 bytes=$2; shift 2
  step "$name: $bytes bytes $*"
  random_file "$TEST_TMP/$name" "$bytes"
  serve "$name" "$TEST_TMP/$name.rep" --once
  local port_var="PORT_$name" pid_var="PID_$name"
  push --source "$TEST_TMP/$name" --peer "127.0.0.1:${!port_var}" "$@" || fail "push $name: $(cat "$TEST_TMP/push.log")"
  wait_exit "${!pid_var}" || fail "serve $name failed"
  same "$TEST_TMP/$name" "$TEST_TMP/$name.rep"
  [ "$(stat -c %s "$TEST_TMP/$name.rep")" = "$bytes" ] || fail "$name: replica size differs"
}
check odd $(((64 << 20) + 1234))
check tiny 5000
check one 1
check small_blocks $(((3 << 20) + 999)) --block-size 4K --window 64
check big_blocks $(((9 << 20) + 4097)) --block-size 4M --window 4
echo PASS
