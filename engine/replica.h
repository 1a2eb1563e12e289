// ReplicaServer: the replica side of blkmirror (`blkmirror serve`).
//
// Accepts sessions from primaries on any number of transports and applies them to one target
// (a BlockDevice). For every Data frame it checks the header against the session (offset within
// the volume, block alignment, sequence window), verifies the CRC32C of the payload, and only
// then writes the block, from the very buffer it was received into. A block that fails its CRC
// is NACKed and never written. Acks follow the level the primary asked for:
//   received  sent as soon as the CRC checked out
//   durable   sent after the write, issued with RWF_DSYNC (O_DIRECT + FUA, or write + flush
//             of that range), completed
// Malformed or out-of-place frames end that session with an Error frame and a log line naming
// the peer; the server keeps serving the others.
//
// Generations (protocol 3, engine/generations.h): a volume's write session sends its
// Generation after HelloOk; the replica compares it with the target's, refuses what would
// overwrite newer or diverged data (ErrorCode::kDiverged, naming both and the way out), answers
// with its own, and is inconsistent from then until the primary says it is in sync (after every
// earlier write is durable, it takes the primary's generations).
//
// One writer per target: a second primary that opens a write session while one is active is
// refused. Verify sessions (per-block CRCs of a range) run alongside a writer.
//
// Thread safety: none; the server, its ring, pool, transports and target belong to one thread.
#pragma once

#include <cstdint>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "engine/auth.h"
#include "engine/generations.h"
#include "io/block_device.h"
#include "io/buffer_pool.h"
#include "io/ring.h"
#include "proto/frame.h"
#include "transport/transport.h"

namespace blkmirror::engine {

enum class TargetUse : uint8_t { kWrite, kVerify };

// Opens the target for a session. For kWrite, `volume_size` is what the primary announced: a
// regular file is created or extended to it, a block device must hold it. For kVerify the target
// must exist. The error is what the primary is told.
using TargetOpener =
    std::function<Result<std::unique_ptr<io::BlockDevice>>(uint64_t volume_size, TargetUse use)>;

// The target's data identity (proto::ReplicaId) for a session of `volume_id`, asked at the
// admission of every session, whether or not the target is already open: it changes whenever the
// contents may no longer be what earlier sessions left (a new target file; for kWrite, another
// volume than the one it was kept for), so a primary's dirty bitmap kept against the old identity
// is not trusted. For kVerify it never changes anything (an all-zero id: no identity yet).
using IdentityKeeper =
    std::function<Result<proto::ReplicaId>(const proto::VolumeId& volume_id, TargetUse use)>;

// The target's data generations for a volume, and whether this node is that volume's primary
// now (promoted: it takes no writes from another primary), kept durably by the caller.
struct TargetGenerations {
  bool primary = false;
  Generations generations;
};
struct GenerationStore {
  // What is kept for `volume_id` (nothing kept, or kept for another volume: no generation).
  std::function<Result<TargetGenerations>(const proto::VolumeId& volume_id)> load;
  // Durable before it returns.
  std::function<Status(const proto::VolumeId& volume_id, const Generations& generations)> save;
};

// The queue depth a replica's target device needs for a receive pool of `pool_buffers`: a write
// per buffer, and the disk operations that hold none (zero ranges, flushes).
uint32_t ReplicaDiskDepth(uint32_t pool_buffers);

struct ReplicaOptions {
  std::string target_name;  // for messages
  TargetOpener open_target;
  IdentityKeeper identity;  // empty: every session gets the all-zero identity (tests)
  // Empty: kept in memory (tests). A protocol-3 write session (a volume's) exchanges
  // generations before any data and is refused when the primary is behind this target, when
  // both wrote since they last agreed (split brain), or when this node is the primary; an older
  // write session (push, verify --repair) leaves the target with no generation, inconsistent.
  GenerationStore generations;
  bool once = false;        // finished() after the first write session ends
  // Primaries must prove they hold this key before anything else (mutual HMAC challenge).
  std::optional<Key> key;
  // A connection that has not completed its handshake (Hello and, with a key, the proof) this
  // long after connecting is closed, whatever else it sent meanwhile. Longer than a primary's
  // connect timeout: a primary connects to all its peers before it sends any Hello.
  std::chrono::milliseconds handshake_timeout{30000};
  // The longest a primary may stay silent before its session is closed: a primary that asks for
  // a longer --peer-timeout, or for none (0), gets this one.
  std::chrono::milliseconds max_peer_timeout{60000};
  // Connections open at once (sessions and connections still in their handshake): one more is
  // closed as soon as it is accepted, so a flood cannot exhaust the process's descriptors.
  uint32_t max_connections = 256;
  // Test hook: the highest protocol version spoken (an older replica's behaviour).
  uint16_t max_version = proto::kMaxProtocolVersion;
};

struct ReplicaStats {
  uint64_t sessions = 0;
  uint64_t auth_failures = 0;
  uint64_t blocks_written = 0;
  uint64_t bytes_written = 0;
  uint64_t crc_mismatches = 0;
  uint64_t protocol_errors = 0;
};

class ReplicaServer {
 public:
  // `pool` receives blocks: its buffers hold the largest block accepted plus
  // transport::kReceiveHeadroom.
  static Result<std::unique_ptr<ReplicaServer>> Create(io::Ring& ring, io::BufferPool& pool,
                                                       ReplicaOptions options);
  ~ReplicaServer();

  // Serves the connections `transport` accepts (listening is the caller's). Before Step.
  void AddTransport(transport::Transport* transport);

  // Makes all the progress possible without blocking; returns how many events it handled.
  size_t Step();

  // With `once`: the first write session has ended and everything it wrote is settled.
  bool finished() const;

  // Closes every session and waits (bounded) for the disk to settle.
  void Shutdown();

  const ReplicaStats& stats() const;
  // The primary with a write session open now, once it may write: a volume's primary only after
  // the generations agree ("" when none; a primary refused at that check never was the writer).
  std::string writer() const;

 private:
  class Impl;
  explicit ReplicaServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace blkmirror::engine
