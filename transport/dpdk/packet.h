// The DPDK backend's packet format: Ethernet II + IPv4 + UDP + a 56-byte reliability header,
// then up to one MTU of a frame's bytes. Plain Ethernet/IPv4/UDP so packets cross an ordinary
// L2/L3 switch; the reliability header is the backend's own (docs/protocol.md, "DPDK").
//
//   off  size  field (little-endian, after the 42 bytes of Ethernet/IPv4/UDP headers)
//   0    4     magic       'BKMD' (0x444D4B42)
//   4    1     version     kPacketVersion
//   5    1     kind        PacketKind: kData carries frame bytes; kAck and kProbe only acks
//   6    2     payload_len frame bytes in this packet (0 for kAck)
//   8    8     session     the receiver's session id (from its TransportHello): packets whose
//                          session no open connection has are dropped and counted
//   16   4     seq         kData: this packet's sequence number (per connection and direction)
//   20   4     ack         every packet the sender received below this seq is acknowledged
//   24   8     sack        bit i: packet ack + 1 + i was received too
//   32   4     credit      the sender of this packet accepts frames numbered below this
//   36   4     frame_no    kData: the frame these bytes belong to (per direction, from 0)
//   40   4     frame_off   kData: where they start in the frame (its 64-byte header included)
//   44   4     frame_len   kData: the whole frame's size (64-byte header + payload)
//   48   4     high        one past the highest seq the sender of this packet received
//   52   4     crc         CRC32C of this header (crc zeroed) and the payload
//
// Everything here is pure: no DPDK, no state, so the decoder is unit-tested and fuzzed alone.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"

namespace blkmirror::transport::dpdk {

inline constexpr uint32_t kPacketMagic = 0x444D4B42;  // "BKMD" in little-endian byte order
inline constexpr uint8_t kPacketVersion = 1;
inline constexpr size_t kEthHeader = 14;
inline constexpr size_t kIpv4Header = 20;
inline constexpr size_t kUdpHeader = 8;
inline constexpr size_t kRelHeader = 56;
// Everything in front of a packet's frame bytes.
inline constexpr size_t kPacketOverhead = kEthHeader + kIpv4Header + kUdpHeader + kRelHeader;
// IP MTUs the backend accepts: IPv4's minimum useful one up to jumbo frames.
inline constexpr uint32_t kMinMtu = 576;
inline constexpr uint32_t kMaxMtu = 9000;
// The largest frame the backend carries (a block of proto::kMaxBlockSize plus its header).
inline constexpr uint32_t kMaxFrameLen = (64u << 20) + 64;

using MacAddr = std::array<uint8_t, 6>;

// kProbe: an ack that asks for one back (a sender blocked on frame credit sends it every RTO,
// so a lost credit update cannot stall the connection).
enum class PacketKind : uint8_t { kData = 1, kAck = 2, kProbe = 3 };

// Addressing of one direction of a connection: who sends, who receives, where.
struct Route {
  MacAddr src_mac{};
  MacAddr dst_mac{};
  uint32_t src_ip = 0;  // host byte order
  uint32_t dst_ip = 0;
  uint16_t src_port = 0;
  uint16_t dst_port = 0;
};

struct RelHeader {
  PacketKind kind = PacketKind::kData;
  uint16_t payload_len = 0;
  uint64_t session = 0;
  uint32_t seq = 0;
  uint32_t ack = 0;
  uint64_t sack = 0;
  uint32_t credit = 0;
  uint32_t frame_no = 0;
  uint32_t frame_off = 0;
  uint32_t frame_len = 0;
  uint32_t high = 0;
};

// Bytes of frame data one packet carries at IP MTU `mtu`.
inline constexpr uint32_t ChunkSize(uint32_t mtu) {
  return mtu - static_cast<uint32_t>(kIpv4Header + kUdpHeader + kRelHeader);
}

// Writes the kPacketOverhead header bytes of a packet into `out` (whose size must be at least
// kPacketOverhead); `payload` is the frame bytes that follow it in the packet, covered by the
// CRC. The IPv4 header checksum is computed here.
void EncodePacket(std::span<std::byte> out, const Route& route, const RelHeader& header,
                  std::span<const std::byte> payload);
// The same, for a payload in two pieces (the tail of a frame header and the start of a block).
void EncodePacket(std::span<std::byte> out, const Route& route, const RelHeader& header,
                  std::span<const std::byte> payload_a, std::span<const std::byte> payload_b);

// A packet that passed every check that needs no connection state.
struct PacketView {
  MacAddr src_mac{};
  uint32_t src_ip = 0;
  uint16_t src_port = 0;
  RelHeader header;
  std::span<const std::byte> payload;  // header.payload_len bytes, inside the packet
};

// Why a packet was dropped; each has a counter in the transport's statistics.
enum class DropReason : uint8_t {
  kNotForUs,      // not IPv4/UDP to our address and port (other traffic on a shared port)
  kMalformed,     // truncated, bad IPv4 header or checksum, bad lengths, reserved bits
  kBadCrc,        // corrupted on the way
  kUnknownSession,
  kStale,         // a duplicate or a seq outside the receive window
  kOutOfOrder,    // ahead of the frame being assembled, or before its first packet
  kNoRoom,        // no buffer or frame credit for it now (the sender retransmits)
  kCount,
};
const char* DropReasonName(DropReason reason);

// Checks and decodes one received Ethernet frame addressed to `local_ip`:`local_port`. On error,
// the DropReason and a message naming the field and value.
struct DecodeError {
  DropReason reason;
  Status status;
};
struct DecodeResult {
  bool ok = false;
  PacketView view;
  DecodeError error{DropReason::kMalformed, Status()};
};
DecodeResult DecodePacket(std::span<const std::byte> packet, uint32_t local_ip,
                          uint16_t local_port);

// "02:00:00:00:00:01" and "10.0.0.1" for messages.
std::string MacToString(const MacAddr& mac);
std::string Ipv4ToString(uint32_t ip);
Result<uint32_t> ParseIpv4(std::string_view text);

}  // namespace blkmirror::transport::dpdk
