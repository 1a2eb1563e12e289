// KeptTarget: a replica target for tests, opened over a device the test keeps (an in-memory one,
// usually), so the test can look at what was written after the server is done with it.
#pragma once

#include <memory>

#include "engine/replica.h"
#include "io/forwarding_block_device.h"

namespace blkmirror::engine::testing {

// Opens `device` (which must outlive the server) for every session; a volume larger than it is
// refused, as a real target that cannot hold it would be.
inline TargetOpener KeptTarget(io::BlockDevice& device) {
  return [&device](uint64_t volume_size,
                   TargetUse) -> Result<std::unique_ptr<io::BlockDevice>> {
    if (volume_size > device.size()) {
      return Status::Error(ErrorCode::kRefused, "the volume does not fit the test target");
    }
    return std::unique_ptr<io::BlockDevice>(std::make_unique<io::ForwardingBlockDevice>(device));
  };
}

}  // namespace blkmirror::engine::testing
