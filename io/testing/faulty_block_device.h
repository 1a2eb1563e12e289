// FaultyBlockDevice: a forwarding BlockDevice that breaks one thing on purpose, for tests.
//
// It forwards every request to the device it wraps, except those its spec says to fail, which
// complete with the errno a failing disk would give, without touching the device:
//   fail-write:nth=N        the Nth write (counting from 1) fails with EIO
//   enospc-after:BYTES      writes that would take the total written past BYTES fail with ENOSPC
//   eio-read:offset=O       reads that cover byte O fail with EIO
// Specs combine with commas. The CLI's hidden --test-disk-fault (serve) and --test-source-fault
// (push) take the same text, and log loudly that they are active.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "io/block_device.h"

namespace blkmirror::io {

struct DiskFaultSpec {
  std::optional<uint64_t> fail_nth_write;
  std::optional<uint64_t> enospc_after_bytes;
  std::optional<uint64_t> eio_read_offset;

  static Result<DiskFaultSpec> Parse(std::string_view text);
};

class FaultyBlockDevice final : public BlockDevice {
 public:
  FaultyBlockDevice(std::unique_ptr<BlockDevice> inner, DiskFaultSpec spec);

  uint64_t size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }
  bool direct() const override { return inner_->direct(); }
  uint32_t alignment() const override { return inner_->alignment(); }
  uint32_t queue_depth() const override { return inner_->queue_depth(); }
  uint32_t in_flight() const override {
    return inner_->in_flight() + static_cast<uint32_t>(failed_.size() - failed_head_);
  }
  Status Submit(std::span<const IoRequest> requests) override;
  size_t Poll(std::span<IoCompletion> out) override;

  uint64_t faults_injected() const { return injected_; }

 private:
  std::unique_ptr<BlockDevice> inner_;
  DiskFaultSpec spec_;
  uint64_t writes_ = 0;
  uint64_t bytes_written_ = 0;
  uint64_t injected_ = 0;
  std::vector<IoCompletion> failed_;
  size_t failed_head_ = 0;
  std::vector<IoRequest> pass_;
};

}  // namespace blkmirror::io
