// Prometheus metrics of `serve` and `volume` (--metrics HOST:PORT): GET /metrics answers in the
// text exposition format (version 0.0.4). The HTTP server is cpp-httplib's, on a thread of its
// own; the command's loop renders the metrics (once a second) and publishes the text, so the
// engine is never touched from another thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "common/status.h"
#include "engine/replica.h"
#include "engine/volume.h"

namespace httplib {
class Server;
}

namespace blkmirror::cli {

class MetricsServer {
 public:
  // Listens on `address` (HOST:PORT; port 0 picks one) and serves what Publish last gave.
  static Result<std::unique_ptr<MetricsServer>> Start(const std::string& address);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // "HOST:PORT" as bound.
  const std::string& address() const { return address_; }
  void Publish(std::string text);

 private:
  MetricsServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::string address_;
  std::mutex mu_;
  std::string text_;  // guarded by mu_
};

// The text format: families (HELP, TYPE) and their samples, label values escaped.
class MetricsText {
 public:
  using Labels = std::vector<std::pair<std::string_view, std::string>>;
  // Starts family `name` (a counter's name ends in _total).
  void Family(std::string_view name, std::string_view type, std::string_view help);
  void Sample(std::string_view name, const Labels& labels, double value);
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

// Every build: blkmirror_build_info{version, commit, transports} 1.
void BuildInfoMetrics(MetricsText& m);
// A replica target (serve): its sessions and what they wrote.
std::string ReplicaMetrics(const engine::ReplicaStats& stats, const std::string& target,
                           bool primary_connected);
// A volume: its I/O, and per replica: state, transport, acked, dirty and resync bytes.
std::string VolumeMetrics(const engine::VolumeStatus& status, const std::string& volume);

}  // namespace blkmirror::cli
