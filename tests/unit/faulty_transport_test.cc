// The fault specs of the test wrapper FaultyTransport: what they accept, and the errors for what
// they do not. (What they corrupt is checked end to end in replicator_test: exact fault counts.)
#include <gtest/gtest.h>

#include "transport/testing/faulty_transport.h"

namespace blkmirror::transport {
namespace {

TEST(FaultSpecTest, ParsesEveryNthWithTries) {
  auto spec = FaultSpec::Parse("flip-rx-data:every=3");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_EQ(spec->flip_every, 3u);
  EXPECT_EQ(spec->flip_tries, 1u);
  EXPECT_FALSE(spec->flip_offset);
  spec = FaultSpec::Parse("flip-rx-data:every=4,tries=5");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_EQ(spec->flip_every, 4u);
  EXPECT_EQ(spec->flip_tries, 5u);
  spec = FaultSpec::Parse("flip-rx-data:offset=1048576");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_EQ(spec->flip_offset, 1048576u);
  spec = FaultSpec::Parse("drop-tx-acks");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_TRUE(spec->drop_tx_acks);
}

TEST(FaultSpecTest, RefusesWhatItDoesNotKnowNamingIt) {
  for (const char* bad : {"flip-tx-data:every=3", "flip-rx-data:", "flip-rx-data:every=0",
                          "flip-rx-data:every=x", "flip-rx-data:every=3,tries=0",
                          "flip-rx-data:every=3,tries=65", "flip-rx-data:offset=1,tries=2",
                          "flip-rx-data:every=2,offset=4", "flip-rx-data:every", "flip-rx-data:size=3"}) {
    auto spec = FaultSpec::Parse(bad);
    EXPECT_FALSE(spec.ok()) << bad;
    EXPECT_EQ(spec.status().code(), ErrorCode::kInvalidArgument) << bad;
    EXPECT_NE(spec.status().message().find(bad), std::string::npos) << spec.status().message();
  }
}

}  // namespace
}  // namespace blkmirror::transport
