#include "engine/compress.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace blkmirror::engine {
namespace {

constexpr uint64_t kMs = 1'000'000;
constexpr uint32_t kBlock = 1 << 20;

// A push as the governor sees it: a loop that spends `cpu` ns per block on the primary (more
// when compressing), a window of `window` blocks in flight, and a link that carries one block at
// a time in `link` ns (less when compressed); a block completes when it has crossed the link.
struct Sim {
  uint64_t cpu_compressed, cpu_plain, link_compressed, link_plain;
  uint32_t window = 32;
  uint64_t zeros_from = UINT64_MAX, zeros_to = 0;  // blocks [from, to) are zeros: 20 us each
  bool tell_zeros = true;
  CompressGovernor g{window};
  uint64_t index = 0;
  uint64_t now = 0;
  uint64_t link_free = 0;
  std::deque<uint64_t> in_flight;  // completion times, in order

  // Runs for `for_ns`; the blocks submitted, and how many of them compressed.
  std::pair<uint64_t, uint64_t> Run(uint64_t for_ns) {
    uint64_t blocks = 0, compressed = 0;
    for (const uint64_t end = now + for_ns; now < end;) {
      while (!in_flight.empty() && in_flight.front() <= now) {
        g.Completed();
        in_flight.pop_front();
      }
      if (in_flight.size() >= window) {
        now = in_flight.front();
        continue;
      }
      const bool zero = index >= zeros_from && index < zeros_to;
      ++index;
      const bool c = g.Next(kBlock, zero && tell_zeros, now);
      ++blocks;
      compressed += c && !zero;
      now += zero ? 20'000 : c ? cpu_compressed : cpu_plain;
      link_free = std::max(link_free, now) + (zero ? 10'000 : c ? link_compressed : link_plain);
      in_flight.push_back(link_free);
    }
    return {blocks, compressed};
  }
};

TEST(CompressGovernorTest, TurnsOffWhereCompressingIsSlower) {
  // Loopback: compressing 0.4 GB/s, plain 2 GB/s, the link never the limit.
  Sim s{2'500'000, 500'000, 100'000, 100'000};
  s.Run(1'000 * kMs);
  CompressGovernor::Decision dec;
  ASSERT_TRUE(s.g.TakeDecision(dec));
  EXPECT_FALSE(dec.compress);
  EXPECT_NEAR(dec.rate_plain, 2.1e9, 0.2e9);
  EXPECT_LT(dec.rate_compressed, 0.6e9);
  EXPECT_FALSE(s.g.TakeDecision(dec)) << "the same choice again is no new decision";
  // The first second: the compressing probe gave up early, so the push lost little to it.
  // Then holding off, only the probes compress: a few dozen blocks over 1 + 2 + 4 + 8 s.
  const auto [blocks, compressed] = s.Run(15'000 * kMs);
  EXPECT_LT(compressed, blocks / 100);
}

TEST(CompressGovernorTest, AProbeWaitsForTheWindowToDrain) {
  // 1 Gbit/s with a window of 32 MiB in flight: compressing gives 250 MB/s of data (2:1), plain
  // 125 MB/s. The window takes 256 ms to drain: a probe that counted at once would measure the
  // other choice's writes.
  Sim s{2'000'000, 100'000, 4'000'000, 8'000'000};
  s.Run(3'000 * kMs);
  CompressGovernor::Decision dec;
  ASSERT_TRUE(s.g.TakeDecision(dec));
  EXPECT_TRUE(dec.compress);
  EXPECT_NEAR(dec.rate_plain, 131e6, 15e6);
  EXPECT_NEAR(dec.rate_compressed, 262e6, 30e6);
  const auto [blocks, compressed] = s.Run(20'000 * kMs);
  EXPECT_GT(compressed, blocks * 9 / 10);
  EXPECT_FALSE(s.g.TakeDecision(dec)) << "it kept compressing: no change to report";
}

TEST(CompressGovernorTest, ARunOfZerosIsNoRate) {
  // Loopback, compressing loses; the compressing probe meets 500 MiB of zeros (zero ranges,
  // 50 GB/s). Counted as data they would make it look the faster.
  for (const bool tell : {true, false}) {
    Sim s{2'500'000, 500'000, 100'000, 100'000};
    s.zeros_from = 70;  // the compressing probe starts counting at about the 67th block
    s.zeros_to = 570;
    s.tell_zeros = tell;
    s.Run(1'000 * kMs);
    CompressGovernor::Decision dec;
    ASSERT_TRUE(s.g.TakeDecision(dec));
    EXPECT_EQ(dec.compress, !tell) << (tell ? "told of the zeros" : "not told: the test's control");
  }
}

TEST(CompressGovernorTest, TiesGoToCompression) {
  // The writer is the limit (a client writing 100 MB/s): both choices give the same rate.
  Sim s{10'000'000, 10'000'000, 1'000'000, 2'000'000};
  s.Run(3'000 * kMs);
  CompressGovernor::Decision dec;
  ASSERT_TRUE(s.g.TakeDecision(dec));
  EXPECT_TRUE(dec.compress);
}

TEST(CompressGovernorTest, AnIdleProbeIsVoid) {
  CompressGovernor g(8);
  CompressGovernor::Decision dec;
  // The first 8 writes fill the window at once: not counted. The plain probe counts from the
  // first write after they completed; then the writes stop for 10 s: that probe says nothing,
  // and starts over, again past a window's fill.
  for (int i = 0; i < 8; ++i) EXPECT_FALSE(g.Next(kBlock, false, i * 10));
  for (int i = 0; i < 8; ++i) g.Completed();
  EXPECT_FALSE(g.Next(kBlock, false, 10 * kMs));
  EXPECT_FALSE(g.Next(kBlock, false, 20 * kMs));
  EXPECT_FALSE(g.Next(kBlock, false, 10'000 * kMs));
  for (int i = 0; i < 8; ++i) EXPECT_FALSE(g.Next(kBlock, false, 10'000 * kMs + i * 10));
  for (int i = 0; i < 11 + 8; ++i) g.Completed();
  for (int i = 0; i < 8; ++i) EXPECT_FALSE(g.Next(kBlock, false, (10'020 + i) * kMs));
  EXPECT_FALSE(g.TakeDecision(dec));
  EXPECT_TRUE(g.Next(kBlock, false, 10'028 * kMs));  // the compressing probe, settling
  for (int i = 0; i < 9; ++i) g.Completed();
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(g.Next(kBlock, false, (10'030 + i) * kMs));
  EXPECT_TRUE(g.Next(kBlock, false, 10'038 * kMs));  // as fast as plain: compression holds
  ASSERT_TRUE(g.TakeDecision(dec));
  EXPECT_TRUE(dec.compress);
  EXPECT_NEAR(dec.rate_plain, dec.rate_compressed, 1);
}

TEST(CompressGovernorTest, BurstsOfAWindowMeasureTheirRate) {
  // Window-limited writes come in bursts: 32 at once, then nothing until acks free the window.
  // 32 MiB per 256 ms plain, per 128 ms compressed: a probe that measured one burst would see
  // GB/s both ways.
  CompressGovernor g(32);
  uint64_t now = 0;
  CompressGovernor::Decision dec;
  for (int burst = 0; burst < 40 && !g.TakeDecision(dec); ++burst) {
    bool c = false;
    for (int i = 0; i < 32; ++i) c = g.Next(kBlock, false, now + i * 10'000);
    for (int i = 0; i < 32; ++i) g.Completed();
    now += c ? 128 * kMs : 256 * kMs;
  }
  EXPECT_TRUE(dec.compress);
  EXPECT_NEAR(dec.rate_plain, 131e6, 10e6);
  EXPECT_NEAR(dec.rate_compressed, 262e6, 20e6);
}

TEST(CompressGovernorTest, ParsesItsMode) {
  EXPECT_EQ(ParseCompressMode("auto").value(), CompressMode::kAuto);
  EXPECT_EQ(ParseCompressMode("always").value(), CompressMode::kAlways);
  EXPECT_EQ(ParseCompressMode("sometimes").status().message(),
            "'sometimes': expected auto or always");
}

TEST(CompressorTest, KeepsOnlyWhatSavesAnEighthWithinItsRoom) {
  std::vector<std::byte> text(64 << 10), room(64 << 10), back(64 << 10);
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<std::byte>("blkmirror "[i % 10]);
  for (const char* spec : {"lz4", "zstd:3"}) {
    SCOPED_TRACE(spec);
    Compressor c(CompressSpec::Parse(spec).value());
    const uint32_t n = c.Compress(text.data(), 64 << 10, room);
    ASSERT_GT(n, 0u);
    ASSERT_LT(n, KeepCompressedBelow(64 << 10));
    Decompressor d;
    ASSERT_TRUE(d.Decompress(CompressSpec::Parse(spec)->codec, room.data(), n, back.data(), 64 << 10));
    EXPECT_EQ(std::memcmp(back.data(), text.data(), text.size()), 0);
    // A room too small for the compressed form: not kept, never written past.
    std::vector<std::byte> tiny(n + 16, std::byte{0x5a});
    EXPECT_EQ(c.Compress(text.data(), 64 << 10, std::span(tiny).first(n - 1)), 0u);
    EXPECT_EQ(tiny[n + 15], std::byte{0x5a});
    // Random bytes do not compress: sent as they are.
    std::vector<std::byte> noise(64 << 10);
    uint32_t x = 1;
    for (auto& b : noise) b = static_cast<std::byte>((x = x * 1664525 + 1013904223) >> 24);
    EXPECT_EQ(c.Compress(noise.data(), 64 << 10, room), 0u);
  }
}

}  // namespace
}  // namespace blkmirror::engine
