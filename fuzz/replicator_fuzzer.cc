// replicator_fuzzer: the primary side (Replicator) against fake replicas that answer with frames
// the input chooses.
//
// A Replicator (options from the input's first bytes: ack level, window, block size, volume,
// retries, quorum, one or two replicas, a shared key, in-memory dirty bitmaps, its own flushes at
// every turn or never) connects over the
// loopback transport to fake replicas. The input (fuzz/input_formats.h, replicator_input) then
// interleaves writes submitted to the Replicator with frames the fake replicas send: HelloOk
// with arbitrary fields (and correct or wrong proofs), Acks with arbitrary cumulative points and
// SACK bits, Nacks, Errors, AuthChallenges, Heartbeats, stray Data and Bye frames, arbitrary
// headers, closed connections, replicas that hold their receive buffers.
//
// Properties (a violation traps; ASan/UBSan reports fail the run too):
//   - What the primary sends is well-formed and in place: one Hello with the options' fields, a
//     correct AuthProof, Data only once the replica accepted (and, with a key, proved itself),
//     each Data frame carrying the submitted block (offset, length, CRC, bytes) under the seq
//     the write got, at the session's ack level, flagged as a resend exactly when it is one,
//     sent at most 1 + max_retries times, nothing after Bye.
//   - Submit succeeds exactly when CanSubmit() said so (and a chosen peer is live).
//   - Every submitted write completes exactly once, with its offset and length; a write that
//     completes OK reached its ack level (the replica received it, or acked it) on as many of
//     its peers as the quorum needs, minus those lost on the way.
//   - The primary's own Flush frames go only to replicas that accepted protocol 2, each under
//     the next seq of its session.
//   - A replica's dirty-bitmap bit is clear only when the newest write of that block sent to it
//     was acked durable (else a crash of the primary would lose the block on that replica):
//     acked at durable; or acked below it before the replica acked a later Flush (a Flush makes
//     every write the replica received before it durable: the model takes every write acked
//     before the Flush's ack, a superset of what the primary may clear); or by the final flush.
//   - Once every replica has closed: no write is left in flight, idle() and closed() hold, the
//     Replicator is destroyed without waiting on the ring, and every primary buffer is back.
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "common/clock.h"
#include "common/crc32c.h"
#include "engine/auth.h"
#include "engine/dirty_bitmap.h"
#include "engine/replicator.h"
#include "fuzz/fuzz_common.h"
#include "fuzz/input_formats.h"
#include "io/buffer_pool.h"
#include "proto/frame.h"
#include "transport/loopback/loopback_transport.h"

namespace blkmirror::fuzz {
namespace {

namespace ri = replicator_input;
using proto::AckLevel;
using proto::FrameType;

constexpr uint32_t kMaxWindow = 8;
constexpr size_t kBufferSize = 8 << 10;  // primary and replica buffers: the largest block
constexpr size_t kPrimaryBuffers = kMaxWindow + 8;  // the window, and stray frames in transit
constexpr size_t kReplicaBuffers = 4;
constexpr int kMaxRecords = 96;
constexpr int kSettleRounds = 32;
constexpr uint64_t kFlushToken = 0;  // writes' tokens start at 1

engine::Key TheKey() {
  engine::Key k;
  for (size_t i = 0; i < k.bytes.size(); ++i) k.bytes[i] = static_cast<uint8_t>(0xC3 ^ (i * 5));
  return k;
}

io::BufferPool& PrimaryPool() {
  static io::BufferPool* pool =
      io::BufferPool::Create(kBufferSize, kPrimaryBuffers, io::HugePages::kNever).value().release();
  return *pool;
}

io::BufferPool& ReplicaPool(size_t i) {
  static std::array<io::BufferPool*, 2> pools = {
      io::BufferPool::Create(kBufferSize, kReplicaBuffers, io::HugePages::kNever).value().release(),
      io::BufferPool::Create(kBufferSize, kReplicaBuffers, io::HugePages::kNever).value().release(),
  };
  return *pools[i];
}

// Payloads of stray Data frames a fake replica sends (the loopback copies at most a buffer).
const std::array<std::byte, 2 * kBufferSize> kZeros{};

// The bytes of write `token`: a window into a fixed pseudo-random table (memcpy and memcmp
// keep the harness cheap next to the code under test).
const std::byte* BlockBytes(uint64_t token) {
  static const std::vector<std::byte> table = [] {
    std::vector<std::byte> t(5 * kBufferSize);
    uint32_t x = 0x9E3779B9;
    for (auto& b : t) {
      x = x * 1664525 + 1013904223;
      b = static_cast<std::byte>(x >> 24);
    }
    return t;
  }();
  return table.data() + (token * 4099) % (4 * kBufferSize);
}

struct Options {
  engine::ReplicatorOptions rep;
  size_t replicas = 1;
  bool bitmaps = false;
  uint32_t quorum = 1;  // effective
};

Options ParseSetup(ByteReader& in) {
  uint8_t a = in.U8(), b = in.U8(), c = in.U8();
  Options o;
  static constexpr AckLevel kLevels[4] = {AckLevel::kSent, AckLevel::kReceived, AckLevel::kDurable,
                                          AckLevel::kDurable};
  o.rep.ack = kLevels[a & 3];
  o.rep.window = 1 + ((a >> 2) & 7);
  o.rep.block_size = (a & 0x20) ? 8192 : 4096;
  o.replicas = (a & 0x40) ? 2 : 1;
  if (a & 0x80) o.rep.key = TheKey();
  uint32_t blocks = 1 + (b & 15);
  o.rep.volume_size = uint64_t{blocks} * o.rep.block_size - ((b & 0x10) ? 1000 : 0);
  o.rep.max_retries = b >> 5;
  o.rep.quorum = std::min<uint32_t>(c & 3, static_cast<uint32_t>(o.replicas));
  o.quorum = o.rep.quorum == 0 ? static_cast<uint32_t>(o.replicas) : o.rep.quorum;
  o.bitmaps = c & 0x04;
  o.rep.flush_interval = std::chrono::microseconds((c & 0x08) ? 1 : 0);
  // Far beyond one run: the timeout paths run (and never fire), the run stays deterministic.
  o.rep.peer_timeout = std::chrono::milliseconds(3'600'000);
  for (uint8_t i = 0; i < 16; ++i) o.rep.volume_id.bytes[i] = static_cast<uint8_t>(0xF0 | i);
  return o;
}

struct FakeReplica {
  size_t index = 0;
  std::unique_ptr<transport::Transport> t;
  transport::Endpoint endpoint;
  transport::ConnId conn = transport::kNoConn;
  bool open = false;  // accepted and not closed
  bool hold = false;  // keep received blocks (the primary's frames wait for buffers)
  std::vector<io::BufferRef> held;
  std::unique_ptr<engine::DirtyBitmap> bitmap;
  // What it received.
  std::optional<proto::Hello> hello;
  proto::RawHeader hello_raw{};
  std::optional<engine::Nonce> nonce_r;  // sent in our AuthChallenge
  std::optional<engine::Nonce> nonce_p;  // from the primary's AuthProof
  bool bye = false;
  std::map<uint64_t, uint32_t> sends;  // seq -> Data frames received
  // What it said.
  bool hello_ok_sent = false;
  bool proof_ok_sent = false;
  uint16_t version = 0;  // in the last HelloOk sent
  uint64_t flushes = 0;  // the primary's Flush frames, as its stats count them
  std::set<uint64_t> acked;    // seqs covered by wire-level Acks
  std::set<uint64_t> durable;  // seqs acked durable (directly, or by the final flush)
  // seq -> token, as the primary assigns them (in Submit order, per peer; kFlushToken: a Flush).
  std::vector<uint64_t> seq_token;
};

struct WriteInfo {
  uint64_t offset = 0;
  uint32_t length = 0;
  uint32_t crc = 0;
  engine::PeerMask targets = 0;  // live peers of its mask when submitted
  engine::PeerMask sent = 0;     // the targets it went to (the others were behind)
  std::array<uint64_t, 2> seq{};  // per peer it was sent to
  bool completed = false;
  bool ok = false;
  uint32_t lost_targets = 0;  // peers it was sent to, lost or closed when it completed
};

class Run {
 public:
  explicit Run(ByteReader& in);
  ~Run();
  void Record(ByteReader& in);
  void Finish();

 private:
  void Loop();
  void PollReplica(FakeReplica& r);
  void OnPrimaryFrame(FakeReplica& r, transport::Completion& c);
  void OnData(FakeReplica& r, const proto::Frame& f, const io::BufferRef& data);
  bool Send(FakeReplica& r, const proto::RawHeader& header, std::span<const std::byte> control,
            const std::byte* data = nullptr);
  void SendFrame(FakeReplica& r, proto::Frame f, std::span<const std::byte> control = {});
  void CloseReplica(FakeReplica& r);
  void ReleaseHeld(FakeReplica& r);
  void Submit(ByteReader& in, uint8_t arg);
  void TakeCompletions();
  uint32_t LostTargets(engine::PeerMask targets) const;

  Options o_;
  AckLevel wire_;
  uint64_t blocks_;
  transport::LoopbackNetwork net_;  // outlives the transports
  std::unique_ptr<transport::Transport> primary_t_;
  std::array<FakeReplica, 2> replicas_;
  std::unique_ptr<engine::Replicator> rep_;
  std::map<uint64_t, WriteInfo> writes_;  // by token
  uint64_t next_token_ = 1;
  std::array<transport::Completion, 16> completions_;
  std::array<engine::WriteCompletion, 8> done_;
};

Run::Run(ByteReader& in) : o_(ParseSetup(in)) {
  wire_ = std::max(o_.rep.ack, AckLevel::kReceived);
  blocks_ = (o_.rep.volume_size + o_.rep.block_size - 1) / o_.rep.block_size;
  primary_t_ = net_.CreateTransport("primary");
  FUZZ_CHECK(primary_t_->Register(PrimaryPool()).ok(), "register the primary pool");
  std::vector<engine::PeerConfig> peers;
  for (size_t i = 0; i < o_.replicas; ++i) {
    FakeReplica& r = replicas_[i];
    r.index = i;
    r.t = net_.CreateTransport("replica" + std::to_string(i));
    FUZZ_CHECK(r.t->Register(ReplicaPool(i)).ok(), "register a replica pool");
    r.endpoint = {"replica" + std::to_string(i), 7000};
    FUZZ_CHECK(r.t->Listen(r.endpoint).ok(), "listen");
    peers.push_back({primary_t_.get(), r.endpoint});
  }
  auto rep = engine::Replicator::Create(ProcessRing(), PrimaryPool(), o_.rep);
  FUZZ_CHECK(rep.ok(), "Replicator::Create: {}", rep.status().message());
  rep_ = std::move(rep).value();
  Status started = rep_->StartConnect(peers);
  FUZZ_CHECK(started.ok(), "StartConnect: {}", started.message());
  if (o_.bitmaps) {
    for (size_t i = 0; i < o_.replicas; ++i) {
      engine::BitmapKey key{o_.rep.block_size, o_.rep.volume_size, o_.rep.volume_id, {}};
      replicas_[i].bitmap = engine::DirtyBitmap::InMemory(key);
      rep_->AttachBitmap(i, replicas_[i].bitmap.get());
    }
  }
  Loop();
}

Run::~Run() {
  for (auto& r : replicas_) r.held.clear();
}

bool Run::Send(FakeReplica& r, const proto::RawHeader& header, std::span<const std::byte> control,
               const std::byte* data) {
  if (!r.open) return false;
  transport::WorkItem item;
  item.conn = r.conn;
  item.header = header;
  item.control = control;
  item.data = data;
  if (r.t->Post(std::span(&item, 1)).ok()) return true;
  // Bytes a stream transport could not frame: the connection ends.
  CloseReplica(r);
  return false;
}

void Run::SendFrame(FakeReplica& r, proto::Frame f, std::span<const std::byte> control) {
  f.payload_len = static_cast<uint32_t>(control.size());
  Send(r, proto::Encode(f), control);
}

void Run::CloseReplica(FakeReplica& r) {
  if (!r.open) return;
  ReleaseHeld(r);
  r.t->Close(r.conn);
  r.open = false;
}

void Run::ReleaseHeld(FakeReplica& r) {
  for (auto& b : r.held) r.t->Release(r.conn, std::move(b));
  r.held.clear();
}

void Run::Record(ByteReader& in) {
  const uint8_t ctl = in.U8();
  const uint8_t action = ctl & ri::kActionMask;
  const uint8_t arg = ctl >> ri::kArgShift;
  FakeReplica& r = replicas_[(ctl & ri::kPeer1) && o_.replicas > 1 ? 1 : 0];
  switch (action) {
    case ri::kRaw: {
      proto::RawHeader h{};
      in.Fill(h);
      if (arg & 3) FixPrefix(h);
      uint32_t len = GetLe32(h, kOffPayloadLen);
      if (static_cast<FrameType>(GetType(h)) == FrameType::kData) {
        Send(r, h, {}, kZeros.data());
      } else {
        std::vector<std::byte> payload(len <= proto::kMaxControlPayload ? len : 0);
        in.Fill(payload);
        Send(r, h, payload);
      }
      break;
    }
    case ri::kHelloOk: {
      proto::HelloOk ok;
      ok.version = in.U8();
      uint8_t mb = in.U8(), cap = in.U8();
      static constexpr uint32_t kMaxBlocks[4] = {0, 4096, 64u << 20, 8192};
      ok.max_block_size = (mb & 3) == 0 ? o_.rep.block_size : kMaxBlocks[mb & 3];
      if (mb >= 4) ok.max_block_size = mb * 4096u;
      switch (cap & 3) {
        case 0:
          ok.capacity = o_.rep.volume_size;
          break;
        case 1:
          ok.capacity = o_.rep.volume_size - 1;
          break;
        case 2:
          ok.capacity = UINT64_MAX;
          break;
        default:
          ok.capacity = uint64_t{cap} * 4096;
          break;
      }
      ok.replica_id.bytes[0] = in.U8();
      proto::Frame f;
      f.body = ok;
      engine::Mac proof{};
      bool with_proof = o_.rep.key && r.nonce_p && r.nonce_r;
      if (with_proof || (arg & 2)) f.payload_len = proto::kAuthMacSize;
      proto::RawHeader h = proto::Encode(f);
      if (with_proof)
        proof = engine::ReplicaProof(*o_.rep.key, r.hello_raw, h, *r.nonce_p, *r.nonce_r);
      if (arg & 1) proof[0] ^= 1;
      std::span<const std::byte> payload =
          f.payload_len ? std::as_bytes(std::span(proof)) : std::span<const std::byte>();
      if (Send(r, h, payload)) {
        r.hello_ok_sent = true;
        r.version = ok.version;
        r.t->Trust(r.conn);  // as a replica that admitted the session: Data may come
        r.proof_ok_sent |= with_proof && !(arg & 1);
      }
      break;
    }
    case ri::kAck: {
      uint8_t sel = in.U8();
      proto::Ack a;
      switch (sel & 3) {
        case 0:
          a.level = wire_;
          break;
        case 1:
          a.level = AckLevel::kReceived;
          break;
        case 2:
          a.level = AckLevel::kDurable;
          break;
        default:
          a.level = static_cast<AckLevel>(sel >> 2);
          break;
      }
      a.cumulative = in.U8();
      a.sack_base = in.U8();
      a.sack_bits = in.U32();
      proto::Frame f;
      f.body = a;
      if (!Send(r, proto::Encode(f), {})) break;
      // What the primary may take from it (a superset: it rejects some).
      std::set<uint64_t> covered;
      for (uint64_t s = 0; s < a.cumulative; ++s) covered.insert(s);
      for (uint64_t i = 0; i < 64; ++i) {
        if ((a.sack_bits >> i) & 1) covered.insert(a.sack_base + i);
      }
      if (a.level == wire_) {
        // A Flush acked now makes durable every write acked before (below its seq).
        for (uint64_t s : covered) {
          if (s >= r.seq_token.size() || r.seq_token[s] != kFlushToken || r.acked.count(s)) continue;
          for (uint64_t w : r.acked) {
            if (w < s) r.durable.insert(w);
          }
        }
        r.acked.insert(covered.begin(), covered.end());
      }
      if (a.level == AckLevel::kDurable) {
        if (wire_ == AckLevel::kDurable) {
          r.durable.insert(covered.begin(), covered.end());
        } else if (a.cumulative == r.seq_token.size()) {
          r.durable.insert(r.acked.begin(), r.acked.end());  // the final flush
        }
      }
      break;
    }
    case ri::kNack: {
      proto::Nack n;
      n.seq = in.U8();
      n.reason = (arg & 1) ? proto::NackReason::kIoError : proto::NackReason::kCrcMismatch;
      n.err = in.U8();
      if (n.seq < r.seq_token.size() && r.seq_token[n.seq] != kFlushToken) {
        n.offset = writes_.at(r.seq_token[n.seq]).offset;
      }
      n.expected_crc = 1;
      n.actual_crc = 2;
      proto::Frame f;
      f.body = n;
      SendFrame(r, f);
      break;
    }
    case ri::kError: {
      proto::Frame f;
      f.body = proto::Error{in.U8()};
      std::vector<std::byte> text(in.U8() % 65);
      in.Fill(text);
      SendFrame(r, f, text);
      break;
    }
    case ri::kSubmit:
      Submit(in, arg);
      break;
    case ri::kStep:
      for (int i = 0; i <= arg; ++i) Loop();
      break;
    case ri::kControl:
      switch (arg & 7) {
        case 0:
          ReleaseHeld(r);
          break;
        case 1:
          r.hold = !r.hold;
          if (!r.hold) ReleaseHeld(r);
          break;
        case 2:
          CloseReplica(r);
          break;
        case 3:
          // StartClose is for an idle Replicator.
          if (rep_->idle()) rep_->StartClose();
          break;
        case 4: {
          engine::Nonce nonce;
          in.Fill(std::as_writable_bytes(std::span(nonce)));
          proto::Frame f;
          f.body = proto::AuthChallenge{};
          if (!r.nonce_r) r.nonce_r = nonce;
          SendFrame(r, f, std::as_bytes(std::span(nonce)));
          break;
        }
        case 5: {
          proto::Frame f;
          f.body = proto::Heartbeat{NowNs(), 0};
          SendFrame(r, f);
          break;
        }
        case 6: {
          proto::Frame f;
          f.body = proto::Data{0, 0, in.U8() * 64u, 0};
          f.flags = static_cast<uint16_t>(AckLevel::kReceived);
          f.payload_len = std::get<proto::Data>(f.body).length;
          Send(r, proto::Encode(f), {}, kZeros.data());
          break;
        }
        case 7: {
          proto::Frame f;
          f.body = proto::Bye{};
          SendFrame(r, f);
          break;
        }
      }
      break;
  }
  Loop();
}

void Run::Submit(ByteReader& in, uint8_t arg) {
  const int count = (arg & 3) + 1;
  static constexpr engine::PeerMask kMasks[4] = {engine::kAllPeers, engine::kAllPeers, 1, 2};
  const engine::PeerMask mask = kMasks[arg >> 2];
  for (int i = 0; i < count; ++i) {
    uint64_t block = in.U8() % blocks_;
    uint64_t offset = block * o_.rep.block_size;
    auto length =
        static_cast<uint32_t>(std::min<uint64_t>(o_.rep.block_size, o_.rep.volume_size - offset));
    auto buf = PrimaryPool().TryGet();
    if (!buf) return;
    uint64_t token = next_token_++;
    std::memcpy(buf->data(), BlockBytes(token), length);
    const uint32_t crc = Crc32c(buf->data(), length);
    const bool can = rep_->CanSubmit(mask);
    const bool busy_block = rep_->BlockInFlight(offset);
    const engine::PeerMask targets = mask & rep_->live_peers();
    const engine::PeerMask sent = targets & ~rep_->Behind();
    Status s = rep_->Submit(offset, std::move(*buf), length, token, mask);
    FUZZ_CHECK(s.ok() == (can && targets != 0 && !busy_block),
               "Submit returned \"{}\" where CanSubmit(0x{:x}) was {}, the block {} in flight "
               "and the live targets 0x{:x}",
               s.message(), mask, can, busy_block ? "was" : "was not", targets);
    if (!s.ok()) continue;
    FUZZ_CHECK(static_cast<uint32_t>(std::popcount(sent)) >=
                   std::min(o_.quorum, static_cast<uint32_t>(std::popcount(targets))),
               "a write went to {} peers (0x{:x}), its quorum is {} of 0x{:x}", std::popcount(sent),
               sent, o_.quorum, targets);
    WriteInfo w;
    w.offset = offset;
    w.length = length;
    w.crc = crc;
    w.targets = targets;
    w.sent = sent;
    for (size_t p = 0; p < o_.replicas; ++p) {
      if (!((sent >> p) & 1)) continue;
      w.seq[p] = replicas_[p].seq_token.size();
      replicas_[p].seq_token.push_back(token);
    }
    writes_[token] = w;
  }
}

uint32_t Run::LostTargets(engine::PeerMask targets) const {
  auto stats = rep_->stats();
  uint32_t lost = 0;
  for (size_t p = 0; p < stats.size(); ++p) {
    if (((targets >> p) & 1) && (stats[p].state == engine::PeerState::kLost ||
                                 stats[p].state == engine::PeerState::kClosed)) {
      ++lost;
    }
  }
  return lost;
}

void Run::TakeCompletions() {
  for (;;) {
    size_t n = rep_->Poll(done_);
    // The primary's own Flushes leave in Poll, each under its replica's next seq.
    for (size_t p = 0; p < o_.replicas; ++p) {
      FakeReplica& r = replicas_[p];
      for (; r.flushes < rep_->peer_stats(p).flushes_sent; ++r.flushes) {
        r.seq_token.push_back(kFlushToken);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      const engine::WriteCompletion& c = done_[i];
      auto it = writes_.find(c.token);
      FUZZ_CHECK(it != writes_.end(), "completion for token {} that was never submitted", c.token);
      WriteInfo& w = it->second;
      FUZZ_CHECK(!w.completed, "write {} completed twice", c.token);
      FUZZ_CHECK(c.offset == w.offset && c.length == w.length,
                 "write {} completed as {} bytes at {}, submitted as {} at {}", c.token, c.length,
                 c.offset, w.length, w.offset);
      FUZZ_CHECK(c.skipped == (w.targets & ~w.sent),
                 "write {} completed with skipped peers 0x{:x}; it was not sent to 0x{:x}", c.token,
                 c.skipped, w.targets & ~w.sent);
      w.completed = true;
      w.ok = c.status.ok();
      w.lost_targets = LostTargets(w.sent);
    }
    if (n < done_.size()) break;
  }
}

void Run::Loop() {
  TakeCompletions();
  for (size_t i = 0; i < o_.replicas; ++i) PollReplica(replicas_[i]);
}

void Run::PollReplica(FakeReplica& r) {
  for (;;) {
    size_t n = r.t->Poll(completions_);
    for (size_t i = 0; i < n; ++i) {
      transport::Completion& c = completions_[i];
      switch (c.kind) {
        case transport::CompletionKind::kAccepted:
          FUZZ_CHECK(r.conn == transport::kNoConn, "the primary connected twice to replica {}",
                     r.index);
          r.conn = c.conn;
          r.open = true;
          break;
        case transport::CompletionKind::kRecv:
          FUZZ_CHECK(c.conn == r.conn, "frame on an unknown connection");
          OnPrimaryFrame(r, c);
          break;
        case transport::CompletionKind::kClosed:
          r.open = false;
          ReleaseHeld(r);
          break;
        case transport::CompletionKind::kSent:
          break;
      }
    }
    if (n < completions_.size()) break;
  }
}

void Run::OnPrimaryFrame(FakeReplica& r, transport::Completion& c) {
  auto f = proto::Decode(c.header);
  FUZZ_CHECK(f.ok(), "the primary sent a frame that does not decode: {}", f.status().message());
  FUZZ_CHECK(!r.bye, "the primary sent {} after Bye", proto::FrameTypeName(f->type()));
  if (f->type() == FrameType::kData) {
    OnData(r, *f, c.data);
    if (r.hold && r.open) {
      r.held.push_back(std::move(c.data));
    } else {
      r.t->Release(c.conn, std::move(c.data));
    }
    return;
  }
  FUZZ_CHECK(!c.data, "the primary sent block data in a {} frame", proto::FrameTypeName(f->type()));
  switch (f->type()) {
    case FrameType::kHello: {
      const auto& h = std::get<proto::Hello>(f->body);
      FUZZ_CHECK(!r.hello, "the primary sent a second Hello");
      FUZZ_CHECK(h.kind == proto::SessionKind::kWrite && h.block_size == o_.rep.block_size &&
                     h.window == o_.rep.window && h.volume_size == o_.rep.volume_size &&
                     h.volume_id == o_.rep.volume_id && h.min_version == o_.rep.min_version &&
                     // A push (no generations) offers less than protocol 3.
                     h.max_version == std::min<uint16_t>(o_.rep.max_version,
                                                         proto::kGenerationsVersion - 1) &&
                     h.peer_timeout_ms == o_.rep.peer_timeout.count(),
                 "the Hello does not say what the options do");
      r.hello = h;
      r.hello_raw = c.header;
      return;
    }
    case FrameType::kAuthProof: {
      FUZZ_CHECK(o_.rep.key && r.hello && r.nonce_r && !r.nonce_p,
                 "AuthProof from a primary without a key, or unasked, or twice");
      engine::Nonce nonce_p;
      std::memcpy(nonce_p.data(), c.control.data(), nonce_p.size());
      engine::Mac want = engine::PrimaryProof(*o_.rep.key, r.hello_raw, *r.nonce_r, nonce_p);
      FUZZ_CHECK(std::memcmp(want.data(), c.control.data() + nonce_p.size(), want.size()) == 0,
                 "the primary's proof is wrong");
      r.nonce_p = nonce_p;
      return;
    }
    case FrameType::kBye:
      FUZZ_CHECK(r.hello_ok_sent, "Bye before the session opened");
      r.bye = true;
      return;
    case FrameType::kFlush: {
      const uint64_t seq = std::get<proto::Flush>(f->body).seq;
      FUZZ_CHECK(r.hello_ok_sent && r.version >= proto::kExtentsVersion,
                 "Flush seq {} to a replica that did not accept protocol {}", seq,
                 proto::kExtentsVersion);
      FUZZ_CHECK(!o_.rep.key || r.proof_ok_sent,
                 "Flush seq {} to a replica that never proved it holds the key", seq);
      FUZZ_CHECK(seq < r.seq_token.size() && r.seq_token[seq] == kFlushToken,
                 "Flush under seq {}, which the primary gave no Flush", seq);
      return;
    }
    case FrameType::kHeartbeat:
    case FrameType::kError:
      return;
    default:
      FUZZ_CHECK(false, "the primary sent a {} frame", proto::FrameTypeName(f->type()));
  }
}

void Run::OnData(FakeReplica& r, const proto::Frame& f, const io::BufferRef& data) {
  const auto& d = std::get<proto::Data>(f.body);
  FUZZ_CHECK(r.hello_ok_sent, "Data seq {} before the replica accepted the session", d.seq);
  FUZZ_CHECK(!o_.rep.key || r.proof_ok_sent,
             "Data seq {} to a replica that never proved it holds the key", d.seq);
  FUZZ_CHECK(d.seq < r.seq_token.size(), "Data seq {}, but only {} writes went to replica {}",
             d.seq, r.seq_token.size(), r.index);
  const uint64_t token = r.seq_token[d.seq];
  FUZZ_CHECK(token != kFlushToken, "Data under seq {}, the seq of a Flush", d.seq);
  const WriteInfo& w = writes_.at(token);
  FUZZ_CHECK(d.offset == w.offset && d.length == w.length && d.crc == w.crc,
             "Data seq {} says {} bytes at {} CRC 0x{:08x}; the write was {} at {} CRC 0x{:08x}",
             d.seq, d.length, d.offset, d.crc, w.length, w.offset, w.crc);
  FUZZ_CHECK(data && Crc32c(data.data(), d.length) == w.crc,
             "Data seq {} (offset {}) carries bytes other than the submitted block", d.seq,
             d.offset);
  FUZZ_CHECK(std::memcmp(data.data(), BlockBytes(token), d.length) == 0,
             "Data seq {} differs from the submitted block", d.seq);
  uint32_t& sends = r.sends[d.seq];
  FUZZ_CHECK((f.flags & proto::kDataAckMask) == static_cast<uint16_t>(wire_),
             "Data seq {} asks for ack level {}", d.seq, f.flags & proto::kDataAckMask);
  FUZZ_CHECK(((f.flags & proto::kDataResend) != 0) == (sends > 0),
             "Data seq {}: resend flag {} on transmission {}", d.seq,
             (f.flags & proto::kDataResend) != 0, sends + 1);
  ++sends;
  FUZZ_CHECK(sends <= 1 + o_.rep.max_retries, "Data seq {} sent {} times with max_retries {}",
             d.seq, sends, o_.rep.max_retries);
}

void Run::Finish() {
  for (auto& r : replicas_) {
    r.hold = false;
    if (r.open) ReleaseHeld(r);
  }
  for (int i = 0; i < 4; ++i) Loop();
  for (size_t i = 0; i < o_.replicas; ++i) CloseReplica(replicas_[i]);
  for (int i = 0; i < kSettleRounds && (rep_->in_flight() > 0 || !rep_->closed()); ++i) Loop();
  Loop();
  FUZZ_CHECK(rep_->in_flight() == 0,
             "{} writes neither completed nor failed after every replica "
             "closed",
             rep_->in_flight());
  FUZZ_CHECK(rep_->closed(), "connections still open after every replica closed");
  FUZZ_CHECK(rep_->idle(),
             "buffers still held after every replica closed and every write was "
             "reported");

  for (const auto& [token, w] : writes_) {
    FUZZ_CHECK(w.completed, "write {} (offset {}) never completed", token, w.offset);
    if (!w.ok) continue;
    uint32_t reached = 0;
    for (size_t p = 0; p < o_.replicas; ++p) {
      if (!((w.sent >> p) & 1)) continue;
      const FakeReplica& r = replicas_[p];
      bool got = o_.rep.ack == AckLevel::kSent ? r.sends.count(w.seq[p]) == 1
                                               : r.acked.count(w.seq[p]) == 1;
      reached += got;
    }
    // The quorum is of the live targets at submit time; the peers it was sent to that were
    // lost since are excused.
    const auto targets = static_cast<uint32_t>(std::popcount(w.targets));
    const auto sent = static_cast<uint32_t>(std::popcount(w.sent));
    FUZZ_CHECK(reached + w.lost_targets >= std::min(o_.quorum, targets) &&
                   (reached > 0 || w.lost_targets == sent),
               "write {} (offset {}) completed OK, reaching its ack level on {} of {} peers ({} "
               "lost, quorum {})",
               token, w.offset, reached, targets, w.lost_targets, o_.quorum);
  }
  for (size_t p = 0; p < o_.replicas; ++p) {
    const FakeReplica& r = replicas_[p];
    if (!r.bitmap) continue;
    // The newest block sent to this replica for each block of the volume.
    std::vector<std::optional<uint64_t>> newest(blocks_);
    for (uint64_t s = 0; s < r.seq_token.size(); ++s) {
      if (r.seq_token[s] == kFlushToken) continue;
      newest[writes_.at(r.seq_token[s]).offset / o_.rep.block_size] = s;
    }
    for (uint64_t b = 0; b < blocks_; ++b) {
      if (r.bitmap->Test(b)) continue;
      FUZZ_CHECK(newest[b].has_value(),
                 "replica {}'s dirty bit for block {} was cleared, but the block was never sent", p,
                 b);
      FUZZ_CHECK(r.durable.count(*newest[b]) == 1,
                 "replica {}'s dirty bit for block {} was cleared, but the newest write of it sent "
                 "there (seq {}) was never acked durable",
                 p, b, *newest[b]);
    }
  }

  uint64_t t0 = NowNs();
  rep_.reset();
  FUZZ_CHECK(NowNs() - t0 < kNoWaitLimitNs, "destroying the Replicator took {} ms",
             (NowNs() - t0) / 1000000);
  FUZZ_CHECK(PrimaryPool().available() == PrimaryPool().count(),
             "{} primary buffers are still out after the Replicator was destroyed",
             PrimaryPool().count() - PrimaryPool().available());
}

}  // namespace
}  // namespace blkmirror::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  blkmirror::fuzz::QuietLogs();
  (void)blkmirror::fuzz::ProcessRing();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blkmirror::fuzz;
  ByteReader in(data, size);
  Run run(in);
  for (int i = 0; i < kMaxRecords && !in.empty(); ++i) run.Record(in);
  run.Finish();
  return 0;
}
