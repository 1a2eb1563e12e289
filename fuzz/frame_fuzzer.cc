// frame_fuzzer: the wire codec (proto/frame.h) on arbitrary bytes.
//
// Input: the first 64 bytes are a header (zero-padded when shorter); the bytes after them, when
// there are any, describe a Frame field by field for the encode side.
//
// Properties (a violation traps):
//   - DecodePrefix and Decode agree: Decode succeeds only where DecodePrefix does, with the same
//     type and payload length.
//   - A header Decode accepts is canonical: Encode(Decode(raw)) == raw (every byte is either a
//     field or a reserved zero, so two encodings never mean the same frame).
//   - Encode(frame) decodes to an equal frame (type, flags, payload_len, every body field) and
//     encodes again to the same bytes.
//   - Encode of a frame built from the fuzzer's bytes: when Decode accepts the result, it gives
//     back exactly the frame that was encoded.
// Each header is tried as given, with its CRC recomputed (so the per-type checks are reached),
// and with magic, version and CRC all fixed.
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <variant>

#include "fuzz/fuzz_common.h"
#include "proto/frame.h"

namespace blkmirror::fuzz {
namespace {

// The fields of each body, as a tuple of references (for comparing and for filling).
auto Fields(proto::Hello& h) {
  return std::tie(h.min_version, h.max_version, h.kind, h.block_size, h.window, h.volume_size,
                  h.volume_id.bytes, h.peer_timeout_ms);
}
auto Fields(proto::HelloOk& h) {
  return std::tie(h.version, h.max_block_size, h.capacity, h.replica_id.bytes);
}
auto Fields(proto::Error& e) { return std::tie(e.code); }
auto Fields(proto::Data& d) { return std::tie(d.seq, d.offset, d.length, d.crc); }
auto Fields(proto::Ack& a) { return std::tie(a.level, a.cumulative, a.sack_base, a.sack_bits); }
auto Fields(proto::Nack& n) {
  return std::tie(n.seq, n.offset, n.reason, n.expected_crc, n.actual_crc, n.err);
}
auto Fields(proto::Heartbeat& h) { return std::tie(h.sent_ns, h.echo_ns); }
auto Fields(proto::VerifyReq& v) {
  return std::tie(v.offset, v.length, v.block_size, v.request_id);
}
auto Fields(proto::VerifyResp& v) { return std::tie(v.offset, v.count, v.request_id, v.err); }
auto Fields(proto::Bye&) { return std::tuple<>(); }
auto Fields(proto::AuthChallenge&) { return std::tuple<>(); }
auto Fields(proto::AuthProof&) { return std::tuple<>(); }
auto Fields(proto::Zero& z) { return std::tie(z.seq, z.offset, z.length); }
auto Fields(proto::Flush& f) { return std::tie(f.seq); }
auto Fields(proto::Generation& g) { return std::tie(g.current, g.history, g.count); }
auto Fields(proto::TransportHello& t) {
  return std::tie(t.kind, t.version, t.mac, t.ipv4, t.udp_port, t.mtu, t.session, t.window);
}

bool SameFrame(const proto::Frame& a, const proto::Frame& b) {
  if (a.flags != b.flags || a.payload_len != b.payload_len || a.body.index() != b.body.index()) {
    return false;
  }
  return std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        T ca = x;
        T cb = std::get<T>(b.body);
        return Fields(ca) == Fields(cb);
      },
      a.body);
}

template <typename T>
void ReadField(ByteReader& in, T& field) {
  if constexpr (std::is_enum_v<T>) {
    std::underlying_type_t<T> v;
    ReadField(in, v);
    field = static_cast<T>(v);
  } else if constexpr (std::is_integral_v<T>) {
    std::make_unsigned_t<T> v = 0;
    for (size_t i = 0; i < sizeof(T); ++i)
      v = static_cast<decltype(v)>(v | uint64_t{in.U8()} << (8 * i));
    field = static_cast<T>(v);
  } else {
    for (auto& b : field) ReadField(in, b);  // std::array
  }
}

// A frame of the type the next byte picks, every field from the input.
proto::Frame BuildFrame(ByteReader& in) {
  constexpr size_t kTypes = std::variant_size_v<proto::Body>;
  proto::Frame f;
  size_t index = in.U8() % kTypes;
  f.flags = in.U16();
  // Mostly small payload lengths (the bounds that matter are 0, 32, 64, 1024, 4096, the block).
  uint32_t len = in.U32();
  f.payload_len = (len & 0x80000000u) ? len : len % 8192;
  auto fill = [&]<size_t... I>(std::index_sequence<I...>) {
    ((index == I ? (void)(f.body.emplace<I>()) : (void)0), ...);
  };
  fill(std::make_index_sequence<kTypes>());
  std::visit(
      [&](auto& body) { std::apply([&](auto&... x) { (ReadField(in, x), ...); }, Fields(body)); },
      f.body);
  return f;
}

void CheckHeader(const proto::RawHeader& raw) {
  auto prefix = proto::DecodePrefix(raw);
  auto frame = proto::Decode(raw);
  if (!frame.ok()) {
    FUZZ_CHECK(!frame.status().message().empty(), "Decode failed without a message");
    return;
  }
  FUZZ_CHECK(prefix.ok(), "Decode accepted a header DecodePrefix rejects: {}",
             prefix.status().message());
  FUZZ_CHECK(prefix->type == frame->type() && prefix->payload_len == frame->payload_len,
             "DecodePrefix and Decode disagree on type or payload length");
  FUZZ_CHECK(
      frame->payload_len <= (proto::CarriesBlockData(frame->type()) ? proto::kMaxBlockSize
                                                                    : proto::kMaxControlPayload),
      "{} frame accepted with a {}-byte payload", proto::FrameTypeName(frame->type()),
      frame->payload_len);
  proto::RawHeader encoded = proto::Encode(*frame);
  FUZZ_CHECK(encoded == raw, "{} header accepted but not canonical: re-encoding changes it",
             proto::FrameTypeName(frame->type()));
  auto again = proto::Decode(encoded);
  FUZZ_CHECK(again.ok(), "Encode of a decoded {} frame does not decode: {}",
             proto::FrameTypeName(frame->type()), again.status().message());
  FUZZ_CHECK(SameFrame(*frame, *again), "{} frame changes across Encode/Decode",
             proto::FrameTypeName(frame->type()));
  FUZZ_CHECK(proto::Encode(*again) == encoded, "{} frame re-encodes to different bytes",
             proto::FrameTypeName(frame->type()));
}

void CheckEncode(const proto::Frame& built) {
  proto::RawHeader raw = proto::Encode(built);
  auto prefix = proto::DecodePrefix(raw);
  uint32_t limit =
      proto::CarriesBlockData(built.type()) ? proto::kMaxBlockSize : proto::kMaxControlPayload;
  FUZZ_CHECK(prefix.ok() == (built.payload_len <= limit),
             "DecodePrefix of an encoded {} frame with a {}-byte payload: {}",
             proto::FrameTypeName(built.type()), built.payload_len, prefix.status().message());
  auto decoded = proto::Decode(raw);
  if (!decoded.ok()) return;
  FUZZ_CHECK(SameFrame(built, *decoded), "Decode of an encoded {} frame gives another frame",
             proto::FrameTypeName(built.type()));
  FUZZ_CHECK(proto::Encode(*decoded) == raw, "{} frame re-encodes to different bytes",
             proto::FrameTypeName(built.type()));
}

}  // namespace
}  // namespace blkmirror::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  blkmirror::fuzz::QuietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blkmirror;
  using namespace blkmirror::fuzz;
  ByteReader in(data, size);
  proto::RawHeader raw{};
  in.Fill(raw);
  CheckHeader(raw);
  proto::RawHeader crc_fixed = raw;
  FixHeaderCrc(crc_fixed);
  CheckHeader(crc_fixed);
  proto::RawHeader prefix_fixed = raw;
  FixPrefix(prefix_fixed);
  if (prefix_fixed != crc_fixed) CheckHeader(prefix_fixed);
  // FrameTypeName and AckLevelName take any value a peer could put on the wire.
  (void)proto::FrameTypeName(static_cast<proto::FrameType>(raw[kOffType]));
  (void)proto::AckLevelName(static_cast<proto::AckLevel>(raw[kOffBody]));
  if (!in.empty()) CheckEncode(BuildFrame(in));
  return 0;
}
