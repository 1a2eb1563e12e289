#!/bin/bash
# The systemd units (systemd/*.service.in, configured by CMake into the build tree) and the
# notification protocol, for real: systemd-analyze verify on every unit (ExecStart pointed at this
# build's binary), then serve, volume and daemon under a NOTIFY_SOCKET this test listens on
# (tests/integration/notify_listen.py): READY=1 only once their listeners accept, watchdog pings
# at half WATCHDOG_USEC, STOPPING=1 on SIGTERM, exit 0.
source "$(dirname "$0")/lib.sh"
command -v systemd-analyze > /dev/null || fail "systemd-analyze is missing (scripts/lib.sh installs systemd)"
units=$(dirname "$BLKMIRROR")/systemd
[ -f "$units/blkmirror-serve@.service" ] || fail "no configured units in $units (CMake writes them)"
listen=(/usr/bin/python3 "$(dirname "$0")/notify_listen.py")

step "systemd-analyze verify, every unit"
mkdir -p "$TEST_TMP/units"
for unit in blkmirror.service blkmirror-serve@.service blkmirror-volume@.service; do
  sed "s|^ExecStart\(Pre\)\?=[^ ]*/blkmirror |ExecStart\1=$BLKMIRROR |" "$units/$unit" > "$TEST_TMP/units/$unit"
  grep -q "^ExecStart=$BLKMIRROR " "$TEST_TMP/units/$unit" || fail "$unit: no ExecStart to point at the build"
  instance=${unit/@./@vol0.}
  [ "$instance" = "$unit" ] || ln -sf "$unit" "$TEST_TMP/units/$instance"
  systemd-analyze verify --man=no "$TEST_TMP/units/$instance" > "$TEST_TMP/verify.out" 2>&1 \
    || fail "systemd-analyze verify $unit: $(cat "$TEST_TMP/verify.out")"
  # It warns about unknown keys and bad values and still exits 0: it must say nothing at all.
  [ ! -s "$TEST_TMP/verify.out" ] || fail "systemd-analyze warns about $unit: $(cat "$TEST_TMP/verify.out")"
  echo "ok   $unit"
done

step "serve under NOTIFY_SOCKET: READY=1 once it accepts, watchdog, STOPPING=1"
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${listen[@]}" "$TEST_TMP/notify-serve" 400000 "tcp:127.0.0.1:$port" -- \
  "$BLKMIRROR" serve --listen "127.0.0.1:$port" --target "$TEST_TMP/rep" --pool-size 64M \
  > "$TEST_TMP/notify-serve.out" 2> "$TEST_TMP/notify-serve.err" \
  || fail "serve under systemd's protocol: $(cat "$TEST_TMP/notify-serve.err") $(tail -n 5 "$TEST_TMP/notify-serve.out")"
cat "$TEST_TMP/notify-serve.out"
grep -q "STATUS=serving $TEST_TMP/rep (listening tcp 127.0.0.1:$port); no primary" "$TEST_TMP/notify-serve.out" \
  || fail "serve's READY=1 carries no STATUS naming its target and listener"

step "volume under NOTIFY_SOCKET: READY=1 once its NBD export accepts"
serve r "$TEST_TMP/rep2"
truncate -s $((8 << 20)) "$TEST_TMP/disk"
"${listen[@]}" "$TEST_TMP/notify-volume" 400000 "unix:$TEST_TMP/v.sock" -- \
  "$BLKMIRROR" volume --disk "$TEST_TMP/disk" --peer "127.0.0.1:$PORT_r" --export "unix:$TEST_TMP/v.sock" \
  --name v --run-dir "$TEST_TMP/run" --pool-size 16M \
  > "$TEST_TMP/notify-volume.out" 2> "$TEST_TMP/notify-volume.err" \
  || fail "volume under systemd's protocol: $(cat "$TEST_TMP/notify-volume.err") $(tail -n 5 "$TEST_TMP/notify-volume.out")"
cat "$TEST_TMP/notify-volume.out"
grep -q "STATUS=v: [01] of 1 replica(s) in session" "$TEST_TMP/notify-volume.out" \
  || fail "volume's STATUS lines do not say its replicas"

step "daemon under NOTIFY_SOCKET: READY=1 once its resources listen"
dport=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$TEST_TMP/etc-d"
cat > "$TEST_TMP/etc-d/vol0.toml" <<EOF
[node.alpha]
role = "primary"
disk = "$TEST_TMP/unused"
address = "127.0.0.1:1"
export = ["unix:$TEST_TMP/unused.nbd"]
[node.beta]
role = "replica"
disk = "$TEST_TMP/rep3"
address = "127.0.0.1:$dport"
EOF
"${listen[@]}" "$TEST_TMP/notify-daemon" 400000 "tcp:127.0.0.1:$dport" -- \
  "$BLKMIRROR" --config-dir "$TEST_TMP/etc-d" daemon --node beta --admin-socket "$TEST_TMP/run-d/admin.sock" \
  > "$TEST_TMP/notify-daemon.out" 2> "$TEST_TMP/notify-daemon.err" \
  || fail "daemon under systemd's protocol: $(cat "$TEST_TMP/notify-daemon.err") $(tail -n 5 "$TEST_TMP/notify-daemon.out")"
cat "$TEST_TMP/notify-daemon.out"
grep -q "READY=1|STATUS=1 resource(s): 1 running" "$TEST_TMP/notify-daemon.out" \
  || fail "the daemon's READY=1 does not say its resource runs"

step "cmake --install: binary, units (ExecStart at the install prefix), example, docs"
build=$(dirname "$BLKMIRROR")
prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
DESTDIR="$TEST_TMP/inst" cmake --install "$build" > "$TEST_TMP/install.out" 2>&1 \
  || fail "cmake --install: $(tail -n 5 "$TEST_TMP/install.out")"
root=$TEST_TMP/inst$prefix
for f in bin/blkmirror lib/systemd/system/blkmirror.service lib/systemd/system/blkmirror-serve@.service \
         lib/systemd/system/blkmirror-volume@.service share/doc/blkmirror/examples/example.toml \
         share/doc/blkmirror/config.md; do
  [ -e "$root/$f" ] || fail "cmake --install did not install $f under $prefix: $(cat "$TEST_TMP/install.out")"
done
grep -q "^ExecStart=$prefix/bin/blkmirror serve --resource %i$" "$root/lib/systemd/system/blkmirror-serve@.service" \
  || fail "the installed serve unit does not run $prefix/bin/blkmirror"
"$root/bin/blkmirror" --version > /dev/null || fail "the installed binary does not run"
# The installed example resource file is itself a good one (its key file aside).
mkdir -p "$TEST_TMP/etc"
sed '/^key-file/d' "$root/share/doc/blkmirror/examples/example.toml" > "$TEST_TMP/etc/vol0.toml"
"$BLKMIRROR" --config-dir "$TEST_TMP/etc" check-config > "$TEST_TMP/cc.out" 2>&1 \
  || fail "the example resource file has mistakes: $(cat "$TEST_TMP/cc.out")"
echo "ok   installed under $TEST_TMP/inst$prefix"
