// BufferPool: the one region of memory block data lives in.
//
// The pool maps `count` buffers of `buffer_size` bytes as one contiguous region, on 2 MiB
// hugepages (MAP_HUGETLB) where the system has them reserved, else on anonymous memory aligned to
// 2 MiB with MADV_HUGEPAGE. The region is registered once with io_uring (each buffer is one
// fixed-buffer index) and, by the transports that need it, with the NIC (verbs MR, DPDK mem).
//
// Ownership: a buffer is taken with TryGet() as a move-only BufferRef; whoever holds the
// BufferRef owns the buffer, and destroying the BufferRef returns it to the pool. Submitting I/O
// on a buffer moves the BufferRef into the submitter's in-flight slot until the completion.
//
// Thread safety: none. A pool belongs to the thread that runs its event loop (`_st` rule: every
// method is for the owning thread only). The pool must outlive every BufferRef it handed out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "common/status.h"

namespace blkmirror::io {

class BufferPool;

class BufferRef {
 public:
  BufferRef() = default;
  BufferRef(BufferRef&& other) noexcept { *this = std::move(other); }
  BufferRef& operator=(BufferRef&& other) noexcept;
  BufferRef(const BufferRef&) = delete;
  BufferRef& operator=(const BufferRef&) = delete;
  ~BufferRef() { Reset(); }

  explicit operator bool() const { return pool_ != nullptr; }
  std::byte* data() const { return data_; }
  size_t capacity() const { return capacity_; }
  // The io_uring fixed-buffer index (== the buffer's index in the pool).
  uint32_t index() const { return index_; }
  std::span<std::byte> span() const { return {data_, capacity_}; }
  BufferPool* pool() const { return pool_; }
  // Returns the buffer to its pool now.
  void Reset();

 private:
  friend class BufferPool;
  BufferRef(BufferPool* pool, uint32_t index, std::byte* data, size_t capacity)
      : pool_(pool), index_(index), data_(data), capacity_(capacity) {}
  BufferPool* pool_ = nullptr;
  uint32_t index_ = 0;
  std::byte* data_ = nullptr;
  size_t capacity_ = 0;
};

enum class HugePages : uint8_t {
  kAuto,      // MAP_HUGETLB if reserved pages suffice, else THP-advised anonymous memory
  kRequired,  // fail unless MAP_HUGETLB succeeds
  kNever,     // plain anonymous memory (tests)
};

class BufferPool {
 public:
  static constexpr size_t kHugePageSize = size_t{2} << 20;
  // Largest buffer: a maximal block (64 MiB) plus headroom, with margin. With at most 16384
  // buffers the region size cannot overflow.
  static constexpr size_t kMaxBufferSize = size_t{1} << 30;

  // `buffer_size` must be a multiple of 4096. The region is rounded up to whole hugepages.
  static Result<std::unique_ptr<BufferPool>> Create(size_t buffer_size, size_t count,
                                                    HugePages huge = HugePages::kAuto);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A free buffer, or nullopt when all are in use. Never allocates.
  std::optional<BufferRef> TryGet();

  size_t buffer_size() const { return buffer_size_; }
  size_t count() const { return count_; }
  size_t available() const { return free_top_; }
  std::byte* base() const { return base_; }
  size_t region_bytes() const { return region_bytes_; }
  // True when the region is on MAP_HUGETLB pages (false: anonymous memory, maybe THP).
  bool on_hugetlb() const { return hugetlb_; }
  std::byte* BufferData(uint32_t index) const { return base_ + size_t{index} * buffer_size_; }
  // True when [p, p+len) lies inside the region.
  bool Contains(const void* p, size_t len) const;

 private:
  friend class BufferRef;
  BufferPool() = default;
  void Put(uint32_t index);

  std::byte* base_ = nullptr;
  size_t region_bytes_ = 0;
  size_t buffer_size_ = 0;
  size_t count_ = 0;
  bool hugetlb_ = false;
  std::vector<uint32_t> free_;  // stack of free indexes; sized once at Create
  size_t free_top_ = 0;
};

}  // namespace blkmirror::io
