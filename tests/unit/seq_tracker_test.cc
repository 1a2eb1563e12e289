// SeqTracker: cumulative point plus a bitmap of the window beyond it.
#include "engine/seq_tracker.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace blkmirror::engine {
namespace {

TEST(SeqTracker, SeqSpanIsAPowerOfTwoAtLeast256) {
  EXPECT_EQ(SeqSpan(0), 256u);
  EXPECT_EQ(SeqSpan(1), 256u);
  EXPECT_EQ(SeqSpan(64), 256u);
  EXPECT_EQ(SeqSpan(65), 512u);
  EXPECT_EQ(SeqSpan(100), 512u);
  EXPECT_EQ(SeqSpan(128), 512u);
  EXPECT_EQ(SeqSpan(4096), 16384u);
  EXPECT_EQ(SeqSpan(65536), 262144u);
  for (uint32_t w = 1; w <= 70000; w += 37) {
    uint64_t span = SeqSpan(w);
    EXPECT_TRUE(std::has_single_bit(span)) << w;
    EXPECT_GE(span, uint64_t{w} * 4) << w;
    EXPECT_GE(span, 256u) << w;
    EXPECT_LT(span, std::max<uint64_t>(uint64_t{w} * 8, 257)) << w;  // the smallest such
  }
}

TEST(SeqTracker, StartsEmpty) {
  SeqTracker t(256);
  EXPECT_EQ(t.cumulative(), 0u);
  EXPECT_EQ(t.span(), 256u);
  EXPECT_FALSE(t.Has(0));
  EXPECT_EQ(t.Bits(0), 0u);
  EXPECT_TRUE(t.InWindow(0));
  EXPECT_TRUE(t.InWindow(255));
  EXPECT_FALSE(t.InWindow(256));
}

TEST(SeqTracker, InOrderMarksAdvanceCumulative) {
  SeqTracker t(256);
  for (uint64_t s = 0; s < 1000; ++s) {
    ASSERT_TRUE(t.Mark(s)) << s;
    ASSERT_EQ(t.cumulative(), s + 1);
    ASSERT_EQ(t.Bits(s + 1), 0u) << "no stray bits beyond the cumulative point";
  }
}

TEST(SeqTracker, OutOfOrderMarksWaitForTheHole) {
  SeqTracker t(256);
  EXPECT_TRUE(t.Mark(1));
  EXPECT_TRUE(t.Mark(2));
  EXPECT_TRUE(t.Mark(4));
  EXPECT_EQ(t.cumulative(), 0u);
  EXPECT_FALSE(t.Has(0));
  EXPECT_TRUE(t.Has(1));
  EXPECT_TRUE(t.Has(2));
  EXPECT_FALSE(t.Has(3));
  EXPECT_TRUE(t.Has(4));
  EXPECT_EQ(t.Bits(0), 0b10110u);

  EXPECT_TRUE(t.Mark(0));  // fills the first hole: 0,1,2 become cumulative
  EXPECT_EQ(t.cumulative(), 3u);
  EXPECT_EQ(t.Bits(3), 0b10u);  // 4 is still beyond the hole at 3

  EXPECT_TRUE(t.Mark(3));
  EXPECT_EQ(t.cumulative(), 5u);
  EXPECT_EQ(t.Bits(5), 0u);
}

TEST(SeqTracker, BitsReportsMarksBeyondCumulative) {
  SeqTracker t(256);
  for (uint64_t s : {10u, 11u, 63u, 64u, 73u, 200u, 255u}) ASSERT_TRUE(t.Mark(s));
  EXPECT_EQ(t.cumulative(), 0u);
  EXPECT_EQ(t.Bits(10), (uint64_t{1} << 0) | (uint64_t{1} << 1) | (uint64_t{1} << 53) |
                            (uint64_t{1} << 54) | (uint64_t{1} << 63));
  EXPECT_EQ(t.Bits(64), (uint64_t{1} << 0) | (uint64_t{1} << 9));
  EXPECT_EQ(t.Bits(200), (uint64_t{1} << 0) | (uint64_t{1} << 55));
  // Bits past the window are never set, even where the bitmap wraps onto marked words.
  EXPECT_EQ(t.Bits(250), uint64_t{1} << 5);
  EXPECT_EQ(t.Bits(256), 0u);
  EXPECT_EQ(t.Bits(256 + 10), 0u);
}

TEST(SeqTracker, BitsBelowCumulativeReadAsSet) {
  SeqTracker t(256);
  for (uint64_t s = 0; s < 5; ++s) ASSERT_TRUE(t.Mark(s));
  ASSERT_TRUE(t.Mark(7));
  // seqs 0..4 are below cumulative (set), 5 and 6 missing, 7 marked.
  EXPECT_EQ(t.Bits(0), 0b10011111u);
}

TEST(SeqTracker, MarkBeyondTheWindowFailsAndMarksNothing) {
  SeqTracker t(256);
  EXPECT_FALSE(t.Mark(256));
  EXPECT_FALSE(t.Mark(1000));
  EXPECT_FALSE(t.Mark(UINT64_MAX));
  EXPECT_EQ(t.cumulative(), 0u);
  EXPECT_FALSE(t.Has(256));
  // 256 maps onto the same bit as 0: it must not have leaked there.
  EXPECT_FALSE(t.Has(0));
  EXPECT_EQ(t.Bits(0), 0u);
  for (uint64_t base = 0; base < 256; base += 64) EXPECT_EQ(t.Bits(base), 0u) << base;

  EXPECT_TRUE(t.Mark(255));  // the last seq of the window is fine
  EXPECT_TRUE(t.Has(255));
  EXPECT_EQ(t.cumulative(), 0u);

  EXPECT_TRUE(t.Mark(0));
  EXPECT_EQ(t.cumulative(), 1u);
  EXPECT_TRUE(t.Mark(256));  // the window moved by one
  EXPECT_FALSE(t.Mark(257));
  EXPECT_EQ(t.cumulative(), 1u);
  EXPECT_TRUE(t.Has(256));
  EXPECT_FALSE(t.Has(257));
}

TEST(SeqTracker, MarksBelowCumulativeAreNoOps) {
  SeqTracker t(256);
  for (uint64_t s = 0; s < 100; ++s) ASSERT_TRUE(t.Mark(s));
  ASSERT_TRUE(t.Mark(101));
  EXPECT_TRUE(t.Mark(0));
  EXPECT_TRUE(t.Mark(50));
  EXPECT_TRUE(t.Mark(99));
  EXPECT_EQ(t.cumulative(), 100u);
  EXPECT_EQ(t.Bits(100), 0b10u);
  // seq 99 + 256 = 355 shares a bit with 99; re-marking 99 must not make it look marked.
  EXPECT_FALSE(t.Has(355));
  EXPECT_FALSE(t.Has(100));
}

TEST(SeqTracker, MarkIsIdempotent) {
  SeqTracker t(256);
  EXPECT_TRUE(t.Mark(5));
  EXPECT_TRUE(t.Mark(5));
  EXPECT_EQ(t.cumulative(), 0u);
  EXPECT_EQ(t.Bits(0), uint64_t{1} << 5);
}

TEST(SeqTracker, HasSemantics) {
  SeqTracker t(256);
  for (uint64_t s = 0; s < 10; ++s) ASSERT_TRUE(t.Mark(s));
  ASSERT_TRUE(t.Mark(20));
  for (uint64_t s = 0; s < 10; ++s) EXPECT_TRUE(t.Has(s)) << s;  // below cumulative
  for (uint64_t s = 10; s < 20; ++s) EXPECT_FALSE(t.Has(s)) << s;
  EXPECT_TRUE(t.Has(20));
  EXPECT_FALSE(t.Has(21));
  EXPECT_FALSE(t.Has(10 + 256));  // beyond the window
  EXPECT_FALSE(t.Has(20 + 256));  // same bit as 20, but beyond the window
  EXPECT_FALSE(t.Has(UINT64_MAX));
}

TEST(SeqTracker, BitsClearedAsCumulativePassesThem) {
  // After the cumulative point passes a seq, its bit must not reappear for seq + span.
  SeqTracker t(256);
  for (uint64_t s = 0; s < 300; ++s) ASSERT_TRUE(t.Mark(s));
  EXPECT_EQ(t.cumulative(), 300u);
  for (uint64_t s = 300; s < 300 + 256; ++s) EXPECT_FALSE(t.Has(s)) << s;
  for (uint64_t base = 300; base < 300 + 256; base += 64) EXPECT_EQ(t.Bits(base), 0u) << base;
}

TEST(SeqTracker, ShuffledWithinWindowWrapsAround) {
  for (uint64_t span : {uint64_t{256}, uint64_t{512}, uint64_t{4096}}) {
    SeqTracker t(span);
    const uint64_t total = 10 * span;
    std::mt19937_64 rng(span);
    // Chunks of one span, shuffled inside: every seq of a chunk is inside the window when the
    // chunk starts, since the previous chunk is complete by then.
    for (uint64_t chunk = 0; chunk < total; chunk += span) {
      std::vector<uint64_t> order(span);
      std::iota(order.begin(), order.end(), chunk);
      std::shuffle(order.begin(), order.end(), rng);
      for (uint64_t s : order) {
        ASSERT_TRUE(t.Mark(s)) << "span " << span << " seq " << s;
        ASSERT_TRUE(t.Has(s));
      }
      ASSERT_EQ(t.cumulative(), chunk + span) << "span " << span;
    }
    EXPECT_EQ(t.cumulative(), total);
    EXPECT_EQ(t.Bits(total), 0u);
  }
}

TEST(SeqTracker, SlidingShuffleKeepsWindowInvariant) {
  // A sender with up to `span` seqs outstanding, completing them in random order: the
  // tracker must accept every mark and end exactly at the total.
  const uint64_t span = 256;
  const uint64_t total = 10 * span;
  SeqTracker t(span);
  std::mt19937_64 rng(3);
  std::vector<uint64_t> outstanding;
  uint64_t next = 0;
  while (t.cumulative() < total) {
    while (next < total && next < t.cumulative() + span) outstanding.push_back(next++);
    std::uniform_int_distribution<size_t> pick(0, outstanding.size() - 1);
    size_t i = pick(rng);
    uint64_t s = outstanding[i];
    outstanding[i] = outstanding.back();
    outstanding.pop_back();
    ASSERT_TRUE(t.Mark(s)) << s;
    // The Ack shape: cumulative plus bits; every outstanding seq must read as unmarked.
    for (uint64_t o : outstanding) ASSERT_FALSE(t.Has(o)) << o;
  }
  EXPECT_EQ(t.cumulative(), total);
  EXPECT_TRUE(outstanding.empty());
}

}  // namespace
}  // namespace blkmirror::engine
