#include "common/progress.h"

#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

#include "common/clock.h"
#include "common/units.h"

namespace blkmirror {

Progress::Progress(std::string label, uint64_t total_bytes, bool enabled)
    : label_(std::move(label)),
      total_(total_bytes),
      enabled_(enabled),
      tty_(isatty(STDERR_FILENO) != 0),
      start_ns_(NowNs()) {}

Progress::~Progress() { Finish(); }

void Progress::Update(uint64_t done) {
  if (!enabled_ || finished_) return;
  uint64_t now = NowNs();
  if (now - last_draw_ns_ < 500'000'000) return;
  last_draw_ns_ = now;
  Draw(done, false);
}

void Progress::Finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  if (tty_) std::fputs("\n", stderr);
}

void Progress::Draw(uint64_t done, bool) {
  double secs = static_cast<double>(NowNs() - start_ns_) / 1e9;
  double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
  std::string eta = "--:--";
  if (rate > 0 && done <= total_) {
    auto left = static_cast<uint64_t>(static_cast<double>(total_ - done) / rate);
    eta = fmt::format("{}:{:02d}", left / 60, left % 60);
  }
  double pct = total_ ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0;
  std::string line = fmt::format("{}: {} / {} ({:.1f}%)  {}  ETA {}", label_, FormatBytes(done),
                                 FormatBytes(total_), pct, FormatRate(rate), eta);
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s", line.c_str());
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace blkmirror
