// DirtyBitmap on real files: what reaches the disk, and when (the crash-safety ordering).
#include "engine/dirty_bitmap.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iterator>

namespace blkmirror::engine {
namespace {

class DirtyBitmapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bitmap-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/peer.bitmap";
    key_.block_size = 4096;
    key_.volume_size = 100000 * 4096ull + 17;  // 100001 blocks, not a multiple of 8
    key_.volume_id.bytes[0] = 1;
    key_.replica_id.bytes[0] = 2;
  }
  void TearDown() override {
    unlink(path_.c_str());
    unlink((path_ + ".copy").c_str());
    rmdir(dir_.c_str());
  }

  std::unique_ptr<DirtyBitmap> Open(const BitmapKey& key, bool* existed) {
    auto b = DirtyBitmap::Open(path_, key, existed);
    EXPECT_TRUE(b.ok()) << b.status().message();
    return b.ok() ? std::move(b).value() : nullptr;
  }

  // The bit for `block` as the file holds it now (what a crash would leave: Sync writes with
  // pwrite + fdatasync, so the file's contents are what is durable after a Sync).
  bool OnDisk(const std::string& path, uint64_t block) {
    std::ifstream in(path, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(4096 + block / 8));
    char c = 0;
    in.read(&c, 1);
    return (static_cast<uint8_t>(c) >> (block % 8)) & 1;
  }

  std::string dir_, path_;
  BitmapKey key_;
};

TEST_F(DirtyBitmapTest, ANewBitmapIsAllDirtyAndDurable) {
  bool existed = true;
  auto b = Open(key_, &existed);
  EXPECT_FALSE(existed);
  EXPECT_EQ(b->blocks(), 100001u);
  EXPECT_EQ(b->CountSet(), 100001u);
  EXPECT_FALSE(b->has_unsynced_changes());
  EXPECT_TRUE(OnDisk(path_, 0));
  EXPECT_TRUE(OnDisk(path_, 100000));
  EXPECT_FALSE(OnDisk(path_, 100001));  // padding is clear
}

TEST_F(DirtyBitmapTest, ReopensWhatWasSynced) {
  bool existed = false;
  {
    auto b = Open(key_, &existed);
    for (uint64_t i = 0; i < 100001; i += 2) b->Clear(i);
    ASSERT_TRUE(b->Sync().ok());
  }
  auto b = Open(key_, &existed);
  EXPECT_TRUE(existed);
  EXPECT_EQ(b->CountSet(), 50000u);
  EXPECT_FALSE(b->Test(0));
  EXPECT_TRUE(b->Test(1));
}

TEST_F(DirtyBitmapTest, ASetIsOnDiskAfterSyncAndAClearIsNotBefore) {
  bool existed = false;
  auto b = Open(key_, &existed);
  b->ClearAll();
  ASSERT_TRUE(b->Sync().ok());
  EXPECT_FALSE(OnDisk(path_, 777));
  // The order the Replicator keeps: set, sync, only then send.
  b->Set(777);
  EXPECT_TRUE(b->has_unsynced_sets());
  EXPECT_FALSE(OnDisk(path_, 777)) << "not durable before Sync";
  ASSERT_TRUE(b->Sync().ok());
  EXPECT_TRUE(OnDisk(path_, 777));
  EXPECT_FALSE(b->has_unsynced_sets());
  // A clear (the durable ack) is lazy: until Sync, a crash keeps the bit: a resend, not a loss.
  b->Clear(777);
  EXPECT_FALSE(b->has_unsynced_sets());
  EXPECT_TRUE(b->has_unsynced_changes());
  EXPECT_TRUE(OnDisk(path_, 777));
  // "Crash" now: a copy of the file is what a restarted primary would find.
  {
    std::ifstream in(path_, std::ios::binary);
    std::ofstream out(path_ + ".copy", std::ios::binary);
    out << in.rdbuf();
  }
  auto after_crash = DirtyBitmap::Open(path_ + ".copy", key_, &existed);
  ASSERT_TRUE(after_crash.ok());
  EXPECT_TRUE(existed);
  EXPECT_TRUE((*after_crash)->Test(777));
  ASSERT_TRUE(b->Sync().ok());
  EXPECT_FALSE(OnDisk(path_, 777));
}

TEST_F(DirtyBitmapTest, AnotherReplicaVolumeOrGeometryStartsOverAllDirty) {
  bool existed = false;
  {
    auto b = Open(key_, &existed);
    b->ClearAll();
    ASSERT_TRUE(b->Sync().ok());
  }
  for (int change = 0; change < 4; ++change) {
    BitmapKey other = key_;
    if (change == 0) other.replica_id.bytes[1] = 9;
    if (change == 1) other.volume_id.bytes[1] = 9;
    if (change == 2) other.block_size = 8192;
    if (change == 3) other.volume_size += 4096;
    auto b = Open(other, &existed);
    EXPECT_FALSE(existed) << "change " << change;
    EXPECT_EQ(b->CountSet(), other.blocks());
    // Put the original back (clean) for the next case.
    b.reset();
    auto orig = Open(key_, &existed);
    orig->ClearAll();
    ASSERT_TRUE(orig->Sync().ok());
  }
}

TEST_F(DirtyBitmapTest, ADamagedHeaderStartsOverAllDirty) {
  bool existed = false;
  {
    auto b = Open(key_, &existed);
    b->ClearAll();
    ASSERT_TRUE(b->Sync().ok());
  }
  {
    std::fstream f(path_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(30);
    f.put('\x55');
  }
  auto b = Open(key_, &existed);
  EXPECT_FALSE(existed);
  EXPECT_EQ(b->CountSet(), b->blocks());
}

TEST_F(DirtyBitmapTest, SetRangeSetsEveryBlockARangeTouches) {
  auto b = DirtyBitmap::InMemory(key_);
  b->ClearAll();
  b->SetRange(3 * 4096 - 2, 4);  // two bytes each side of a boundary: blocks 2 and 3
  EXPECT_TRUE(b->Test(2));
  EXPECT_TRUE(b->Test(3));
  EXPECT_EQ(b->CountSet(), 2u);
  b->ClearAll();
  b->SetRange(10 * 4096 + 100, 4096);  // unaligned, one block long: touches 10 and 11
  EXPECT_TRUE(b->Test(10));
  EXPECT_TRUE(b->Test(11));
  EXPECT_EQ(b->CountSet(), 2u);
  b->ClearAll();
  b->SetRange(20 * 4096, 4096);  // exactly one block
  EXPECT_EQ(b->CountSet(), 1u);
  b->SetRange(30 * 4096, 0);  // empty
  EXPECT_EQ(b->CountSet(), 1u);
  b->ClearAll();
  b->SetRange(key_.volume_size - 1, 1 << 20);  // past the end: the last block only
  EXPECT_TRUE(b->Test(b->blocks() - 1));
  EXPECT_EQ(b->CountSet(), 1u);
  b->SetRange(key_.volume_size, 4096);  // wholly past the end: nothing
  EXPECT_EQ(b->CountSet(), 1u);
}

TEST_F(DirtyBitmapTest, InMemoryBitmapsNeverTouchADisk) {
  auto b = DirtyBitmap::InMemory(key_);
  EXPECT_EQ(b->CountSet(), b->blocks());
  b->Clear(5);
  EXPECT_TRUE(b->Sync().ok());
  EXPECT_FALSE(b->Test(5));
}

}  // namespace
}  // namespace blkmirror::engine
