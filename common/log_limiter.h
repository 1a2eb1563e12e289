// LogLimiter: lets the first `burst` events of every period through and counts the rest, so a peer
// that makes the same thing happen thousands of times (a corrupted link, a connection flood)
// cannot flood the log. The line that follows a suppressed run says how many were left out.
//
// Thread safety: none.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <fmt/format.h>

namespace blkmirror {

// The default for repeated warnings: at most 10 lines a second for each kind.
inline constexpr uint32_t kLogBurst = 10;
inline constexpr uint64_t kLogPeriodNs = 1'000'000'000;

// What to append to the line after a suppressed run: " (N more like it left out)", or "".
inline std::string LeftOut(uint64_t n) {
  return n == 0 ? std::string() : fmt::format(" ({} more like it left out)", n);
}

class LogLimiter {
 public:
  LogLimiter(uint32_t burst, uint64_t period_ns) : burst_(burst), period_ns_(period_ns) {}

  // When this event may be logged: the number of events left out since the last one that was
  // (to say in the line). nullopt: leave it out.
  std::optional<uint64_t> Allow(uint64_t now_ns) {
    if (now_ns - period_start_ns_ >= period_ns_ || !started_) {
      started_ = true;
      period_start_ns_ = now_ns;
      in_period_ = 0;
    }
    if (in_period_ >= burst_) {
      ++suppressed_;
      return std::nullopt;
    }
    ++in_period_;
    return TakeLeftOut();
  }

  // Events left out since the last one let through, counted as said: for a closing line.
  uint64_t TakeLeftOut() {
    uint64_t left_out = suppressed_;
    suppressed_ = 0;
    return left_out;
  }

 private:
  uint32_t burst_;
  uint64_t period_ns_;
  bool started_ = false;
  uint64_t period_start_ns_ = 0;
  uint32_t in_period_ = 0;
  uint64_t suppressed_ = 0;
};

}  // namespace blkmirror
