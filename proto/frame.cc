#include "proto/frame.h"

#include <cstring>

#include "common/crc32c.h"

namespace blkmirror::proto {
namespace {

constexpr size_t kOffMagic = 0;
constexpr size_t kOffVersion = 4;
constexpr size_t kOffType = 5;
constexpr size_t kOffFlags = 6;
constexpr size_t kOffPayloadLen = 8;
constexpr size_t kOffHeaderCrc = 12;
constexpr size_t kOffBody = 16;
static_assert(kOffBody + kBodySize == kHeaderSize);

// Explicit little-endian field access: the byte order on the wire never depends on the host.
class Writer {
 public:
  explicit Writer(RawHeader& raw) : raw_(raw) {}
  void U8(size_t off, uint8_t v) { raw_[off] = static_cast<std::byte>(v); }
  void U16(size_t off, uint16_t v) { Put(off, v, 2); }
  void U32(size_t off, uint32_t v) { Put(off, v, 4); }
  void U64(size_t off, uint64_t v) { Put(off, v, 8); }
  void Bytes(size_t off, const uint8_t* p, size_t n) { std::memcpy(raw_.data() + off, p, n); }

 private:
  void Put(size_t off, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) raw_[off + i] = static_cast<std::byte>(v >> (8 * i));
  }
  RawHeader& raw_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte, kHeaderSize> raw) : raw_(raw) {}
  uint8_t U8(size_t off) const { return static_cast<uint8_t>(raw_[off]); }
  uint16_t U16(size_t off) const { return static_cast<uint16_t>(Get(off, 2)); }
  uint32_t U32(size_t off) const { return static_cast<uint32_t>(Get(off, 4)); }
  uint64_t U64(size_t off) const { return Get(off, 8); }
  void Bytes(size_t off, uint8_t* p, size_t n) const { std::memcpy(p, raw_.data() + off, n); }
  // True when body bytes [from, kBodySize) are all zero (reserved space).
  bool ZeroFrom(size_t body_off) const {
    for (size_t i = kOffBody + body_off; i < kHeaderSize; ++i) {
      if (raw_[i] != std::byte{0}) return false;
    }
    return true;
  }
  bool ZeroRange(size_t body_off, size_t n) const {
    for (size_t i = 0; i < n; ++i) {
      if (raw_[kOffBody + body_off + i] != std::byte{0}) return false;
    }
    return true;
  }

 private:
  uint64_t Get(size_t off, int n) const {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(raw_[off + i]) << (8 * i);
    return v;
  }
  std::span<const std::byte, kHeaderSize> raw_;
};

uint32_t HeaderCrc(std::span<const std::byte, kHeaderSize> raw) {
  RawHeader copy;
  std::memcpy(copy.data(), raw.data(), kHeaderSize);
  std::memset(copy.data() + kOffHeaderCrc, 0, 4);
  return Crc32c(copy.data(), copy.size());
}

// Body offsets (relative to kOffBody) per type; they are the wire format.
void EncodeBody(Writer& w, const Hello& h) {
  w.U16(kOffBody + 0, h.min_version);
  w.U16(kOffBody + 2, h.max_version);
  w.U8(kOffBody + 4, static_cast<uint8_t>(h.kind));
  w.U32(kOffBody + 8, h.block_size);
  w.U32(kOffBody + 12, h.window);
  w.U64(kOffBody + 16, h.volume_size);
  w.Bytes(kOffBody + 24, h.volume_id.bytes.data(), 16);
  w.U32(kOffBody + 40, h.peer_timeout_ms);
}
void EncodeBody(Writer& w, const HelloOk& h) {
  w.U16(kOffBody + 0, h.version);
  w.U32(kOffBody + 4, h.max_block_size);
  w.U64(kOffBody + 8, h.capacity);
  w.Bytes(kOffBody + 16, h.replica_id.bytes.data(), 16);
}
void EncodeBody(Writer& w, const Error& e) { w.U32(kOffBody + 0, e.code); }
void EncodeBody(Writer& w, const Data& d) {
  w.U64(kOffBody + 0, d.seq);
  w.U64(kOffBody + 8, d.offset);
  w.U32(kOffBody + 16, d.length);
  w.U32(kOffBody + 20, d.crc);
}
void EncodeBody(Writer& w, const Ack& a) {
  w.U8(kOffBody + 0, static_cast<uint8_t>(a.level));
  w.U64(kOffBody + 8, a.cumulative);
  w.U64(kOffBody + 16, a.sack_base);
  w.U64(kOffBody + 24, a.sack_bits);
}
void EncodeBody(Writer& w, const Nack& n) {
  w.U64(kOffBody + 0, n.seq);
  w.U64(kOffBody + 8, n.offset);
  w.U32(kOffBody + 16, static_cast<uint32_t>(n.reason));
  w.U32(kOffBody + 20, n.expected_crc);
  w.U32(kOffBody + 24, n.actual_crc);
  w.U32(kOffBody + 28, static_cast<uint32_t>(n.err));
}
void EncodeBody(Writer& w, const Heartbeat& h) {
  w.U64(kOffBody + 0, h.sent_ns);
  w.U64(kOffBody + 8, h.echo_ns);
}
void EncodeBody(Writer& w, const VerifyReq& v) {
  w.U64(kOffBody + 0, v.offset);
  w.U64(kOffBody + 8, v.length);
  w.U32(kOffBody + 16, v.block_size);
  w.U32(kOffBody + 20, v.request_id);
}
void EncodeBody(Writer& w, const VerifyResp& v) {
  w.U64(kOffBody + 0, v.offset);
  w.U32(kOffBody + 8, v.count);
  w.U32(kOffBody + 12, v.request_id);
  w.U32(kOffBody + 16, static_cast<uint32_t>(v.err));
}
void EncodeBody(Writer&, const Bye&) {}
void EncodeBody(Writer& w, const Zero& z) {
  w.U64(kOffBody + 0, z.seq);
  w.U64(kOffBody + 8, z.offset);
  w.U64(kOffBody + 16, z.length);
}
void EncodeBody(Writer& w, const Flush& f) { w.U64(kOffBody + 0, f.seq); }
void EncodeBody(Writer& w, const Generation& g) {
  w.U64(kOffBody + 0, g.current);
  for (size_t i = 0; i < kMaxHistory; ++i) w.U64(kOffBody + 8 + 8 * i, g.history[i]);
  w.U8(kOffBody + 40, g.count);
}
void EncodeBody(Writer& w, const TransportHello& t) {
  w.U8(kOffBody + 0, t.kind);
  w.U8(kOffBody + 1, t.version);
  for (size_t i = 0; i < t.mac.size(); ++i) w.U8(kOffBody + 2 + i, t.mac[i]);
  w.U32(kOffBody + 8, t.ipv4);
  w.U16(kOffBody + 12, t.udp_port);
  w.U16(kOffBody + 14, t.mtu);
  w.U64(kOffBody + 16, t.session);
  w.U32(kOffBody + 24, t.window);
}
void EncodeBody(Writer&, const AuthChallenge&) {}
void EncodeBody(Writer&, const AuthProof&) {}

// Allowed flag bits per type.
uint16_t KnownFlags(FrameType type) {
  switch (type) {
    case FrameType::kData:
      return kDataAckMask | kDataResend | kDataCodecMask;
    case FrameType::kHelloOk:
      return kHelloOkCompressed;
    case FrameType::kZero:
      return kDataAckMask | kZeroUnmap;
    case FrameType::kHeartbeat:
      return kHeartbeatReply;
    case FrameType::kGeneration:
      return kGenConsistent | kGenSyncStart | kGenInSync;
    case FrameType::kTransportHello:
      return kTransportAnswer;
    default:
      return 0;
  }
}

Result<Body> DecodeBody(FrameType type, uint16_t flags, uint32_t payload_len, const Reader& r) {
  auto reserved = [&](const char* type_name) {
    return Status::Protocol("{} frame: reserved header bytes are not zero", type_name);
  };
  switch (type) {
    case FrameType::kHello: {
      Hello h;
      h.min_version = r.U16(kOffBody + 0);
      h.max_version = r.U16(kOffBody + 2);
      uint8_t kind = r.U8(kOffBody + 4);
      h.block_size = r.U32(kOffBody + 8);
      h.window = r.U32(kOffBody + 12);
      h.volume_size = r.U64(kOffBody + 16);
      r.Bytes(kOffBody + 24, h.volume_id.bytes.data(), 16);
      h.peer_timeout_ms = r.U32(kOffBody + 40);
      if (!r.ZeroRange(5, 3) || !r.ZeroFrom(44)) return reserved("Hello");
      if (h.min_version == 0 || h.min_version > h.max_version) {
        return Status::Protocol("Hello: bad version range {}..{}", h.min_version, h.max_version);
      }
      if (kind != static_cast<uint8_t>(SessionKind::kWrite) &&
          kind != static_cast<uint8_t>(SessionKind::kVerify)) {
        return Status::Protocol("Hello: unknown session kind {}", kind);
      }
      h.kind = static_cast<SessionKind>(kind);
      if (!ValidBlockSize(h.block_size)) {
        return Status::Protocol(
            "Hello: block size {} is not a multiple of {} between {} and {} bytes", h.block_size,
            kBlockAlign, kBlockAlign, kMaxBlockSize);
      }
      if (h.window == 0 || h.window > kMaxWindow) {
        return Status::Protocol("Hello: window {} outside 1..{}", h.window, kMaxWindow);
      }
      if (h.volume_size == 0) return Status::Protocol("Hello: volume size is 0");
      if (payload_len != 0) return Status::Protocol("Hello: unexpected payload of {} bytes", payload_len);
      return Body(h);
    }
    case FrameType::kHelloOk: {
      HelloOk h;
      h.version = r.U16(kOffBody + 0);
      h.max_block_size = r.U32(kOffBody + 4);
      h.capacity = r.U64(kOffBody + 8);
      r.Bytes(kOffBody + 16, h.replica_id.bytes.data(), 16);
      if (!r.ZeroRange(2, 2) || !r.ZeroFrom(32)) return reserved("HelloOk");
      if (h.version == 0) return Status::Protocol("HelloOk: version 0");
      if (!ValidBlockSize(h.max_block_size)) {
        return Status::Protocol("HelloOk: bad max block size {}", h.max_block_size);
      }
      if (payload_len != 0 && payload_len != kAuthMacSize) {
        return Status::Protocol("HelloOk: payload of {} bytes (0, or a {}-byte proof)", payload_len,
                                kAuthMacSize);
      }
      return Body(h);
    }
    case FrameType::kError: {
      Error e;
      e.code = r.U32(kOffBody + 0);
      if (!r.ZeroFrom(4)) return reserved("Error");
      if (payload_len > kMaxErrorText) {
        return Status::Protocol("Error: text of {} bytes exceeds {}", payload_len, kMaxErrorText);
      }
      return Body(e);
    }
    case FrameType::kData: {
      Data d;
      d.seq = r.U64(kOffBody + 0);
      d.offset = r.U64(kOffBody + 8);
      d.length = r.U32(kOffBody + 16);
      d.crc = r.U32(kOffBody + 20);
      if (!r.ZeroFrom(24)) return reserved("Data");
      if (d.length == 0 || d.length > kMaxBlockSize) {
        return Status::Protocol("Data seq {}: length {} outside 1..{}", d.seq, d.length,
                                kMaxBlockSize);
      }
      const Codec codec = DataCodec(flags);
      if (codec != Codec::kNone && codec != Codec::kLz4 && codec != Codec::kZstd) {
        return Status::Protocol("Data seq {}: unknown codec {}", d.seq,
                                static_cast<int>(codec));
      }
      if (codec == Codec::kNone && d.length != payload_len) {
        return Status::Protocol("Data seq {}: length {} differs from payload length {}", d.seq,
                                d.length, payload_len);
      }
      if (codec != Codec::kNone && (payload_len == 0 || payload_len >= d.length)) {
        return Status::Protocol("Data seq {}: a compressed payload of {} bytes for {} (it must "
                                "be smaller, and not empty)",
                                d.seq, payload_len, d.length);
      }
      if (d.offset % kSectorSize != 0 || d.offset > UINT64_MAX - d.length) {
        return Status::Protocol("Data seq {}: bad offset {}", d.seq, d.offset);
      }
      auto level = flags & kDataAckMask;
      if (level != static_cast<uint16_t>(AckLevel::kReceived) &&
          level != static_cast<uint16_t>(AckLevel::kDurable)) {
        return Status::Protocol("Data seq {}: ack level {} is not received(1) or durable(2)", d.seq,
                                level);
      }
      return Body(d);
    }
    case FrameType::kAck: {
      Ack a;
      uint8_t level = r.U8(kOffBody + 0);
      a.cumulative = r.U64(kOffBody + 8);
      a.sack_base = r.U64(kOffBody + 16);
      a.sack_bits = r.U64(kOffBody + 24);
      if (!r.ZeroRange(1, 7) || !r.ZeroFrom(32)) return reserved("Ack");
      if (level != static_cast<uint8_t>(AckLevel::kReceived) &&
          level != static_cast<uint8_t>(AckLevel::kDurable)) {
        return Status::Protocol("Ack: level {} is not received(1) or durable(2)", level);
      }
      a.level = static_cast<AckLevel>(level);
      if (payload_len != 0) return Status::Protocol("Ack: unexpected payload of {} bytes", payload_len);
      return Body(a);
    }
    case FrameType::kNack: {
      Nack n;
      n.seq = r.U64(kOffBody + 0);
      n.offset = r.U64(kOffBody + 8);
      uint32_t reason = r.U32(kOffBody + 16);
      n.expected_crc = r.U32(kOffBody + 20);
      n.actual_crc = r.U32(kOffBody + 24);
      n.err = static_cast<int32_t>(r.U32(kOffBody + 28));
      if (!r.ZeroFrom(32)) return reserved("Nack");
      if (reason != static_cast<uint32_t>(NackReason::kCrcMismatch) &&
          reason != static_cast<uint32_t>(NackReason::kIoError) &&
          reason != static_cast<uint32_t>(NackReason::kBadPayload)) {
        return Status::Protocol("Nack seq {}: unknown reason {}", n.seq, reason);
      }
      n.reason = static_cast<NackReason>(reason);
      if (payload_len != 0) return Status::Protocol("Nack: unexpected payload of {} bytes", payload_len);
      return Body(n);
    }
    case FrameType::kHeartbeat: {
      Heartbeat h;
      h.sent_ns = r.U64(kOffBody + 0);
      h.echo_ns = r.U64(kOffBody + 8);
      if (!r.ZeroFrom(16)) return reserved("Heartbeat");
      if (payload_len != 0) {
        return Status::Protocol("Heartbeat: unexpected payload of {} bytes", payload_len);
      }
      return Body(h);
    }
    case FrameType::kVerifyReq: {
      VerifyReq v;
      v.offset = r.U64(kOffBody + 0);
      v.length = r.U64(kOffBody + 8);
      v.block_size = r.U32(kOffBody + 16);
      v.request_id = r.U32(kOffBody + 20);
      if (!r.ZeroFrom(24)) return reserved("VerifyReq");
      if (!ValidBlockSize(v.block_size)) {
        return Status::Protocol("VerifyReq: bad block size {}", v.block_size);
      }
      if (v.length == 0 || v.length > uint64_t{kMaxVerifyBlocks} * v.block_size) {
        return Status::Protocol("VerifyReq: length {} outside 1..{} blocks", v.length,
                                kMaxVerifyBlocks);
      }
      if (v.offset % v.block_size != 0 || v.offset > UINT64_MAX - v.length) {
        return Status::Protocol("VerifyReq: bad offset {}", v.offset);
      }
      if (payload_len != 0) {
        return Status::Protocol("VerifyReq: unexpected payload of {} bytes", payload_len);
      }
      return Body(v);
    }
    case FrameType::kVerifyResp: {
      VerifyResp v;
      v.offset = r.U64(kOffBody + 0);
      v.count = r.U32(kOffBody + 8);
      v.request_id = r.U32(kOffBody + 12);
      v.err = static_cast<int32_t>(r.U32(kOffBody + 16));
      if (!r.ZeroFrom(20)) return reserved("VerifyResp");
      if (v.count > kMaxVerifyBlocks) {
        return Status::Protocol("VerifyResp: count {} exceeds {}", v.count, kMaxVerifyBlocks);
      }
      if (payload_len != v.count * 4) {
        return Status::Protocol("VerifyResp: payload {} bytes for {} CRCs", payload_len, v.count);
      }
      return Body(v);
    }
    case FrameType::kBye:
      if (!r.ZeroFrom(0)) return reserved("Bye");
      if (payload_len != 0) return Status::Protocol("Bye: unexpected payload of {} bytes", payload_len);
      return Body(Bye{});
    case FrameType::kAuthChallenge:
      if (!r.ZeroFrom(0)) return reserved("AuthChallenge");
      if (payload_len != kAuthNonceSize) {
        return Status::Protocol("AuthChallenge: payload of {} bytes (a {}-byte nonce expected)",
                                payload_len, kAuthNonceSize);
      }
      return Body(AuthChallenge{});
    case FrameType::kZero: {
      Zero z;
      z.seq = r.U64(kOffBody + 0);
      z.offset = r.U64(kOffBody + 8);
      z.length = r.U64(kOffBody + 16);
      if (!r.ZeroFrom(24)) return reserved("Zero");
      if (!IsWholeSectors(z.offset, z.length) || z.offset > UINT64_MAX - z.length) {
        return Status::Protocol("Zero seq {}: bad range [{}, +{})", z.seq, z.offset, z.length);
      }
      auto level = flags & kDataAckMask;
      if (level != static_cast<uint16_t>(AckLevel::kReceived) &&
          level != static_cast<uint16_t>(AckLevel::kDurable)) {
        return Status::Protocol("Zero seq {}: ack level {} is not received(1) or durable(2)",
                                z.seq, level);
      }
      if (payload_len != 0) return Status::Protocol("Zero: unexpected payload of {} bytes", payload_len);
      return Body(z);
    }
    case FrameType::kFlush: {
      Flush f;
      f.seq = r.U64(kOffBody + 0);
      if (!r.ZeroFrom(8)) return reserved("Flush");
      if (payload_len != 0) {
        return Status::Protocol("Flush: unexpected payload of {} bytes", payload_len);
      }
      return Body(f);
    }
    case FrameType::kGeneration: {
      Generation g;
      g.current = r.U64(kOffBody + 0);
      for (size_t i = 0; i < kMaxHistory; ++i) g.history[i] = r.U64(kOffBody + 8 + 8 * i);
      g.count = r.U8(kOffBody + 40);
      if (!r.ZeroFrom(41)) return reserved("Generation");
      if (g.count > kMaxHistory) {
        return Status::Protocol("Generation: {} history entries (at most {})", g.count,
                                kMaxHistory);
      }
      for (size_t i = 0; i < kMaxHistory; ++i) {
        if ((i < g.count) != (g.history[i] != 0)) {
          return Status::Protocol("Generation: history entry {} is {} with {} entries in use", i,
                                  g.history[i] == 0 ? "zero" : "set", g.count);
        }
      }
      if (g.current == 0 && g.count != 0) {
        return Status::Protocol("Generation: a history without a current generation");
      }
      if ((flags & kGenSyncStart) && (flags & kGenInSync)) {
        return Status::Protocol("Generation: both sync-start and in-sync");
      }
      if (payload_len != 0) {
        return Status::Protocol("Generation: unexpected payload of {} bytes", payload_len);
      }
      return Body(g);
    }
    case FrameType::kTransportHello: {
      TransportHello t;
      t.kind = r.U8(kOffBody + 0);
      t.version = r.U8(kOffBody + 1);
      for (size_t i = 0; i < t.mac.size(); ++i) t.mac[i] = r.U8(kOffBody + 2 + i);
      t.ipv4 = r.U32(kOffBody + 8);
      t.udp_port = r.U16(kOffBody + 12);
      t.mtu = r.U16(kOffBody + 14);
      t.session = r.U64(kOffBody + 16);
      t.window = r.U32(kOffBody + 24);
      if (!r.ZeroFrom(28)) return reserved("TransportHello");
      if (t.kind != kTransportDpdk) {
        return Status::Protocol("TransportHello: unknown data path {}", t.kind);
      }
      if (t.session == 0 || t.udp_port == 0 || t.window == 0) {
        return Status::Protocol("TransportHello: session {}, UDP port {}, window {} (none may be 0)",
                                t.session, t.udp_port, t.window);
      }
      if (payload_len != 0) {
        return Status::Protocol("TransportHello: unexpected payload of {} bytes", payload_len);
      }
      return Body(t);
    }
    case FrameType::kAuthProof:
      if (!r.ZeroFrom(0)) return reserved("AuthProof");
      if (payload_len != kAuthNonceSize + kAuthMacSize) {
        return Status::Protocol("AuthProof: payload of {} bytes ({} expected)", payload_len,
                                kAuthNonceSize + kAuthMacSize);
      }
      return Body(AuthProof{});
  }
  (void)flags;
  return Status::Protocol("unknown frame type {}", static_cast<int>(type));
}

bool KnownType(uint8_t t) {
  return t >= static_cast<uint8_t>(FrameType::kHello) &&
         t <= static_cast<uint8_t>(FrameType::kTransportHello);
}

}  // namespace

std::string_view FrameTypeName(FrameType type) {
  switch (type) {
    case FrameType::kHello: return "Hello";
    case FrameType::kHelloOk: return "HelloOk";
    case FrameType::kError: return "Error";
    case FrameType::kData: return "Data";
    case FrameType::kAck: return "Ack";
    case FrameType::kNack: return "Nack";
    case FrameType::kHeartbeat: return "Heartbeat";
    case FrameType::kVerifyReq: return "VerifyReq";
    case FrameType::kVerifyResp: return "VerifyResp";
    case FrameType::kBye: return "Bye";
    case FrameType::kAuthChallenge: return "AuthChallenge";
    case FrameType::kAuthProof: return "AuthProof";
    case FrameType::kZero: return "Zero";
    case FrameType::kFlush: return "Flush";
    case FrameType::kGeneration: return "Generation";
    case FrameType::kTransportHello: return "TransportHello";
  }
  return "Unknown";
}

std::string_view AckLevelName(AckLevel level) {
  switch (level) {
    case AckLevel::kSent: return "sent";
    case AckLevel::kReceived: return "received";
    case AckLevel::kDurable: return "durable";
  }
  return "unknown";
}

FrameType Frame::type() const {
  // Variant order mirrors FrameType numbering (kHello == 1 at index 0).
  return static_cast<FrameType>(body.index() + 1);
}
static_assert(std::variant_size_v<Body> == static_cast<size_t>(FrameType::kTransportHello));

RawHeader Encode(const Frame& frame) {
  RawHeader raw{};
  Writer w(raw);
  w.U32(kOffMagic, kMagic);
  w.U8(kOffVersion, kFrameVersion);
  w.U8(kOffType, static_cast<uint8_t>(frame.type()));
  w.U16(kOffFlags, frame.flags);
  w.U32(kOffPayloadLen, frame.payload_len);
  std::visit([&](const auto& body) { EncodeBody(w, body); }, frame.body);
  w.U32(kOffHeaderCrc, HeaderCrc(raw));
  return raw;
}

Result<Prefix> DecodePrefix(std::span<const std::byte, kHeaderSize> raw) {
  Reader r(raw);
  uint32_t magic = r.U32(kOffMagic);
  if (magic != kMagic) {
    return Status::Protocol("bad frame magic 0x{:08x} (expected 0x{:08x}: not a blkmirror peer?)",
                            magic, kMagic);
  }
  uint8_t version = r.U8(kOffVersion);
  if (version != kFrameVersion) {
    return Status::Protocol("unsupported frame format version {} (this build speaks {})", version,
                            kFrameVersion);
  }
  uint32_t want = r.U32(kOffHeaderCrc);
  uint32_t got = HeaderCrc(raw);
  if (want != got) {
    return Status::Protocol("frame header CRC mismatch (header says 0x{:08x}, computed 0x{:08x})",
                            want, got);
  }
  uint8_t type = r.U8(kOffType);
  if (!KnownType(type)) return Status::Protocol("unknown frame type {}", type);
  auto ft = static_cast<FrameType>(type);
  uint32_t len = r.U32(kOffPayloadLen);
  uint32_t limit = CarriesBlockData(ft) ? kMaxBlockSize : kMaxControlPayload;
  if (len > limit) {
    return Status::Protocol("{} frame payload of {} bytes exceeds {}", FrameTypeName(ft), len,
                            limit);
  }
  return Prefix{ft, len};
}

Result<Frame> Decode(std::span<const std::byte, kHeaderSize> raw) {
  ASSIGN_OR_RETURN(Prefix prefix, DecodePrefix(raw));
  Reader r(raw);
  Frame f;
  f.flags = r.U16(kOffFlags);
  f.payload_len = prefix.payload_len;
  uint16_t unknown = f.flags & ~KnownFlags(prefix.type);
  if (unknown != 0) {
    return Status::Protocol("{} frame: unknown flag bits 0x{:04x}", FrameTypeName(prefix.type),
                            unknown);
  }
  ASSIGN_OR_RETURN(f.body, DecodeBody(prefix.type, f.flags, f.payload_len, r));
  return f;
}

}  // namespace blkmirror::proto
