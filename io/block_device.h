// BlockDevice: the contract every disk backend implements (io_uring files and block devices,
// in-memory devices for tests, fault-injecting wrappers).
//
// Requests are submitted in batches and complete asynchronously, in any order. Submit() only
// queues (the SQEs of an io_uring backend go to the kernel with the loop's next Ring::Submit or
// Ring::Wait); Poll() returns finished requests and never blocks.
//
// Each completion carries `res` as io_uring does: the byte count, or a negated errno. A backend
// resubmits short transfers itself, so a read returns fewer bytes than asked only at the end of
// the device, and a write or flush never returns a short count.
//
// Buffers: `data` must stay valid and untouched until the request completes. When `buf_index`
// is not kNoBufIndex, `data` lies in the buffer with that fixed-buffer index of the pool
// registered with the device's ring, and the backend uses fixed-buffer I/O.
//
// Thread safety: none; a device belongs to its loop's thread.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "common/status.h"

namespace blkmirror::io {

enum class IoOp : uint8_t {
  kRead,
  kWrite,
  kFlush,  // fdatasync: every write completed before the flush was submitted is durable
  // [offset, offset + len) reads back as zeros from now on (no `data`). With `unmap` the
  // device may deallocate the range (punch a hole, discard); without it the range stays
  // allocated where the device can tell the difference. The result is 0 or -errno.
  kZero,
};

inline constexpr uint32_t kNoBufIndex = UINT32_MAX;

struct IoRequest {
  IoOp op = IoOp::kRead;
  uint64_t offset = 0;
  std::byte* data = nullptr;
  uint32_t len = 0;
  uint32_t buf_index = kNoBufIndex;
  uint64_t tag = 0;  // returned in the completion
  // kWrite, kZero: complete only once the data is durable (RWF_DSYNC: a FUA write, or the
  // write followed by a flush of what it wrote).
  bool dsync = false;
  bool unmap = false;  // kZero: the range may be deallocated
};

struct IoCompletion {
  uint64_t tag = 0;
  int32_t res = 0;  // bytes transferred (a flush: 0), or -errno
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // Size in bytes (a regular file's length, a block device's BLKGETSIZE64).
  virtual uint64_t size() const = 0;
  // The path or name, for error messages.
  virtual const std::string& name() const = 0;
  // True when requests aligned to alignment() bypass the page cache (O_DIRECT).
  virtual bool direct() const = 0;
  // Offset, length and address alignment for direct I/O; unaligned requests still work (the
  // backend routes them through the page cache).
  virtual uint32_t alignment() const = 0;
  // How many requests may be in flight at once.
  virtual uint32_t queue_depth() const = 0;
  virtual uint32_t in_flight() const = 0;

  // Queues the requests. Fails (queuing nothing) when they would exceed queue_depth() (requests
  // completed but not yet polled count) or a write or zero range lies outside the device. Reads may cross or
  // start past the end: they return what exists. An O_DIRECT read that crosses the end may
  // also have written the rest of the last aligned block of the buffer.
  virtual Status Submit(std::span<const IoRequest> requests) = 0;
  // Moves up to out.size() finished requests into `out`; returns how many. Never blocks.
  virtual size_t Poll(std::span<IoCompletion> out) = 0;
};

}  // namespace blkmirror::io
