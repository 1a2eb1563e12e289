#include "cli/service.h"

#include <systemd/sd-daemon.h>

#include <cstring>
#include <string>

#include <spdlog/spdlog.h>

#include "common/clock.h"

namespace blkmirror::cli {

ServiceNotifier::ServiceNotifier() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(/*unset_environment=*/0, &usec) > 0) watchdog_ns_ = usec * 1000;
}

void ServiceNotifier::Send(std::string_view state) {
  const std::string text(state);
  if (int rc = sd_notify(/*unset_environment=*/0, text.c_str()); rc < 0) {
    spdlog::warn("systemd notification '{}' failed: {}", text, std::strerror(-rc));
  }
}

void ServiceNotifier::Ready(std::string_view status) {
  Send("READY=1\nSTATUS=" + std::string(status));
  last_ping_ns_ = NowNs();
}

void ServiceNotifier::Status(std::string_view status) { Send("STATUS=" + std::string(status)); }

void ServiceNotifier::Tick() {
  if (watchdog_ns_ == 0) return;
  const uint64_t now = NowNs();
  if (now - last_ping_ns_ < watchdog_ns_ / 2) return;
  last_ping_ns_ = now;
  Send("WATCHDOG=1");
}

void ServiceNotifier::Stopping(std::string_view status) {
  Send("STOPPING=1\nSTATUS=" + std::string(status));
}

}  // namespace blkmirror::cli
