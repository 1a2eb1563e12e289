#include "cli/run.h"

#include <signal.h>

#include <cstdio>

namespace blkmirror::cli {
namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

}  // namespace

CommandRunner::CommandRunner() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

bool CommandRunner::stop_requested() const { return g_stop.load(); }

void CommandRunner::Announce(std::string_view line) {
  std::printf("%.*s\n", static_cast<int>(line.size()), line.data());
  std::fflush(stdout);
}

}  // namespace blkmirror::cli
