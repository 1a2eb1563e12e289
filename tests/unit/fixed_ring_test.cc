#include "common/fixed_ring.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

namespace blkmirror {
namespace {

std::vector<int> Items(FixedRing<int>& ring) {
  std::vector<int> out;
  for (size_t i = 0; i < ring.size(); ++i) out.push_back(ring[i]);
  return out;
}

TEST(FixedRingTest, KeepsOrderAcrossTheEndOfItsStorage) {
  FixedRing<int> ring(3);
  int next = 0, expect = 0;
  for (int round = 0; round < 10; ++round) {  // head and tail wrap many times
    while (!ring.full()) ring.push_back(next++);
    EXPECT_EQ(ring.size(), 3u);
    for (int k = 0; k < 2; ++k) {
      EXPECT_EQ(ring.front(), expect++);
      ring.pop_front();
    }
  }
  EXPECT_EQ(Items(ring), std::vector<int>({expect}));
}

TEST(FixedRingTest, EraseIfKeepsTheOthersInOrderWhereverTheFrontIs) {
  FixedRing<int> ring(5);
  for (int i = 0; i < 4; ++i) ring.push_back(i);
  ring.pop_front();
  ring.pop_front();
  for (int i = 4; i < 7; ++i) ring.push_back(i);  // [2 3 4 5 6], wrapped
  ring.erase_if([](int v) { return v % 2 == 0; });
  EXPECT_EQ(Items(ring), std::vector<int>({3, 5}));
  ring.push_back(7);
  ring.push_back(8);
  ring.push_back(9);
  EXPECT_TRUE(ring.full());
  EXPECT_EQ(Items(ring), std::vector<int>({3, 5, 7, 8, 9}));
}

TEST(FixedRingTest, APoppedSlotReleasesWhatItHeld) {
  auto held = std::make_shared<int>(1);
  FixedRing<std::shared_ptr<int>> ring(2);
  ring.push_back(held);
  EXPECT_EQ(held.use_count(), 2);
  ring.pop_front();
  EXPECT_EQ(held.use_count(), 1);
  ring.push_back(held);
  ring.erase_if([](const std::shared_ptr<int>&) { return true; });
  EXPECT_EQ(held.use_count(), 1);
  EXPECT_TRUE(ring.empty());
}

}  // namespace
}  // namespace blkmirror
