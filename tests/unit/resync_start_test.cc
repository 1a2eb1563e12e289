// Where a push starts with each replica: the decision from what the primary knows, and the
// bitmap it leaves.
#include "engine/resync_start.h"

#include <gtest/gtest.h>

#include <vector>

namespace blkmirror::engine {
namespace {

constexpr uint32_t kBlock = 1 << 20;

BitmapKey Key() {
  BitmapKey key;
  key.block_size = kBlock;
  key.volume_size = 16ull * kBlock + 777;  // 17 blocks, the last short
  return key;
}

TEST(ResyncStartTest, AComparisonDecidesWhateverTheBitmapSays) {
  for (bool existed : {false, true}) {
    for (bool unchanged : {false, true}) {
      EXPECT_EQ(ChooseResyncStart({true, existed, unchanged}, {}), ResyncStart::kCompared);
      EXPECT_EQ(ChooseResyncStart({true, existed, unchanged}, {.repair = true}),
                ResyncStart::kCompared);
    }
  }
}

TEST(ResyncStartTest, WithoutAComparison) {
  EXPECT_EQ(ChooseResyncStart({false, false, false}, {}), ResyncStart::kFirst);
  EXPECT_EQ(ChooseResyncStart({false, true, false}, {}), ResyncStart::kSourceChanged);
  EXPECT_EQ(ChooseResyncStart({false, true, true}, {}), ResyncStart::kResume);
  EXPECT_EQ(ChooseResyncStart({false, true, true}, {.full = true}), ResyncStart::kFull);
  EXPECT_EQ(ChooseResyncStart({false, false, false}, {.full = true}), ResyncStart::kFull);
  // verify --repair: a replica without history gets only what verify found; one with history
  // keeps what its bitmap says on top of that.
  EXPECT_EQ(ChooseResyncStart({false, false, false}, {.repair = true}), ResyncStart::kRepairOnly);
  EXPECT_EQ(ChooseResyncStart({false, true, true}, {.repair = true}), ResyncStart::kResume);
  EXPECT_EQ(ChooseResyncStart({false, true, false}, {.repair = true}), ResyncStart::kSourceChanged);
  EXPECT_TRUE(Resumes(ResyncStart::kCompared));
  EXPECT_TRUE(Resumes(ResyncStart::kResume));
  EXPECT_FALSE(Resumes(ResyncStart::kFull));
  EXPECT_FALSE(Resumes(ResyncStart::kRepairOnly));
}

TEST(ResyncStartTest, TheBitmapEachStartLeaves) {
  auto b = DirtyBitmap::InMemory(Key());
  ASSERT_EQ(b->blocks(), 17u);
  // Compared: exactly the blocks the differing ranges touch, including a range of pieces that
  // crosses a block boundary and the short last block.
  b->Set(5);
  std::vector<DiffRange> differing = {{3ull * kBlock - 4096, 8192}, {16ull * kBlock, 777}};
  ApplyResyncStart(ResyncStart::kCompared, differing, *b);
  EXPECT_EQ(b->CountSet(), 3u);
  EXPECT_TRUE(b->Test(2));
  EXPECT_TRUE(b->Test(3));
  EXPECT_TRUE(b->Test(16));
  EXPECT_FALSE(b->Test(5));
  // Resume: untouched.
  ApplyResyncStart(ResyncStart::kResume, {}, *b);
  EXPECT_EQ(b->CountSet(), 3u);
  // Repair without history: clean (verify's ranges come on top).
  ApplyResyncStart(ResyncStart::kRepairOnly, differing, *b);
  EXPECT_EQ(b->CountSet(), 0u);
  for (ResyncStart all : {ResyncStart::kFull, ResyncStart::kFirst, ResyncStart::kSourceChanged}) {
    b->ClearAll();
    ApplyResyncStart(all, {}, *b);
    EXPECT_EQ(b->CountSet(), 17u);
  }
}

}  // namespace
}  // namespace blkmirror::engine
