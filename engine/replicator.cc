#include "engine/replicator.h"

#include <algorithm>
#include <array>

#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "common/crc32c.h"
#include "engine/seq_tracker.h"
#include "engine/session.h"

namespace blkmirror::engine {
namespace {

constexpr uint64_t kByeTag = UINT64_MAX;
constexpr uint32_t kNoWrite = UINT32_MAX;

}  // namespace

class Replicator::Impl {
 public:
  Impl(io::Ring& ring, const ReplicatorOptions& options)
      : ring_(ring),
        options_(options),
        wire_level_(std::max(options.ack, proto::AckLevel::kReceived)),
        span_(SeqSpan(options.window)),
        writes_(options.window),
        done_(options.window) {
    free_.reserve(options.window);
    for (uint32_t i = options.window; i-- > 0;) free_.push_back(i);
  }

  Status StartConnect(std::span<const PeerConfig> configs) {
    if (configs.empty()) return Status::Invalid("no peer to replicate to");
    hello_.min_version = options_.min_version;
    hello_.max_version = options_.max_version;
    hello_.kind = proto::SessionKind::kWrite;
    hello_.block_size = options_.block_size;
    hello_.window = options_.window;
    hello_.volume_size = options_.volume_size;
    hello_.volume_id = options_.volume_id;
    for (const PeerConfig& config : configs) {
      auto peer = std::make_unique<Peer>(span_);
      peer->name = config.endpoint.ToString();
      peer->stats.peer = peer->name;
      auto conn = config.transport->Connect(config.endpoint, options_.connect_timeout);
      peer->t = config.transport;
      if (!conn.ok() && config.fallback != nullptr) {
        peer->stats.fallback_reason =
            fmt::format("{}: {}", config.transport->name(), conn.status().message());
        spdlog::info("{}: falling back to {} ({})", peer->name, config.fallback->name(),
                     peer->stats.fallback_reason);
        conn = config.fallback->Connect(config.endpoint, options_.connect_timeout);
        peer->t = config.fallback;
      }
      if (!conn.ok()) return conn.status();
      peer->conn = *conn;
      peer->stats.transport = std::string(peer->t->name());
      if (std::find(transports_.begin(), transports_.end(), peer->t) == transports_.end()) {
        transports_.push_back(peer->t);
      }
      proto::Frame f;
      f.body = hello_;
      auto item = ControlItem(peer->conn, f);
      RETURN_IF_ERROR(peer->t->Post(std::span(&item, 1)));
      peers_.push_back(std::move(peer));
    }
    return Status::Ok();
  }

  bool ready() const {
    return !peers_.empty() && std::all_of(peers_.begin(), peers_.end(), [](const auto& p) {
      return p->state == State::kReady;
    });
  }

  Status Connect(std::span<const PeerConfig> configs) {
    RETURN_IF_ERROR(StartConnect(configs));
    auto deadline = NowNs() + static_cast<uint64_t>(options_.handshake_timeout.count()) * 1000000;
    while (failure_.ok() && !ready()) {
      if (NowNs() > deadline) {
        for (auto& p : peers_) {
          if (p->state != State::kReady) {
            Fail(Status::Error(ErrorCode::kTimeout,
                               fmt::format("{} did not answer the handshake within {} ms",
                                           p->name, options_.handshake_timeout.count())));
            break;
          }
        }
        break;
      }
      RETURN_IF_ERROR(ring_.Wait(std::chrono::milliseconds(20)));
      PollTransports();
    }
    return failure_;
  }

  bool CanSubmit() const {
    if (!failure_.ok() || free_.empty()) return false;
    for (const auto& p : peers_) {
      if (p->state != State::kReady) return false;
      // Keep every outstanding seq inside the span the replica tracks.
      if (p->next_seq - p->released.cumulative() >= span_) return false;
      if (p->t->SendSpace(p->conn) == 0) return false;
    }
    return true;
  }

  Status Submit(uint64_t offset, io::BufferRef buffer, uint32_t length, uint64_t token) {
    if (!failure_.ok()) return failure_;
    if (offset % options_.block_size != 0 || offset >= options_.volume_size ||
        length != std::min<uint64_t>(options_.block_size, options_.volume_size - offset)) {
      return Status::Invalid("write of {} bytes at offset {} is not one block of the volume "
                             "(block size {}, volume size {})",
                             length, offset, options_.block_size, options_.volume_size);
    }
    if (!buffer || buffer.capacity() < length) {
      return Status::Invalid("write at offset {}: buffer holds fewer than {} bytes", offset,
                             length);
    }
    if (!CanSubmit()) {
      return Status::Error(ErrorCode::kBusy, "replication window is full");
    }
    uint32_t wi = free_.back();
    free_.pop_back();
    Write& w = writes_[wi];
    w.used = true;
    w.token = token;
    w.offset = offset;
    w.length = length;
    w.crc = Crc32c(buffer.data(), length);
    w.buffer = std::move(buffer);
    w.start_ns = NowNs();
    w.waiting = 0;
    w.holding = 0;
    w.done = false;
    w.reported = false;
    w.status = Status();
    ++in_flight_;
    for (auto& p : peers_) {
      uint64_t seq = p->next_seq++;
      PeerWrite& pw = p->writes[seq % span_];
      pw = PeerWrite{};
      pw.write = wi;
      pw.seq = seq;
      ++w.waiting;
      ++w.holding;
      SendData(*p, pw);
      if (!failure_.ok()) break;
    }
    return Status::Ok();
  }

  size_t Poll(std::span<WriteCompletion> out) {
    PollTransports();
    size_t n = 0;
    while (n < out.size() && done_count_ > 0) {
      uint32_t wi = done_[done_head_];
      done_head_ = (done_head_ + 1) % done_.size();
      --done_count_;
      Write& w = writes_[wi];
      WriteCompletion& c = out[n++];
      c.token = w.token;
      c.offset = w.offset;
      c.length = w.length;
      c.latency_ns = w.done_ns - w.start_ns;
      c.status = w.status;
      w.reported = true;
      --in_flight_;
      MaybeFree(wi);
    }
    return n;
  }

  uint32_t in_flight() const { return in_flight_; }
  const Status& failure() const { return failure_; }
  // Nothing in flight and no buffer held for any peer.
  bool idle() const { return in_flight_ == 0 && free_.size() == writes_.size(); }

  void StartClose() {
    for (auto& p : peers_) {
      if (p->state != State::kReady) continue;
      proto::Frame f;
      f.body = proto::Bye{};
      auto item = ControlItem(p->conn, f);
      item.signal = true;
      item.tag = kByeTag;
      p->state = State::kClosing;
      if (!p->t->Post(std::span(&item, 1)).ok()) p->t->Close(p->conn);
    }
  }

  bool closed() const {
    return std::all_of(peers_.begin(), peers_.end(),
                       [](const auto& p) { return p->state == State::kClosed; });
  }

  Status Close() {
    auto deadline = NowNs() + 30'000'000'000ull;
    // Let everything in flight settle first: completions (the caller normally has them already)
    // and, at ack level `sent`, the replicas' receipts for blocks still held for a resend.
    while (!idle() && failure_.ok() && NowNs() < deadline) {
      RETURN_IF_ERROR(ring_.Wait(std::chrono::milliseconds(20)));
      std::array<WriteCompletion, 16> sink;
      Poll(sink);
    }
    StartClose();
    while (!closed() && NowNs() < deadline) {
      RETURN_IF_ERROR(ring_.Wait(std::chrono::milliseconds(20)));
      PollTransports();
    }
    if (!closed()) {
      for (auto& p : peers_) {
        if (p->state != State::kClosed) {
          Fail(Status::Error(ErrorCode::kTimeout,
                             fmt::format("{} did not end the session after Bye", p->name)));
        }
      }
    }
    return failure_;
  }

  std::vector<PeerStats> stats() const {
    std::vector<PeerStats> out;
    for (const auto& p : peers_) {
      PeerStats s = p->stats;
      s.connected = p->state == State::kReady;
      out.push_back(s);
    }
    return out;
  }

  ~Impl() {
    for (auto& p : peers_) {
      if (p->state != State::kClosed) p->t->Close(p->conn);
    }
    // Give the transports the chance to hand back every buffer they still reference.
    for (int i = 0; i < 50 && std::any_of(peers_.begin(), peers_.end(), [](const auto& p) {
                      return p->state != State::kClosed;
                    });
         ++i) {
      (void)ring_.Wait(std::chrono::milliseconds(20));
      PollTransports();
    }
  }

 private:
  enum class State : uint8_t { kHandshake, kReady, kClosing, kClosed };

  struct Write {
    bool used = false;
    uint64_t token = 0;
    uint64_t offset = 0;
    uint32_t length = 0;
    uint32_t crc = 0;
    io::BufferRef buffer;
    uint64_t start_ns = 0;
    uint64_t done_ns = 0;
    uint32_t waiting = 0;  // peers that have not reached the ack level
    uint32_t holding = 0;  // peers that may still need the buffer
    bool done = false;     // queued for Poll
    bool reported = false;
    Status status;
  };

  struct PeerWrite {
    uint32_t write = kNoWrite;
    uint64_t seq = 0;
    uint32_t retries = 0;
    bool sending = false;   // a transmission is in the transport
    bool resend = false;    // NACKed while sending: send again at kSent
    bool counted = false;   // counted towards the write's ack level
    bool acked = false;     // the replica acked it at the wire level
    bool released = false;  // this peer is done with the buffer
  };

  struct Peer {
    explicit Peer(uint64_t span) : released(span), acked(span), writes(span) {}
    transport::Transport* t = nullptr;
    transport::ConnId conn = transport::kNoConn;
    std::string name;
    State state = State::kHandshake;
    uint64_t next_seq = 0;
    SeqTracker released;
    SeqTracker acked;
    std::vector<PeerWrite> writes;  // by seq % span
    PeerStats stats;
  };

  void SendData(Peer& p, PeerWrite& pw) {
    const Write& w = writes_[pw.write];
    proto::Frame f;
    f.flags = static_cast<uint16_t>(wire_level_) | (pw.retries > 0 ? proto::kDataResend : 0);
    f.payload_len = w.length;
    f.body = proto::Data{pw.seq, w.offset, w.length, w.crc};
    transport::WorkItem item;
    item.conn = p.conn;
    item.tag = pw.seq;
    item.signal = true;
    item.header = proto::Encode(f);
    item.data = w.buffer.data();
    Status s = p.t->Post(std::span(&item, 1));
    if (!s.ok()) {
      Fail(s.Context(fmt::format("sending block at offset {} to {}", w.offset, p.name)));
      return;
    }
    pw.sending = true;
  }

  void PollTransports() {
    for (transport::Transport* t : transports_) {
      for (;;) {
        size_t n = t->Poll(completions_);
        for (size_t i = 0; i < n; ++i) Handle(*t, completions_[i]);
        if (n < completions_.size()) break;
      }
    }
  }

  Peer* FindPeer(const transport::Transport& t, transport::ConnId conn) {
    for (auto& p : peers_) {
      if (p->t == &t && p->conn == conn && p->state != State::kClosed) return p.get();
    }
    return nullptr;
  }

  void Handle(transport::Transport& t, transport::Completion& c) {
    Peer* p = FindPeer(t, c.conn);
    if (p == nullptr) {
      if (c.kind == transport::CompletionKind::kAccepted) t.Close(c.conn);
      if (c.data) t.Release(c.conn, std::move(c.data));
      return;
    }
    switch (c.kind) {
      case transport::CompletionKind::kSent:
        OnSent(*p, c);
        break;
      case transport::CompletionKind::kRecv:
        OnFrame(*p, c);
        break;
      case transport::CompletionKind::kClosed:
        OnClosed(*p, c.status);
        break;
      case transport::CompletionKind::kAccepted:
        break;
    }
  }

  void OnSent(Peer& p, const transport::Completion& c) {
    if (c.tag == kByeTag) return;  // the replica closes once it has settled everything
    PeerWrite& pw = p.writes[c.tag % span_];
    if (pw.write == kNoWrite || pw.seq != c.tag || !pw.sending) return;
    pw.sending = false;
    if (c.res < 0) {
      // Cancelled by a close: the kClosed that follows releases the rest of this peer's holds.
      Release(p, pw);
      return;
    }
    if (options_.ack == proto::AckLevel::kSent) Reached(p, pw);
    if (pw.resend && failure_.ok()) {
      pw.resend = false;
      SendData(p, pw);
      return;
    }
    if (pw.acked) Release(p, pw);
  }

  void OnFrame(Peer& p, transport::Completion& c) {
    if (c.data) p.t->Release(c.conn, std::move(c.data));  // nothing legitimate carries blocks here
    auto frame = proto::Decode(c.header);
    if (!frame.ok()) {
      Fail(frame.status().Context(fmt::format("bad frame from {}", p.name)));
      return;
    }
    switch (frame->type()) {
      case proto::FrameType::kHelloOk: {
        if (p.state != State::kHandshake) break;
        Status s = CheckHelloOk(std::get<proto::HelloOk>(frame->body), hello_, p.name);
        if (!s.ok()) {
          Fail(s);
          return;
        }
        p.state = State::kReady;
        spdlog::info("{}: session open ({} over {}, ack {}, block {} KiB, window {})", p.name,
                     fmt::format("protocol v{}", std::get<proto::HelloOk>(frame->body).version),
                     p.t->name(), proto::AckLevelName(options_.ack), options_.block_size >> 10,
                     options_.window);
        return;
      }
      case proto::FrameType::kError:
        Fail(StatusFromError(std::get<proto::Error>(frame->body), c.control, p.name));
        return;
      case proto::FrameType::kAck:
        if (p.state != State::kReady && p.state != State::kClosing) break;
        OnAck(p, std::get<proto::Ack>(frame->body));
        return;
      case proto::FrameType::kNack:
        if (p.state != State::kReady) break;
        OnNack(p, std::get<proto::Nack>(frame->body));
        return;
      case proto::FrameType::kHeartbeat:
        return;
      default:
        break;
    }
    Fail(Status::Protocol("{} sent an unexpected {} frame", p.name,
                          proto::FrameTypeName(frame->type())));
  }

  void OnAck(Peer& p, const proto::Ack& a) {
    if (a.level != wire_level_) {
      Fail(Status::Protocol("{} acked at level {}, the session asked for {}", p.name,
                            proto::AckLevelName(a.level), proto::AckLevelName(wire_level_)));
      return;
    }
    if (a.cumulative > p.next_seq) {
      Fail(Status::Protocol("{} acked up to seq {} but only {} were sent", p.name, a.cumulative,
                            p.next_seq));
      return;
    }
    for (uint64_t s = p.acked.cumulative(); s < a.cumulative && failure_.ok(); ++s) {
      if (!p.acked.Has(s)) Acked(p, s);
    }
    for (uint64_t i = 0; i < 64 && a.sack_bits != 0 && failure_.ok(); ++i) {
      if (!((a.sack_bits >> i) & 1)) continue;
      uint64_t s = a.sack_base + i;
      if (s >= p.next_seq) {
        Fail(Status::Protocol("{} acked seq {} that was never sent", p.name, s));
        return;
      }
      if (!p.acked.Has(s)) Acked(p, s);
    }
  }

  void Acked(Peer& p, uint64_t seq) {
    PeerWrite& pw = p.writes[seq % span_];
    if (pw.write == kNoWrite || pw.seq != seq) return;
    p.acked.Mark(seq);
    pw.acked = true;
    const Write& w = writes_[pw.write];
    ++p.stats.blocks_acked;
    p.stats.bytes_acked += w.length;
    if (options_.ack != proto::AckLevel::kSent) Reached(p, pw);
    if (!pw.sending) Release(p, pw);
  }

  void OnNack(Peer& p, const proto::Nack& n) {
    PeerWrite& pw = p.writes[n.seq % span_];
    if (n.seq >= p.next_seq || pw.write == kNoWrite || pw.seq != n.seq || pw.acked) {
      Fail(Status::Protocol("{} rejected seq {} that is not in flight", p.name, n.seq));
      return;
    }
    const Write& w = writes_[pw.write];
    if (n.reason == proto::NackReason::kCrcMismatch) {
      ++p.stats.crc_mismatches;
      spdlog::warn("{}: block at offset {} failed its CRC32C check at the replica (expected "
                   "0x{:08x}, got 0x{:08x}); resending",
                   p.name, w.offset, n.expected_crc, n.actual_crc);
    } else {
      spdlog::warn("{}: replica could not write block at offset {}: {}; resending", p.name,
                   w.offset, std::strerror(n.err));
    }
    if (++pw.retries > options_.max_retries) {
      Fail(Status::Error(
          ErrorCode::kCrcMismatch,
          fmt::format("block at offset {} (length {}) was rejected by {} {} times ({}); giving up",
                      w.offset, w.length, p.name, pw.retries,
                      n.reason == proto::NackReason::kCrcMismatch ? "CRC32C mismatch"
                                                                  : "replica write error")));
      return;
    }
    ++p.stats.retransmits;
    if (pw.sending) {
      pw.resend = true;
    } else {
      SendData(p, pw);
    }
  }

  void OnClosed(Peer& p, const Status& status) {
    State was = p.state;
    p.state = State::kClosed;
    // Every buffer this peer still held is free as far as it is concerned.
    for (uint64_t s = p.released.cumulative(); s < p.next_seq; ++s) {
      PeerWrite& pw = p.writes[s % span_];
      if (pw.write != kNoWrite && pw.seq == s && !pw.released) Release(p, pw);
    }
    if (was == State::kClosing && in_flight_ == 0) return;
    Status reason = status.ok() ? Status::Error(ErrorCode::kClosed,
                                                fmt::format("{} closed the connection", p.name))
                                : status;
    Fail(reason.code() == ErrorCode::kClosed || reason.err() != 0
             ? reason.Context(fmt::format("lost replica {}", p.name))
             : reason);
  }

  // Peer `p` reached the ack level for this write.
  void Reached(Peer& p, PeerWrite& pw) {
    if (pw.counted) return;
    pw.counted = true;
    Write& w = writes_[pw.write];
    if (w.done) return;
    if (--w.waiting == 0) Finish(pw.write, Status());
    (void)p;
  }

  void Release(Peer& p, PeerWrite& pw) {
    if (pw.released) return;
    pw.released = true;
    p.released.Mark(pw.seq);
    uint32_t wi = pw.write;
    Write& w = writes_[wi];
    --w.holding;
    MaybeFree(wi);
  }

  void Finish(uint32_t wi, Status status) {
    Write& w = writes_[wi];
    if (w.done) return;
    w.done = true;
    w.done_ns = NowNs();
    w.status = std::move(status);
    done_[(done_head_ + done_count_) % done_.size()] = wi;
    ++done_count_;
  }

  void MaybeFree(uint32_t wi) {
    Write& w = writes_[wi];
    if (!w.used || !w.reported || w.holding > 0) return;
    w.used = false;
    w.buffer.Reset();
    free_.push_back(wi);
  }

  void Fail(Status status) {
    if (!failure_.ok()) return;
    failure_ = status;
    spdlog::error("{}", status.message());
    for (uint32_t wi = 0; wi < writes_.size(); ++wi) {
      if (writes_[wi].used && !writes_[wi].done) Finish(wi, status);
    }
    for (auto& p : peers_) {
      if (p->state != State::kClosed) p->t->Close(p->conn);
    }
  }

  io::Ring& ring_;
  ReplicatorOptions options_;
  proto::AckLevel wire_level_;
  uint64_t span_;
  proto::Hello hello_;
  std::vector<std::unique_ptr<Peer>> peers_;
  std::vector<transport::Transport*> transports_;
  std::vector<Write> writes_;
  std::vector<uint32_t> free_;
  std::vector<uint32_t> done_;  // ring of write indexes ready for Poll
  size_t done_head_ = 0;
  size_t done_count_ = 0;
  uint32_t in_flight_ = 0;
  Status failure_;
  std::array<transport::Completion, 64> completions_;
};

Result<std::unique_ptr<Replicator>> Replicator::Create(io::Ring& ring, io::BufferPool& pool,
                                                       const ReplicatorOptions& options) {
  if (options.block_size < proto::kBlockAlign || options.block_size % proto::kBlockAlign != 0 ||
      options.block_size > proto::kMaxBlockSize) {
    return Status::Invalid("block size {} is not a multiple of {} between {} and {}",
                           options.block_size, proto::kBlockAlign, proto::kBlockAlign,
                           proto::kMaxBlockSize);
  }
  if (options.window == 0 || options.window > 65536) {
    return Status::Invalid("window {} is outside 1..65536", options.window);
  }
  if (options.volume_size == 0) return Status::Invalid("the volume is empty");
  if (pool.buffer_size() < options.block_size) {
    return Status::Invalid("buffer pool buffers ({} bytes) are smaller than a block ({})",
                           pool.buffer_size(), options.block_size);
  }
  return std::unique_ptr<Replicator>(
      new Replicator(std::make_unique<Impl>(ring, options)));
}

Replicator::Replicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Replicator::~Replicator() = default;
Status Replicator::Connect(std::span<const PeerConfig> peers) { return impl_->Connect(peers); }
Status Replicator::StartConnect(std::span<const PeerConfig> peers) {
  return impl_->StartConnect(peers);
}
bool Replicator::ready() const { return impl_->ready(); }
void Replicator::StartClose() { impl_->StartClose(); }
bool Replicator::closed() const { return impl_->closed(); }
bool Replicator::idle() const { return impl_->idle(); }
bool Replicator::CanSubmit() const { return impl_->CanSubmit(); }
Status Replicator::Submit(uint64_t offset, io::BufferRef buffer, uint32_t length,
                          uint64_t token) {
  return impl_->Submit(offset, std::move(buffer), length, token);
}
size_t Replicator::Poll(std::span<WriteCompletion> out) { return impl_->Poll(out); }
uint32_t Replicator::in_flight() const { return impl_->in_flight(); }
const Status& Replicator::failure() const { return impl_->failure(); }
Status Replicator::Close() { return impl_->Close(); }
std::vector<PeerStats> Replicator::stats() const { return impl_->stats(); }

}  // namespace blkmirror::engine
