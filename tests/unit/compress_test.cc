#include "engine/compress.h"

#include <cstring>
#include <vector>

#include <gtest/gtest.h>

namespace blkmirror::engine {
namespace {

constexpr uint64_t kMs = 1'000'000;
constexpr uint32_t kBlock = 1 << 20;

// Drives a governor as a loop that submits one block every `gap_compressed` ns while
// compressing and every `gap_plain` ns while not, from `now` for `for_ns`; returns how many of
// the blocks were compressed.
struct Drive {
  CompressGovernor g;
  uint64_t now = 0;
  uint64_t Run(uint64_t gap_compressed, uint64_t gap_plain, uint64_t for_ns) {
    uint64_t compressed = 0;
    for (const uint64_t end = now + for_ns; now < end;) {
      const bool c = g.Next(kBlock, now);
      compressed += c;
      now += c ? gap_compressed : gap_plain;
    }
    return compressed;
  }
};

TEST(CompressGovernorTest, TurnsOffWhereCompressingIsSlower) {
  // Loopback: compressing gives 0.4 GB/s, plain 2 GB/s.
  Drive d;
  d.Run(2500'000, 500'000, 20'000 * kMs);
  CompressGovernor::Decision dec;
  ASSERT_TRUE(d.g.TakeDecision(dec));
  EXPECT_FALSE(dec.compress);
  EXPECT_NEAR(dec.rate_compressed, 0.42e9, 0.05e9);
  EXPECT_NEAR(dec.rate_plain, 2.1e9, 0.2e9);
  EXPECT_FALSE(d.g.TakeDecision(dec)) << "the same choice again is no new decision";
  // Holding off, only the probes compress: 100 ms of each 1 + 2 + 4 + 8 s.
  const uint64_t compressed = d.Run(2500'000, 500'000, 10'000 * kMs);
  EXPECT_LT(compressed, 10'000 * kMs / 500'000 / 20);
}

TEST(CompressGovernorTest, StaysOnWhereTheLinkIsTheLimit) {
  // 1 Gbit/s: compressing gives 250 MB/s of data (2:1), plain 125 MB/s.
  Drive d;
  d.Run(4'000'000, 8'000'000, 3'000 * kMs);
  CompressGovernor::Decision dec;
  ASSERT_TRUE(d.g.TakeDecision(dec));
  EXPECT_TRUE(dec.compress);
  const uint64_t compressed = d.Run(4'000'000, 8'000'000, 10'000 * kMs);
  const uint64_t blocks = 10'000 * kMs / 4'000'000;
  EXPECT_GT(compressed, blocks * 9 / 10);
}

TEST(CompressGovernorTest, TiesGoToCompression) {
  // The writer is the limit (a client writing 100 MB/s): both choices give the same rate.
  Drive d;
  d.Run(10'000'000, 10'000'000, 3'000 * kMs);
  CompressGovernor::Decision dec;
  ASSERT_TRUE(d.g.TakeDecision(dec));
  EXPECT_TRUE(dec.compress);
}

TEST(CompressGovernorTest, AnIdleProbeIsVoid) {
  CompressGovernor g;
  // One write starts the compressed probe; then nothing for 10 s: that probe says nothing, and
  // a new one starts, compressing, at the next write.
  EXPECT_TRUE(g.Next(kBlock, 0));
  EXPECT_TRUE(g.Next(kBlock, 10'000 * kMs));
  CompressGovernor::Decision dec;
  EXPECT_FALSE(g.TakeDecision(dec));
  // The plain probe, then a hold at the faster choice.
  EXPECT_TRUE(g.Next(kBlock, 10'050 * kMs));
  EXPECT_FALSE(g.Next(kBlock, 10'100 * kMs));
  EXPECT_FALSE(g.Next(kBlock, 10'150 * kMs));
  EXPECT_FALSE(g.Next(kBlock, 10'160 * kMs));
  g.Next(kBlock, 10'200 * kMs);
  EXPECT_TRUE(g.TakeDecision(dec));
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
