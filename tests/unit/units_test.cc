// ParseSize / FormatBytes / FormatRate: what users type and what they read.
#include "common/units.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

namespace blkmirror {
namespace {

constexpr uint64_t kKiB = uint64_t{1} << 10;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kTiB = uint64_t{1} << 40;

uint64_t ParseOk(const std::string& text) {
  auto r = ParseSize(text);
  EXPECT_TRUE(r.ok()) << "'" << text << "': " << r.status().message();
  return r.ok() ? r.value() : UINT64_MAX;
}

TEST(Units, ParseSizeAcceptsPlainAndSuffixedSizes) {
  EXPECT_EQ(ParseOk("0"), 0u);
  EXPECT_EQ(ParseOk("4096"), 4096u);
  EXPECT_EQ(ParseOk("512B"), 512u);
  EXPECT_EQ(ParseOk("512b"), 512u);
  EXPECT_EQ(ParseOk("4K"), 4 * kKiB);
  EXPECT_EQ(ParseOk("4k"), 4 * kKiB);
  EXPECT_EQ(ParseOk("4KB"), 4 * kKiB);
  EXPECT_EQ(ParseOk("4KiB"), 4 * kKiB);
  EXPECT_EQ(ParseOk("1M"), kMiB);
  EXPECT_EQ(ParseOk("1MiB"), kMiB);
  EXPECT_EQ(ParseOk("1mib"), kMiB);
  EXPECT_EQ(ParseOk("64MB"), 64 * kMiB);
  EXPECT_EQ(ParseOk("2G"), 2 * kGiB);
  EXPECT_EQ(ParseOk("2GiB"), 2 * kGiB);
  EXPECT_EQ(ParseOk("1T"), kTiB);
  EXPECT_EQ(ParseOk("1TiB"), kTiB);
  EXPECT_EQ(ParseOk("18446744073709551615"), UINT64_MAX);
  // The largest multiple of a T that fits: 2^24 - 1 TiB.
  EXPECT_EQ(ParseOk("16777215T"), 16777215 * kTiB);
}

void ExpectRejected(const std::string& text) {
  auto r = ParseSize(text);
  ASSERT_FALSE(r.ok()) << "'" << text << "' parsed as " << r.value();
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << text;
  // The message quotes what the user typed.
  EXPECT_NE(r.status().message().find("'" + text + "'"), std::string::npos)
      << "message for '" << text << "': " << r.status().message();
}

TEST(Units, ParseSizeRejectsEmpty) { ExpectRejected(""); }
TEST(Units, ParseSizeRejectsNonNumbers) {
  ExpectRejected("abc");
  ExpectRejected("K");
  ExpectRejected(" 4K");
}
TEST(Units, ParseSizeRejectsUnknownSuffix) {
  ExpectRejected("4X");
  ExpectRejected("4 K");
  ExpectRejected("4KK");
  ExpectRejected("4P");
  ExpectRejected("4Ki");
}
TEST(Units, ParseSizeRejectsNegative) { ExpectRejected("-1"); }
TEST(Units, ParseSizeRejectsFractions) { ExpectRejected("1.5M"); }
TEST(Units, ParseSizeRejectsOverflow) {
  ExpectRejected("99999999999T");
  ExpectRejected("16777216T");  // exactly 2^64
  ExpectRejected("18446744073709551616");  // 2^64 without a suffix
  ExpectRejected("99999999999999999999999");
}

TEST(Units, FormatBytes) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1024), "1.00 KiB");
  EXPECT_EQ(FormatBytes(4096), "4.00 KiB");
  EXPECT_EQ(FormatBytes(1536), "1.50 KiB");
  EXPECT_EQ(FormatBytes(static_cast<double>(kMiB)), "1.00 MiB");
  EXPECT_EQ(FormatBytes(1.5 * static_cast<double>(kGiB)), "1.50 GiB");
  EXPECT_EQ(FormatBytes(static_cast<double>(3 * kTiB)), "3.00 TiB");
  EXPECT_EQ(FormatBytes(static_cast<double>(kTiB) * 1024), "1.00 PiB");
  // Beyond PiB the unit stays PiB.
  EXPECT_EQ(FormatBytes(static_cast<double>(kTiB) * 1024 * 2048), "2048.00 PiB");
}

TEST(Units, FormatRate) {
  EXPECT_EQ(FormatRate(0), "0.00 B/s");
  EXPECT_EQ(FormatRate(999), "999.00 B/s");
  EXPECT_EQ(FormatRate(1000), "1.00 kB/s");
  EXPECT_EQ(FormatRate(1.5e6), "1.50 MB/s");
  EXPECT_EQ(FormatRate(1.23e9), "1.23 GB/s");
  EXPECT_EQ(FormatRate(12.5e9), "12.50 GB/s");
  EXPECT_EQ(FormatRate(2e12), "2.00 TB/s");
  EXPECT_EQ(FormatRate(5e15), "5000.00 TB/s");
}

}  // namespace
}  // namespace blkmirror

namespace blkmirror {
namespace {

TEST(Units, ParseDurationTakesSecondsAndMilliseconds) {
  EXPECT_EQ(ParseDuration("6").value(), std::chrono::milliseconds(6000));
  EXPECT_EQ(ParseDuration("6s").value(), std::chrono::milliseconds(6000));
  EXPECT_EQ(ParseDuration("1.5s").value(), std::chrono::milliseconds(1500));
  EXPECT_EQ(ParseDuration("500ms").value(), std::chrono::milliseconds(500));
  EXPECT_EQ(ParseDuration("0").value(), std::chrono::milliseconds(0));
  for (const char* bad : {"", "s", "ms", "-1", "6m", "six", "1e20", "nan", "5 s"}) {
    auto d = ParseDuration(bad);
    EXPECT_FALSE(d.ok()) << bad;
    EXPECT_NE(d.status().message().find(std::string("'") + bad + "'"), std::string::npos)
        << d.status().message();
  }
}

}  // namespace
}  // namespace blkmirror
