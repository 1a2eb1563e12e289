#!/bin/bash
# What the CLI prints besides its results: `--version` (version, git commit, transports), and
# the progress line of push and verify, which is shown by default only when stderr is a
# terminal (a pty made by script(1)), never with --no-progress, never on a pipe or file, and
# always with --progress.
source "$(dirname "$0")/lib.sh"

step "--version"
"$BLKMIRROR" --version > "$TEST_TMP/version.out" || fail "--version exited $?"
cat "$TEST_TMP/version.out"
grep -qE '^blkmirror [0-9]+\.[0-9]+\.[0-9]+ \(commit [0-9a-f]{7,}(-dirty)?\)$' "$TEST_TMP/version.out" \
  || fail "first line: $(head -n 1 "$TEST_TMP/version.out")"
if commit=$(git -C "$(dirname "$0")" rev-parse --short=12 HEAD 2>/dev/null); then
  expect_in "$TEST_TMP/version.out" "commit $commit"
fi
grep -qE '^transports: .*tcp' "$TEST_TMP/version.out" || fail "no transports line with tcp"

random_file "$TEST_TMP/src" $((8 << 20))
serve r "$TEST_TMP/rep"
common=(--source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --block-size 64K --meta-dir "$TEST_TMP/meta")

# on_pty OUT CMD...: runs CMD with stdin, stdout and stderr on a fresh pty; the terminal's
# output goes to OUT (stdout is redirected to OUT.stdout inside, so OUT holds stderr).
on_pty() {
  local out=$1; shift
  local cmd
  printf -v cmd '%q ' "$@"
  script -qec "$cmd > $out.stdout" /dev/null > "$out" 2>&1 < /dev/null || return $?
}
progress_line='(push|verify): .* / .* \([0-9.]+%\) .* ETA'

step "push on a terminal shows progress by default"
on_pty "$TEST_TMP/p1" "$BLKMIRROR" push --full "${common[@]}" || fail "push on a pty: $(tail -n 3 "$TEST_TMP/p1")"
grep -aqE "$progress_line" "$TEST_TMP/p1" || fail "no progress line on a terminal: $(tail -c 300 "$TEST_TMP/p1")"
step "verify on a terminal shows progress by default"
on_pty "$TEST_TMP/v1" "$BLKMIRROR" verify --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --block-size 64K \
  || fail "verify on a pty: $(tail -n 3 "$TEST_TMP/v1")"
grep -aqE "$progress_line" "$TEST_TMP/v1" || fail "no verify progress line on a terminal"

step "--no-progress on a terminal: none"
on_pty "$TEST_TMP/p2" "$BLKMIRROR" push --full --no-progress "${common[@]}" || fail "push --no-progress"
grep -aqE "$progress_line" "$TEST_TMP/p2" && fail "progress shown despite --no-progress"
on_pty "$TEST_TMP/v2" "$BLKMIRROR" verify --no-progress --source "$TEST_TMP/src" --peer "127.0.0.1:$PORT_r" --block-size 64K \
  || fail "verify --no-progress"
grep -aqE "$progress_line" "$TEST_TMP/v2" && fail "verify progress shown despite --no-progress"

step "stderr not a terminal: none by default, lines with --progress"
"$BLKMIRROR" push --full "${common[@]}" > /dev/null 2> "$TEST_TMP/p3" || fail "push to a file"
grep -aqE "$progress_line" "$TEST_TMP/p3" && fail "progress written to a file without --progress"
"$BLKMIRROR" push --full --progress "${common[@]}" > /dev/null 2> "$TEST_TMP/p4" || fail "push --progress"
grep -aqE "$progress_line" "$TEST_TMP/p4" || fail "--progress printed no line"
"$BLKMIRROR" push --progress --no-progress "${common[@]}" > /dev/null 2> "$TEST_TMP/p5" && fail "--progress with --no-progress accepted"
expect_in "$TEST_TMP/p5" "excludes"
echo PASS
