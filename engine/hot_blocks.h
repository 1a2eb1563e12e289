// HotBlocks: which of a replica's dirty bits are only "hot" — set, though the replica acked the
// block durable — and when to clear them. DRBD's activity log, by block.
//
// A bit must be durable in the bitmap file before its block is sent (write intent: a pwrite and
// an fdatasync of the bitmap), and may be cleared once the replica acked the block durable.
// Clearing at once makes the next write of the same block pay for the write intent again: one
// fdatasync per client write under a random-write load. So a settled block's bit stays set, hot,
// until `capacity` more blocks have settled after it; then it is cleared (lazily durable, as
// every clear). A write of a hot block finds its bit set: no sync.
//
// A crash of the primary resends what is hot (at most `capacity` blocks) on top of what is
// dirty: the price, as DRBD's al-extents.
//
// Rules, per block:
//   Settled(b)   the replica acked a write that leaves it holding b: b is hot from now on (until
//                `capacity` later settles push it out: its bit is cleared then).
//   Touched(b)   a write of b is about to be sent (or skipped, or missed by this replica): b is
//                dirty for real until a write of it settles; it is not hot any more.
//   Drain()      the session ended with everything durable: clears every hot block now.
//
// Thread safety: none.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/dirty_bitmap.h"

namespace blkmirror::engine {

class HotBlocks {
 public:
  // `blocks` in the volume; at most `capacity` (> 0) of them hot at once.
  HotBlocks(uint64_t blocks, uint64_t capacity);

  bool hot(uint64_t block) const { return (hot_[block / 64] >> (block % 64)) & 1; }
  // Clears in `bitmap` the block it pushes out of the hot set, if any.
  void Settled(uint64_t block, DirtyBitmap& bitmap);
  void Touched(uint64_t block);
  void Drain(DirtyBitmap& bitmap);
  // Forgets every hot block without clearing them (another bitmap from now on).
  void Reset();
  uint64_t count() const { return count_; }
  uint64_t capacity() const { return fifo_.size(); }

 private:
  void PopOldest(DirtyBitmap* bitmap);

  std::vector<uint64_t> hot_;   // one bit per block
  std::vector<uint64_t> fifo_;  // settled blocks, oldest first (ring); stale when since touched
  uint64_t head_ = 0, used_ = 0;
  uint64_t count_ = 0;  // hot blocks
};

}  // namespace blkmirror::engine
