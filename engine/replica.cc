#include "engine/replica.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "common/crc32c.h"
#include "common/log_limiter.h"
#include "engine/compress.h"
#include "engine/seq_tracker.h"
#include "engine/session.h"
#include "proto/frame.h"

namespace blkmirror::engine {
namespace {

// Tag of a session's last frame (an Error, or the final Ack/Heartbeat after Bye): the
// connection closes once it has left, so nothing posted before it is cancelled by the close.
constexpr uint64_t kCloseAfterTag = 1;
constexpr uint64_t kFlushTagBit = uint64_t{1} << 63;  // final-flush tags: this bit | session id
constexpr size_t kMaxVerifyJobs = 4;      // VerifyReqs a session may have outstanding
constexpr uint32_t kVerifyReadsPerSession = 8;
// Disk operations that hold no buffer (zero ranges, flushes) in flight at once, besides one per
// pool buffer; a primary keeps at most its window of writes outstanding, far fewer than this.
constexpr uint32_t kBufferlessOps = 1024;

}  // namespace

uint32_t ReplicaDiskDepth(uint32_t pool_buffers) { return pool_buffers + 2 + kBufferlessOps; }

class ReplicaServer::Impl {
 public:
  Impl(io::Ring& ring, io::BufferPool& pool, ReplicaOptions options)
      : ring_(ring), pool_(pool), scratch_(pool.buffer_size()), options_(std::move(options)) {
    ops_.resize(pool.count() + 1 + kBufferlessOps);
    queued_.reserve(ops_.size());
    free_ops_.reserve(ops_.size());
    for (uint32_t i = static_cast<uint32_t>(ops_.size()); i-- > 0;) free_ops_.push_back(i);
  }

  ~Impl() { Shutdown(); }

  void AddTransport(transport::Transport* t) { transports_.push_back(t); }

  size_t Step() {
    size_t events = 0;
    for (transport::Transport* t : transports_) {
      for (;;) {
        size_t n = t->Poll(completions_);
        for (size_t i = 0; i < n; ++i) OnTransport(*t, completions_[i]);
        events += n;
        if (n < completions_.size()) break;
      }
    }
    if (device_) {
      for (;;) {
        size_t n = device_->Poll(io_done_);
        for (size_t i = 0; i < n; ++i) OnDisk(io_done_[i]);
        events += n;
        if (n < io_done_.size()) break;
      }
    }
    uint64_t now = NowNs();
    for (auto& s : sessions_) {
      PumpVerify(*s);
      SendAcks(*s);
      Tick(*s, now);
    }
    Reap();
    return events;
  }

  bool finished() const { return options_.once && once_done_; }

  void Shutdown() {
    for (auto& s : sessions_) {
      if (s->phase != Phase::kClosed) s->t->Close(s->conn);
    }
    // Bounded by time, not by turns: Wait returns at once while a transport busy-polls.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while ((!sessions_.empty() || device_ops_ > 0) && std::chrono::steady_clock::now() < deadline) {
      (void)ring_.Wait(std::chrono::milliseconds(20));
      Step();
    }
  }

  const ReplicaStats& stats() const { return stats_; }
  std::string writer() const {
    return writer_ != nullptr && !NoDataYet(*writer_) ? writer_->peer : std::string();
  }

 private:
  // A session's life:
  //   kHello -> (kAuth) -> kWriter | kVerifier      handshake, then the session proper
  //   -> kDraining      Bye (or a refusal, a timeout): nothing new is taken; what was received
  //                     is written and acked
  //   -> kFlushing      after Bye, a `received` writer flushes the target once
  //   -> kLastFrame     the last frame (the durable Ack of the flush, else a Heartbeat) is posted;
  //                     the connection closes when it has left (kCloseAfterTag)
  //   -> kClosed        the transport reported the close; the session goes once its disk
  //                     operations are done
  // A refused session posts its Error with kCloseAfterTag from kDraining. Every phase before
  // kClosed is bounded in time (Tick).
  enum class Phase : uint8_t {
    kHello, kAuth, kWriter, kVerifier, kDraining, kFlushing, kLastFrame, kClosed
  };

  struct VerifyJob {
    proto::VerifyReq req;
    uint32_t count = 0;
    uint32_t issued = 0;
    uint32_t done = 0;
    int32_t err = 0;
    std::array<std::byte, proto::kMaxControlPayload> crcs{};
  };

  struct Session {
    explicit Session(uint64_t span) : accepted(span), acked(span) {}
    uint64_t id = 0;  // stable, for tags
    transport::Transport* t = nullptr;
    transport::ConnId conn = transport::kNoConn;
    std::string peer;
    Phase phase = Phase::kHello;
    bool uses_device = false;
    bool was_writer = false;
    uint16_t version = proto::kMinProtocolVersion;  // negotiated at admission
    bool bye = false;         // ended by the primary's Bye (a clean end)
    bool flushed = false;     // kFlushing is over
    bool flush_ok = false;    // ... and the flush succeeded: the final Ack says durable
    bool disk_failed = false;  // a write, zero or flush of it failed: no Flush is acked since
    uint64_t connected_ns = 0;
    uint64_t drain_deadline_ns = 0;  // set when the session starts to end
    proto::Hello hello;
    proto::RawHeader hello_raw{};
    Nonce nonce_r{};
    uint64_t last_rx_ns = 0;
    uint64_t last_heartbeat_ns = 0;
    proto::AckLevel level = proto::AckLevel::kReceived;
    bool level_set = false;
    SeqTracker accepted;  // CRC-checked and being written (or done)
    SeqTracker acked;     // reached `level`
    uint64_t acks_sent_cum = 0;
    bool ack_dirty = false;
    uint32_t ops = 0;     // disk operations in flight for this session
    uint32_t verify_reads = 0;
    std::array<VerifyJob, kMaxVerifyJobs> jobs;
    size_t job_head = 0, job_count = 0;
    uint64_t blocks = 0, bytes = 0, crc_mismatches = 0;
    // Protocol 3 writers: no data before the primary's Generation was accepted.
    bool generations_agreed = false;
    // Every sequenced frame received below this seq (accepted, or NACKed and due again).
    uint64_t seen_end = 0;
    // The primary said "in sync": taken once every frame before it is accepted (no resend
    // pending) and durable.
    std::optional<Generations> adopt;
  };

  // A disk operation of a session. Writes (Data, Zero) reach the disk in the order they
  // arrived wherever they overlap: io_uring completes concurrent operations in any order, so one
  // waits (queued) while an earlier overlapping one is outstanding; a Flush waits for every
  // earlier write of its session.
  struct DiskOp {
    // kAdopt: after every earlier write of the session, a flush, then the primary's
    // generations become the target's (the primary said it is in sync).
    enum class Kind : uint8_t { kWrite, kZero, kFlush, kAdopt, kVerifyRead } kind = Kind::kWrite;
    Session* session = nullptr;
    transport::Transport* t = nullptr;
    transport::ConnId conn = transport::kNoConn;
    io::BufferRef buffer;
    uint64_t seq = 0;
    uint64_t offset = 0;
    uint64_t length = 0;
    bool unmap = false;  // kZero
    Generations adopt;   // kAdopt
    VerifyJob* job = nullptr;
    uint32_t block = 0;   // kVerifyRead: its first block in the job
    uint32_t blocks = 0;  // and how many (as many as a pool buffer holds)
    uint64_t order = 0;   // arrival order, among every write, zero and flush
    bool queued = false;  // waiting for an earlier overlapping (or, a flush: earlier) op
    bool Overlaps(const DiskOp& o) const {
      return offset < o.offset + o.length && o.offset < offset + length;
    }
  };

  // --- transport events ----------------------------------------------------------------------

  void OnTransport(transport::Transport& t, transport::Completion& c) {
    switch (c.kind) {
      case transport::CompletionKind::kAccepted: {
        size_t open = static_cast<size_t>(std::count_if(
            sessions_.begin(), sessions_.end(),
            [](const auto& x) { return x->phase != Phase::kClosed; }));
        if (open >= options_.max_connections) {
          if (auto left_out = refusal_log_.Allow(NowNs())) {
            spdlog::warn("{}: refused: {} connections are open (--max-connections){}",
                         t.PeerName(c.conn), open, LeftOut(*left_out));
          }
          t.Close(c.conn);
          return;
        }
        auto s = std::make_unique<Session>(SeqSpan(1));
        s->id = next_session_id_++;
        s->t = &t;
        s->conn = c.conn;
        s->peer = t.PeerName(c.conn);
        s->last_rx_ns = NowNs();
        s->connected_ns = s->last_rx_ns;
        spdlog::info("{}: connected over {}", s->peer, t.name());
        sessions_.push_back(std::move(s));
        ++stats_.sessions;
        return;
      }
      case transport::CompletionKind::kSent: {
        Session* s = Find(t, c.conn);
        if (s != nullptr && c.tag == kCloseAfterTag) t.Close(c.conn);
        return;
      }
      case transport::CompletionKind::kClosed: {
        Session* s = Find(t, c.conn);
        if (s == nullptr) return;
        if (!c.status.ok() && !s->bye) {
          spdlog::warn("{}: connection closed: {}", s->peer, c.status.message());
        }
        s->phase = Phase::kClosed;  // Reap logs what it wrote once its last writes are done
        if (writer_ == s) writer_ = nullptr;
        return;
      }
      case transport::CompletionKind::kRecv: {
        Session* s = Find(t, c.conn);
        if (s != nullptr) s->last_rx_ns = NowNs();
        if (s == nullptr || s->phase >= Phase::kDraining) {
          if (c.data) t.Release(c.conn, std::move(c.data));
          return;
        }
        OnFrame(*s, c);
        return;
      }
    }
  }

  Session* Find(const transport::Transport& t, transport::ConnId conn) {
    for (auto& s : sessions_) {
      if (s->t == &t && s->conn == conn && s->phase != Phase::kClosed) return s.get();
    }
    return nullptr;
  }

  void OnFrame(Session& s, transport::Completion& c) {
    auto frame = proto::Decode(c.header);
    if (!frame.ok()) {
      if (c.data) s.t->Release(c.conn, std::move(c.data));
      ProtocolError(s, frame.status());
      return;
    }
    switch (frame->type()) {
      case proto::FrameType::kHello:
        if (s.phase == Phase::kHello) {
          return OnHello(s, std::get<proto::Hello>(frame->body), c.header);
        }
        break;
      case proto::FrameType::kAuthProof:
        if (s.phase == Phase::kAuth) return OnAuthProof(s, c.control);
        break;
      case proto::FrameType::kData:
        if (s.phase == Phase::kWriter && NoDataYet(s)) {
          if (c.data) s.t->Release(c.conn, std::move(c.data));
          return ProtocolError(s, Status::Protocol("Data before the Generation exchange"));
        }
        if (s.phase == Phase::kWriter) {
          return OnData(s, *frame, std::get<proto::Data>(frame->body), std::move(c.data));
        }
        break;
      case proto::FrameType::kZero:
        if (s.phase == Phase::kWriter && NoDataYet(s)) {
          return ProtocolError(s, Status::Protocol("Zero before the Generation exchange"));
        }
        if (s.phase == Phase::kWriter && s.version >= proto::kExtentsVersion) {
          return OnZero(s, *frame, std::get<proto::Zero>(frame->body));
        }
        break;
      case proto::FrameType::kFlush:
        if (s.phase == Phase::kWriter && NoDataYet(s)) {
          return ProtocolError(s, Status::Protocol("Flush before the Generation exchange"));
        }
        if (s.phase == Phase::kWriter && s.version >= proto::kExtentsVersion) {
          return OnFlush(s, std::get<proto::Flush>(frame->body));
        }
        break;
      case proto::FrameType::kGeneration:
        if (s.phase == Phase::kWriter && s.version >= proto::kGenerationsVersion) {
          return OnGeneration(s, *frame, std::get<proto::Generation>(frame->body));
        }
        break;
      case proto::FrameType::kVerifyReq:
        if (s.phase == Phase::kVerifier) {
          return OnVerifyReq(s, std::get<proto::VerifyReq>(frame->body));
        }
        break;
      case proto::FrameType::kHeartbeat:
        return;
      case proto::FrameType::kBye:
        if (s.phase == Phase::kWriter || s.phase == Phase::kVerifier) {
          s.bye = true;
          StartDraining(s);
          return;
        }
        break;
      case proto::FrameType::kError: {
        // Named, in a block: clang 14 runs the destructor of a temporary in a consteval-format
        // call at the end of the switch instead (llvm-project#60249), found by the fuzzer.
        Status error = StatusFromError(std::get<proto::Error>(frame->body), c.control, s.peer);
        spdlog::warn("{}", error.message());
        StartDraining(s);
        s.t->Close(s.conn);
        return;
      }
      default:
        break;
    }
    if (c.data) s.t->Release(c.conn, std::move(c.data));
    ProtocolError(s, Status::Protocol("unexpected {} frame in this session",
                                      proto::FrameTypeName(frame->type())));
  }

  // Ends the session: an Error frame to the peer, a log line here.
  void Refuse(Session& s, const Status& status) {
    spdlog::warn("{}: {}; closing the connection", s.peer, status.message());
    StartDraining(s);
    if (!PostError(*s.t, s.conn, status, kCloseAfterTag)) s.t->Close(s.conn);
  }

  void ProtocolError(Session& s, const Status& status) {
    ++stats_.protocol_errors;
    Refuse(s, Status::Error(status.code(), "protocol error: " + status.message()));
  }

  void OnHello(Session& s, const proto::Hello& h, const proto::RawHeader& raw) {
    s.hello = h;
    s.hello_raw = raw;
    if (!options_.key) return Admit(s, {});
    // Authenticate before anything else: an unproven peer learns nothing and touches nothing.
    s.nonce_r = RandomNonce();
    proto::Frame f;
    f.body = proto::AuthChallenge{};
    auto item = ControlItem(s.conn, f, std::as_bytes(std::span(s.nonce_r)));
    Status posted = s.t->Post(std::span(&item, 1));
    if (!posted.ok()) return Refuse(s, posted);
    s.phase = Phase::kAuth;
  }

  void OnAuthProof(Session& s, std::span<const std::byte> payload) {
    Nonce nonce_p;
    std::memcpy(nonce_p.data(), payload.data(), nonce_p.size());
    auto mac = std::span(reinterpret_cast<const uint8_t*>(payload.data()) + nonce_p.size(),
                         proto::kAuthMacSize);
    if (!SameMac(mac, PrimaryProof(*options_.key, s.hello_raw, s.nonce_r, nonce_p))) {
      ++stats_.auth_failures;
      return Refuse(s, Status::Error(ErrorCode::kRefused,
                                     "authentication failed: the primary's proof does not match "
                                     "this replica's key (wrong --key-file?)"));
    }
    Admit(s, nonce_p);
  }

  // Admission: the checks of a (proven, where a key is set) Hello, then HelloOk.
  void Admit(Session& s, const std::optional<Nonce>& nonce_p) {
    const proto::Hello& h = s.hello;
    uint16_t version = std::min(h.max_version, options_.max_version);
    if (version < h.min_version || version < proto::kMinProtocolVersion) {
      return Refuse(s, Status::Error(ErrorCode::kRefused,
                                     fmt::format("protocol version mismatch: the primary speaks "
                                                 "{}..{}, this replica speaks {}..{}",
                                                 h.min_version, h.max_version,
                                                 proto::kMinProtocolVersion,
                                                 options_.max_version)));
    }
    s.version = version;
    if (h.block_size > MaxBlock()) {
      return Refuse(s, Status::Error(ErrorCode::kRefused,
                                     fmt::format("block size {} exceeds this replica's maximum "
                                                 "{} (serve --max-block-size)",
                                                 h.block_size, MaxBlock())));
    }
    bool write = h.kind == proto::SessionKind::kWrite;
    if (write && writer_ != nullptr) {
      return Refuse(s, Status::Error(ErrorCode::kBusy,
                                     fmt::format("{} is already being written by {}; one writer "
                                                 "per volume",
                                                 options_.target_name, writer_->peer)));
    }
    const TargetUse use = write ? TargetUse::kWrite : TargetUse::kVerify;
    Status opened = AcquireDevice(h.volume_size, use);
    if (!opened.ok()) return Refuse(s, opened);
    // Every session asks, the target open or not: a write session of another volume renews the
    // identity even while verify sessions keep the device open.
    proto::ReplicaId replica_id;
    if (options_.identity) {
      auto id = options_.identity(h.volume_id, use);
      if (!id.ok()) return Refuse(s, id.status());
      replica_id = *id;
    }
    if (write) {
      auto kept = LoadGenerations(h.volume_id);
      if (!kept.ok()) return Refuse(s, kept.status());
      if (kept->primary) {
        return Refuse(s, Status::Error(
                             ErrorCode::kDiverged,
                             fmt::format("{} is the primary of this volume now (promoted at "
                                         "generation {}); it takes no writes from another "
                                         "primary: demote it first (blkmirror demote)",
                                         options_.target_name,
                                         GenerationHex(kept->generations.current))));
      }
      if (version < proto::kGenerationsVersion) {
        // A write outside a volume's history (push, verify --repair): whatever it leaves is of
        // no known generation.
        Status saved = SaveGenerations(h.volume_id, Generations{});
        if (!saved.ok()) return Refuse(s, saved);
      }
    }
    s.uses_device = true;
    s.accepted = SeqTracker(SeqSpan(h.window));
    s.acked = SeqTracker(SeqSpan(h.window));
    if (write) {
      writer_ = &s;
      s.was_writer = true;
      s.phase = Phase::kWriter;
    } else {
      s.phase = Phase::kVerifier;
    }
    // Admitted: only now may the peer write block data into our memory (on RDMA it gets its
    // first slots, and the key to them, from here on).
    s.t->Trust(s.conn);
    proto::Frame f;
    f.flags = proto::kHelloOkCompressed;
    f.body = proto::HelloOk{version, static_cast<uint32_t>(MaxBlock()), device_->size(),
                            replica_id};
    transport::WorkItem item;
    item.conn = s.conn;
    Mac proof{};
    if (nonce_p) {
      f.payload_len = proto::kAuthMacSize;
      item.header = proto::Encode(f);
      proof = ReplicaProof(*options_.key, s.hello_raw, item.header, *nonce_p, s.nonce_r);
      item.control = std::as_bytes(std::span(proof));
    } else {
      item.header = proto::Encode(f);
    }
    Status posted = s.t->Post(std::span(&item, 1));
    if (!posted.ok()) return Refuse(s, posted);
    s.last_heartbeat_ns = NowNs();
    spdlog::info("{}: {} session for {} ({} bytes, block {} KiB, window {}{})", s.peer,
                 write ? "write" : "verify", options_.target_name, h.volume_size,
                 h.block_size >> 10, h.window, nonce_p ? ", authenticated" : "");
  }

  // The session starts to end: nothing new is taken from the peer, and ending is bounded.
  void StartDraining(Session& s) {
    if (s.phase >= Phase::kDraining) return;
    s.phase = Phase::kDraining;
    s.drain_deadline_ns = NowNs() + SilenceLimitNs(s);
  }

  // How long the primary of `s` may stay silent: what it asked for in Hello, but never more
  // than max_peer_timeout (a primary asking for no timeout, 0, gets that bound).
  uint64_t SilenceLimitNs(const Session& s) const {
    uint64_t asked = ToNs(std::chrono::milliseconds(s.hello.peer_timeout_ms));
    const uint64_t limit = ToNs(options_.max_peer_timeout);
    return asked == 0 || asked > limit ? limit : asked;
  }

  // Every phase is bounded: the handshake from the connect (whatever the peer sends meanwhile),
  // the session by the primary's silence, the end of a session by its drain deadline.
  // Heartbeats go out during the session.
  void Tick(Session& s, uint64_t now) {
    switch (s.phase) {
      case Phase::kClosed:
        return;
      case Phase::kHello:
      case Phase::kAuth: {
        const uint64_t limit = ToNs(options_.handshake_timeout);
        if (now - s.connected_ns > limit) {
          Refuse(s, Status::Error(ErrorCode::kTimeout,
                                  fmt::format("no {} within {} ms of connecting (handshake limit)",
                                              s.phase == Phase::kHello ? "Hello"
                                                                       : "authentication proof",
                                              options_.handshake_timeout.count())));
        }
        return;
      }
      case Phase::kDraining:
      case Phase::kFlushing:
      case Phase::kLastFrame:
        if (now > s.drain_deadline_ns) {
          spdlog::warn("{}: the session did not end within {} ms; closing", s.peer,
                       SilenceLimitNs(s) / 1'000'000);
          s.drain_deadline_ns = UINT64_MAX;
          s.t->Close(s.conn);
        }
        return;
      case Phase::kWriter:
      case Phase::kVerifier:
        break;
    }
    const uint64_t timeout = SilenceLimitNs(s);
    if (now - s.last_rx_ns > timeout) {
      spdlog::error("{}: primary lost: no frame for {} ms (its --peer-timeout, at most "
                    "--max-peer-timeout here); closing",
                    s.peer, (now - s.last_rx_ns) / 1'000'000);
      StartDraining(s);
      s.t->Close(s.conn);
      return;
    }
    if (now - s.last_heartbeat_ns >= timeout / 3 && s.t->SendSpace(s.conn) > 0) {
      proto::Frame f;
      f.body = proto::Heartbeat{now, 0};
      auto item = ControlItem(s.conn, f);
      if (s.t->Post(std::span(&item, 1)).ok()) s.last_heartbeat_ns = now;
    }
  }

  // The largest block every transport can land in one of our buffers.
  size_t MaxBlock() const { return pool_.buffer_size() - transport::kReceiveHeadroom; }

  Status AcquireDevice(uint64_t volume_size, TargetUse use) {
    // A session that has posted its last frame with nothing on the disk is done with the target.
    bool in_use = std::any_of(sessions_.begin(), sessions_.end(), [](const auto& x) {
      return x->uses_device && !(x->phase >= Phase::kLastFrame && x->ops == 0);
    });
    if (device_ && (in_use || device_ops_ > 0)) {
      if (use == TargetUse::kWrite && device_->size() < volume_size) {
        return Status::Error(ErrorCode::kBusy,
                             fmt::format("{} is in use by verify sessions and holds only {} "
                                         "bytes; the volume has {}",
                                         options_.target_name, device_->size(), volume_size));
      }
      return Status::Ok();
    }
    device_.reset();
    auto opened = options_.open_target(volume_size, use);
    if (!opened.ok()) return opened.status();
    device_ = std::move(opened).value();
    return Status::Ok();
  }

  // The checks every write of a session passes (Data, Zero, Flush): its seq is new and in the
  // window, and its ack level is the session's. Marks the level on the first one.
  Status CheckSequenced(Session& s, std::string_view what, uint64_t seq, proto::AckLevel level,
                        bool has_level) {
    if (!s.accepted.InWindow(seq) || s.accepted.Has(seq)) {
      return Status::Protocol("{} seq {} is outside the window [{}, +{}) or a duplicate", what, seq,
                              s.accepted.cumulative(), s.accepted.span());
    }
    if (has_level) {
      if (s.level_set && level != s.level) {
        return Status::Protocol("{} seq {} asks for ack level {}, the session uses {}", what, seq,
                                proto::AckLevelName(level), proto::AckLevelName(s.level));
      }
      s.level = level;
      s.level_set = true;
    }
    return Status::Ok();
  }

  // Where a write may go: protocol 1, exactly one block; protocol 2, any sector-aligned range
  // within the volume (a short tail at its end too), at most a block for Data.
  Status CheckRange(const Session& s, std::string_view what, uint64_t seq, uint64_t offset,
                    uint64_t length, bool data) const {
    const proto::Hello& h = s.hello;
    if (s.version < proto::kExtentsVersion) {
      if (offset % h.block_size != 0 || offset >= h.volume_size) {
        return Status::Protocol("{} seq {}: offset {} is not a block of the {}-byte volume "
                                "(block size {})",
                                what, seq, offset, h.volume_size, h.block_size);
      }
      if (length != std::min<uint64_t>(h.block_size, h.volume_size - offset)) {
        return Status::Protocol("{} seq {}: length {} at offset {} does not match the block size "
                                "{} of the {}-byte volume",
                                what, seq, length, offset, h.block_size, h.volume_size);
      }
      return Status::Ok();
    }
    if (offset % proto::kSectorSize != 0 || offset > h.volume_size ||
        length > h.volume_size - offset || length == 0 ||
        (length % proto::kSectorSize != 0 && offset + length != h.volume_size) ||
        (data && length > h.block_size)) {
      return Status::Protocol("{} seq {}: [{}, +{}) is not a sector-aligned range of the "
                              "{}-byte volume{}",
                              what, seq, offset, length, h.volume_size,
                              data ? fmt::format(" of at most {} bytes", h.block_size) : "");
    }
    return Status::Ok();
  }

  void OnData(Session& s, const proto::Frame& f, const proto::Data& d, io::BufferRef buffer) {
    auto level = static_cast<proto::AckLevel>(f.flags & proto::kDataAckMask);
    Status bad;
    if (!buffer) {
      bad = Status::Protocol("Data seq {} arrived without its payload", d.seq);
    } else {
      bad = CheckRange(s, "Data", d.seq, d.offset, d.length, true);
      if (bad.ok()) bad = CheckSequenced(s, "Data", d.seq, level, true);
    }
    if (!bad.ok()) {
      if (buffer) s.t->Release(s.conn, std::move(buffer));
      ProtocolError(s, bad);
      return;
    }
    s.seen_end = std::max(s.seen_end, d.seq + 1);
    const proto::Codec codec = proto::DataCodec(f.flags);
    if (codec != proto::Codec::kNone) {
      // Decompressed into the scratch buffer (it cannot write over its own input), then back
      // into the frame's buffer, which holds a whole block: the one copy of the compressed path.
      if (buffer.capacity() < d.length ||
          !decompressor_.Decompress(codec, buffer.data(), f.payload_len, scratch_.data(),
                                    d.length)) {
        return Nack(s, std::move(buffer), d, proto::NackReason::kBadPayload, 0,
                    fmt::format("its {}-byte compressed payload does not decompress to {} bytes",
                                f.payload_len, d.length));
      }
      std::memcpy(buffer.data(), scratch_.data(), d.length);
    }
    uint32_t crc = Crc32c(buffer.data(), d.length);
    if (crc != d.crc) {
      ++stats_.crc_mismatches;
      ++s.crc_mismatches;
      return Nack(s, std::move(buffer), d, proto::NackReason::kCrcMismatch, crc,
                  fmt::format("failed its CRC32C check (frame says 0x{:08x}, data gives "
                              "0x{:08x})",
                              d.crc, crc));
    }
    s.accepted.Mark(d.seq);
    MaybeAdopt(s);
    if (level == proto::AckLevel::kReceived) {
      s.acked.Mark(d.seq);
      s.ack_dirty = true;
    }
    DiskOp* op = NewOp(s, DiskOp::Kind::kWrite, d.seq, d.offset, d.length);
    if (op == nullptr) {
      s.t->Release(s.conn, std::move(buffer));
      return;
    }
    op->buffer = std::move(buffer);
    Schedule(*op);
  }

  // A block that is never written: NACKed, the primary sends it again.
  void Nack(Session& s, io::BufferRef buffer, const proto::Data& d, proto::NackReason reason,
            uint32_t actual_crc, const std::string& why) {
    if (auto left_out = crc_log_.Allow(NowNs())) {
      spdlog::warn("{}: block at offset {} (seq {}): {}; not written, asking for a resend{}",
                   s.peer, d.offset, d.seq, why, LeftOut(*left_out));
    }
    s.t->Release(s.conn, std::move(buffer));
    proto::Frame nf;
    nf.body = proto::Nack{d.seq, d.offset, reason, d.crc, actual_crc, 0};
    auto item = ControlItem(s.conn, nf);
    Status posted = s.t->Post(std::span(&item, 1));
    if (!posted.ok()) Refuse(s, posted);
  }

  void OnZero(Session& s, const proto::Frame& f, const proto::Zero& z) {
    auto level = static_cast<proto::AckLevel>(f.flags & proto::kDataAckMask);
    Status bad = CheckRange(s, "Zero", z.seq, z.offset, z.length, false);
    if (bad.ok()) bad = CheckSequenced(s, "Zero", z.seq, level, true);
    if (!bad.ok()) return ProtocolError(s, bad);
    s.seen_end = std::max(s.seen_end, z.seq + 1);
    s.accepted.Mark(z.seq);
    MaybeAdopt(s);
    if (level == proto::AckLevel::kReceived) {
      s.acked.Mark(z.seq);
      s.ack_dirty = true;
    }
    DiskOp* op = NewOp(s, DiskOp::Kind::kZero, z.seq, z.offset, z.length);
    if (op == nullptr) return;
    op->unmap = (f.flags & proto::kZeroUnmap) != 0;
    Schedule(*op);
  }

  // Acked once every earlier write of the session is durable: after them, one fdatasync.
  void OnFlush(Session& s, const proto::Flush& fl) {
    Status bad = CheckSequenced(s, "Flush", fl.seq, s.level, false);
    if (!bad.ok()) return ProtocolError(s, bad);
    s.seen_end = std::max(s.seen_end, fl.seq + 1);
    s.accepted.Mark(fl.seq);
    MaybeAdopt(s);
    DiskOp* op = NewOp(s, DiskOp::Kind::kFlush, fl.seq, 0, 0);
    if (op == nullptr) return;
    Schedule(*op);
  }

  bool NoDataYet(const Session& s) const {
    return s.version >= proto::kGenerationsVersion && !s.generations_agreed;
  }

  // The pending "in sync" becomes a disk operation once every frame before it is accepted: it
  // then waits for their writes and flushes.
  void MaybeAdopt(Session& s) {
    if (!s.adopt || s.accepted.cumulative() < s.seen_end) return;
    DiskOp* op = NewOp(s, DiskOp::Kind::kAdopt, 0, 0, 0);
    if (op == nullptr) return;
    op->adopt = *s.adopt;
    op->adopt.consistent = true;
    s.adopt.reset();
    Schedule(*op);
  }

  Result<TargetGenerations> LoadGenerations(const proto::VolumeId& volume_id) {
    if (options_.generations.load) return options_.generations.load(volume_id);
    if (mem_volume_ != volume_id) return TargetGenerations{};
    return mem_generations_;
  }

  Status SaveGenerations(const proto::VolumeId& volume_id, const Generations& g) {
    if (options_.generations.save) return options_.generations.save(volume_id, g);
    mem_volume_ = volume_id;
    mem_generations_.generations = g;
    return Status::Ok();
  }

  // The primary's generations: the first one opens the way for data once they allow a sync (the
  // target is inconsistent from then on unless it already holds exactly the primary's current
  // generation); later ones start a resync or say the target is in sync.
  void OnGeneration(Session& s, const proto::Frame& f, const proto::Generation& g) {
    const Generations primary = Generations::FromWire(g, f.flags & proto::kGenConsistent);
    auto kept = LoadGenerations(s.hello.volume_id);
    if (!kept.ok()) return Refuse(s, kept.status());
    Generations mine = kept->generations;
    if (s.generations_agreed) {
      if (f.flags & proto::kGenInSync) {
        s.adopt = primary;
        MaybeAdopt(s);
      } else if ((f.flags & proto::kGenSyncStart) && mine.consistent) {
        mine.consistent = false;
        Status saved = SaveGenerations(s.hello.volume_id, mine);
        if (!saved.ok()) return Refuse(s, saved);
      }
      return;
    }
    if (f.flags & (proto::kGenSyncStart | proto::kGenInSync)) {
      return ProtocolError(s, Status::Protocol("the first Generation frame says sync-start or "
                                               "in-sync"));
    }
    const Lineage lineage = Compare(mine, primary);
    if (lineage != Lineage::kSame && lineage != Lineage::kPeerAhead) {
      return Refuse(s, Status::Error(ErrorCode::kDiverged,
                                     DivergedMessage(lineage, mine, primary)));
    }
    if (mine.consistent && (mine.current != primary.current || mine.current == 0)) {
      mine.consistent = false;
      Status saved = SaveGenerations(s.hello.volume_id, mine);
      if (!saved.ok()) return Refuse(s, saved);
    }
    proto::Frame reply;
    reply.flags = mine.consistent ? proto::kGenConsistent : 0;
    reply.body = mine.ToWire();
    auto item = ControlItem(s.conn, reply);
    Status posted = s.t->Post(std::span(&item, 1));
    if (!posted.ok()) return Refuse(s, posted);
    s.generations_agreed = true;
    spdlog::info("{}: generations: this replica {}{}, the primary {} ({})", s.peer, Describe(mine),
                 mine.consistent ? "" : " (inconsistent until in sync)", Describe(primary),
                 LineageName(lineage));
  }

  // Why a primary's session is refused, naming both histories and the way out.
  std::string DivergedMessage(Lineage lineage, const Generations& mine,
                              const Generations& primary) const {
    const std::string& target = options_.target_name;
    switch (lineage) {
      case Lineage::kPeerBehind:
        return fmt::format("the primary is behind this replica: its generation {} is older than "
                           "{}'s {}; this replica has writes the primary lacks. The primary's "
                           "node must not be primary: demote it, promote this one; or, to keep "
                           "the primary's data, discard this replica's: blkmirror demote "
                           "--discard-my-data --disk {}",
                           Describe(primary), target, Describe(mine), target);
      case Lineage::kSplitBrain:
        return fmt::format("split brain: {} (generation {}) and the primary (generation {}) both "
                           "wrote since they last agreed; nothing is synced. Keep one side's "
                           "data and discard the other's: on this replica's node, blkmirror "
                           "demote --discard-my-data --disk {} (or on the primary's node, for "
                           "its disk, after demoting it)",
                           target, Describe(mine), Describe(primary), target);
      default:
        return fmt::format("unrelated data: {} (generation {}) and the primary (generation {}) "
                           "share no history; to overwrite this replica, discard its data: "
                           "blkmirror demote --discard-my-data --disk {}",
                           target, Describe(mine), Describe(primary), target);
    }
  }

  // A disk operation slot for a write of session `s`; nullptr (the session refused) when none
  // is free: a primary keeping more writes outstanding than the replica can hold.
  DiskOp* NewOp(Session& s, DiskOp::Kind kind, uint64_t seq, uint64_t offset, uint64_t length) {
    if (free_ops_.empty()) {
      Refuse(s, Status::Error(ErrorCode::kBusy,
                              fmt::format("more than {} writes outstanding: the replica has no "
                                          "free disk operation slot",
                                          ops_.size())));
      return nullptr;
    }
    uint32_t oi = free_ops_.back();
    free_ops_.pop_back();
    DiskOp& op = ops_[oi];
    op.kind = kind;
    op.session = &s;
    op.t = s.t;
    op.conn = s.conn;
    op.seq = seq;
    op.offset = offset;
    op.length = length;
    op.unmap = false;
    op.order = next_order_++;
    op.queued = false;
    ++s.ops;
    return &op;
  }

  // Whether an earlier outstanding operation must finish before `op` may go to the disk: for a
  // write, one it overlaps (any session: a writer that replaced a closed one included); for a
  // flush, any earlier write of its session.
  bool MustWait(const DiskOp& op) const {
    for (const DiskOp& other : ops_) {
      if (other.session == nullptr || other.order >= op.order ||
          other.kind == DiskOp::Kind::kVerifyRead || other.kind == DiskOp::Kind::kFlush ||
          other.kind == DiskOp::Kind::kAdopt) {
        continue;
      }
      const bool barrier = op.kind == DiskOp::Kind::kFlush || op.kind == DiskOp::Kind::kAdopt;
      if (barrier ? other.session == op.session : op.Overlaps(other)) {
        return true;
      }
    }
    return false;
  }

  void Schedule(DiskOp& op) {
    if (MustWait(op)) {
      op.queued = true;
      queued_.push_back(static_cast<uint32_t>(&op - ops_.data()));
      return;
    }
    SubmitOp(static_cast<uint32_t>(&op - ops_.data()));
  }

  // An operation finished: the queued ones it held back may go, oldest first.
  void ReleaseQueued() {
    for (size_t i = 0; i < queued_.size();) {
      DiskOp& op = ops_[queued_[i]];
      if (MustWait(op)) {
        ++i;
        continue;
      }
      uint32_t oi = queued_[i];
      queued_.erase(queued_.begin() + static_cast<ptrdiff_t>(i));
      op.queued = false;
      SubmitOp(oi);  // may complete and re-enter nothing: completions come at Poll
    }
  }

  void SubmitOp(uint32_t oi) {
    DiskOp& op = ops_[oi];
    Session& s = *op.session;
    io::IoRequest req;
    req.offset = op.offset;
    req.len = static_cast<uint32_t>(op.length);
    req.tag = oi;
    // Durable acks: each write is its own durability point (RWF_DSYNC: FUA on devices that
    // have it), so a durable ack follows its write with no separate flush round trip.
    req.dsync = s.level == proto::AckLevel::kDurable;
    switch (op.kind) {
      case DiskOp::Kind::kWrite:
        req.op = io::IoOp::kWrite;
        req.data = op.buffer.data();
        req.buf_index = op.buffer.pool() == &pool_ ? op.buffer.index() : io::kNoBufIndex;
        break;
      case DiskOp::Kind::kZero:
        req.op = io::IoOp::kZero;
        req.unmap = op.unmap;
        break;
      case DiskOp::Kind::kFlush:
      case DiskOp::Kind::kAdopt:
        req.op = io::IoOp::kFlush;
        req.dsync = false;
        break;
      case DiskOp::Kind::kVerifyRead:
        return;  // never scheduled
    }
    Status submitted = op.length > UINT32_MAX
                           ? Status::Invalid("a range of {} bytes at once", op.length)
                           : device_->Submit(std::span(&req, 1));
    if (!submitted.ok()) {
      --s.ops;
      FreeOp(oi);
      Refuse(s, submitted);
      ReleaseQueued();
      return;
    }
    ++device_ops_;
  }

  void OnVerifyReq(Session& s, const proto::VerifyReq& r) {
    const proto::Hello& h = s.hello;
    if (r.block_size != h.block_size || r.offset >= h.volume_size ||
        r.length > h.volume_size - r.offset) {
      return ProtocolError(s, Status::Protocol("VerifyReq [{}, +{}) with block size {} does not "
                                               "fit the {}-byte volume of block size {}",
                                               r.offset, r.length, r.block_size, h.volume_size,
                                               h.block_size));
    }
    if (s.job_count == kMaxVerifyJobs) {
      return ProtocolError(s, Status::Protocol("more than {} VerifyReqs outstanding",
                                               kMaxVerifyJobs));
    }
    VerifyJob& job = s.jobs[(s.job_head + s.job_count) % kMaxVerifyJobs];
    ++s.job_count;
    job.req = r;
    job.count = static_cast<uint32_t>((r.length + r.block_size - 1) / r.block_size);
    job.issued = 0;
    job.done = 0;
    job.err = 0;
  }

  // Reads blocks for the session's oldest verify request, as buffers allow.
  void PumpVerify(Session& s) {
    while (s.job_count > 0 && s.phase == Phase::kVerifier) {
      VerifyJob& job = s.jobs[s.job_head];
      while (job.issued < job.count && s.verify_reads < kVerifyReadsPerSession) {
        uint64_t off = job.req.offset + uint64_t{job.issued} * job.req.block_size;
        if (off >= device_->size()) {
          // Beyond the target's end: the CRC of nothing, which no real block has.
          proto::StoreLe32(job.crcs.data() + 4 * job.issued, Crc32c(nullptr, 0));
          ++job.issued;
          ++job.done;
          continue;
        }
        const uint32_t blocks = std::min<uint32_t>(
            std::max<uint32_t>(1, static_cast<uint32_t>(pool_.buffer_size() / job.req.block_size)),
            job.count - job.issued);
        uint64_t end = std::min(job.req.offset + job.req.length,
                                off + uint64_t{blocks} * job.req.block_size);
        auto len = static_cast<uint32_t>(end - off);
        if (free_ops_.empty()) break;
        auto buffer = pool_.TryGet();
        if (!buffer) break;
        uint32_t oi = free_ops_.back();
        free_ops_.pop_back();
        DiskOp& op = ops_[oi];
        op.kind = DiskOp::Kind::kVerifyRead;
        op.session = &s;
        op.t = s.t;
        op.conn = s.conn;
        op.offset = off;
        op.length = len;
        op.job = &job;
        op.block = job.issued;
        op.blocks = blocks;
        op.buffer = std::move(*buffer);
        io::IoRequest req;
        req.op = io::IoOp::kRead;
        req.offset = off;
        req.data = op.buffer.data();
        req.len = len;
        req.buf_index = op.buffer.index();
        req.tag = oi;
        if (!device_->Submit(std::span(&req, 1)).ok()) {
          FreeOp(oi);
          break;
        }
        job.issued += blocks;
        ++s.ops;
        ++s.verify_reads;
        ++device_ops_;
      }
      if (job.done < job.count) return;
      proto::Frame f;
      f.body = proto::VerifyResp{job.req.offset, job.err == 0 ? job.count : 0,
                                 job.req.request_id, -job.err};
      auto payload = std::span<const std::byte>(job.crcs.data(), job.err == 0 ? job.count * 4 : 0);
      auto item = ControlItem(s.conn, f, payload);
      if (s.t->SendSpace(s.conn) == 0) return;  // retried at the next Step
      Status posted = s.t->Post(std::span(&item, 1));
      if (!posted.ok()) return Refuse(s, posted);
      s.job_head = (s.job_head + 1) % kMaxVerifyJobs;
      --s.job_count;
    }
  }

  // --- disk events ---------------------------------------------------------------------------

  void OnDisk(const io::IoCompletion& c) {
    --device_ops_;
    if (c.tag & kFlushTagBit) return OnFinalFlush(c);
    auto oi = static_cast<uint32_t>(c.tag);
    DiskOp& op = ops_[oi];
    Session& s = *op.session;
    --s.ops;
    if (op.kind == DiskOp::Kind::kVerifyRead) {
      --s.verify_reads;
      if (c.res < 0) {
        op.job->err = -c.res;
      } else {
        // Each block: the CRC of what the read returned of it (a short read ends at the target's
        // end; a block wholly past it is the CRC of nothing).
        const uint64_t bs = op.job->req.block_size;
        const auto got = static_cast<uint64_t>(c.res);
        for (uint32_t j = 0; j < op.blocks; ++j) {
          const uint64_t at = j * bs;
          const uint64_t len = at < got ? std::min(bs, got - at) : 0;
          proto::StoreLe32(op.job->crcs.data() + 4 * (op.block + j),
                           Crc32c(op.buffer.data() + at, len));
        }
      }
      op.job->done += op.blocks;
      FreeOp(oi);
      return;
    }
    if (c.res < 0) {
      int err = -c.res;
      const char* what = op.kind == DiskOp::Kind::kWrite  ? "writing"
                         : op.kind == DiskOp::Kind::kZero ? "zeroing"
                                                          : "flushing";
      // A failed flush before kAdopt: the target stays inconsistent.
      Status status = Status::Errno(
          err, fmt::format("{}{} {} bytes at offset {} of {} failed",
                           err == ENOSPC ? "replica disk full: " : "replica disk error: ", what,
                           op.length, op.offset, options_.target_name));
      spdlog::error("{}: {}", s.peer, status.message());
      s.disk_failed = true;
      if (s.phase == Phase::kWriter) Refuse(s, status);
      FreeOp(oi);
      ReleaseQueued();
      return;
    }
    if (op.kind == DiskOp::Kind::kAdopt) {
      // Every earlier write is durable: the target holds the primary's current generation.
      Status saved = SaveGenerations(s.hello.volume_id, op.adopt);
      if (!saved.ok()) {
        spdlog::error("{}: {}", s.peer, saved.message());
        if (s.phase == Phase::kWriter) Refuse(s, saved);
      } else {
        spdlog::info("{}: in sync with the primary at generation {}", s.peer,
                     Describe(op.adopt));
      }
      FreeOp(oi);
      ReleaseQueued();
      return;
    }
    if (op.kind != DiskOp::Kind::kFlush) {
      ++stats_.blocks_written;
      stats_.bytes_written += op.length;
      ++s.blocks;
      s.bytes += op.length;
    }
    // A flush is acked (at any level) once it is done, unless a write before it failed; a write
    // at durable once it is, since it was issued with dsync.
    const bool settles = op.kind == DiskOp::Kind::kFlush ? !s.disk_failed
                                                          : s.level == proto::AckLevel::kDurable;
    if (settles && s.phase != Phase::kClosed) {
      s.acked.Mark(op.seq);
      s.ack_dirty = true;
    }
    FreeOp(oi);
    ReleaseQueued();
  }

  void FreeOp(uint32_t oi) {
    DiskOp& op = ops_[oi];
    // A received block goes back through its transport (which may re-grant it as a receive
    // slot); a buffer we took for a verify read goes straight back to the pool.
    if (op.kind == DiskOp::Kind::kWrite && op.buffer) {
      op.t->Release(op.conn, std::move(op.buffer));
    } else {
      op.buffer.Reset();
    }
    op.session = nullptr;
    op.job = nullptr;
    free_ops_.push_back(oi);
  }

  void SendAcks(Session& s) {
    if (!s.ack_dirty || s.phase == Phase::kClosed) return;
    if (s.t->SendSpace(s.conn) == 0) return;  // the state is cumulative: send it later
    proto::Frame f;
    uint64_t cum = s.acked.cumulative();
    f.body = proto::Ack{s.level, cum, cum, s.acked.Bits(cum)};
    auto item = ControlItem(s.conn, f);
    if (s.t->Post(std::span(&item, 1)).ok()) s.ack_dirty = false;
  }

  // A `received` session ended with Bye: one flush makes all it wrote durable, then a durable
  // Ack covering every seq tells the primary it can clear those blocks from its bitmap.
  void StartFinalFlush(Session& s) {
    s.phase = Phase::kFlushing;
    io::IoRequest req;
    req.op = io::IoOp::kFlush;
    req.tag = kFlushTagBit | s.id;
    if (!device_ || !device_->Submit(std::span(&req, 1)).ok()) {
      // No durable ack: the primary keeps the blocks dirty and resends them next time.
      s.flushed = true;
      s.phase = Phase::kDraining;
      return;
    }
    ++s.ops;
    ++device_ops_;
  }

  void OnFinalFlush(const io::IoCompletion& c) {
    uint64_t id = c.tag & ~kFlushTagBit;
    auto it = std::find_if(sessions_.begin(), sessions_.end(),
                           [id](const auto& x) { return x->id == id; });
    if (it == sessions_.end()) return;
    Session& s = **it;
    --s.ops;
    s.flushed = true;
    // A write that failed before (after Bye, the session was not refused for it) is not durable.
    s.flush_ok = c.res >= 0 && !s.disk_failed;
    if (c.res < 0) {
      spdlog::error("{}: final flush of {} failed: {}", s.peer, options_.target_name,
                    std::strerror(-c.res));
    }
    if (s.phase == Phase::kFlushing) s.phase = Phase::kDraining;
  }

  // The last frame of a session that ended with Bye, after every earlier one: the durable Ack
  // of the final flush, or a Heartbeat. The connection closes once it has left.
  void PostLastFrame(Session& s) {
    if (s.t->SendSpace(s.conn) == 0) return;  // retried at the next Step
    proto::Frame f;
    if (s.was_writer && s.level == proto::AckLevel::kReceived && s.flush_ok) {
      uint64_t cum = s.accepted.cumulative();
      f.body = proto::Ack{proto::AckLevel::kDurable, cum, cum, 0};
    } else {
      f.body = proto::Heartbeat{NowNs(), 0};
    }
    auto item = ControlItem(s.conn, f);
    item.signal = true;
    item.tag = kCloseAfterTag;
    s.phase = Phase::kLastFrame;
    if (!s.t->Post(std::span(&item, 1)).ok()) s.t->Close(s.conn);
  }

  // Sessions that ended cleanly move on to their last frame once their disk operations and
  // acks are out; closed sessions go once nothing of theirs is on the disk.
  void Reap() {
    for (size_t i = 0; i < sessions_.size();) {
      Session& s = *sessions_[i];
      if (s.phase == Phase::kDraining && s.bye && s.ops == 0 && !s.ack_dirty) {
        if (s.was_writer && s.level == proto::AckLevel::kReceived && !s.flushed) {
          StartFinalFlush(s);
        } else {
          PostLastFrame(s);
        }
      }
      if (s.phase == Phase::kClosed && s.ops == 0) {
        if (writer_ == &s) writer_ = nullptr;
        if (s.was_writer) {
          spdlog::info("{}: session ended: {} blocks, {} bytes written, {} CRC mismatches{}",
                       s.peer, s.blocks, s.bytes, s.crc_mismatches,
                       LeftOut(crc_log_.TakeLeftOut()));
          if (options_.once) once_done_ = true;
        }
        sessions_.erase(sessions_.begin() + static_cast<ptrdiff_t>(i));
        continue;
      }
      ++i;
    }
  }

  io::Ring& ring_;
  io::BufferPool& pool_;
  Decompressor decompressor_;
  std::vector<std::byte> scratch_;  // a compressed block decompresses here (a pool buffer's size)
  ReplicaOptions options_;
  std::vector<transport::Transport*> transports_;
  std::vector<std::unique_ptr<Session>> sessions_;
  Session* writer_ = nullptr;
  uint64_t next_session_id_ = 1;
  std::unique_ptr<io::BlockDevice> device_;
  uint32_t device_ops_ = 0;
  std::vector<DiskOp> ops_;
  std::vector<uint32_t> free_ops_;
  std::vector<uint32_t> queued_;  // ops waiting for earlier ones, in arrival order
  uint64_t next_order_ = 0;
  // Generations when options_.generations is empty (tests).
  proto::VolumeId mem_volume_;
  TargetGenerations mem_generations_;
  bool once_done_ = false;
  ReplicaStats stats_;
  LogLimiter crc_log_{kLogBurst, kLogPeriodNs};
  LogLimiter refusal_log_{kLogBurst, kLogPeriodNs};
  std::array<transport::Completion, 64> completions_;
  std::array<io::IoCompletion, 64> io_done_;
};

Result<std::unique_ptr<ReplicaServer>> ReplicaServer::Create(io::Ring& ring, io::BufferPool& pool,
                                                             ReplicaOptions options) {
  if (!options.open_target) return Status::Invalid("replica: no target opener");
  if (pool.buffer_size() < proto::kBlockAlign + transport::kReceiveHeadroom) {
    return Status::Invalid("replica: buffers of {} bytes leave no room for a block",
                           pool.buffer_size());
  }
  return std::unique_ptr<ReplicaServer>(
      new ReplicaServer(std::make_unique<Impl>(ring, pool, std::move(options))));
}

ReplicaServer::ReplicaServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ReplicaServer::~ReplicaServer() = default;
void ReplicaServer::AddTransport(transport::Transport* t) { impl_->AddTransport(t); }
size_t ReplicaServer::Step() { return impl_->Step(); }
bool ReplicaServer::finished() const { return impl_->finished(); }
void ReplicaServer::Shutdown() { impl_->Shutdown(); }
const ReplicaStats& ReplicaServer::stats() const { return impl_->stats(); }
std::string ReplicaServer::writer() const { return impl_->writer(); }

}  // namespace blkmirror::engine
