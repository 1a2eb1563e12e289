#include "io/mem/mem_block_device.h"

#include <cstring>

namespace blkmirror::io {

MemBlockDevice::MemBlockDevice(std::string name, uint64_t size, uint32_t queue_depth)
    : name_(std::move(name)), depth_(queue_depth), data_(size), durable_(size) {
  done_.reserve(queue_depth);
}

Status MemBlockDevice::Submit(std::span<const IoRequest> requests) {
  if (in_flight() + requests.size() > depth_) {
    return Status::Error(ErrorCode::kBusy, fmt::format("{}: queue depth {} exceeded", name_, depth_));
  }
  for (const IoRequest& r : requests) {
    if ((r.op == IoOp::kWrite || r.op == IoOp::kZero) &&
        (r.offset > data_.size() || r.len > data_.size() - r.offset)) {
      return Status::Invalid("{}: write of {} at {} beyond the size {}", name_, r.len, r.offset,
                             data_.size());
    }
  }
  if (head_ > 0) {
    // Compact, so the vector never grows past the queue depth it reserved.
    done_.erase(done_.begin(), done_.begin() + static_cast<ptrdiff_t>(head_));
    head_ = 0;
  }
  for (const IoRequest& r : requests) {
    int32_t res = 0;
    switch (r.op) {
      case IoOp::kRead: {
        // Like a file: a read at or past the end returns what exists (possibly nothing).
        uint64_t n = r.offset >= data_.size() ? 0 : std::min<uint64_t>(r.len, data_.size() - r.offset);
        std::memcpy(r.data, data_.data() + r.offset, n);
        res = static_cast<int32_t>(n);
        break;
      }
      case IoOp::kWrite:
        std::memcpy(data_.data() + r.offset, r.data, r.len);
        if (r.dsync) std::memcpy(durable_.data() + r.offset, r.data, r.len);
        res = static_cast<int32_t>(r.len);
        ++writes_;
        break;
      case IoOp::kFlush:
        durable_ = data_;
        ++flushes_;
        break;
      case IoOp::kZero:
        std::memset(data_.data() + r.offset, 0, r.len);
        if (r.dsync) std::memset(durable_.data() + r.offset, 0, r.len);
        ++zeroes_;
        break;
    }
    done_.push_back(IoCompletion{r.tag, res});
  }
  return Status::Ok();
}

size_t MemBlockDevice::Poll(std::span<IoCompletion> out) {
  size_t n = 0;
  while (n < out.size() && head_ < done_.size()) out[n++] = done_[head_++];
  return n;
}

}  // namespace blkmirror::io
