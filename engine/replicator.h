// Replicator: the primary side of blkmirror. The CLI's `push` and a storage daemon both use it.
//
// Submit a write (an offset and a pool buffer holding the block); the Replicator computes the
// block's CRC32C once, sends the block from that same buffer to the peers, and reports the write
// complete when enough peers (the quorum) reached the ack level asked for:
//   sent      the frame was handed to the peer's transport (kernel socket, NIC)
//   received  the replica verified the CRC and holds the block in memory
//   durable   the block is on the replica's disk
// Acks are pipelined: up to `window` writes are in flight per peer, and completions follow the
// ack stream, not the submission order. A block the replica rejects (NACK: CRC mismatch) is sent
// again from the same buffer, up to `max_retries` times; after that the write fails, naming the
// block's offset and the replica.
//
// Buffer ownership: Submit takes the BufferRef. The buffer goes back to its pool when every
// peer is done with it (for `sent` that is later than the completion: a NACK may still need it).
//
// Failure model (docs/failure-model.md):
//   - Every connection carries heartbeats; a peer silent for `peer_timeout`, or whose
//     connection breaks or who sends an Error, is lost (logged with the reason). So is a peer
//     that is alive but makes no progress: writes outstanding and none of them acknowledged for
//     `ack_timeout` (DRBD's ko-count x timeout).
//   - A slow peer cannot hold the others back while the quorum does without it: a peer whose
//     window is full is "behind"; a write that the quorum can reach without it is not sent to it
//     (WriteCompletion::skipped says so; its bit stays set in its bitmap), and the caller sends
//     it that block later. Hence more write slots than one window (WriteSlots).
//   - With `quorum` K (default: every peer), a write completes once K of the peers it was sent
//     to reached the ack level. Losing a peer leaves the others going while at least K remain
//     (the lost peer's blocks stay dirty in its bitmap, for the next resync); below K the
//     Replicator fails: in-flight writes complete with that error and Submit refuses new ones.
//   - With a DirtyBitmap attached to a peer, the bit of every block is set durably before the
//     block is sent to it, and cleared when the peer acks it durable (at lower ack levels: at
//     the ack of a Flush sent after the block's ack and before any newer write of it, the
//     Replicator's own every flush_interval or the caller's; or when the session ends cleanly
//     and the replica flushes and acks everything durable).
//
// Thread safety: none; the Replicator, its ring, pool and transports belong to one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/histogram.h"
#include "common/status.h"
#include "engine/auth.h"
#include "engine/compress.h"
#include "engine/dirty_bitmap.h"
#include "engine/generations.h"
#include "engine/hot_blocks.h"
#include "io/buffer_pool.h"
#include "io/ring.h"
#include "proto/frame.h"
#include "transport/transport.h"

namespace blkmirror::engine {

struct PeerConfig {
  transport::Transport* transport = nullptr;
  transport::Endpoint endpoint;
  // Tried when `transport` cannot connect to the peer (--transport auto: RDMA, then TCP). The
  // reason the first one failed is reported in PeerStats::fallback_reason and logged.
  transport::Transport* fallback = nullptr;
};

struct ReplicatorOptions {
  proto::AckLevel ack = proto::AckLevel::kDurable;
  // The replication unit: the dirty bitmap's granularity, and the largest write.
  uint32_t block_size = 1u << 20;
  // Writes are extents (any sector-aligned range of at most a block), and zero ranges and
  // flushes exist: protocol 2, which a volume that clients write through needs. Without it
  // every write is one whole block (push).
  bool extents = false;
  // A block of zeros goes as a zero range (a Zero frame with kZeroUnmap, no payload: the replica
  // punches a hole where its target can, else zeroes the range) to replicas of protocol 2 or
  // later; as Data to older ones.
  bool zero_blocks = true;
  // Data payloads compressed (lz4 or zstd) to replicas that decompress (HelloOk), on every
  // transport, each block once into a pool buffer of its write slot (OwnBuffers), kept only when
  // it saves (engine/compress.h); the CRC stays the data's.
  CompressSpec compress;
  // Buffers go back to the caller (TakeBuffers) instead of the pool once the Replicator is done
  // with them: for a caller that still uses them after the write completed (a volume's local
  // write of the same buffer).
  bool return_buffers = false;
  // Losing the quorum (fewer peers in session than it needs) is not the end: the writes that
  // cannot reach theirs fail, Submit refuses new ones (kUnavailable: no peer, or kBusy), and
  // lost peers may Rejoin. Without it (push) the Replicator fails for good.
  bool survive_quorum_loss = false;
  // With survive_quorum_loss, writes in flight to a peer that is lost fail when fewer than
  // `min_live` peers are left in session; else they complete with the peers they reach (none, at
  // 0: a volume at --quorum 0 then has only its own copy, and the lost peers' bits stay set).
  uint32_t min_live = 0;
  // Bytes of blocks whose dirty bits stay set after their durable ack, per peer (HotBlocks): a
  // rewrite of a hot block needs no bitmap sync; a crash of the primary resends what is hot.
  // 0: bits clear at the durable ack (push: every block is written once, and a push killed
  // midway resumes from exactly what was not acked).
  uint64_t hot_bytes = 0;
  // Below ack level durable, a peer (of protocol 2 or later, with a dirty bitmap) whose acked
  // writes no Flush has covered yet gets one of the Replicator's own this often; its ack clears
  // the bits of the blocks acked before it was sent and not written since. It bounds what the
  // loss of the peer, or of the primary, leaves dirty beyond the writes in flight. Any Flush the
  // caller submits does the same. 0: only at the session's end (the replica's final flush).
  std::chrono::microseconds flush_interval{std::chrono::seconds(1)};
  // A volume's sessions (protocol 3): this primary's data generations, sent to every replica
  // after its HelloOk and before any data (the replica answers with its own, refusing a primary
  // that is behind it or diverged: ErrorCode::kDiverged). The caller owns it and may change it
  // between calls (a new generation), then SendGeneration. Null: push (protocol 1..2).
  const Generations* generations = nullptr;
  uint32_t window = 32;
  uint64_t volume_size = 0;
  proto::VolumeId volume_id;
  uint32_t max_retries = 5;
  uint32_t quorum = 0;  // peers a write needs; 0: all of them
  std::chrono::milliseconds peer_timeout{6000};
  // A peer with writes outstanding that acknowledges none of them for this long is lost
  // (0: peer_timeout).
  std::chrono::milliseconds ack_timeout{0};
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds handshake_timeout{10000};
  std::optional<Key> key;  // authenticate every peer (mutual HMAC challenge-response)
  // Test hook: the protocol versions offered in Hello.
  uint16_t min_version = proto::kMinProtocolVersion;
  uint16_t max_version = proto::kMaxProtocolVersion;
};

struct WriteCompletion {
  uint64_t token = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t latency_ns = 0;  // Submit to completion at the ack level
  Status status;
  // Peers the write was meant for (live, in its mask) but not sent to, because they were
  // behind (their window full) while the quorum could do without them. Their bits stay set in
  // their bitmaps; the caller sends them the block again later.
  uint64_t skipped = 0;
  // Peers that reached the ack level. Fewer than the quorum only when peers it was sent to
  // were lost before they got there (the write still completes: the quorum of peers in session
  // is what Submit and the Replicator's failure enforce).
  uint32_t reached = 0;
};

enum class PeerState : uint8_t { kConnecting, kInSession, kClosed, kLost };

// What a write is: a copy of what the source already holds (push, resync), which concerns only
// the peers it goes to; or new data (a client's write through a volume), which every peer it
// does not go to (lost, closed, left out of the mask) misses: their dirty bits are set too.
enum class WriteOrigin : uint8_t { kCopy, kNewData };

// A buffer the Replicator is done with (ReplicatorOptions::return_buffers).
struct ReturnedBuffer {
  uint64_t token = 0;
  io::BufferRef buffer;
};

struct PeerStats {
  std::string peer;
  std::string transport;        // the transport in use
  std::string fallback_reason;  // why the preferred transport was not used ("" if it was)
  proto::ReplicaId replica_id;  // from HelloOk
  PeerState state = PeerState::kConnecting;
  std::string lost_reason;
  ErrorCode lost_code = ErrorCode::kOk;  // what lost_reason's status was
  uint64_t blocks_sent = 0;  // Data and Zero frames sent, resends included
  uint64_t bytes_sent = 0;   // of Data payloads
  uint64_t zero_bytes = 0;   // sent as zero ranges (Zero frames: no payload)
  uint64_t wire_bytes = 0;   // payload bytes on the wire (compressed where they were)
  uint64_t blocks_acked = 0;
  uint64_t bytes_acked = 0;
  uint64_t retransmits = 0;
  uint64_t crc_mismatches = 0;
  uint64_t blocks_behind = 0;  // writes not sent to it while it was behind (sent later)
  uint64_t flushes_sent = 0;   // Flush frames: the caller's and the Replicator's own
  uint64_t bytes_in_flight = 0;  // of blocks sent in this session and not yet acked
  // Each write, from its first send to the replica's ack at the wire level (received or durable).
  LatencyHistogram ack_latency;
};

// Which peers (by index in the Connect list) a write goes to. At most 64 peers.
using PeerMask = uint64_t;
inline constexpr PeerMask kAllPeers = ~PeerMask{0};
inline constexpr size_t kMaxPeers = 64;

class Replicator {
 public:
  // `pool` is where the caller's blocks come from; it must outlive the Replicator, which holds
  // buffers of it (OwnBuffers) until it is destroyed.
  static Result<std::unique_ptr<Replicator>> Create(io::Ring& ring, io::BufferPool& pool,
                                                    const ReplicatorOptions& options);

  // Writes in flight at most, for `peers` peers: one window for the quorum, plus one for each
  // peer that may be behind (peers - quorum). A caller sizes its buffer pool from this.
  static uint32_t WriteSlots(const ReplicatorOptions& options, size_t peers);
  // Buffers of the pool the Replicator holds for itself from StartConnect on: with --compress,
  // one per write slot for its compressed payload. A caller adds them to its pool's size.
  static uint32_t OwnBuffers(const ReplicatorOptions& options, size_t peers);
  ~Replicator();

  // Connects to every peer and completes the handshakes (setup: blocks, bounded by the
  // options' timeouts). Fails with the first peer's error.
  Status Connect(std::span<const PeerConfig> peers);
  // The same in steps, for a caller that runs the loop itself (a daemon, a single-threaded
  // test that also steps the replica): StartConnect connects the transports and sends the
  // Hellos; Poll completes the handshakes; ready() says when every peer is in session.
  Status StartConnect(std::span<const PeerConfig> peers);
  bool ready() const;

  // Attaches peer `index`'s dirty bitmap (kept by the caller, alive as long as the Replicator):
  // from now on every block sent to that peer is marked in it first. After Connect.
  void AttachBitmap(size_t index, DirtyBitmap* bitmap);
  // Of peer `index`'s set bits, those only hot: acked durable a moment ago and kept set so that
  // their next write needs no bitmap sync (engine/hot_blocks.h); the replica holds them.
  const HotBlocks& hot_blocks(size_t index) const;

  // With `generations`: the replica's generations, as it answered at its session's handshake.
  const Generations& peer_generations(size_t index) const;
  // With `generations`: posts them to peer `index` (in order with its data) with `flags`
  // (proto::kGenSyncStart, kGenInSync; kGenConsistent follows `generations`).
  Status SendGeneration(size_t index, uint16_t flags);
  // Blocks every peer must get again: new data written without any peer (none in session), or
  // blocks whose write reached the peers but failed on the primary's own disk. Marks them in
  // every peer's bitmap, durably, and forgets them as acked in the current sessions (a clean
  // close does not clear them). Call while no write of them is in flight.
  Status MarkMissed(uint64_t offset, uint64_t length);
  // Ends peer `index`'s session (it is lost with `reason`): the caller will not replicate to it.
  void Reject(size_t index, Status reason);

  // Peers still in session (neither lost nor closed), as a mask.
  PeerMask live_peers() const;
  // Peers a write needs (the quorum; every peer when it was 0).
  uint32_t quorum() const;

  // True when Submit(…, peers) would be accepted now, for a block that has no write in flight
  // (see BlockInFlight): a free write slot, and enough of the live peers in `peers` with window
  // space to make the quorum (min(quorum, live peers in `peers`)).
  bool CanSubmit(PeerMask peers = kAllPeers) const;
  // Live peers whose window is full now: a write submitted now is not sent to them (it is
  // skipped, WriteCompletion::skipped) as long as the quorum does without them.
  PeerMask Behind() const;
  // True while a write touching a block of [offset, offset + length) is in flight (Submit and
  // SubmitZero refuse another one until then). BlockInFlight: the block at `offset`.
  bool RangeInFlight(uint64_t offset, uint64_t length) const;
  bool BlockInFlight(uint64_t offset) const { return RangeInFlight(offset, 1); }

  // Replicates buffer[0, length) to [offset, offset + length) of the volume, on the live peers
  // in `peers`. Without `extents`, `offset` is block-aligned and `length` the block's size
  // (shorter only for the volume's last block); with them, any sector-aligned extent of at most a
  // block. One write of a block at a time: while an earlier write touching one of its blocks is
  // in flight, Submit fails with kBusy (retry once it completed and every peer is done with
  // it), so writes of a block reach every replica in order.
  Status Submit(uint64_t offset, io::BufferRef buffer, uint32_t length, uint64_t token,
                PeerMask peers = kAllPeers, WriteOrigin origin = WriteOrigin::kCopy);
  // With `extents`: [offset, offset + length) (sector-aligned, any length) reads as zeros on
  // the replicas (`unmap`: they may deallocate it). The same window, quorum and one-write-per-
  // block rules as Submit; no buffer.
  Status SubmitZero(uint64_t offset, uint64_t length, bool unmap, uint64_t token,
                    PeerMask peers = kAllPeers, WriteOrigin origin = WriteOrigin::kCopy);
  // With `extents`: completes once every write submitted before it is durable on the quorum
  // (for ack levels below durable; at durable every completed write already is), at `sent`
  // too: at the replicas' acks.
  Status SubmitFlush(uint64_t token, PeerMask peers = kAllPeers);

  // Processes what the transports report (acks, heartbeats, timeouts); moves finished writes
  // into `out`. Never blocks (except to persist bitmap clears, at most twice a second).
  size_t Poll(std::span<WriteCompletion> out);
  // With return_buffers: moves buffers the Replicator is done with into `out`.
  size_t TakeBuffers(std::span<ReturnedBuffer> out);

  // Connects a lost (or closed) peer again and starts a new session with it (blocks up to
  // `connect_timeout` per transport tried); Poll completes the handshake, or loses the peer once
  // the handshake timeout has passed. Its dirty bitmap stays attached; check its replica_id
  // (stats) once it is in session: another identity means the bitmap is not valid for it.
  Status Rejoin(size_t index, std::chrono::milliseconds connect_timeout);

  // Writes submitted and not yet reported complete.
  uint32_t in_flight() const;
  // OK, or why the Replicator stopped.
  const Status& failure() const;

  // Ends every session cleanly (Bye) once nothing is in flight. Blocks, bounded.
  Status Close();
  // The same in steps: StartClose sends the Byes (call it once idle()); each replica closes
  // its end after settling what it received; Poll sees the closes; closed() says when every
  // connection is gone.
  void StartClose();
  bool closed() const;
  // Nothing in flight, and no buffer still held for a peer (at ack level `sent` a buffer stays
  // held until the replica has received its block).
  bool idle() const;

  std::vector<PeerStats> stats() const;
  // One peer's, without copying them all.
  const PeerStats& peer_stats(size_t index) const;

 private:
  class Impl;
  explicit Replicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace blkmirror::engine
