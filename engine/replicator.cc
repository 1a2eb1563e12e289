#include "engine/replicator.h"

#include <algorithm>
#include <array>
#include <bit>

#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "common/crc32c.h"
#include "common/log_limiter.h"
#include "common/zero.h"
#include "engine/compress.h"
#include "engine/seq_tracker.h"
#include "engine/session.h"

namespace blkmirror::engine {
namespace {

constexpr uint64_t kByeTag = UINT64_MAX;
constexpr uint64_t kControlTag = UINT64_MAX - 1;
constexpr uint32_t kNoWrite = UINT32_MAX;
constexpr uint64_t kBitmapSyncIntervalNs = 500'000'000;
// How long Close waits for what is in flight to settle.
constexpr std::chrono::seconds kCloseTimeout{30};

// A set of blocks as bits in 64-bit words (the per-peer sets of acked blocks below).
bool TestBlock(const std::vector<uint64_t>& set, uint64_t b) { return (set[b / 64] >> (b % 64)) & 1; }
void AddBlock(std::vector<uint64_t>& set, uint64_t b) { set[b / 64] |= uint64_t{1} << (b % 64); }
void RemoveBlock(std::vector<uint64_t>& set, uint64_t b) {
  set[b / 64] &= ~(uint64_t{1} << (b % 64));
}
// Calls fn(b) for every block in `set` and empties it.
template <typename Fn>
void DrainBlocks(std::vector<uint64_t>& set, Fn fn) {
  for (uint64_t word = 0; word < set.size(); ++word) {
    for (uint64_t bits = set[word]; bits != 0; bits &= bits - 1) {
      fn(word * 64 + static_cast<uint64_t>(std::countr_zero(bits)));
    }
    set[word] = 0;
  }
}

}  // namespace

class Replicator::Impl {
 private:
  struct Peer;  // below, with the rest of the state

 public:
  enum class WriteKind : uint8_t { kData, kZero, kFlush };

  Impl(io::Ring& ring, io::BufferPool& pool, const ReplicatorOptions& options)
      : ring_(ring),
        pool_(pool),
        options_(options),
        wire_level_(std::max(options.ack, proto::AckLevel::kReceived)),
        span_(SeqSpan(options.window)),
        blocks_((options.volume_size + options.block_size - 1) / options.block_size) {}

  Status StartConnect(std::span<const PeerConfig> configs) {
    if (configs.empty()) return Status::Invalid("no peer to replicate to");
    if (configs.size() > kMaxPeers) {
      return Status::Invalid("{} peers: at most {} are supported", configs.size(), kMaxPeers);
    }
    if (options_.quorum > configs.size()) {
      return Status::Invalid("quorum {} is larger than the {} peer(s) given", options_.quorum,
                             configs.size());
    }
    quorum_ = options_.quorum == 0 ? static_cast<uint32_t>(configs.size()) : options_.quorum;
    const uint32_t slots = WriteSlots(options_, configs.size());
    writes_ = std::vector<Write>(slots);
    rooms_.clear();
    if (options_.compress.codec != proto::Codec::kNone) {
      compressor_ = std::make_unique<Compressor>(options_.compress);
      // Each write slot's room for its compressed payload: a buffer of the registered pool, which
      // every transport sends from (RDMA and DPDK only from there).
      rooms_.reserve(slots);
      for (uint32_t i = 0; i < slots; ++i) {
        std::optional<io::BufferRef> room = pool_.TryGet();
        if (!room) {
          rooms_.clear();
          return Status::Invalid("--compress needs {} buffers of the pool for compressed "
                                 "payloads, one per write slot; {} are free (size the pool with "
                                 "Replicator::OwnBuffers)",
                                 slots, i + pool_.available());
        }
        rooms_.push_back(std::move(*room));
      }
    }
    done_.assign(slots, 0);
    free_.clear();
    for (uint32_t i = slots; i-- > 0;) free_.push_back(i);
    returned_ = std::vector<ReturnedBuffer>(slots);
    proto::Hello& hello = hello_;
    // A volume's writes are extents (and zero ranges, flushes): protocol 2 at least, and an older
    // replica refuses the session with a version mismatch naming both ranges.
    // With generations (a volume's sessions), protocol 3 exactly; without (push), below it.
    if (options_.generations != nullptr) {
      hello.min_version = std::max(options_.min_version, proto::kGenerationsVersion);
      hello.max_version = std::max(options_.max_version, hello.min_version);
    } else {
      hello.min_version =
          options_.extents ? std::max(options_.min_version, proto::kExtentsVersion)
                           : options_.min_version;
      hello.max_version = std::max<uint16_t>(
          std::min<uint16_t>(options_.max_version, proto::kGenerationsVersion - 1),
          hello.min_version);
    }
    hello.kind = proto::SessionKind::kWrite;
    hello.block_size = options_.block_size;
    hello.window = options_.window;
    hello.volume_size = options_.volume_size;
    hello.volume_id = options_.volume_id;
    hello.peer_timeout_ms = static_cast<uint32_t>(options_.peer_timeout.count());
    // Connect every peer first, then send the Hellos: a slow connect (an RDMA attempt that
    // times out before the TCP fallback) must not leave an earlier peer's session silent.
    const uint64_t hot_capacity =
        std::min(blocks_, std::max<uint64_t>(1, options_.hot_bytes / options_.block_size));
    for (const PeerConfig& config : configs) {
      auto peer = std::make_unique<Peer>(span_, blocks_, hot_capacity);
      peer->index = peers_.size();
      peer->config = config;
      peer->name = config.endpoint.ToString();
      peer->stats.peer = peer->name;
      Status connected = ConnectTransport(*peer, options_.connect_timeout);
      peers_.push_back(std::move(peer));
      if (!connected.ok() && !options_.survive_quorum_loss &&
          Unreachable() > configs.size() - quorum_) {
        return connected;
      }
    }
    for (auto& peer : peers_) {
      if (!peer->conn_open) continue;
      peer->last_rx_ns = NowNs();
      RETURN_IF_ERROR(peer->handshake.Start(*peer->t, peer->conn));
    }
    return Status::Ok();
  }

  // Connects `p`'s transport (the preferred one, then its fallback), ready for the handshake;
  // an unreachable peer is lost with the reason. Blocks up to `timeout` per transport tried.
  Status ConnectTransport(Peer& p, std::chrono::milliseconds timeout) {
    const PeerConfig& config = p.config;
    p.t = config.transport;
    p.stats.fallback_reason.clear();
    auto conn = transport::ConnectWithFallback(*config.transport, config.fallback,
                                               config.endpoint, timeout);
    if (!conn.ok()) {
      p.stats.state = PeerState::kLost;
      p.stats.lost_reason = conn.status().message();
      spdlog::error("lost replica {}: {}", p.name, p.stats.lost_reason);
      return conn.status();
    }
    p.t = conn->transport;
    p.conn = conn->conn;
    p.stats.fallback_reason = std::move(conn->fallback_reason);
    p.conn_open = true;
    p.stats.state = PeerState::kConnecting;
    p.stats.transport = std::string(p.t->name());
    if (std::find(transports_.begin(), transports_.end(), p.t) == transports_.end()) {
      transports_.push_back(p.t);
    }
    p.handshake = ClientHandshake(hello_, options_.key, p.name, options_.generations);
    return Status::Ok();
  }

  Status Rejoin(size_t index, std::chrono::milliseconds connect_timeout) {
    if (index >= peers_.size()) return Status::Invalid("no peer #{}", index);
    Peer& p = *peers_[index];
    if (p.stats.state != PeerState::kLost && p.stats.state != PeerState::kClosed) {
      return Status::Invalid("{} is not lost", p.name);
    }
    if (p.conn_open) return Status::Error(ErrorCode::kBusy, fmt::format("{}: still closing", p.name));
    if (!failure_.ok()) return failure_;
    // A new session: a new sequence space. Every write of the old one was released at its close.
    p.next_seq = 0;
    p.released = SeqTracker(span_);
    p.acked = SeqTracker(span_);
    std::fill(p.writes.begin(), p.writes.end(), PeerWrite{});
    std::fill(p.acked_volatile.begin(), p.acked_volatile.end(), 0);
    std::fill(p.flushing.begin(), p.flushing.end(), 0);
    p.flush_pending = false;
    p.acked_since_flush = false;
    p.closing = false;
    p.holding = 0;
    p.unacked = 0;
    p.stats.bytes_in_flight = 0;
    p.stats.lost_reason.clear();
    p.stats.lost_code = ErrorCode::kOk;
    RETURN_IF_ERROR(ConnectTransport(p, connect_timeout));
    p.last_rx_ns = NowNs();
    Status started = p.handshake.Start(*p.t, p.conn);
    if (!started.ok()) LosePeer(p, started);
    return started;
  }

  // Every peer has settled (in session or lost) and the quorum is in session.
  bool ready() const {
    if (peers_.empty()) return false;
    size_t in_session = 0;
    for (const auto& p : peers_) {
      if (p->stats.state == PeerState::kConnecting) return false;
      if (p->stats.state == PeerState::kInSession) ++in_session;
    }
    return in_session >= quorum_;
  }

  size_t Unreachable() const {
    return static_cast<size_t>(std::count_if(peers_.begin(), peers_.end(), [](const auto& p) {
      return p->stats.state == PeerState::kLost;
    }));
  }

  Status Connect(std::span<const PeerConfig> configs) {
    RETURN_IF_ERROR(StartConnect(configs));
    // Bounded: Tick loses a peer whose handshake takes longer than the handshake timeout.
    while (failure_.ok() && !ready()) {
      RETURN_IF_ERROR(ring_.Wait(std::chrono::milliseconds(20)));
      PollTransports();
      Tick(NowNs());
    }
    return failure_;
  }

  void AttachBitmap(size_t index, DirtyBitmap* bitmap) {
    peers_[index]->bitmap = bitmap;
    peers_[index]->hot.Reset();
  }

  const HotBlocks& hot_blocks(size_t index) const { return peers_[index]->hot; }

  void Reject(size_t index, Status reason) { LosePeer(*peers_[index], std::move(reason)); }

  Status SendGeneration(size_t index, uint16_t flags) {
    Peer& p = *peers_[index];
    if (options_.generations == nullptr || p.stats.state != PeerState::kInSession || p.closing) {
      return Status::Error(ErrorCode::kClosed, fmt::format("{} is not in session", p.name));
    }
    proto::Frame f;
    f.flags = flags | (options_.generations->consistent ? proto::kGenConsistent : 0);
    f.body = options_.generations->ToWire();
    auto item = ControlItem(p.conn, f);
    Status posted = p.t->Post(std::span(&item, 1));
    if (!posted.ok()) LosePeer(p, posted);
    return posted;
  }

  PeerMask live_peers() const {
    PeerMask m = 0;
    for (const auto& p : peers_) {
      if (p->stats.state == PeerState::kInSession && !p->closing) m |= PeerMask{1} << p->index;
    }
    return m;
  }

  // The live peers of `mask` that can take one more write now.
  PeerMask WithRoom(PeerMask mask) const {
    PeerMask room = 0;
    for (const auto& p : peers_) {
      if (!(mask >> p->index & 1)) continue;
      if (p->holding >= options_.window) continue;  // its window is full: behind
      // Keep every outstanding seq inside the span the replica tracks.
      if (p->next_seq - p->released.cumulative() >= span_) continue;
      if (p->t->SendSpace(p->conn) < 2) continue;  // room for the block and a heartbeat
      room |= PeerMask{1} << p->index;
    }
    return room;
  }

  // Peers a write to `mask` needs to reach: the quorum, or all of them when fewer are live.
  uint32_t Need(PeerMask targets) const {
    return std::min<uint32_t>(quorum_, static_cast<uint32_t>(std::popcount(targets)));
  }

  PeerMask Behind() const { return live_peers() & ~WithRoom(live_peers()); }
  uint32_t quorum() const { return quorum_; }

  bool CanSubmit(PeerMask mask) const {
    if (!failure_.ok() || free_.empty()) return false;
    PeerMask targets = mask & live_peers();
    if (targets == 0) return false;
    return static_cast<uint32_t>(std::popcount(WithRoom(targets))) >= Need(targets);
  }

  bool RangeInFlight(uint64_t offset, uint64_t length) const {
    if (length == 0) return false;
    const uint64_t first = offset / options_.block_size;
    const uint64_t last = (offset + length - 1) / options_.block_size;
    return std::any_of(writes_.begin(), writes_.end(), [&](const Write& w) {
      return w.used && w.kind != WriteKind::kFlush && w.first_block <= last &&
             first <= w.last_block;
    });
  }

  // Where a write of [offset, offset + length) may go: whole blocks without extents; with
  // extents any sector-aligned range of at most a block (a short tail at the volume's end too).
  Status CheckExtent(uint64_t offset, uint64_t length, uint64_t max_length) const {
    const uint64_t size = options_.volume_size;
    bool ok;
    if (!options_.extents) {
      ok = offset % options_.block_size == 0 && offset < size &&
           length == std::min<uint64_t>(options_.block_size, size - offset);
    } else {
      ok = length > 0 && length <= max_length && offset % proto::kSectorSize == 0 &&
           offset <= size && length <= size - offset &&
           (length % proto::kSectorSize == 0 || offset + length == size);
    }
    if (ok) return Status::Ok();
    return Status::Invalid("{} bytes at offset {} are not {} of the volume (block size {}, volume "
                           "size {})",
                           length, offset,
                           options_.extents ? "a sector-aligned extent of at most a block"
                                            : "one block",
                           options_.block_size, size);
  }

  Status Submit(uint64_t offset, io::BufferRef buffer, uint32_t length, uint64_t token,
                PeerMask mask, WriteOrigin origin) {
    RETURN_IF_ERROR(CheckExtent(offset, length, options_.block_size).Context("write"));
    if (!buffer || buffer.capacity() < length) {
      return Status::Invalid("write at offset {}: buffer holds fewer than {} bytes", offset,
                             length);
    }
    ASSIGN_OR_RETURN(uint32_t wi, Start(WriteKind::kData, offset, length, token, mask, origin));
    Write& w = writes_[wi];
    // Zeros go as a Zero frame only where one can carry them (proto::IsWholeSectors).
    w.zero = options_.zero_blocks && proto::IsWholeSectors(offset, length) &&
             IsAllZero(buffer.data(), length);
    // A zero block's CRC is needed only by a replica that takes no zero ranges (SendData).
    w.crc = w.zero ? 0 : Crc32c(buffer.data(), length);
    w.crc_known = !w.zero;
    if (compressor_ && CompressNext(w) && !w.zero && (w.targets & Compressing()) != 0) {
      w.compressed = compressor_->Compress(buffer.data(), length, rooms_[wi].span());
    }
    w.buffer = std::move(buffer);
    return SendToTargets(wi);
  }

  Status SubmitZero(uint64_t offset, uint64_t length, bool unmap, uint64_t token, PeerMask mask,
                    WriteOrigin origin) {
    if (!options_.extents) return Status::Invalid("zero ranges need protocol {} (extents)",
                                                  proto::kExtentsVersion);
    RETURN_IF_ERROR(CheckExtent(offset, length, options_.volume_size).Context("zero range"));
    if (!proto::IsWholeSectors(offset, length)) {
      return Status::Invalid("zero range at offset {}: {} bytes are not whole sectors of {} (a "
                             "short tail at the volume's end goes as data)",
                             offset, length, proto::kSectorSize);
    }
    ASSIGN_OR_RETURN(uint32_t wi, Start(WriteKind::kZero, offset, length, token, mask, origin));
    writes_[wi].unmap = unmap;
    return SendToTargets(wi);
  }

  // New data no peer gets: every peer's bitmap marks its blocks, durably, and none of them is
  // hot any more.
  Status MarkMissed(uint64_t offset, uint64_t length) {
    if (length == 0) return Status::Ok();
    const uint64_t first = offset / options_.block_size;
    const uint64_t last = (offset + length - 1) / options_.block_size;
    for (auto& p : peers_) {
      if (p->bitmap == nullptr) continue;
      for (uint64_t b = first; b <= last; ++b) {
        p->hot.Touched(b);
        p->bitmap->Set(b);
        RemoveBlock(p->acked_volatile, b);
        RemoveBlock(p->flushing, b);
      }
      if (p->bitmap->has_unsynced_sets()) RETURN_IF_ERROR(p->bitmap->Sync());
    }
    return Status::Ok();
  }

  Status SubmitFlush(uint64_t token, PeerMask mask) {
    if (!options_.extents) {
      return Status::Invalid("flushes need protocol {} (extents)", proto::kExtentsVersion);
    }
    ASSIGN_OR_RETURN(uint32_t wi,
                     Start(WriteKind::kFlush, 0, 0, token, mask, WriteOrigin::kCopy));
    return SendToTargets(wi);
  }

  // The Replicator's own Flush (flush_interval) to the peers due one: in session, of protocol
  // 2 or later, with acked writes no Flush covers yet and none pending, and window room.
  void MaybeFlush(uint64_t now) {
    if (options_.flush_interval.count() == 0 || wire_level_ == proto::AckLevel::kDurable) return;
    const uint64_t interval = ToNs(options_.flush_interval);
    PeerMask due = 0;
    for (const auto& p : peers_) {
      if (p->stats.state == PeerState::kInSession && !p->closing && p->bitmap != nullptr &&
          p->handshake.hello_ok().version >= proto::kExtentsVersion && !p->flush_pending &&
          p->acked_since_flush && now - p->last_flush_ns >= interval) {
        due |= PeerMask{1} << p->index;
      }
    }
    due &= WithRoom(due);
    if (due == 0 || free_.empty() || !failure_.ok()) return;
    auto wi = Start(WriteKind::kFlush, 0, 0, 0, due, WriteOrigin::kCopy, /*own=*/true);
    if (wi.ok()) (void)SendToTargets(*wi);
  }

  // Takes a write slot for a write of `kind` to the live peers of `mask`, once the checks that
  // every kind shares pass; marks its blocks dirty (durably) in every target's bitmap first.
  // `own`: the Replicator's own write (a Flush), which no completion reports.
  Result<uint32_t> Start(WriteKind kind, uint64_t offset, uint64_t length, uint64_t token,
                         PeerMask mask, WriteOrigin origin, bool own = false) {
    if (!failure_.ok()) return failure_;
    PeerMask targets = mask & live_peers();
    if (targets == 0) {
      return Status::Error(ErrorCode::kUnavailable,
                           fmt::format("write at offset {}: none of its peers is in session",
                                       offset));
    }
    if (!CanSubmit(mask)) return Status::Error(ErrorCode::kBusy, "replication window is full");
    // One write of a block at a time: with two in flight, the first one's durable ack could
    // clear a dirty bit the second still needs.
    if (kind != WriteKind::kFlush && RangeInFlight(offset, length)) {
      return Status::Error(ErrorCode::kBusy,
                           fmt::format("a write of the blocks of [{}, +{}) is still in flight; "
                                       "submit this one once it is done",
                                       offset, length));
    }
    // Peers that are behind get the block later (the caller's business): it is sent to those
    // with room, which are enough for the quorum (CanSubmit).
    const PeerMask sendable = WithRoom(targets);
    const uint64_t first = kind == WriteKind::kFlush ? 0 : offset / options_.block_size;
    const uint64_t last =
        kind == WriteKind::kFlush ? 0 : (offset + length - 1) / options_.block_size;
    uint32_t wi = free_.back();
    Write& w = writes_[wi];
    w.clean_before.fill(0);
    // The blocks' bits are durable in each target's bitmap (skipped ones included) before the
    // write leaves; whether the edge blocks were clean decides what its ack may clear. New data
    // also marks every peer it does not go to (lost, closed, left out): they miss it.
    for (auto& p : peers_) {
      const bool marks = (targets >> p->index & 1) || origin == WriteOrigin::kNewData;
      if (kind == WriteKind::kFlush || !marks || p->bitmap == nullptr) continue;
      // Clean: the bit is clear, or set only because the block is hot or its newest write was
      // acked below durable (either way the replica holds it).
      auto clean = [&](uint64_t b) {
        return !p->bitmap->Test(b) || p->hot.hot(b) || TestBlock(p->acked_volatile, b) ||
               TestBlock(p->flushing, b);
      };
      w.clean_before[p->index] = (clean(first) ? 1 : 0) | (clean(last) ? 2 : 0);
      // Until this write's ack, neither an earlier ack nor a Flush sent before it settles them.
      for (uint64_t b = first; b <= last; ++b) {
        p->hot.Touched(b);
        p->bitmap->Set(b);
        RemoveBlock(p->acked_volatile, b);
        RemoveBlock(p->flushing, b);
      }
      if (p->bitmap->has_unsynced_sets()) {
        Status s = p->bitmap->Sync();
        if (!s.ok()) {
          Fail(s);
          return s;
        }
      }
    }
    free_.pop_back();
    w.used = true;
    w.kind = kind;
    w.unmap = false;
    w.token = token;
    w.offset = offset;
    w.length = length;
    w.first_block = first;
    w.last_block = last;
    w.crc = 0;
    w.zero = false;
    w.crc_known = false;
    w.compressed = 0;
    w.governed = false;
    w.targets = sendable;
    w.skipped = targets & ~sendable;
    w.counted = 0;
    w.need = Need(targets);
    w.holding = 0;
    w.done = false;
    w.reported = false;
    w.status = Status();
    w.start_ns = NowNs();
    w.own = own;
    if (!own) ++in_flight_;
    return wi;
  }

  // Sends a started write to its targets, each under its next seq.
  Status SendToTargets(uint32_t wi) {
    Write& w = writes_[wi];
    const uint64_t now = NowNs();
    for (auto& p : peers_) {
      if (w.skipped >> p->index & 1) ++p->stats.blocks_behind;
      if (!(w.targets >> p->index & 1)) continue;
      uint64_t seq = p->next_seq++;
      PeerWrite& pw = p->writes[seq % span_];
      pw = PeerWrite{};
      pw.write = wi;
      pw.seq = seq;
      pw.sent_ns = now;
      if (w.kind == WriteKind::kData) p->stats.bytes_in_flight += w.length;
      if (w.kind == WriteKind::kFlush) StartFlushCover(*p, seq, now);
      ++w.holding;
      ++p->holding;
      if (p->unacked++ == 0) p->last_progress_ns = now;  // the ack clock starts now
      SendData(*p, pw);
      if (!failure_.ok()) break;
    }
    return Status::Ok();
  }

  size_t Poll(std::span<WriteCompletion> out) {
    PollTransports();
    uint64_t now = NowNs();
    Tick(now);
    MaybeFlush(now);
    if (now - last_bitmap_sync_ns_ > kBitmapSyncIntervalNs) {
      last_bitmap_sync_ns_ = now;
      SyncBitmaps();
    }
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
      c.skipped = w.skipped;
      c.reached = static_cast<uint32_t>(std::popcount(w.counted));
      w.reported = true;
      --in_flight_;
      MaybeFree(wi);
    }
    return n;
  }

  uint32_t in_flight() const { return in_flight_; }
  const Status& failure() const { return failure_; }
  bool idle() const { return in_flight_ == 0 && free_.size() == writes_.size(); }

  void StartClose() {
    // Every write has settled (the caller waits for that): nothing hot needs to stay set.
    for (auto& p : peers_) {
      if (p->bitmap != nullptr) p->hot.Drain(*p->bitmap);
    }
    for (auto& p : peers_) {
      if (p->stats.state != PeerState::kInSession || p->closing) continue;
      proto::Frame f;
      f.body = proto::Bye{};
      auto item = ControlItem(p->conn, f);
      item.signal = true;
      item.tag = kByeTag;
      p->closing = true;
      if (!p->t->Post(std::span(&item, 1)).ok()) p->t->Close(p->conn);
    }
  }

  bool closed() const {
    return std::none_of(peers_.begin(), peers_.end(), [](const auto& p) { return p->conn_open; });
  }

  Status Close() {
    auto deadline = NowNs() + ToNs(kCloseTimeout);
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
      Tick(NowNs());
    }
    for (auto& p : peers_) {
      if (p->conn_open) {
        LosePeer(*p, Status::Error(ErrorCode::kTimeout, "did not end the session after Bye"));
      }
    }
    SyncBitmaps();
    if (uint64_t left_out = nack_log_.TakeLeftOut()) {
      spdlog::warn("{} more warnings of rejected blocks were left out of the log", left_out);
    }
    return failure_;
  }

  size_t TakeBuffers(std::span<ReturnedBuffer> out) {
    size_t n = 0;
    while (n < out.size() && returned_count_ > 0) {
      out[n++] = std::move(returned_[returned_head_]);
      returned_head_ = (returned_head_ + 1) % returned_.size();
      --returned_count_;
    }
    return n;
  }

  // Peer `index` (valid after StartConnect).
  const auto& peer(size_t index) const { return *peers_[index]; }

  std::vector<PeerStats> stats() const {
    std::vector<PeerStats> out;
    for (const auto& p : peers_) out.push_back(p->stats);
    return out;
  }

  ~Impl() {
    for (auto& p : peers_) {
      if (p->conn_open) p->t->Close(p->conn);
    }
    // Give the transports the chance to hand back every buffer they still reference.
    // Bounded by time, not by turns: Wait returns at once while a transport busy-polls.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    while (!closed() && std::chrono::steady_clock::now() < deadline) {
      (void)ring_.Wait(std::chrono::milliseconds(20));
      PollTransports();
    }
    SyncBitmaps();
  }

 private:
  struct Write {
    bool used = false;
    WriteKind kind = WriteKind::kData;
    bool unmap = false;  // kZero
    uint64_t token = 0;
    uint64_t offset = 0;
    uint64_t length = 0;  // kData: at most a block; kZero: any range
    uint64_t first_block = 0, last_block = 0;  // the blocks it touches
    // Per peer: bit 0, its first block was clean in that peer's bitmap before this write; bit
    // 1, its last block.
    std::array<uint8_t, kMaxPeers> clean_before{};
    uint32_t crc = 0;
    bool zero = false;  // kData: the buffer holds only zeros (its crc is computed when needed)
    uint32_t compressed = 0;  // kData: its compressed size in rooms_ (0: sent as it is)
    bool governed = false;    // kData: the CompressGovernor saw it (and hears of its end)
    bool crc_known = false;
    io::BufferRef buffer;
    uint64_t start_ns = 0;
    uint64_t done_ns = 0;
    PeerMask targets = 0;  // peers it was sent to
    PeerMask skipped = 0;  // live peers it was meant for but not sent to (behind)
    PeerMask counted = 0;  // peers that reached the ack level
    uint32_t need = 0;     // peers that must reach it for the write to complete
    uint32_t holding = 0;  // peers that may still need the buffer
    bool done = false;     // queued for Poll
    bool reported = false;
    bool own = false;      // the Replicator's own (a Flush): reported to no one
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
    uint64_t sent_ns = 0;   // its first send
  };

  struct Peer {
    Peer(uint64_t span, uint64_t blocks, uint64_t hot_capacity)
        : released(span),
          acked(span),
          writes(span),
          acked_volatile((blocks + 63) / 64, 0),
          flushing((blocks + 63) / 64, 0),
          hot(blocks, hot_capacity) {}
    size_t index = 0;
    PeerConfig config;
    transport::Transport* t = nullptr;
    transport::ConnId conn = transport::kNoConn;
    bool conn_open = false;  // until the transport reports kClosed
    bool closing = false;    // Bye sent
    std::string name;
    ClientHandshake handshake;
    uint64_t next_seq = 0;
    SeqTracker released;
    SeqTracker acked;
    std::vector<PeerWrite> writes;        // by seq % span
    // Below ack level durable, with a bitmap: blocks whose newest write to this peer was acked
    // (and no Flush sent since covers), and those the pending Flush covers: acked before it
    // was sent, not written since. Its ack clears their bits; a clean end clears both sets'.
    std::vector<uint64_t> acked_volatile;
    std::vector<uint64_t> flushing;
    bool flush_pending = false;
    uint64_t flush_seq = 0;
    uint64_t last_flush_ns = 0;
    bool acked_since_flush = false;  // blocks went into acked_volatile since the last Flush
    DirtyBitmap* bitmap = nullptr;
    HotBlocks hot;  // blocks whose bit stays set a while after their durable ack
    uint64_t last_rx_ns = 0;
    uint64_t last_heartbeat_ns = 0;
    uint32_t holding = 0;  // writes whose buffer this peer may still need (its window)
    uint32_t unacked = 0;  // writes sent and not acked at the wire level
    uint64_t last_progress_ns = 0;  // the last ack or nack, or when `unacked` left 0
    PeerStats stats;
  };

  // What a durable ack of write `w` by peer `p` lets it forget: the bits of the blocks the
  // write covered whole, and of the blocks it touched in part that were clean before it (one
  // write of a block at a time: nothing else changed them since).
  template <typename Fn>
  void ForEachSettledBlock(const Peer& p, const Write& w, Fn fn) const {
    if (w.kind == WriteKind::kFlush) return;
    const uint64_t bs = options_.block_size;
    const uint64_t end = w.offset + w.length;
    for (uint64_t b = w.first_block; b <= w.last_block; ++b) {
      const uint64_t block_end = std::min<uint64_t>((b + 1) * bs, options_.volume_size);
      const bool whole = w.offset <= b * bs && end >= block_end;
      const bool was_clean = (b == w.first_block && (w.clean_before[p.index] & 1)) ||
                             (b == w.last_block && (w.clean_before[p.index] & 2));
      if (whole || was_clean) fn(b);
    }
  }

  void SendData(Peer& p, PeerWrite& pw) {
    // A failed Replicator sends nothing more (its connections are closing; a resend of a
    // block NACKed before the failure would only fail again on the closed connection).
    if (!failure_.ok()) return;
    Write& w = writes_[pw.write];
    proto::Frame f;
    const auto level = static_cast<uint16_t>(wire_level_);
    transport::WorkItem item;
    const bool as_zero =
        w.kind == WriteKind::kZero ||
        (w.zero && p.handshake.hello_ok().version >= proto::kExtentsVersion);
    switch (w.kind) {
      case WriteKind::kData:
        if (as_zero) {
          // Zeros read back the same deallocated: the replica's copy stays sparse where the
          // source's is (as cp --sparse and rsync --sparse leave it).
          f.flags = level | proto::kZeroUnmap;
          f.body = proto::Zero{pw.seq, w.offset, w.length};
          break;
        }
        if (w.zero && !w.crc_known) {
          w.crc = Crc32c(w.buffer.data(), w.length);
          w.crc_known = true;
        }
        f.flags = level | (pw.retries > 0 ? proto::kDataResend : 0);
        f.payload_len = static_cast<uint32_t>(w.length);
        f.body = proto::Data{pw.seq, w.offset, static_cast<uint32_t>(w.length), w.crc};
        item.data = w.buffer.data();
        if (w.compressed != 0 && (Compressing() >> p.index & 1)) {
          f.flags |= proto::DataCodecFlags(options_.compress.codec);
          f.payload_len = w.compressed;
          item.data = rooms_[pw.write].data();
        }
        break;
      case WriteKind::kZero:
        f.flags = level | (w.unmap ? proto::kZeroUnmap : 0);
        f.body = proto::Zero{pw.seq, w.offset, w.length};
        break;
      case WriteKind::kFlush:
        f.body = proto::Flush{pw.seq};
        break;
    }
    item.conn = p.conn;
    item.tag = pw.seq;
    item.signal = true;
    item.header = proto::Encode(f);
    Status s = p.t->Post(std::span(&item, 1));
    if (!s.ok()) {
      LosePeer(p, s.Context(fmt::format("sending block at offset {}", w.offset)));
      return;
    }
    pw.sending = true;
    ++p.stats.blocks_sent;
    (as_zero ? p.stats.zero_bytes : p.stats.bytes_sent) += w.length;
    p.stats.wire_bytes += f.payload_len;
  }

  // Whether the Data write `w`, submitted now, is compressed (--compress-mode).
  bool CompressNext(Write& w) {
    if (options_.compress.mode == CompressMode::kAlways) return true;
    w.governed = true;
    const bool compress = governor_.Next(w.length, w.zero, NowNs());
    if (CompressGovernor::Decision d; governor_.TakeDecision(d)) {
      spdlog::info("--compress {} --compress-mode auto: {} ({:.0f} MB/s compressing, {:.0f} MB/s "
                   "not, in the last probes)",
                   options_.compress.ToString(), d.compress ? "compressing" : "not compressing",
                   d.rate_compressed / 1e6, d.rate_plain / 1e6);
    }
    return compress;
  }

  // Peers that get compressed payloads: their replica decompresses (HelloOk).
  PeerMask Compressing() const {
    PeerMask m = 0;
    for (const auto& p : peers_) {
      if (p->stats.state == PeerState::kInSession &&
          (p->handshake.hello_ok_flags() & proto::kHelloOkCompressed) != 0) {
        m |= PeerMask{1} << p->index;
      }
    }
    return m;
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

  // Heartbeats out; silence, and being alive without progress, in.
  void Tick(uint64_t now) {
    const uint64_t timeout = ToNs(options_.peer_timeout);
    const uint64_t ack_timeout =
        options_.ack_timeout.count() > 0 ? ToNs(options_.ack_timeout) : timeout;
    const uint64_t handshake_timeout = ToNs(options_.handshake_timeout);
    for (auto& p : peers_) {
      if (p->stats.state == PeerState::kConnecting && p->conn_open &&
          now - p->last_rx_ns > handshake_timeout) {
        LosePeer(*p, Status::Error(ErrorCode::kTimeout,
                                   fmt::format("{} did not answer the handshake within {} ms",
                                               p->name, options_.handshake_timeout.count())));
        continue;
      }
      if (p->stats.state != PeerState::kInSession) continue;
      if (timeout > 0 && now - p->last_rx_ns > timeout) {
        LosePeer(*p, Status::Error(ErrorCode::kTimeout,
                                   fmt::format("no frame for {} ms (--peer-timeout)",
                                               (now - p->last_rx_ns) / 1000000)));
        continue;
      }
      if (ack_timeout > 0 && p->unacked > 0 && now - p->last_progress_ns > ack_timeout) {
        LosePeer(*p, Status::Error(ErrorCode::kTimeout,
                                   fmt::format("acknowledged none of its {} outstanding writes "
                                               "for {} ms (--ack-timeout); alive but stuck",
                                               p->unacked, (now - p->last_progress_ns) / 1000000)));
        continue;
      }
      if (timeout == 0) continue;
      if (now - p->last_heartbeat_ns >= timeout / 3 && p->t->SendSpace(p->conn) > 0) {
        proto::Frame f;
        f.body = proto::Heartbeat{now, 0};
        auto item = ControlItem(p->conn, f);
        item.tag = kControlTag;
        if (p->t->Post(std::span(&item, 1)).ok()) p->last_heartbeat_ns = now;
      }
    }
  }

  Peer* FindPeer(const transport::Transport& t, transport::ConnId conn) {
    for (auto& p : peers_) {
      if (p->t == &t && p->conn == conn && p->conn_open) return p.get();
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
        p->last_rx_ns = NowNs();
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
    if (c.tag == kByeTag || c.tag == kControlTag) return;
    PeerWrite& pw = p.writes[c.tag % span_];
    if (pw.write == kNoWrite || pw.seq != c.tag || !pw.sending) return;
    pw.sending = false;
    if (c.res < 0) {
      // Cancelled by a close: the kClosed that follows releases the rest of this peer's holds.
      Release(p, pw);
      return;
    }
    if (options_.ack == proto::AckLevel::kSent && !IsFlush(pw)) Reached(p, pw);
    if (pw.resend && p.stats.state == PeerState::kInSession) {
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
      LosePeer(p, frame.status().Context("bad frame"));
      return;
    }
    if (p.stats.state == PeerState::kConnecting) {
      auto open = p.handshake.OnFrame(*p.t, p.conn, *frame, c.header, c.control);
      if (!open.ok()) {
        LosePeer(p, open.status());
        return;
      }
      if (*open) {
        p.stats.state = PeerState::kInSession;
        p.stats.replica_id = p.handshake.hello_ok().replica_id;
        p.last_heartbeat_ns = NowNs();
        spdlog::info("{}: session open (protocol v{} over {}{}, ack {}, block {} KiB, window {})",
                     p.name, p.handshake.hello_ok().version, p.t->name(),
                     options_.key ? ", authenticated" : "", proto::AckLevelName(options_.ack),
                     options_.block_size >> 10, options_.window);
      }
      return;
    }
    switch (frame->type()) {
      case proto::FrameType::kError:
        LosePeer(p, StatusFromError(std::get<proto::Error>(frame->body), c.control, p.name));
        return;
      case proto::FrameType::kAck:
        OnAck(p, std::get<proto::Ack>(frame->body));
        return;
      case proto::FrameType::kNack:
        if (p.closing) break;
        OnNack(p, std::get<proto::Nack>(frame->body));
        return;
      case proto::FrameType::kHeartbeat:
        return;
      default:
        break;
    }
    LosePeer(p, Status::Protocol("unexpected {} frame", proto::FrameTypeName(frame->type())));
  }

  void OnAck(Peer& p, const proto::Ack& a) {
    if (a.level != wire_level_ && a.level != proto::AckLevel::kDurable) {
      LosePeer(p, Status::Protocol("acked at level {}, the session asked for {}",
                                   proto::AckLevelName(a.level), proto::AckLevelName(wire_level_)));
      return;
    }
    if (a.cumulative > p.next_seq) {
      LosePeer(p, Status::Protocol("acked up to seq {} but only {} were sent", a.cumulative,
                                   p.next_seq));
      return;
    }
    if (a.level != wire_level_) {
      // The replica's final flush at the end of a `received` session: everything it acked
      // received is durable now.
      if (a.cumulative == p.next_seq && p.bitmap != nullptr) {
        DrainBlocks(p.acked_volatile, [&](uint64_t b) { p.bitmap->Clear(b); });
        DrainBlocks(p.flushing, [&](uint64_t b) { p.bitmap->Clear(b); });
        p.flush_pending = false;
      }
      return;
    }
    for (uint64_t s = p.acked.cumulative(); s < a.cumulative; ++s) {
      if (!p.acked.Has(s)) Acked(p, s);
    }
    for (uint64_t i = 0; i < 64 && a.sack_bits != 0; ++i) {
      if (!((a.sack_bits >> i) & 1)) continue;
      uint64_t s = a.sack_base + i;
      if (s < a.sack_base || s >= p.next_seq) {  // wrapped past 2^64, or beyond what was sent
        LosePeer(p, Status::Protocol("acked seq {} + {} that was never sent", a.sack_base, i));
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
    --p.unacked;
    p.last_progress_ns = NowNs();
    const Write& w = writes_[pw.write];
    if (w.kind != WriteKind::kFlush) {
      ++p.stats.blocks_acked;
      p.stats.bytes_acked += w.length;
      p.stats.ack_latency.Record(p.last_progress_ns - pw.sent_ns);
    }
    if (w.kind == WriteKind::kData) p.stats.bytes_in_flight -= w.length;
    if (wire_level_ == proto::AckLevel::kDurable) {
      if (p.bitmap != nullptr) ForEachSettledBlock(p, w, [&](uint64_t b) { Settle(p, b); });
    } else if (p.bitmap != nullptr) {
      ForEachSettledBlock(p, w, [&](uint64_t b) {
        AddBlock(p.acked_volatile, b);
        p.acked_since_flush = true;
      });
      if (w.kind == WriteKind::kFlush && p.flush_pending && seq == p.flush_seq &&
          p.stats.state == PeerState::kInSession) {
        DrainBlocks(p.flushing, [&](uint64_t b) { Settle(p, b); });
        p.flush_pending = false;
      }
    }
    if (options_.ack != proto::AckLevel::kSent || IsFlush(pw)) Reached(p, pw);
    if (!pw.sending) Release(p, pw);
  }

  // Block `b` is durable on peer `p` as the primary holds it: its bit clears, or stays set a
  // while as hot (hot_bytes).
  void Settle(Peer& p, uint64_t b) {
    if (options_.hot_bytes > 0) {
      p.hot.Settled(b, *p.bitmap);
    } else {
      p.bitmap->Clear(b);
    }
  }

  void OnNack(Peer& p, const proto::Nack& n) {
    PeerWrite& pw = p.writes[n.seq % span_];
    if (n.seq >= p.next_seq || pw.write == kNoWrite || pw.seq != n.seq || pw.acked) {
      LosePeer(p, Status::Protocol("rejected seq {} that is not in flight", n.seq));
      return;
    }
    const Write& w = writes_[pw.write];
    p.last_progress_ns = NowNs();  // an answer, if not a good one: max_retries bounds those
    if (n.reason != proto::NackReason::kIoError) ++p.stats.crc_mismatches;
    if (auto left_out = nack_log_.Allow(NowNs())) {
      if (n.reason == proto::NackReason::kCrcMismatch) {
        spdlog::warn("{}: block at offset {} failed its CRC32C check at the replica (expected "
                     "0x{:08x}, got 0x{:08x}); resending{}",
                     p.name, w.offset, n.expected_crc, n.actual_crc, LeftOut(*left_out));
      } else if (n.reason == proto::NackReason::kBadPayload) {
        spdlog::warn("{}: block at offset {}: its compressed payload did not decompress at the "
                     "replica; resending{}",
                     p.name, w.offset, LeftOut(*left_out));
      } else {
        spdlog::warn("{}: replica could not write block at offset {}: {}; resending{}", p.name,
                     w.offset, std::strerror(n.err), LeftOut(*left_out));
      }
    }
    if (++pw.retries > options_.max_retries) {
      // A block that keeps failing: the push cannot complete as asked, whatever the quorum.
      Fail(Status::Error(
          ErrorCode::kCrcMismatch,
          fmt::format("block at offset {} (length {}) was rejected by {} {} times ({}); giving up",
                      w.offset, w.length, p.name, pw.retries,
                      n.reason == proto::NackReason::kCrcMismatch   ? "CRC32C mismatch"
                      : n.reason == proto::NackReason::kBadPayload ? "compressed payload refused"
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
    p.conn_open = false;
    // Every buffer this peer still held is free as far as it is concerned.
    for (uint64_t s = p.released.cumulative(); s < p.next_seq; ++s) {
      PeerWrite& pw = p.writes[s % span_];
      if (pw.write != kNoWrite && pw.seq == s && !pw.released) Release(p, pw);
    }
    if (p.stats.state == PeerState::kLost) return;
    if (p.closing && status.ok()) {
      p.stats.state = PeerState::kClosed;
      return;
    }
    if (p.closing && status.code() == ErrorCode::kClosed) {
      p.stats.state = PeerState::kClosed;  // the replica ended the session after our Bye
      return;
    }
    LosePeer(p, status.ok() ? Status::Error(ErrorCode::kClosed, "closed the connection") : status);
  }

  // The peer is gone: log why, close its connection, and carry on with the others while the
  // quorum holds. Its dirty bits stay set: the next push resyncs what it missed.
  void LosePeer(Peer& p, Status reason) {
    if (p.stats.state == PeerState::kLost || p.stats.state == PeerState::kClosed) return;
    bool was_connecting = p.stats.state == PeerState::kConnecting;
    p.stats.state = PeerState::kLost;
    p.stats.bytes_in_flight = 0;
    // Most messages already name the peer ("NAME: ...", "NAME reported: ..."): say it once.
    std::string why = reason.message();
    if (why.rfind(p.name + ": ", 0) == 0) {
      why = why.substr(p.name.size() + 2);
    } else if (why.rfind(p.name + " ", 0) == 0) {
      why = why.substr(p.name.size() + 1);
    }
    p.stats.lost_reason = why;
    p.stats.lost_code = reason.code();
    spdlog::error("lost replica {}: {}", p.name, why);
    if (p.conn_open) p.t->Close(p.conn);
    if (!failure_.ok()) return;
    if (was_connecting) {
      // Refused or failed in the handshake: fatal unless the quorum can do without this peer (or
      // the caller lives without a quorum for a while: a volume).
      if (!options_.survive_quorum_loss && Unreachable() > peers_.size() - quorum_) {
        Fail(reason.message().find(p.name) == std::string::npos
                 ? Status::Error(reason.code(), fmt::format("{}: {}", p.name, why))
                 : reason);
      }
      return;
    }
    uint32_t live = static_cast<uint32_t>(std::popcount(live_peers()));
    const Status no_quorum = Status::Error(
        reason.code(), fmt::format("lost replica {} ({}); {} replica(s) left, the quorum needs {}",
                                   p.name, why, live, quorum_));
    if (live < quorum_ && !options_.survive_quorum_loss) {
      Fail(no_quorum);
      return;
    }
    // Writes waiting on this peer: they now need what the remaining targets can give. With
    // fewer than min_live peers left (a volume lives on), those that cannot reach theirs fail.
    PeerMask live_mask = live_peers();
    for (uint32_t wi = 0; wi < writes_.size(); ++wi) {
      Write& w = writes_[wi];
      if (!w.used || w.done || !(w.targets >> p.index & 1) || (w.counted >> p.index & 1)) continue;
      uint32_t reached = static_cast<uint32_t>(std::popcount(w.counted));
      uint32_t can = reached + static_cast<uint32_t>(std::popcount(w.targets & live_mask & ~w.counted));
      if (live < options_.min_live && can < w.need) {
        Finish(wi, no_quorum);
        continue;
      }
      w.need = std::min(w.need, can);
      if (reached >= w.need) Finish(wi, Status());
    }
  }


  // A Flush promises durability: it reaches its ack level only at the replica's ack, whatever
  // the level (a write at `sent` reaches it once it left).
  bool IsFlush(const PeerWrite& pw) const { return writes_[pw.write].kind == WriteKind::kFlush; }

  // Peer `p` reached the ack level for this write.
  void Reached(Peer& p, PeerWrite& pw) {
    if (pw.counted) return;
    pw.counted = true;
    Write& w = writes_[pw.write];
    w.counted |= PeerMask{1} << p.index;
    if (!w.done && static_cast<uint32_t>(std::popcount(w.counted)) >= w.need) {
      Finish(pw.write, Status());
    }
  }

  void Release(Peer& p, PeerWrite& pw) {
    if (pw.released) return;
    pw.released = true;
    --p.holding;
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
    if (w.governed) governor_.Completed();
    w.status = std::move(status);
    if (w.own) {
      w.reported = true;
      MaybeFree(wi);
      return;
    }
    done_[(done_head_ + done_count_) % done_.size()] = wi;
    ++done_count_;
  }

  // A Flush leaves for peer `p` under `seq`: unless one is pending, it covers the blocks acked
  // so far (acked_volatile moves into flushing).
  void StartFlushCover(Peer& p, uint64_t seq, uint64_t now) {
    ++p.stats.flushes_sent;
    if (p.bitmap == nullptr || wire_level_ == proto::AckLevel::kDurable || p.flush_pending) return;
    p.acked_volatile.swap(p.flushing);  // flushing was empty: nothing pending
    p.flush_pending = true;
    p.flush_seq = seq;
    p.last_flush_ns = now;
    p.acked_since_flush = false;
  }

  void MaybeFree(uint32_t wi) {
    Write& w = writes_[wi];
    if (!w.used || !w.reported || w.holding > 0) return;
    w.used = false;
    if (options_.return_buffers && w.buffer) {
      returned_[(returned_head_ + returned_count_) % returned_.size()] =
          ReturnedBuffer{w.token, std::move(w.buffer)};
      ++returned_count_;
    }
    w.buffer.Reset();
    free_.push_back(wi);
  }


  void SyncBitmaps() {
    for (auto& p : peers_) {
      if (p->bitmap == nullptr || !p->bitmap->has_unsynced_changes()) continue;
      Status s = p->bitmap->Sync();
      if (!s.ok()) spdlog::error("{}", s.message());  // clears only: the next push resends more
    }
  }

  void Fail(Status status) {
    if (!failure_.ok()) return;
    failure_ = status;
    spdlog::error("{}", status.message());
    for (uint32_t wi = 0; wi < writes_.size(); ++wi) {
      if (writes_[wi].used && !writes_[wi].done) Finish(wi, status);
    }
    for (auto& p : peers_) {
      if (p->conn_open) p->t->Close(p->conn);
    }
  }

  io::Ring& ring_;
  io::BufferPool& pool_;
  ReplicatorOptions options_;
  proto::AckLevel wire_level_;
  uint64_t span_;
  uint64_t blocks_;
  uint32_t quorum_ = 1;
  std::vector<std::unique_ptr<Peer>> peers_;
  std::vector<transport::Transport*> transports_;
  std::vector<Write> writes_;
  std::unique_ptr<Compressor> compressor_;  // --compress
  CompressGovernor governor_{options_.window};  // --compress-mode auto
  std::vector<io::BufferRef> rooms_;       // per write slot, its compressed payload (pool buffers)
  std::vector<uint32_t> free_;
  std::vector<uint32_t> done_;  // ring of write indexes ready for Poll
  size_t done_head_ = 0;
  size_t done_count_ = 0;
  uint32_t in_flight_ = 0;
  uint64_t last_bitmap_sync_ns_ = 0;
  Status failure_;
  LogLimiter nack_log_{kLogBurst, kLogPeriodNs};
  proto::Hello hello_;  // what every session of every peer opens with
  // With return_buffers: buffers the Replicator is done with, for TakeBuffers (ring).
  std::vector<ReturnedBuffer> returned_;
  size_t returned_head_ = 0;
  size_t returned_count_ = 0;
  std::array<transport::Completion, 64> completions_;
};

Result<std::unique_ptr<Replicator>> Replicator::Create(io::Ring& ring, io::BufferPool& pool,
                                                       const ReplicatorOptions& options) {
  if (!proto::ValidBlockSize(options.block_size)) {
    return Status::Invalid("block size {} is not a multiple of {} between {} and {}",
                           options.block_size, proto::kBlockAlign, proto::kBlockAlign,
                           proto::kMaxBlockSize);
  }
  if (options.window == 0 || options.window > proto::kMaxWindow) {
    return Status::Invalid("window {} is outside 1..{}", options.window, proto::kMaxWindow);
  }
  if (options.volume_size == 0) return Status::Invalid("the volume is empty");
  if (pool.buffer_size() < options.block_size) {
    return Status::Invalid("buffer pool buffers ({} bytes) are smaller than a block ({})",
                           pool.buffer_size(), options.block_size);
  }
  return std::unique_ptr<Replicator>(new Replicator(std::make_unique<Impl>(ring, pool, options)));
}

uint32_t Replicator::WriteSlots(const ReplicatorOptions& options, size_t peers) {
  size_t quorum = options.quorum == 0 ? peers : std::min<size_t>(options.quorum, peers);
  return static_cast<uint32_t>(options.window * (1 + peers - quorum));
}

uint32_t Replicator::OwnBuffers(const ReplicatorOptions& options, size_t peers) {
  return options.compress.codec == proto::Codec::kNone ? 0 : WriteSlots(options, peers);
}

Replicator::Replicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Replicator::~Replicator() = default;
Status Replicator::Connect(std::span<const PeerConfig> peers) { return impl_->Connect(peers); }
Status Replicator::StartConnect(std::span<const PeerConfig> peers) {
  return impl_->StartConnect(peers);
}
bool Replicator::ready() const { return impl_->ready(); }
void Replicator::AttachBitmap(size_t index, DirtyBitmap* bitmap) {
  impl_->AttachBitmap(index, bitmap);
}
PeerMask Replicator::live_peers() const { return impl_->live_peers(); }
uint32_t Replicator::quorum() const { return impl_->quorum(); }
bool Replicator::CanSubmit(PeerMask peers) const { return impl_->CanSubmit(peers); }
PeerMask Replicator::Behind() const { return impl_->Behind(); }
bool Replicator::RangeInFlight(uint64_t offset, uint64_t length) const {
  return impl_->RangeInFlight(offset, length);
}
Status Replicator::Submit(uint64_t offset, io::BufferRef buffer, uint32_t length, uint64_t token,
                          PeerMask peers, WriteOrigin origin) {
  return impl_->Submit(offset, std::move(buffer), length, token, peers, origin);
}
Status Replicator::MarkMissed(uint64_t offset, uint64_t length) {
  return impl_->MarkMissed(offset, length);
}
void Replicator::Reject(size_t index, Status reason) {
  impl_->Reject(index, std::move(reason));
}
Status Replicator::SendGeneration(size_t index, uint16_t flags) {
  return impl_->SendGeneration(index, flags);
}
const Generations& Replicator::peer_generations(size_t index) const {
  return impl_->peer(index).handshake.peer_generations();
}
Status Replicator::Rejoin(size_t index, std::chrono::milliseconds connect_timeout) {
  return impl_->Rejoin(index, connect_timeout);
}
size_t Replicator::TakeBuffers(std::span<ReturnedBuffer> out) { return impl_->TakeBuffers(out); }
Status Replicator::SubmitZero(uint64_t offset, uint64_t length, bool unmap, uint64_t token,
                              PeerMask peers, WriteOrigin origin) {
  return impl_->SubmitZero(offset, length, unmap, token, peers, origin);
}
Status Replicator::SubmitFlush(uint64_t token, PeerMask peers) {
  return impl_->SubmitFlush(token, peers);
}
size_t Replicator::Poll(std::span<WriteCompletion> out) { return impl_->Poll(out); }
uint32_t Replicator::in_flight() const { return impl_->in_flight(); }
const Status& Replicator::failure() const { return impl_->failure(); }
Status Replicator::Close() { return impl_->Close(); }
void Replicator::StartClose() { impl_->StartClose(); }
bool Replicator::closed() const { return impl_->closed(); }
bool Replicator::idle() const { return impl_->idle(); }
std::vector<PeerStats> Replicator::stats() const { return impl_->stats(); }
const HotBlocks& Replicator::hot_blocks(size_t index) const { return impl_->hot_blocks(index); }
const PeerStats& Replicator::peer_stats(size_t index) const { return impl_->peer(index).stats; }

}  // namespace blkmirror::engine
