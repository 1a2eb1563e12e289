// Generations: which of two nodes has the other's data, from their generation histories.
#include <gtest/gtest.h>

#include "engine/generations.h"

namespace blkmirror::engine {
namespace {

Generations G(uint64_t current, std::vector<uint64_t> history = {}) {
  Generations g;
  g.current = current;
  g.history = std::move(history);
  g.consistent = true;
  return g;
}

TEST(GenerationsTest, CompareTellsWhoHasWhose) {
  struct Case {
    const char* what;
    Generations mine, peer;
    Lineage want;
  };
  const Case cases[] = {
      {"both new", G(0), G(0), Lineage::kSame},
      {"a new peer is behind anyone", G(5, {4}), G(0), Lineage::kPeerBehind},
      {"a new node is behind its peer", G(0), G(5), Lineage::kPeerAhead},
      {"same current", G(5, {4}), G(5, {4}), Lineage::kSame},
      {"peer missed my last generation", G(6, {5, 4}), G(5, {4}), Lineage::kPeerBehind},
      {"peer missed two", G(7, {6, 5}), G(5, {4}), Lineage::kPeerBehind},
      {"I missed the peer's", G(5, {4}), G(6, {5, 4}), Lineage::kPeerAhead},
      {"both wrote since 5: split brain", G(7, {5, 4}), G(8, {5, 4}), Lineage::kSplitBrain},
      {"split brain further back", G(9, {7, 5}), G(8, {6, 5}), Lineage::kSplitBrain},
      {"nothing in common", G(3, {2}), G(8, {6}), Lineage::kUnrelated},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Compare(c.mine, c.peer), c.want) << c.what;
    // Symmetric: what I see as behind, the peer sees as ahead.
    Lineage back = Compare(c.peer, c.mine);
    Lineage want_back = c.want == Lineage::kPeerBehind  ? Lineage::kPeerAhead
                        : c.want == Lineage::kPeerAhead ? Lineage::kPeerBehind
                                                        : c.want;
    EXPECT_EQ(back, want_back) << c.what << " (the other way)";
  }
}

TEST(GenerationsTest, StartNewKeepsABoundedHistoryNewestFirst) {
  Generations g;
  g.StartNew(1);
  EXPECT_EQ(g.current, 1u);
  EXPECT_TRUE(g.history.empty()) << "no current before: nothing to remember";
  for (uint64_t id = 2; id <= 7; ++id) g.StartNew(id);
  EXPECT_EQ(g.current, 7u);
  ASSERT_EQ(g.history.size(), proto::kMaxHistory);
  EXPECT_EQ(g.history.front(), 6u);
  EXPECT_EQ(g.history.back(), 7u - proto::kMaxHistory);
  EXPECT_TRUE(g.Knows(6));
  EXPECT_FALSE(g.Knows(1));
  EXPECT_FALSE(g.Knows(0));
}

TEST(GenerationsTest, AdoptTakesThePrimarysHistoryAndWireRoundTrips) {
  Generations primary = G(9, {8, 7});
  Generations replica = G(7, {3});
  replica.consistent = false;
  replica.Adopt(primary);
  EXPECT_EQ(replica, primary);
  EXPECT_TRUE(replica.consistent);
  EXPECT_EQ(Generations::FromWire(primary.ToWire(), true), primary);
  EXPECT_NE(NewGenerationId(), 0u);
  EXPECT_EQ(GenerationHex(0), "none");
  EXPECT_EQ(Describe(G(0x2a, {0x1})), "000000000000002a (history 0000000000000001)");
}

}  // namespace
}  // namespace blkmirror::engine
