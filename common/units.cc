#include "common/units.h"

#include <cctype>
#include <charconv>
#include <cstdlib>

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

Result<std::chrono::milliseconds> ParseDuration(std::string_view text) {
  std::string t(text);
  double unit_ms = 1000;  // plain numbers are seconds
  if (t.size() > 2 && t.substr(t.size() - 2) == "ms") {
    unit_ms = 1;
    t.resize(t.size() - 2);
  } else if (!t.empty() && t.back() == 's') {
    t.pop_back();
  }
  char* end = nullptr;
  double v = std::strtod(t.c_str(), &end);
  if (t.empty() || end != t.c_str() + t.size() || !(v >= 0) || v * unit_ms > 1e12) {
    return Status::Invalid("'{}' is not a duration (examples: 6, 6s, 500ms)", text);
  }
  return std::chrono::milliseconds(static_cast<int64_t>(v * unit_ms));
}

}  // namespace blkmirror
