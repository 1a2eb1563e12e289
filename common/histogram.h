// LatencyHistogram: log-linear buckets (64 per power of two, so a quantile is within ~1.6% of
// the true value) over nanoseconds; fixed memory, no allocation when recording.
// Hand-written because Debian has no HdrHistogram for C++; it is 40 lines.
#pragma once

#include <array>
#include <cstddef>
#include <bit>
#include <cstdint>

namespace blkmirror {

class LatencyHistogram {
 public:
  void Record(uint64_t ns) {
    ++counts_[Bucket(ns)];
    ++total_;
    sum_ += ns;
  }
  uint64_t count() const { return total_; }
  uint64_t sum() const { return sum_; }  // of every value recorded
  // Values recorded in the buckets whose upper edge is at most `ns` (a cumulative count, as a
  // Prometheus histogram's `le` bucket; a value within 1.6% below `ns` may be left out).
  uint64_t CountAtMost(uint64_t ns) const {
    uint64_t n = 0;
    for (size_t b = 0; b < counts_.size() && UpperEdge(b) <= ns; ++b) n += counts_[b];
    return n;
  }
  // Calls f(upper_edge_ns, count) for each bucket holding a value, smallest first (the
  // distribution at the histogram's resolution: what a CDF is drawn from).
  template <typename F>
  void ForEachBucket(F&& f) const {
    for (size_t b = 0; b < counts_.size(); ++b) {
      if (counts_[b] != 0) f(UpperEdge(b), counts_[b]);
    }
  }
  // The value at quantile q in [0, 1] (upper edge of its bucket), 0 when empty.
  uint64_t Quantile(double q) const {
    if (total_ == 0) return 0;
    auto rank = static_cast<uint64_t>(q * static_cast<double>(total_ - 1)) + 1;
    uint64_t seen = 0;
    for (size_t b = 0; b < counts_.size(); ++b) {
      seen += counts_[b];
      if (seen >= rank) return UpperEdge(b);
    }
    return UpperEdge(counts_.size() - 1);
  }

 private:
  static constexpr int kSubBits = 6;  // 64 sub-buckets
  static constexpr size_t kBuckets = (64 - kSubBits + 1) << kSubBits;
  static size_t Bucket(uint64_t v) {
    if (v < (uint64_t{1} << kSubBits)) return static_cast<size_t>(v);
    int msb = 63 - std::countl_zero(v);
    int shift = msb - kSubBits;
    uint64_t sub = (v >> shift) & ((uint64_t{1} << kSubBits) - 1);
    return (static_cast<size_t>(shift + 1) << kSubBits) + static_cast<size_t>(sub);
  }
  static uint64_t UpperEdge(size_t b) {
    if (b < (size_t{1} << kSubBits)) return b;
    int shift = static_cast<int>(b >> kSubBits) - 1;
    uint64_t sub = b & ((size_t{1} << kSubBits) - 1);
    return (((uint64_t{1} << kSubBits) | sub) << shift) + ((uint64_t{1} << shift) - 1);
  }
  std::array<uint64_t, kBuckets> counts_{};
  uint64_t total_ = 0;
  uint64_t sum_ = 0;
};

}  // namespace blkmirror
