// `blkmirror serve`: accept primaries and apply their blocks to the target.
#include <sys/resource.h>
#include <unistd.h>

#include <optional>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/meta.h"
#include "cli/metrics.h"
#include "cli/run.h"
#include "cli/setup.h"
#include "common/clock.h"
#include "common/units.h"
#include "engine/replica.h"
#include "io/testing/faulty_block_device.h"
#include "io/uring/uring_block_device.h"

namespace blkmirror::cli {
namespace {

bool IsLoopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// Opens (and for a writer creates or extends) the target for a session.
Result<std::unique_ptr<io::BlockDevice>> OpenTargetDevice(io::Ring& ring, const std::string& path,
                                                          uint32_t depth, uint64_t volume_size,
                                                          engine::TargetUse use) {
  auto info = io::StatPath(path);
  if (!info.ok() && info.status().code() != ErrorCode::kNotFound) return info.status();
  io::UringOpenOptions options;
  options.writable = true;
  options.queue_depth = depth;
  if (use == engine::TargetUse::kVerify) {
    if (!info.ok()) {
      return Status::Error(ErrorCode::kNotFound,
                           fmt::format("replica target {} does not exist: nothing to verify", path));
    }
    return io::OpenUringDevice(ring, path, options);
  }
  if (info.ok() && info->is_block_device && info->size < volume_size) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("the volume ({} bytes) does not fit the replica's block "
                                     "device {} ({} bytes)",
                                     volume_size, path, info->size));
  }
  if (info.ok() && !info->is_block_device && info->size > volume_size) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("the replica's target {} ({} bytes) is larger than the "
                                     "volume ({} bytes); refusing to truncate it (remove it or "
                                     "serve another target)",
                                     path, info->size, volume_size));
  }
  options.create = true;
  options.min_size = volume_size;
  auto dev = io::OpenUringDevice(ring, path, options);
  if (!dev.ok()) {
    if (dev.status().err() == ENOSPC) {
      return dev.status().Context("replica disk full");
    }
    return dev.status();
  }
  return dev;
}

// Descriptors serve needs besides its connections: the target (two), the ring, listeners, the
// metadata files, RDMA event channels, logs.
constexpr rlim_t kReservedDescriptors = 64;

// Makes the open-file limit hold `connections` plus what serve needs otherwise, raising the soft
// limit up to the hard one if it must; returns how many connections fit (fewer, with a warning,
// when the hard limit is too low).
uint32_t FitDescriptors(uint32_t connections) {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return connections;
  const rlim_t want = connections + kReservedDescriptors;
  if (lim.rlim_cur < want && lim.rlim_cur != RLIM_INFINITY) {
    rlimit raised = lim;
    raised.rlim_cur = lim.rlim_max == RLIM_INFINITY ? want : std::min(want, lim.rlim_max);
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
  }
  if (lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < want) {
    auto fit = static_cast<uint32_t>(
        lim.rlim_cur > kReservedDescriptors + 1 ? lim.rlim_cur - kReservedDescriptors : 1);
    spdlog::warn("the open-file limit ({}) leaves room for {} connections, not {}: serving at "
                 "most {} (raise ulimit -n)",
                 static_cast<uint64_t>(lim.rlim_cur), fit, connections, fit);
    return fit;
  }
  return connections;
}

// What `blkmirror status NAME` shows of a replica target.
nlohmann::json ServeStatusJson(const engine::ReplicaStats& st, const ServeArgs& args,
                               const std::vector<std::string>& listening,
                               const std::string& writer) {
  return {{"role", "replica"},
          {"target", args.target},
          {"listening", listening},
          {"primary", writer},
          {"sessions", st.sessions},
          {"auth_failures", st.auth_failures},
          {"blocks_written", st.blocks_written},
          {"bytes_written", st.bytes_written},
          {"crc_mismatches", st.crc_mismatches},
          {"protocol_errors", st.protocol_errors}};
}

}  // namespace

int RunServe(const ServeArgs& args, Runner& runner) {
  auto fail = [](const Status& s, int code = kExitFailed) {
    PrintError("serve", s);
    return code;
  };
  auto listen = transport::Endpoint::Parse(args.listen);
  if (!listen.ok()) return fail(listen.status().Context("--listen"), kExitUsage);
  auto max_block = ParseBlockSize(args.max_block_size, "--max-block-size");
  if (!max_block.ok()) return fail(max_block.status(), kExitUsage);
  auto pool_size = ParseSize(args.pool_size);
  if (!pool_size.ok()) return fail(pool_size.status().Context("--pool-size"), kExitUsage);
  // Each receive buffer holds a block plus the transports' headroom.
  const uint64_t buffer_size = *max_block + transport::kReceiveHeadroom;
  uint64_t count = *pool_size / buffer_size;
  if (count < 4 || count > 16384) {
    return fail(Status::Invalid("--pool-size {} holds {} blocks of {}: need 4 to 16384",
                                args.pool_size, count, args.max_block_size),
                kExitUsage);
  }
  auto handshake_timeout = ParseDuration(args.handshake_timeout);
  if (!handshake_timeout.ok() || handshake_timeout->count() == 0) {
    return fail(Status::Invalid("--handshake-timeout '{}': expected a duration above 0",
                                args.handshake_timeout),
                kExitUsage);
  }
  auto max_peer_timeout = ParseDuration(args.max_peer_timeout);
  if (!max_peer_timeout.ok() || max_peer_timeout->count() == 0) {
    return fail(Status::Invalid("--max-peer-timeout '{}': expected a duration above 0",
                                args.max_peer_timeout),
                kExitUsage);
  }
  auto info = io::StatPath(args.target);
  if (!info.ok() && info.status().code() != ErrorCode::kNotFound) {
    return fail(info.status().Context("--target"));
  }
  std::optional<engine::Key> key;
  if (!args.key_file.empty()) {
    auto k = engine::LoadKeyFile(args.key_file);
    if (!k.ok()) return fail(k.status(), kExitUsage);
    key = *k;
  } else if (!IsLoopback(listen->host) && !args.insecure && !(args.tls.enabled && !args.tls.cert.empty())) {
    return fail(Status::Invalid("refusing to serve {} without --key-file: any host that reaches "
                                "it could write {}; make a key with `blkmirror keygen PATH` and "
                                "give it to both sides, or pass --insecure",
                                listen->ToString(), args.target),
                kExitUsage);
  }
  if (!key && !(args.tls.enabled && !args.tls.cert.empty())) {
    spdlog::warn("no --key-file: primaries are not authenticated");
  }
  std::optional<io::DiskFaultSpec> disk_fault;
  if (!args.test_disk_fault.empty()) {
    auto spec = io::DiskFaultSpec::Parse(args.test_disk_fault);
    if (!spec.ok()) return fail(spec.status(), kExitUsage);
    spdlog::warn("TEST DISK FAULT INJECTION ACTIVE: {} (never use this in production)",
                 args.test_disk_fault);
    disk_fault = *spec;
  }
  const bool target_is_device = info.ok() && info->is_block_device;
  const std::string meta_dir =
      args.meta_dir.empty() ? DefaultMetaDir(args.target, target_is_device) : args.meta_dir;

  if (Status io_path = EnterBlockIoPath(); !io_path.ok()) spdlog::info("{}", io_path.message());
  auto loop = MakeLoop(buffer_size, count, 1024);
  if (!loop.ok()) return fail(loop.status());
  transport::TransportOptions transport_options;
  ApplyDpdkArgs(args.dpdk, transport_options);
  ApplyTlsArgs(args.tls, key, transport_options);
  auto transports = MakeTransports(*loop, args.transport, args.test_fault, transport_options);
  if (!transports.ok()) {
    return fail(transports.status(), transports.status().code() == ErrorCode::kInvalidArgument
                                         ? kExitUsage
                                         : kExitFailed);
  }
  // Listen on every transport asked for, on one port: TCP first (with port 0 it picks the
  // port), then RDMA on the same port (rdma_cm has its own port space). With auto, RDMA is best
  // effort: a host without an RDMA device on that address still serves TCP, and says why.
  std::vector<transport::Transport*> serving;
  std::vector<std::string> bound_lines;
  std::vector<std::string> listening;
  transport::Endpoint local = *listen;
  // A dpdk transport serves plain TCP peers on its port as well: no tcp listener beside it.
  const bool dpdk_serves_tcp =
      (transports->preferred && transports->preferred->name() == "dpdk") ||
      (transports->fallback && transports->fallback->name() == "dpdk");
  for (auto* t : {transports->fallback.get(), transports->preferred.get()}) {
    if (t == nullptr || (dpdk_serves_tcp && t->name() == "tcp")) continue;
    auto bound = t->Listen(local);
    if (!bound.ok()) {
      if (args.transport == "auto" && t == transports->preferred.get() && !serving.empty()) {
        spdlog::info("--transport auto: not serving {} ({})", t->name(), bound.status().message());
        continue;
      }
      return fail(bound.status());
    }
    local.port = bound->port;
    serving.push_back(t);
    bound_lines.push_back(fmt::format("listening {} {}", t->name(), bound->ToString()));
    listening.push_back(fmt::format("{} {}", t->name(), bound->ToString()));
    spdlog::info("serving {} on {} {}", args.target, t->name(), bound->ToString());
  }
  io::Ring& ring = *loop->ring;
  const uint32_t depth = engine::ReplicaDiskDepth(static_cast<uint32_t>(count));
  engine::ReplicaOptions options;
  options.target_name = args.target;
  options.once = args.once;
  options.key = key;
  options.handshake_timeout = *handshake_timeout;
  options.max_peer_timeout = *max_peer_timeout;
  options.max_connections = FitDescriptors(args.max_connections);
  options.open_target = [&ring, path = args.target, depth, disk_fault](
                            uint64_t size,
                            engine::TargetUse use) -> Result<std::unique_ptr<io::BlockDevice>> {
    ASSIGN_OR_RETURN(auto device, OpenTargetDevice(ring, path, depth, size, use));
    if (disk_fault) device = std::make_unique<io::FaultyBlockDevice>(std::move(device), *disk_fault);
    return device;
  };
  options.identity = [path = args.target, meta_dir](const proto::VolumeId& volume_id,
                                                     engine::TargetUse use) {
    return ReplicaIdentity(meta_dir, path, volume_id, use == engine::TargetUse::kWrite);
  };
  options.generations.load =
      [meta_dir](const proto::VolumeId& volume_id) -> Result<engine::TargetGenerations> {
    ASSIGN_OR_RETURN(NodeState st, ReadNodeState(meta_dir));
    if (st.role == Role::kNone || st.volume_id != volume_id) return engine::TargetGenerations{};
    return engine::TargetGenerations{st.role == Role::kPrimary, st.generations};
  };
  options.generations.save = [meta_dir](const proto::VolumeId& volume_id,
                                        const engine::Generations& g) {
    return WriteNodeState(meta_dir, NodeState{Role::kReplica, volume_id, g});
  };
  if (auto other = RunningProcess(meta_dir)) {
    return fail(Status::Error(ErrorCode::kBusy,
                              fmt::format("{} is in use by blkmirror {} (pid {}): one process per "
                                          "disk",
                                          args.target, other->command, other->pid)));
  }
  auto server = engine::ReplicaServer::Create(ring, *loop->pool, std::move(options));
  if (!server.ok()) return fail(server.status());
  for (auto* t : serving) (*server)->AddTransport(t);

  spdlog::info("{} receive buffers for blocks up to {}", count,
               FormatBytes(static_cast<double>(*max_block)));
  // Scripts read the bound addresses (useful with port 0) from these lines.
  for (const auto& line : bound_lines) runner.Announce(line);

  // Who uses this disk, for promote (one process per disk; the primary writing to it now).
  ProcessInfo process{getpid(), "serve", ""};
  Status recorded = WriteProcessInfo(meta_dir, process);
  if (!recorded.ok()) return fail(recorded);
  std::unique_ptr<MetricsServer> metrics;
  if (!args.metrics.empty()) {
    auto started = MetricsServer::Start(args.metrics);
    if (!started.ok()) {
      RemoveProcessInfo(meta_dir);
      return fail(started.status());
    }
    metrics = std::move(*started);
    metrics->Publish(ReplicaMetrics((*server)->stats(), args.target, false));
    runner.Announce("listening metrics " + metrics->address());
  }
  runner.Publish(ServeStatusJson((*server)->stats(), args, listening, ""));
  runner.Ready(fmt::format("serving {} ({}); no primary", args.target, fmt::join(bound_lines, ", ")));
  uint64_t last_metrics = NowNs();
  while (!runner.stop_requested() && !(*server)->finished()) {
    runner.Tick();
    if (NowNs() - last_metrics >= kStatusIntervalNs) {
      last_metrics = NowNs();
      if (metrics) {
        metrics->Publish(ReplicaMetrics((*server)->stats(), args.target, !process.writer.empty()));
      }
      runner.Publish(ServeStatusJson((*server)->stats(), args, listening, process.writer));
    }
    size_t events = (*server)->Step();
    Status s = events == 0 ? ring.Wait(std::chrono::milliseconds(200)) : ring.Submit();
    if (!s.ok()) {
      RemoveProcessInfo(meta_dir);
      return fail(s);
    }
    if (std::string writer = (*server)->writer(); writer != process.writer) {
      process.writer = std::move(writer);
      Status w = WriteProcessInfo(meta_dir, process);
      if (!w.ok()) spdlog::warn("{}", w.message());
      runner.Status(fmt::format("serving {}; {}", args.target,
                                 process.writer.empty() ? "no primary"
                                                        : "primary " + process.writer));
    }
  }
  const std::string why = runner.stop_requested() ? runner.stop_reason() : "session done (--once)";
  runner.Stopping(why);
  RemoveProcessInfo(meta_dir);
  spdlog::info("{}; shutting down", why);
  (*server)->Shutdown();
  const auto& st = (*server)->stats();
  spdlog::info("served {} sessions: {} blocks, {} written, {} CRC mismatches, {} protocol errors",
               st.sessions, st.blocks_written, FormatBytes(static_cast<double>(st.bytes_written)),
               st.crc_mismatches, st.protocol_errors);
  return kExitOk;
}

}  // namespace blkmirror::cli
