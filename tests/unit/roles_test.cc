// Roles: promote and demote on a node's kept state (cli/roles.h), and what a crash at every step
// of their one metadata write leaves: the old role or the new one, never a damaged file, and a
// promote run again after the crash starts exactly one new generation.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

#include "cli/roles.h"

namespace blkmirror::cli {
namespace {

class RolesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/blkmirror-roles.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    SetWriteCrashPointForTest(0);
    std::filesystem::remove_all(dir_);
  }

  NodeState Replica(bool consistent = true) {
    NodeState st;
    st.role = Role::kReplica;
    st.volume_id.bytes[0] = 7;
    st.generations.StartNew(0x10);
    st.generations.StartNew(0x20);
    st.generations.consistent = consistent;
    return st;
  }

  std::string dir_;
};

TEST_F(RolesTest, PromoteStartsAGenerationAndRefusesWhatWouldBeUnsafe) {
  auto p = Promoted(Replica(), false, "");
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->role, Role::kPrimary);
  EXPECT_NE(p->generations.current, 0x20u);
  ASSERT_FALSE(p->generations.history.empty());
  EXPECT_EQ(p->generations.history[0], 0x20u);

  auto connected = Promoted(Replica(), false, "10.0.0.1:7000");
  ASSERT_FALSE(connected.ok());
  EXPECT_EQ(connected.status().code(), ErrorCode::kDiverged);
  EXPECT_NE(connected.status().message().find("primary 10.0.0.1:7000 is connected"),
            std::string::npos);
  EXPECT_TRUE(Promoted(Replica(), true, "10.0.0.1:7000").ok()) << "--force";

  auto partial = Promoted(Replica(false), false, "");
  ASSERT_FALSE(partial.ok());
  EXPECT_NE(partial.status().message().find("inconsistent"), std::string::npos);
  EXPECT_TRUE(Promoted(Replica(false), true, "").ok()) << "--force";

  EXPECT_EQ(Promoted(NodeState{}, false, "").status().code(), ErrorCode::kNotFound);
  auto again = Promoted(*p, false, "");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->generations, p->generations) << "already primary: nothing changes";
}

TEST_F(RolesTest, DemoteKeepsTheGenerationsOrDiscardsThem) {
  auto primary = Promoted(Replica(), false, "").value();
  auto kept = Demoted(primary, false).value();
  EXPECT_EQ(kept.role, Role::kReplica);
  EXPECT_EQ(kept.generations, primary.generations);
  auto discarded = Demoted(primary, true).value();
  EXPECT_EQ(discarded.role, Role::kReplica);
  EXPECT_EQ(discarded.generations.current, 0u);
  EXPECT_TRUE(discarded.generations.history.empty());
  EXPECT_FALSE(discarded.generations.consistent);
  EXPECT_EQ(discarded.volume_id, primary.volume_id);
}

TEST_F(RolesTest, TheStateFileRoundTripsAndItsDamageIsNamed) {
  NodeState st = Replica();
  ASSERT_TRUE(WriteNodeState(dir_, st).ok());
  auto back = ReadNodeState(dir_);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->role, st.role);
  EXPECT_EQ(back->volume_id, st.volume_id);
  EXPECT_EQ(back->generations, st.generations);
  EXPECT_EQ(ReadNodeState(dir_ + "/none")->role, Role::kNone);
  ASSERT_TRUE(WriteKeyValues(dir_ + "/generations", {{"role", "primary"},
                                                     {"volume_id", std::string(32, '0')},
                                                     {"current", "xyz"},
                                                     {"consistent", "1"}})
                  .ok());
  auto bad = ReadNodeState(dir_);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(dir_ + "/generations: field current"),
            std::string::npos)
      << bad.status().message();
}

// kill -9 at each step of promote's write, then promote again: the file is always the old state
// or the new one, and the final state has exactly one new generation on top of the old.
TEST_F(RolesTest, APromoteCrashedAtAnyStepLeavesTheOldOrTheNewRoleAndCanBeRerun) {
  for (int step = 1; step <= 4; ++step) {
    SCOPED_TRACE("crash after step " + std::to_string(step));
    const NodeState before = Replica();
    ASSERT_TRUE(WriteNodeState(dir_, before).ok());
    SetWriteCrashPointForTest(step);
    auto crashed = PromoteDisk(dir_, false, "");
    SetWriteCrashPointForTest(0);
    ASSERT_FALSE(crashed.ok());
    auto after = ReadNodeState(dir_);
    ASSERT_TRUE(after.ok()) << after.status().message();
    if (step < 3) {
      EXPECT_EQ(after->role, Role::kReplica) << "not renamed yet: the old state";
      EXPECT_EQ(after->generations, before.generations);
    } else {
      EXPECT_EQ(after->role, Role::kPrimary) << "renamed: committed";
      EXPECT_EQ(after->generations.history[0], before.generations.current);
    }
    auto rerun = PromoteDisk(dir_, false, "");
    ASSERT_TRUE(rerun.ok()) << rerun.status().message();
    EXPECT_EQ(rerun->role, Role::kPrimary);
    ASSERT_EQ(rerun->generations.history.size(), before.generations.history.size() + 1);
    EXPECT_EQ(rerun->generations.history[0], before.generations.current)
        << "one new generation, whatever the crash";
    if (step >= 3) {
      EXPECT_EQ(rerun->generations, after->generations);
    }
  }
}

TEST_F(RolesTest, ADemoteCrashedAtAnyStepLeavesTheOldOrTheNewRole) {
  for (int step = 1; step <= 4; ++step) {
    SCOPED_TRACE("crash after step " + std::to_string(step));
    const NodeState before = Promoted(Replica(), false, "").value();
    ASSERT_TRUE(WriteNodeState(dir_, before).ok());
    SetWriteCrashPointForTest(step);
    ASSERT_FALSE(DemoteDisk(dir_, true).ok());
    SetWriteCrashPointForTest(0);
    auto after = ReadNodeState(dir_);
    ASSERT_TRUE(after.ok()) << after.status().message();
    EXPECT_EQ(after->role, step < 3 ? Role::kPrimary : Role::kReplica);
    EXPECT_EQ(after->generations.current, step < 3 ? before.generations.current : 0u);
  }
}

}  // namespace
}  // namespace blkmirror::cli
