#!/bin/bash
# Failover under the kernel's NBD client (runs in the lab guest), once with the volume
# replicating over TCP and once over RDMA: an ext4 file system made, mounted and written through
# /dev/nbd0 on the primary's export, `sync`, then the primary killed (kill -9, still mounted);
# the replica promoted and exported; /dev/nbd1 attached to the new primary's export and mounted:
# the files are intact, and after unmounting, `e2fsck -fn` is clean.
set -euo pipefail
. "$LAB_REPO/scripts/lab.d/lib.sh"
. "$LAB_REPO/scripts/lab.d/cli.sh"
require_lab_rdma
lab_defaults
cli_setup failover-nbd
cleanup() {
    for m in "$tmp/mnt" "$tmp/mnt2"; do umount -l "$m" 2>/dev/null || true; done
    for d in /dev/nbd0 /dev/nbd1; do nbd-client -d "$d" > /dev/null 2>&1 || true; done
    cli_cleanup
}
trap cleanup EXIT

for tool in nbd-client mkfs.ext4 e2fsck; do
    command -v "$tool" > /dev/null || fail "$tool is missing on the host (scripts/lab installs it)"
done
modprobe nbd nbds_max=4 || fail "modprobe nbd"
modprobe ext4 || fail "modprobe ext4"
SIZE=$((64 << 20))
mkdir -p "$tmp/mnt" "$tmp/mnt2"
state() { "$bin" status --disk "$1" --json | jq -r "$2"; }

for transport in tcp rdma; do
    echo "--- kill -9 of the primary with ext4 mounted on its export (replication over $transport)"
    port=$([ "$transport" = tcp ] && echo 7200 || echo 7201)
    truncate -s "$SIZE" "$tmp/a-$transport.disk"
    serve "b-$transport" "$LAB_IP1" "$port" --insecure
    volume "a-$transport" "$tmp/a-$transport.disk" "$transport" "$LAB_IP1:$port"
    for _ in $(seq 600); do
        [ "$("$bin" status --volume "a-$transport" --run-dir "$tmp/run" --json | jq -r '.peers[0].state')" = in_sync ] && break
        sleep 0.2
    done
    nbd-client -N "a-$transport" -unix "$tmp/a-$transport.sock" /dev/nbd0 -b 4096 \
        > "$tmp/nbd0.log" 2>&1 || fail "nbd-client: $(cat "$tmp/nbd0.log")"
    mkfs.ext4 -q -F /dev/nbd0 || fail "mkfs.ext4"
    mount /dev/nbd0 "$tmp/mnt" || fail "mount /dev/nbd0"
    mkdir -p "$tmp/mnt/dir"
    head -c $((4 << 20)) /dev/urandom > "$tmp/mnt/dir/big"
    for i in $(seq 20); do echo "file $i before the failover ($transport)" > "$tmp/mnt/dir/f-$i"; done
    (cd "$tmp/mnt" && find dir -type f -print0 | sort -z | xargs -0 sha256sum) > "$tmp/sums"
    sync
    kill -9 "$VPID"
    umount -l "$tmp/mnt"
    nbd-client -d /dev/nbd0 > /dev/null 2>&1 || true

    echo "--- promote the replica, export it, mount it through /dev/nbd1"
    "$bin" promote --disk "$tmp/b-$transport.img" > "$tmp/promote.out" 2>&1 \
        || fail "promote: $(cat "$tmp/promote.out")"
    [ "$(state "$tmp/b-$transport.img" .role)" = primary ] || fail "not primary after promote"
    volume "b2-$transport" "$tmp/b-$transport.img" "$transport" "$LAB_IP1:$((port + 10))" --quorum 0
    nbd-client -N "b2-$transport" -unix "$tmp/b2-$transport.sock" /dev/nbd1 -b 4096 \
        > "$tmp/nbd1.log" 2>&1 || fail "nbd-client on the new primary: $(cat "$tmp/nbd1.log")"
    mount /dev/nbd1 "$tmp/mnt2" || fail "mount of the new primary's export"
    (cd "$tmp/mnt2" && find dir -type f -print0 | sort -z | xargs -0 sha256sum) > "$tmp/sums2"
    diff "$tmp/sums" "$tmp/sums2" > /dev/null || fail "files differ after the failover: $(diff "$tmp/sums" "$tmp/sums2" | head)"
    umount "$tmp/mnt2"
    e2fsck -fn /dev/nbd1 > "$tmp/fsck.log" 2>&1 || fail "e2fsck -fn: $(tail -n 5 "$tmp/fsck.log")"
    nbd-client -d /dev/nbd1 > /dev/null 2>&1 || fail "nbd-client -d /dev/nbd1"
    kill -TERM "$VPID"
    wait "$VPID" || fail "the new primary's volume did not exit cleanly"
    echo "$transport: the promoted replica holds the $(wc -l < "$tmp/sums") files; e2fsck -fn clean"
done
echo PASS
