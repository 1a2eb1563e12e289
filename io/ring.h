// Ring: the event loop's one io_uring, shared by the block devices and transports of a thread.
//
// Every operation in flight is a preallocated RingOp whose address is the SQE's user_data; on
// completion the ring calls `op->handler->OnCqe(op, res, flags)`. Users prepare SQEs with
// GetSqe() at any time; nothing reaches the kernel until the owner of the loop calls Submit()
// or Wait(), so every SQE prepared in one loop iteration goes in one io_uring_enter (batching).
//
// Backends that have their own completion source (an RDMA CQ channel, a DPDK poll) attach it to
// the ring (a POLL_ADD on its fd) so that Wait() wakes for it too.
//
// Thread safety: none; the ring belongs to the thread that runs the loop.
#pragma once

#include <liburing.h>

#include <chrono>
#include <cstdint>
#include <memory>

#include "common/status.h"

namespace blkmirror::io {

class BufferPool;
struct RingOp;

class RingHandler {
 public:
  virtual void OnCqe(RingOp* op, int32_t res, uint32_t flags) = 0;

 protected:
  ~RingHandler() = default;
};

struct RingOp {
  RingHandler* handler = nullptr;
};

class Ring {
 public:
  // `entries` SQEs; the CQ is sized for 4x as many completions in flight.
  static Result<std::unique_ptr<Ring>> Create(unsigned entries = 512);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // An SQE whose user_data is already set to `op`. Submits the queue first if it is full.
  io_uring_sqe* GetSqe(RingOp* op);

  // Hands every prepared SQE to the kernel and dispatches the completions already posted;
  // never blocks.
  Status Submit();
  // Dispatches every completion already posted; never blocks. Returns how many.
  size_t Dispatch();
  // Submits what is prepared, waits until at least one completion arrives or `timeout` passes,
  // then dispatches. A negative timeout waits without limit.
  Status Wait(std::chrono::microseconds timeout);

  // Registers every buffer of the pool as a fixed buffer (index = buffer index). Once per ring.
  Status RegisterBuffers(const BufferPool& pool);
  bool has_buffers() const { return buffers_registered_; }
  // Registers `fd` in the fixed-file table; returns its index.
  Result<int> RegisterFile(int fd);
  void UnregisterFile(int index);

  size_t pending_sqes() const { return io_uring_sq_ready(&ring_); }
  io_uring* raw() { return &ring_; }

 private:
  Ring() = default;
  static constexpr unsigned kFileSlots = 1024;
  io_uring ring_{};
  bool initialized_ = false;
  bool buffers_registered_ = false;
  uint8_t file_used_[kFileSlots] = {};
};

}  // namespace blkmirror::io
