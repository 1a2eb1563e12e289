#include "common/units.h"

#include <cctype>
#include <charconv>

namespace blkmirror {

Result<uint64_t> ParseSize(std::string_view text) {
  uint64_t value = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || p == text.data()) {
    return Status::Invalid("'{}' is not a size (examples: 4096, 4K, 1M, 2G)", text);
  }
  std::string suffix;
  for (const char* q = p; q != text.data() + text.size(); ++q) {
    suffix.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(*q))));
  }
  uint64_t mult = 1;
  if (suffix.empty() || suffix == "B") {
    mult = 1;
  } else if (suffix == "K" || suffix == "KB" || suffix == "KIB") {
    mult = uint64_t{1} << 10;
  } else if (suffix == "M" || suffix == "MB" || suffix == "MIB") {
    mult = uint64_t{1} << 20;
  } else if (suffix == "G" || suffix == "GB" || suffix == "GIB") {
    mult = uint64_t{1} << 30;
  } else if (suffix == "T" || suffix == "TB" || suffix == "TIB") {
    mult = uint64_t{1} << 40;
  } else {
    return Status::Invalid("'{}': unknown size suffix '{}' (use K, M, G or T)", text, suffix);
  }
  if (value > UINT64_MAX / mult) return Status::Invalid("'{}' is too large", text);
  return value * mult;
}

std::string FormatBytes(double bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (bytes >= 1024 && u < 5) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, kUnits[u]);
}

std::string FormatRate(double bps) {
  static const char* kUnits[] = {"B/s", "kB/s", "MB/s", "GB/s", "TB/s"};
  int u = 0;
  while (bps >= 1000 && u < 4) {
    bps /= 1000;
    ++u;
  }
  return fmt::format("{:.2f} {}", bps, kUnits[u]);
}

}  // namespace blkmirror
