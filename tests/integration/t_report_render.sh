#!/bin/bash
# bench/report's rendering, measuring nothing: from the data of the last run (docs/perf/data) into
# a scratch copy of docs/performance.md, the blocks between the markers are written, the text
# around them is kept, the three plots are PNGs, and a second rendering changes nothing. Also:
# a block whose markers are missing is an error that names them. A few seconds.
source "$(dirname "$0")/lib.sh"
repo=$(cd "$(dirname "$0")/../.." && pwd)
render=$repo/bench/report_render.py
/usr/bin/python3 -c 'import matplotlib' 2> /dev/null || fail "python3-matplotlib is missing (scripts/lib.sh installs it)"
[ -f "$repo/docs/perf/data/tcp/results" ] || fail "no docs/perf/data/tcp/results: bench/report's data is not in the tree"

step "render the last run's data"
cp "$repo/docs/performance.md" "$TEST_TMP/perf.md"
/usr/bin/python3 "$render" "$repo/docs/perf/data" "$TEST_TMP/perf.md" "$TEST_TMP/img" > "$TEST_TMP/render.log" \
  || fail "render: $(cat "$TEST_TMP/render.log")"
for png in throughput latency-cdf sweep; do
  [ "$(head -c 8 "$TEST_TMP/img/$png.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] \
    || fail "$png.png is not a PNG"
done
for name in summary throughput tcp tcp-latency dpdk nbd sweep; do
  sed -n "/<!-- report:$name begin -->/,/<!-- report:$name end -->/p" "$TEST_TMP/perf.md" \
    | grep -q 'written by bench/report' || fail "the $name block was not written"
done
grep -q '!\[Push throughput against block size and window\](img/sweep.png)' "$TEST_TMP/perf.md" \
  || fail "the sweep block does not show its plot, relative to the document"
# Outside the blocks, the document is the one it was.
strip() { sed '/<!-- report:[a-z-]* begin -->/,/<!-- report:[a-z-]* end -->/d' "$1"; }
diff <(strip "$repo/docs/performance.md") <(strip "$TEST_TMP/perf.md") > /dev/null \
  || fail "text outside the blocks changed: $(diff <(strip "$repo/docs/performance.md") <(strip "$TEST_TMP/perf.md") | head)"

step "a second rendering changes nothing"
cp "$TEST_TMP/perf.md" "$TEST_TMP/perf.1.md"
/usr/bin/python3 "$render" "$repo/docs/perf/data" "$TEST_TMP/perf.md" "$TEST_TMP/img" > /dev/null
cmp -s "$TEST_TMP/perf.1.md" "$TEST_TMP/perf.md" || fail "the second rendering differs"

step "missing markers are named"
grep -v 'report:sweep' "$repo/docs/performance.md" > "$TEST_TMP/nomarker.md"
if /usr/bin/python3 "$render" "$repo/docs/perf/data" "$TEST_TMP/nomarker.md" "$TEST_TMP/img" 2> "$TEST_TMP/err.log"; then
  fail "rendered into a document without the sweep markers"
fi
grep -q "no '<!-- report:sweep begin -->'" "$TEST_TMP/err.log" || fail "error does not name the markers: $(cat "$TEST_TMP/err.log")"
echo PASS
