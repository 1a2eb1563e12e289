#include "engine/send_plan.h"

#include <algorithm>
#include <bit>
#include <cassert>

namespace blkmirror::engine {

SendPlan::SendPlan(uint64_t blocks, size_t peers)
    : blocks_(blocks), words_((blocks + 63) / 64), need_(peers, std::vector<uint64_t>(words_, 0)) {
  assert(peers <= 64);
}

void SendPlan::Add(size_t peer, uint64_t block) {
  assert(peer < need_.size() && block < blocks_);
  need_[peer][block / 64] |= uint64_t{1} << (block % 64);
}

void SendPlan::Forget(size_t peer) { std::fill(need_[peer].begin(), need_[peer].end(), 0); }

void SendPlan::AddDirty(size_t peer, const DirtyBitmap& bitmap, const HotBlocks* hot) {
  assert(bitmap.blocks() == blocks_);
  for (uint64_t b = 0; b < blocks_; ++b) {
    if (bitmap.Test(b) && (hot == nullptr || !hot->hot(b))) Add(peer, b);
  }
}

uint64_t SendPlan::Union(uint64_t word, Peers live) const {
  uint64_t u = 0;
  for (size_t p = 0; p < need_.size(); ++p) {
    if (live >> p & 1) u |= need_[p][word];
  }
  return u;
}

std::optional<SendPlan::Item> SendPlan::Next(Peers live) {
  // At most two passes: from the cursor to the end, then from 0 (what was put back behind it).
  for (int pass = 0; pass < 2; ++pass) {
    for (uint64_t w = cursor_ / 64; w < words_; ++w) {
      uint64_t bits = Union(w, live);
      if (w == cursor_ / 64) bits &= ~uint64_t{0} << (cursor_ % 64);
      if (bits == 0) continue;
      uint64_t block = w * 64 + static_cast<uint64_t>(std::countr_zero(bits));
      Item item{block, 0};
      const uint64_t bit = uint64_t{1} << (block % 64);
      for (size_t p = 0; p < need_.size(); ++p) {
        if (!(live >> p & 1) || !(need_[p][w] & bit)) continue;
        need_[p][w] &= ~bit;
        item.peers |= Peers{1} << p;
      }
      cursor_ = block + 1;
      return item;
    }
    cursor_ = 0;
  }
  return std::nullopt;
}

uint64_t SendPlan::Count(size_t peer) const {
  uint64_t n = 0;
  for (uint64_t word : need_[peer]) n += static_cast<uint64_t>(std::popcount(word));
  return n;
}

uint64_t SendPlan::CountAny(Peers live) const {
  uint64_t n = 0;
  for (uint64_t w = 0; w < words_; ++w) n += static_cast<uint64_t>(std::popcount(Union(w, live)));
  return n;
}

}  // namespace blkmirror::engine
