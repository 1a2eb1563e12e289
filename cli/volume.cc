// `blkmirror volume`: a replicated volume that clients write through NBD. The local disk is the
// primary copy; every write goes to it and to the replicas (`blkmirror serve`) before the client
// hears back; reads are local. See engine/volume.h.
//
// Metadata in --meta-dir (default <disk>.blkmirror, or /var/lib/blkmirror/<name> for a block
// device): `volume` (what this is), `peers` (each peer's last replica identity) and one dirty
// bitmap per replica identity. The running daemon writes its status, once a second, to
// <run-dir>/<name>.json (default /run/blkmirror), which `blkmirror status --volume NAME` reads.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/meta.h"
#include "cli/metrics.h"
#include "cli/run.h"
#include "cli/setup.h"
#include "common/clock.h"
#include "common/units.h"
#include "engine/session.h"
#include "engine/volume.h"
#include "frontend/nbd/nbd_frontend.h"
#include "io/uring/uring_block_device.h"

namespace blkmirror::cli {
namespace {

// The volume in one line, for systemd's STATUS=: "vol0: 1 of 2 replica(s) in session, 3 client(s)".
std::string ServiceLine(const engine::VolumeStatus& s, const std::string& name) {
  return fmt::format("{}: {} of {} replica(s) in session, {} client(s)", name, s.live_peers,
                     s.peers.size(), s.clients);
}

nlohmann::json StatusJson(const engine::VolumeStatus& s, const std::string& name,
                          const std::string& disk, const std::vector<std::string>& exports) {
  nlohmann::json peers = nlohmann::json::array();
  for (const auto& p : s.peers) {
    nlohmann::json j = {{"peer", p.peer},
                        {"transport", p.transport},
                        {"state", engine::VolumePeerStateName(p.state)},
                        {"replica_id", p.replica_id},
                        {"dirty_bytes", p.dirty_bytes},
                        {"resync_total_bytes", p.resync_total_bytes},
                        {"resync_done_bytes", p.resync_done_bytes},
                        {"resync_bytes_per_second", p.resync_bytes_per_second},
                        {"reconnects", p.reconnects},
                        {"bytes_acked", p.bytes_acked},
                        {"bytes_sent", p.bytes_sent},
                        {"zero_bytes", p.zero_bytes},
                        {"wire_bytes", p.wire_bytes},
                        {"bytes_in_flight", p.bytes_in_flight},
                        {"ack_latency_p50_us", p.ack_latency.Quantile(0.5) / 1000},
                        {"ack_latency_p99_us", p.ack_latency.Quantile(0.99) / 1000}};
    if (!p.lost_reason.empty()) j["lost_reason"] = p.lost_reason;
    if (!p.fallback_reason.empty()) j["fallback_reason"] = p.fallback_reason;
    if (p.state == engine::VolumePeerState::kResyncing && p.resync_bytes_per_second > 0) {
      j["resync_eta_seconds"] =
          static_cast<double>(p.resync_total_bytes - std::min(p.resync_total_bytes,
                                                              p.resync_done_bytes)) /
          p.resync_bytes_per_second;
    }
    peers.push_back(j);
  }
  return {{"role", "primary"},
          {"volume", name},
          {"disk", disk},
          {"exports", exports},
          {"pid", getpid()},
          {"size", s.size},
          {"block_size", s.block_size},
          {"ack", s.ack},
          {"quorum", s.quorum},
          {"resync_rate", s.resync_rate},
          {"in_flight", s.in_flight},
          {"live_peers", s.live_peers},
          {"clients", s.clients},
          {"writes", s.writes},
          {"reads", s.reads},
          {"flushes", s.flushes},
          {"zeroes", s.zeroes},
          {"failed", s.failed},
          {"bytes_written", s.bytes_written},
          {"bytes_read", s.bytes_read},
          {"peers", peers}};
}

// Replaces `path` with `text` atomically (a crash leaves the old file or the new one).
Status WriteFileAtomically(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out || !(out << text << "\n")) return Status::Errno(errno, "cannot write " + tmp);
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) return Status::Errno(errno, "cannot rename " + tmp);
  return Status::Ok();
}

}  // namespace

std::vector<std::string> VolumeStatusLines(const nlohmann::json& j) {
  std::vector<std::string> lines;
  lines.push_back(fmt::format(
      "volume {}: {}, {}, ack {}, quorum {}, {} replica(s) in session, {} client(s)",
      j["volume"].get<std::string>(), j["disk"].get<std::string>(),
      FormatBytes(j["size"].get<double>()), j["ack"].get<std::string>(),
      j["quorum"].get<unsigned>(), j["live_peers"].get<unsigned>(), j["clients"].get<size_t>()));
  for (const auto& p : j["peers"]) {
    std::string line = fmt::format("  {} ({}): {}, {} dirty", p["peer"].get<std::string>(),
                                   p["transport"].get<std::string>(),
                                   p["state"].get<std::string>(),
                                   FormatBytes(p["dirty_bytes"].get<double>()));
    if (p["state"] == "resyncing") {
      line += fmt::format(", resync {} of {}", FormatBytes(p["resync_done_bytes"].get<double>()),
                          FormatBytes(p["resync_total_bytes"].get<double>()));
      if (p.contains("resync_eta_seconds")) {
        line += fmt::format(" at {}/s, ETA {:.0f} s",
                            FormatBytes(p["resync_bytes_per_second"].get<double>()),
                            p["resync_eta_seconds"].get<double>());
      }
    }
    if (p.contains("lost_reason")) line += " (" + p["lost_reason"].get<std::string>() + ")";
    lines.push_back(std::move(line));
  }
  return lines;
}

std::string VolumeStatusPath(const std::string& run_dir, const std::string& name) {
  return run_dir + "/" + name + ".json";
}

int RunVolume(const VolumeArgs& args, Runner& runner) {
  auto fail = [](const Status& s, int code = kExitFailed) {
    PrintError("volume", s);
    return code;
  };
  auto ack = ParseAck(args.ack);
  if (!ack.ok()) return fail(ack.status().Context("--ack"), kExitUsage);
  auto block_size = ParseBlockSize(args.block_size, "--block-size");
  if (!block_size.ok()) return fail(block_size.status(), kExitUsage);
  Status replica_set = CheckReplicaSet(args.window, args.peers.size(), args.quorum.value_or(0));
  if (!replica_set.ok()) return fail(replica_set, kExitUsage);
  if (args.exports.empty()) {
    return fail(Status::Invalid("at least one --export (unix:PATH or HOST:PORT) is needed"),
                kExitUsage);
  }
  auto timeout = ParseDuration(args.peer_timeout);
  if (!timeout.ok()) return fail(timeout.status().Context("--peer-timeout"), kExitUsage);
  auto ack_timeout = args.ack_timeout.empty() ? Result<std::chrono::milliseconds>(*timeout)
                                              : ParseDuration(args.ack_timeout);
  if (!ack_timeout.ok()) return fail(ack_timeout.status().Context("--ack-timeout"), kExitUsage);
  uint64_t resync_rate = 0;
  if (!args.resync_rate.empty()) {
    auto rate = ParseSize(args.resync_rate);
    if (!rate.ok()) return fail(rate.status().Context("--resync-rate"), kExitUsage);
    resync_rate = *rate;
  }
  auto pool_size = ParseSize(args.pool_size);
  if (!pool_size.ok()) return fail(pool_size.status().Context("--pool-size"), kExitUsage);
  auto compress = ParseCompressArgs(args.compress, args.compress_mode);
  if (!compress.ok()) return fail(compress.status(), kExitUsage);
  std::vector<transport::Endpoint> endpoints;
  for (const std::string& p : args.peers) {
    auto ep = transport::Endpoint::Parse(p);
    if (!ep.ok()) return fail(ep.status().Context("--peer"), kExitUsage);
    endpoints.push_back(*ep);
  }
  std::optional<engine::Key> key;
  if (!args.key_file.empty()) {
    auto k = engine::LoadKeyFile(args.key_file);
    if (!k.ok()) return fail(k.status(), kExitUsage);
    key = *k;
  }
  auto info = io::StatPath(args.disk);
  if (!info.ok()) return fail(info.status().Context("--disk"));
  if (info->size == 0 || info->size % proto::kSectorSize != 0) {
    return fail(Status::Invalid("the disk {} has {} bytes: a volume needs a size that is a "
                                "positive multiple of {}",
                                args.disk, info->size, proto::kSectorSize));
  }
  const std::string name = args.name.empty() ? Basename(args.disk) : args.name;
  const uint32_t bs = *block_size;

  // Metadata: this node's role and generations first. A replica's disk is exported only once
  // promoted; a promoted one keeps the volume id it was a replica of.
  const std::string meta_dir =
      args.meta_dir.empty() ? DefaultMetaDir(args.disk, info->is_block_device) : args.meta_dir;
  Status made = EnsureDir(meta_dir);
  if (!made.ok()) return fail(made);
  auto node = ReadNodeState(meta_dir);
  if (!node.ok()) return fail(node.status());
  if (node->role == Role::kReplica) {
    return fail(Status::Error(ErrorCode::kDiverged,
                              fmt::format("{} is a replica of volume {} (generation {}): promote "
                                          "it first: blkmirror promote --disk {}",
                                          args.disk, engine::IdHex(node->volume_id),
                                          engine::Describe(node->generations), args.disk)),
                kExitRefused);
  }
  if (auto other = RunningProcess(meta_dir)) {
    return fail(Status::Error(ErrorCode::kBusy,
                              fmt::format("{} is in use by blkmirror {} (pid {}): one process per "
                                          "disk",
                                          args.disk, other->command, other->pid)));
  }
  auto volume_id = node->role == Role::kPrimary ? Result<proto::VolumeId>(node->volume_id)
                                                : VolumeIdFor(args.disk);
  if (!volume_id.ok()) return fail(volume_id.status());
  Status recorded = WriteKeyValues(meta_dir + "/volume",
                                   {{"volume_id", engine::IdHex(*volume_id)},
                                    {"disk", args.disk},
                                    {"name", name},
                                    {"block_size", std::to_string(bs)},
                                    {"volume_size", std::to_string(info->size)}});
  if (!recorded.ok()) return fail(recorded);
  const std::string peers_path = meta_dir + "/peers";
  auto read_known = ReadKeyValues(peers_path);
  KeyValues known = read_known.ok() ? *read_known : KeyValues{};

  // The loop: one pool for client payloads, reads, and resync copies; besides, the Replicator's
  // own buffers (compressed payloads).
  engine::ReplicatorOptions sizing;
  sizing.window = args.window;
  sizing.quorum = args.quorum.value_or(0);
  sizing.compress = *compress;
  const uint64_t count = *pool_size / bs;
  const uint64_t own = engine::Replicator::OwnBuffers(sizing, endpoints.size());
  if (count < 16 || count + own > 16384) {
    return fail(Status::Invalid("--pool-size {} holds {} blocks of {}{}: need 16 to 16384",
                                args.pool_size, count, bs,
                                own == 0 ? "" : fmt::format(" (and {} for --compress)", own)),
                kExitUsage);
  }
  if (Status io_path = EnterBlockIoPath(); !io_path.ok()) {
    spdlog::warn("volume: {}", io_path.message());
  }
  auto loop = MakeLoop(bs, count + own, 1024);
  if (!loop.ok()) return fail(loop.status());
  io::UringOpenOptions open_options;
  open_options.writable = true;
  open_options.queue_depth = static_cast<uint32_t>(count + 512);
  auto disk = io::OpenUringDevice(*loop->ring, args.disk, open_options);
  if (!disk.ok()) return fail(disk.status());
  transport::TransportOptions transport_options;
  transport_options.source_address = args.bind;
  ApplyDpdkArgs(args.dpdk, transport_options);
  ApplyTlsArgs(args.tls, key, transport_options);
  auto transports = MakeTransports(*loop, args.transport, "", transport_options);
  if (!transports.ok()) {
    return fail(transports.status(), transports.status().code() == ErrorCode::kInvalidArgument
                                         ? kExitUsage
                                         : kExitFailed);
  }

  proto::nbd::ExportInfo export_info;
  export_info.name = name;
  export_info.description = fmt::format("blkmirror volume {} ({})", name, args.disk);
  export_info.size = info->size;
  export_info.transmission_flags =
      proto::nbd::kFlagSendFlush | proto::nbd::kFlagSendFua | proto::nbd::kFlagSendTrim |
      proto::nbd::kFlagSendWriteZeroes | proto::nbd::kFlagCanMultiConn;
  export_info.min_block = proto::kSectorSize;
  export_info.preferred_block = 4096;
  export_info.max_payload = frontend::MaxPayloadFor(bs, 32 << 20);
  frontend::NbdFrontendOptions nbd_options;
  nbd_options.export_info = export_info;
  nbd_options.listen = args.exports;
  nbd_options.segment_size = bs;
  nbd_options.max_clients = args.max_clients;
  auto nbd = frontend::NbdFrontend::Create(*loop->ring, *loop->pool, nbd_options);
  if (!nbd.ok()) return fail(nbd.status(), kExitFailed);

  engine::VolumeOptions options;
  auto& r = options.replication;
  r.ack = *ack;
  r.block_size = bs;
  r.window = args.window;
  r.volume_size = info->size;
  r.volume_id = *volume_id;
  options.quorum = args.quorum.value_or(UINT32_MAX);
  r.peer_timeout = *timeout;
  r.ack_timeout = *ack_timeout;
  r.key = key;
  r.compress = *compress;
  for (const auto& ep : endpoints) {
    options.peers.push_back({transports->preferred.get(), ep, transports->fallback.get()});
    proto::ReplicaId id;
    options.last_replica_ids.push_back(ParseHex(known[ep.ToString()], id) ? id
                                                                          : proto::ReplicaId{});
    uint64_t synced_at = 0;
    const std::string& at = known[ep.ToString() + ".synced_at"];
    if (at.size() == 16) synced_at = std::strtoull(at.c_str(), nullptr, 16);
    options.peer_synced_at.push_back(synced_at);
  }
  options.bitmap_for = [meta_dir, bs, size = info->size, vid = *volume_id](
                           size_t, const proto::ReplicaId& id,
                           bool* existed) -> Result<std::unique_ptr<engine::DirtyBitmap>> {
    engine::BitmapKey bkey{bs, size, vid, id};
    return engine::DirtyBitmap::Open(BitmapPath(meta_dir, id), bkey, existed);
  };
  // What is known of each peer (<meta-dir>/peers): its replica identity, and the generation it
  // was last in sync at.
  auto remember = [&known, peers_path](const std::string& key, std::string value) {
    known[key] = std::move(value);
    Status s = WriteKeyValues(peers_path, known);
    if (!s.ok()) spdlog::warn("volume: {}", s.message());
  };
  options.remember_replica_id = [remember, endpoints](size_t peer, const proto::ReplicaId& id) {
    remember(endpoints[peer].ToString(), engine::IdHex(id));
  };
  options.remember_synced_at = [remember, endpoints](size_t peer, uint64_t g) {
    remember(endpoints[peer].ToString() + ".synced_at", engine::GenerationHex(g));
  };
  options.generations = node->generations;
  options.save_generations = [meta_dir, vid = *volume_id](const engine::Generations& g) {
    return WriteNodeState(meta_dir, NodeState{Role::kPrimary, vid, g});
  };
  options.resync_rate = resync_rate;
  auto volume = engine::Volume::Create(*loop->ring, *loop->pool, **disk, **nbd, options);
  if (!volume.ok()) return fail(volume.status());
  Status started = WriteProcessInfo(meta_dir, ProcessInfo{getpid(), "volume", ""});
  if (started.ok()) started = (*volume)->Start();
  while (started.ok() && !(*volume)->ready()) {
    if (runner.stop_requested()) {
      started = Status::Error(static_cast<ErrorCode>(ECANCELED),
                              fmt::format("{} before the replicas answered", runner.stop_reason()));
      break;
    }
    if ((*volume)->Step() == 0) started = loop->ring->Wait(std::chrono::milliseconds(20));
    if (started.ok()) started = (*volume)->failure();
  }
  if (!started.ok()) {
    RemoveProcessInfo(meta_dir);
    return fail(started, started.code() == ErrorCode::kDiverged ? kExitRefused : kExitFailed);
  }

  const std::string status_path = VolumeStatusPath(args.run_dir, name);
  Status run_dir = EnsureDir(args.run_dir);
  if (!run_dir.ok()) spdlog::warn("volume: {}; no status file", run_dir.message());

  const auto exports = (*nbd)->listening();
  // Scripts read the bound addresses (useful with port 0) from these lines.
  for (const auto& where : exports) runner.Announce("listening nbd " + where);

  std::unique_ptr<MetricsServer> metrics;
  if (!args.metrics.empty()) {
    auto started = MetricsServer::Start(args.metrics);
    if (!started.ok()) return fail(started.status());
    metrics = std::move(*started);
    metrics->Publish(VolumeMetrics((*volume)->status(), name));
    runner.Announce("listening metrics " + metrics->address());
  }
  io::Ring& ring = *loop->ring;
  runner.Publish(StatusJson((*volume)->status(), name, args.disk, exports));
  runner.Ready(ServiceLine((*volume)->status(), name));
  uint64_t last_status = 0;
  while (!runner.stop_requested()) {
    runner.Tick();
    if (auto rate = runner.TakeResyncRate()) {
      (*volume)->SetResyncRate(*rate);
      spdlog::info("volume: resync rate now {}", *rate == 0 ? std::string("unlimited")
                                                            : FormatBytes(static_cast<double>(*rate)) + "/s");
    }
    size_t events = (*volume)->Step();
    Status s = events == 0 ? ring.Wait(std::chrono::milliseconds(50)) : ring.Submit();
    if (!s.ok()) return fail(s);
    uint64_t now = NowNs();
    if (now - last_status >= kStatusIntervalNs) {
      last_status = now;
      const engine::VolumeStatus status = (*volume)->status();
      runner.Status(ServiceLine(status, name));
      if (metrics) metrics->Publish(VolumeMetrics(status, name));
      nlohmann::json json = StatusJson(status, name, args.disk, exports);
      if (run_dir.ok()) {
        Status w = WriteFileAtomically(status_path, json.dump());
        if (!w.ok()) spdlog::warn("volume: {}", w.message());
      }
      runner.Publish(std::move(json));
    }
  }
  const std::string why = runner.stop_reason() + "; finishing the requests in flight";
  runner.Stopping(why);
  spdlog::info("volume: {}", why);
  (*volume)->Shutdown();
  unlink(status_path.c_str());
  RemoveProcessInfo(meta_dir);
  return kExitOk;
}

int RunVolumeStatus(const StatusArgs& args) {
  auto fail = [](const Status& s, int code = kExitFailed) {
    PrintError("status", s);
    return code;
  };
  const std::string path = VolumeStatusPath(args.run_dir, args.volume);
  std::ifstream in(path);
  if (!in) {
    return fail(Status::Error(ErrorCode::kNotFound,
                              fmt::format("no running volume '{}' ({} not found; is `blkmirror "
                                          "volume` running with --run-dir {}?)",
                                          args.volume, path, args.run_dir)));
  }
  auto not_status = [&](std::string_view why) {
    return fail(Status::Error(ErrorCode::kProtocol,
                              fmt::format("{} is not a blkmirror volume status file ({})", path,
                                          why)));
  };
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) return not_status("not JSON");
  try {
    if (kill(j["pid"].get<int>(), 0) != 0) {
      return fail(Status::Error(ErrorCode::kNotFound,
                                fmt::format("volume '{}' is not running (pid {} is gone; {} is "
                                            "stale)",
                                            args.volume, j["pid"].get<int>(), path)));
    }
    if (args.json) {
      std::printf("%s\n", j.dump().c_str());
      return kExitOk;
    }
    for (const std::string& line : VolumeStatusLines(j)) std::printf("%s\n", line.c_str());
  } catch (const nlohmann::json::exception& e) {
    return not_status(e.what());
  }
  return kExitOk;
}

}  // namespace blkmirror::cli
