#!/usr/bin/python3
"""Plays systemd's side of sd_notify for one command, for real: a datagram socket bound to a path,
NOTIFY_SOCKET and WATCHDOG_USEC in the command's environment.

    notify_listen.py SOCKET_PATH WATCHDOG_USEC CHECK -- COMMAND...

CHECK is what must already work when READY=1 arrives: tcp:HOST:PORT or unix:PATH (a connect).
Once two WATCHDOG=1 have come after READY=1 it sends SIGTERM and waits for the exit (30 s at
most in all: no verdict hangs on how fast the pings come). It prints one line per notification
("+0.123s READY=1|STATUS=...") and exits 0 when: READY=1 came once, the CHECK connect succeeded
at that moment, WATCHDOG=1 came at least twice after it, STOPPING=1 came after the SIGTERM and
the command exited 0. Otherwise it says what was wrong and exits 1.
"""
import os
import signal
import socket
import subprocess
import sys
import time


def main():
    sock_path, watchdog_usec, check = sys.argv[1:4]
    assert sys.argv[4] == "--"
    cmd = sys.argv[5:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC=watchdog_usec)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    problems = []
    ready_at = None
    watchdog_after_ready = 0
    stopping = False
    term_sent_at = None

    def connect_check():
        kind, _, where = check.partition(":")
        if kind == "tcp":
            host, _, port = where.rpartition(":")
            c = socket.create_connection((host, int(port)), timeout=2)
        else:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(2)
            c.connect(where)
        c.close()

    s.settimeout(0.1)
    deadline = t0 + 30
    while time.monotonic() < deadline:
        try:
            msg = s.recv(4096).decode()
        except socket.timeout:
            msg = None
        now = time.monotonic()
        if msg is not None:
            print(f"+{now - t0:.3f}s {msg.replace(chr(10), '|')}", flush=True)
            fields = msg.split("\n")
            if "READY=1" in fields:
                if ready_at is not None:
                    problems.append("READY=1 came twice")
                ready_at = now
                try:
                    connect_check()
                except OSError as e:
                    problems.append(f"READY=1 came before {check} accepted: {e}")
            if "WATCHDOG=1" in fields and ready_at is not None:
                watchdog_after_ready += 1
            if "STOPPING=1" in fields:
                if term_sent_at is None:
                    problems.append("STOPPING=1 before any SIGTERM")
                stopping = True
        if ready_at is not None and term_sent_at is None and watchdog_after_ready >= 2:
            proc.send_signal(signal.SIGTERM)
            term_sent_at = now
        if proc.poll() is not None:
            # Drain what it sent before it went.
            s.settimeout(0.2)
            try:
                while True:
                    msg = s.recv(4096).decode()
                    print(f"+{time.monotonic() - t0:.3f}s {msg.replace(chr(10), '|')}", flush=True)
                    if "STOPPING=1" in msg.split("\n"):
                        stopping = True
            except socket.timeout:
                pass
            break
    else:
        proc.kill()
        problems.append("the command did not exit within 30 s")
    rc = proc.wait()
    if ready_at is None:
        problems.append("no READY=1")
    if watchdog_after_ready < 2:
        problems.append(f"{watchdog_after_ready} WATCHDOG=1 after READY=1 (at least 2 expected "
                        f"with WATCHDOG_USEC={watchdog_usec})")
    if not stopping:
        problems.append("no STOPPING=1")
    if rc != 0:
        problems.append(f"exit status {rc}")
    for p in problems:
        print(f"notify_listen: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
