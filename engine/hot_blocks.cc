#include "engine/hot_blocks.h"

#include <algorithm>

namespace blkmirror::engine {

HotBlocks::HotBlocks(uint64_t blocks, uint64_t capacity)
    : hot_((blocks + 63) / 64, 0), fifo_(std::max<uint64_t>(capacity, 1)) {}

void HotBlocks::Settled(uint64_t block, DirtyBitmap& bitmap) {
  if (hot(block)) return;
  if (used_ == fifo_.size()) PopOldest(&bitmap);
  hot_[block / 64] |= uint64_t{1} << (block % 64);
  fifo_[(head_ + used_) % fifo_.size()] = block;
  ++used_;
  ++count_;
}

void HotBlocks::Touched(uint64_t block) {
  if (!hot(block)) return;
  hot_[block / 64] &= ~(uint64_t{1} << (block % 64));
  --count_;
}

// The oldest entry leaves; if its block is still hot (neither touched since nor settled again
// after a touch: either way its bit may go), `bitmap` clears it.
void HotBlocks::PopOldest(DirtyBitmap* bitmap) {
  const uint64_t b = fifo_[head_];
  head_ = (head_ + 1) % fifo_.size();
  --used_;
  if (!hot(b)) return;
  Touched(b);
  if (bitmap != nullptr) bitmap->Clear(b);
}

void HotBlocks::Drain(DirtyBitmap& bitmap) {
  while (used_ > 0) PopOldest(&bitmap);
}

void HotBlocks::Reset() {
  while (used_ > 0) PopOldest(nullptr);
}

}  // namespace blkmirror::engine
