// ForwardingBlockDevice: a BlockDevice that forwards every call to another one it does not own
// (LevelDB's EnvWrapper idea). Tests hand a server a forwarder to a device they keep, so they
// can look at the device after the server is done with it; a fault-injecting device overrides
// just the calls it breaks.
#pragma once

#include "io/block_device.h"

namespace blkmirror::io {

class ForwardingBlockDevice : public BlockDevice {
 public:
  // `target` must outlive the forwarder.
  explicit ForwardingBlockDevice(BlockDevice& target) : target_(target) {}

  uint64_t size() const override { return target_.size(); }
  const std::string& name() const override { return target_.name(); }
  bool direct() const override { return target_.direct(); }
  uint32_t alignment() const override { return target_.alignment(); }
  uint32_t queue_depth() const override { return target_.queue_depth(); }
  uint32_t in_flight() const override { return target_.in_flight(); }
  Status Submit(std::span<const IoRequest> requests) override { return target_.Submit(requests); }
  size_t Poll(std::span<IoCompletion> out) override { return target_.Poll(out); }

 private:
  BlockDevice& target_;
};

}  // namespace blkmirror::io
