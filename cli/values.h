// The values a user gives blkmirror, as flags or in a resource file (cli/config.h): one parser
// per kind of value, so a flag and its key in a file take the same values with the same errors.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "common/status.h"
#include "proto/frame.h"

namespace blkmirror::cli {

// --transport: auto tries rdma, then dpdk where a DPDK port is given, then tcp.
inline constexpr std::array<std::string_view, 4> kTransportChoices = {"auto", "tcp", "rdma",
                                                                      "dpdk"};

// --log-level's values (and daemon.toml's log-level).
inline constexpr std::array<std::string_view, 6> kLogLevelChoices = {"trace", "debug", "info",
                                                                     "warn",  "error", "off"};

// --ack's values.
inline constexpr std::array<std::string_view, 3> kAckChoices = {"sent", "received", "durable"};

// --ack: sent, received or durable (the error names the text; the caller, the flag or key).
Result<proto::AckLevel> ParseAck(std::string_view text);

// A block size as the user typed it for `flag`: a multiple of 4K between 4K and 64M.
Result<uint32_t> ParseBlockSize(std::string_view text, std::string_view flag);

}  // namespace blkmirror::cli
