// How the loop of `serve` or `volume` is driven: as a command of its own (SIGINT/SIGTERM stop it,
// systemd hears from it directly) or as one resource of `blkmirror daemon` (cli/daemon.h), which
// stops it, gathers its status for the admin socket and changes its live settings.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/service.h"

namespace blkmirror::cli {

// How often the loops publish their status, metrics and systemd STATUS= line.
inline constexpr uint64_t kStatusIntervalNs = 1'000'000'000;

class Runner {
 public:
  virtual ~Runner() = default;

  // True once the loop should end (signal, or the daemon stopping this resource).
  virtual bool stop_requested() const = 0;
  // Why, for the log ("signal received").
  virtual std::string stop_reason() const = 0;
  // The listeners accept: systemd's READY=1, with a status line.
  virtual void Ready(std::string_view status) = 0;
  virtual void Status(std::string_view status) = 0;
  // Every turn of the loop: the watchdog's proof of life.
  virtual void Tick() = 0;
  virtual void Stopping(std::string_view why) = 0;
  // A line for scripts on stdout ("listening tcp 127.0.0.1:7100").
  virtual void Announce(std::string_view line) = 0;
  // What `blkmirror status NAME` shows, once a second.
  virtual void Publish(nlohmann::json status) { (void)status; }
  // A volume's background resync limit (bytes per second, 0: none) when the daemon changed it
  // since the last call, else nullopt.
  virtual std::optional<uint64_t> TakeResyncRate() { return std::nullopt; }
};

// A command of its own: SIGINT and SIGTERM stop it; systemd notifications go out directly.
class CommandRunner final : public Runner {
 public:
  CommandRunner();
  bool stop_requested() const override;
  std::string stop_reason() const override { return "signal received"; }
  void Ready(std::string_view status) override { service_.Ready(status); }
  void Status(std::string_view status) override { service_.Status(status); }
  void Tick() override { service_.Tick(); }
  void Stopping(std::string_view why) override { service_.Stopping(why); }
  void Announce(std::string_view line) override;

 private:
  ServiceNotifier service_;
};

// The lines `blkmirror status` prints for a volume's status object (what the volume publishes);
// throws nlohmann::json::exception on a malformed one.
std::vector<std::string> VolumeStatusLines(const nlohmann::json& status);

}  // namespace blkmirror::cli
