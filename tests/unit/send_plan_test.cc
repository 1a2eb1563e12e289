// SendPlan: blocks per peer, taken in volume order, passes that pick up what was put back.
#include <gtest/gtest.h>

#include "engine/send_plan.h"

namespace blkmirror::engine {
namespace {

std::vector<SendPlan::Item> Drain(SendPlan& plan, SendPlan::Peers live) {
  std::vector<SendPlan::Item> out;
  while (auto item = plan.Next(live)) out.push_back(*item);
  return out;
}

TEST(SendPlanTest, TakesBlocksInVolumeOrderWithThePeersThatNeedThem) {
  SendPlan plan(200, 2);
  for (uint64_t b : {3, 64, 130, 199}) plan.Add(0, b);
  for (uint64_t b : {3, 65, 199}) plan.Add(1, b);
  EXPECT_EQ(plan.CountAny(0b11), 5u);
  auto items = Drain(plan, 0b11);
  ASSERT_EQ(items.size(), 5u);
  EXPECT_EQ(items[0].block, 3u);
  EXPECT_EQ(items[0].peers, 0b11u);
  EXPECT_EQ(items[1].block, 64u);
  EXPECT_EQ(items[1].peers, 0b01u);
  EXPECT_EQ(items[2].block, 65u);
  EXPECT_EQ(items[2].peers, 0b10u);
  EXPECT_EQ(items[3].block, 130u);
  EXPECT_EQ(items[4].block, 199u);
  EXPECT_EQ(items[4].peers, 0b11u);
  EXPECT_EQ(plan.Count(0), 0u);
  EXPECT_EQ(plan.Count(1), 0u);
}

TEST(SendPlanTest, PeersNotLiveAreLeftAsTheyAre) {
  SendPlan plan(10, 2);
  for (uint64_t b = 0; b < 10; ++b) {
    plan.Add(0, b);
    plan.Add(1, b);
  }
  auto items = Drain(plan, 0b01);  // peer 1 lost
  EXPECT_EQ(items.size(), 10u);
  for (const auto& i : items) EXPECT_EQ(i.peers, 0b01u);
  EXPECT_EQ(plan.Count(1), 10u);
  EXPECT_FALSE(plan.Next(0b01));
}

TEST(SendPlanTest, ABlockPutBackBehindTheCursorComesInTheNextPass) {
  SendPlan plan(128, 2);
  for (uint64_t b = 0; b < 128; ++b) {
    plan.Add(0, b);
    plan.Add(1, b);
  }
  // Peer 1 falls behind at block 10 and skips 10..19: they are put back as they complete.
  std::vector<uint64_t> order;
  while (auto item = plan.Next(0b11)) {
    order.push_back(item->block);
    if (item->block >= 10 && item->block < 20 && item->peers == 0b11) plan.Add(1, item->block);
  }
  ASSERT_EQ(order.size(), 138u);
  for (uint64_t b = 0; b < 128; ++b) EXPECT_EQ(order[b], b);
  for (uint64_t b = 0; b < 10; ++b) EXPECT_EQ(order[128 + b], 10 + b) << "second pass";
  EXPECT_EQ(plan.CountAny(0b11), 0u);
}

TEST(SendPlanTest, FillsFromADirtyBitmap) {
  BitmapKey key{4096, 100 * 4096, {}, {}};
  auto bitmap = DirtyBitmap::InMemory(key);
  bitmap->ClearAll();
  bitmap->Set(7);
  bitmap->Set(99);
  SendPlan plan(100, 1);
  plan.AddDirty(0, *bitmap);
  auto items = Drain(plan, 0b1);
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].block, 7u);
  EXPECT_EQ(items[1].block, 99u);
}

}  // namespace
}  // namespace blkmirror::engine
