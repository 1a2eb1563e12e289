// Volume: the primary of a replicated volume that clients write through (`blkmirror volume`).
//
// Client requests come from a Frontend (NBD): every write goes to the local disk (io_uring, from
// the pool buffer the client's payload was received into) and, in parallel, from that same
// buffer to the replicas through the Replicator; the client's reply goes out once the local write
// is done and the ack level is reached on the quorum. FLUSH completes once every write completed
// before it is durable locally and on the quorum, whatever the ack level; FUA the same for one
// write. Reads are served from the local disk. TRIM and WRITE_ZEROES are replicated as zero
// ranges (no payload on the wire).
//
// Ordering: operations that touch a common block (the replication block) run one at a time, in
// the order they arrived (client writes, zero ranges and background resync copies alike), so an
// overlap reaches the local disk and every replica in the same order, and a resync copy never
// overwrites a newer client write on a replica (it is read after the writes before it completed
// and replicated before the writes after it). Reads are not held back.
//
// Generations: a peer back in session is compared with this node's history: one behind gets
// what it lacks (from the bitmap when it was last in sync at the generation it reports, in full
// otherwise), one ahead of this node or diverged is refused (kDiverged). A new generation starts
// before the first write made while a peer is not in sync.
//
// Degraded mode: a lost peer does not stop writes while the quorum holds; every write it misses
// sets its dirty bits first (write intent). Lost peers are reconnected with a backoff; a peer
// back in session gets, in the background and rate-limited, every block its bitmap has dirty,
// while client writes go on. Below the quorum, writes fail with EIO (reads go on) until enough
// peers are back.
//
// Thread safety: none; the volume, its ring, pool, disk, frontend and transports belong to one
// thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/histogram.h"
#include "common/status.h"
#include "engine/dirty_bitmap.h"
#include "engine/generations.h"
#include "engine/replicator.h"
#include "frontend/frontend.h"
#include "io/block_device.h"
#include "io/buffer_pool.h"
#include "io/ring.h"

namespace blkmirror::engine {

struct VolumeOptions {
  // The replication: ack level, block size (the ordering and bitmap granularity, and the largest
  // write sent as one frame), window, quorum, timeouts, key, volume id and size. The volume sets
  // `extents`, `return_buffers` and `survive_quorum_loss` itself.
  ReplicatorOptions replication;
  std::vector<PeerConfig> peers;
  // Replicas a write needs (at most the peers; more means all). 0: none: with no replica in
  // session, writes go on on the local disk alone, marked for every replica (a primary left
  // alone, as after a failover; DRBD's disconnected primary). replication.quorum is set from it.
  uint32_t quorum = UINT32_MAX;
  // Opens (or creates, every bit set) peer `peer`'s dirty bitmap for replica identity `id`;
  // `existed` says whether it was kept before (so it knows what the replica lacks).
  std::function<Result<std::unique_ptr<DirtyBitmap>>(size_t peer, const proto::ReplicaId& id,
                                                     bool* existed)>
      bitmap_for;
  // The identity each peer had when last in session (all-zero: never seen), so that writes it
  // misses while unreachable from the start are kept in the right bitmap; and the place to
  // record a new one.
  std::vector<proto::ReplicaId> last_replica_ids;
  std::function<void(size_t peer, const proto::ReplicaId& id)> remember_replica_id;
  // This node's data generations (engine/generations.h): none yet (current 0) starts the first.
  // A new one starts before the first write while a peer is not in sync; `save_generations`
  // makes each change durable before anything depends on it.
  Generations generations;
  std::function<Status(const Generations&)> save_generations;
  // The generation each peer was last in sync at (0: never): its bitmap counts every write since
  // then, so a peer back at that generation is resynced from the bitmap; any other is copied in
  // full. `remember_synced_at` records a new one.
  std::vector<uint64_t> peer_synced_at;
  std::function<void(size_t peer, uint64_t generation)> remember_synced_at;
  uint64_t resync_rate = 0;  // bytes per second of background resync; 0: no limit
  std::chrono::milliseconds reconnect_min{500};
  std::chrono::milliseconds reconnect_max{30000};
  // Connect timeout of a reconnect attempt: it blocks the loop (client requests wait) up to
  // this long per transport tried, when the peer's address does not answer at all.
  std::chrono::milliseconds reconnect_timeout{500};
};

enum class VolumePeerState : uint8_t {
  kConnecting,  // first connect, or a reconnect attempt in progress
  kInSync,      // in session, nothing dirty
  kResyncing,   // in session, dirty blocks being sent in the background
  kLost,        // out of session; reconnected with a backoff
  kDiverged,    // refused by its generations (split brain, ahead of this node, unrelated data):
                // nothing is synced; retried with a backoff (resolved on either node)
};
std::string_view VolumePeerStateName(VolumePeerState state);

struct VolumePeerStatus {
  std::string peer;
  std::string transport;
  std::string fallback_reason;
  VolumePeerState state = VolumePeerState::kConnecting;
  std::string lost_reason;
  std::string replica_id;  // hex
  std::string generation;  // its current generation, as it said at its handshake (hex)
  uint64_t dirty_bytes = 0;
  uint64_t resync_total_bytes = 0;  // of the current resync
  uint64_t resync_done_bytes = 0;
  double resync_bytes_per_second = 0;
  uint64_t reconnects = 0;
  uint64_t blocks_acked = 0;
  uint64_t bytes_acked = 0;
  uint64_t blocks_sent = 0;  // Data and Zero frames, resends included
  uint64_t bytes_sent = 0;  // of Data payloads, resends included
  uint64_t zero_bytes = 0;  // sent as zero ranges (no payload)
  uint64_t wire_bytes = 0;  // payload bytes on the wire (compressed where they were)
  uint64_t retransmits = 0;
  uint64_t crc_mismatches = 0;  // blocks it reported arriving with a bad CRC (sent again)
  uint64_t bytes_in_flight = 0;  // sent and not yet acked
  LatencyHistogram ack_latency;  // each write, from its first send to the replica's ack
};

struct VolumeStatus {
  std::string generation;  // this node's current (hex)
  std::vector<std::string> history;
  uint64_t size = 0;
  uint32_t block_size = 0;
  std::string ack;
  uint32_t quorum = 0;
  uint64_t resync_rate = 0;  // bytes per second; 0: no limit
  uint32_t live_peers = 0;
  size_t clients = 0;
  uint64_t writes = 0, reads = 0, flushes = 0, zeroes = 0, failed = 0;
  uint64_t bytes_written = 0, bytes_read = 0;
  uint32_t in_flight = 0;  // writes at the replicas, not yet acknowledged at the ack level
  // Client writes, from the request to the reply (the local write and the ack level on the
  // quorum): what a client waits.
  LatencyHistogram write_latency;
  std::vector<VolumePeerStatus> peers;
};

class Volume {
 public:
  // `disk` is the local copy (what reads return, what writes land on first); it, the pool, the
  // frontend and the transports must outlive the volume. The pool's buffers hold a block.
  static Result<std::unique_ptr<Volume>> Create(io::Ring& ring, io::BufferPool& pool,
                                                io::BlockDevice& disk,
                                                frontend::Frontend& frontend,
                                                VolumeOptions options);
  ~Volume();

  // Connects every peer (blocks up to the connect timeout) and sends the handshakes; Step
  // completes them (bounded by the handshake timeout), then opens the peers' bitmaps and plans
  // their resyncs: ready(), or failure() when fewer than the quorum answered.
  Status Start();
  bool ready() const;
  const Status& failure() const;

  // Makes all the progress possible without blocking (a reconnect attempt aside: up to
  // reconnect_timeout); returns how many events it handled. Client requests are taken once
  // ready().
  size_t Step();

  // Stops taking requests, finishes those in flight, ends the replica sessions cleanly and syncs
  // the bitmaps: StartShutdown, then Step until closed() (bounded: 30 s per stage); Shutdown
  // does both, blocking.
  void StartShutdown();
  bool closed() const;
  void Shutdown();

  VolumeStatus status() const;
  // Changes the background resync's limit (bytes per second; 0: none) from the next Step on.
  void SetResyncRate(uint64_t bytes_per_second);

 private:
  class Impl;
  explicit Volume(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace blkmirror::engine
