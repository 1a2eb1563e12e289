#!/bin/bash
# Guest network for the lab (run by guest-run.sh before the job; needs root, iproute2's `ip` and `rdma`).
#
#   veth0 10.0.0.1/24 <--veth--> veth1 10.0.0.2/24     rxe0 on veth0, rxe1 on veth1   (RDMA path)
#   dum0  10.0.1.1/24 (dummy, no rxe)                                                 (TCP-fallback path)
#
# Writes /run/lab/net.env (sourced by guest-run.sh; exported to the job):
#   LAB_RXE0 LAB_RXE1 LAB_IP0 LAB_IP1 LAB_NORDMA_IP LAB_GID0 LAB_GID1
#
# Pitfalls that shaped this:
#  - both ends stay in ONE network namespace: rxe (6.1) listens on UDP 4791 in the initial namespace only, so rxe
#    devices in other namespaces get no traffic;
#  - two local addresses normally talk over lo, which rxe never sees: policy routing below forces
#    10.0.0.1 <-> 10.0.0.2 onto the veth wire (and accept_local/rp_filter let the other end accept it);
#  - no rxe on lo (rdma_cm to 127.0.0.1 fails: "rdma_resolve_route: No such device");
#  - rdma link add needs crc32_generic loaded first (done by init from modules.list).
set -euo pipefail
# shellcheck source=scripts/lab.d/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RXE0=rxe0 RXE1=rxe1 IP0=10.0.0.1 IP1=10.0.0.2 NORDMA_IP=10.0.1.1
# Every process costs ~0.1 s under TCG: one `ip -batch`, shell builtins for /proc and /sys.

# Packets from a local address arriving on the other veth end: accept them (accept_local), do not drop them as
# martians (rp_filter off). "default" first so that veth0/veth1 inherit it when created.
for c in all default; do
    echo 0 > "/proc/sys/net/ipv4/conf/$c/rp_filter"
    echo 1 > "/proc/sys/net/ipv4/conf/$c/accept_local"
done

# Locally generated 10.0.0.1 <-> 10.0.0.2 traffic goes out on the wire: rules before the local table (moved from
# pref 0 to 100) send it through per-direction tables; what arrives on the wire still hits the local table.
# dum0: a plain interface without rxe, so rdma_cm to it fails (no RDMA device) while TCP to it works.
ip -batch - <<EOF
link set lo up
link add veth0 type veth peer name veth1
addr add $IP0/24 dev veth0
addr add $IP1/24 dev veth1
link set veth0 up
link set veth1 up
rule add pref 100 lookup local
rule del pref 0 lookup local
rule add pref 10 iif lo from $IP0 to $IP1 lookup 101
rule add pref 11 iif lo from $IP1 to $IP0 lookup 102
route add $IP1 dev veth0 src $IP0 table 101
route add $IP0 dev veth1 src $IP1 table 102
link add dum0 type dummy
addr add $NORDMA_IP/24 dev dum0
link set dum0 up
EOF
for c in veth0 veth1; do
    echo 0 > "/proc/sys/net/ipv4/conf/$c/rp_filter"
    echo 1 > "/proc/sys/net/ipv4/conf/$c/accept_local"
done

lab_rxe_add "$RXE0" veth0 && lab_rxe_add "$RXE1" veth1 || { rdma link >&2; exit 1; }
roce_v2_ipv4_gid_var gid0 "$RXE0"
roce_v2_ipv4_gid_var gid1 "$RXE1"

# The wire path really is the wire: the route for 10.0.0.2 from 10.0.0.1 must leave through veth0.
route=$(ip route get "$IP1" from "$IP0")
[[ "$route" == *"dev veth0"* ]] || { echo "net.sh: $IP0 -> $IP1 not routed over veth0: $route" >&2; exit 1; }

mkdir -p /run/lab
echo "export LAB_RXE0=$RXE0 LAB_RXE1=$RXE1 LAB_IP0=$IP0 LAB_IP1=$IP1 LAB_NORDMA_IP=$NORDMA_IP LAB_GID0=$gid0 LAB_GID1=$gid1" \
    > /run/lab/net.env
echo "LAB: net: $RXE0@veth0 $IP0 gid $gid0, $RXE1@veth1 $IP1 gid $gid1, dum0 $NORDMA_IP (no rxe)"
