// CRC32C: the iSCSI (RFC 3720, appendix B.4) vectors, the incremental form, and that a single
// flipped bit anywhere in a large buffer changes the checksum.
#include "common/crc32c.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string_view>
#include <vector>

namespace blkmirror {
namespace {

std::vector<std::byte> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng());
  return v;
}

TEST(Crc32c, CheckString) {
  constexpr std::string_view kText = "123456789";
  EXPECT_EQ(Crc32c(kText.data(), kText.size()), 0xE3069283u);
}

TEST(Crc32c, EmptyIsZero) {
  EXPECT_EQ(Crc32c(std::span<const std::byte>()), 0u);
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
  EXPECT_EQ(Crc32cFinish(Crc32cExtend(kCrc32cInit, {})), 0u);
}

TEST(Crc32c, Rfc3720AllZeros) {
  std::array<uint8_t, 32> buf{};
  EXPECT_EQ(Crc32c(buf.data(), buf.size()), 0x8A9136AAu);
}

TEST(Crc32c, Rfc3720AllOnes) {
  std::array<uint8_t, 32> buf;
  buf.fill(0xFF);
  EXPECT_EQ(Crc32c(buf.data(), buf.size()), 0x62A8AB43u);
}

TEST(Crc32c, Rfc3720Ascending) {
  std::array<uint8_t, 32> buf;
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(Crc32c(buf.data(), buf.size()), 0x46DD794Eu);
}

TEST(Crc32c, Rfc3720Descending) {
  std::array<uint8_t, 32> buf;
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(31 - i);
  EXPECT_EQ(Crc32c(buf.data(), buf.size()), 0x113FDB5Cu);
}

TEST(Crc32c, SpanAndPointerFormsAgree) {
  auto data = RandomBytes(4097, 7);
  EXPECT_EQ(Crc32c(std::span<const std::byte>(data)), Crc32c(data.data(), data.size()));
}

TEST(Crc32c, IncrementalOverRandomSplitsEqualsOneShot) {
  // Sizes around the folding implementation's internal block boundaries, and odd tails.
  std::mt19937 rng(12345);
  for (size_t size : {size_t{1}, size_t{7}, size_t{63}, size_t{64}, size_t{65}, size_t{255},
                      size_t{4096}, size_t{65537}, size_t{1} << 20}) {
    auto data = RandomBytes(size, static_cast<uint32_t>(size));
    const uint32_t one_shot = Crc32c(std::span<const std::byte>(data));
    for (int trial = 0; trial < 20; ++trial) {
      // Random cut points, including empty chunks.
      std::uniform_int_distribution<size_t> cut(0, size);
      std::vector<size_t> cuts = {0, size};
      for (int i = 0; i < 5; ++i) cuts.push_back(cut(rng));
      std::sort(cuts.begin(), cuts.end());
      uint32_t state = kCrc32cInit;
      for (size_t i = 0; i + 1 < cuts.size(); ++i) {
        state = Crc32cExtend(state, std::span<const std::byte>(data).subspan(
                                        cuts[i], cuts[i + 1] - cuts[i]));
      }
      ASSERT_EQ(Crc32cFinish(state), one_shot) << "size " << size << " trial " << trial;
    }
  }
}

TEST(Crc32c, ByteAtATimeEqualsOneShot) {
  auto data = RandomBytes(1000, 99);
  uint32_t state = kCrc32cInit;
  for (size_t i = 0; i < data.size(); ++i) {
    state = Crc32cExtend(state, std::span<const std::byte>(data).subspan(i, 1));
  }
  EXPECT_EQ(Crc32cFinish(state), Crc32c(std::span<const std::byte>(data)));
}

TEST(Crc32c, AnySingleBitFlipInOneMiBChangesTheCrc) {
  auto data = RandomBytes(size_t{1} << 20, 2024);
  const uint32_t original = Crc32c(std::span<const std::byte>(data));
  std::mt19937_64 rng(77);
  std::uniform_int_distribution<size_t> bit(0, data.size() * 8 - 1);
  std::vector<size_t> positions = {0, data.size() * 8 - 1};  // the first and last bits too
  for (int i = 0; i < 1000; ++i) positions.push_back(bit(rng));
  for (size_t pos : positions) {
    const auto mask = static_cast<std::byte>(1u << (pos % 8));
    data[pos / 8] ^= mask;
    ASSERT_NE(Crc32c(std::span<const std::byte>(data)), original) << "bit " << pos;
    data[pos / 8] ^= mask;
  }
  EXPECT_EQ(Crc32c(std::span<const std::byte>(data)), original);
}

}  // namespace
}  // namespace blkmirror
