#!/usr/bin/env python3
"""Forged and garbage DPDK-backend packets for t_dpdk.sh (no scapy: a raw AF_PACKET socket).

usage: dpdk_inject.py IFACE DST_PORT GO_FILE

Captures the first data packet the local push sends to UDP port DST_PORT on IFACE (the header
layout is transport/dpdk/packet.h), then waits for GO_FILE to exist and sends, to the same
MAC/IP/port, packets the replica must drop and never write: garbage, replays of the captured
packet, its seq made stale or far ahead, a wrong session, a wrong source port, bad lengths, a bad
CRC, an unknown kind. Each variant but the garbage carries a correct CRC32C unless the variant is
the CRC itself, so it is the field under test that gets it dropped. Prints what it sent.
"""
import os
import random
import socket
import struct
import sys
import time

ETH, IP, UDP = 14, 20, 8
REL = ETH + IP + UDP  # offset of the reliability header
CRC_OFF = 52


def crc32c(data, crc=0xFFFFFFFF):
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


def packet_crc(pkt):
    rel = bytearray(pkt[REL:REL + 56])
    rel[CRC_OFF:CRC_OFF + 4] = b"\0\0\0\0"
    payload_len = struct.unpack_from("<H", pkt, REL + 6)[0]
    return crc32c(bytes(rel) + bytes(pkt[REL + 56:REL + 56 + payload_len])) ^ 0xFFFFFFFF


def fix_crc(pkt):
    struct.pack_into("<I", pkt, REL + CRC_OFF, packet_crc(pkt))
    return pkt


def fix_ip_checksum(pkt):
    struct.pack_into("!H", pkt, ETH + 10, 0)
    s = sum(struct.unpack_from("!10H", pkt, ETH))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", pkt, ETH + 10, ~s & 0xFFFF)
    return pkt


def main():
    iface, dst_port, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((iface, 0))
    s.settimeout(0.2)
    deadline = time.time() + 30
    real = None
    while real is None:
        if time.time() > deadline:
            sys.exit("dpdk_inject: no data packet to UDP port %d seen on %s in 30 s" % (dst_port, iface))
        try:
            d, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if (addr[2] == socket.PACKET_OUTGOING and len(d) > REL + 56 and d[12:14] == b"\x08\x00"
                and d[ETH + 9] == 17 and struct.unpack_from("!H", d, ETH + IP + 2)[0] == dst_port
                and d[REL:REL + 4] == b"BKMD" and d[REL + 5] == 1):
            real = bytearray(d)
    if packet_crc(real) != struct.unpack_from("<I", real, REL + CRC_OFF)[0]:
        sys.exit("dpdk_inject: this script's CRC32C disagrees with the packet's: the format "
                 "changed (transport/dpdk/packet.h); update the script")
    seq = struct.unpack_from("<I", real, REL + 16)[0]
    session = struct.unpack_from("<Q", real, REL + 8)[0]
    print("captured data packet seq %d session %x, %d bytes" % (seq, session, len(real)))
    while not os.path.exists(go):
        time.sleep(0.02)

    def variant(name, edit, crc=True):
        p = bytearray(real)
        p = edit(p) or p
        if crc:
            fix_crc(p)
        return name, bytes(p)

    def set_field(fmt, off, value):
        return lambda p: struct.pack_into(fmt, p, REL + off, value)

    def flip_payload(p):
        p[REL + 60] ^= 0x40

    def bad_ip_len(p):
        struct.pack_into("!H", p, ETH + 2, len(p) - ETH + 100)
        fix_ip_checksum(p)

    rng = random.Random(12)
    out = [
        variant("replay", lambda p: None, crc=False),
        variant("stale seq, changed payload", lambda p: flip_payload(p)),
        variant("seq far ahead", set_field("<I", 16, (seq + 100000) & 0xFFFFFFFF)),
        variant("wrong session", set_field("<Q", 8, session ^ 0x5A5A)),
        variant("wrong source port", lambda p: struct.pack_into("!H", p, ETH + IP, 1234)),
        variant("payload_len too big", set_field("<H", 6, struct.unpack_from("<H", real, REL + 6)[0] + 1)),
        variant("frame_off past frame_len", set_field("<I", 40, 0x7FFFFFFF)),
        variant("bad CRC", flip_payload, crc=False),
        variant("unknown kind", set_field("B", 5, 9)),
        variant("bad version", set_field("B", 4, 77)),
        variant("IPv4 length past the packet", bad_ip_len, crc=False),
        ("truncated", bytes(real[:REL + 20])),
    ]
    for n in (20, 100, 1000):
        out.append(("garbage %d bytes" % n,
                    bytes(real[:12]) + b"\x08\x00" + bytes(rng.getrandbits(8) for _ in range(n))))
    sent = 0
    for _ in range(5):
        for name, p in out:
            s.send(p)
            sent += 1
    print("sent %d packets: %s" % (sent, "; ".join(name for name, _ in out)))


if __name__ == "__main__":
    main()
