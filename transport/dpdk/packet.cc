#include "transport/dpdk/packet.h"

#include <arpa/inet.h>

#include <cstring>

#include <fmt/format.h>

#include "common/crc32c.h"

namespace blkmirror::transport::dpdk {
namespace {

constexpr uint16_t kEtherTypeIpv4 = 0x0800;
constexpr uint8_t kIpProtoUdp = 17;
constexpr size_t kIpOff = kEthHeader;
constexpr size_t kUdpOff = kIpOff + kIpv4Header;
constexpr size_t kRelOff = kUdpOff + kUdpHeader;
constexpr size_t kCrcOff = 52;  // within the reliability header

void PutBe16(std::byte* p, uint16_t v) {
  p[0] = std::byte(v >> 8);
  p[1] = std::byte(v);
}
void PutBe32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = std::byte(v >> (24 - 8 * i));
}
uint16_t GetBe16(const std::byte* p) { return uint16_t(uint16_t(p[0]) << 8 | uint16_t(p[1])); }
uint32_t GetBe32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = v << 8 | uint32_t(p[i]);
  return v;
}
template <typename T>
void PutLe(std::byte* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = std::byte(uint64_t(v) >> (8 * i));
}
template <typename T>
T GetLe(const std::byte* p) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(p[i]) << (8 * i);
  return T(v);
}

uint16_t Ipv4Checksum(const std::byte* hdr) {
  uint32_t sum = 0;
  for (size_t i = 0; i < kIpv4Header; i += 2) sum += GetBe16(hdr + i);
  while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
  return uint16_t(~sum);
}

void EncodeRel(std::byte* p, const RelHeader& h) {
  std::memset(p, 0, kRelHeader);
  PutLe<uint32_t>(p + 0, kPacketMagic);
  p[4] = std::byte(kPacketVersion);
  p[5] = std::byte(h.kind);
  PutLe<uint16_t>(p + 6, h.payload_len);
  PutLe<uint64_t>(p + 8, h.session);
  PutLe<uint32_t>(p + 16, h.seq);
  PutLe<uint32_t>(p + 20, h.ack);
  PutLe<uint64_t>(p + 24, h.sack);
  PutLe<uint32_t>(p + 32, h.credit);
  PutLe<uint32_t>(p + 36, h.frame_no);
  PutLe<uint32_t>(p + 40, h.frame_off);
  PutLe<uint32_t>(p + 44, h.frame_len);
  PutLe<uint32_t>(p + 48, h.high);
}

DecodeResult Fail(DropReason reason, Status status) {
  DecodeResult r;
  r.error = {reason, std::move(status)};
  return r;
}

}  // namespace

const char* DropReasonName(DropReason reason) {
  switch (reason) {
    case DropReason::kNotForUs: return "not_for_us";
    case DropReason::kMalformed: return "malformed";
    case DropReason::kBadCrc: return "bad_crc";
    case DropReason::kUnknownSession: return "unknown_session";
    case DropReason::kStale: return "stale";
    case DropReason::kOutOfOrder: return "out_of_order";
    case DropReason::kNoRoom: return "no_room";
    case DropReason::kCount: break;
  }
  return "?";
}

void EncodePacket(std::span<std::byte> out, const Route& route, const RelHeader& header,
                  std::span<const std::byte> payload) {
  EncodePacket(out, route, header, payload, {});
}

void EncodePacket(std::span<std::byte> out, const Route& route, const RelHeader& header,
                  std::span<const std::byte> payload_a, std::span<const std::byte> payload_b) {
  std::byte* p = out.data();
  const size_t payload = payload_a.size() + payload_b.size();
  std::memcpy(p, route.dst_mac.data(), 6);
  std::memcpy(p + 6, route.src_mac.data(), 6);
  PutBe16(p + 12, kEtherTypeIpv4);
  std::byte* ip = p + kIpOff;
  std::memset(ip, 0, kIpv4Header);
  ip[0] = std::byte{0x45};  // version 4, 5 words
  PutBe16(ip + 2, uint16_t(kIpv4Header + kUdpHeader + kRelHeader + payload));
  PutBe16(ip + 6, 0x4000);  // don't fragment
  ip[8] = std::byte{64};    // TTL
  ip[9] = std::byte{kIpProtoUdp};
  PutBe32(ip + 12, route.src_ip);
  PutBe32(ip + 16, route.dst_ip);
  PutBe16(ip + 10, Ipv4Checksum(ip));
  std::byte* udp = p + kUdpOff;
  PutBe16(udp, route.src_port);
  PutBe16(udp + 2, route.dst_port);
  PutBe16(udp + 4, uint16_t(kUdpHeader + kRelHeader + payload));
  PutBe16(udp + 6, 0);  // no UDP checksum (allowed on IPv4): the CRC32C below covers it
  RelHeader h = header;
  h.payload_len = uint16_t(payload);
  std::byte* rel = p + kRelOff;
  EncodeRel(rel, h);
  uint32_t crc = Crc32cExtend(kCrc32cInit, {rel, kRelHeader});
  crc = Crc32cExtend(crc, payload_a);
  crc = Crc32cExtend(crc, payload_b);
  PutLe<uint32_t>(rel + kCrcOff, Crc32cFinish(crc));
}

DecodeResult DecodePacket(std::span<const std::byte> packet, uint32_t local_ip,
                          uint16_t local_port) {
  // Addressing first: other traffic on a shared port (the kernel's TCP, ARP, ...) is not ours,
  // whatever its size; only a packet to our address and port can be malformed.
  const std::byte* p = packet.data();
  auto truncated = [&] {
    return Fail(DropReason::kMalformed,
                Status::Protocol("packet of {} bytes: shorter than the {} bytes of headers",
                                 packet.size(), kPacketOverhead));
  };
  if (packet.size() < kEthHeader) return truncated();
  if (GetBe16(p + 12) != kEtherTypeIpv4) return Fail(DropReason::kNotForUs, Status());
  if (packet.size() < kUdpOff) return truncated();
  const std::byte* ip = p + kIpOff;
  // IPv4 without options (the backend sends none), UDP, to our address.
  if (ip[0] != std::byte{0x45} || ip[9] != std::byte{kIpProtoUdp} ||
      GetBe32(ip + 16) != local_ip) {
    return Fail(DropReason::kNotForUs, Status());
  }
  if (packet.size() < kRelOff) return truncated();
  const std::byte* udp = p + kUdpOff;
  if (GetBe16(udp + 2) != local_port) return Fail(DropReason::kNotForUs, Status());
  if (packet.size() < kPacketOverhead) return truncated();
  if (Ipv4Checksum(ip) != 0) {
    return Fail(DropReason::kMalformed, Status::Protocol("bad IPv4 header checksum"));
  }
  if ((GetBe16(ip + 6) & 0x3FFF) != 0) {
    return Fail(DropReason::kMalformed, Status::Protocol("IPv4 fragment (the backend sends none)"));
  }
  const size_t ip_len = GetBe16(ip + 2);
  if (ip_len < kIpv4Header + kUdpHeader + kRelHeader || kEthHeader + ip_len > packet.size()) {
    return Fail(DropReason::kMalformed,
                Status::Protocol("IPv4 total length {} does not fit the {}-byte packet", ip_len,
                                 packet.size()));
  }
  if (GetBe16(udp + 4) != ip_len - kIpv4Header) {
    return Fail(DropReason::kMalformed, Status::Protocol("UDP length {} != IPv4 payload {}",
                                                         GetBe16(udp + 4), ip_len - kIpv4Header));
  }
  const std::byte* rel = p + kRelOff;
  if (GetLe<uint32_t>(rel) != kPacketMagic) {
    return Fail(DropReason::kNotForUs, Status());
  }
  const size_t payload_len = GetLe<uint16_t>(rel + 6);
  if (payload_len != ip_len - kIpv4Header - kUdpHeader - kRelHeader) {
    return Fail(DropReason::kMalformed,
                Status::Protocol("payload_len {} != the {} bytes the packet carries", payload_len,
                                 ip_len - kIpv4Header - kUdpHeader - kRelHeader));
  }
  std::array<std::byte, kRelHeader> copy;
  std::memcpy(copy.data(), rel, kRelHeader);
  PutLe<uint32_t>(copy.data() + kCrcOff, 0);
  uint32_t crc = Crc32cExtend(kCrc32cInit, copy);
  crc = Crc32cFinish(Crc32cExtend(crc, {rel + kRelHeader, payload_len}));
  if (crc != GetLe<uint32_t>(rel + kCrcOff)) {
    return Fail(DropReason::kBadCrc, Status::Protocol("packet CRC mismatch"));
  }
  if (uint8_t(rel[4]) != kPacketVersion) {
    return Fail(DropReason::kMalformed, Status::Protocol("packet version {} (this build speaks {})",
                                                         uint8_t(rel[4]), kPacketVersion));
  }
  DecodeResult r;
  RelHeader& h = r.view.header;
  const uint8_t kind = uint8_t(rel[5]);
  if (kind < uint8_t(PacketKind::kData) || kind > uint8_t(PacketKind::kProbe)) {
    return Fail(DropReason::kMalformed, Status::Protocol("packet kind {}", kind));
  }
  h.kind = PacketKind(kind);
  h.payload_len = uint16_t(payload_len);
  h.session = GetLe<uint64_t>(rel + 8);
  h.seq = GetLe<uint32_t>(rel + 16);
  h.ack = GetLe<uint32_t>(rel + 20);
  h.sack = GetLe<uint64_t>(rel + 24);
  h.credit = GetLe<uint32_t>(rel + 32);
  h.frame_no = GetLe<uint32_t>(rel + 36);
  h.frame_off = GetLe<uint32_t>(rel + 40);
  h.frame_len = GetLe<uint32_t>(rel + 44);
  h.high = GetLe<uint32_t>(rel + 48);
  if (h.kind != PacketKind::kData) {
    if (payload_len != 0 || h.frame_len != 0 || h.frame_off != 0 || h.frame_no != 0) {
      return Fail(DropReason::kMalformed, Status::Protocol("ack packet with frame fields"));
    }
  } else if (payload_len == 0 || h.frame_len < 64 || h.frame_len > kMaxFrameLen ||
             h.frame_off >= h.frame_len || payload_len > h.frame_len - h.frame_off) {
    return Fail(DropReason::kMalformed,
                Status::Protocol("data packet: {} bytes at {} of a {}-byte frame", payload_len,
                                 h.frame_off, h.frame_len));
  }
  std::memcpy(r.view.src_mac.data(), p + 6, 6);
  r.view.src_ip = GetBe32(ip + 12);
  r.view.src_port = GetBe16(udp);
  r.view.payload = {rel + kRelHeader, payload_len};
  r.ok = true;
  return r;
}

std::string MacToString(const MacAddr& m) {
  return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4],
                     m[5]);
}

std::string Ipv4ToString(uint32_t ip) {
  return fmt::format("{}.{}.{}.{}", ip >> 24, (ip >> 16) & 0xFF, (ip >> 8) & 0xFF, ip & 0xFF);
}

Result<uint32_t> ParseIpv4(std::string_view text) {
  in_addr a{};
  std::string s(text);
  if (inet_pton(AF_INET, s.c_str(), &a) != 1) {
    return Status::Invalid("'{}' is not an IPv4 address", text);
  }
  return ntohl(a.s_addr);
}

}  // namespace blkmirror::transport::dpdk
