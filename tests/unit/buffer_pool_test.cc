// BufferPool: argument checks, handing out and taking back buffers, BufferRef ownership.
#include "io/buffer_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace blkmirror::io {
namespace {

std::unique_ptr<BufferPool> MakePool(size_t buffer_size, size_t count,
                                     HugePages huge = HugePages::kNever) {
  auto r = BufferPool::Create(buffer_size, count, huge);
  EXPECT_TRUE(r.ok()) << r.status().message();
  return r.ok() ? std::move(r).value() : nullptr;
}

void ExpectCreateRejected(size_t buffer_size, size_t count, const std::string& needle) {
  auto r = BufferPool::Create(buffer_size, count, HugePages::kNever);
  ASSERT_FALSE(r.ok()) << "Create(" << buffer_size << ", " << count << ") succeeded";
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
}

TEST(BufferPool, CreateRejectsBadBufferSizes) {
  ExpectCreateRejected(0, 4, "buffer size 0");
  ExpectCreateRejected(1, 4, "buffer size 1");
  ExpectCreateRejected(4095, 4, "4095");
  ExpectCreateRejected(4097, 4, "4097");
  ExpectCreateRejected(6144, 4, "6144");
}

TEST(BufferPool, CreateRejectsBadCounts) {
  ExpectCreateRejected(4096, 0, "0 buffers");
  ExpectCreateRejected(4096, 16385, "16385 buffers");
  ExpectCreateRejected(4096, 1u << 20, "buffers");
}

TEST(BufferPool, CreateAcceptsTheBounds) {
  auto one = MakePool(4096, 1);
  ASSERT_NE(one, nullptr);
  EXPECT_EQ(one->count(), 1u);
  auto max = MakePool(4096, 16384);  // 64 MiB
  ASSERT_NE(max, nullptr);
  EXPECT_EQ(max->count(), 16384u);
  EXPECT_EQ(max->available(), 16384u);
}

// Regression: (2^52 + 4096) x 4096 wraps to 16 MiB; Create must refuse such sizes rather than
// map 16 MiB for 4096 "buffers" of 4 PiB each.
TEST(BufferPool, CreateRejectsSizesWhoseProductOverflows) {
  for (size_t buffer_size : {(size_t{1} << 52), (size_t{1} << 52) + 4096}) {
    auto r = BufferPool::Create(buffer_size, 4096, HugePages::kNever);
    EXPECT_FALSE(r.ok()) << "Create(" << buffer_size << ", 4096) returned a pool of "
                         << (r.ok() ? r.value()->region_bytes() : 0)
                         << " bytes for buffers of " << buffer_size << " bytes each";
  }
}

TEST(BufferPool, TryGetHandsOutDistinctAlignedNonOverlappingBuffersThenNothing) {
  constexpr size_t kSize = 3 * 4096;
  constexpr size_t kCount = 37;
  auto pool = MakePool(kSize, kCount);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->buffer_size(), kSize);
  EXPECT_EQ(pool->count(), kCount);
  EXPECT_EQ(pool->available(), kCount);
  // The region is whole 2 MiB hugepages, aligned to 2 MiB.
  EXPECT_GE(pool->region_bytes(), kSize * kCount);
  EXPECT_EQ(pool->region_bytes() % BufferPool::kHugePageSize, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool->base()) % BufferPool::kHugePageSize, 0u);
  EXPECT_FALSE(pool->on_hugetlb());

  std::vector<BufferRef> refs;
  std::set<uint32_t> indexes;
  for (size_t i = 0; i < kCount; ++i) {
    auto ref = pool->TryGet();
    ASSERT_TRUE(ref.has_value()) << "buffer " << i << " of " << kCount;
    ASSERT_TRUE(*ref);
    EXPECT_EQ(ref->pool(), pool.get());
    EXPECT_EQ(ref->capacity(), kSize);
    EXPECT_EQ(ref->span().size(), kSize);
    EXPECT_EQ(ref->span().data(), ref->data());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(ref->data()) % 4096, 0u);
    EXPECT_LT(ref->index(), kCount);
    EXPECT_EQ(ref->data(), pool->BufferData(ref->index()));
    EXPECT_GE(ref->data(), pool->base());
    EXPECT_LE(ref->data() + kSize, pool->base() + pool->region_bytes());
    EXPECT_TRUE(pool->Contains(ref->data(), kSize));
    EXPECT_TRUE(indexes.insert(ref->index()).second) << "index " << ref->index() << " twice";
    refs.push_back(std::move(*ref));
    EXPECT_EQ(pool->available(), kCount - i - 1);
  }
  EXPECT_FALSE(pool->TryGet().has_value());
  EXPECT_EQ(pool->available(), 0u);

  // No two buffers overlap.
  std::vector<std::byte*> starts;
  for (const auto& r : refs) starts.push_back(r.data());
  std::sort(starts.begin(), starts.end());
  for (size_t i = 1; i < starts.size(); ++i) {
    EXPECT_GE(starts[i] - starts[i - 1], static_cast<ptrdiff_t>(kSize));
  }
}

TEST(BufferPool, BuffersAreWritableOverTheirFullSize) {
  constexpr size_t kSize = 64 * 1024;
  constexpr size_t kCount = 16;
  auto pool = MakePool(kSize, kCount);
  ASSERT_NE(pool, nullptr);
  std::vector<BufferRef> refs;
  for (size_t i = 0; i < kCount; ++i) {
    auto ref = pool->TryGet();
    ASSERT_TRUE(ref.has_value());
    std::memset(ref->data(), static_cast<int>(ref->index() + 1), kSize);
    refs.push_back(std::move(*ref));
  }
  // Each buffer still holds its own pattern: nothing spilled into a neighbour.
  for (const auto& r : refs) {
    auto want = static_cast<std::byte>(r.index() + 1);
    for (size_t i = 0; i < kSize; ++i) {
      ASSERT_EQ(r.data()[i], want) << "buffer " << r.index() << " byte " << i;
    }
  }
}

TEST(BufferPool, DestroyingARefReturnsTheBuffer) {
  auto pool = MakePool(4096, 2);
  ASSERT_NE(pool, nullptr);
  {
    auto a = pool->TryGet();
    auto b = pool->TryGet();
    ASSERT_TRUE(a && b);
    EXPECT_EQ(pool->available(), 0u);
    EXPECT_FALSE(pool->TryGet().has_value());
  }
  EXPECT_EQ(pool->available(), 2u);
  // And they can be taken again.
  auto c = pool->TryGet();
  auto d = pool->TryGet();
  EXPECT_TRUE(c && d);
  EXPECT_NE(c->index(), d->index());
}

TEST(BufferPool, ResetReturnsTheBufferOnce) {
  auto pool = MakePool(4096, 3);
  ASSERT_NE(pool, nullptr);
  auto ref = pool->TryGet();
  ASSERT_TRUE(ref.has_value());
  EXPECT_EQ(pool->available(), 2u);
  ref->Reset();
  EXPECT_FALSE(*ref);
  EXPECT_EQ(ref->data(), nullptr);
  EXPECT_EQ(ref->pool(), nullptr);
  EXPECT_EQ(pool->available(), 3u);
  ref->Reset();  // a second Reset is a no-op
  EXPECT_EQ(pool->available(), 3u);
  ref.reset();  // and so is destroying the emptied ref
  EXPECT_EQ(pool->available(), 3u);
}

TEST(BufferPool, ReturnedBufferIsHandedOutAgain) {
  auto pool = MakePool(4096, 1);
  ASSERT_NE(pool, nullptr);
  auto a = pool->TryGet();
  ASSERT_TRUE(a.has_value());
  std::byte* p = a->data();
  uint32_t index = a->index();
  a->Reset();
  auto b = pool->TryGet();
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->data(), p);
  EXPECT_EQ(b->index(), index);
}

TEST(BufferPool, MoveConstructionTransfersOwnership) {
  auto pool = MakePool(4096, 2);
  ASSERT_NE(pool, nullptr);
  auto opt = pool->TryGet();
  ASSERT_TRUE(opt.has_value());
  BufferRef a = std::move(*opt);
  std::byte* p = a.data();
  uint32_t index = a.index();
  BufferRef b(std::move(a));
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.pool(), nullptr);
  EXPECT_TRUE(b);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.index(), index);
  EXPECT_EQ(b.capacity(), 4096u);
  EXPECT_EQ(pool->available(), 1u);
  a.Reset();  // nothing to return
  EXPECT_EQ(pool->available(), 1u);
  opt.reset();  // the optional's moved-from ref: nothing to return either
  EXPECT_EQ(pool->available(), 1u);
  b.Reset();
  EXPECT_EQ(pool->available(), 2u);
}

TEST(BufferPool, MoveAssignmentReturnsTheOverwrittenBuffer) {
  auto pool = MakePool(4096, 3);
  ASSERT_NE(pool, nullptr);
  BufferRef a = std::move(*pool->TryGet());
  BufferRef b = std::move(*pool->TryGet());
  EXPECT_EQ(pool->available(), 1u);
  std::byte* pb = b.data();
  a = std::move(b);  // a's old buffer goes back
  EXPECT_EQ(pool->available(), 2u);
  EXPECT_EQ(a.data(), pb);
  EXPECT_FALSE(b);  // NOLINT(bugprone-use-after-move)
  // Self-move keeps the buffer.
  BufferRef& alias = a;
  a = std::move(alias);
  EXPECT_TRUE(a);
  EXPECT_EQ(a.data(), pb);
  EXPECT_EQ(pool->available(), 2u);
  // Assigning an empty ref returns the buffer and leaves both empty.
  a = BufferRef();
  EXPECT_FALSE(a);
  EXPECT_EQ(pool->available(), 3u);
}

TEST(BufferPool, ManyMovesNeverReturnTwice) {
  auto pool = MakePool(4096, 4);
  ASSERT_NE(pool, nullptr);
  {
    std::vector<BufferRef> v;
    for (int i = 0; i < 4; ++i) v.push_back(std::move(*pool->TryGet()));
    std::vector<BufferRef> w;
    for (auto& r : v) w.push_back(std::move(r));
    std::optional<BufferRef> slot;
    slot = std::move(w[0]);
    w.erase(w.begin());
    EXPECT_EQ(pool->available(), 0u);
    v.clear();  // all moved-from
    EXPECT_EQ(pool->available(), 0u);
  }
  EXPECT_EQ(pool->available(), 4u);
  // With double returns, more than 4 buffers would now be handed out.
  std::vector<BufferRef> again;
  while (auto r = pool->TryGet()) again.push_back(std::move(*r));
  EXPECT_EQ(again.size(), 4u);
  std::set<uint32_t> indexes;
  for (const auto& r : again) indexes.insert(r.index());
  EXPECT_EQ(indexes.size(), 4u);
}

// Regression: an emptied ref (moved from, or Reset) must report capacity() == 0 and an empty
// span, not {nullptr, buffer_size}.
TEST(BufferPool, EmptiedRefHasAnEmptySpan) {
  auto pool = MakePool(8192, 2);
  ASSERT_NE(pool, nullptr);
  BufferRef a = std::move(*pool->TryGet());
  BufferRef b(std::move(a));
  EXPECT_EQ(a.capacity(), 0u) << "moved-from BufferRef keeps its capacity";  // NOLINT
  EXPECT_TRUE(a.span().empty()) << "moved-from BufferRef spans " << a.span().size()
                                << " bytes at nullptr";
  b.Reset();
  EXPECT_EQ(b.capacity(), 0u) << "Reset() BufferRef keeps its capacity";
  EXPECT_TRUE(b.span().empty());
  BufferRef empty;
  EXPECT_EQ(empty.capacity(), 0u);
  EXPECT_TRUE(empty.span().empty());
}

TEST(BufferPool, Contains) {
  auto pool = MakePool(4096, 4);
  ASSERT_NE(pool, nullptr);
  std::byte* base = pool->base();
  size_t region = pool->region_bytes();
  EXPECT_TRUE(pool->Contains(base, 1));
  EXPECT_TRUE(pool->Contains(base, region));
  EXPECT_TRUE(pool->Contains(base + 4096, 4096));
  EXPECT_TRUE(pool->Contains(base + region - 1, 1));
  EXPECT_FALSE(pool->Contains(base + region - 1, 2));
  EXPECT_FALSE(pool->Contains(base, region + 1));
  EXPECT_FALSE(pool->Contains(base - 1, 1));
  EXPECT_FALSE(pool->Contains(base + region, 1));
  EXPECT_FALSE(pool->Contains(base + 4096, SIZE_MAX));  // a length that would wrap
  int on_stack = 0;
  EXPECT_FALSE(pool->Contains(&on_stack, sizeof on_stack));
  auto heap = std::make_unique<char[]>(64);
  EXPECT_FALSE(pool->Contains(heap.get(), 64));
}

TEST(BufferPool, HugePagesNeverUsesAnonymousMemory) {
  auto pool = MakePool(2 << 20, 2, HugePages::kNever);
  ASSERT_NE(pool, nullptr);
  EXPECT_FALSE(pool->on_hugetlb());
  auto ref = pool->TryGet();
  ASSERT_TRUE(ref.has_value());
  std::memset(ref->data(), 0x5A, ref->capacity());
}

TEST(BufferPool, HugePagesAutoAlwaysWorks) {
  // kAuto falls back to anonymous memory when no hugepages are reserved.
  auto r = BufferPool::Create(1 << 20, 4, HugePages::kAuto);
  ASSERT_TRUE(r.ok()) << r.status().message();
  auto& pool = r.value();
  auto ref = pool->TryGet();
  ASSERT_TRUE(ref.has_value());
  std::memset(ref->data(), 0xA5, ref->capacity());
  EXPECT_EQ(static_cast<uint8_t>(ref->data()[ref->capacity() - 1]), 0xA5);
}

TEST(BufferPool, HugePagesRequiredWorksOrNamesNrHugepages) {
  auto r = BufferPool::Create(1 << 20, 4, HugePages::kRequired);
  if (r.ok()) {
    EXPECT_TRUE(r.value()->on_hugetlb());
    auto ref = r.value()->TryGet();
    ASSERT_TRUE(ref.has_value());
    std::memset(ref->data(), 1, ref->capacity());
  } else {
    EXPECT_NE(r.status().message().find("nr_hugepages"), std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().err(), 0) << "the errno of the failed mmap";
  }
}

}  // namespace
}  // namespace blkmirror::io
