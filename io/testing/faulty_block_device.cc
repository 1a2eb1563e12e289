#include "io/testing/faulty_block_device.h"

#include <charconv>
#include <string>

#include <spdlog/spdlog.h>

namespace blkmirror::io {

Result<DiskFaultSpec> DiskFaultSpec::Parse(std::string_view text) {
  DiskFaultSpec spec;
  while (!text.empty()) {
    size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) return Status::Invalid("disk fault '{}': expected KEY=N", item);
    std::string_view key = item.substr(0, eq), value = item.substr(eq + 1);
    uint64_t n = 0;
    auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
    if (ec != std::errc() || p != value.data() + value.size()) {
      return Status::Invalid("disk fault '{}': '{}' is not a number", item, value);
    }
    if (key == "fail-write:nth" && n >= 1) {
      spec.fail_nth_write = n;
    } else if (key == "enospc-after") {
      spec.enospc_after_bytes = n;
    } else if (key == "eio-read:offset") {
      spec.eio_read_offset = n;
    } else {
      return Status::Invalid("unknown disk fault '{}' (known: fail-write:nth=N, "
                             "enospc-after=BYTES, eio-read:offset=O)",
                             item);
    }
  }
  return spec;
}

FaultyBlockDevice::FaultyBlockDevice(std::unique_ptr<BlockDevice> inner, DiskFaultSpec spec)
    : inner_(std::move(inner)), spec_(spec) {
  failed_.reserve(inner_->queue_depth());
  pass_.reserve(inner_->queue_depth());
}

Status FaultyBlockDevice::Submit(std::span<const IoRequest> requests) {
  if (in_flight() + requests.size() > queue_depth()) {
    return Status::Error(ErrorCode::kBusy, name() + ": queue depth exceeded");
  }
  pass_.clear();
  for (const IoRequest& r : requests) {
    int err = 0;
    if (r.op == IoOp::kWrite) {
      ++writes_;
      if (spec_.fail_nth_write && writes_ == *spec_.fail_nth_write) err = EIO;
      if (spec_.enospc_after_bytes && bytes_written_ + r.len > *spec_.enospc_after_bytes) {
        err = ENOSPC;
      }
      if (err == 0) bytes_written_ += r.len;
    } else if (r.op == IoOp::kRead && spec_.eio_read_offset &&
               *spec_.eio_read_offset >= r.offset && *spec_.eio_read_offset < r.offset + r.len) {
      err = EIO;
    }
    if (err != 0) {
      ++injected_;
      spdlog::warn("TEST DISK FAULT: {} of {} bytes at offset {} of {} fails with {}",
                   r.op == IoOp::kRead ? "read" : "write", r.len, r.offset, name(),
                   std::strerror(err));
      if (failed_head_ == failed_.size()) {
        failed_.clear();
        failed_head_ = 0;
      }
      failed_.push_back(IoCompletion{r.tag, -err});
    } else {
      pass_.push_back(r);
    }
  }
  return pass_.empty() ? Status::Ok() : inner_->Submit(pass_);
}

size_t FaultyBlockDevice::Poll(std::span<IoCompletion> out) {
  size_t n = 0;
  while (n < out.size() && failed_head_ < failed_.size()) out[n++] = failed_[failed_head_++];
  return n + inner_->Poll(out.subspan(n));
}

}  // namespace blkmirror::io
