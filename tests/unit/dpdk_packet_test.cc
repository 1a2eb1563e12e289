// The DPDK backend's packet codec (transport/dpdk/packet.h): EncodePacket/DecodePacket round
// trips, and every rejection with its DropReason and the message naming the field.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/crc32c.h"
#include "transport/dpdk/packet.h"

namespace blkmirror::transport::dpdk {
namespace {

constexpr uint32_t kSrcIp = 0x0A000001;  // 10.0.0.1
constexpr uint32_t kDstIp = 0x0A000002;  // 10.0.0.2
constexpr uint16_t kSrcPort = 40000;
constexpr uint16_t kDstPort = 7100;

// Offsets in the whole packet.
constexpr size_t kIp = kEthHeader;
constexpr size_t kUdp = kIp + kIpv4Header;
constexpr size_t kRel = kUdp + kUdpHeader;

Route TestRoute() {
  Route r;
  r.src_mac = {0x02, 0, 0, 0, 0, 0x01};
  r.dst_mac = {0x02, 0, 0, 0, 0, 0x02};
  r.src_ip = kSrcIp;
  r.dst_ip = kDstIp;
  r.src_port = kSrcPort;
  r.dst_port = kDstPort;
  return r;
}

std::vector<std::byte> Pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(uint8_t(seed + i * 7));
  return v;
}

RelHeader DataHeader(uint32_t frame_len, uint32_t frame_off) {
  RelHeader h;
  h.kind = PacketKind::kData;
  h.session = 0x1122334455667788;
  h.seq = 0xFFFFFFF0;
  h.ack = 77;
  h.sack = 0x8000000000000005;
  h.credit = 123;
  h.frame_no = 9;
  h.frame_off = frame_off;
  h.frame_len = frame_len;
  return h;
}

std::vector<std::byte> Encode(const RelHeader& h, std::span<const std::byte> a,
                              std::span<const std::byte> b = {}) {
  std::vector<std::byte> out(kPacketOverhead + a.size() + b.size());
  EncodePacket(out, TestRoute(), h, a, b);
  std::copy(a.begin(), a.end(), out.begin() + kPacketOverhead);
  std::copy(b.begin(), b.end(), out.begin() + kPacketOverhead + a.size());
  return out;
}

// A valid data packet of `n` payload bytes (the start of a frame of 1000 bytes).
std::vector<std::byte> DataPacket(size_t n = 200) {
  auto payload = Pattern(n, 3);
  return Encode(DataHeader(1000, 0), payload);
}

std::vector<std::byte> AckPacket(PacketKind kind = PacketKind::kAck) {
  RelHeader h;
  h.kind = kind;
  h.session = 42;
  h.ack = 5;
  h.sack = 6;
  h.credit = 7;
  return Encode(h, {});
}

// Helpers that edit a packet and repair what a test does not want to break.
void PutBe16(std::vector<std::byte>& p, size_t off, uint16_t v) {
  p[off] = std::byte(v >> 8);
  p[off + 1] = std::byte(v);
}
uint16_t GetBe16(const std::vector<std::byte>& p, size_t off) {
  return uint16_t(uint16_t(p[off]) << 8 | uint16_t(p[off + 1]));
}
void PutLe32(std::vector<std::byte>& p, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[off + i] = std::byte(v >> (8 * i));
}
void FixIpChecksum(std::vector<std::byte>& p) {
  PutBe16(p, kIp + 10, 0);
  uint32_t sum = 0;
  for (size_t i = 0; i < kIpv4Header; i += 2) sum += GetBe16(p, kIp + i);
  while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
  PutBe16(p, kIp + 10, uint16_t(~sum));
}
// Recomputes the reliability header's CRC over the header and the payload_len bytes after it.
void FixCrc(std::vector<std::byte>& p) {
  PutLe32(p, kRel + 52, 0);
  size_t payload_len = size_t(p[kRel + 6]) | size_t(p[kRel + 7]) << 8;
  size_t n = std::min(kRelHeader + payload_len, p.size() - kRel);
  PutLe32(p, kRel + 52, Crc32c(p.data() + kRel, n));
}

DecodeResult Decode(const std::vector<std::byte>& p) {
  return DecodePacket(p, kDstIp, kDstPort);
}

// Expects a rejection for `reason` whose message mentions `text` (nothing when empty).
void ExpectDrop(const std::vector<std::byte>& p, DropReason reason, const std::string& text) {
  auto r = Decode(p);
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(DropReasonName(r.error.reason), std::string(DropReasonName(reason)));
  if (!text.empty()) {
    EXPECT_NE(r.error.status.message().find(text), std::string::npos)
        << "message: " << r.error.status.message();
  }
}

TEST(DpdkPacketTest, DataRoundTripOnePiece) {
  auto payload = Pattern(300, 1);
  RelHeader h = DataHeader(1000, 64);
  auto pkt = Encode(h, payload);
  ASSERT_EQ(pkt.size(), kPacketOverhead + 300);
  auto r = Decode(pkt);
  ASSERT_TRUE(r.ok) << r.error.status.message();
  const RelHeader& g = r.view.header;
  EXPECT_EQ(g.kind, PacketKind::kData);
  EXPECT_EQ(g.payload_len, 300);
  EXPECT_EQ(g.session, h.session);
  EXPECT_EQ(g.seq, h.seq);
  EXPECT_EQ(g.ack, h.ack);
  EXPECT_EQ(g.sack, h.sack);
  EXPECT_EQ(g.credit, h.credit);
  EXPECT_EQ(g.frame_no, h.frame_no);
  EXPECT_EQ(g.frame_off, h.frame_off);
  EXPECT_EQ(g.frame_len, h.frame_len);
  EXPECT_EQ(r.view.src_mac, TestRoute().src_mac);
  EXPECT_EQ(r.view.src_ip, kSrcIp);
  EXPECT_EQ(r.view.src_port, kSrcPort);
  ASSERT_EQ(r.view.payload.size(), payload.size());
  EXPECT_TRUE(std::equal(payload.begin(), payload.end(), r.view.payload.begin()));
  EXPECT_EQ(r.view.payload.data(), pkt.data() + kPacketOverhead);  // points into the packet
  // Ethernet destination and type, IPv4 fields, UDP ports as a switch sees them.
  EXPECT_EQ(std::vector<std::byte>(pkt.begin(), pkt.begin() + 6),
            std::vector<std::byte>({std::byte{2}, {}, {}, {}, {}, std::byte{2}}));
  EXPECT_EQ(GetBe16(pkt, 12), 0x0800);
  EXPECT_EQ(GetBe16(pkt, kIp + 2), kIpv4Header + kUdpHeader + kRelHeader + 300);
  EXPECT_EQ(GetBe16(pkt, kUdp), kSrcPort);
  EXPECT_EQ(GetBe16(pkt, kUdp + 2), kDstPort);
}

TEST(DpdkPacketTest, DataRoundTripTwoPiecesIsTheConcatenation) {
  auto a = Pattern(40, 10);  // tail of a frame header
  auto b = Pattern(500, 99);
  RelHeader h = DataHeader(2000, 24);
  auto pkt = Encode(h, a, b);
  auto r = Decode(pkt);
  ASSERT_TRUE(r.ok) << r.error.status.message();
  EXPECT_EQ(r.view.header.payload_len, 540);
  std::vector<std::byte> both(a);
  both.insert(both.end(), b.begin(), b.end());
  EXPECT_TRUE(std::equal(both.begin(), both.end(), r.view.payload.begin(), r.view.payload.end()));
  // The CRC is the same as for one piece with the same bytes.
  auto one = Encode(h, both);
  EXPECT_EQ(one, pkt);
}

TEST(DpdkPacketTest, AckAndProbeRoundTrip) {
  for (PacketKind kind : {PacketKind::kAck, PacketKind::kProbe}) {
    auto r = Decode(AckPacket(kind));
    ASSERT_TRUE(r.ok) << r.error.status.message();
    EXPECT_EQ(r.view.header.kind, kind);
    EXPECT_EQ(r.view.header.payload_len, 0);
    EXPECT_EQ(r.view.header.ack, 5u);
    EXPECT_EQ(r.view.header.sack, 6u);
    EXPECT_EQ(r.view.header.credit, 7u);
    EXPECT_TRUE(r.view.payload.empty());
  }
}

TEST(DpdkPacketTest, EthernetPaddingAfterThePacketIsIgnored) {
  auto pkt = AckPacket();
  pkt.resize(pkt.size() + 6);  // a NIC may pad to its minimum frame size
  EXPECT_TRUE(Decode(pkt).ok);
}

TEST(DpdkPacketTest, TruncatedIsMalformed) {
  auto pkt = DataPacket();
  for (size_t n : {size_t{0}, size_t{13}, size_t{14}, kPacketOverhead - 1}) {
    std::vector<std::byte> cut(pkt.begin(), pkt.begin() + n);
    ExpectDrop(cut, DropReason::kMalformed, "shorter than");
  }
  // Long enough for the headers, shorter than the IPv4 total length.
  std::vector<std::byte> cut(pkt.begin(), pkt.end() - 1);
  ExpectDrop(cut, DropReason::kMalformed, "IPv4 total length");
}

TEST(DpdkPacketTest, ShortNonIpv4IsNotForUs) {
  std::vector<std::byte> arp(60);
  PutBe16(arp, 12, 0x0806);
  ExpectDrop(arp, DropReason::kNotForUs, "");
  arp.resize(20);
  ExpectDrop(arp, DropReason::kNotForUs, "");
}

TEST(DpdkPacketTest, NotIpv4OrNotUdpIsNotForUs) {
  auto ethertype = DataPacket();
  PutBe16(ethertype, 12, 0x86DD);  // IPv6
  ExpectDrop(ethertype, DropReason::kNotForUs, "");

  auto version = DataPacket();
  version[kIp] = std::byte{0x46};  // IP options
  FixIpChecksum(version);
  ExpectDrop(version, DropReason::kNotForUs, "");

  auto tcp = DataPacket();
  tcp[kIp + 9] = std::byte{6};
  FixIpChecksum(tcp);
  ExpectDrop(tcp, DropReason::kNotForUs, "");

  auto magic = DataPacket();
  magic[kRel] ^= std::byte{1};
  FixCrc(magic);
  ExpectDrop(magic, DropReason::kNotForUs, "");
}

TEST(DpdkPacketTest, WrongDestinationIsNotForUs) {
  auto pkt = DataPacket();
  EXPECT_TRUE(DecodePacket(pkt, kDstIp, kDstPort).ok);
  auto r = DecodePacket(pkt, kDstIp + 1, kDstPort);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error.reason, DropReason::kNotForUs);
  r = DecodePacket(pkt, kDstIp, kDstPort + 1);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error.reason, DropReason::kNotForUs);
}

TEST(DpdkPacketTest, BadIpv4ChecksumIsMalformed) {
  auto pkt = DataPacket();
  pkt[kIp + 8] = std::byte{63};  // TTL decremented by a router that did not fix the checksum
  ExpectDrop(pkt, DropReason::kMalformed, "IPv4 header checksum");
}

TEST(DpdkPacketTest, FragmentIsMalformed) {
  for (uint16_t frag : {uint16_t{0x2000} /* MF */, uint16_t{0x0001} /* offset */,
                        uint16_t{0x6000} /* DF|MF */}) {
    auto pkt = DataPacket();
    PutBe16(pkt, kIp + 6, frag);
    FixIpChecksum(pkt);
    ExpectDrop(pkt, DropReason::kMalformed, "fragment");
  }
  // DF alone is what the encoder sends; without DF is fine too.
  auto pkt = DataPacket();
  PutBe16(pkt, kIp + 6, 0);
  FixIpChecksum(pkt);
  EXPECT_TRUE(Decode(pkt).ok);
}

TEST(DpdkPacketTest, BadLengthsAreMalformed) {
  {
    auto pkt = DataPacket();  // IPv4 total length below the headers
    PutBe16(pkt, kIp + 2, uint16_t(kIpv4Header + kUdpHeader + kRelHeader - 1));
    FixIpChecksum(pkt);
    ExpectDrop(pkt, DropReason::kMalformed, "IPv4 total length");
  }
  {
    auto pkt = DataPacket();  // beyond the packet
    PutBe16(pkt, kIp + 2, uint16_t(GetBe16(pkt, kIp + 2) + 1));
    FixIpChecksum(pkt);
    ExpectDrop(pkt, DropReason::kMalformed, "IPv4 total length");
  }
  {
    auto pkt = DataPacket();
    PutBe16(pkt, kUdp + 4, uint16_t(GetBe16(pkt, kUdp + 4) - 1));
    ExpectDrop(pkt, DropReason::kMalformed, "UDP length");
  }
  {
    auto pkt = DataPacket();  // payload_len says one byte less than the packet carries
    pkt[kRel + 6] = std::byte(uint8_t(pkt[kRel + 6]) - 1);
    FixCrc(pkt);
    ExpectDrop(pkt, DropReason::kMalformed, "payload_len");
  }
  {
    // A shorter IPv4 length (with UDP length to match) than payload_len: the packet is read by
    // the IP length, the rest being Ethernet padding.
    auto pkt = DataPacket();
    PutBe16(pkt, kIp + 2, uint16_t(GetBe16(pkt, kIp + 2) - 10));
    PutBe16(pkt, kUdp + 4, uint16_t(GetBe16(pkt, kUdp + 4) - 10));
    FixIpChecksum(pkt);
    ExpectDrop(pkt, DropReason::kMalformed, "payload_len");
  }
}

TEST(DpdkPacketTest, EveryCoveredByteFlippedIsRejected) {
  auto pkt = DataPacket(300);
  for (size_t i = 0; i < pkt.size(); ++i) {
    auto bad = pkt;
    bad[i] ^= std::byte{0x10};
    auto r = Decode(bad);
    // Not covered by any check: the MACs (the Ethernet FCS covers them on the wire), the UDP
    // source port and the UDP checksum field (0, "none", and not verified: the CRC32C of the
    // reliability header covers the data instead).
    const bool uncovered = i < 12 || i == kUdp || i == kUdp + 1 || i == kUdp + 6 || i == kUdp + 7;
    if (uncovered) {
      EXPECT_TRUE(r.ok) << "byte " << i;
      continue;
    }
    ASSERT_FALSE(r.ok) << "byte " << i << " flipped and still accepted";
    if (i == kRel + 6 || i == kRel + 7) {  // payload_len: disagrees with the IPv4 length
      EXPECT_EQ(r.error.reason, DropReason::kMalformed) << "byte " << i;
    } else if (i >= kRel + 4) {  // past the magic: only the CRC can tell
      EXPECT_EQ(r.error.reason, DropReason::kBadCrc) << "byte " << i;
      EXPECT_NE(r.error.status.message().find("CRC"), std::string::npos);
    } else if (i >= kRel) {
      EXPECT_EQ(r.error.reason, DropReason::kNotForUs) << "byte " << i;  // magic
    } else {
      EXPECT_TRUE(r.error.reason == DropReason::kMalformed ||
                  r.error.reason == DropReason::kNotForUs)
          << "byte " << i << ": " << DropReasonName(r.error.reason);
    }
  }
  // Every single-bit flip in the reliability header and payload is rejected: a CRC mismatch,
  // except in payload_len, which the lengths check first.
  for (size_t i = kRel + 4; i < pkt.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      auto bad = pkt;
      bad[i] ^= std::byte(1 << bit);
      auto r = Decode(bad);
      ASSERT_FALSE(r.ok) << "byte " << i << " bit " << bit;
      const bool len = i == kRel + 6 || i == kRel + 7;
      EXPECT_EQ(r.error.reason, len ? DropReason::kMalformed : DropReason::kBadCrc) << i;
    }
  }
}

TEST(DpdkPacketTest, WrongVersionIsMalformed) {
  auto pkt = DataPacket();
  pkt[kRel + 4] = std::byte{2};
  FixCrc(pkt);
  ExpectDrop(pkt, DropReason::kMalformed, "version 2");
}

TEST(DpdkPacketTest, BadKindIsMalformed) {
  for (uint8_t kind : {uint8_t{0}, uint8_t{4}, uint8_t{255}}) {
    auto pkt = AckPacket();
    pkt[kRel + 5] = std::byte{kind};
    FixCrc(pkt);
    ExpectDrop(pkt, DropReason::kMalformed, "kind " + std::to_string(kind));
  }
}

TEST(DpdkPacketTest, HighIsDecodedFromItsBytes) {
  // Bytes 48..51 of the reliability header are `high` (little-endian), not reserved.
  auto pkt = DataPacket();
  PutLe32(pkt, kRel + 48, 0x01020304);
  FixCrc(pkt);
  auto r = Decode(pkt);
  ASSERT_TRUE(r.ok) << r.error.status.message();
  EXPECT_EQ(r.view.header.high, 0x01020304u);
}

TEST(DpdkPacketTest, AckWithFrameFieldsIsMalformed) {
  for (PacketKind kind : {PacketKind::kAck, PacketKind::kProbe}) {
    for (size_t off : {size_t{36}, size_t{40}, size_t{44}}) {  // frame_no, frame_off, frame_len
      auto pkt = AckPacket(kind);
      pkt[kRel + off] = std::byte{1};
      FixCrc(pkt);
      ExpectDrop(pkt, DropReason::kMalformed, "ack packet with frame fields");
    }
    // An ack carrying payload bytes (IP, UDP and payload_len consistent).
    RelHeader h;
    h.kind = kind;
    auto payload = Pattern(8, 1);
    auto pkt = Encode(h, payload);
    ExpectDrop(pkt, DropReason::kMalformed, "ack packet with frame fields");
  }
}

TEST(DpdkPacketTest, DataWithBadFrameGeometryIsMalformed) {
  struct Case {
    size_t payload;
    uint32_t frame_len, frame_off;
  };
  const Case cases[] = {
      {0, 1000, 0},                     // no payload
      {10, 63, 0},                      // frame shorter than its header
      {10, kMaxFrameLen + 1, 0},        // longer than any frame
      {10, 1000, 1000},                 // offset at the end
      {10, 1000, 5000},                 // offset past the end
      {11, 1000, 990},                  // bytes past the end
      {100, 64, 0},                     // more than the frame
      {10, 0xFFFFFFFF, 0xFFFFFFFA},     // wrap-around of offset + length
  };
  for (const Case& c : cases) {
    auto payload = Pattern(c.payload, 5);
    auto pkt = Encode(DataHeader(c.frame_len, c.frame_off), payload);
    ExpectDrop(pkt, DropReason::kMalformed, "data packet");
  }
  // The edges that are fine.
  for (const Case& c : {Case{64, 64, 0}, Case{10, 1000, 990}, Case{1, kMaxFrameLen, kMaxFrameLen - 1}}) {
    auto payload = Pattern(c.payload, 5);
    auto pkt = Encode(DataHeader(c.frame_len, c.frame_off), payload);
    EXPECT_TRUE(Decode(pkt).ok) << c.frame_len << " " << c.frame_off;
  }
}

TEST(DpdkPacketTest, AddressHelpers) {
  EXPECT_EQ(MacToString({0x02, 0xab, 0, 0, 0x10, 0xff}), "02:ab:00:00:10:ff");
  EXPECT_EQ(Ipv4ToString(kSrcIp), "10.0.0.1");
  auto ip = ParseIpv4("192.168.1.200");
  ASSERT_TRUE(ip.ok());
  EXPECT_EQ(*ip, 0xC0A801C8u);
  EXPECT_FALSE(ParseIpv4("10.0.0").ok());
  EXPECT_FALSE(ParseIpv4("nope").ok());
}

TEST(DpdkPacketTest, ChunkSizeFillsTheMtu) {
  EXPECT_EQ(ChunkSize(1500) + kPacketOverhead, 1500 + kEthHeader);
  EXPECT_GE(ChunkSize(kMinMtu), 64u);  // a frame header fits the first packet
  static_assert(kPacketOverhead == 98);
}

}  // namespace
}  // namespace blkmirror::transport::dpdk
