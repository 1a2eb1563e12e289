// SendPlan: which blocks each peer still has to be sent in a replication run, in volume order.
//
// A run (push, verify --repair, a volume's background resync) fills it from the peers' dirty
// bitmaps or from a checksum comparison, takes blocks from it one at a time with the peers that
// need each, and puts back what a peer could not take (a write skipped while the peer was behind,
// Replicator's WriteCompletion::skipped). The cursor walks the volume from block 0 to the end;
// when blocks were put back behind it, it starts again from 0, pass after pass, until no live
// peer needs anything.
//
// It says what remains to be sent in this run, not what a replica may lack: that is the dirty
// bitmap's job (a block taken and sent stays dirty until the replica acks it durable).
//
// Thread safety: none.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/dirty_bitmap.h"
#include "engine/hot_blocks.h"

namespace blkmirror::engine {

class SendPlan {
 public:
  // Which peers (bit i: peer i, at most 64) need a block.
  using Peers = uint64_t;
  struct Item {
    uint64_t block = 0;
    Peers peers = 0;
  };

  SendPlan(uint64_t blocks, size_t peers);

  // `peer` needs `block` (again).
  void Add(size_t peer, uint64_t block);
  // `peer` needs nothing (it is planned again from its bitmap).
  void Forget(size_t peer);
  // `peer` needs every block set in `bitmap` (of the same volume geometry), but those `hot`
  // says it holds.
  void AddDirty(size_t peer, const DirtyBitmap& bitmap, const HotBlocks* hot = nullptr);

  // Takes the next block, from the cursor on in volume order, that some peer in `live` needs,
  // with those peers (no longer counted as needing it); wraps to block 0 when blocks remain
  // behind the cursor. nullopt when no peer in `live` needs anything.
  std::optional<Item> Next(Peers live);

  // Blocks `peer` still needs.
  uint64_t Count(size_t peer) const;
  // Blocks that some peer of `live` needs (each block once).
  uint64_t CountAny(Peers live) const;
  uint64_t blocks() const { return blocks_; }

 private:
  uint64_t Union(uint64_t word, Peers live) const;

  uint64_t blocks_;
  size_t words_;
  std::vector<std::vector<uint64_t>> need_;  // per peer, one bit per block
  uint64_t cursor_ = 0;
};

}  // namespace blkmirror::engine
