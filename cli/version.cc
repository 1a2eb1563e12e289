#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/version.h"
#include "transport/registry.h"

namespace blkmirror {

const char* Version() { return BLKMIRROR_VERSION; }

std::string VersionText() {
  return fmt::format("blkmirror {} (commit {})\ntransports: {}", Version(), GitCommit(),
                     fmt::join(transport::TransportNames(), ", "));
}

}  // namespace blkmirror
