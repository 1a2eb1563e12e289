// MemBlockDevice: a BlockDevice in memory, for unit tests of the layers above the disk.
//
// Requests execute at Submit() and complete at the next Poll(), in submission order. The
// device keeps what was written since the last flush apart from what is durable, so a test can
// simulate a power loss (DropUnsynced) and check what an ack level promised.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "io/block_device.h"

namespace blkmirror::io {

class MemBlockDevice final : public BlockDevice {
 public:
  MemBlockDevice(std::string name, uint64_t size, uint32_t queue_depth = 64);

  uint64_t size() const override { return data_.size(); }
  const std::string& name() const override { return name_; }
  bool direct() const override { return false; }
  uint32_t alignment() const override { return 1; }
  uint32_t queue_depth() const override { return depth_; }
  uint32_t in_flight() const override { return static_cast<uint32_t>(done_.size() - head_); }

  Status Submit(std::span<const IoRequest> requests) override;
  size_t Poll(std::span<IoCompletion> out) override;

  // The current contents (what a read returns).
  std::span<const std::byte> contents() const { return data_; }
  std::span<std::byte> mutable_contents() { return data_; }
  // Contents as of the last completed flush, plus the dsync writes since.
  std::span<const std::byte> durable_contents() const { return durable_; }
  // Simulated power loss: everything written since the last flush (dsync writes aside) is lost.
  void DropUnsynced() { data_ = durable_; }
  uint64_t writes() const { return writes_; }
  uint64_t flushes() const { return flushes_; }
  uint64_t zeroes() const { return zeroes_; }

 private:
  std::string name_;
  uint32_t depth_;
  std::vector<std::byte> data_;
  std::vector<std::byte> durable_;
  std::vector<IoCompletion> done_;
  size_t head_ = 0;
  uint64_t writes_ = 0;
  uint64_t flushes_ = 0;
  uint64_t zeroes_ = 0;
};

}  // namespace blkmirror::io
