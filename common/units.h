// Byte sizes and durations as users type them ("4K", "1M", "1GiB", "512"; "6s", "500ms", "6")
// and as they read them.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace blkmirror {

// Binary multiples: K/KB/KiB = 1024, M = 1024^2, G, T. The error names the text.
Result<uint64_t> ParseSize(std::string_view text);

// "6", "6s", "1.5s", "500ms": plain numbers are seconds. The error names the text.
Result<std::chrono::milliseconds> ParseDuration(std::string_view text);

// "1.50 GiB", "4.00 KiB", "512 B".
std::string FormatBytes(double bytes);
// "1.23 GB/s" (decimal, as network and disk rates are quoted).
std::string FormatRate(double bytes_per_second);

}  // namespace blkmirror
