// make_seeds: writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/<name>).
//
//   build/fuzz/fuzz/make_seeds fuzz/corpus
//
// Deterministic: the same build writes the same bytes, so the committed corpus can be checked
// against it (scripts/fuzz warns when they differ). Each seed is a small, meaningful exchange in
// the target's input format (fuzz/input_formats.h) that libFuzzer starts mutating from.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/crc32c.h"
#include "engine/compress.h"
#include "fuzz/input_formats.h"
#include "proto/frame.h"
#include "proto/nbd.h"
#include "transport/dpdk/channel.h"
#include "transport/dpdk/packet.h"

namespace blkmirror::fuzz {
namespace {

namespace fs = std::filesystem;
namespace si = session_input;
namespace ri = replicator_input;
using proto::AckLevel;

class Seed {
 public:
  Seed& U8(uint8_t v) {
    bytes_.push_back(v);
    return *this;
  }
  Seed& U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  Seed& Bytes(const void* p, size_t n) {
    auto b = static_cast<const uint8_t*>(p);
    bytes_.insert(bytes_.end(), b, b + n);
    return *this;
  }
  // `text` as 64 raw bytes (cut or padded with dots): a header-sized piece of garbage.
  Seed& Text64(std::string text) {
    text.resize(proto::kHeaderSize, '.');
    return Bytes(text.data(), text.size());
  }
  Seed& Header(const proto::Frame& f) {
    auto raw = proto::Encode(f);
    return Bytes(raw.data(), raw.size());
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

bool failed = false;

void Save(const fs::path& dir, const std::string& name, const Seed& seed) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(seed.bytes().data()),
            static_cast<std::streamsize>(seed.bytes().size()));
  if (!out) {
    std::fprintf(stderr, "make_seeds: cannot write %s: %s\n", (dir / name).c_str(),
                 std::strerror(errno));
    failed = true;
  }
}

proto::Frame Make(proto::Body body, uint16_t flags = 0, uint32_t payload_len = 0) {
  proto::Frame f;
  f.body = body;
  f.flags = flags;
  f.payload_len = payload_len;
  return f;
}

proto::Hello HelloFor(proto::SessionKind kind, uint32_t block, uint64_t volume,
                      uint32_t window = 4) {
  proto::Hello h;
  h.kind = kind;
  h.block_size = block;
  h.window = window;
  h.volume_size = volume;
  for (uint8_t i = 0; i < 16; ++i) h.volume_id.bytes[i] = i;
  h.max_version = proto::kGenerationsVersion - 1;  // protocol 3 seeds say so themselves
  return h;
}

// ---- frame_fuzzer ------------------------------------------------------------------------------

void FrameSeeds(const fs::path& dir) {
  proto::Data data{3, 8192, 4096, 0x12345678};
  proto::Nack nack{3, 8192, proto::NackReason::kCrcMismatch, 1, 2, 0};
  const std::vector<std::pair<std::string, proto::Frame>> frames = {
      {"hello", Make(HelloFor(proto::SessionKind::kWrite, 1 << 20, 1 << 30))},
      {"hello_ok", Make(proto::HelloOk{1, 4 << 20, 1ull << 40, {}})},
      {"error", Make(proto::Error{10002}, 0, 17)},
      {"data", Make(data, static_cast<uint16_t>(AckLevel::kDurable), 4096)},
      {"ack", Make(proto::Ack{AckLevel::kReceived, 5, 5, 0x6})},
      {"nack", Make(nack)},
      {"heartbeat", Make(proto::Heartbeat{1000, 0}, proto::kHeartbeatReply)},
      {"verify_req", Make(proto::VerifyReq{0, 1 << 20, 4096, 7})},
      {"verify_resp", Make(proto::VerifyResp{0, 3, 7, 0}, 0, 12)},
      {"bye", Make(proto::Bye{})},
      {"auth_challenge", Make(proto::AuthChallenge{}, 0, proto::kAuthNonceSize)},
      {"auth_proof", Make(proto::AuthProof{}, 0, proto::kAuthNonceSize + proto::kAuthMacSize)},
      {"zero", Make(proto::Zero{4, 8192, 3 * 4096},
                    static_cast<uint16_t>(AckLevel::kDurable) | proto::kZeroUnmap)},
      {"flush", Make(proto::Flush{5})},
      {"generation", Make(proto::Generation{0x77, {0x66, 0x55, 0, 0}, 2},
                          proto::kGenConsistent | proto::kGenInSync)},
  };
  for (const auto& [name, f] : frames) Save(dir, name, Seed().Header(f));
  // A header followed by a frame description for the encode side (type 3 = Data).
  Seed both;
  both.Header(frames[3].second).U8(3).U8(1).U8(0).U32(4096);
  for (int i = 0; i < 24; ++i) both.U8(static_cast<uint8_t>(i == 9 ? 0x20 : 0));
  Save(dir, "data_then_encode", both);
}

// ---- session_fuzzer ----------------------------------------------------------------------------

constexpr uint8_t kFix = 1;

// A record whose payload is a compact Data block: [n][pattern].
void DataRecord(Seed& s, uint8_t ctl, uint64_t seq, uint64_t offset, uint32_t len, AckLevel level,
                uint8_t fill, bool resend = false) {
  uint16_t flags = static_cast<uint16_t>(level) | (resend ? proto::kDataResend : 0);
  s.U8(ctl | kFix | si::kCompact | si::kFixBody)
      .Header(Make(proto::Data{seq, offset, len, 0}, flags, len))
      .U8(1)
      .U8(fill);
}

void Control(Seed& s, uint8_t ctl, const proto::Frame& f) { s.U8(ctl | kFix).Header(f); }

void SessionSeeds(const fs::path& dir) {
  const auto write = proto::SessionKind::kWrite;
  const uint64_t vol = 64 << 10;
  {
    Seed s;
    s.U8(0);
    Control(s, 0, Make(HelloFor(write, 4096, vol)));
    for (uint64_t seq = 0; seq < 4; ++seq) {
      DataRecord(s, 0, seq, seq * 4096, 4096, AckLevel::kReceived, static_cast<uint8_t>(seq + 1));
    }
    Control(s, 0, Make(proto::Bye{}));
    Save(dir, "write_received", s);
  }
  {
    Seed s;
    s.U8(0);
    Control(s, 0, Make(HelloFor(write, 8192, vol, 2)));
    DataRecord(s, 0, 1, 8192, 8192, AckLevel::kDurable, 0xAA);
    DataRecord(s, 0, 0, 0, 8192, AckLevel::kDurable, 0xBB);
    Control(s, 0, Make(proto::Heartbeat{5, 0}));
    Control(s, 0, Make(proto::Bye{}));
    Save(dir, "write_durable_out_of_order", s);
  }
  {
    // A bad CRC (Nack), then the resend with the right one.
    Seed s;
    s.U8(0);
    Control(s, 0, Make(HelloFor(write, 4096, vol)));
    s.U8(kFix | si::kCompact)
        .Header(Make(proto::Data{0, 4096, 4096, 0xDEADBEEF}, 1, 4096))
        .U8(2)
        .U8(1)
        .U8(2);
    DataRecord(s, 0, 0, 4096, 4096, AckLevel::kReceived, 1, true);
    Control(s, 0, Make(proto::Bye{}));
    Save(dir, "write_bad_crc_then_resend", s);
  }
  {
    // Compressed payloads (protocol 2, the replica's HelloOk offers them): one that decompresses
    // (kFixBody makes its CRC the data's), one that does not (NACKed as a bad payload).
    Seed s;
    s.U8(0);
    Control(s, 0, Make(HelloFor(write, 4096, vol, 2)));
    std::vector<std::byte> data(4096);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>("blkmirror "[i % 10]);
    std::vector<std::byte> packed(4096);
    engine::Compressor lz4(engine::CompressSpec{proto::Codec::kLz4, 0});
    const uint32_t n = lz4.Compress(data.data(), 4096, packed);
    const auto flags = static_cast<uint16_t>(static_cast<uint16_t>(AckLevel::kDurable) |
                                             proto::DataCodecFlags(proto::Codec::kLz4));
    s.U8(kFix | si::kFixBody).Header(Make(proto::Data{0, 0, 4096, 0}, flags, n));
    s.Bytes(packed.data(), n);
    s.U8(kFix | si::kFixBody).Header(Make(proto::Data{1, 4096, 4096, 0}, flags, 64));
    s.Bytes(data.data(), 64);
    Control(s, 0, Make(proto::Bye{}));
    Save(dir, "write_compressed", s);
  }
  {
    // Protocol 2 (a volume): extents of any sector-aligned length, overlapping ones, a zero
    // range across blocks, a flush.
    Seed s;
    s.U8(0);
    Control(s, 0, Make(HelloFor(write, 4096, vol)));
    DataRecord(s, 0, 0, 1024, 512, AckLevel::kReceived, 0x11);
    DataRecord(s, 0, 1, 512, 3584, AckLevel::kReceived, 0x22);
    Control(s, 0, Make(proto::Zero{2, 2048, 3 * 4096},
                       static_cast<uint16_t>(AckLevel::kReceived) | proto::kZeroUnmap));
    DataRecord(s, 0, 3, 4096 + 1536, 1024, AckLevel::kReceived, 0x33);
    Control(s, 0, Make(proto::Flush{4}));
    Control(s, 0, Make(proto::Bye{}));
    Save(dir, "write_extents_zero_flush", s);
  }
  {
    // Protocol 3 (a volume with generations): Hello, the primary's Generation, data, a resync
    // start, more data, in-sync (the replica takes the generations after a flush), Bye.
    Seed s;
    s.U8(0);
    auto h = HelloFor(write, 4096, vol);
    h.max_version = proto::kGenerationsVersion;
    Control(s, 0, Make(h));
    Control(s, 0, Make(proto::Generation{0x500, {0x400, 0, 0, 0}, 1}, proto::kGenConsistent));
    DataRecord(s, 0, 0, 8192, 4096, AckLevel::kDurable, 0x44);
    Control(s, 0, Make(proto::Generation{0x500, {0x400, 0, 0, 0}, 1},
                       proto::kGenConsistent | proto::kGenSyncStart));
    DataRecord(s, 0, 1, 0, 2048, AckLevel::kDurable, 0x55);
    Control(s, 0, Make(proto::Generation{0x500, {0x400, 0, 0, 0}, 1},
                       proto::kGenConsistent | proto::kGenInSync));
    Control(s, 0, Make(proto::Bye{}));
    Save(dir, "volume_generations", s);
  }
  {
    // The volume's short last block, in a literal (not compact) payload.
    Seed s;
    s.U8(0);
    Control(s, 0, Make(HelloFor(write, 4096, 10000)));
    s.U8(kFix | si::kFixBody).Header(Make(proto::Data{0, 8192, 1808, 0}, 1, 1808));
    for (int i = 0; i < 1808; ++i) s.U8(static_cast<uint8_t>(i));
    Control(s, 0, Make(proto::Bye{}));
    Save(dir, "write_short_last_block", s);
  }
  {
    Seed s;
    s.U8(0);
    Control(s, 0, Make(HelloFor(proto::SessionKind::kVerify, 4096, vol)));
    Control(s, 0, Make(proto::VerifyReq{0, 16384, 4096, 7}));
    Control(s, 0, Make(proto::VerifyReq{16384, 6000, 4096, 8}));
    Control(s, 0, Make(proto::Bye{}));
    Save(dir, "verify", s);
  }
  {
    // Two writers (the second is refused), a verifier alongside, data from the first.
    Seed s;
    s.U8(0);
    Control(s, 0, Make(HelloFor(write, 4096, vol)));
    // Refused; four steps let the replica close the connection, so the next Hello opens another.
    Control(s, si::kConn1 | si::kAfterStep4 << si::kAfterShift, Make(HelloFor(write, 4096, vol)));
    Control(s, si::kConn1, Make(HelloFor(proto::SessionKind::kVerify, 4096, vol)));
    DataRecord(s, 0, 0, 0, 4096, AckLevel::kReceived, 9);
    Control(s, si::kConn1, Make(proto::VerifyReq{0, 4096, 4096, 1}));
    Control(s, 0, Make(proto::Bye{}));
    Save(dir, "two_clients", s);
  }
  {
    // Authenticated: Hello, the proof (fixed by the fuzzer), data.
    Seed s;
    s.U8(si::kSetupKey);
    Control(s, 0, Make(HelloFor(write, 4096, vol)));
    s.U8(kFix | si::kFixBody)
        .Header(Make(proto::AuthProof{}, 0, proto::kAuthNonceSize + proto::kAuthMacSize));
    for (uint32_t i = 0; i < proto::kAuthNonceSize + proto::kAuthMacSize; ++i) s.U8(0x11);
    DataRecord(s, 0, 0, 0, 4096, AckLevel::kDurable, 3);
    Control(s, 0, Make(proto::Bye{}));
    Save(dir, "auth_write", s);
  }
  {
    // Authenticated replica, wrong proof, then data anyway.
    Seed s;
    s.U8(si::kSetupKey);
    Control(s, 0, Make(HelloFor(write, 4096, vol)));
    s.U8(kFix).Header(Make(proto::AuthProof{}, 0, proto::kAuthNonceSize + proto::kAuthMacSize));
    for (uint32_t i = 0; i < proto::kAuthNonceSize + proto::kAuthMacSize; ++i) s.U8(0x22);
    DataRecord(s, 0, 0, 0, 4096, AckLevel::kReceived, 3);
    Save(dir, "auth_wrong_proof", s);
  }
  {
    // Things a replica must refuse: data before Hello, an oversized block, garbage bytes, a
    // client Error, a Hello with a heartbeat timeout.
    Seed s;
    s.U8(si::kSetupKeepTimeouts);
    DataRecord(s, 0, 0, 0, 4096, AckLevel::kReceived, 1);
    Control(s, 0, Make(HelloFor(write, 4096, vol)));
    s.U8(kFix | si::kCompact).Header(Make(proto::Data{0, 0, 65536, 0}, 1, 65536)).U8(0);
    s.U8(0).Text64("garbage, not a frame header");
    auto h = HelloFor(write, 4096, vol);
    h.peer_timeout_ms = 1;
    Control(s, si::kConn1, Make(h));
    Control(s, si::kConn1, Make(proto::Error{5}, 0, 4));
    s.Bytes("oops", 4);
    Save(dir, "refusals", s);
  }
  {
    // Frames only a replica sends, sent to the replica: before Hello, and in a session.
    Seed s;
    s.U8(0);
    Control(s, 0, Make(proto::Ack{AckLevel::kReceived, 0, 0, 0}));
    Control(s, si::kConn1, Make(HelloFor(write, 4096, vol)));
    Control(s, si::kConn1, Make(proto::Nack{0, 0, proto::NackReason::kIoError, 0, 0, 5}));
    Control(s, 0, Make(proto::HelloOk{1, 4096, vol, {}}));
    Control(s, 0, Make(proto::VerifyResp{0, 0, 1, 0}));
    Save(dir, "unexpected_frames", s);
  }
  {
    // Disk errors: the third write fails; the flush after three good writes fails; a verify
    // session whose every second read fails.
    auto fail_every = [](uint8_t n) { return static_cast<uint8_t>(n << si::kSetupFailShift); };
    Seed w;
    w.U8(fail_every(3));
    Control(w, 0, Make(HelloFor(write, 4096, vol)));
    for (uint64_t seq = 0; seq < 4; ++seq) {
      DataRecord(w, 0, seq, seq * 4096, 4096, AckLevel::kDurable, static_cast<uint8_t>(seq));
    }
    Save(dir, "disk_write_error", w);
    Seed f;
    f.U8(fail_every(4));
    Control(f, 0, Make(HelloFor(write, 4096, vol)));
    for (uint64_t seq = 0; seq < 3; ++seq) {
      DataRecord(f, 0, seq, seq * 4096, 4096, AckLevel::kReceived, static_cast<uint8_t>(seq));
    }
    Control(f, 0, Make(proto::Bye{}));
    Save(dir, "disk_flush_error", f);
    Seed v;
    v.U8(fail_every(2));
    Control(v, 0, Make(HelloFor(proto::SessionKind::kVerify, 4096, vol)));
    Control(v, 0, Make(proto::VerifyReq{0, 16384, 4096, 3}));
    Save(dir, "disk_read_error", v);
  }
}

// ---- replicator_fuzzer -------------------------------------------------------------------------

uint8_t Ctl(uint8_t action, uint8_t arg = 0, bool peer1 = false) {
  return static_cast<uint8_t>(action | (peer1 ? ri::kPeer1 : 0) | arg << ri::kArgShift);
}

// setup: ack, window, block 4 KiB, volume blocks, retries, quorum, bitmaps, own flushes.
Seed ReplicatorSetup(uint8_t ack, uint8_t window, bool two, bool key, uint8_t blocks,
                     uint8_t retries, uint8_t quorum = 0, bool bitmaps = false,
                     bool own_flushes = false) {
  Seed s;
  s.U8(static_cast<uint8_t>(ack | (window - 1) << 2 | (two ? 0x40 : 0) | (key ? 0x80 : 0)));
  s.U8(static_cast<uint8_t>((blocks - 1) | retries << 5));
  s.U8(static_cast<uint8_t>(quorum | (bitmaps ? 0x04 : 0) | (own_flushes ? 0x08 : 0)));
  return s;
}

// HelloOk with version 1, max block 8 KiB, capacity = the volume, id 1.
void HelloOk(Seed& s, bool peer1 = false) {
  s.U8(Ctl(ri::kHelloOk, 0, peer1)).U8(1).U8(0).U8(0).U8(1);
}

void Ack(Seed& s, uint8_t level, uint8_t cum, uint8_t base, uint32_t bits, bool peer1 = false) {
  s.U8(Ctl(ri::kAck, 0, peer1)).U8(level).U8(cum).U8(base).U32(bits);
}

void Submit(Seed& s, uint8_t count, uint8_t first_block, uint8_t mask_sel = 0) {
  s.U8(Ctl(ri::kSubmit, static_cast<uint8_t>((count - 1) | mask_sel << 2)));
  for (uint8_t i = 0; i < count; ++i) s.U8(static_cast<uint8_t>(first_block + i));
}

void ReplicatorSeeds(const fs::path& dir) {
  {
    Seed s = ReplicatorSetup(2, 4, false, false, 8, 2);
    HelloOk(s);
    Submit(s, 4, 0);
    Ack(s, 2, 2, 2, 0x2);  // seqs 0, 1 and (sack) 3
    s.U8(Ctl(ri::kStep, 1));
    Ack(s, 2, 4, 4, 0);
    Submit(s, 2, 4);
    Ack(s, 2, 6, 6, 0);
    s.U8(Ctl(ri::kControl, 3));  // StartClose
    s.U8(Ctl(ri::kStep, 2));
    Save(dir, "durable_acks", s);
  }
  {
    Seed s = ReplicatorSetup(1, 2, false, false, 4, 1);
    HelloOk(s);
    Submit(s, 2, 0);
    s.U8(Ctl(ri::kNack, 0)).U8(0).U8(0);
    s.U8(Ctl(ri::kNack, 1)).U8(1).U8(5);
    s.U8(Ctl(ri::kNack, 0)).U8(0).U8(0);  // the second resend: over max_retries
    Ack(s, 1, 2, 2, 0);
    Save(dir, "nack_resend_give_up", s);
  }
  {
    // Ack level sent, the replica holding its buffers (the primary's sends stay in flight).
    Seed s = ReplicatorSetup(0, 8, false, false, 16, 3);
    HelloOk(s);
    s.U8(Ctl(ri::kControl, 1));  // hold
    Submit(s, 4, 0);
    Submit(s, 4, 8);
    s.U8(Ctl(ri::kNack, 0)).U8(6).U8(0);
    s.U8(Ctl(ri::kControl, 0));  // release
    Ack(s, 1, 8, 8, 0);
    Save(dir, "sent_level_holding", s);
  }
  {
    // Two replicas, quorum 1, bitmaps: one replica fails, the other carries on.
    Seed s = ReplicatorSetup(2, 4, true, false, 8, 2, 1, true);
    HelloOk(s);
    HelloOk(s, true);
    Submit(s, 3, 0);
    Ack(s, 2, 1, 1, 0);
    s.U8(Ctl(ri::kError, 0, true)).U8(5).U8(4).Bytes("gone", 4);
    Ack(s, 2, 3, 3, 0);
    Submit(s, 1, 3, 2);
    s.U8(Ctl(ri::kControl, 2));  // replica 0 closes
    Save(dir, "quorum_lose_one", s);
  }
  {
    // Authenticated handshake: challenge, proof, HelloOk with the replica's proof.
    Seed s = ReplicatorSetup(1, 2, false, true, 4, 1);
    s.U8(Ctl(ri::kControl, 4));
    for (int i = 0; i < 32; ++i) s.U8(static_cast<uint8_t>(i));
    HelloOk(s);
    Submit(s, 2, 0);
    Ack(s, 1, 2, 2, 0);
    s.U8(Ctl(ri::kControl, 3));
    Save(dir, "auth", s);
  }
  {
    // Received level, then the replica's final durable ack after Bye; odd frames on the way.
    Seed s = ReplicatorSetup(1, 4, false, false, 5, 1, 0, true);
    HelloOk(s);
    s.U8(Ctl(ri::kControl, 5));  // a heartbeat
    Submit(s, 4, 0);
    Ack(s, 1, 4, 4, 0);
    s.U8(Ctl(ri::kStep, 0));
    s.U8(Ctl(ri::kControl, 3));
    Ack(s, 2, 4, 4, 0);
    s.U8(Ctl(ri::kRaw, 1)).Header(Make(proto::Heartbeat{1, 0}));
    s.U8(Ctl(ri::kControl, 6)).U8(1);
    Save(dir, "received_final_flush", s);
  }
  {
    // Received level over protocol 2, the primary flushing on its own: its Flush (seq 3) covers
    // the three blocks acked before it, not block 0's rewrite (seq 4) that leaves after it. The
    // replica then closes: no later Flush or final flush covers the rewrite.
    Seed s = ReplicatorSetup(1, 4, false, false, 5, 1, 0, true, true);
    s.U8(Ctl(ri::kHelloOk)).U8(2).U8(0).U8(0).U8(1);
    Submit(s, 3, 0);
    Ack(s, 1, 3, 3, 0);
    s.U8(Ctl(ri::kStep, 0));
    Submit(s, 1, 0);
    Ack(s, 1, 5, 5, 0);
    s.U8(Ctl(ri::kStep, 1));
    Save(dir, "received_own_flushes", s);
  }
  {
    // Handshake refusals: a capacity one byte short, garbage from the other replica.
    Seed s = ReplicatorSetup(2, 1, true, false, 2, 0);
    s.U8(Ctl(ri::kHelloOk)).U8(1).U8(0).U8(1).U8(0);
    s.U8(Ctl(ri::kRaw, 0, true)).Text64("not a frame: text no replica would send");
    Save(dir, "handshake_refused", s);
  }
}

// ---- nbd_fuzzer ---------------------------------------------------------------------------------

namespace nbd = proto::nbd;

// Big-endian, as NBD puts every integer on the wire.
Seed& Be(Seed& s, uint64_t v, int n) {
  for (int i = n - 1; i >= 0; --i) s.U8(static_cast<uint8_t>(v >> (8 * i)));
  return s;
}
Seed& Text(Seed& s, std::string_view text) { return s.Bytes(text.data(), text.size()); }

// setup: transmission flags, then indexes into nbd_input's tables.
Seed NbdSetup(uint16_t flags, uint8_t min_block, uint8_t max_payload, uint8_t size, uint8_t name,
              bool description) {
  Seed s;
  s.U8(static_cast<uint8_t>(flags)).U8(static_cast<uint8_t>(flags >> 8));
  s.U8(static_cast<uint8_t>(min_block | max_payload << 2 | size << 4));
  s.U8(static_cast<uint8_t>(name | (description ? nbd_input::kSetupDescription : 0)));
  return s;
}

// The usual export: flush, FUA, trim, write zeroes, fast zero; 512-byte blocks, 32 MiB payloads,
// 1 GiB, named "disk", with a description.
constexpr uint16_t kNbdFlags = nbd::kFlagSendFlush | nbd::kFlagSendFua | nbd::kFlagSendTrim |
                               nbd::kFlagSendWriteZeroes | nbd::kFlagSendFastZero;
Seed NbdUsualSetup(uint16_t flags = kNbdFlags) { return NbdSetup(flags, 1, 2, 4, 1, true); }

void NbdOption(Seed& s, uint32_t option, const Seed& data = Seed()) {
  Be(s, nbd::kOptsMagic, 8);
  Be(s, option, 4);
  Be(s, data.bytes().size(), 4);
  s.Bytes(data.bytes().data(), data.bytes().size());
}
void NbdOption(Seed& s, nbd::Option option, const Seed& data = Seed()) {
  NbdOption(s, static_cast<uint32_t>(option), data);
}

Seed InfoData(std::string_view name, std::initializer_list<uint16_t> infos) {
  Seed d;
  Be(d, name.size(), 4);
  Text(d, name);
  Be(d, infos.size(), 2);
  for (uint16_t i : infos) Be(d, i, 2);
  return d;
}

Seed MetaData(std::string_view name, std::initializer_list<std::string_view> queries) {
  Seed d;
  Be(d, name.size(), 4);
  Text(d, name);
  Be(d, queries.size(), 4);
  for (std::string_view q : queries) Text(Be(d, q.size(), 4), q);
  return d;
}

void NbdRequest(Seed& s, nbd::Command type, uint16_t flags, uint64_t offset, uint32_t length,
                uint64_t cookie) {
  Be(s, nbd::kRequestMagic, 4);
  Be(s, flags, 2);
  Be(s, static_cast<uint16_t>(type), 2);
  Be(s, cookie, 8);
  Be(s, offset, 8);
  Be(s, length, 4);
}

void NbdWrite(Seed& s, uint16_t flags, uint64_t offset, uint32_t length, uint64_t cookie) {
  NbdRequest(s, nbd::Command::kWrite, flags, offset, length, cookie);
  for (uint32_t i = 0; i < length; ++i) s.U8(static_cast<uint8_t>(i));
}

void NbdSeeds(const fs::path& dir) {
  using nbd::Command;
  using nbd::Option;
  const uint32_t kNewstyleNoZeroes = nbd::kClientFixedNewstyle | nbd::kClientNoZeroes;
  {
    // As qemu connects: extended headers refused, structured replies, base:allocation, GO with
    // block sizes; then one request of each kind.
    Seed s = NbdUsualSetup();
    Be(s, kNewstyleNoZeroes, 4);
    NbdOption(s, 11);
    NbdOption(s, Option::kStructuredReply);
    NbdOption(s, Option::kSetMetaContext, MetaData("", {nbd::kBaseAllocation}));
    NbdOption(s, Option::kGo, InfoData("", {nbd::kInfoBlockSize}));
    NbdRequest(s, Command::kRead, nbd::kCmdFlagDf, 0, 4096, 1);
    NbdWrite(s, nbd::kCmdFlagFua, 4096, 512, 2);
    NbdRequest(s, Command::kBlockStatus, nbd::kCmdFlagReqOne, 0, 1 << 20, 3);
    NbdRequest(s, Command::kWriteZeroes, nbd::kCmdFlagFastZero | nbd::kCmdFlagNoHole, 8192, 8192,
               4);
    NbdRequest(s, Command::kTrim, 0, 1 << 20, 1 << 20, 5);
    NbdRequest(s, Command::kCache, 0, 0, 65536, 6);
    NbdRequest(s, Command::kFlush, 0, 0, 0, 7);
    NbdRequest(s, Command::kDisc, 0, 0, 0, 8);
    Save(dir, "qemu_go", s);
  }
  {
    // As libnbd lists and queries: LIST, INFO with every request, meta contexts listed (first
    // too early), GO by name; then refused requests.
    Seed s = NbdUsualSetup();
    Be(s, nbd::kClientFixedNewstyle, 4);
    NbdOption(s, Option::kList);
    NbdOption(s, Option::kInfo,
              InfoData("disk", {nbd::kInfoName, nbd::kInfoDescription, nbd::kInfoBlockSize}));
    NbdOption(s, Option::kListMetaContext, MetaData("disk", {}));
    NbdOption(s, Option::kStructuredReply);
    NbdOption(s, Option::kListMetaContext, MetaData("disk", {}));
    NbdOption(s, Option::kListMetaContext, MetaData("", {"base:", "qemu:dirty-bitmap:b0"}));
    NbdOption(s, Option::kGo,
              InfoData("disk", {nbd::kInfoName, nbd::kInfoDescription, nbd::kInfoBlockSize}));
    NbdRequest(s, Command::kRead, 0, 100, 512, 1);               // unaligned
    NbdWrite(s, 0, (1ull << 30) - 512, 1024, 2);                  // past the end
    NbdRequest(s, Command::kRead, 0, 0, (32u << 20) + 512, 3);   // over max payload
    NbdRequest(s, Command::kBlockStatus, 0, 0, 4096, 4);          // base:allocation not set
    NbdRequest(s, Command::kWrite, 0, 0, (32u << 20) + 512, 5);  // fatal
    Save(dir, "libnbd_list_info_go", s);
  }
  {
    // EXPORT_NAME with the 124 zero bytes, then writes.
    Seed s = NbdUsualSetup();
    Be(s, nbd::kClientFixedNewstyle, 4);
    Seed name;
    NbdOption(s, Option::kExportName, Text(name, "disk"));
    NbdWrite(s, nbd::kCmdFlagFua, 0, 4096, 1);
    NbdRequest(s, Command::kFlush, 0, 0, 0, 2);
    NbdRequest(s, Command::kDisc, 0, 0, 0, 3);
    Save(dir, "export_name", s);
  }
  {
    // A read-only export, EXPORT_NAME "" with NO_ZEROES: a refused write (payload skipped), a
    // read, a fatal write.
    Seed s = NbdSetup(nbd::kFlagReadOnly | nbd::kFlagSendFlush, 2, 1, 2, 0, false);
    Be(s, kNewstyleNoZeroes, 4);
    NbdOption(s, Option::kExportName);
    NbdWrite(s, 0, 0, 4096, 1);
    NbdRequest(s, Command::kRead, 0, 4096, 4096, 2);
    NbdRequest(s, Command::kWrite, 0, 0, (1u << 20) + 4096, 3);
    Save(dir, "export_name_read_only", s);
  }
  {
    // TLS refused, an unknown option, then ABORT.
    Seed s = NbdUsualSetup();
    Be(s, kNewstyleNoZeroes, 4);
    NbdOption(s, Option::kStartTls);
    Seed peek;
    NbdOption(s, 4, Text(peek, "peek"));
    NbdOption(s, Option::kAbort);
    Save(dir, "starttls_unknown_abort", s);
  }
  {
    // An oversized option (skipped in chunks, refused), then GO.
    Seed s = NbdUsualSetup();
    Be(s, kNewstyleNoZeroes, 4);
    Seed big;
    for (uint32_t i = 0; i < 2 * nbd::kMaxOptionData + 100; ++i) big.U8(static_cast<uint8_t>(i));
    NbdOption(s, Option::kList, big);
    NbdOption(s, Option::kGo, InfoData("disk", {}));
    NbdRequest(s, Command::kRead, 0, 0, 512, 1);
    Save(dir, "oversized_option", s);
  }
  {
    // Malformed options: INFO cut short, GO for an unknown export, SET_META_CONTEXT with a
    // query past the data (after a good one), structured reply with data, EXPORT_NAME unknown.
    Seed s = NbdUsualSetup();
    Be(s, kNewstyleNoZeroes, 4);
    Seed cut;
    Be(cut, 10, 4);
    Text(cut, "disk");
    NbdOption(s, Option::kInfo, cut);
    NbdOption(s, Option::kGo, InfoData("other", {}));
    NbdOption(s, Option::kStructuredReply, InfoData("", {}));
    NbdOption(s, Option::kStructuredReply);
    NbdOption(s, Option::kSetMetaContext, MetaData("disk", {nbd::kBaseAllocation}));
    Seed bad;
    Be(bad, 0, 4);
    Be(bad, 1, 4);
    Be(bad, 40, 4);
    Text(bad, nbd::kBaseAllocation);
    NbdOption(s, Option::kSetMetaContext, bad);
    Seed other;
    NbdOption(s, Option::kExportName, Text(other, "other"));
    Save(dir, "malformed_options", s);
  }
  {
    Seed s = NbdUsualSetup();
    Be(s, 0x7, 4);  // an unknown client flag
    Save(dir, "bad_client_flags", s);
  }
  {
    Seed s = NbdUsualSetup();
    Be(s, kNewstyleNoZeroes, 4);
    Be(s, nbd::kMagic, 8);  // NBDMAGIC where IHAVEOPT belongs
    Be(s, 7, 4);
    Be(s, 0, 4);
    Save(dir, "bad_option_magic", s);
  }
}

// ---- dpdk_packet_fuzzer ----------------------------------------------------------------------

namespace di = dpdk_packet_input;
namespace dp = transport::dpdk;

dp::Route PeerRoute() {
  dp::Route r;
  r.src_mac = {0x02, 0, 0, 0, 0, 0x01};
  r.dst_mac = {0x02, 0, 0, 0, 0, 0x02};
  r.src_ip = 0x0A000001;
  r.dst_ip = di::kLocalIp;
  r.src_port = 41000;
  r.dst_port = di::kLocalPort;
  return r;
}

// A kPacket record: the Ethernet frame of `h` and `payload`, encoded correctly.
void DpdkPacket(Seed& s, const dp::RelHeader& h, std::span<const std::byte> payload = {}) {
  std::vector<std::byte> pkt(dp::kPacketOverhead + payload.size());
  dp::EncodePacket(pkt, PeerRoute(), h, payload);
  std::copy(payload.begin(), payload.end(), pkt.begin() + dp::kPacketOverhead);
  s.U8(di::kPacket);
  s.U8(static_cast<uint8_t>(pkt.size())).U8(static_cast<uint8_t>(pkt.size() >> 8));
  s.Bytes(pkt.data(), pkt.size());
}

// The bytes of a frame: its header and `len` bytes of payload.
std::vector<std::byte> FrameBytes(const proto::Frame& f, uint32_t len, uint8_t fill) {
  auto raw = proto::Encode(f);
  std::vector<std::byte> bytes(raw.begin(), raw.end());
  bytes.resize(raw.size() + len, std::byte{fill});
  return bytes;
}

// The packets of `frame` (frame number `frame_no`) cut at `chunk`, from seq `*seq` on.
std::vector<dp::RelHeader> Cut(const std::vector<std::byte>& frame, uint32_t chunk,
                               uint32_t frame_no, uint32_t* seq) {
  std::vector<dp::RelHeader> out;
  for (uint32_t off = 0; off < frame.size(); off += chunk) {
    dp::RelHeader h;
    h.kind = dp::PacketKind::kData;
    h.seq = (*seq)++;
    h.credit = static_cast<uint32_t>(dp::kRxReady);
    h.frame_no = frame_no;
    h.frame_off = off;
    h.frame_len = static_cast<uint32_t>(frame.size());
    out.push_back(h);
  }
  return out;
}

void DpdkFrame(Seed& s, const std::vector<std::byte>& frame, uint32_t chunk, uint32_t frame_no,
               uint32_t* seq, std::initializer_list<int> order = {}) {
  auto hs = Cut(frame, chunk, frame_no, seq);
  std::vector<int> idx(order);
  if (idx.empty()) {
    for (size_t i = 0; i < hs.size(); ++i) idx.push_back(static_cast<int>(i));
  }
  for (int i : idx) {
    const dp::RelHeader& h = hs[static_cast<size_t>(i)];
    const size_t n = std::min<size_t>(chunk, frame.size() - h.frame_off);
    DpdkPacket(s, h, std::span(frame).subspan(h.frame_off, n));
  }
}

proto::Frame DataFrame(uint64_t seq, uint32_t len) {
  return Make(proto::Data{seq, seq * 4096, len, 0}, uint16_t(AckLevel::kReceived), len);
}

void DpdkSeeds(const fs::path& dir) {
  const uint32_t chunk1500 = dp::ChunkSize(1500);
  const uint32_t chunk576 = dp::ChunkSize(576);
  auto u16 = [](Seed& s, uint16_t v) { s.U8(uint8_t(v)).U8(uint8_t(v >> 8)); };
  {
    // A trusted replica receives a Data frame and a Heartbeat, consumes, acks.
    Seed s;
    s.U8(di::kSetupTrust);
    uint32_t seq = 0;
    DpdkFrame(s, FrameBytes(DataFrame(0, 4096), 4096, 0xAB), chunk1500, 0, &seq);
    DpdkFrame(s, FrameBytes(Make(proto::Heartbeat{1, 0}), 0, 0), chunk1500, 1, &seq);
    s.U8(di::kTake | di::kTakeMove).U8(di::kTransmit).U8(8);
    u16(s.U8(di::kTick), 30);
    s.U8(di::kTake | di::kTakeRelease);
    Save(dir, "data_frames", s);
  }
  {
    // Control frames only (an Error with text), packets reordered and duplicated.
    Seed s;
    s.U8(di::kSetupTrust);
    uint32_t seq = 0;
    DpdkFrame(s, FrameBytes(Make(proto::Error{3}, 0, 100), 100, 'x'), chunk1500, 0, &seq);
    DpdkFrame(s, FrameBytes(DataFrame(1, 8192), 8192, 0x11), chunk1500, 1, &seq,
              {0, 3, 2, 2, 1, 0, 4, 5});
    s.U8(di::kTransmit).U8(3).U8(di::kTake);
    Save(dir, "reorder_duplicate", s);
  }
  {
    // The sending side: frames queued and transmitted, then acked (with a sack gap), a probe,
    // timeouts.
    Seed s;
    s.U8(di::kSetupTrust);
    s.U8(di::kQueue).U8(0);
    u16(s, 10);
    s.U8(di::kQueue).U8(1);
    u16(s, 4096);
    s.U8(di::kQueue).U8(0);
    u16(s, 20);
    s.U8(di::kTransmit).U8(63);
    dp::RelHeader ack;
    ack.kind = dp::PacketKind::kAck;
    ack.ack = 1;
    ack.sack = 0x6;  // 3 and 4 arrived, 2 did not
    ack.credit = 16;
    DpdkPacket(s, ack);
    u16(s.U8(di::kTick), 30);
    s.U8(di::kTransmit).U8(63);
    ack.ack = 5;
    ack.sack = 0;
    ack.credit = 17;
    DpdkPacket(s, ack);
    dp::RelHeader probe;
    probe.kind = dp::PacketKind::kProbe;
    probe.ack = 5;
    probe.credit = 17;
    DpdkPacket(s, probe);
    s.U8(di::kTransmit).U8(1);
    s.U8(di::kQueue).U8(1);
    u16(s, 60000);
    s.U8(di::kTransmit).U8(63);
    u16(s.U8(di::kTick), 40);
    u16(s.U8(di::kTick), 65535);
    s.U8(di::kAck).U8(0).U32(5).U32(0).U32(0).U32(18);
    Save(dir, "sender_acks_probe_timeout", s);
  }
  {
    // Data before Trust on the accepting side, and at the connecting side.
    Seed s;
    s.U8(0);
    uint32_t seq = 0;
    DpdkFrame(s, FrameBytes(DataFrame(0, 512), 512, 1), chunk1500, 0, &seq);
    Save(dir, "untrusted_data", s);
    Seed c;
    c.U8(di::kSetupConnecting | di::kSetupTrust);
    seq = 0;
    DpdkFrame(c, FrameBytes(Make(proto::Heartbeat{1, 0}), 0, 0), chunk1500, 0, &seq);
    DpdkFrame(c, FrameBytes(DataFrame(0, 512), 512, 1), chunk1500, 1, &seq);
    Save(dir, "connecting_side_data", c);
  }
  {
    // The smallest MTU, a block spread over many packets, received in order through the
    // kData action (the fuzzer encodes it).
    Seed s;
    s.U8(1 | di::kSetupTrust);
    auto frame = FrameBytes(DataFrame(0, 2048), 2048, 0x77);
    uint32_t seq = 0;
    for (const dp::RelHeader& h : Cut(frame, chunk576, 0, &seq)) {
      const uint32_t n = std::min<uint32_t>(chunk576, uint32_t(frame.size()) - h.frame_off);
      s.U8(di::kData | di::kFixFrame).U32(h.seq).U32(0).U32(h.frame_off).U32(h.frame_len);
      u16(s, uint16_t(n));
      s.Bytes(frame.data() + h.frame_off, n);
    }
    s.U8(di::kTake | di::kTakeMove).U8(di::kTransmit).U8(0).U8(di::kTake | di::kTakeRelease);
    Save(dir, "min_mtu_data", s);
  }
  {
    // Raw garbage that the decoder rejects: an ARP frame, a truncated packet.
    Seed s;
    s.U8(di::kSetupTrust);
    s.U8(di::kPacket | di::kFixIp | di::kFixCrc);
    u16(s, 200);
    for (int i = 0; i < 200; ++i) s.U8(uint8_t(i));
    s.U8(di::kPacket);
    u16(s, 60);
    for (int i = 0; i < 60; ++i) s.U8(i == 12 ? 0x08 : i == 13 ? 0x06 : 0);
    Save(dir, "garbage", s);
  }
}

// ---- config_fuzzer: resource files, as text -------------------------------------------------

void ConfigSeeds(const fs::path& dir) {
  auto text = [&](const std::string& name, std::string_view t) {
    Seed s;
    s.Bytes(t.data(), t.size());
    Save(dir, name, s);
  };
  text("good", R"([resource]
ack = "received"
block-size = "256K"
window = 16
quorum = 1
resync-rate = 100000000
peer-timeout = "3s"
transport = "auto"

[node.alpha]
role = "primary"
disk = "/dev/a"
address = "10.0.0.1:7100"
export = ["unix:/run/blkmirror/vol0.nbd", "[::1]:10809"]

[node.beta]
role = "replica"
disk = "/srv/b.img"
address = "10.0.0.2:7100"
dpdk-port = "memif:/run/x.sock,role=client"
dpdk-ip = "10.1.0.2"
dpdk-mtu = 9000
meta-dir = "/var/lib/blkmirror"
)");
  text("mistakes", R"([resource]
window = "32"
ack = 3
nope = true
[node.a]
disk = ""
address = "10.0.0.1"
[node.b]
role = "boss"
address = "10.0.0.1"
dpdk-mtu = 1e3
export = [1, "unix:"]
)");
  text("not_toml", "[node.a\ndisk = /x\n\"\"\"\n");
}

}  // namespace
}  // namespace blkmirror::fuzz

int main(int argc, char** argv) {
  using namespace blkmirror::fuzz;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTDIR   (writes OUTDIR/<target>/<seed>)\n", argv[0]);
    return 2;
  }
  fs::path out = argv[1];
  FrameSeeds(out / "frame_fuzzer");
  SessionSeeds(out / "session_fuzzer");
  ReplicatorSeeds(out / "replicator_fuzzer");
  NbdSeeds(out / "nbd_fuzzer");
  DpdkSeeds(out / "dpdk_packet_fuzzer");
  ConfigSeeds(out / "config_fuzzer");
  return failed ? 1 : 0;
}
