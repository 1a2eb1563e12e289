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

# lab_rxe_add RXE NETDEV: `rdma link add` an rxe device on NETDEV and wait (≤ 10 s) until its port is ACTIVE
# and its RoCE v2 IPv4 GID is in the table (it fills in asynchronously after the link add).
lab_rxe_add() {
    rdma link add "$1" type rxe netdev "$2" || return 1
    local i s g
    for ((i = 0; i < 100; i++)); do
        read -r s < "/sys/class/infiniband/$1/ports/1/state"
        [[ "$s" == *ACTIVE* ]] && roce_v2_ipv4_gid_var g "$1" && return 0
        sleep 0.1
    done
    echo "lab_rxe_add: $1 on $2: port ${s:-?}, no RoCE v2 IPv4 GID after 10 s" >&2
    return 1
}

# lab_link_up veth0|veth1: brings a lab veth back up after a test took it down, once no process holds its rxe
# device (rdma link delete waits for them). Two things a link down breaks are put back:
#  - the wire route of tables 101/102 (net.sh): a link down flushes it, and without it 10.0.0.1 <-> 10.0.0.2
#    traffic goes through lo, where rxe cannot follow (RDMA times out; TCP works);
#  - the rxe device itself: the guest's 6.1 rdma_rxe, after a link flap under an established RC connection,
#    answers no new connection on that device (rping and blkmirror both time out; `rdma link` says ACTIVE), until
#    the device is deleted and added again. The scripts/lab suite shows it: 80/85 failed after 70 until this.
lab_link_up() {
    local rxe
    case "$1" in
        veth0) rxe=$LAB_RXE0 ;;
        veth1) rxe=$LAB_RXE1 ;;
        *) echo "lab_link_up: $1 is not a lab veth" >&2; return 1 ;;
    esac
    ip link set "$1" up
    case "$1" in
        veth0) ip route replace "$LAB_IP1" dev veth0 src "$LAB_IP0" table 101 ;;
        veth1) ip route replace "$LAB_IP0" dev veth1 src "$LAB_IP1" table 102 ;;
    esac
    timeout 30 rdma link delete "$rxe" || { echo "lab_link_up: rdma link delete $rxe failed" >&2; return 1; }
    lab_rxe_add "$rxe" "$1" || return 1
    local r0 r1
    r0=$(ip route get "$LAB_IP1" from "$LAB_IP0")
    r1=$(ip route get "$LAB_IP0" from "$LAB_IP1")
    [[ "$r0" == *"dev veth0"* && "$r1" == *"dev veth1"* ]] \
        || { echo "lab_link_up: $LAB_IP0 <-> $LAB_IP1 not on the wire: $r0 / $r1" >&2; return 1; }
}

# lab_pair_net: in a guest booted with LAB_PAIR (scripts/lab), bring up the NIC on the wire shared with the other
# guest: 192.168.77.1 and host name lab-a on end a, 192.168.77.2 and lab-b on end b. Sets
# LAB_PAIR_IP, LAB_PAIR_PEER_IP, LAB_PAIR_NAME.
lab_pair_net() {
    [ -n "${LAB_PAIR:-}" ] || { echo "lab_pair_net: this guest was booted without LAB_PAIR" >&2; return 1; }
    local me=1 peer=2 name=lab-a dev mac i
    [ "${LAB_PAIR%%:*}" = a ] || { me=2 peer=1 name=lab-b; }
    modprobe virtio_net || return 1
    for ((i = 0; i < 50; i++)); do
        for dev in /sys/class/net/*; do
            read -r mac < "$dev/address" && [ "$mac" = "52:54:00:4c:41:0$me" ] && break 2
        done
        dev=''
        sleep 0.1
    done
    [ -n "$dev" ] || { echo "lab_pair_net: no NIC with MAC 52:54:00:4c:41:0$me" >&2; return 1; }
    ip addr add "192.168.77.$me/24" dev "${dev##*/}" && ip link set "${dev##*/}" up || return 1
    hostname "$name"
    LAB_PAIR_IP=192.168.77.$me LAB_PAIR_PEER_IP=192.168.77.$peer LAB_PAIR_NAME=$name
}

# lab_hang_report: what a test that is about to time out is stuck on: every process with its state and kernel wait
# channel, the kernel stacks of those in D state, the user stacks of blkmirror's threads (gdb, when installed), the
# tails of the test's logs (the directory cli_setup named in TEST_LOGDIR/tmpdir) and of the kernel log.
lab_hang_report() {
    local pid tmp
    echo "--- processes"
    ps -eo pid,ppid,stat,wchan:32,etime,args --sort=pid | grep -v ' \[' 
    for pid in $(ps -eo pid=,stat= | awk '$2 ~ /^D/ { print $1 }'); do
        echo "--- kernel stack of $pid ($(cat "/proc/$pid/comm" 2>/dev/null)), in D state"
        cat "/proc/$pid/stack" 2>/dev/null
    done
    if command -v gdb > /dev/null; then
        for pid in $(pgrep -x blkmirror); do
            echo "--- threads of blkmirror $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-200)"
            timeout 60 gdb -q -batch -p "$pid" -ex 'thread apply all bt 12' 2>/dev/null | grep -E '^(Thread|#)'
        done
    fi
    read -r tmp 2>/dev/null < "$TEST_LOGDIR/tmpdir" || tmp=''
    if [ -n "$tmp" ]; then
        for f in "$tmp"/*.log "$tmp"/*.out; do
            [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }
        done
    fi
    echo "--- memory and /tmp"
    free -m
    df -h /tmp
    echo "--- dmesg"
    dmesg | tail -n 30
}

# lab_build_dir: the build tree whose binaries the job runs: BLKMIRROR_BUILD (absolute, or relative to the repo;
# scripts/lab passes the host's value in) when set, else build/release.
lab_build_dir() {
    local d=${BLKMIRROR_BUILD:-build/release}
    case $d in /*) printf '%s\n' "$d" ;; *) printf '%s\n' "${LAB_REPO:-$(pwd)}/$d" ;; esac
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
