#include "io/ring.h"

#include <sys/uio.h>

#include <vector>

#include <spdlog/spdlog.h>

#include "io/buffer_pool.h"

namespace blkmirror::io {

Result<std::unique_ptr<Ring>> Ring::Create(unsigned entries) {
  auto ring = std::unique_ptr<Ring>(new Ring());
  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
                 IORING_SETUP_TASKRUN_FLAG;
  params.cq_entries = entries * 4;
  int rc = io_uring_queue_init_params(entries, &ring->ring_, &params);
  if (rc == -EINVAL) {
    // Older kernels: drop the optional setup flags.
    params = {};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = entries * 4;
    rc = io_uring_queue_init_params(entries, &ring->ring_, &params);
  }
  if (rc < 0) {
    return Status::Errno(-rc, "io_uring_queue_init (is io_uring disabled by "
                              "kernel.io_uring_disabled or a seccomp policy?)");
  }
  ring->initialized_ = true;
  if (!(params.features & IORING_FEAT_EXT_ARG)) {
    return Status::Error(ErrorCode::kUnavailable,
                         "io_uring lacks IORING_FEAT_EXT_ARG (kernel 5.11+ needed)");
  }
  rc = io_uring_register_files_sparse(&ring->ring_, kFileSlots);
  if (rc < 0) return Status::Errno(-rc, "io_uring_register_files_sparse");
  return ring;
}

Ring::~Ring() {
  if (initialized_) io_uring_queue_exit(&ring_);
}

io_uring_sqe* Ring::GetSqe(RingOp* op) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // SQ full: hand it to the kernel (with SUBMIT_ALL it takes every entry) and retry.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  io_uring_sqe_set_data(sqe, op);
  return sqe;
}

Status Ring::Submit() {
  if (io_uring_sq_ready(&ring_) > 0) {
    int rc = io_uring_submit(&ring_);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      return Status::Errno(-rc, "io_uring_submit");
    }
  }
  Dispatch();
  return Status::Ok();
}

size_t Ring::Dispatch() {
  size_t total = 0;
  io_uring_cqe* cqes[64];
  for (;;) {
    unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 64);
    if (n == 0) break;
    for (unsigned i = 0; i < n; ++i) {
      // Copy out before advancing: the handler may prepare new SQEs and the CQ slot may be reused.
      auto* op = static_cast<RingOp*>(io_uring_cqe_get_data(cqes[i]));
      int32_t res = cqes[i]->res;
      uint32_t flags = cqes[i]->flags;
      io_uring_cq_advance(&ring_, 1);
      if (op != nullptr && op->handler != nullptr) op->handler->OnCqe(op, res, flags);
    }
    total += n;
  }
  return total;
}

Status Ring::Wait(std::chrono::microseconds timeout) {
  io_uring_cqe* cqe = nullptr;
  int rc;
  if (timeout.count() < 0) {
    rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, nullptr, nullptr);
  } else {
    __kernel_timespec ts{};
    ts.tv_sec = timeout.count() / 1000000;
    ts.tv_nsec = (timeout.count() % 1000000) * 1000;
    rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  }
  if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
    return Status::Errno(-rc, "io_uring_submit_and_wait_timeout");
  }
  Dispatch();
  return Status::Ok();
}

Status Ring::RegisterBuffers(const BufferPool& pool) {
  if (buffers_registered_) return Status::Invalid("io_uring: buffers already registered");
  std::vector<iovec> iov(pool.count());
  for (size_t i = 0; i < pool.count(); ++i) {
    iov[i].iov_base = pool.BufferData(static_cast<uint32_t>(i));
    iov[i].iov_len = pool.buffer_size();
  }
  int rc = io_uring_register_buffers(&ring_, iov.data(), static_cast<unsigned>(iov.size()));
  if (rc < 0) {
    return Status::Errno(-rc, fmt::format("io_uring_register_buffers ({} x {} KiB; raise "
                                          "RLIMIT_MEMLOCK if ENOMEM)",
                                          pool.count(), pool.buffer_size() >> 10));
  }
  buffers_registered_ = true;
  return Status::Ok();
}

Result<int> Ring::RegisterFile(int fd) {
  for (unsigned i = 0; i < kFileSlots; ++i) {
    if (file_used_[i]) continue;
    int rc = io_uring_register_files_update(&ring_, i, &fd, 1);
    if (rc < 0) return Status::Errno(-rc, "io_uring_register_files_update");
    file_used_[i] = 1;
    return static_cast<int>(i);
  }
  return Status::Error(ErrorCode::kBusy, "io_uring fixed-file table is full");
}

void Ring::UnregisterFile(int index) {
  if (index < 0 || index >= static_cast<int>(kFileSlots) || !file_used_[index]) return;
  int fd = -1;
  io_uring_register_files_update(&ring_, static_cast<unsigned>(index), &fd, 1);
  file_used_[index] = 0;
}

}  // namespace blkmirror::io
