#!/usr/bin/env python3
"""A hostile or odd blkmirror peer, for integration tests: speaks raw frames to `serve`.

    peer.py PORT malformed     run every malformed-input scenario; exit 0 when serve answered each
                               one as expected (an Error frame naming the problem, or a close)
    peer.py PORT hold-writer [VOLUME_BYTES]
                               open a write session and hold it until stdin closes
    peer.py PORT hold-verifier [VOLUME_BYTES]
                               open a verify session and hold it until stdin closes
    peer.py PORT hog N         open N connections that each send one Data header announcing
                               4096 bytes (no Hello, no payload) and hold them until stdin closes
    peer.py PORT hello-heartbeats SECONDS
                               connect, never send Hello, send a Heartbeat every 0.5 s; exit 0
                               when the server closes the connection within SECONDS, 1 if not
    peer.py PORT idle N        open N connections that send nothing; hold them until stdin closes
    peer.py LISTEN_PORT fake-replica MODE
                               a replica that accepts one primary, answers its Hello with HelloOk
                               and then: MODE=heartbeats sends only Heartbeats (never an Ack);
                               MODE=send-data sends the primary a Data frame; MODE=wrapping-sack
                               answers the first Data with an Ack whose selective part starts at
                               2^64 - 1 and wraps to seq 0. Prints "listening
                               PORT" once it listens (LISTEN_PORT 0: any free port); ends when
                               the primary closes.
    peer.py PORT bad-compressed TARGET
                               open a write session (protocol 2) and send Data frames with zstd
                               payloads (made by the zstd command): garbage, one that decompresses
                               to a byte fewer than its length, one whose CRC is wrong, then a
                               good one; exit 0 when the first three are NACKed (bad payload, bad
                               payload, CRC mismatch), the good one is acked, and TARGET holds
                               the good block and nothing of the others

Frames are built here from docs/protocol.md (64-byte little-endian header, CRC32C over the
header with the CRC field zeroed), independently of the C++ codec on purpose.
"""
import socket
import struct
import sys

MAGIC = 0x524D4B42
T_HELLO, T_HELLO_OK, T_ERROR, T_DATA, T_ACK, T_NACK, T_HB, T_VREQ, T_VRESP, T_BYE = range(1, 11)

def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table
_TABLE = _crc_table()

def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF

def header(ftype, body=b"", flags=0, payload_len=0, version=1, fix_crc=True):
    body = body.ljust(48, b"\0")
    h = struct.pack("<IBBHII", MAGIC, version, ftype, flags, payload_len, 0) + body
    if fix_crc:
        h = h[:12] + struct.pack("<I", crc32c(h)) + h[16:]
    return h

def hello(block_size=1 << 20, window=4, volume=64 << 20, vmin=1, vmax=1, kind=1, timeout_ms=0,
          volume_id=b"\x11" * 16):
    body = struct.pack("<HHB3xIIQ16sI", vmin, vmax, kind, block_size, window, volume, volume_id,
                       timeout_ms)
    return header(T_HELLO, body)

def heartbeat(reply=False):
    return header(T_HB, struct.pack("<QQ", 1, 0), flags=1 if reply else 0)

def data(seq, offset, length, crc, level=2):
    return header(T_DATA, struct.pack("<QQII", seq, offset, length, crc), flags=level,
                  payload_len=length)

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf

def read_frames(s, timeout=5.0):
    """Frames until the server closes: list of (type, body, payload)."""
    s.settimeout(timeout)
    frames = []
    try:
        while True:
            h = recv_exact(s, 64)
            if h is None:
                return frames
            _, _, ftype, _, plen, _ = struct.unpack("<IBBHII", h[:16])
            payload = recv_exact(s, plen) if plen else b""
            frames.append((ftype, h[16:], payload or b""))
    except (socket.timeout, ConnectionResetError):
        return frames

def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)

def open_session(s, **kw):
    """Sends a Hello and waits for the HelloOk: only then may a primary send Data."""
    s.sendall(hello(**kw))
    h = recv_exact(s, 64)
    if h is None or h[5] != T_HELLO_OK:
        raise RuntimeError("no HelloOk")

def expect_error(port, name, chunks, text, close_after=False, opened=False):
    s = connect(port)
    if opened:
        open_session(s)
    try:
        for c in chunks:
            s.sendall(c)
        if close_after:
            s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed while we were still sending: what it sent first still counts
    frames = read_frames(s)
    s.close()
    errors = [p.decode(errors="replace") for t, _, p in frames if t == T_ERROR]
    if text is None:
        print(f"ok   {name}: closed ({len(frames)} frames)")
        return True
    if any(text in e for e in errors):
        print(f"ok   {name}: {errors[0]}")
        return True
    print(f"FAIL {name}: expected an Error containing {text!r}, got {errors or frames}")
    return False

def malformed(port):
    one_mib = 1 << 20
    block = bytes(range(256)) * 4096
    ok = True
    # Bytes that are not blkmirror at all; the server closes (its log names the reason).
    ok &= expect_error(port, "http garbage", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".ljust(64, b"x")], None)
    ok &= expect_error(port, "truncated header", [hello()[:20]], None, close_after=True)
    ok &= expect_error(port, "frame version 2", [header(T_HELLO, version=2, fix_crc=False)], None)
    bad = bytearray(hello()); bad[30] ^= 0x40
    ok &= expect_error(port, "header CRC mismatch", [bytes(bad)], None)
    ok &= expect_error(port, "unknown type", [header(99)], None)
    # Well-formed frames with bad contents: an Error frame says what was wrong.
    ok &= expect_error(port, "block size 3000", [hello(block_size=3000)], "block size 3000")
    ok &= expect_error(port, "window 0", [hello(window=0)], "window 0")
    ok &= expect_error(port, "volume 0", [hello(volume=0)], "volume size is 0")
    ok &= expect_error(port, "version 7..9", [hello(vmin=7, vmax=9)], "protocol version mismatch")
    # Data before the session is admitted: the transport closes before taking a buffer.
    ok &= expect_error(port, "data before hello", [data(0, 0, one_mib, 0), block], None)
    ok &= expect_error(port, "data right behind the hello", [hello(), data(0, 0, one_mib, 0), block],
                       None)
    ok &= expect_error(port, "offset beyond volume",
                       [data(0, 128 << 20, one_mib, crc32c(block)), block],
                       "is not a block of the", opened=True)
    ok &= expect_error(port, "short block", [data(0, 0, 4096, 0), block[:4096]],
                       "does not match the block size", opened=True)
    ok &= expect_error(port, "seq far ahead",
                       [data(100000, 0, one_mib, crc32c(block)), block],
                       "outside the window", opened=True)
    ok &= expect_error(port, "truncated payload", [data(0, 0, one_mib, 0), block[:1000]],
                       None, close_after=True, opened=True)
    ok &= expect_error(port, "oversized control payload", [header(T_ERROR, payload_len=1 << 20)], None)
    ok &= expect_error(port, "ack from a primary", [hello(), header(T_ACK, b"\x01")], "unexpected Ack")
    # A bad CRC is not a protocol error: the block is NACKed (and never written).
    s = connect(port)
    open_session(s)
    s.sendall(data(0, 0, one_mib, crc32c(block) ^ 1) + block)
    s.settimeout(5)
    frames = [T_HELLO_OK]
    while len(frames) < 2:
        h = recv_exact(s, 64)
        if h is None:
            break
        frames.append(struct.unpack("<IBBHII", h[:16])[2])
    s.close()
    if frames == [T_HELLO_OK, T_NACK]:
        print("ok   bad data CRC: NACK")
    else:
        print(f"FAIL bad data CRC: got frame types {frames}")
        ok = False
    return ok

def hold_session(port, volume=64 << 20, kind=1):
    s = connect(port)
    s.sendall(hello(volume=volume, kind=kind))
    h = recv_exact(s, 64)
    if h is None or h[5] != T_HELLO_OK:
        print("hold: no HelloOk", file=sys.stderr)
        return False
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    s.close()
    return True

def hog(port, n):
    conns = []
    for _ in range(n):
        s = connect(port)
        s.sendall(data(0, 0, 4096, 0))  # the header only: the payload never comes
        conns.append(s)
    print(f"holding {n}", flush=True)
    sys.stdin.read()
    return True

def idle(port, n):
    conns = [connect(port) for _ in range(n)]
    print(f"holding {n}", flush=True)
    sys.stdin.read()
    return True

def hello_heartbeats(port, seconds):
    import time
    s = connect(port)
    s.settimeout(0.5)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            s.sendall(heartbeat())
        except (BrokenPipeError, ConnectionResetError):
            print("closed by the server (send failed)")
            return True
        try:
            if s.recv(4096) == b"":
                print("closed by the server")
                return True
        except socket.timeout:
            pass
        except ConnectionResetError:
            print("reset by the server")
            return True
    print(f"still open after {seconds} s of heartbeats without a Hello")
    return False

def fake_replica(port, mode):
    import threading, time
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(1)
    print(f"listening {ls.getsockname()[1]}", flush=True)
    s, _ = ls.accept()
    h = recv_exact(s, 64)
    if h is None or h[5] != T_HELLO:
        return False
    volume = struct.unpack("<Q", h[16 + 16:16 + 24])[0]
    body = struct.pack("<H2xIQ16s", 1, 64 << 20, volume, b"\x22" * 16)
    s.sendall(header(T_HELLO_OK, body))
    if mode == "send-data":
        block = b"\0" * 4096
        s.sendall(data(0, 0, 4096, crc32c(block)) + block)
    if mode == "wrapping-sack":
        while True:
            h = read_one(s)
            if h is None:
                return True
            if h[5] == T_DATA:
                break
        # level durable, cumulative 0, sack_base 2^64 - 1, bit 1: "seq 2^64", wrapped to 0.
        s.sendall(header(T_ACK, struct.pack("<B7xQQQ", 2, 0, (1 << 64) - 1, 0b10)))
    stop = threading.Event()
    def beat():
        while not stop.is_set():
            try:
                s.sendall(heartbeat())
            except OSError:
                return
            time.sleep(0.3)
    t = threading.Thread(target=beat, daemon=True)
    t.start()
    s.settimeout(None)
    try:
        while read_one(s) is not None:  # read and drop whatever the primary sends
            pass
    except OSError:
        pass
    stop.set()
    return True

T_NACK_BAD_PAYLOAD, T_NACK_CRC = 3, 1
CODEC_ZSTD = 2 << 3

def bad_compressed(port, target):
    import subprocess
    def zstd(raw):
        return subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True,
                              check=True).stdout
    def compressed(seq, offset, length, crc, payload):
        return header(T_DATA, struct.pack("<QQII", seq, offset, length, crc), flags=2 | CODEC_ZSTD,
                      payload_len=len(payload)) + payload
    s = connect(port)
    s.sendall(hello(block_size=4096, volume=64 << 10, vmin=1, vmax=2))
    h = recv_exact(s, 64)
    if h is None or h[5] != T_HELLO_OK:
        print("FAIL no HelloOk")
        return False
    flags = struct.unpack("<H", h[6:8])[0]
    if not flags & 1:
        print(f"FAIL the replica's HelloOk does not offer compressed payloads (flags {flags:#x})")
        return False
    good = bytes(range(256)) * 16
    frames = [
        compressed(0, 0, 4096, crc32c(good), b"\x28\xb5\x2f\xfd" + b"garbage" * 20),
        compressed(1, 4096, 4096, crc32c(good), zstd(good[:4095])),
        compressed(2, 8192, 4096, crc32c(good) ^ 1, zstd(good)),
        compressed(3, 12288, 4096, crc32c(good), zstd(good)),
    ]
    for f in frames:
        s.sendall(f)
    s.settimeout(5)
    nacks, good_acked = {}, False
    while len(nacks) < 3 or not good_acked:
        h = recv_exact(s, 64)
        if h is None:
            break
        ftype, plen = h[5], struct.unpack("<I", h[8:12])[0]
        if plen:
            recv_exact(s, plen)
        if ftype == T_NACK:
            seq, _, reason = struct.unpack("<QQI", h[16:36])
            nacks[seq] = reason
        elif ftype == T_ACK:
            cumulative, base, bits = struct.unpack("<QQQ", h[24:48])
            good_acked |= cumulative > 3 or (base <= 3 < base + 64 and bits >> (3 - base) & 1)
    s.close()
    ok = nacks == {0: T_NACK_BAD_PAYLOAD, 1: T_NACK_BAD_PAYLOAD, 2: T_NACK_CRC} and good_acked
    print(f"{'ok  ' if ok else 'FAIL'} NACKs by seq: {nacks} (expected bad payload for 0 and 1, "
          f"CRC mismatch for 2); the good one acked: {good_acked}")
    with open(target, "rb") as t:
        blocks = [t.read(4096) for _ in range(4)]
    written = blocks[3] == good and all(b != good for b in blocks[:3])
    print(f"{'ok  ' if written else 'FAIL'} the target holds the good block only")
    return ok and written

def read_one(s):
    h = recv_exact(s, 64)
    if h is None:
        return None
    plen = struct.unpack("<I", h[8:12])[0]
    if plen and recv_exact(s, plen) is None:
        return None
    return h

if __name__ == "__main__":
    port, mode = int(sys.argv[1]), sys.argv[2]
    args = sys.argv[3:]
    if mode == "malformed":
        ok = malformed(port)
    elif mode == "hold-writer":
        ok = hold_session(port, *map(int, args), kind=1)
    elif mode == "hold-verifier":
        ok = hold_session(port, *map(int, args), kind=2)
    elif mode == "hog":
        ok = hog(port, int(args[0]))
    elif mode == "idle":
        ok = idle(port, int(args[0]))
    elif mode == "hello-heartbeats":
        ok = hello_heartbeats(port, float(args[0]))
    elif mode == "fake-replica":
        ok = fake_replica(port, args[0])
    elif mode == "bad-compressed":
        ok = bad_compressed(port, args[0])
    else:
        sys.exit(f"unknown mode {mode}")
    sys.exit(0 if ok else 1)
