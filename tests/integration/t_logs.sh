#!/bin/bash
# --log-format json: every line a command writes on stderr is one JSON object (time, level, msg,
# command; resource when given; peer when the message is about one; reason on warnings and
# errors), its final error included;
# the text format is unchanged.
source "$(dirname "$0")/lib.sh"
random_file "$TEST_TMP/src" $((4 << 20))

# all_json FILE: every line parses, with the fields every line has.
all_json() {
  local n=0 line
  while IFS= read -r line; do
    jq -e '.time and .level and (.msg | type == "string") and .command' <<< "$line" > /dev/null \
      || fail "not a JSON log line in $1: $line"
    n=$((n + 1))
  done < "$1"
  [ "$n" -gt 0 ] || fail "$1 is empty"
  echo "ok   $n JSON lines in $(basename "$1")"
}

step "an error the command ends with, as JSON"
expect_fail 3 "missing: no such file" --log-format json push --source "$TEST_TMP/missing" --peer 127.0.0.1:1
all_json "$TEST_TMP/err"
jq -s -e 'any(.[]; .level == "error" and .command == "push" and (.msg | test("missing: no such file"))
               and .reason == "no such file")' \
  "$TEST_TMP/err" > /dev/null || fail "no error line naming the source and its reason: $(cat "$TEST_TMP/err")"
# A peer that refuses: the reason is the innermost cause, parentheses kept whole.
expect_fail 3 "Connection refused" --log-format json push --source "$TEST_TMP/src" --peer 127.0.0.1:1
jq -s -e 'any(.[]; .level == "error" and (.reason | test("^Connection refused \\(is `blkmirror serve` listening there\\?\\)$")))' \
  "$TEST_TMP/err" > /dev/null || fail "no reason for the refused connection: $(cat "$TEST_TMP/err")"
jq -s -e 'any(.[]; (.msg | startswith("lost replica 127.0.0.1:1: ")) and .peer == "127.0.0.1:1")' \
  "$TEST_TMP/err" > /dev/null || fail "no 'lost replica' line carries its peer: $(cat "$TEST_TMP/err")"
jq -s -e 'all(.[]; (.level == "info") <= (has("reason") | not))' "$TEST_TMP/err" > /dev/null \
  || fail "an info line carries a reason: $(cat "$TEST_TMP/err")"

step "serve and push in JSON; the lines about one peer carry it"
"$BLKMIRROR" serve --log-format json --listen 127.0.0.1:0 --target "$TEST_TMP/rep" --pool-size 64M \
  > "$TEST_TMP/serve.out" 2> "$TEST_TMP/serve.json" &
PID_s=$!
PIDS+=("$PID_s")
for _ in $(seq 100); do grep -q '^listening' "$TEST_TMP/serve.out" && break; sleep 0.1; done
port=$(awk '/^listening tcp/ { split($3, a, ":"); print a[2]; exit }' "$TEST_TMP/serve.out")
[ -n "$port" ] || fail "serve did not listen: $(cat "$TEST_TMP/serve.json")"
"$BLKMIRROR" push --log-format json --source "$TEST_TMP/src" --peer "127.0.0.1:$port" --no-progress \
  > /dev/null 2> "$TEST_TMP/push.json" || fail "push: $(tail -n 3 "$TEST_TMP/push.json")"
kill -TERM "$PID_s"
wait_exit "$PID_s" || fail "serve did not exit cleanly"
all_json "$TEST_TMP/serve.json"
all_json "$TEST_TMP/push.json"
jq -s -e 'any(.[]; .peer and (.peer | test("^127\\.0\\.0\\.1:[0-9]+$")) and (.msg | test("write session")))' \
  "$TEST_TMP/serve.json" > /dev/null || fail "no line of serve names the primary as peer: $(cat "$TEST_TMP/serve.json")"
jq -s -e "any(.[]; .peer == \"127.0.0.1:$port\")" "$TEST_TMP/push.json" > /dev/null \
  || fail "no line of push names the replica as peer: $(cat "$TEST_TMP/push.json")"
same "$TEST_TMP/src" "$TEST_TMP/rep"

step "the resource a command was given is on every line"
mkdir -p "$TEST_TMP/etc"
printf '[node.a]\ndisk = "%s"\naddress = "127.0.0.1:7"\n[node.b]\ndisk = "/b"\naddress = "127.0.0.1:8"\n' \
  "$TEST_TMP/rep" > "$TEST_TMP/etc/vol0.toml"
expect_fail 2 "no [node.c] table" --config-dir "$TEST_TMP/etc" --log-format json serve --resource vol0 --node c
all_json "$TEST_TMP/err"
jq -s -e 'any(.[]; .resource == "vol0" and .level == "error" and (.msg | test("no \\[node.c\\] table")))' \
  "$TEST_TMP/err" > /dev/null || fail "the error lacks its resource: $(cat "$TEST_TMP/err")"

step "text stays text"
expect_fail 3 "blkmirror push: error: --source: $TEST_TMP/missing: no such file" \
  push --source "$TEST_TMP/missing" --peer 127.0.0.1:1
