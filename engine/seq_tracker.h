// SeqTracker: which sequence numbers of a session reached a state, as a cumulative point plus a
// bitmap of the ones beyond it (the shape of an Ack frame).
//
// Sequence numbers are dense from 0. Only seqs in [cumulative, cumulative + span) can be marked;
// the span is fixed at construction (a power of two), so the tracker never allocates after it.
// The primary never has more than span seqs outstanding to a peer (proto::SeqSpan), which is
// what lets the replica use the same bound to reject a frame from outside the window.
//
// Thread safety: none.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace blkmirror::engine {

// The span both ends use for a session with the given window.
inline uint64_t SeqSpan(uint32_t window) {
  uint64_t want = uint64_t{window} * 4;
  return std::bit_ceil(want < 256 ? uint64_t{256} : want);
}

class SeqTracker {
 public:
  explicit SeqTracker(uint64_t span) : span_(span), words_(span / 64, 0) {}

  uint64_t cumulative() const { return cumulative_; }
  uint64_t span() const { return span_; }
  bool InWindow(uint64_t seq) const { return seq >= cumulative_ && seq - cumulative_ < span_; }
  bool Has(uint64_t seq) const {
    if (seq < cumulative_) return true;
    if (!InWindow(seq)) return false;
    return (words_[Word(seq)] >> (seq % 64)) & 1;
  }
  // Marks `seq`; returns false (marking nothing) when it lies beyond the window.
  bool Mark(uint64_t seq) {
    if (seq < cumulative_) return true;
    if (!InWindow(seq)) return false;
    words_[Word(seq)] |= uint64_t{1} << (seq % 64);
    while (Has(cumulative_) && cumulative_ < UINT64_MAX) {
      words_[Word(cumulative_)] &= ~(uint64_t{1} << (cumulative_ % 64));
      ++cumulative_;
    }
    return true;
  }
  // Bits for [base, base + 64): bit i set when base + i is marked.
  uint64_t Bits(uint64_t base) const {
    uint64_t bits = 0;
    for (uint64_t i = 0; i < 64; ++i) {
      if (base + i >= cumulative_ + span_) break;
      if (Has(base + i)) bits |= uint64_t{1} << i;
    }
    return bits;
  }

 private:
  size_t Word(uint64_t seq) const { return (seq % span_) / 64; }
  uint64_t cumulative_ = 0;
  uint64_t span_;
  std::vector<uint64_t> words_;
};

}  // namespace blkmirror::engine
