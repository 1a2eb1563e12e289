// Monotonic time in nanoseconds, for latencies and deadlines, and durations in the same unit.
#pragma once

#include <chrono>
#include <cstdint>

namespace blkmirror {

// A duration as the nanoseconds NowNs() counts in: the one conversion for deadlines.
template <class Rep, class Period>
constexpr uint64_t ToNs(std::chrono::duration<Rep, Period> d) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

inline uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace blkmirror
