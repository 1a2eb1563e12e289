// `blkmirror push`: read the source with io_uring into pool buffers and replicate its blocks to
// the peers through the Replicator, at the ack level asked for. With metadata from an earlier
// push (a dirty bitmap per replica), only the blocks a replica may be missing are sent to it.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cstdio>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/meta.h"
#include "cli/push_internal.h"
#include "cli/setup.h"
#include "common/clock.h"
#include "common/histogram.h"
#include "common/progress.h"
#include "common/units.h"
#include "engine/dirty_bitmap.h"
#include "engine/replicator.h"
#include "engine/resync_start.h"
#include "engine/send_plan.h"
#include "engine/session.h"
#include "engine/verifier.h"
#include "io/testing/faulty_block_device.h"
#include "io/uring/uring_block_device.h"

namespace blkmirror::cli {
namespace {

struct PushReport {
  uint64_t bytes = 0;   // bytes of the blocks replicated (each block counted once)
  uint64_t blocks = 0;
  uint64_t blocks_skipped = 0;  // clean on every live peer: not read, not sent
  double seconds = 0;
  LatencyHistogram latency;
  // Where the loop waited, for finding what limits a push (in --json as "waits_ms").
  uint64_t wait_acks_ns = 0;   // blocks read, window full: waiting for replicas
  uint64_t wait_reads_ns = 0;  // window open, nothing read yet: waiting for the source
  int interrupted = 0;         // the signal that stopped it early (0: it ran to the end)
};

// --test-hold-at: set by SIGUSR1, which releases a held push.
std::atomic<bool> g_hold_released{false};
void OnReleaseHold(int) { g_hold_released.store(true); }

// SIGINT, SIGTERM: the push submits nothing more, lets what is in flight be acked, and ends its
// sessions cleanly, so that the bitmaps keep exactly what is left for the next run. A second
// signal ends the process at once (what is acked is safe then too, its clears may be lost).
std::atomic<int> g_interrupt{0};
void OnInterrupt(int sig) {
  if (g_interrupt.exchange(sig) != 0) _exit(128 + sig);
}

// --checksum-skip at a granularity finer than the block: per block, the pieces that differ on
// some replica (the union over the replicas compared), sent as extents instead of the block.
struct Pieces {
  std::vector<uint32_t> first;  // per block, its first piece in `ranges`; first[blocks] = end
  std::vector<std::pair<uint64_t, uint32_t>> ranges;  // offset, length; in volume order
  engine::PeerMask peers = 0;  // the replicas compared: a block for others goes whole

  bool Has(uint64_t block) const { return !first.empty() && first[block] != first[block + 1]; }

  // From each compared replica's differing ranges (at the checksum granularity), split at block
  // boundaries and merged.
  static Pieces From(const std::vector<std::vector<engine::DiffRange>>& diffs, uint64_t blocks,
                     uint32_t block_size, uint32_t piece_size, uint64_t size) {
    Pieces p;
    const uint64_t per_block = block_size / piece_size;
    std::vector<uint64_t> bits((blocks * per_block + 63) / 64, 0);
    for (const auto& ranges : diffs) {
      for (const auto& d : ranges) {
        for (uint64_t off = d.offset; off < d.offset + d.length && off < size; off += piece_size) {
          const uint64_t i = off / piece_size;
          bits[i / 64] |= uint64_t{1} << (i % 64);
        }
      }
    }
    p.first.resize(blocks + 1);
    for (uint64_t b = 0; b < blocks; ++b) {
      p.first[b] = static_cast<uint32_t>(p.ranges.size());
      bool open = false;
      for (uint64_t j = 0; j < per_block; ++j) {
        const uint64_t i = b * per_block + j;
        const uint64_t off = i * piece_size;
        if (off >= size) break;
        if (!(bits[i / 64] >> (i % 64) & 1)) {
          open = false;
          continue;
        }
        const auto len = static_cast<uint32_t>(std::min<uint64_t>(piece_size, size - off));
        if (open) {
          p.ranges.back().second += len;
        } else {
          p.ranges.emplace_back(off, len);
          open = true;
        }
      }
    }
    p.first[blocks] = static_cast<uint32_t>(p.ranges.size());
    return p;
  }
};

// Reads the blocks the plan says into buffers (as many reads in flight as buffers allow) and
// feeds them to the Replicator, each to the live peers that need it. A write that a peer missed
// because it was behind goes back into the plan for that peer, and comes in a later pass.
class PushLoop {
 public:
  PushLoop(io::Ring& ring, io::BufferPool& pool, io::BlockDevice& source,
           engine::Replicator& replicator, uint32_t block_size, engine::SendPlan& plan,
           const Pieces& pieces, Progress& progress)
      : ring_(ring), pool_(pool), source_(source), rep_(replicator), block_size_(block_size),
        plan_(plan), pieces_(pieces), progress_(progress), slots_(pool.count()),
        ready_(pool.count()),
        completed_((plan.blocks() + 63) / 64, 0) {
    free_.reserve(pool.count());
    for (uint32_t i = 0; i < pool.count(); ++i) free_.push_back(i);
    batch_.reserve(pool.count());
  }

  // Test hook (--test-hold-at): once `bytes` have been submitted, submit nothing more until
  // SIGUSR1; say so once everything submitted is acked. A test breaks something at that known
  // point in the middle of the push, whatever the speed of the machine.
  void HoldAt(uint64_t bytes) { hold_at_ = bytes; }

  Status Run(PushReport& report) {
    uint64_t start = NowNs();
    for (;;) {
      RETURN_IF_ERROR(rep_.failure());
      if (const int sig = g_interrupt.load(); sig != 0 && rep_.in_flight() == 0) {
        report.interrupted = sig;
        break;
      }
      const bool holding = Holding();
      if (TestHeld() && !held_ && rep_.in_flight() == 0) {
        held_ = true;
        spdlog::warn("TEST HOLD: {} bytes submitted and acked; holding until SIGUSR1",
                     submitted_bytes_);
      }
      size_t events = 0;
      if (!holding) RETURN_IF_ERROR(IssueReads());
      events += holding ? 0 : batch_.size();
      ASSIGN_OR_RETURN(size_t reaped, ReapReads());
      events += reaped;
      while (!Holding() && ready_count_ > 0) {
        Slot& s = slots_[ready_[ready_head_]];
        engine::PeerMask mask = s.peers & rep_.live_peers();
        if (mask != 0) {
          // In order: a block waits for an earlier write of it, and for window space.
          if (rep_.BlockInFlight(s.offset) || !rep_.CanSubmit(mask)) break;
          RETURN_IF_ERROR(rep_.Submit(s.offset, std::move(s.buffer), s.length, s.offset, mask));
          submitted_bytes_ += s.length;
        } else {
          s.buffer.Reset();  // every peer it was read for is lost since: it stays dirty there
        }
        free_.push_back(ready_[ready_head_]);
        ready_head_ = (ready_head_ + 1) % ready_.size();
        --ready_count_;
        ++events;
      }
      size_t n = rep_.Poll(done_);
      for (size_t i = 0; i < n; ++i) {
        const engine::WriteCompletion& c = done_[i];
        if (!c.status.ok()) return c.status;
        const uint64_t block = c.offset / block_size_;
        for (engine::PeerMask m = c.skipped; m != 0; m &= m - 1) {
          plan_.Add(static_cast<size_t>(std::countr_zero(m)), block);
        }
        report.latency.Record(c.latency_ns);
        // A piece counts its bytes; a block counts once, however many passes it took to reach
        // every peer.
        const bool piece = pieces_.Has(block);
        if (piece) report.bytes += c.length;
        uint64_t& word = completed_[block / 64];
        if (word >> (block % 64) & 1) continue;
        word |= uint64_t{1} << (block % 64);
        ++report.blocks;
        if (!piece) report.bytes += c.length;
      }
      events += n;
      progress_.Update(report.bytes);
      if (!more_ && source_.in_flight() == 0 && ready_count_ == 0 && rep_.in_flight() == 0) {
        // Writes that completed since may have put blocks back: one more look.
        more_ = plan_.CountAny(rep_.live_peers()) > 0;
        if (!more_) break;
      }
      if (events == 0) {
        uint64_t t0 = NowNs();
        RETURN_IF_ERROR(ring_.Wait(std::chrono::milliseconds(100)));
        bool source_bound = ready_count_ == 0 && source_.in_flight() > 0;
        (source_bound ? report.wait_reads_ns : report.wait_acks_ns) += NowNs() - t0;
      } else {
        RETURN_IF_ERROR(ring_.Submit());
      }
    }
    report.seconds = static_cast<double>(NowNs() - start) / 1e9;
    return Status::Ok();
  }

  // Lets reads still in the kernel land before the buffers go away.
  void Drain() {
    // Bounded by time, not by turns: Wait returns at once while a transport busy-polls.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (source_.in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
      (void)ring_.Wait(std::chrono::milliseconds(20));
      (void)ReapReads();
    }
  }

 private:
  // Nothing more is submitted: interrupted, or held for a test.
  bool Holding() const { return g_interrupt.load() != 0 || TestHeld(); }
  bool TestHeld() const {
    return hold_at_ > 0 && submitted_bytes_ >= hold_at_ && !g_hold_released.load();
  }

  struct Slot {
    io::BufferRef buffer;
    uint64_t offset = 0;
    uint32_t length = 0;
    engine::PeerMask peers = 0;  // the peers it was read for
  };

  Status IssueReads() {
    batch_.clear();
    const uint64_t size = source_.size();
    while (!free_.empty() && pool_.available() > 0) {
      if (piece_next_ == piece_end_) {
        auto item = plan_.Next(rep_.live_peers());
        if (!item) {
          more_ = false;
          break;
        }
        more_ = true;
        item_ = *item;
        // Only the pieces that differ, when every replica it goes to was compared.
        const bool pieces = pieces_.Has(item_.block) && (item_.peers & ~pieces_.peers) == 0;
        piece_next_ = pieces ? pieces_.first[item_.block] : 0;
        piece_end_ = pieces ? pieces_.first[item_.block + 1] : 0;
        if (!pieces) {
          const uint64_t offset = item_.block * block_size_;
          AddRead(offset, static_cast<uint32_t>(std::min<uint64_t>(block_size_, size - offset)));
          continue;
        }
      }
      const auto& [offset, length] = pieces_.ranges[piece_next_++];
      AddRead(offset, length);
    }
    if (batch_.empty()) return Status::Ok();
    return source_.Submit(batch_);
  }

  // Reads [offset, offset + length) into a free slot, for item_'s peers.
  void AddRead(uint64_t offset, uint32_t length) {
    uint32_t si = free_.back();
    free_.pop_back();
    Slot& s = slots_[si];
    s.buffer = std::move(*pool_.TryGet());
    s.offset = offset;
    s.length = length;
    s.peers = item_.peers;
    io::IoRequest r;
    r.op = io::IoOp::kRead;
    r.offset = s.offset;
    r.data = s.buffer.data();
    r.len = s.length;
    r.buf_index = s.buffer.index();
    r.tag = si;
    batch_.push_back(r);
  }

  Result<size_t> ReapReads() {
    size_t total = 0;
    size_t n;
    while ((n = source_.Poll(io_)) > 0) {
      for (size_t i = 0; i < n; ++i) {
        auto si = static_cast<uint32_t>(io_[i].tag);
        Slot& s = slots_[si];
        if (io_[i].res < 0) {
          return Status::Errno(-io_[i].res, fmt::format("cannot read the source {} at offset {}",
                                                        source_.name(), s.offset));
        }
        if (static_cast<uint32_t>(io_[i].res) != s.length) {
          return Status::Errno(EIO, fmt::format("short read of the source {} at offset {}: {} "
                                                "of {} bytes (did it shrink during the push?)",
                                                source_.name(), s.offset, io_[i].res, s.length));
        }
        ready_[(ready_head_ + ready_count_) % ready_.size()] = si;
        ++ready_count_;
      }
      total += n;
    }
    return total;
  }

  io::Ring& ring_;
  io::BufferPool& pool_;
  io::BlockDevice& source_;
  engine::Replicator& rep_;
  uint32_t block_size_;
  engine::SendPlan& plan_;
  const Pieces& pieces_;
  engine::SendPlan::Item item_;  // the block being read (in pieces: [piece_next_, piece_end_))
  uint32_t piece_next_ = 0;
  uint32_t piece_end_ = 0;
  Progress& progress_;
  uint64_t hold_at_ = 0;
  bool held_ = false;  // the hold was announced
  uint64_t submitted_bytes_ = 0;
  bool more_ = true;  // the plan may still have blocks for live peers
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  std::vector<uint32_t> ready_;  // ring of slots read and waiting for window space
  size_t ready_head_ = 0;
  size_t ready_count_ = 0;
  std::vector<uint64_t> completed_;  // blocks whose write completed at least once
  std::vector<io::IoRequest> batch_;
  std::array<io::IoCompletion, 64> io_;
  std::array<engine::WriteCompletion, 64> done_;
};

std::string StateName(const engine::PeerStats& s, const engine::DirtyBitmap* bitmap) {
  if (s.state == engine::PeerState::kLost) return "lost";
  if (bitmap != nullptr && bitmap->CountSet() == 0) return "in_sync";
  return "resyncing";
}

// What the flags say, checked before anything is opened: every error here is a usage error.
struct PushSettings {
  proto::AckLevel ack{};
  uint32_t block_size = 0;
  uint32_t piece_size = 0;  // --checksum-block-size
  engine::CompressSpec compress;
  std::chrono::milliseconds peer_timeout{0};
  std::chrono::milliseconds ack_timeout{0};
  std::optional<uint64_t> hold_at;  // --test-hold-at
  std::vector<transport::Endpoint> endpoints;
  std::optional<engine::Key> key;
};

Result<PushSettings> CheckArgs(const PushArgs& args) {
  PushSettings s;
  auto ack = ParseAck(args.ack);
  if (!ack.ok()) return ack.status().Context("--ack");
  s.ack = *ack;
  ASSIGN_OR_RETURN(s.block_size, ParseBlockSize(args.block_size, "--block-size"));
  RETURN_IF_ERROR(CheckReplicaSet(args.window, args.peers.size(), args.quorum));
  if (int{args.full} + int{args.resume} + int{args.checksum_skip} > 1) {
    return Status::Invalid("--full, --resume and --checksum-skip each choose what to send: give "
                           "at most one");
  }
  ASSIGN_OR_RETURN(s.compress, ParseCompressArgs(args.compress, args.compress_mode));
  ASSIGN_OR_RETURN(s.piece_size, ParseBlockSize(args.checksum_block_size, "--checksum-block-size"));
  if (s.piece_size > s.block_size || s.block_size % s.piece_size != 0) {
    return Status::Invalid("--checksum-block-size {} must divide --block-size {}",
                           args.checksum_block_size, args.block_size);
  }
  auto timeout = ParseDuration(args.peer_timeout);
  if (!timeout.ok()) return timeout.status().Context("--peer-timeout");
  s.peer_timeout = *timeout;
  s.ack_timeout = s.peer_timeout;
  if (!args.ack_timeout.empty()) {
    auto ack_timeout = ParseDuration(args.ack_timeout);
    if (!ack_timeout.ok()) return ack_timeout.status().Context("--ack-timeout");
    s.ack_timeout = *ack_timeout;
  }
  if (!args.test_hold_at.empty()) {
    auto bytes = ParseSize(args.test_hold_at);
    if (!bytes.ok() || *bytes == 0) {
      return Status::Invalid("--test-hold-at '{}': expected a size above 0", args.test_hold_at);
    }
    s.hold_at = *bytes;
  }
  for (const std::string& p : args.peers) {
    auto ep = transport::Endpoint::Parse(p);
    if (!ep.ok()) return ep.status().Context("--peer");
    s.endpoints.push_back(*ep);
  }
  if (!args.key_file.empty()) {
    ASSIGN_OR_RETURN(auto key, engine::LoadKeyFile(args.key_file));
    s.key = key;
  }
  return s;
}

// The source as this push sees it, recorded in the metadata directory.
struct SourceRecord {
  uint64_t size = 0;
  proto::VolumeId volume_id;
  std::string meta_dir;
  // What a replica's bitmap was kept for: the size, and the mtime of a regular file. A source
  // changed since (written outside blkmirror) makes that bitmap blind to the changes.
  std::string stamp;
};

Result<SourceRecord> RecordSource(const PushArgs& args, uint32_t block_size) {
  auto info = io::StatPath(args.source);
  if (!info.ok()) return info.status().Context("--source");
  if (info->size == 0) return Status::Invalid("the source {} is empty", args.source);
  SourceRecord r;
  r.size = info->size;
  ASSIGN_OR_RETURN(r.volume_id, VolumeIdFor(args.source));
  r.meta_dir =
      args.meta_dir.empty() ? DefaultMetaDir(args.source, info->is_block_device) : args.meta_dir;
  RETURN_IF_ERROR(EnsureDir(r.meta_dir));
  struct stat st {};
  stat(args.source.c_str(), &st);
  r.stamp = info->is_block_device ? fmt::format("size {}", info->size)
                                  : fmt::format("size {} mtime {}.{:09d}", info->size,
                                                st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
  RETURN_IF_ERROR(WriteKeyValues(r.meta_dir + "/volume",
                                 {{"volume_id", engine::IdHex(r.volume_id)},
                                  {"source_path", args.source},
                                  {"source", r.stamp},
                                  {"block_size", std::to_string(block_size)},
                                  {"volume_size", std::to_string(info->size)}}));
  return r;
}

// --checksum-skip: what one replica's checksum comparison found.
struct Comparison {
  proto::ReplicaId replica;
  std::vector<engine::DiffRange> diffs;
};

// A verify session with each replica, per piece of --checksum-block-size. A replica whose
// comparison fails gets a full copy (said in the log).
std::vector<std::optional<Comparison>> CompareChecksums(const Loop& loop, io::BlockDevice& source,
                                                        const Transports& transports,
                                                        const PushSettings& s,
                                                        const proto::VolumeId& volume_id) {
  std::vector<std::optional<Comparison>> out(s.endpoints.size());
  for (size_t i = 0; i < s.endpoints.size(); ++i) {
    engine::VerifyOptions vo;
    vo.block_size = s.piece_size;
    vo.volume_id = volume_id;
    vo.key = s.key;
    auto report = engine::Verify(*loop.ring, *loop.pool, source, *transports.preferred,
                                 s.endpoints[i], vo, transports.fallback.get());
    if (!report.ok()) {
      spdlog::warn("{}: checksum comparison failed ({}); it gets a full copy",
                   s.endpoints[i].ToString(), report.status().message());
      continue;
    }
    spdlog::info("{}: {} of {} pieces of {} differ", s.endpoints[i].ToString(),
                 report->differing_blocks, report->blocks, FormatBytes(s.piece_size));
    out[i] = Comparison{report->replica_id, report->diffs};
  }
  return out;
}

// One dirty bitmap per replica, by its data identity, set as engine/resync_start.h decides.
struct ReplicaBitmaps {
  std::vector<std::unique_ptr<engine::DirtyBitmap>> owned;
  std::vector<engine::DirtyBitmap*> of_peer;  // index: peer
  engine::PeerMask kept = 0;  // peers in session: their bitmap is a file, kept as blocks go
  bool resumed = false;       // some replica did not start from scratch
};

Result<ReplicaBitmaps> PrepareBitmaps(const ReplicationPlan& plan, const SourceRecord& source,
                                      uint32_t block_size,
                                      const std::vector<std::optional<Comparison>>& comparisons,
                                      const std::vector<engine::PeerStats>& stats) {
  ReplicaBitmaps out;
  for (size_t i = 0; i < stats.size(); ++i) {
    engine::BitmapKey bkey{block_size, source.size, source.volume_id, stats[i].replica_id};
    if (stats[i].state != engine::PeerState::kInSession) {
      // Unreachable: its bitmap file stays as it is; nothing is sent to it this time.
      out.owned.push_back(engine::DirtyBitmap::InMemory(bkey));
      out.of_peer.push_back(out.owned.back().get());
      continue;
    }
    const std::string path = BitmapPath(source.meta_dir, stats[i].replica_id);
    const std::string stamp_path = path + ".source";
    auto stamp = ReadKeyValues(stamp_path);
    const bool stamp_ok = stamp.ok() && (*stamp)["source"] == source.stamp;
    bool existed = false;
    ASSIGN_OR_RETURN(auto bitmap, engine::DirtyBitmap::Open(path, bkey, &existed));
    const auto& compared = comparisons[i];
    const bool usable = compared && compared->replica == stats[i].replica_id;
    const engine::ResyncStart start = engine::ChooseResyncStart(
        {.compared = usable, .bitmap_existed = existed, .source_unchanged = stamp_ok},
        {.full = plan.args.full, .repair = plan.repair});
    engine::ApplyResyncStart(start, usable ? std::span(compared->diffs)
                                           : std::span<const engine::DiffRange>(),
                             *bitmap);
    if (start == engine::ResyncStart::kSourceChanged) {
      spdlog::warn("{}: {} changed since this replica's last push ({} -> {}): its bitmap cannot "
                   "say what changed; sending every block (--checksum-skip sends only the "
                   "blocks that differ)",
                   stats[i].peer, plan.args.source, stamp.ok() ? (*stamp)["source"] : "unknown",
                   source.stamp);
    } else if (start == engine::ResyncStart::kResume) {
      spdlog::info("{}: resuming: {} of {} blocks to send", stats[i].peer, bitmap->CountSet(),
                   bitmap->blocks());
    }
    out.resumed |= engine::Resumes(start);
    // verify --repair: the blocks it found differing (on top of whatever else is dirty).
    for (const auto& d : plan.extra_dirty) bitmap->SetRange(d.offset, d.length);
    RETURN_IF_ERROR(bitmap->Sync());
    // The bitmap is durable for this source now: only then may the stamp say so.
    if (!stamp_ok) RETURN_IF_ERROR(WriteKeyValues(stamp_path, {{"source", source.stamp}}));
    out.kept |= engine::PeerMask{1} << i;
    out.of_peer.push_back(bitmap.get());
    out.owned.push_back(std::move(bitmap));
  }
  return out;
}

// The pieces of blocks that differ, on the replicas whose comparison this run relies on.
Pieces PiecesFor(const std::vector<std::optional<Comparison>>& comparisons,
                 const std::vector<engine::PeerStats>& stats, uint64_t blocks,
                 uint32_t block_size, uint32_t piece_size, uint64_t size) {
  std::vector<std::vector<engine::DiffRange>> diffs;
  engine::PeerMask compared = 0;
  for (size_t i = 0; i < comparisons.size(); ++i) {
    if (comparisons[i] && comparisons[i]->replica == stats[i].replica_id) {
      diffs.push_back(comparisons[i]->diffs);
      compared |= engine::PeerMask{1} << i;
    }
  }
  Pieces pieces = Pieces::From(diffs, blocks, block_size, piece_size, size);
  pieces.peers = compared;
  return pieces;
}

// Bytes the plan will read and send (a block in pieces counts its pieces), for the progress.
uint64_t BytesToSend(engine::SendPlan plan, engine::PeerMask live, const Pieces& pieces,
                     uint32_t block_size, uint64_t size) {
  uint64_t bytes = 0;
  while (auto item = plan.Next(live)) {
    if (pieces.Has(item->block) && (item->peers & ~pieces.peers) == 0) {
      for (uint32_t k = pieces.first[item->block]; k < pieces.first[item->block + 1]; ++k) {
        bytes += pieces.ranges[k].second;
      }
    } else {
      bytes += std::min<uint64_t>(block_size, size - item->block * block_size);
    }
  }
  return bytes;
}

// A block sent in pieces is written in part, which leaves its bit set (engine/replicator.h):
// once a compared replica closed its session cleanly (every piece durable there), the block is
// what the source holds.
Status SettlePieces(const Pieces& pieces, const std::vector<engine::PeerStats>& stats,
                    const ReplicaBitmaps& bitmaps) {
  for (size_t i = 0; i < stats.size(); ++i) {
    if (!(pieces.peers >> i & 1) || stats[i].state != engine::PeerState::kClosed) continue;
    for (uint64_t b = 0; b + 1 < pieces.first.size(); ++b) {
      if (pieces.Has(b)) bitmaps.of_peer[i]->Clear(b);
    }
    RETURN_IF_ERROR(bitmaps.of_peer[i]->Sync());
  }
  return Status::Ok();
}

// The summary: one line (and one per lost replica) on stdout, or --json, or into plan.result.
void Report(const ReplicationPlan& plan, const PushSettings& s, const PushReport& report,
            const std::vector<engine::PeerStats>& stats, const ReplicaBitmaps& bitmaps,
            const std::string& unavailable) {
  const PushArgs& args = plan.args;
  uint64_t retransmits = 0, crc_mismatches = 0, bytes_sent = 0, zero_bytes = 0, wire_bytes = 0;
  nlohmann::json peers_json = nlohmann::json::array();
  std::string transport_used;
  for (size_t i = 0; i < stats.size(); ++i) {
    const auto& p = stats[i];
    retransmits += p.retransmits;
    crc_mismatches += p.crc_mismatches;
    bytes_sent += p.bytes_sent;
    zero_bytes += p.zero_bytes;
    wire_bytes += p.wire_bytes;
    transport_used = transport_used.empty() || transport_used == p.transport ? p.transport : "mixed";
    std::string why = !p.fallback_reason.empty() ? p.fallback_reason : unavailable;
    nlohmann::json peer = {
        {"peer", p.peer},
        {"transport", p.transport},
        {"fallback_reason", why.empty() ? nlohmann::json(nullptr) : nlohmann::json(why)},
        {"state", StateName(p, bitmaps.of_peer[i])},
        {"replica_id", engine::IdHex(p.replica_id)},
        {"blocks_sent", p.blocks_sent},
        {"bytes_sent", p.bytes_sent},
        {"zero_bytes", p.zero_bytes},
        {"wire_bytes", p.wire_bytes},
        {"blocks_acked", p.blocks_acked},
        {"bytes_acked", p.bytes_acked},
        {"blocks_dirty", bitmaps.of_peer[i]->CountSet()},
        {"retransmits", p.retransmits},
        {"crc_mismatches", p.crc_mismatches},
        {"blocks_behind", p.blocks_behind}};
    if (!p.lost_reason.empty()) peer["lost_reason"] = p.lost_reason;
    peers_json.push_back(peer);
  }
  double rate = report.seconds > 0 ? static_cast<double>(report.bytes) / report.seconds : 0;
  double p50 = static_cast<double>(report.latency.Quantile(0.50)) / 1e3;
  double p99 = static_cast<double>(report.latency.Quantile(0.99)) / 1e3;
  if (args.json || plan.result != nullptr) {
    // Every non-empty bucket as [upper edge in us, count], for a CDF (bench/report draws one).
    nlohmann::json histogram = nlohmann::json::array();
    report.latency.ForEachBucket([&](uint64_t edge_ns, uint64_t n) {
      histogram.push_back({static_cast<double>(edge_ns) / 1e3, n});
    });
    nlohmann::json out = {{"bytes", report.bytes},
                          {"blocks", report.blocks},
                          {"bytes_sent", bytes_sent},
                          {"zero_bytes", zero_bytes},
                          {"wire_bytes", wire_bytes},
                          {"compress", s.compress.ToString()},
                          {"compress_mode", engine::CompressModeName(s.compress.mode)},
                          {"blocks_skipped", report.blocks_skipped},
                          {"resumed", bitmaps.resumed},
                          {"seconds", report.seconds},
                          {"bytes_per_second", rate},
                          {"transport", transport_used},
                          {"ack", args.ack},
                          {"block_size", s.block_size},
                          {"window", args.window},
                          {"quorum", args.quorum == 0 ? stats.size() : args.quorum},
                          {"peers", peers_json},
                          {"retransmits", retransmits},
                          {"crc_mismatches", crc_mismatches},
                          {"ack_latency_us", {{"p50", p50}, {"p99", p99}, {"histogram", histogram}}},
                          {"waits_ms",
                           {{"acks", static_cast<double>(report.wait_acks_ns) / 1e6},
                            {"source", static_cast<double>(report.wait_reads_ns) / 1e6}}}};
    if (plan.result != nullptr) {
      *plan.result = std::move(out);
    } else {
      std::printf("%s\n", out.dump().c_str());
    }
    return;
  }
  std::printf("%s %s in %.2f s (%s) to %zu peer(s) over %s, ack %s; %llu blocks skipped; ack "
              "latency p50 %.1f us, p99 %.1f us; %llu retransmits, %llu CRC mismatches\n",
              plan.command == "push" ? "pushed" : "repaired",
              FormatBytes(static_cast<double>(report.bytes)).c_str(), report.seconds,
              FormatRate(rate).c_str(), stats.size(), transport_used.c_str(), args.ack.c_str(),
              static_cast<unsigned long long>(report.blocks_skipped), p50, p99,
              static_cast<unsigned long long>(retransmits),
              static_cast<unsigned long long>(crc_mismatches));
  for (size_t i = 0; i < stats.size(); ++i) {
    if (stats[i].state == engine::PeerState::kLost) {
      std::printf("  %s: lost (%s); %llu blocks left dirty for the next push\n",
                  stats[i].peer.c_str(), stats[i].lost_reason.c_str(),
                  static_cast<unsigned long long>(bitmaps.of_peer[i]->CountSet()));
    }
  }
}

}  // namespace

int RunReplication(const ReplicationPlan& plan) {
  const PushArgs& args = plan.args;
  const std::string& cmd = plan.command;
  auto fail = [&cmd](const Status& s, int code = kExitFailed) {
    PrintError(cmd, s);
    return code;
  };
  auto settings = CheckArgs(args);
  if (!settings.ok()) return fail(settings.status(), kExitUsage);
  const PushSettings& s = *settings;
  const uint32_t bs = s.block_size;
  if (s.hold_at) {
    spdlog::warn("TEST HOLD ACTIVE: the push stops after {} bytes submitted until SIGUSR1 (never "
                 "use this in production)",
                 *s.hold_at);
  }
  auto source_record = RecordSource(args, bs);
  if (!source_record.ok()) return fail(source_record.status());

  // Buffers: every write the Replicator may have in flight (a window per peer that may be
  // behind, besides the quorum's), its own (compressed payloads), and reads ahead of them.
  engine::ReplicatorOptions options;
  options.ack = s.ack;
  options.block_size = bs;
  options.window = args.window;
  options.volume_id = source_record->volume_id;
  options.quorum = args.quorum;
  options.peer_timeout = s.peer_timeout;
  options.ack_timeout = s.ack_timeout;
  options.key = s.key;
  options.compress = s.compress;
  const size_t peer_count = s.endpoints.size();
  const uint32_t readahead = std::max<uint32_t>(4, args.window);
  const uint32_t buffers = engine::Replicator::WriteSlots(options, peer_count) +
                           engine::Replicator::OwnBuffers(options, peer_count) + readahead;
  auto loop = MakeLoop(bs, buffers, std::max<unsigned>(256, 4 * buffers));
  if (!loop.ok()) return fail(loop.status());
  io::UringOpenOptions open_options;
  open_options.queue_depth = static_cast<uint32_t>(loop->pool->count());
  auto source = io::OpenUringDevice(*loop->ring, args.source, open_options);
  if (!source.ok()) return fail(source.status());
  if (!args.test_source_fault.empty()) {
    auto spec = io::DiskFaultSpec::Parse(args.test_source_fault);
    if (!spec.ok()) return fail(spec.status(), kExitUsage);
    spdlog::warn("TEST SOURCE FAULT INJECTION ACTIVE: {} (never use this in production)",
                 args.test_source_fault);
    *source = std::make_unique<io::FaultyBlockDevice>(std::move(*source), *spec);
  }
  options.volume_size = (*source)->size();

  transport::TransportOptions transport_options;
  transport_options.tcp_zerocopy = args.tcp_zerocopy;
  transport_options.source_address = args.bind;
  ApplyDpdkArgs(args.dpdk, transport_options);
  ApplyTlsArgs(args.tls, s.key, transport_options);
  auto transports = MakeTransports(*loop, args.transport, args.test_fault, transport_options);
  if (!transports.ok()) {
    return fail(transports.status(), transports.status().code() == ErrorCode::kInvalidArgument
                                         ? kExitUsage
                                         : kExitFailed);
  }

  std::vector<std::optional<Comparison>> comparisons(peer_count);
  if (args.checksum_skip) {
    comparisons =
        CompareChecksums(*loop, **source, *transports, s, source_record->volume_id);
  }
  // Pieces smaller than a block go as extents (protocol 2).
  const bool pieces_wanted =
      s.piece_size < bs && std::any_of(comparisons.begin(), comparisons.end(),
                                       [](const auto& c) { return c.has_value(); });
  options.extents = pieces_wanted;
  ReplicaBitmaps bitmaps;  // before the Replicator, which marks them as it goes: they outlive it
  auto rep = engine::Replicator::Create(*loop->ring, *loop->pool, options);
  if (!rep.ok()) return fail(rep.status());
  std::vector<engine::PeerConfig> peers;
  for (const auto& ep : s.endpoints) {
    peers.push_back({transports->preferred.get(), ep, transports->fallback.get()});
  }
  Status connected = (*rep)->Connect(peers);
  if (!connected.ok()) return fail(connected);
  auto prepared = PrepareBitmaps(plan, *source_record, bs, comparisons, (*rep)->stats());
  if (!prepared.ok()) return fail(prepared.status());
  bitmaps = std::move(prepared).value();
  for (size_t i = 0; i < bitmaps.of_peer.size(); ++i) {
    if (bitmaps.kept >> i & 1) (*rep)->AttachBitmap(i, bitmaps.of_peer[i]);
  }
  const uint64_t blocks = bitmaps.of_peer[0]->blocks();
  Pieces pieces;
  if (pieces_wanted) {
    pieces = PiecesFor(comparisons, (*rep)->stats(), blocks, bs, s.piece_size, (*source)->size());
  }

  // What this run sends to whom: each live replica's dirty blocks.
  engine::SendPlan send_plan(blocks, bitmaps.of_peer.size());
  const engine::PeerMask live = (*rep)->live_peers();
  for (size_t i = 0; i < bitmaps.of_peer.size(); ++i) {
    if (live >> i & 1) send_plan.AddDirty(i, *bitmaps.of_peer[i]);
  }
  PushReport report;
  report.blocks_skipped = send_plan.blocks() - send_plan.CountAny(live);
  bool show = args.progress == 1 || (args.progress == -1 && isatty(STDERR_FILENO));
  const uint64_t to_send = BytesToSend(send_plan, live, pieces, bs, (*source)->size());
  Progress progress(cmd, to_send, show);
  PushLoop push(*loop->ring, *loop->pool, **source, **rep, bs, send_plan, pieces, progress);
  if (s.hold_at) {
    struct sigaction sa {};
    sa.sa_handler = OnReleaseHold;
    sigaction(SIGUSR1, &sa, nullptr);
    push.HoldAt(*s.hold_at);
  }
  struct sigaction on_interrupt {};
  on_interrupt.sa_handler = OnInterrupt;
  sigaction(SIGINT, &on_interrupt, nullptr);
  sigaction(SIGTERM, &on_interrupt, nullptr);
  Status result = push.Run(report);
  progress.Finish();
  push.Drain();
  Status closed = (*rep)->Close();
  if (result.ok()) result = closed;
  const auto stats = (*rep)->stats();
  if (!result.ok()) return fail(result);
  if (report.interrupted != 0) {
    // Pieces are not settled: a block sent in part stays dirty, and goes whole next time.
    uint64_t left = 0;
    for (const auto& bitmap : bitmaps.of_peer) left = std::max(left, bitmap->CountSet());
    PrintError(cmd, Status::Error(ErrorCode::kClosed,
                                  fmt::format("interrupted by SIG{} after {} of {}; {} blocks are "
                                              "not yet on every replica: the same command resumes",
                                              sigabbrev_np(report.interrupted),
                                              FormatBytes(static_cast<double>(report.bytes)),
                                              FormatBytes(static_cast<double>(to_send)), left)));
    return 128 + report.interrupted;
  }
  if (pieces_wanted) {
    Status settled = SettlePieces(pieces, stats, bitmaps);
    if (!settled.ok()) return fail(settled);
  }
  Report(plan, s, report, stats, bitmaps, transports->unavailable);
  return kExitOk;
}

int RunPush(const PushArgs& args) { return RunReplication(ReplicationPlan{args, "push", {}}); }

}  // namespace blkmirror::cli
