# Shared by the bench/ scripts (sourced): small figures helpers.
# shellcheck shell=bash

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# gbps SECONDS [BYTES]: GB/s for BYTES (default 1 GiB) in SECONDS.
gbps() { awk -v b="${2:-$((1 << 30))}" -v s="$1" 'BEGIN { printf "%.3f", b / s / 1e9 }'; }
# ratio A B: A / B, two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
