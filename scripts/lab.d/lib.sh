# shellcheck shell=bash
# Helpers shared by the guest-side lab scripts (sourced by bash; not a job itself).
# Every process costs ~0.1 s under TCG, so the helpers stick to shell builtins where they can.

# roce_v2_ipv4_gid_var <var> <ibdev> [port]: set <var> to the index of the RoCE v2 GID whose address is
# IPv4-mapped (::ffff:a.b.c.d); return 1 (and set it empty) if there is none yet.
# RoCE needs a GRH (is_global=1) with this GID: the link-local / RoCE v1 entries do not route over UDP/IPv4.
roce_v2_ipv4_gid_var() {
    local -n _out=$1
    local p=/sys/class/infiniband/$2/ports/${3:-1} g i v t
    _out=
    for g in "$p"/gids/*; do
        i=${g##*/}
        read -r v 2>/dev/null < "$g" || continue
        [[ "$v" == 0000:0000:0000:0000:0000:ffff:* ]] || continue
        read -r t 2>/dev/null < "$p/gid_attrs/types/$i" || continue
        [ "$t" = "RoCE v2" ] && { _out=$i; return 0; }
    done
    return 1
}

# roce_v2_ipv4_gid <ibdev> [port]: the same index on stdout.
roce_v2_ipv4_gid() {
    local idx
    roce_v2_ipv4_gid_var idx "$@" && echo "$idx"
}

# lab_defaults: fill in the LAB_* values when they are not in the environment (e.g. a script started inside the
# guest by something other than guest-run.sh). Same values as net.sh.
lab_defaults() {
    : "${LAB_RXE0:=rxe0}" "${LAB_RXE1:=rxe1}" "${LAB_IP0:=10.0.0.1}" "${LAB_IP1:=10.0.0.2}" "${LAB_NORDMA_IP:=10.0.1.1}"
    [ -n "${LAB_GID0:-}" ] || roce_v2_ipv4_gid_var LAB_GID0 "$LAB_RXE0" || true
    [ -n "${LAB_GID1:-}" ] || roce_v2_ipv4_gid_var LAB_GID1 "$LAB_RXE1" || true
    export LAB_RXE0 LAB_RXE1 LAB_IP0 LAB_IP1 LAB_NORDMA_IP LAB_GID0 LAB_GID1
}

# require_lab_rdma: fail with a clear message when not inside the lab guest (no rxe devices here).
require_lab_rdma() {
    [ -e "/sys/class/infiniband/${LAB_RXE0:-rxe0}" ] && [ -e "/sys/class/infiniband/${LAB_RXE1:-rxe1}" ] && return 0
    echo "$(basename "$0"): no ${LAB_RXE0:-rxe0}/${LAB_RXE1:-rxe1} here; run it inside the lab: scripts/lab $0 ..." >&2
    return 1
}

# wait_tcp_listen <port> [seconds]: wait until something listens on TCP <port> (e.g. a perftest server).
wait_tcp_listen() {
    local port=$1 n=$(( ${2:-20} * 5 ))
    while [ "$n" -gt 0 ]; do
        [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ] && return 0
        sleep 0.2; n=$((n - 1))
    done
    return 1
}
