#include "cli/metrics.h"

#include <httplib.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "cli/version.h"
#include "transport/registry.h"
#include "transport/transport.h"

namespace blkmirror::cli {
namespace {

// A label value in the text format: backslash, double quote and newline escaped.
std::string Escape(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// The latency histograms' buckets (upper bounds, seconds): 50 µs to 2.5 s.
constexpr double kLatencyBoundsSeconds[] = {50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
                                            10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,
                                            2.5};

// The samples of histogram `name` (its family already started) for `labels`: cumulative buckets
// at kLatencyBoundsSeconds, +Inf, the sum in seconds and the count.
void Histogram(MetricsText& m, std::string_view name, const MetricsText::Labels& labels,
               const LatencyHistogram& h) {
  const std::string bucket = std::string(name) + "_bucket";
  auto with_le = [&](std::string le) {
    MetricsText::Labels l = labels;
    l.emplace_back("le", std::move(le));
    return l;
  };
  for (double le : kLatencyBoundsSeconds) {
    m.Sample(bucket, with_le(fmt::format("{}", le)),
             static_cast<double>(h.CountAtMost(static_cast<uint64_t>(le * 1e9))));
  }
  m.Sample(bucket, with_le("+Inf"), static_cast<double>(h.count()));
  m.Sample(std::string(name) + "_sum", labels, static_cast<double>(h.sum()) / 1e9);
  m.Sample(std::string(name) + "_count", labels, static_cast<double>(h.count()));
}

constexpr engine::VolumePeerState kPeerStates[] = {
    engine::VolumePeerState::kConnecting, engine::VolumePeerState::kInSync,
    engine::VolumePeerState::kResyncing, engine::VolumePeerState::kLost,
    engine::VolumePeerState::kDiverged};

}  // namespace

void MetricsText::Family(std::string_view name, std::string_view type, std::string_view help) {
  out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void MetricsText::Sample(std::string_view name, const Labels& labels, double value) {
  out_ += name;
  if (!labels.empty()) {
    out_ += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i > 0) out_ += ',';
      out_ += fmt::format("{}=\"{}\"", labels[i].first, Escape(labels[i].second));
    }
    out_ += '}';
  }
  out_ += fmt::format(" {}\n", value);
}

void BuildInfoMetrics(MetricsText& m) {
  std::string transports;
  for (std::string_view t : transport::TransportNames()) {
    if (!transports.empty()) transports += ",";
    transports += t;
  }
  m.Family("blkmirror_build_info", "gauge", "The build: version, git commit, transports.");
  m.Sample("blkmirror_build_info",
           {{"version", Version()}, {"commit", GitCommit()}, {"transports", transports}}, 1);
}

std::string ReplicaMetrics(const engine::ReplicaStats& stats, const std::string& target,
                           bool primary_connected) {
  MetricsText m;
  BuildInfoMetrics(m);
  const MetricsText::Labels l = {{"target", target}};
  auto counter = [&](std::string_view name, std::string_view help, uint64_t v) {
    m.Family(name, "counter", help);
    m.Sample(name, l, static_cast<double>(v));
  };
  counter("blkmirror_replica_sessions_total", "Sessions accepted (write and verify).",
          stats.sessions);
  counter("blkmirror_replica_auth_failures_total", "Primaries refused by the key check.",
          stats.auth_failures);
  counter("blkmirror_replica_blocks_written_total", "Blocks written to the target.",
          stats.blocks_written);
  counter("blkmirror_replica_bytes_written_total", "Bytes written to the target.",
          stats.bytes_written);
  counter("blkmirror_replica_crc_mismatches_total",
          "Blocks whose CRC32C did not match (never written).", stats.crc_mismatches);
  counter("blkmirror_replica_protocol_errors_total", "Sessions closed for a protocol error.",
          stats.protocol_errors);
  m.Family("blkmirror_replica_primary_connected", "gauge",
           "1 while a primary has a write session open.");
  m.Sample("blkmirror_replica_primary_connected", l, primary_connected ? 1 : 0);
  return m.Take();
}

std::string VolumeMetrics(const engine::VolumeStatus& s, const std::string& volume) {
  MetricsText m;
  BuildInfoMetrics(m);
  const MetricsText::Labels v = {{"volume", volume}};
  auto one = [&](std::string_view name, std::string_view type, std::string_view help, double x) {
    m.Family(name, type, help);
    m.Sample(name, v, x);
  };
  one("blkmirror_volume_size_bytes", "gauge", "The volume's size.", static_cast<double>(s.size));
  one("blkmirror_volume_quorum", "gauge", "Replicas a write needs.", s.quorum);
  one("blkmirror_volume_peers_in_session", "gauge", "Replicas in session now.", s.live_peers);
  one("blkmirror_volume_clients", "gauge", "NBD clients connected.",
      static_cast<double>(s.clients));
  one("blkmirror_volume_writes_total", "counter", "Write requests completed.",
      static_cast<double>(s.writes));
  one("blkmirror_volume_reads_total", "counter", "Read requests completed.",
      static_cast<double>(s.reads));
  one("blkmirror_volume_flushes_total", "counter", "Flush requests completed.",
      static_cast<double>(s.flushes));
  one("blkmirror_volume_failed_total", "counter", "Requests failed (EIO to the client).",
      static_cast<double>(s.failed));
  one("blkmirror_volume_written_bytes_total", "counter", "Bytes clients wrote.",
      static_cast<double>(s.bytes_written));
  one("blkmirror_volume_read_bytes_total", "counter", "Bytes clients read.",
      static_cast<double>(s.bytes_read));
  one("blkmirror_volume_in_flight", "gauge",
      "Writes at the replicas not yet acknowledged at the ack level.", s.in_flight);
  m.Family("blkmirror_volume_write_latency_seconds", "histogram",
           "Client writes, from the request to the reply (the local write and the ack level on "
           "the quorum).");
  Histogram(m, "blkmirror_volume_write_latency_seconds", v, s.write_latency);

  auto per_peer = [&](std::string_view name, std::string_view type, std::string_view help,
                      auto value) {
    m.Family(name, type, help);
    for (const auto& p : s.peers) {
      m.Sample(name, {{"volume", volume}, {"peer", p.peer}}, static_cast<double>(value(p)));
    }
  };
  m.Family("blkmirror_peer_state", "gauge",
           "1 for the state each replica is in (connecting, in_sync, resyncing, lost, diverged).");
  for (const auto& p : s.peers) {
    for (auto st : kPeerStates) {
      m.Sample("blkmirror_peer_state",
               {{"volume", volume}, {"peer", p.peer}, {"state", std::string(engine::VolumePeerStateName(st))}},
               p.state == st ? 1 : 0);
    }
  }
  m.Family("blkmirror_peer_transport_info", "gauge",
           "The transport each replica is reached over, and why auto fell back (1).");
  for (const auto& p : s.peers) {
    m.Sample("blkmirror_peer_transport_info",
             {{"volume", volume}, {"peer", p.peer}, {"transport", p.transport},
              {"fallback_reason", p.fallback_reason}},
             1);
  }
  using P = engine::VolumePeerStatus;
  per_peer("blkmirror_peer_acked_bytes_total", "counter",
           "Bytes the replica acknowledged at the volume's ack level.",
           [](const P& p) { return p.bytes_acked; });
  per_peer("blkmirror_peer_acked_blocks_total", "counter", "Blocks the replica acknowledged.",
           [](const P& p) { return p.blocks_acked; });
  per_peer("blkmirror_peer_dirty_bytes", "gauge", "Bytes the replica is known to miss.",
           [](const P& p) { return p.dirty_bytes; });
  per_peer("blkmirror_peer_resync_total_bytes", "gauge", "Bytes of the current resync.",
           [](const P& p) { return p.resync_total_bytes; });
  per_peer("blkmirror_peer_resync_done_bytes", "gauge", "Bytes of the current resync sent.",
           [](const P& p) { return p.resync_done_bytes; });
  per_peer("blkmirror_peer_resync_bytes_per_second", "gauge", "The resync's rate now.",
           [](const P& p) { return p.resync_bytes_per_second; });
  per_peer("blkmirror_peer_reconnects_total", "counter", "Reconnects after a loss.",
           [](const P& p) { return p.reconnects; });
  per_peer("blkmirror_peer_sent_bytes_total", "counter", "Bytes of blocks sent, resends included.",
           [](const P& p) { return p.bytes_sent; });
  per_peer("blkmirror_peer_sent_blocks_total", "counter",
           "Data and Zero frames sent, resends included.",
           [](const P& p) { return p.blocks_sent; });
  per_peer("blkmirror_peer_wire_bytes_total", "counter",
           "Payload bytes on the wire (compressed where they were, --compress).",
           [](const P& p) { return p.wire_bytes; });
  per_peer("blkmirror_peer_zero_bytes_total", "counter",
           "Bytes sent as zero ranges (blocks of zeros and TRIM/WRITE_ZEROES: no payload).",
           [](const P& p) { return p.zero_bytes; });
  per_peer("blkmirror_peer_retransmits_total", "counter", "Blocks sent again.",
           [](const P& p) { return p.retransmits; });
  per_peer("blkmirror_peer_crc_mismatches_total", "counter",
           "Blocks the replica received with a bad CRC32C (never written; sent again).",
           [](const P& p) { return p.crc_mismatches; });
  per_peer("blkmirror_peer_in_flight_bytes", "gauge", "Bytes of blocks sent and not yet acked.",
           [](const P& p) { return p.bytes_in_flight; });
  m.Family("blkmirror_peer_ack_latency_seconds", "histogram",
           "Each write to the replica, from its first send to its ack (received or durable, as "
           "the volume asks).");
  for (const auto& p : s.peers) {
    Histogram(m, "blkmirror_peer_ack_latency_seconds", {{"volume", volume}, {"peer", p.peer}},
              p.ack_latency);
  }
  return m.Take();
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& address) {
  ASSIGN_OR_RETURN(transport::Endpoint ep, transport::Endpoint::Parse(address));
  auto ms = std::unique_ptr<MetricsServer>(new MetricsServer());
  ms->server_ = std::make_unique<httplib::Server>();
  MetricsServer* self = ms.get();
  ms->server_->Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
    std::string text;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      text = self->text_;
    }
    res.set_content(text, "text/plain; version=0.0.4; charset=utf-8");
  });
  int port = ep.port;
  if (port == 0) {
    port = ms->server_->bind_to_any_port(ep.host.c_str());
  } else if (!ms->server_->bind_to_port(ep.host.c_str(), port)) {
    port = -1;
  }
  if (port <= 0) {
    return Status::Error(ErrorCode::kUnavailable,
                         fmt::format("--metrics {}: cannot listen there ({})", address,
                                     std::strerror(errno)));
  }
  ms->address_ = transport::Endpoint{ep.host, static_cast<uint16_t>(port)}.ToString();
  ms->thread_ = std::thread([self] { self->server_->listen_after_bind(); });
  return ms;
}

MetricsServer::~MetricsServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

void MetricsServer::Publish(std::string text) {
  std::lock_guard<std::mutex> lock(mu_);
  text_ = std::move(text);
}

}  // namespace blkmirror::cli
