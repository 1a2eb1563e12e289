#!/bin/bash
# The Debian package (cmake/package.cmake), for real: `cpack -G DEB` from this build, its contents
# and control fields, the man page it ships (rendered without a warning, a section per subcommand,
# every option of every subcommand's help in it), then installed with dpkg and started by systemd
# on a machine that is not this host.
#
# The machine: an overlay of this host's root filesystem (its upper layer a tmpfs, in a private
# mount namespace: nothing written there reaches the host, and every mount goes with the
# namespace) booted with systemd-nspawn, systemd as PID 1, on a private network. There dpkg -i
# runs the maintainer scripts, systemd reads the units, `systemctl enable --now
# blkmirror-serve@vol0` must reach "active" (Type=notify: READY=1 once it listens) with the unit's
# sandboxing, a push to it must be acked durable and land byte for byte; then `blkmirror.service`
# (the daemon) must run the same resource, answer `blkmirror status`, reload and take a push; and
# dpkg -r must take the units away. Why this: it is the real "starts under systemd" and boots in seconds; a chroot
# would not run systemd, the QEMU lab (scripts/lab) takes minutes, and a debootstrapped minimal
# Debian needs the network and minutes too. What the overlay cannot show, since this host has
# every library: that a clean machine gets them. That is checked on the package instead: each
# library the binary needs (its NEEDED entries) belongs to a Debian package its Depends names.
#
# Needs root, overlayfs, unshare, dpkg-dev (dpkg-shlibdeps), file, systemd-container
# (systemd-nspawn), man-db and bsdextrautils (col) (scripts/lib.sh installs them); says SKIPPED and
# why when one is missing. A build without help2man has no man page: that fails.
source "$(dirname "$0")/lib.sh"
build=$(dirname "$BLKMIRROR")

if [ -z "${T_PACKAGE_IN_NAMESPACE:-}" ]; then
  [ "$(id -u)" -eq 0 ] || skip "needs root (overlay mounts, systemd-nspawn)"
  for tool in cpack dpkg-deb dpkg-shlibdeps file objdump systemd-nspawn unshare nsenter groff man col; do
    command -v "$tool" > /dev/null \
      || skip "$tool is missing (scripts/lib.sh's BUILD_PACKAGES install it: dpkg-dev, file, systemd-container, man-db, bsdextrautils)"
  done
  grep -qw overlay /proc/filesystems || modprobe overlay 2> /dev/null \
    || skip "no overlayfs in this kernel"
  [ -f "$build/CPackConfig.cmake" ] || fail "no CPackConfig.cmake in $build (CMakeLists.txt includes cmake/package.cmake)"
  # The rest in a mount namespace of its own: its mounts end with it, whatever happens.
  exec env T_PACKAGE_IN_NAMESPACE=1 unshare --mount --propagation private bash "$0" "$@"
fi

version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
arch=$(dpkg --print-architecture)
deb=$TEST_TMP/pkg/blkmirror_${version}_${arch}.deb

step "cpack -G DEB: $(basename "$deb")"
cpack -G DEB -B "$TEST_TMP/pkg" --config "$build/CPackConfig.cmake" > "$TEST_TMP/cpack.log" 2>&1 \
  || fail "cpack: $(tail -n 5 "$TEST_TMP/cpack.log")"
[ -f "$deb" ] || fail "cpack made no $(basename "$deb"): $(ls "$TEST_TMP/pkg")"
dpkg-deb --contents "$deb" | awk '{print $6}' | sed 's|^\./|/|' > "$TEST_TMP/contents"
for f in /usr/bin/blkmirror /lib/systemd/system/blkmirror.service /lib/systemd/system/blkmirror-serve@.service \
         /lib/systemd/system/blkmirror-volume@.service /usr/share/doc/blkmirror/examples/example.toml \
         /usr/share/doc/blkmirror/README.md /usr/share/doc/blkmirror/config.md \
         /usr/share/doc/blkmirror/changelog.gz /usr/share/man/man1/blkmirror.1.gz; do
  grep -qx "$f" "$TEST_TMP/contents" || fail "the package lacks $f"
done
outside=$(grep -vE '^(/|/lib/|/usr/.*|/lib/systemd/.*)$' "$TEST_TMP/contents" || true)
[ -z "$outside" ] || fail "the package installs outside /usr and /lib/systemd: $outside"
for field in Package Version Architecture Maintainer Section Depends Description; do
  [ -n "$(dpkg-deb --field "$deb" "$field")" ] || fail "the package's control has no $field"
done
dpkg-deb --field "$deb" Depends | tr ',' '\n' | sed 's/^ *//; s/ .*//; s/|.*//' > "$TEST_TMP/depends"
mkdir "$TEST_TMP/x"
dpkg-deb --extract "$deb" "$TEST_TMP/x"
grep -q "^ExecStart=/usr/bin/blkmirror serve --resource %i$" "$TEST_TMP/x/lib/systemd/system/blkmirror-serve@.service" \
  || fail "the packaged serve unit does not run /usr/bin/blkmirror: $(grep ^Exec "$TEST_TMP/x/lib/systemd/system/blkmirror-serve@.service")"
echo "ok   $(wc -l < "$TEST_TMP/contents") paths; Depends: $(paste -sd' ' "$TEST_TMP/depends")"

step "Depends: every library the binary needs is in a package it names"
ldd "$TEST_TMP/x/usr/bin/blkmirror" > "$TEST_TMP/ldd" 2>&1 || fail "ldd: $(cat "$TEST_TMP/ldd")"
for lib in $(objdump -p "$TEST_TMP/x/usr/bin/blkmirror" | awk '$1 == "NEEDED" {print $2}'); do
  path=$(awk -v l="$lib" '$1 == l {print $3}' "$TEST_TMP/ldd")
  [[ -n $path && $path != not ]] || fail "the binary needs $lib, which is not found"
  real=$(readlink -f "$path")
  owner=""
  for p in "$path" "$real" "${real#/usr}" "/usr${real#/usr}"; do
    owner=$(dpkg -S "$p" 2> /dev/null | head -n 1 | cut -d: -f1) && [ -n "$owner" ] && break
  done
  [ -n "$owner" ] || fail "no Debian package owns $path ($lib)"
  # Depends names the owner, or a name it provides (libspdlog1.10 provides libspdlog1.10-fmt9).
  { echo "$owner"; dpkg-query -W -f='${Provides}' "$owner" | tr ',' '\n' | sed 's/^ *//; s/ .*//'; } \
    | grep -xF -f "$TEST_TMP/depends" > /dev/null || fail "the binary needs $lib from $owner, which Depends does not name"
done
echo "ok   $(objdump -p "$TEST_TMP/x/usr/bin/blkmirror" | grep -c NEEDED) libraries, each from a package in Depends"

step "the man page: from the help, a section per subcommand, groff says nothing"
zcat "$TEST_TMP/x/usr/share/man/man1/blkmirror.1.gz" > "$TEST_TMP/blkmirror.1"
LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z "$TEST_TMP/blkmirror.1" > "$TEST_TMP/groff.out" 2>&1
[ ! -s "$TEST_TMP/groff.out" ] || fail "groff warns about blkmirror(1): $(head -n 5 "$TEST_TMP/groff.out")"
man_text=$(LC_ALL=C.UTF-8 MANWIDTH=200 man -l "$TEST_TMP/blkmirror.1" 2> /dev/null | col -b)
commands=$("$BLKMIRROR" --help | awk '/^Subcommands:/ {on = 1; next} on && /^  [a-z]/ {print $1} on && /^$/ {exit}')
[ -n "$commands" ] || fail "no subcommands in blkmirror --help"
for c in $commands; do
  grep -q "^\.SS \"$c\"$" "$TEST_TMP/blkmirror.1" || fail "blkmirror(1) has no section for $c"
  for opt in $("$BLKMIRROR" "$c" --help | grep -oE '^  +(-[a-zA-Z],)?--[a-z0-9-]+' | sed 's/.*--/--/'); do
    grep -qF -- "$opt" <<< "$man_text" || fail "blkmirror(1) lacks $c's $opt"
  done
done
echo "ok   $(wc -w <<< "$commands") subcommands, each with every option of its help"

step "boot: an overlay of this host's root, systemd as PID 1 (systemd-nspawn, private network)"
ct=$TEST_TMP/ct
machine=bmpkg$$
mkdir -p "$ct"
mount -t tmpfs tmpfs "$ct"
mkdir "$ct/upper" "$ct/work" "$ct/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$ct/upper,workdir=$ct/work" "$ct/root"
# A machine of its own: no identity, its own name, none of this host's blkmirror state, the
# package to install.
: > "$ct/root/etc/machine-id"
echo "$machine" > "$ct/root/etc/hostname"
rm -rf "$ct/root/etc/blkmirror" "$ct/root/var/lib/blkmirror"
cp "$deb" "$ct/root/root/"
# systemd-nspawn keeps its locks and propagation directories in /run/systemd/nspawn. On a host
# without systemd (as where this was written: no machined, no scope for the container), it runs
# unregistered in the test's own cgroup, and /run/systemd is a tmpfs of this namespace's so that
# nothing of it stays; on a host with systemd, nspawn registers the container as usual (untried).
nspawn_host=()
if [ ! -d /run/systemd/system ]; then
  nspawn_host=(--register=no --keep-unit)
  mount -t tmpfs tmpfs /run/systemd
fi
# Booted to basic.target: the host's own services, which the overlay shares, are not ours to start.
systemd-nspawn --quiet --boot --directory "$ct/root" --machine "$machine" --private-network \
  "${nspawn_host[@]}" systemd.unit=basic.target > "$TEST_TMP/console.log" 2>&1 &
nspawn=$!
stop_container() {
  kill "$nspawn" 2> /dev/null || return 0  # SIGTERM: nspawn powers the container off
  for _ in $(seq 300); do kill -0 "$nspawn" 2> /dev/null || return 0; sleep 0.1; done
  echo "the container did not power off in 30 s: killing it" >&2
  kill -KILL "$nspawn" 2> /dev/null
}
CLEANUPS+=("stop_container")
init=""
for _ in $(seq 300); do
  kill -0 "$nspawn" 2> /dev/null || fail "systemd-nspawn exited: $(tail -n 5 "$TEST_TMP/console.log")"
  init=$(pgrep -P "$nspawn" -x systemd || true)
  [ -n "$init" ] && break
  sleep 0.1
done
[ -n "$init" ] || fail "no systemd in the container after 30 s: $(tail -n 5 "$TEST_TMP/console.log")"
in_ct() { nsenter --target "$init" --all -- env -i -C / PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }
# is-system-running says "offline" until systemd listens, then --wait waits for the boot's end.
state=""
until=$((SECONDS + 60))
while [ "$SECONDS" -lt "$until" ]; do
  state=$(timeout 60 nsenter --target "$init" --all -- systemctl is-system-running --wait 2>&1 || true)
  case $state in running | degraded | maintenance | stopping) break ;; esac
  sleep 0.2
done
case $state in
  running | degraded) echo "ok   $machine booted ($state) in $SECONDS s since the test began" ;;
  *) fail "the container did not boot: '$state'; $(in_ct systemctl --failed --no-legend 2>&1)" ;;
esac

step "dpkg -i in the container; man finds the page; systemd has the units"
in_ct dpkg -i "/root/$(basename "$deb")" > "$TEST_TMP/dpkg-i.log" 2>&1 \
  || fail "dpkg -i: $(tail -n 10 "$TEST_TMP/dpkg-i.log")"
in_ct blkmirror --version | head -n 1
[ "$(in_ct sh -c 'command -v blkmirror')" = /usr/bin/blkmirror ] || fail "blkmirror is not /usr/bin/blkmirror in the container"
in_ct man -w blkmirror | grep -qx /usr/share/man/man1/blkmirror.1.gz || fail "man does not find blkmirror(1)"
in_ct systemctl cat blkmirror-serve@vol0.service > /dev/null 2>&1 || fail "systemd does not know blkmirror-serve@vol0"
in_ct mkdir -p /etc/blkmirror
sed '/^key-file/d' "$TEST_TMP/x/usr/share/doc/blkmirror/examples/example.toml" > "$ct/root/etc/blkmirror/example.toml"
in_ct blkmirror check-config example > "$TEST_TMP/cc.out" 2>&1 \
  || fail "the installed example resource file has mistakes: $(cat "$TEST_TMP/cc.out")"
in_ct rm /etc/blkmirror/example.toml
echo "ok   installed: binary, man page, units; the example resource file checks"

step "systemctl enable --now blkmirror-serve@vol0: active, and a push to it is acked durable"
# The replica is this machine (its host name is the machine's name); the primary pushes from the
# same machine, over loopback (no key file needed there).
cat > "$ct/root/etc/blkmirror/vol0.toml" <<EOF
[resource]
ack = "durable"
block-size = "128K"

[node.$machine]
role = "replica"
disk = "/var/lib/blkmirror/vol0.img"
address = "127.0.0.1:7100"

[node.primary]
role = "primary"
disk = "/var/lib/blkmirror/source.img"
address = "127.0.0.1:7101"
EOF
in_ct mkdir -p /var/lib/blkmirror
random_file "$TEST_TMP/source.img" $((16 << 20))
cp "$TEST_TMP/source.img" "$ct/root/var/lib/blkmirror/source.img"
in_ct systemctl enable --now blkmirror-serve@vol0.service > "$TEST_TMP/enable.log" 2>&1 \
  || fail "systemctl enable --now blkmirror-serve@vol0: $(cat "$TEST_TMP/enable.log"); $(in_ct journalctl -u blkmirror-serve@vol0 --no-pager -n 20)"
active=$(in_ct systemctl is-active blkmirror-serve@vol0.service || true)
[ "$active" = active ] || fail "blkmirror-serve@vol0 is $active: $(in_ct journalctl -u blkmirror-serve@vol0 --no-pager -n 20)"
in_ct systemctl show -p StatusText --value blkmirror-serve@vol0.service
in_ct blkmirror push --no-progress --json --resource vol0 --node primary > "$TEST_TMP/push.json" 2> "$TEST_TMP/push.log" \
  || fail "push to the unit's replica: $(tail -n 3 "$TEST_TMP/push.log"); $(in_ct journalctl -u blkmirror-serve@vol0 --no-pager -n 10)"
[ "$(json .ack)" = durable ] || fail "the push was not acked durable: $(cat "$TEST_TMP/push.json")"
in_ct cmp /var/lib/blkmirror/source.img /var/lib/blkmirror/vol0.img || fail "the replica's copy differs from the source"
echo "ok   blkmirror-serve@vol0 $active; $(json .bytes) bytes pushed, acked durable, equal"

step "systemctl stop: a clean exit"
in_ct systemctl stop blkmirror-serve@vol0.service
result=$(in_ct systemctl show -p Result --value blkmirror-serve@vol0.service)
[ "$result" = success ] || fail "blkmirror-serve@vol0 stopped with result $result: $(in_ct journalctl -u blkmirror-serve@vol0 --no-pager -n 10)"
in_ct systemctl disable blkmirror-serve@vol0.service > /dev/null 2>&1
echo "ok   blkmirror-serve@vol0 stopped ($result)"

step "systemctl start blkmirror (the daemon): active, status through its admin socket, reload, a push"
in_ct systemctl start blkmirror.service > "$TEST_TMP/start.log" 2>&1 \
  || fail "systemctl start blkmirror: $(cat "$TEST_TMP/start.log"); $(in_ct journalctl -u blkmirror --no-pager -n 20)"
in_ct blkmirror status > "$TEST_TMP/status.out" 2>&1 \
  || fail "blkmirror status: $(cat "$TEST_TMP/status.out"); $(in_ct journalctl -u blkmirror --no-pager -n 20)"
grep -q "^vol0: replica, running" "$TEST_TMP/status.out" || fail "the daemon does not run vol0: $(cat "$TEST_TMP/status.out")"
in_ct systemctl reload blkmirror.service || fail "systemctl reload blkmirror: $(in_ct journalctl -u blkmirror --no-pager -n 10)"
in_ct blkmirror push --no-progress --json --full --resource vol0 --node primary > "$TEST_TMP/push.json" 2> "$TEST_TMP/push.log" \
  || fail "push to the daemon's replica: $(tail -n 3 "$TEST_TMP/push.log"); $(in_ct journalctl -u blkmirror --no-pager -n 10)"
in_ct journalctl -u blkmirror --no-pager | grep -q "daemon: reload done" \
  || fail "the daemon did not log the reload: $(in_ct journalctl -u blkmirror --no-pager -n 10)"
in_ct systemctl stop blkmirror.service
result=$(in_ct systemctl show -p Result --value blkmirror.service)
[ "$result" = success ] || fail "blkmirror stopped with result $result: $(in_ct journalctl -u blkmirror --no-pager -n 10)"
echo "ok   blkmirror.service ran vol0, reloaded, took a push, stopped ($result)"

step "dpkg -r takes the units away"
in_ct dpkg -r blkmirror > "$TEST_TMP/dpkg-r.log" 2>&1 || fail "dpkg -r: $(tail -n 5 "$TEST_TMP/dpkg-r.log")"
! in_ct test -e /lib/systemd/system/blkmirror-serve@.service || fail "dpkg -r left the serve unit"
! in_ct systemctl cat blkmirror-serve@vol0.service > /dev/null 2>&1 || fail "systemd still has the serve unit after dpkg -r"
echo "ok   removed"
