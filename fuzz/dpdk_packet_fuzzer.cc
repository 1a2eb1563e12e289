// dpdk_packet_fuzzer: the DPDK backend's packet decoder (transport/dpdk/packet.h) on arbitrary
// Ethernet frames, and the reliability layer (transport/dpdk/channel.h) on the packets that
// decode, with its TakeReceived / Transmit / Tick / Queue driven by the input.
//
// Input: fuzz/input_formats.h, dpdk_packet_input.
//
// Properties (a violation traps):
//   - DecodePacket: a rejection has a decoder's reason (never a channel's: stale, out of order,
//     no room, unknown session) and, unless kNotForUs, an error message; an accepted packet's
//     payload lies inside the packet and is payload_len bytes, its kind is known, an ack or
//     probe has no frame fields, a data packet's bytes lie within its frame; re-encoding the
//     decoded header and payload gives the same reliability header bytes (the header is
//     canonical: every byte is a field or a checked zero).
//   - Channel: a Data frame is handed out only on an accepted, trusted channel, in a buffer of
//     its pool, of at most the pool's buffer size; a control frame has no buffer and at most
//     kMaxControlPayload bytes; every received header passes DecodePrefix with a payload length
//     that fits. Acked frames come back once each, in the order queued. Every packet Transmit
//     makes encodes and decodes (at the peer's address) to the same header, a data packet
//     carrying at most one chunk; a failed channel transmits nothing. Every pool buffer is back
//     once the channel and what was taken from it are gone.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "fuzz/input_formats.h"
#include "io/buffer_pool.h"
#include "proto/frame.h"
#include "transport/dpdk/channel.h"
#include "transport/dpdk/packet.h"
#include "transport/transport.h"

namespace blkmirror::fuzz {
namespace {

namespace in = dpdk_packet_input;
using transport::WorkItem;
using namespace transport::dpdk;

constexpr uint32_t kPeerIp = 0x0A000001;
constexpr uint16_t kPeerPort = 41000;
constexpr size_t kBufferSize = 64 * 1024;
constexpr size_t kBuffers = 4;
constexpr size_t kIp = kEthHeader;
constexpr size_t kUdp = kIp + kIpv4Header;
constexpr size_t kRel = kUdp + kUdpHeader;

io::BufferPool& Pool() {
  static io::BufferPool* pool = [] {
    auto p = io::BufferPool::Create(kBufferSize, kBuffers, io::HugePages::kNever);
    if (!p.ok()) {
      std::fprintf(stderr, "fuzz: cannot create the buffer pool: %s\n",
                   p.status().message().c_str());
      std::exit(1);
    }
    return std::move(p).value().release();
  }();
  return *pool;
}

// Block data the channel sends from (its contents do not matter).
std::span<const std::byte> TxBytes() {
  static const std::vector<std::byte> bytes(kBufferSize, std::byte{0x5A});
  return bytes;
}

Route PeerToUs() {
  Route r;
  r.src_mac = {0x02, 0, 0, 0, 0, 0x01};
  r.dst_mac = {0x02, 0, 0, 0, 0, 0x02};
  r.src_ip = kPeerIp;
  r.dst_ip = in::kLocalIp;
  r.src_port = kPeerPort;
  r.dst_port = in::kLocalPort;
  return r;
}

Route UsToPeer() {
  Route r = PeerToUs();
  std::swap(r.src_mac, r.dst_mac);
  std::swap(r.src_ip, r.dst_ip);
  std::swap(r.src_port, r.dst_port);
  return r;
}

void PutBe16(std::byte* p, uint16_t v) {
  p[0] = std::byte(v >> 8);
  p[1] = std::byte(v);
}
uint16_t GetBe16(const std::byte* p) { return uint16_t(uint16_t(p[0]) << 8 | uint16_t(p[1])); }
void PutBe32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = std::byte(v >> (24 - 8 * i));
}

// kFixIp: makes the Ethernet, IPv4 and UDP headers those of a packet to us of this size.
void FixIp(std::vector<std::byte>& pkt) {
  if (pkt.size() < kPacketOverhead) return;
  std::byte* p = pkt.data();
  PutBe16(p + 12, 0x0800);
  std::byte* ip = p + kIp;
  ip[0] = std::byte{0x45};
  const size_t ip_len = std::min<size_t>(pkt.size() - kEthHeader, 0xFFFF);
  PutBe16(ip + 2, uint16_t(ip_len));
  PutBe16(ip + 6, GetBe16(ip + 6) & 0x4000);
  ip[9] = std::byte{17};
  PutBe32(ip + 16, in::kLocalIp);
  PutBe16(ip + 10, 0);
  uint32_t sum = 0;
  for (size_t i = 0; i < kIpv4Header; i += 2) sum += GetBe16(ip + i);
  while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
  PutBe16(ip + 10, uint16_t(~sum));
  PutBe16(p + kUdp + 2, in::kLocalPort);
  PutBe16(p + kUdp + 4, uint16_t(ip_len - kIpv4Header));
}

// kFixCrc: magic, version, payload_len (the bytes after the headers) and the CRC.
void FixCrc(std::vector<std::byte>& pkt) {
  if (pkt.size() < kPacketOverhead) return;
  std::byte* rel = pkt.data() + kRel;
  const size_t payload = std::min<size_t>(pkt.size() - kPacketOverhead, 0xFFFF);
  for (int i = 0; i < 4; ++i) rel[i] = std::byte(kPacketMagic >> (8 * i));
  rel[4] = std::byte{kPacketVersion};
  rel[6] = std::byte(payload);
  rel[7] = std::byte(payload >> 8);
  for (int i = 0; i < 4; ++i) rel[52 + i] = std::byte{0};
  const uint32_t crc = Crc32c(rel, kRelHeader + payload);
  for (int i = 0; i < 4; ++i) rel[52 + i] = std::byte(crc >> (8 * i));
}

std::vector<std::byte> Encode(const Route& route, const RelHeader& h,
                              std::span<const std::byte> a, std::span<const std::byte> b = {}) {
  std::vector<std::byte> pkt(kPacketOverhead + a.size() + b.size());
  EncodePacket(pkt, route, h, a, b);
  std::copy(a.begin(), a.end(), pkt.begin() + kPacketOverhead);
  std::copy(b.begin(), b.end(), pkt.begin() + kPacketOverhead + a.size());
  return pkt;
}

// The decoder's properties; returns the view of an accepted packet.
std::optional<PacketView> CheckedDecode(std::span<const std::byte> pkt) {
  DecodeResult r = DecodePacket(pkt, in::kLocalIp, in::kLocalPort);
  if (!r.ok) {
    const DropReason why = r.error.reason;
    FUZZ_CHECK(why == DropReason::kNotForUs || why == DropReason::kMalformed ||
                   why == DropReason::kBadCrc,
               "decoder gave a channel's drop reason {}", DropReasonName(why));
    FUZZ_CHECK(why == DropReason::kNotForUs || !r.error.status.ok(),
               "{} rejection without a message", DropReasonName(why));
    return std::nullopt;
  }
  const PacketView& v = r.view;
  const RelHeader& h = v.header;
  FUZZ_CHECK(v.payload.size() == h.payload_len, "payload {} bytes, payload_len {}",
             v.payload.size(), h.payload_len);
  FUZZ_CHECK(v.payload.data() == pkt.data() + kPacketOverhead &&
                 kPacketOverhead + v.payload.size() <= pkt.size(),
             "payload outside the packet");
  if (h.kind == PacketKind::kData) {
    FUZZ_CHECK(h.payload_len > 0 && h.frame_len >= proto::kHeaderSize &&
                   h.frame_len <= kMaxFrameLen && h.frame_off < h.frame_len &&
                   uint64_t{h.frame_off} + h.payload_len <= h.frame_len,
               "data packet accepted with {} bytes at {} of {}", h.payload_len, h.frame_off,
               h.frame_len);
  } else {
    FUZZ_CHECK(h.kind == PacketKind::kAck || h.kind == PacketKind::kProbe, "kind {}",
               int(h.kind));
    FUZZ_CHECK(h.payload_len == 0 && h.frame_no == 0 && h.frame_off == 0 && h.frame_len == 0,
               "ack packet with frame fields accepted");
  }
  // Canonical: the same header and payload encode to the same reliability header bytes.
  auto again = Encode(PeerToUs(), h, v.payload);
  FUZZ_CHECK(std::equal(again.begin() + kRel, again.begin() + kPacketOverhead,
                        pkt.begin() + kRel),
             "decoded header does not re-encode to the same bytes");
  return v;
}

class Run {
 public:
  explicit Run(uint8_t setup) {
    config_.chunk = ChunkSize(in::kChunkMtus[setup & in::kSetupChunkMask]);
    config_.send_queue_depth = 16;
    config_.dead_after_ns = 2'000'000'000;
    accepted_ = (setup & in::kSetupConnecting) == 0;
    channel_ = std::make_unique<Channel>(config_, &Pool(), accepted_, "peer 10.0.0.1:41000");
    if (setup & in::kSetupTrust) Trust();
  }

  ~Run() {
    channel_.reset();
    held_.clear();
    FUZZ_CHECK(Pool().available() == Pool().count(), "{} of {} pool buffers never came back",
               Pool().count() - Pool().available(), Pool().count());
  }

  void Trust() {
    channel_->Trust();
    trusted_ = accepted_;
  }

  void Packet(std::vector<std::byte> pkt, uint8_t flags) {
    if (flags & in::kFixIp) FixIp(pkt);
    if (flags & in::kFixCrc) FixCrc(pkt);
    Deliver(pkt);
  }

  void Deliver(std::span<const std::byte> pkt) {
    auto v = CheckedDecode(pkt);
    if (!v) return;
    const bool was_failed = channel_->failed();
    const size_t ready = channel_->ready();
    channel_->Receive(now_, *v);
    if (was_failed) FUZZ_CHECK(channel_->ready() == ready, "a failed channel received a frame");
  }

  void Tick(uint16_t dt) {
    now_ += uint64_t{dt} * 100'000;
    channel_->Tick(now_);
    TakeAcked();
  }

  void Take(uint8_t flags) {
    channel_->TakeReceived([&](RxFrame& f) {
      auto prefix = proto::DecodePrefix(f.header);
      FUZZ_CHECK(prefix.ok(), "received a frame whose header does not decode: {}",
                 prefix.status().message());
      if (proto::CarriesBlockData(prefix->type)) {
        FUZZ_CHECK(accepted_ && trusted_, "a Data frame on a{} {} channel",
                   trusted_ ? "" : "n untrusted", accepted_ ? "accepted" : "connecting");
        FUZZ_CHECK(f.data && f.data.pool() == &Pool(), "a Data frame without a pool buffer");
        FUZZ_CHECK(prefix->payload_len <= Pool().buffer_size(), "Data of {} bytes in a buffer",
                   prefix->payload_len);
        if (flags & in::kTakeMove) held_.push_back(std::move(f.data));
      } else {
        FUZZ_CHECK(!f.data, "a {} frame with a pool buffer", proto::FrameTypeName(prefix->type));
        FUZZ_CHECK(prefix->payload_len <= proto::kMaxControlPayload, "control payload {}",
                   prefix->payload_len);
      }
    });
    if (flags & in::kTakeRelease) held_.clear();
  }

  void Transmit(uint8_t n) {
    std::array<TxPacket, 64> out;
    const size_t got = channel_->Transmit(now_, std::span(out).first(n % 64 + 1));
    FUZZ_CHECK(got <= size_t{n % 64u + 1}, "Transmit overfilled");
    if (channel_->failed()) FUZZ_CHECK(got == 0, "a failed channel transmits");
    for (size_t i = 0; i < got; ++i) {
      const TxPacket& p = out[i];
      const size_t len = p.a.size() + p.b.size();
      if (p.header.kind == PacketKind::kData) {
        FUZZ_CHECK(len > 0 && len <= config_.chunk, "data packet of {} bytes, chunk {}", len,
                   config_.chunk);
      } else {
        FUZZ_CHECK(len == 0, "ack packet with {} bytes", len);
      }
      auto pkt = Encode(UsToPeer(), p.header, p.a, p.b);
      DecodeResult r = DecodePacket(pkt, kPeerIp, kPeerPort);
      FUZZ_CHECK(r.ok, "a packet the channel made does not decode: {} {}",
                 DropReasonName(r.error.reason), r.error.status.message());
      const RelHeader& h = r.view.header;
      FUZZ_CHECK(h.kind == p.header.kind && h.seq == p.header.seq && h.ack == p.header.ack &&
                     h.sack == p.header.sack && h.credit == p.header.credit &&
                     h.frame_no == p.header.frame_no && h.frame_off == p.header.frame_off &&
                     h.frame_len == p.header.frame_len && h.payload_len == len,
                 "a packet the channel made decodes to another header");
    }
  }

  void Queue(uint8_t type, uint16_t len) {
    WorkItem item;
    item.tag = next_tag_;
    item.signal = true;
    proto::Frame f;
    std::string text;
    if (type & 1) {
      f.flags = static_cast<uint16_t>(proto::AckLevel::kReceived);
      f.payload_len = len % kBufferSize;
      f.body = proto::Data{next_tag_, 0, f.payload_len, 0};
      item.data = TxBytes().data();
    } else {
      f.payload_len = len % (proto::kMaxErrorText + 1);
      f.body = proto::Error{1};
      text.assign(f.payload_len, 'e');
      item.control = std::as_bytes(std::span(text));
    }
    item.header = proto::Encode(f);
    auto prefix = transport::CheckWorkItem(item);
    FUZZ_CHECK(prefix.ok(), "fuzzer built a bad work item: {}", prefix.status().message());
    const size_t space = channel_->SendSpace();
    const bool queued = channel_->Queue(item);
    // Refused only for want of room: a frame, or control-ring bytes for a control payload.
    FUZZ_CHECK(queued ? space > 0 : (space == 0 || item.data == nullptr), "Queue {} with SendSpace {}",
               queued, space);
    if (queued) ++next_tag_;
  }

  void TakeAcked() {
    channel_->TakeAcked([&](const transport::SendResult& f) {
      FUZZ_CHECK(f.tag == acked_, "acked frame {} where {} was next", f.tag, acked_);
      ++acked_;
    });
    FUZZ_CHECK(acked_ <= next_tag_, "{} frames acked of {} queued", acked_, next_tag_);
  }

  uint64_t now() const { return now_; }

 private:
  ChannelConfig config_;
  bool accepted_ = true;
  bool trusted_ = false;
  std::unique_ptr<Channel> channel_;
  std::deque<io::BufferRef> held_;
  uint64_t now_ = 1'000'000'000;
  uint64_t next_tag_ = 0, acked_ = 0;
};

}  // namespace
}  // namespace blkmirror::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blkmirror::fuzz;
  using namespace blkmirror::transport::dpdk;
  namespace proto = blkmirror::proto;
  static bool once = [] {
    QuietLogs();
    return true;
  }();
  (void)once;
  ByteReader r(data, size);
  Run run(r.U8());
  while (!r.empty()) {
    const uint8_t ctl = r.U8();
    const uint8_t flags = ctl & static_cast<uint8_t>(~in::kActionMask);
    switch (ctl & in::kActionMask) {
      case in::kPacket: {
        const size_t len = r.U16();
        std::vector<std::byte> pkt(std::min(len, r.remaining()));
        r.Fill(pkt);
        run.Packet(std::move(pkt), flags);
        break;
      }
      case in::kTick:
        run.Tick(r.U16());
        break;
      case in::kTake:
        run.Take(flags);
        break;
      case in::kTransmit:
        run.Transmit(r.U8());
        break;
      case in::kQueue: {
        const uint8_t type = r.U8();
        run.Queue(type, r.U16());
        break;
      }
      case in::kTrust:
        run.Trust();
        break;
      case in::kAck: {
        RelHeader h;
        h.kind = (r.U8() & 1) ? PacketKind::kProbe : PacketKind::kAck;
        h.ack = r.U32();
        h.sack = r.U64();
        h.credit = r.U32();
        run.Deliver(Encode(PeerToUs(), h, {}));
        run.TakeAcked();
        break;
      }
      case in::kData: {
        RelHeader h;
        h.kind = PacketKind::kData;
        h.seq = r.U32();
        h.frame_no = r.U32();
        h.frame_off = r.U32();
        h.frame_len = r.U32();
        const size_t len = r.U16();
        std::vector<std::byte> payload(std::min(len, r.remaining()));
        r.Fill(payload);
        if ((flags & in::kFixFrame) && h.frame_off == 0 && payload.size() >= proto::kHeaderSize) {
          proto::RawHeader raw;
          std::memcpy(raw.data(), payload.data(), raw.size());
          FixPrefix(raw);
          std::memcpy(payload.data(), raw.data(), raw.size());
        }
        run.Deliver(Encode(PeerToUs(), h, payload));
        break;
      }
    }
  }
  return 0;
}
