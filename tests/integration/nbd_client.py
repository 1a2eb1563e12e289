#!/usr/bin/python3
"""NBD clients for the volume tests, beside the real tools (nbdsh, nbdcopy, qemu-img, fio).

    nbd_client.py SOCKET logwrites COUNT LOG [DEPTH [START]]
                                              write COUNT distinct 4 KiB-aligned extents (4 to 16
                                              KiB, random data) at or after byte START through
                                              libnbd, DEPTH at a time (default 1); as each write
                                              completes, append "offset length crc" to LOG
                                              (flushed). Prints "writing" first.
    nbd_client.py SOCKET loadwrites STOPFILE LOG
                                              like logwrites, 4 at a time, about 200 a second,
                                              until STOPFILE exists (or every 16 KiB slot is
                                              written once); when the connection drops it
                                              reconnects (for 60 s at most) and goes on with new
                                              slots. Prints "writing" first, then at the end
                                              "acked N reconnects K"
    nbd_client.py SOCKET checklog LOG IMAGE    every write LOG records is in IMAGE (a replica's
                                              target; "nbd": read through SOCKET): exit 0, else 1
                                              naming the first missing one
    nbd_client.py SOCKET bad                   raw-socket misbehaviour (bad magic, out of range,
                                              unaligned, oversized, truncated, vanishing mid-write);
                                              exit 0 when the server answered each as expected
    nbd_client.py SOCKET hold N                open N connections (raw handshake) and hold them
                                              until stdin closes; prints "held K" (K that got in)
    nbd_client.py SOCKET silent N              open N connections that never answer the
                                              greeting; prints "connected N", then, at the end of
                                              stdin, "closed K" (K the server closed meanwhile)

The raw client speaks the protocol from the NBD document (fixed newstyle, NBD_OPT_GO), written
here independently of the C++ codec on purpose. Run with Debian's python3 (libnbd's module).
"""
import os
import random
import socket
import struct
import sys
import zlib

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_LIST, OPT_GO = 3, 7
CMD_READ, CMD_WRITE = 0, 1
EINVAL, ENOSPC, EOVERFLOW = 22, 28, 75


def crc(data):
    return zlib.crc32(data) & 0xFFFFFFFF


# ---- libnbd ------------------------------------------------------------------------------------

def connect(sock_path):
    global nbd
    import nbd
    h = nbd.NBD()
    h.connect_unix(sock_path)
    return h


def logwrites(sock_path, count, log_path, depth=1, start=0):
    h = connect(sock_path)
    size = h.get_size()
    slot = 16 << 10
    slots = list(range(start // slot, size // slot))
    random.shuffle(slots)
    todo = slots[:count]
    print("writing", flush=True)
    with open(log_path, "w") as log:
        inflight = {}  # cookie -> (offset, length, crc, buffer)
        while todo or inflight:
            while todo and len(inflight) < depth:
                length = random.choice([4096, 8192, 12288, 16384])
                data = os.urandom(length)
                offset = todo.pop() * slot
                buf = nbd.Buffer.from_bytearray(bytearray(data))
                cookie = h.aio_pwrite(buf, offset)
                inflight[cookie] = (offset, length, crc(data), buf)
            h.poll(-1)
            for cookie in [c for c in inflight if h.aio_command_completed(c)]:
                offset, length, c, _ = inflight.pop(cookie)
                log.write(f"{offset} {length} {c}\n")
                log.flush()
    h.shutdown()
    return True


def loadwrites(sock_path, stop_path, log_path):
    import time
    h = connect(sock_path)
    size = h.get_size()
    slot = 16 << 10
    slots = list(range(size // slot))
    random.shuffle(slots)
    acked = reconnects = 0
    print("writing", flush=True)
    with open(log_path, "w") as log:
        inflight = {}
        while slots and not os.path.exists(stop_path):
            try:
                while slots and len(inflight) < 4:
                    length = random.choice([4096, 8192, 12288, 16384])
                    data = os.urandom(length)
                    offset = slots.pop() * slot
                    buf = nbd.Buffer.from_bytearray(bytearray(data))
                    inflight[h.aio_pwrite(buf, offset)] = (offset, length, crc(data), buf)
                h.poll(1000)
                for cookie in [c for c in inflight if h.aio_command_completed(c)]:
                    offset, length, c, _ = inflight.pop(cookie)
                    log.write(f"{offset} {length} {c}\n")
                    log.flush()
                    acked += 1
                time.sleep(0.02)
            except nbd.Error as e:
                # The writes in flight are not acked: their slots are not used again.
                inflight.clear()
                reconnects += 1
                print(f"reconnecting after: {e}", flush=True)
                deadline = time.monotonic() + 60
                while True:
                    try:
                        h = connect(sock_path)
                        break
                    except nbd.Error:
                        if time.monotonic() > deadline:
                            print("no connection for 60 s", flush=True)
                            return False
                        time.sleep(0.2)
        while inflight:
            h.poll(-1)
            for cookie in [c for c in inflight if h.aio_command_completed(c)]:
                offset, length, c, _ = inflight.pop(cookie)
                log.write(f"{offset} {length} {c}\n")
                acked += 1
    h.shutdown()
    print(f"acked {acked} reconnects {reconnects}", flush=True)
    return True


def checklog(log_path, image, sock_path):
    """IMAGE is a file (a replica's target), or "nbd": read through SOCKET (a volume's export)."""
    if image == "nbd":
        h = connect(sock_path)
        read = h.pread
        where = "read through " + sock_path
    else:
        img = open(image, "rb")

        def read(length, offset):
            img.seek(offset)
            return img.read(length)
        where = "in " + image
    checked = 0
    with open(log_path) as log:
        for line in log:
            parts = line.split()
            if len(parts) != 3:
                continue  # the last line may be torn by the kill
            offset, length, want = map(int, parts)
            got = crc(read(length, offset))
            if got != want:
                print(f"MISSING: the acked write of {length} bytes at {offset} is not {where} "
                      f"(crc {got:08x}, want {want:08x}) after {checked} good ones")
                return False
            checked += 1
    print(f"all {checked} acked writes are there ({where})")
    return True


# ---- raw client --------------------------------------------------------------------------------

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def raw_open(sock_path):
    """Connects and completes NBD_OPT_GO on the default export; returns (socket, size)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock_path)
    hello = recv_exact(s, 18)
    magic, opt, flags = struct.unpack(">QQH", hello)
    assert magic == NBDMAGIC and opt == IHAVEOPT, "bad greeting"
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    data = struct.pack(">IH", 0, 0)  # default export, no info requests
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
    size = None
    while True:
        hdr = recv_exact(s, 20)
        rmagic, ropt, rtype, rlen = struct.unpack(">QIII", hdr)
        assert rmagic == REPLY_MAGIC, "bad option reply magic"
        payload = recv_exact(s, rlen) if rlen else b""
        if rtype == 3 and struct.unpack(">H", payload[:2])[0] == 0:
            size = struct.unpack(">Q", payload[2:10])[0]
        if rtype == 1:
            return s, size
        if rtype & 0x80000000:
            raise RuntimeError(f"GO refused: {rtype:x} {payload!r}")


def request(cmd, offset, length, cookie, flags=0, magic=REQUEST_MAGIC):
    return struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length)


def read_reply(s):
    """(error, cookie) of the next simple reply, or None when the server closed."""
    try:
        hdr = recv_exact(s, 16)
    except (ConnectionResetError, socket.timeout):
        return None
    if hdr is None:
        return None
    magic, error, cookie = struct.unpack(">IIQ", hdr)
    assert magic == SIMPLE_REPLY_MAGIC, f"reply magic {magic:x}"
    return error, cookie


def closed(s):
    try:
        s.settimeout(10)
        return s.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        return True


def bad(sock_path):
    ok = True

    def check(name, cond, detail=""):
        nonlocal ok
        print(("ok   " if cond else "FAIL ") + name + (f": {detail}" if detail else ""))
        ok &= cond

    s, size = raw_open(sock_path)
    s.sendall(request(CMD_READ, size, 4096, 1))
    r = read_reply(s)
    check("read past the end gets EINVAL", r == (EINVAL, 1), r)
    s.sendall(request(CMD_WRITE, size - 512, 4096, 2) + b"\xaa" * 4096)
    r = read_reply(s)
    check("write past the end gets ENOSPC, its payload skipped", r == (ENOSPC, 2), r)
    s.sendall(request(CMD_WRITE, 100, 1000, 3) + b"\xbb" * 1000)
    r = read_reply(s)
    check("unaligned write gets EINVAL, its payload skipped", r == (EINVAL, 3), r)
    s.sendall(request(CMD_READ, 0, 4096, 4, flags=0x80))
    r = read_reply(s)
    check("an unknown flag gets EINVAL", r == (EINVAL, 4), r)
    s.sendall(request(42, 0, 4096, 5))
    r = read_reply(s)
    check("an unknown command gets EINVAL", r == (EINVAL, 5), r)
    s.sendall(request(CMD_READ, 0, 4096, 6))
    r = read_reply(s)
    data = recv_exact(s, 4096) if r == (0, 6) else None
    check("the connection still serves after all that", data is not None, r)
    s.sendall(request(CMD_WRITE, 0, 64 << 20, 7))
    r = read_reply(s)
    check("a write over the payload limit gets EOVERFLOW and a close",
          r == (EOVERFLOW, 7) and closed(s), r)
    s.close()

    s, size = raw_open(sock_path)
    s.sendall(request(CMD_READ, 0, 4096, 8, magic=0x12345678))
    check("a bad request magic closes the connection", closed(s))
    s.close()

    s, size = raw_open(sock_path)
    s.sendall(request(CMD_WRITE, 0, 65536, 9) + b"\xcc" * 1000)
    s.close()  # vanished in the middle of the payload
    check("a client that vanishes mid-write is dropped", True)

    s, size = raw_open(sock_path)
    s.sendall(request(CMD_READ, 0, 4096, 10)[:10])
    s.shutdown(socket.SHUT_WR)
    check("a truncated request header ends the connection", closed(s))
    s.close()

    # Each of these is answered at once (EINVAL); a server that kept reading would queue 100000
    # replies. It stops reading while its reply queue is full: the rest stays in the socket.
    s, size = raw_open(sock_path)
    s.settimeout(2)
    batch = request(CMD_READ, size, 4096, 11) * 1000
    taken = 0
    try:
        for _ in range(100):
            s.sendall(batch)
            taken += len(batch) // 28
    except socket.timeout:
        pass
    check("a client that sends without reading its replies is held back", taken < 50000,
          f"{taken} of 100000 requests taken")
    s.settimeout(30)  # (the 2 s above only tells a stalled send: reading may take longer)
    replies = 0
    while replies < taken:
        r = read_reply(s)
        if r != (EINVAL, 11):
            break
        replies += 1
    check("and once it reads, its replies come", replies == taken, f"{replies} of {taken}")
    s.close()

    # The same in the handshake: NBD_OPT_LIST over and over, its replies never read.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    recv_exact(s, 18)
    s.sendall(struct.pack(">I", 3))
    s.settimeout(2)
    batch = struct.pack(">QII", IHAVEOPT, OPT_LIST, 0) * 1000
    taken = 0
    try:
        for _ in range(100):
            s.sendall(batch)
            taken += 1000
    except socket.timeout:
        pass
    check("a client that sends options without reading the replies is held back", taken < 50000,
          f"{taken} of 100000 options taken")
    s.close()
    return ok


def hold(sock_path, n):
    conns = []
    for _ in range(n):
        try:
            s, _ = raw_open(sock_path)
            conns.append(s)
        except (AssertionError, OSError, RuntimeError, TypeError, struct.error):
            pass
    print(f"held {len(conns)}", flush=True)
    sys.stdin.read()
    return True


def silent(sock_path, n):
    conns = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        conns.append(s)
    print(f"connected {len(conns)}", flush=True)
    sys.stdin.read()
    def ended(s):  # the greeting, then the end of the stream
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass
            return True
        except (ConnectionResetError, socket.timeout):
            return False
    print(f"closed {sum(1 for s in conns if ended(s))}", flush=True)
    return True


if __name__ == "__main__":
    sock, mode = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    if mode == "logwrites":
        good = logwrites(sock, int(args[0]), args[1], int(args[2]) if len(args) > 2 else 1,
                         int(args[3]) if len(args) > 3 else 0)
    elif mode == "loadwrites":
        good = loadwrites(sock, args[0], args[1])
    elif mode == "checklog":
        good = checklog(args[0], args[1], sock)
    elif mode == "bad":
        good = bad(sock)
    elif mode == "hold":
        good = hold(sock, int(args[0]))
    elif mode == "silent":
        good = silent(sock, int(args[0]))
    else:
        sys.exit(f"unknown mode {mode}")
    sys.exit(0 if good else 1)
