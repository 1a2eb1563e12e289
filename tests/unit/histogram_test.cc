// LatencyHistogram: quantiles within the documented ~1.6% of the true value.
#include "common/histogram.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace blkmirror {
namespace {

TEST(Histogram, EmptyQuantilesAreZero) {
  LatencyHistogram h;
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.Quantile(0.0), 0u);
  EXPECT_EQ(h.Quantile(0.5), 0u);
  EXPECT_EQ(h.Quantile(1.0), 0u);
}

TEST(Histogram, SingleValue) {
  LatencyHistogram h;
  h.Record(12345);
  EXPECT_EQ(h.count(), 1u);
  for (double q : {0.0, 0.5, 0.99, 1.0}) {
    uint64_t v = h.Quantile(q);
    // The upper edge of the bucket: never below the value, at most 1/64 above.
    EXPECT_GE(v, 12345u) << q;
    EXPECT_LE(v, 12345u + 12345u / 64) << q;
  }
}

TEST(Histogram, SumAndCumulativeCountsForPrometheus) {
  LatencyHistogram h;
  for (uint64_t v : {10u, 63u, 1000u, 100000u, 100000u, 5000000u}) h.Record(v);
  EXPECT_EQ(h.sum(), 10u + 63u + 1000u + 200000u + 5000000u);
  EXPECT_EQ(h.CountAtMost(9), 0u);
  EXPECT_EQ(h.CountAtMost(10), 1u);
  EXPECT_EQ(h.CountAtMost(63), 2u);
  EXPECT_EQ(h.CountAtMost(1100), 3u);      // 1000's bucket ends within 1/64 above it
  EXPECT_EQ(h.CountAtMost(99000), 3u);
  EXPECT_EQ(h.CountAtMost(102000), 5u);
  EXPECT_EQ(h.CountAtMost(UINT64_MAX), 6u);
  // Monotonic in its bound, and never more than count().
  uint64_t last = 0;
  for (uint64_t ns = 1; ns < (uint64_t{1} << 40); ns *= 3) {
    EXPECT_GE(h.CountAtMost(ns), last);
    last = h.CountAtMost(ns);
    EXPECT_LE(last, h.count());
  }
}

TEST(Histogram, ForEachBucketGivesTheNonEmptyBucketsInOrder) {
  LatencyHistogram h;
  h.ForEachBucket([](uint64_t, uint64_t) { ADD_FAILURE() << "an empty histogram has no bucket"; });
  for (uint64_t v : {5u, 5u, 1000u, 100000u, 100001u, 5000000u}) h.Record(v);
  std::vector<std::pair<uint64_t, uint64_t>> buckets;
  h.ForEachBucket([&](uint64_t edge, uint64_t n) { buckets.emplace_back(edge, n); });
  // 100000 and 100001 share a bucket (width 2048 there); 5 is exact.
  ASSERT_EQ(buckets.size(), 4u);
  EXPECT_EQ(buckets[0], std::make_pair(uint64_t{5}, uint64_t{2}));
  EXPECT_EQ(buckets[2].second, 2u);
  uint64_t total = 0, prev = 0;
  for (auto [edge, n] : buckets) {
    EXPECT_GT(edge, prev);
    // Each edge agrees with the cumulative counts Prometheus gets.
    total += n;
    EXPECT_EQ(h.CountAtMost(edge), total) << edge;
    prev = edge;
  }
  EXPECT_EQ(total, h.count());
  EXPECT_GE(buckets[3].first, 5000000u);
  EXPECT_LE(buckets[3].first, 5000000u + 5000000u / 64);
}

TEST(Histogram, SmallValuesAreExact) {
  for (uint64_t v = 0; v < 64; ++v) {
    LatencyHistogram h;
    h.Record(v);
    EXPECT_EQ(h.Quantile(0.5), v);
  }
  // All of 0..63 once each: the k-th smallest is k.
  LatencyHistogram h;
  for (uint64_t v = 0; v < 64; ++v) h.Record(v);
  EXPECT_EQ(h.Quantile(0.0), 0u);
  EXPECT_EQ(h.Quantile(1.0), 63u);
  for (uint64_t k = 0; k < 63; ++k) {
    // Mid-way between ranks, so floating-point rounding cannot pick the neighbour.
    EXPECT_EQ(h.Quantile((static_cast<double>(k) + 0.5) / 63.0), k);
  }
}

TEST(Histogram, BucketBoundariesAroundPowersOfTwo) {
  // 64..127 are exact too (bucket width 1); from 128 on buckets widen.
  for (uint64_t v : {64u, 100u, 127u}) {
    LatencyHistogram h;
    h.Record(v);
    EXPECT_EQ(h.Quantile(1.0), v);
  }
  for (int bit = 7; bit < 64; ++bit) {
    for (uint64_t v : {uint64_t{1} << bit, (uint64_t{1} << bit) - 1, (uint64_t{1} << bit) + 1}) {
      LatencyHistogram h;
      h.Record(v);
      uint64_t q = h.Quantile(1.0);
      EXPECT_GE(q, v) << "value " << v;
      EXPECT_LE(q - v, v / 64) << "value " << v;
    }
  }
  LatencyHistogram h;
  h.Record(UINT64_MAX);
  EXPECT_EQ(h.Quantile(1.0), UINT64_MAX);
}

TEST(Histogram, UniformQuantilesWithinTwoPercent) {
  LatencyHistogram h;
  std::vector<uint64_t> values(100000);
  for (uint64_t i = 0; i < values.size(); ++i) values[i] = i + 1;
  std::shuffle(values.begin(), values.end(), std::mt19937(5));
  for (uint64_t v : values) h.Record(v);
  EXPECT_EQ(h.count(), 100000u);
  EXPECT_NEAR(static_cast<double>(h.Quantile(0.5)), 50000.0, 50000.0 * 0.02);
  EXPECT_NEAR(static_cast<double>(h.Quantile(0.9)), 90000.0, 90000.0 * 0.02);
  EXPECT_NEAR(static_cast<double>(h.Quantile(0.99)), 99000.0, 99000.0 * 0.02);
  EXPECT_NEAR(static_cast<double>(h.Quantile(0.999)), 99900.0, 99900.0 * 0.02);
  EXPECT_NEAR(static_cast<double>(h.Quantile(1.0)), 100000.0, 100000.0 * 0.02);
  EXPECT_EQ(h.Quantile(0.0), 1u);
}

TEST(Histogram, QuantilesAreMonotonic) {
  LatencyHistogram h;
  std::mt19937_64 rng(42);
  std::lognormal_distribution<double> dist(10.0, 2.0);  // a long tail, like real latencies
  for (int i = 0; i < 50000; ++i) h.Record(static_cast<uint64_t>(dist(rng)));
  uint64_t prev = 0;
  for (int i = 0; i <= 1000; ++i) {
    uint64_t v = h.Quantile(i / 1000.0);
    ASSERT_GE(v, prev) << "q=" << i / 1000.0;
    prev = v;
  }
}

TEST(Histogram, QuantileMatchesSortedSampleWithinBucketError) {
  std::mt19937_64 rng(1);
  std::exponential_distribution<double> dist(1.0 / 200000.0);
  std::vector<uint64_t> values;
  LatencyHistogram h;
  for (int i = 0; i < 20000; ++i) {
    auto v = static_cast<uint64_t>(dist(rng));
    values.push_back(v);
    h.Record(v);
  }
  std::sort(values.begin(), values.end());
  for (double q : {0.1, 0.5, 0.9, 0.99, 0.999}) {
    uint64_t truth = values[static_cast<size_t>(q * static_cast<double>(values.size() - 1))];
    uint64_t got = h.Quantile(q);
    EXPECT_GE(got, truth) << q;
    EXPECT_LE(got - truth, truth / 64 + 1) << q;
  }
}

}  // namespace
}  // namespace blkmirror
