#!/bin/bash
# The replicated volume under the kernel's own NBD client (runs in the lab guest), once over TCP
# and once over RDMA: `blkmirror volume` on rxe0's side exports a unix socket, `nbd-client`
# attaches it as /dev/nbd0, mkfs.ext4, mount, files written, sync, unmount, disconnect; then the
# replica's target (served on rxe1's address) passes `e2fsck -fn` and holds the same files
# (read back with debugfs, no mount of the replica needed).
set -euo pipefail
. "$LAB_REPO/scripts/lab.d/lib.sh"
. "$LAB_REPO/scripts/lab.d/cli.sh"
require_lab_rdma
lab_defaults
cli_setup volume-nbd
cleanup() {
    umount "$tmp/mnt" 2>/dev/null || true
    nbd-client -d /dev/nbd0 > /dev/null 2>&1 || true
    cli_cleanup
}
trap cleanup EXIT

for tool in nbd-client mkfs.ext4 e2fsck debugfs; do
    command -v "$tool" > /dev/null || fail "$tool is missing on the host (scripts/lab installs it)"
done
modprobe nbd nbds_max=2 || fail "modprobe nbd"
modprobe ext4 || fail "modprobe ext4"
[ -b /dev/nbd0 ] || fail "no /dev/nbd0 after modprobe nbd"
SIZE=$((64 << 20))
mkdir -p "$tmp/mnt"

state() { "$bin" status --volume "$1" --run-dir "$tmp/run" --json | jq -r "$2"; }

for transport in tcp rdma; do
    echo "--- kernel nbd client over a volume replicated with --transport $transport"
    port=$([ "$transport" = tcp ] && echo 7100 || echo 7101)
    serve "rep-$transport" "$LAB_IP1" "$port" --insecure
    truncate -s "$SIZE" "$tmp/v-$transport.disk"
    volume "v-$transport" "$tmp/v-$transport.disk" "$transport" "$LAB_IP1:$port" --meta-dir "$tmp/v-$transport.meta"
    [ "$(state "v-$transport" '.peers[0].transport')" = "$transport" ] \
        || fail "the volume replicates over $(state "v-$transport" '.peers[0].transport')"
    nbd-client -N "v-$transport" -unix "$tmp/v-$transport.sock" /dev/nbd0 -b 4096 > "$tmp/nbd-client.log" 2>&1 \
        || fail "nbd-client: $(cat "$tmp/nbd-client.log")"
    mkfs.ext4 -q -F /dev/nbd0 || fail "mkfs.ext4 on /dev/nbd0"
    mount /dev/nbd0 "$tmp/mnt" || fail "mount /dev/nbd0"
    mkdir -p "$tmp/mnt/dir"
    head -c $((6 << 20)) /dev/urandom > "$tmp/mnt/dir/big"
    for i in $(seq 20); do echo "file $i over $transport" > "$tmp/mnt/dir/small-$i"; done
    (cd "$tmp/mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$tmp/sums-$transport"
    sync
    umount "$tmp/mnt"
    nbd-client -d /dev/nbd0 > /dev/null 2>&1 || fail "nbd-client -d"
    for _ in $(seq 600); do
        [ "$(state "v-$transport" '[.peers[].state] | join(",")')" = in_sync ] && break
        sleep 0.2
    done
    [ "$(state "v-$transport" '.peers[0].state')" = in_sync ] \
        || fail "the replica is not in sync: $(state "v-$transport" '.peers[0]')"
    echo "writes: $(state "v-$transport" .writes), flushes: $(state "v-$transport" .flushes)," \
         "zeroes: $(state "v-$transport" .zeroes)"
    kill -TERM "$VPID"
    wait "$VPID" || fail "the volume did not exit cleanly"
    cmp "$tmp/v-$transport.disk" "$tmp/rep-$transport.img" || fail "the replica differs from the disk"
    e2fsck -fn "$tmp/rep-$transport.img" > "$tmp/fsck-$transport.log" 2>&1 \
        || fail "e2fsck -fn on the replica: $(tail -n 5 "$tmp/fsck-$transport.log")"
    # The files, read from the replica's target by debugfs.
    mkdir -p "$tmp/out-$transport"
    debugfs -R "rdump /dir $tmp/out-$transport" "$tmp/rep-$transport.img" > /dev/null 2>&1 \
        || fail "debugfs rdump"
    (cd "$tmp/out-$transport" && find . -type f -print0 | sort -z | xargs -0 sha256sum) \
        > "$tmp/back-$transport"
    diff "$tmp/sums-$transport" "$tmp/back-$transport" > /dev/null \
        || fail "files on the replica differ: $(diff "$tmp/sums-$transport" "$tmp/back-$transport" | head)"
    echo "$transport: ext4 made, mounted and written through /dev/nbd0; the replica passes" \
         "e2fsck -fn and holds the $(wc -l < "$tmp/sums-$transport") files"
    kill "$SPID" 2>/dev/null || true
done
echo PASS
