#!/bin/bash
# The lab itself: LAB_* exported, both rxe ports ACTIVE with a RoCE v2 IPv4 GID, veth path used, share writable.
set -euo pipefail
. "$LAB_REPO/scripts/lab.d/lib.sh"
for v in LAB_RXE0 LAB_RXE1 LAB_IP0 LAB_IP1 LAB_NORDMA_IP LAB_GID0 LAB_GID1 LAB_OUT; do
    [ -n "${!v:-}" ] || { echo "$v not set"; exit 1; }
    echo "$v=${!v}"
done
if [ "$(roce_v2_ipv4_gid "$LAB_RXE0")" != "$LAB_GID0" ] || [ "$(roce_v2_ipv4_gid "$LAB_RXE1")" != "$LAB_GID1" ]; then
    echo "LAB_GID0/LAB_GID1 are not the RoCE v2 IPv4-mapped GID indexes"; exit 1
fi
ibv_devinfo -d "$LAB_RXE0" | grep -E 'state|link_layer|active_mtu'
ibv_devinfo -d "$LAB_RXE1" | grep -q PORT_ACTIVE
[ "$(pwd)" = "$LAB_REPO" ] || { echo "cwd $(pwd) is not the repo root"; exit 1; }
echo ok > "$TEST_LOGDIR/written-from-guest"
# ICMP from 10.0.0.1 to 10.0.0.2 must cross the veth pair (counted on veth0's tx).
tx0=$(cat /sys/class/net/veth0/statistics/tx_packets)
busybox ping -c 2 -W 2 -I "$LAB_IP0" "$LAB_IP1" >/dev/null     # busybox-static: a lab dependency
tx1=$(cat /sys/class/net/veth0/statistics/tx_packets)
echo "veth0 tx packets during ping: $((tx1 - tx0))"
[ $((tx1 - tx0)) -ge 2 ] || { echo "ping did not go over veth0"; exit 1; }
