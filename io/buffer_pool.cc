#include "io/buffer_pool.h"

#include <sys/mman.h>

#include <cassert>
#include <cerrno>

#include <spdlog/spdlog.h>

namespace blkmirror::io {

BufferRef& BufferRef::operator=(BufferRef&& other) noexcept {
  if (this != &other) {
    Reset();
    pool_ = other.pool_;
    index_ = other.index_;
    data_ = other.data_;
    capacity_ = other.capacity_;
    other.pool_ = nullptr;
    other.data_ = nullptr;
    other.capacity_ = 0;
    other.index_ = 0;
  }
  return *this;
}

void BufferRef::Reset() {
  if (pool_ != nullptr) {
    pool_->Put(index_);
    pool_ = nullptr;
    data_ = nullptr;
    capacity_ = 0;
    index_ = 0;
  }
}

Result<std::unique_ptr<BufferPool>> BufferPool::Create(size_t buffer_size, size_t count,
                                                       HugePages huge) {
  if (buffer_size == 0 || buffer_size % 4096 != 0 || buffer_size > kMaxBufferSize) {
    return Status::Invalid("buffer pool: buffer size {} is not a multiple of 4096 between 4096 "
                           "and {}",
                           buffer_size, kMaxBufferSize);
  }
  if (count == 0 || count > (1u << 14)) {
    // io_uring registers at most 16384 fixed buffers.
    return Status::Invalid("buffer pool: {} buffers is outside 1..16384", count);
  }
  auto pool = std::unique_ptr<BufferPool>(new BufferPool());
  size_t bytes = buffer_size * count;
  bytes = (bytes + kHugePageSize - 1) / kHugePageSize * kHugePageSize;

  void* p = MAP_FAILED;
  if (huge != HugePages::kNever) {
    p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED && huge == HugePages::kRequired) {
      return Status::Errno(errno, fmt::format("buffer pool: cannot map {} MiB on 2 MiB hugepages "
                                              "(reserve them: echo N > /proc/sys/vm/nr_hugepages)",
                                              bytes >> 20));
    }
    pool->hugetlb_ = p != MAP_FAILED;
  }
  if (p == MAP_FAILED) {
    // Over-map by one hugepage to align the region to 2 MiB, so THP can back it.
    size_t span = bytes + kHugePageSize;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
      return Status::Errno(errno, fmt::format("buffer pool: cannot map {} MiB", bytes >> 20));
    }
    auto addr = reinterpret_cast<uintptr_t>(raw);
    uintptr_t aligned = (addr + kHugePageSize - 1) & ~(kHugePageSize - 1);
    if (aligned > addr) munmap(raw, aligned - addr);
    size_t tail = (addr + span) - (aligned + bytes);
    if (tail > 0) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
    p = reinterpret_cast<void*>(aligned);
    if (huge != HugePages::kNever) madvise(p, bytes, MADV_HUGEPAGE);
    // Touch every page now so the data path never takes a first-touch fault.
    madvise(p, bytes, MADV_POPULATE_WRITE);
  }
  pool->base_ = static_cast<std::byte*>(p);
  pool->region_bytes_ = bytes;
  pool->buffer_size_ = buffer_size;
  pool->count_ = count;
  pool->free_.resize(count);
  for (size_t i = 0; i < count; ++i) pool->free_[i] = static_cast<uint32_t>(count - 1 - i);
  pool->free_top_ = count;
  spdlog::debug("buffer pool: {} x {} KiB = {} MiB on {}", count, buffer_size >> 10, bytes >> 20,
                pool->hugetlb_ ? "2 MiB hugetlb pages" : "anonymous memory (THP advised)");
  return pool;
}

BufferPool::~BufferPool() {
  if (free_top_ != count_) {
    spdlog::error("buffer pool destroyed with {} of {} buffers still in use", count_ - free_top_,
                  count_);
  }
  if (base_ != nullptr) munmap(base_, region_bytes_);
}

std::optional<BufferRef> BufferPool::TryGet() {
  if (free_top_ == 0) return std::nullopt;
  uint32_t index = free_[--free_top_];
  return BufferRef(this, index, BufferData(index), buffer_size_);
}

void BufferPool::Put(uint32_t index) {
  assert(index < count_ && free_top_ < count_);
  free_[free_top_++] = index;
}

bool BufferPool::Contains(const void* p, size_t len) const {
  auto* b = static_cast<const std::byte*>(p);
  return b >= base_ && len <= region_bytes_ && b + len <= base_ + region_bytes_;
}

}  // namespace blkmirror::io
