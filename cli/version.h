// What this build is: its version, the git commit it was built from, and its transports.
#pragma once

#include <string>

namespace blkmirror {

// "0.7.0".
const char* Version();
// `git describe --always --dirty` of the source tree at build time ("unknown" outside git).
const char* GitCommit();
// "blkmirror 0.7.0 (commit 1a2b3c4d5e6f)\ntransports: rdma, tcp" (the transports this build
// has, in the order --transport auto tries them).
std::string VersionText();

}  // namespace blkmirror
