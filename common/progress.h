// Progress: one status line on stderr for long work (bytes, rate, ETA), redrawn at most twice a
// second. On a terminal it redraws in place; with --progress forced on a pipe it prints lines.
#pragma once

#include <cstdint>
#include <string>

namespace blkmirror {

class Progress {
 public:
  // `enabled`: draw at all. `label`: what is being done ("push", "verify").
  Progress(std::string label, uint64_t total_bytes, bool enabled);
  ~Progress();
  void Update(uint64_t done_bytes);
  void Finish();

 private:
  void Draw(uint64_t done_bytes, bool final);
  std::string label_;
  uint64_t total_;
  bool enabled_;
  bool tty_;
  bool finished_ = false;
  uint64_t start_ns_;
  uint64_t last_draw_ns_ = 0;
};

}  // namespace blkmirror
