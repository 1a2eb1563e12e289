#!/bin/bash
# The Prometheus endpoints of serve and volume (--metrics), for real: scrapes that promtool
# accepts, and a real Prometheus server (Debian's) scraping both during NBD writes, answering a
# query for the bytes the replica acknowledged and the bytes it wrote.
source "$(dirname "$0")/lib.sh"
for tool in promtool prometheus nbdcopy; do
  command -v "$tool" > /dev/null || fail "$tool is missing (scripts/lib.sh installs it)"
done
get() {  # get URL: the body on stdout
  /usr/bin/python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"
}
metrics_of() {  # metrics_of OUT: the "listening metrics HOST:PORT" address in a command's output
  for _ in $(seq 100); do
    local a
    a=$(awk '/^listening metrics / { print $3; exit }' "$1" 2>/dev/null)
    [ -n "$a" ] && { echo "$a"; return 0; }
    sleep 0.1
  done
  fail "no 'listening metrics' line in $1"
}

step "serve --metrics: promtool accepts a scrape"
serve r "$TEST_TMP/rep" --metrics 127.0.0.1:0
M_r=$(metrics_of "$TEST_TMP/serve-r.out")
get "http://$M_r/metrics" > "$TEST_TMP/serve.prom" || fail "cannot scrape serve at $M_r"
promtool check metrics < "$TEST_TMP/serve.prom" > "$TEST_TMP/promtool.out" 2>&1 \
  || fail "promtool check metrics (serve): $(cat "$TEST_TMP/promtool.out")"
expect_in "$TEST_TMP/serve.prom" "blkmirror_replica_bytes_written_total{target=\"$TEST_TMP/rep\"} 0"
expect_in "$TEST_TMP/serve.prom" "blkmirror_build_info{version="
echo "ok   $(grep -c '^blkmirror_' "$TEST_TMP/serve.prom") samples from serve"

step "volume --metrics, scraped by a real Prometheus server during writes"
SIZE=$((32 << 20))
truncate -s "$SIZE" "$TEST_TMP/disk"
volume v "$TEST_TMP/disk" --peer "127.0.0.1:$PORT_r" --metrics 127.0.0.1:0
M_v=$(metrics_of "$TEST_TMP/volume-v.out")
wait_in_sync v
PP=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$TEST_TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: blkmirror
    static_configs:
      - targets: ["$M_v", "$M_r"]
EOF
promtool check config "$TEST_TMP/prometheus.yml" > "$TEST_TMP/promtool.out" 2>&1 \
  || fail "promtool check config: $(cat "$TEST_TMP/promtool.out")"
prometheus --config.file="$TEST_TMP/prometheus.yml" --storage.tsdb.path="$TEST_TMP/prom" \
  --web.listen-address="127.0.0.1:$PP" > "$TEST_TMP/prometheus.log" 2>&1 &
PIDS+=("$!")
random_file "$TEST_TMP/w" $((16 << 20))
nbdcopy "$TEST_TMP/w" "$URI_v" || fail "nbdcopy into the volume"
wait_in_sync v
get "http://$M_v/metrics" > "$TEST_TMP/volume.prom" || fail "cannot scrape the volume at $M_v"
promtool check metrics < "$TEST_TMP/volume.prom" > "$TEST_TMP/promtool.out" 2>&1 \
  || fail "promtool check metrics (volume): $(cat "$TEST_TMP/promtool.out")"
expect_in "$TEST_TMP/volume.prom" "blkmirror_peer_state{volume=\"v\",peer=\"127.0.0.1:$PORT_r\",state=\"in_sync\"} 1"
expect_in "$TEST_TMP/volume.prom" "blkmirror_peer_in_flight_bytes{volume=\"v\",peer=\"127.0.0.1:$PORT_r\"} 0"
# The replica's ack latency histogram counts every block it acked (16 MiB of writes at least).
acks=$(sed -n "s/^blkmirror_peer_ack_latency_seconds_count{volume=\"v\",peer=\"127.0.0.1:$PORT_r\"} //p" "$TEST_TMP/volume.prom")
blocks=$(sed -n "s/^blkmirror_peer_acked_blocks_total{volume=\"v\",peer=\"127.0.0.1:$PORT_r\"} //p" "$TEST_TMP/volume.prom")
[ -n "$acks" ] && [ "$acks" = "$blocks" ] && [ "$acks" -gt 0 ] \
  || fail "blkmirror_peer_ack_latency_seconds_count is '$acks', acked blocks '$blocks'"

# query Q: the first sample's value ("" until Prometheus has one).
query() {
  get "http://127.0.0.1:$PP/api/v1/query?query=$1" 2>/dev/null \
    | jq -r 'if .status == "success" and (.data.result | length) > 0 then .data.result[0].value[1] else "" end'
}
acked="" written=""
for _ in $(seq 150); do
  acked=$(query 'blkmirror_peer_acked_bytes_total')
  written=$(query 'blkmirror_replica_bytes_written_total')
  if [ -n "$acked" ] && [ -n "$written" ] && [ "${acked%.*}" -ge $((16 << 20)) ] \
     && [ "${written%.*}" -ge $((16 << 20)) ]; then
    break
  fi
  sleep 0.2
done
[ -n "$acked" ] && [ "${acked%.*}" -ge $((16 << 20)) ] \
  || fail "Prometheus: blkmirror_peer_acked_bytes_total is '$acked', expected 16 MiB or more ($(tail -n 3 "$TEST_TMP/prometheus.log"))"
[ -n "$written" ] && [ "${written%.*}" -ge $((16 << 20)) ] \
  || fail "Prometheus: blkmirror_replica_bytes_written_total is '$written', expected 16 MiB or more"
echo "ok   Prometheus answers: acked bytes $acked, replica wrote $written"
# The volume's own counters, a refresh (1 s) after the writes.
sleep 1.2
get "http://$M_v/metrics" > "$TEST_TMP/volume2.prom" || fail "cannot scrape the volume at $M_v"
w=$(awk '/^blkmirror_volume_written_bytes_total/ { print $2 }' "$TEST_TMP/volume2.prom")
[ "${w%.*}" -ge $((16 << 20)) ] || fail "blkmirror_volume_written_bytes_total is '$w' after 16 MiB of writes"
# The write latency histogram counts every write, its +Inf bucket all of them.
writes=$(awk '/^blkmirror_volume_writes_total/ { print $2 }' "$TEST_TMP/volume2.prom")
[ "$writes" -gt 0 ] || fail "no writes counted"
grep -qF "blkmirror_volume_write_latency_seconds_count{volume=\"v\"} $writes" "$TEST_TMP/volume2.prom" \
  || fail "the write latency histogram does not count the $writes writes: $(grep write_latency "$TEST_TMP/volume2.prom")"
grep -qF "blkmirror_volume_write_latency_seconds_bucket{volume=\"v\",le=\"+Inf\"} $writes" "$TEST_TMP/volume2.prom" \
  || fail "the +Inf bucket is not every write"
hq=$(query 'histogram_quantile(0.5,blkmirror_volume_write_latency_seconds_bucket)')
echo "ok   $writes writes in the latency histogram; Prometheus's p50 estimate: ${hq:-none yet} s"
kill -TERM "$PID_v"
wait_exit "$PID_v" || fail "volume did not exit cleanly"
same "$TEST_TMP/disk" "$TEST_TMP/rep"
