// Verifier: compares a source with a replica's copy, block by block, without moving the data.
//
// It opens a verify session, asks the replica for the CRC32C of every block of a range
// (VerifyReq, up to proto::kMaxVerifyBlocks blocks each, two outstanding), reads the same blocks
// of the source and computes their CRCs, and reports every range of blocks that differ.
// Verify sessions may run while a primary writes to the same replica (online verify).
//
// Thread safety: none.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "common/status.h"
#include "engine/auth.h"
#include "io/block_device.h"
#include "io/buffer_pool.h"
#include "io/ring.h"
#include "proto/frame.h"
#include "transport/transport.h"

namespace blkmirror::engine {

struct VerifyOptions {
  uint32_t block_size = 1u << 20;
  uint32_t read_depth = 8;  // source reads in flight
  proto::VolumeId volume_id;
  std::optional<Key> key;  // authenticate the replica (and to it)
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds reply_timeout{60000};
  // Called as blocks are compared (bytes compared so far).
  std::function<void(uint64_t)> progress;
};

struct DiffRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct VerifyReport {
  proto::ReplicaId replica_id;  // the copy that was compared
  uint64_t replica_bytes = 0;   // the size of that copy (its HelloOk's capacity)
  uint64_t blocks = 0;
  uint64_t bytes = 0;
  uint64_t differing_blocks = 0;
  std::vector<DiffRange> diffs;  // adjacent differing blocks merged
};

// Compares `source` (its whole size) with the copy behind `peer`. The pool's buffers must hold
// a block each and must be registered with `ring`, as the source device's ring. When
// `transport` cannot connect to the peer and `fallback` is given, the fallback is used (the
// reason is logged).
Result<VerifyReport> Verify(io::Ring& ring, io::BufferPool& pool, io::BlockDevice& source,
                            transport::Transport& transport, const transport::Endpoint& peer,
                            const VerifyOptions& options,
                            transport::Transport* fallback = nullptr);

}  // namespace blkmirror::engine
