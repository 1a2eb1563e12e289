// HotBlocks: a settled block's bit stays set until `capacity` later settles push it out, is
// never cleared while a write of it is pending (touched), and every hot bit clears on Drain.
#include <gtest/gtest.h>

#include "engine/hot_blocks.h"

namespace blkmirror::engine {
namespace {

std::unique_ptr<DirtyBitmap> AllSet(uint64_t blocks) {
  return DirtyBitmap::InMemory(BitmapKey{4096, blocks * 4096, {}, {}});
}

TEST(HotBlocksTest, ASettledBlockStaysSetUntilLaterSettlesPushItOut) {
  auto bitmap = AllSet(256);
  HotBlocks hot(256, 3);
  hot.Settled(7, *bitmap);
  hot.Settled(7, *bitmap);  // counted once
  EXPECT_TRUE(hot.hot(7));
  EXPECT_EQ(hot.count(), 1u);
  hot.Settled(8, *bitmap);
  hot.Settled(9, *bitmap);
  EXPECT_TRUE(bitmap->Test(7));
  EXPECT_EQ(hot.count(), 3u);
  hot.Settled(10, *bitmap);  // the fourth: 7, the oldest, goes
  EXPECT_FALSE(bitmap->Test(7));
  EXPECT_FALSE(hot.hot(7));
  for (uint64_t b : {8, 9, 10}) EXPECT_TRUE(bitmap->Test(b) && hot.hot(b)) << b;
  EXPECT_EQ(hot.count(), 3u);
}

TEST(HotBlocksTest, ATouchedBlockIsDirtyForRealUntilSettledAgain) {
  auto bitmap = AllSet(256);
  HotBlocks hot(256, 2);
  hot.Settled(3, *bitmap);
  hot.Settled(64, *bitmap);
  hot.Touched(3);  // a write of it goes out (or is skipped): not hot, never cleared when pushed out
  EXPECT_FALSE(hot.hot(3));
  EXPECT_EQ(hot.count(), 1u);
  hot.Settled(100, *bitmap);
  hot.Settled(101, *bitmap);
  EXPECT_TRUE(bitmap->Test(3));
  EXPECT_FALSE(bitmap->Test(64));
  hot.Settled(3, *bitmap);  // its write settled: hot again, pushed out like any other
  hot.Settled(102, *bitmap);
  hot.Settled(103, *bitmap);
  EXPECT_FALSE(bitmap->Test(3));
  EXPECT_EQ(hot.count(), 2u);
}

TEST(HotBlocksTest, DrainClearsEveryHotBlockAndResetForgetsThem) {
  auto bitmap = AllSet(256);
  HotBlocks hot(256, 16);
  hot.Settled(1, *bitmap);
  hot.Settled(2, *bitmap);
  hot.Settled(5, *bitmap);
  hot.Touched(5);
  hot.Drain(*bitmap);
  EXPECT_FALSE(bitmap->Test(1));
  EXPECT_FALSE(bitmap->Test(2));
  EXPECT_TRUE(bitmap->Test(5));
  EXPECT_EQ(hot.count(), 0u);
  hot.Settled(9, *bitmap);
  hot.Reset();
  EXPECT_FALSE(hot.hot(9));
  EXPECT_EQ(hot.count(), 0u);
  for (uint64_t b = 20; b < 40; ++b) hot.Settled(b, *bitmap);
  EXPECT_TRUE(bitmap->Test(9));
}

}  // namespace
}  // namespace blkmirror::engine
