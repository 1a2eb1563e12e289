#include "engine/volume.h"

#include <algorithm>
#include <array>
#include <bit>
#include <deque>

#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "common/log_limiter.h"
#include "engine/send_plan.h"
#include "engine/session.h"

namespace blkmirror::engine {

std::string_view VolumePeerStateName(VolumePeerState state) {
  switch (state) {
    case VolumePeerState::kConnecting: return "connecting";
    case VolumePeerState::kInSync: return "in_sync";
    case VolumePeerState::kResyncing: return "resyncing";
    case VolumePeerState::kLost: return "lost";
    case VolumePeerState::kDiverged: return "diverged";
  }
  return "unknown";
}

namespace {

// Replicator tokens and disk tags: the op's index and generation; the top bit marks the flush
// that follows a FUA write or serves a FLUSH (an op has at most one of each in flight).
constexpr uint64_t kFlushBit = uint64_t{1} << 63;
// Resync copies in flight at once, besides client writes.
constexpr uint32_t kResyncInFlight = 8;
// Bytes of recently written blocks whose dirty bits stay set per peer (HotBlocks): a client's
// rewrite of one needs no bitmap sync; a crash of the volume resends them (DRBD's default
// activity log covers about as much).
constexpr uint64_t kHotBytes = uint64_t{4} << 30;
// How long a shutdown waits for the requests in flight, then for the sessions to end.
constexpr std::chrono::seconds kShutdownTimeout{30};

uint64_t Token(uint32_t index, uint32_t gen) { return uint64_t{gen} << 32 | index; }

}  // namespace

class Volume::Impl {
 public:
  Impl(io::Ring& ring, io::BufferPool& pool, io::BlockDevice& disk, frontend::Frontend& frontend,
       VolumeOptions options)
      : ring_(ring), pool_(pool), disk_(disk), frontend_(frontend), options_(std::move(options)) {
    auto& r = options_.replication;
    r.extents = true;
    r.return_buffers = true;
    r.survive_quorum_loss = true;
    r.hot_bytes = kHotBytes;
    quorum_ = static_cast<uint32_t>(std::min<uint64_t>(options_.quorum, options_.peers.size()));
    // The Replicator needs min(its quorum, live peers): every live one when ours is 0. Writes in
    // flight to a peer that is lost fail only below our quorum (at 0, never: they complete from
    // the local disk, and the lost peer's bits stay set for its resync).
    r.quorum = quorum_;
    r.min_live = quorum_;
    gens_ = options_.generations;
    r.generations = &gens_;
    synced_at_ = options_.peer_synced_at;
    synced_at_.resize(options_.peers.size(), 0);
    block_size_ = r.block_size;
    blocks_ = (r.volume_size + block_size_ - 1) / block_size_;
    // Every buffer can be one op, plus the bufferless ones (flushes, zero ranges).
    ops_.resize(pool.count() + 256);
    for (uint32_t i = static_cast<uint32_t>(ops_.size()); i-- > 0;) free_ops_.push_back(i);
    waiting_.reserve(ops_.size());
    requests_.resize(64);
    peers_.resize(options_.peers.size());
  }

  ~Impl() { rep_.reset(); }

  Status Start() {
    if (gens_.current == 0) {
      gens_.StartNew(NewGenerationId());
      gens_.consistent = true;
      RETURN_IF_ERROR(SaveGenerations());
      spdlog::info("volume: first generation {}", GenerationHex(gens_.current));
    }
    ASSIGN_OR_RETURN(rep_, Replicator::Create(ring_, pool_, options_.replication));
    plan_ = std::make_unique<SendPlan>(blocks_, options_.peers.size());
    for (size_t i = 0; i < peers_.size(); ++i) {
      peers_[i].name = options_.peers[i].endpoint.ToString();
    }
    return rep_->StartConnect(options_.peers);
  }

  bool ready() const { return started_; }
  const Status& failure() const { return failure_; }

  // Every peer has answered its handshake or is lost: check the quorum, open the bitmaps and plan
  // the resyncs.
  void FinishStart() {
    for (size_t i = 0; i < peers_.size(); ++i) {
      if (rep_->peer_stats(i).state == PeerState::kConnecting) return;
    }
    if (!rep_->failure().ok()) {
      failure_ = rep_->failure();
      return;
    }
    // A replica that refused this node's generations holds data this node lacks (it is ahead,
    // or both wrote apart): serving from this disk could hand out stale data. Resolve first.
    const auto stats = rep_->stats();
    for (const auto& st : stats) {
      if (st.lost_code == ErrorCode::kDiverged) {
        failure_ = Status::Error(ErrorCode::kDiverged,
                                 fmt::format("{}: {}", st.peer, st.lost_reason));
        return;
      }
    }
    uint32_t live = static_cast<uint32_t>(std::popcount(rep_->live_peers()));
    if (live < quorum_) {
      failure_ = Status::Error(ErrorCode::kUnavailable,
                               fmt::format("only {} of {} replicas are in session; the quorum "
                                           "needs {}",
                                           live, options_.peers.size(), quorum_));
      return;
    }
    const uint64_t now = NowNs();
    for (size_t i = 0; i < peers_.size(); ++i) {
      Peer& p = peers_[i];
      if (rep_->peer_stats(i).state == PeerState::kInSession) {
        failure_ = OnSessionOpen(i);
        if (!failure_.ok()) return;
        continue;
      }
      // Unreachable now: writes it misses go to the bitmap of the identity it had last.
      proto::ReplicaId last = i < options_.last_replica_ids.size() ? options_.last_replica_ids[i]
                                                                     : proto::ReplicaId{};
      bool existed = false;
      if (last != proto::ReplicaId{}) {
        auto bitmap = options_.bitmap_for(i, last, &existed);
        if (!bitmap.ok()) {
          failure_ = bitmap.status();
          return;
        }
        p.bitmap = std::move(*bitmap);
      } else {
        p.bitmap = DirtyBitmap::InMemory(BitmapKeyFor({}));  // every bit set: a full copy
      }
      p.bitmap_id = last;
      rep_->AttachBitmap(i, p.bitmap.get());
      p.state = VolumePeerState::kLost;
      p.next_attempt_ns = now;
    }
    started_ = true;
  }

  size_t Step() {
    if (!failure_.ok()) return 0;
    if (!started_) {
      std::array<WriteCompletion, 1> none;
      size_t events = rep_->Poll(none);
      FinishStart();
      return events;
    }
    size_t events = 0;
    events += TakeRequests();
    events += PollDisk();
    events += PollReplicator();
    ResyncFailedWrites();
    StartWaiting();
    if (stop_ == Stop::kRunning) {
      events += PumpResync();
      WatchPeers();
    } else {
      ContinueShutdown();
    }
    return events;
  }

  void StartShutdown() {
    if (stop_ != Stop::kRunning) return;
    if (!started_) {
      stop_ = Stop::kClosed;
      return;
    }
    stop_ = Stop::kDraining;
    stop_deadline_ns_ = NowNs() + ToNs(kShutdownTimeout);
    frontend_.Shutdown();
  }

  bool closed() const { return stop_ == Stop::kClosed; }

  void Shutdown() {
    StartShutdown();
    while (!closed()) {
      if (Step() == 0) (void)ring_.Wait(std::chrono::milliseconds(20));
    }
  }

  // Shutdown, one step: the clients' requests finish (or the deadline passes), then the
  // replication settles, then the sessions end with a Bye.
  void ContinueShutdown() {
    const bool late = NowNs() > stop_deadline_ns_;
    switch (stop_) {
      case Stop::kDraining:
        if ((frontend_.closed() && active_ == 0 && rep_->idle()) || late) {
          if (late) spdlog::warn("volume: requests still in flight at the shutdown deadline");
          rep_->StartClose();
          stop_ = Stop::kClosing;
        }
        break;
      case Stop::kClosing:
        if (rep_->closed() || late) {
          if (late) spdlog::warn("volume: replica sessions not ended at the shutdown deadline");
          for (auto& p : peers_) {
            if (!p.bitmap) continue;
            Status synced = p.bitmap->Sync();
            if (!synced.ok()) spdlog::error("volume: {}: {}", p.name, synced.message());
          }
          stop_ = Stop::kClosed;
        }
        break;
      case Stop::kRunning:
      case Stop::kClosed:
        break;
    }
  }

  void SetResyncRate(uint64_t bytes_per_second) { options_.resync_rate = bytes_per_second; }

  VolumeStatus status() const {
    VolumeStatus s;
    s.generation = GenerationHex(gens_.current);
    for (uint64_t g : gens_.history) s.history.push_back(GenerationHex(g));
    const auto& r = options_.replication;
    s.size = r.volume_size;
    s.block_size = block_size_;
    s.ack = std::string(proto::AckLevelName(r.ack));
    s.quorum = quorum_;
    s.resync_rate = options_.resync_rate;
    s.live_peers = rep_ ? static_cast<uint32_t>(std::popcount(rep_->live_peers())) : 0;
    s.clients = frontend_.clients();
    s.writes = counters_.writes;
    s.reads = counters_.reads;
    s.flushes = counters_.flushes;
    s.zeroes = counters_.zeroes;
    s.failed = counters_.failed;
    s.bytes_written = counters_.bytes_written;
    s.bytes_read = counters_.bytes_read;
    s.write_latency = write_latency_;
    if (!rep_) return s;
    s.in_flight = rep_->in_flight();
    auto stats = rep_->stats();
    const uint64_t now = NowNs();
    for (size_t i = 0; i < peers_.size(); ++i) {
      const Peer& p = peers_[i];
      VolumePeerStatus ps;
      ps.peer = stats[i].peer;
      ps.transport = stats[i].transport;
      ps.fallback_reason = stats[i].fallback_reason;
      ps.state = p.state;
      ps.lost_reason = stats[i].lost_reason;
      ps.replica_id = IdHex(p.bitmap_id);
      if (p.state == VolumePeerState::kInSync || p.state == VolumePeerState::kResyncing) {
        ps.generation = GenerationHex(rep_->peer_generations(i).current);
      }
      // Set bits, but the hot ones (the replica holds those).
      const uint64_t set = p.bitmap ? p.bitmap->CountSet() : 0;
      ps.dirty_bytes = (set - std::min(set, rep_->hot_blocks(i).count())) * block_size_;
      ps.resync_total_bytes = p.resync_total;
      ps.resync_done_bytes = p.resync_done;
      double secs = static_cast<double>(now - p.resync_start_ns) / 1e9;
      ps.resync_bytes_per_second =
          p.state == VolumePeerState::kResyncing && secs > 0
              ? static_cast<double>(p.resync_done) / secs
              : 0;
      ps.reconnects = p.reconnects;
      ps.blocks_acked = stats[i].blocks_acked;
      ps.bytes_acked = stats[i].bytes_acked;
      ps.blocks_sent = stats[i].blocks_sent;
      ps.bytes_sent = stats[i].bytes_sent;
      ps.zero_bytes = stats[i].zero_bytes;
      ps.wire_bytes = stats[i].wire_bytes;
      ps.retransmits = stats[i].retransmits;
      ps.crc_mismatches = stats[i].crc_mismatches;
      ps.bytes_in_flight = stats[i].bytes_in_flight;
      ps.ack_latency = stats[i].ack_latency;
      s.peers.push_back(std::move(ps));
    }
    return s;
  }

 private:
  enum class Kind : uint8_t { kWrite, kZero, kRead, kFlush, kResync };

  struct Op {
    bool used = false;
    uint32_t gen = 0;
    Kind kind = Kind::kWrite;
    uint64_t frontend_id = 0;  // not for kResync
    uint64_t admitted_ns = 0;  // when the client's request came in
    uint64_t offset = 0, length = 0;
    uint64_t first_block = 0, last_block = 0;
    bool fua = false, unmap = false;
    uint64_t order = 0;
    bool started = false;  // passed the ordering and is running
    io::BufferRef buffer;  // until it goes to the Replicator, and when it comes back
    std::byte* data = nullptr;  // the buffer's bytes (for the local write while it is away)
    uint32_t buf_index = io::kNoBufIndex;
    bool local_pending = false;
    int32_t local_res = 0;
    bool rep_pending = false;
    bool replicated = false;   // a write or zero range that went to the Replicator
    bool buffer_away = false;  // the Replicator holds the buffer
    bool flush_pending = false;
    Status rep_status;
    bool replied = false;
    PeerMask resync_peers = 0;   // kResync: the peers it copies to (narrowed as peers are lost)
    PeerMask resync_counted = 0; // kResync: the peers whose resync_in_flight counts it
  };

  struct Peer {
    std::string name;
    VolumePeerState state = VolumePeerState::kConnecting;
    std::unique_ptr<DirtyBitmap> bitmap;
    proto::ReplicaId bitmap_id;
    uint64_t next_attempt_ns = 0;
    std::chrono::milliseconds backoff{0};
    uint64_t reconnects = 0;
    uint64_t resync_total = 0, resync_done = 0, resync_start_ns = 0;
    uint32_t resync_in_flight = 0;
  };

  BitmapKey BitmapKeyFor(const proto::ReplicaId& id) const {
    const auto& r = options_.replication;
    return BitmapKey{block_size_, r.volume_size, r.volume_id, id};
  }

  // --- client requests ----------------------------------------------------------------------

  size_t TakeRequests() {
    size_t total = 0;
    for (;;) {
      // Take no more than there are op slots for (the rest wait in the frontend).
      size_t room = std::min(free_ops_.size(), requests_.size());
      if (room == 0) break;
      size_t n = frontend_.Poll(std::span(requests_.data(), room));
      for (size_t i = 0; i < n; ++i) Admit(requests_[i]);
      total += n;
      if (n < room) break;
    }
    return total;
  }

  void Admit(frontend::Request& r) {
    uint32_t oi = free_ops_.back();
    free_ops_.pop_back();
    Op& op = ops_[oi];
    op = Op{true, op.gen + 1};
    op.frontend_id = r.id;
    op.admitted_ns = NowNs();
    op.offset = r.offset;
    op.length = r.length;
    op.fua = r.fua;
    op.unmap = r.unmap;
    op.order = next_order_++;
    switch (r.op) {
      case frontend::RequestOp::kRead:
        op.kind = Kind::kRead;
        break;
      case frontend::RequestOp::kWrite:
        op.kind = Kind::kWrite;
        op.buffer = std::move(r.data);
        break;
      case frontend::RequestOp::kFlush:
        op.kind = Kind::kFlush;
        break;
      case frontend::RequestOp::kZero:
        op.kind = Kind::kZero;
        break;
    }
    if (op.kind == Kind::kWrite || op.kind == Kind::kZero) {
      op.first_block = op.offset / block_size_;
      op.last_block = (op.offset + std::max<uint64_t>(op.length, 1) - 1) / block_size_;
    }
    ++active_;
    waiting_.push_back(oi);
  }

  // Whether an earlier write (client write, zero range, resync copy) that touches a block of
  // `op` has not started yet or is still on the local disk. Once it is past both, its
  // replication is submitted too (and the Replicator holds back a later write of its blocks
  // until every peer is done with it: RangeInFlight).
  bool HeldBack(const Op& op) const {
    if (op.kind == Kind::kRead || op.kind == Kind::kFlush) return false;
    for (const Op& o : ops_) {
      if (!o.used || o.order >= op.order || (o.started && !o.local_pending) ||
          (o.kind != Kind::kWrite && o.kind != Kind::kZero && o.kind != Kind::kResync)) {
        continue;
      }
      if (o.first_block <= op.last_block && op.first_block <= o.last_block) return true;
    }
    return false;
  }

  void StartWaiting() {
    for (size_t i = 0; i < waiting_.size();) {
      uint32_t oi = waiting_[i];
      Op& op = ops_[oi];
      if (HeldBack(op) || !TryStart(oi)) {
        ++i;
        continue;
      }
      waiting_.erase(waiting_.begin() + static_cast<ptrdiff_t>(i));
    }
  }

  // Starts `oi` if the resources it needs are there (a buffer, window space); false to wait.
  bool TryStart(uint32_t oi) {
    Op& op = ops_[oi];
    const PeerMask live = rep_->live_peers();
    const bool replicated = op.kind != Kind::kRead;
    if (replicated && op.kind != Kind::kResync &&
        static_cast<uint32_t>(std::popcount(live)) < quorum_) {
      // Below the quorum: writes fail at once (the client sees EIO), reads go on.
      if (auto left_out = no_quorum_log_.Allow(NowNs())) {
        spdlog::error("volume: {} replicas in session, the quorum needs {}: failing writes with "
                      "EIO until enough are back{}",
                      std::popcount(live), quorum_, LeftOut(*left_out));
      }
      op.started = true;
      Reply(oi, -EIO);
      Retire(oi);
      return true;
    }
    switch (op.kind) {
      case Kind::kRead:
        return ReadLocal(oi);
      case Kind::kWrite:
      case Kind::kZero:
        if (live == 0) return WriteAlone(oi);
        if (!rep_->CanSubmit(kAllPeers) || rep_->RangeInFlight(op.offset, op.length)) return false;
        if (!NewGenerationIfDegraded()) {
          op.started = true;
          Reply(oi, -EIO);
          Retire(oi);
          return true;
        }
        op.started = true;
        SubmitLocal(oi, op.kind == Kind::kWrite ? io::IoOp::kWrite : io::IoOp::kZero);
        SubmitReplicated(oi);
        return true;
      case Kind::kFlush:
        op.started = true;
        SubmitLocal(oi, io::IoOp::kFlush);
        if (options_.replication.ack != proto::AckLevel::kDurable && live != 0) {
          SubmitReplicaFlush(oi);
        }
        MaybeFinish(oi);
        return true;
      case Kind::kResync:
        return StartResync(oi);
    }
    return false;
  }

  // A write with no replica in session (quorum 0): the local disk alone, once every replica's
  // bitmap marks it (durably) and a new generation has started.
  bool WriteAlone(uint32_t oi) {
    Op& op = ops_[oi];
    if (rep_->RangeInFlight(op.offset, op.length)) return false;
    op.started = true;
    Status marked = NewGenerationIfDegraded() ? rep_->MarkMissed(op.offset, op.length)
                                              : Status::Error(ErrorCode::kUnavailable,
                                                              "no new generation");
    if (!marked.ok()) {
      if (auto left_out = rep_fail_log_.Allow(NowNs())) {
        spdlog::error("volume: a write with no replica in session could not be marked for them "
                      "({}): failing it{}",
                      marked.message(), LeftOut(*left_out));
      }
      Reply(oi, -EIO);
      Retire(oi);
      return true;
    }
    SubmitLocal(oi, op.kind == Kind::kWrite ? io::IoOp::kWrite : io::IoOp::kZero);
    return true;
  }

  // Reads `oi`'s range from the local disk into a pool buffer; false when none is free.
  bool ReadLocal(uint32_t oi) {
    auto b = pool_.TryGet();
    if (!b) return false;
    Op& op = ops_[oi];
    op.buffer = std::move(*b);
    op.started = true;
    SubmitLocal(oi, io::IoOp::kRead);
    return true;
  }

  void SubmitLocal(uint32_t oi, io::IoOp what) {
    Op& op = ops_[oi];
    io::IoRequest req;
    req.op = what;
    req.offset = op.offset;
    req.len = static_cast<uint32_t>(op.length);
    req.tag = Token(oi, op.gen);
    if (op.buffer) {
      op.data = op.buffer.data();
      op.buf_index = op.buffer.index();
      req.data = op.data;
      req.buf_index = op.buf_index;
    }
    req.dsync = op.fua;
    req.unmap = op.unmap;
    Status s = disk_.Submit(std::span(&req, 1));
    if (!s.ok()) {
      op.local_res = -EIO;
      spdlog::error("volume: {}", s.message());
      return;
    }
    op.local_pending = true;
  }

  void SubmitReplicated(uint32_t oi) {
    Op& op = ops_[oi];
    const uint64_t token = Token(oi, op.gen);
    Status s;
    if (op.kind == Kind::kWrite) {
      s = rep_->Submit(op.offset, std::move(op.buffer), static_cast<uint32_t>(op.length), token,
                       kAllPeers, WriteOrigin::kNewData);
      if (s.ok()) op.buffer_away = true;
    } else {
      s = rep_->SubmitZero(op.offset, op.length, op.unmap, token, kAllPeers,
                           WriteOrigin::kNewData);
    }
    if (!s.ok()) {
      op.rep_status = s;
      return;
    }
    op.rep_pending = true;
    op.replicated = true;
  }

  void SubmitReplicaFlush(uint32_t oi) {
    Op& op = ops_[oi];
    Status s = rep_->SubmitFlush(Token(oi, op.gen) | kFlushBit, kAllPeers);
    if (!s.ok()) {
      op.rep_status = s;
      return;
    }
    op.flush_pending = true;
  }

  // --- completions --------------------------------------------------------------------------

  Op* Lookup(uint64_t token) {
    auto oi = static_cast<uint32_t>(token & 0xffffffff);
    auto gen = static_cast<uint32_t>((token & ~kFlushBit) >> 32);
    if (oi >= ops_.size() || !ops_[oi].used || ops_[oi].gen != gen) return nullptr;
    return &ops_[oi];
  }

  size_t PollDisk() {
    size_t total = 0;
    std::array<io::IoCompletion, 64> done;
    size_t n;
    while ((n = disk_.Poll(done)) > 0) {
      for (size_t i = 0; i < n; ++i) {
        Op* op = Lookup(done[i].tag);
        if (op == nullptr) continue;
        op->local_pending = false;
        op->local_res = done[i].res < 0 ? done[i].res : 0;
        if (done[i].res < 0) {
          spdlog::error("volume: local {} of {} bytes at offset {} of {} failed: {}",
                        op->kind == Kind::kRead ? "read" : "write", op->length, op->offset,
                        disk_.name(), std::strerror(-done[i].res));
        }
        OnLocalDone(static_cast<uint32_t>(op - ops_.data()));
      }
      total += n;
    }
    return total;
  }

  void OnLocalDone(uint32_t oi) {
    Op& op = ops_[oi];
    if (op.kind == Kind::kResync) return ResyncRead(oi);
    MaybeFinish(oi);
  }

  size_t PollReplicator() {
    std::array<WriteCompletion, 64> done;
    size_t total = 0;
    size_t n;
    while ((n = rep_->Poll(done)) > 0) {
      for (size_t i = 0; i < n; ++i) OnReplicated(done[i]);
      total += n;
      if (n < done.size()) break;
    }
    std::array<ReturnedBuffer, 64> back;
    while ((n = rep_->TakeBuffers(back)) > 0) {
      for (size_t i = 0; i < n; ++i) {
        Op* op = Lookup(back[i].token);
        if (op == nullptr) continue;  // cannot happen: an op lives until its buffer is back
        op->buffer = std::move(back[i].buffer);
        op->buffer_away = false;
        MaybeFinish(static_cast<uint32_t>(op - ops_.data()));
      }
      total += n;
    }
    return total;
  }

  void OnReplicated(const WriteCompletion& c) {
    Op* op = Lookup(c.token);
    if (op == nullptr) return;
    const auto oi = static_cast<uint32_t>(op - ops_.data());
    if (c.token & kFlushBit) {
      op->flush_pending = false;
    } else {
      op->rep_pending = false;
      // Peers it could not go to (behind: their window was full) miss these blocks; their bits
      // are set, and the background resync sends them.
      for (PeerMask m = c.skipped; m != 0; m &= m - 1) {
        PlanResync(static_cast<size_t>(std::countr_zero(m)), op->first_block, op->last_block,
                   "it fell behind the others", op->kind == Kind::kResync);
      }
      if (op->kind == Kind::kResync) {
        for (PeerMask m = op->resync_peers & ~c.skipped; m != 0; m &= m - 1) {
          Peer& p = peers_[static_cast<size_t>(std::countr_zero(m))];
          p.resync_done += op->length;
        }
      }
    }
    if (!c.status.ok() && op->rep_status.ok()) op->rep_status = c.status;
    // A FUA write below durable: durable on the quorum once a flush after it is acked.
    // (With no replica left, at quorum 0, the local disk's FUA is all there is.)
    if (!(c.token & kFlushBit) && op->fua && c.status.ok() &&
        options_.replication.ack != proto::AckLevel::kDurable && !op->flush_pending &&
        op->kind != Kind::kResync && rep_->live_peers() != 0) {
      SubmitReplicaFlush(oi);
    }
    MaybeFinish(oi);
  }

  // Replies to the client once the local part and the replication are done, and frees the op
  // once its buffer is back too.
  void MaybeFinish(uint32_t oi) {
    Op& op = ops_[oi];
    if (op.kind == Kind::kResync) {
      if (op.local_pending || op.rep_pending || op.buffer_away) return;
      return Retire(oi);
    }
    if (!op.replied && !op.local_pending && !op.rep_pending && !op.flush_pending && op.started) {
      int32_t res = op.local_res;
      if (res == 0 && !op.rep_status.ok()) {
        if (auto left_out = rep_fail_log_.Allow(NowNs())) {
          spdlog::error("volume: replicating {} bytes at offset {}: {}{}", op.length, op.offset,
                        op.rep_status.message(), LeftOut(*left_out));
        }
        res = -EIO;
      }
      Count(op, res);
      if (op.kind == Kind::kRead) {
        frontend_.Complete(op.frontend_id, res, std::move(op.buffer));
      } else {
        frontend_.Complete(op.frontend_id, res);
      }
      op.replied = true;
    }
    if (op.replied && !op.local_pending && !op.buffer_away && !op.rep_pending &&
        !op.flush_pending) {
      if (op.replicated && op.local_res < 0) failed_locally_.push_back({op.offset, op.length});
      Retire(oi);
    }
  }

  // Writes the local disk failed after they went to the replicas: their copy of those blocks
  // may hold what this disk does not. Once no peer holds such a write any more (a slow peer's
  // late ack would clear the bits), its blocks go back into every replica's bitmap and into the
  // plan of those in session: the background resync copies what this disk holds (or, if the
  // disk fails that read too, leaves them dirty).
  void ResyncFailedWrites() {
    for (size_t k = 0; k < failed_locally_.size();) {
      const auto [offset, length] = failed_locally_[k];
      if (rep_->RangeInFlight(offset, length)) {
        ++k;
        continue;
      }
      failed_locally_.erase(failed_locally_.begin() + static_cast<ptrdiff_t>(k));
      Status marked = rep_->MarkMissed(offset, length);
      if (!marked.ok()) {
        spdlog::error("volume: the replicas' blocks of [{}, +{}), which the local disk failed to "
                      "write, could not be marked for a resync: {}",
                      offset, length, marked.message());
        continue;
      }
      const uint64_t first = offset / block_size_;
      const uint64_t last = (offset + std::max<uint64_t>(length, 1) - 1) / block_size_;
      for (PeerMask m = rep_->live_peers(); m != 0; m &= m - 1) {
        PlanResync(static_cast<size_t>(std::countr_zero(m)), first, last,
                   "the local disk failed a write there", false);
      }
    }
  }

  // Blocks [first, last] go into peer `i`'s plan for the background resync: one starts (`why`)
  // if it is in sync, which counts its whole plan; else they add to the bytes it counts, unless
  // `counted` (a resync copy that skipped it: its blocks were counted when first planned).
  void PlanResync(size_t i, uint64_t first, uint64_t last, std::string_view why, bool counted) {
    for (uint64_t b = first; b <= last; ++b) plan_->Add(i, b);
    Peer& p = peers_[i];
    if (p.state == VolumePeerState::kInSync) {
      StartResync(i, why);
    } else if (!counted) {
      p.resync_total += (last - first + 1) * block_size_;
    }
  }

  void Reply(uint32_t oi, int32_t res) {
    Op& op = ops_[oi];
    Count(op, res);
    frontend_.Complete(op.frontend_id, res);
    op.replied = true;
  }

  void Count(const Op& op, int32_t res) {
    if (res < 0) {
      ++counters_.failed;
      return;
    }
    switch (op.kind) {
      case Kind::kWrite:
        ++counters_.writes;
        counters_.bytes_written += op.length;
        write_latency_.Record(NowNs() - op.admitted_ns);
        break;
      case Kind::kRead:
        ++counters_.reads;
        counters_.bytes_read += op.length;
        break;
      case Kind::kFlush:
        ++counters_.flushes;
        break;
      case Kind::kZero:
        ++counters_.zeroes;
        break;
      case Kind::kResync:
        break;
    }
  }

  void Retire(uint32_t oi) {
    Op& op = ops_[oi];
    if (op.kind == Kind::kResync) {
      for (PeerMask m = op.resync_counted; m != 0; m &= m - 1) {
        --peers_[static_cast<size_t>(std::countr_zero(m))].resync_in_flight;
      }
      --resync_in_flight_;
    }
    op.buffer.Reset();
    op.used = false;
    ++op.gen;
    --active_;
    free_ops_.push_back(oi);
  }

  // --- background resync ---------------------------------------------------------------------

  // Peers whose dirty blocks are being copied.
  PeerMask Resyncing() const {
    PeerMask m = 0;
    for (size_t i = 0; i < peers_.size(); ++i) {
      if (peers_[i].state == VolumePeerState::kResyncing) m |= PeerMask{1} << i;
    }
    return m & rep_->live_peers();
  }

  size_t PumpResync() {
    const PeerMask resyncing = Resyncing();
    if (resyncing == 0) return 0;
    const uint64_t now = NowNs();
    if (options_.resync_rate > 0) {
      double secs = static_cast<double>(now - bucket_ns_) / 1e9;
      bucket_ns_ = now;
      bucket_ = std::min<double>(bucket_ + secs * static_cast<double>(options_.resync_rate),
                                 std::max<double>(block_size_, options_.resync_rate / 10.0));
    }
    size_t started = 0;
    while (resync_in_flight_ < kResyncInFlight && !free_ops_.empty()) {
      if (options_.resync_rate > 0 && bucket_ < block_size_) break;
      auto item = plan_->Next(resyncing);
      if (!item) break;
      uint32_t oi = free_ops_.back();
      free_ops_.pop_back();
      Op& op = ops_[oi];
      op = Op{true, op.gen + 1};
      op.kind = Kind::kResync;
      op.offset = item->block * block_size_;
      op.length = std::min<uint64_t>(block_size_, options_.replication.volume_size - op.offset);
      op.first_block = op.last_block = item->block;
      op.resync_peers = op.resync_counted = item->peers;
      op.order = next_order_++;
      ++active_;
      ++resync_in_flight_;
      for (PeerMask m = item->peers; m != 0; m &= m - 1) {
        ++peers_[static_cast<size_t>(std::countr_zero(m))].resync_in_flight;
      }
      if (options_.resync_rate > 0) bucket_ -= static_cast<double>(op.length);
      waiting_.push_back(oi);
      ++started;
    }
    // Peers with nothing left to copy are in sync.
    for (size_t i = 0; i < peers_.size(); ++i) {
      Peer& p = peers_[i];
      if (p.state == VolumePeerState::kResyncing && p.resync_in_flight == 0 &&
          plan_->Count(i) == 0) {
        p.state = VolumePeerState::kInSync;
        spdlog::info("volume: {} is in sync ({} copied in the background)", p.name,
                     FormatResync(p));
        MarkInSync(i);
      }
    }
    return started;
  }

  static std::string FormatResync(const Peer& p) {
    return fmt::format("{} bytes", p.resync_done);
  }

  bool StartResync(uint32_t oi) {
    Op& op = ops_[oi];
    // Only to peers still in session; the copy reads the local block as it is now (every write
    // to it before this one has completed: the ordering held it back until then).
    op.resync_peers &= rep_->live_peers();
    if (op.resync_peers == 0) {
      op.started = true;
      Retire(oi);
      return true;
    }
    if (!rep_->CanSubmit(op.resync_peers) || rep_->RangeInFlight(op.offset, op.length)) {
      return false;
    }
    return ReadLocal(oi);
  }

  // The local copy of a resync block is read: send it to the peers that need it.
  void ResyncRead(uint32_t oi) {
    Op& op = ops_[oi];
    if (op.local_res < 0) {
      // The local disk failed: the block stays dirty for them; stop copying to them.
      Retire(oi);
      return;
    }
    op.resync_peers &= rep_->live_peers();
    if (op.resync_peers == 0 || !rep_->CanSubmit(op.resync_peers) ||
        rep_->RangeInFlight(op.offset, op.length)) {
      // Lost, or no window now: put it back (the bitmap still has it) and let it go.
      for (PeerMask m = op.resync_peers; m != 0; m &= m - 1) {
        plan_->Add(static_cast<size_t>(std::countr_zero(m)), op.first_block);
      }
      Retire(oi);
      return;
    }
    Status s = rep_->Submit(op.offset, std::move(op.buffer), static_cast<uint32_t>(op.length),
                            Token(oi, op.gen), op.resync_peers, WriteOrigin::kCopy);
    if (!s.ok()) {
      for (PeerMask m = op.resync_peers; m != 0; m &= m - 1) {
        plan_->Add(static_cast<size_t>(std::countr_zero(m)), op.first_block);
      }
      Retire(oi);
      return;
    }
    op.buffer_away = true;
    op.rep_pending = true;
  }

  // --- peers --------------------------------------------------------------------------------

  // Peer `i` is in session (at the start, or back): its bitmap for the identity it has now, and
  // the resync of what that bitmap has dirty.
  Status OnSessionOpen(size_t i) {
    Peer& p = peers_[i];
    const proto::ReplicaId id = rep_->peer_stats(i).replica_id;
    if (!p.bitmap || p.bitmap_id != id) {
      bool existed = false;
      auto bitmap = options_.bitmap_for(i, id, &existed);
      if (!bitmap.ok()) return bitmap.status();
      if (p.bitmap && p.bitmap_id != proto::ReplicaId{}) {
        spdlog::warn("volume: {} has another identity now ({}; was {}): a full resync", p.name,
                     IdHex(id), IdHex(p.bitmap_id));
        (*bitmap)->SetAll();
      } else if (!existed) {
        spdlog::info("volume: {}: no history for replica {}: a full resync", p.name, IdHex(id));
      }
      RETURN_IF_ERROR((*bitmap)->Sync());
      p.bitmap = std::move(*bitmap);
      p.bitmap_id = id;
      rep_->AttachBitmap(i, p.bitmap.get());
      if (options_.remember_replica_id) options_.remember_replica_id(i, id);
    }
    // Its generations: one ahead of this node, or diverged, is refused; one behind gets what it
    // lacks, from the bitmap only if that counted every write since its generation.
    const Generations& theirs = rep_->peer_generations(i);
    const Lineage lineage = Compare(gens_, theirs);
    if (lineage != Lineage::kSame && lineage != Lineage::kPeerBehind) {
      p.state = VolumePeerState::kDiverged;
      Backoff(p, NowNs());
      rep_->Reject(i, Status::Error(ErrorCode::kDiverged,
                                    fmt::format("{}: {}: its generation {}, this volume's {}",
                                                p.name, LineageName(lineage), Describe(theirs),
                                                Describe(gens_))));
      return Status::Ok();
    }
    const bool bitmap_counts_all = theirs.current != 0 && synced_at_[i] == theirs.current;
    if (!bitmap_counts_all) {
      spdlog::info("volume: {}: its generation {} is not one this volume has a bitmap from (last "
                   "in sync at {}): a full resync",
                   p.name, Describe(theirs), GenerationHex(synced_at_[i]));
      p.bitmap->SetAll();
      RETURN_IF_ERROR(p.bitmap->Sync());
      rep_->AttachBitmap(i, p.bitmap.get());  // nothing of it is hot any more
    }
    plan_->Forget(i);
    plan_->AddDirty(i, *p.bitmap, bitmap_counts_all ? &rep_->hot_blocks(i) : nullptr);
    p.resync_total = 0;
    p.backoff = std::chrono::milliseconds(0);
    p.state = VolumePeerState::kInSync;
    if (plan_->Count(i) > 0) {
      StartResync(i, bitmap_counts_all ? "dirty in its bitmap" : "a full copy");
      if (Status s = rep_->SendGeneration(i, proto::kGenSyncStart); !s.ok()) return Status::Ok();
    } else if (theirs.current != gens_.current || !theirs.consistent) {
      MarkInSync(i);
    } else if (synced_at_[i] != gens_.current) {
      RememberSyncedAt(i);
    }
    return Status::Ok();
  }

  // Peer `i` holds everything: it takes this node's generations (it records them once every
  // earlier write is durable there), and its bitmap counts from here.
  void MarkInSync(size_t i) {
    if (!rep_->SendGeneration(i, proto::kGenInSync).ok()) return;
    RememberSyncedAt(i);
    if (AllInSync()) rotated_ = false;
  }

  void RememberSyncedAt(size_t i) {
    synced_at_[i] = gens_.current;
    if (options_.remember_synced_at) options_.remember_synced_at(i, gens_.current);
  }

  bool AllInSync() const {
    for (size_t i = 0; i < peers_.size(); ++i) {
      if (peers_[i].state != VolumePeerState::kInSync || !(rep_->live_peers() >> i & 1)) {
        return false;
      }
    }
    return true;
  }

  // Before a write while some peer is not in sync: a new generation (once per such stretch, and
  // only when some peer has held the current one), so that the peer, when it is back, is known
  // to be behind, and a peer promoted meanwhile is known to have diverged. False when it could not be made durable (the write fails).
  bool NewGenerationIfDegraded() {
    if (rotated_ || AllInSync()) return true;
    // Only a peer that has held the current generation needs telling apart from what follows.
    if (std::find(synced_at_.begin(), synced_at_.end(), gens_.current) == synced_at_.end()) {
      return true;
    }
    Generations before = gens_;
    gens_.StartNew(NewGenerationId());
    if (Status s = SaveGenerations(); !s.ok()) {
      gens_ = before;
      if (auto left_out = rep_fail_log_.Allow(NowNs())) {
        spdlog::error("volume: cannot record a new generation ({}): failing the write{}",
                      s.message(), LeftOut(*left_out));
      }
      return false;
    }
    rotated_ = true;
    spdlog::info("volume: new generation {}: writing while a replica is not in sync",
                 Describe(gens_));
    for (size_t i = 0; i < peers_.size(); ++i) {
      if (peers_[i].state == VolumePeerState::kInSync && (rep_->live_peers() >> i & 1)) {
        MarkInSync(i);
      }
    }
    return true;
  }

  Status SaveGenerations() {
    return options_.save_generations ? options_.save_generations(gens_) : Status::Ok();
  }

  // Peer `i` has blocks in the plan: it is resyncing from now on.
  void StartResync(size_t i, std::string_view why) {
    Peer& p = peers_[i];
    p.state = VolumePeerState::kResyncing;
    p.resync_total = plan_->Count(i) * block_size_;
    p.resync_done = 0;
    p.resync_start_ns = NowNs();
    spdlog::info("volume: {}: resyncing {} blocks in the background ({})", p.name,
                 plan_->Count(i), why);
  }

  void WatchPeers() {
    const uint64_t now = NowNs();
    for (size_t i = 0; i < peers_.size(); ++i) {
      Peer& p = peers_[i];
      const PeerState rs = rep_->peer_stats(i).state;
      switch (p.state) {
        case VolumePeerState::kInSync:
        case VolumePeerState::kResyncing:
          if (rs == PeerState::kLost || rs == PeerState::kClosed) {
            p.state = VolumePeerState::kLost;
            p.backoff = options_.reconnect_min;
            p.next_attempt_ns = now + ToNs(p.backoff);
            spdlog::warn("volume: {} lost; writes go on while the quorum holds, it will be "
                         "reconnected and resynced",
                         p.name);
          }
          break;
        case VolumePeerState::kConnecting:
          if (rs == PeerState::kInSession) {
            Status s = OnSessionOpen(i);
            if (!s.ok()) spdlog::error("volume: {}: {}", p.name, s.message());
          } else if (rs == PeerState::kLost || rs == PeerState::kClosed) {
            p.state = rep_->stats()[i].lost_code == ErrorCode::kDiverged
                          ? VolumePeerState::kDiverged
                          : VolumePeerState::kLost;
            Backoff(p, now);
          }
          break;
        case VolumePeerState::kDiverged:
        case VolumePeerState::kLost:
          if (now < p.next_attempt_ns) break;
          ++p.reconnects;
          if (rep_->Rejoin(i, options_.reconnect_timeout).ok()) {
            p.state = VolumePeerState::kConnecting;
          } else {
            Backoff(p, now);
          }
          break;
      }
    }
  }

  void Backoff(Peer& p, uint64_t now) {
    p.backoff = p.backoff.count() == 0 ? options_.reconnect_min
                                       : std::min(options_.reconnect_max, p.backoff * 2);
    p.next_attempt_ns = now + ToNs(p.backoff);
  }

  io::Ring& ring_;
  io::BufferPool& pool_;
  io::BlockDevice& disk_;
  frontend::Frontend& frontend_;
  VolumeOptions options_;
  std::unique_ptr<Replicator> rep_;
  std::unique_ptr<SendPlan> plan_;
  Generations gens_;
  std::vector<uint64_t> synced_at_;  // per peer: options_.peer_synced_at, kept up to date
  bool rotated_ = false;             // a new generation started since every peer was in sync
  uint32_t quorum_ = 0;              // replicas a write needs (options_.quorum, at most the peers)
  uint32_t block_size_ = 0;
  uint64_t blocks_ = 0;
  enum class Stop : uint8_t { kRunning, kDraining, kClosing, kClosed };
  Stop stop_ = Stop::kRunning;
  uint64_t stop_deadline_ns_ = 0;
  bool started_ = false;  // every peer answered or was lost at the start, and the quorum held
  Status failure_;
  std::vector<Op> ops_;
  std::vector<uint32_t> free_ops_;
  std::vector<uint32_t> waiting_;  // admitted, not yet started, in arrival order
  // [offset, length) of writes the local disk failed after they went to the replicas, until
  // ResyncFailedWrites puts them back into the replicas' bitmaps (a disk error: rare).
  std::vector<std::pair<uint64_t, uint64_t>> failed_locally_;
  std::vector<frontend::Request> requests_;
  std::vector<Peer> peers_;
  uint64_t next_order_ = 0;
  uint32_t active_ = 0;
  uint32_t resync_in_flight_ = 0;
  double bucket_ = 0;
  uint64_t bucket_ns_ = 0;
  struct {
    uint64_t writes = 0, reads = 0, flushes = 0, zeroes = 0, failed = 0;
    uint64_t bytes_written = 0, bytes_read = 0;
  } counters_;
  LatencyHistogram write_latency_;
  LogLimiter no_quorum_log_{kLogBurst, kLogPeriodNs};
  LogLimiter rep_fail_log_{kLogBurst, kLogPeriodNs};
};

Result<std::unique_ptr<Volume>> Volume::Create(io::Ring& ring, io::BufferPool& pool,
                                               io::BlockDevice& disk, frontend::Frontend& frontend,
                                               VolumeOptions options) {
  const auto& r = options.replication;
  if (options.peers.empty()) return Status::Invalid("a volume needs at least one peer");
  if (!options.bitmap_for) return Status::Invalid("volume: no bitmap opener");
  if (r.volume_size == 0 || r.volume_size != disk.size()) {
    return Status::Invalid("volume: size {} is not the disk's {}", r.volume_size, disk.size());
  }
  if (pool.buffer_size() < r.block_size) {
    return Status::Invalid("volume: buffers of {} bytes hold no {}-byte block",
                           pool.buffer_size(), r.block_size);
  }
  return std::unique_ptr<Volume>(new Volume(
      std::make_unique<Impl>(ring, pool, disk, frontend, std::move(options))));
}

Volume::Volume(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Volume::~Volume() = default;
Status Volume::Start() { return impl_->Start(); }
bool Volume::ready() const { return impl_->ready(); }
const Status& Volume::failure() const { return impl_->failure(); }
size_t Volume::Step() { return impl_->Step(); }
void Volume::Shutdown() { impl_->Shutdown(); }
void Volume::StartShutdown() { impl_->StartShutdown(); }
bool Volume::closed() const { return impl_->closed(); }
VolumeStatus Volume::status() const { return impl_->status(); }
void Volume::SetResyncRate(uint64_t bytes_per_second) { impl_->SetResyncRate(bytes_per_second); }

}  // namespace blkmirror::engine
