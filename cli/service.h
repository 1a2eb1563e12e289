// systemd's notification protocol, through libsystemd (sd_notify): READY=1 once the listeners
// are up, STATUS= lines, WATCHDOG=1 pings at half the unit's WatchdogSec= while the loop turns,
// STOPPING=1 on the way out. Outside systemd (no NOTIFY_SOCKET) every call does nothing. The
// units in systemd/ run `serve` and `volume` with Type=notify.
#pragma once

#include <cstdint>
#include <string_view>

namespace blkmirror::cli {

class ServiceNotifier {
 public:
  ServiceNotifier();

  void Ready(std::string_view status);
  void Status(std::string_view status);
  // From the loop, every turn: a watchdog ping when one is due.
  void Tick();
  void Stopping(std::string_view status);

 private:
  void Send(std::string_view state);
  uint64_t watchdog_ns_ = 0;  // 0: no watchdog
  uint64_t last_ping_ns_ = 0;
};

}  // namespace blkmirror::cli
