// `blkmirror verify`: compare the source with a replica's copy by per-block CRC32C.
#include <unistd.h>

#include <cstdio>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/push_internal.h"
#include "cli/setup.h"
#include "common/clock.h"
#include "common/progress.h"
#include "common/units.h"
#include "engine/verifier.h"
#include "io/uring/uring_block_device.h"

namespace blkmirror::cli {

int RunVerify(const VerifyArgs& args) {
  auto fail = [](const Status& s, int code = kExitFailed) {
    PrintError("verify", s);
    return code;
  };
  auto peer = transport::Endpoint::Parse(args.peer);
  if (!peer.ok()) return fail(peer.status().Context("--peer"), kExitUsage);
  auto block_size = ParseBlockSize(args.block_size, "--block-size");
  if (!block_size.ok()) return fail(block_size.status(), kExitUsage);
  auto info = io::StatPath(args.source);
  if (!info.ok()) return fail(info.status().Context("--source"));
  if (info->size == 0) return fail(Status::Invalid("the source {} is empty", args.source));
  auto volume_id = VolumeIdFor(args.source);
  if (!volume_id.ok()) return fail(volume_id.status());

  engine::VerifyOptions options;
  options.block_size = static_cast<uint32_t>(*block_size);
  options.volume_id = *volume_id;
  if (!args.key_file.empty()) {
    auto k = engine::LoadKeyFile(args.key_file);
    if (!k.ok()) return fail(k.status(), kExitUsage);
    options.key = *k;
  }
  auto loop = MakeLoop(options.block_size, options.read_depth + 2, 256);
  if (!loop.ok()) return fail(loop.status());
  io::UringOpenOptions open_options;
  open_options.queue_depth = options.read_depth;
  auto source = io::OpenUringDevice(*loop->ring, args.source, open_options);
  if (!source.ok()) return fail(source.status());
  transport::TransportOptions transport_options;
  transport_options.source_address = args.bind;
  ApplyDpdkArgs(args.dpdk, transport_options);
  ApplyTlsArgs(args.tls, options.key, transport_options);
  auto transports = MakeTransports(*loop, args.transport, "", transport_options);
  if (!transports.ok()) return fail(transports.status());

  bool show = args.progress == 1 || (args.progress == -1 && isatty(STDERR_FILENO));
  Progress progress("verify", (*source)->size(), show);
  options.progress = [&progress](uint64_t bytes) { progress.Update(bytes); };
  uint64_t start = NowNs();
  auto report = engine::Verify(*loop->ring, *loop->pool, **source, *transports->preferred, *peer,
                               options, transports->fallback.get());
  progress.Finish();
  if (!report.ok()) return fail(report.status());
  double seconds = static_cast<double>(NowNs() - start) / 1e9;
  bool equal = report->diffs.empty();
  // --repair: send the differing blocks (a write session; refused while a push is running).
  nlohmann::json repair;
  int repair_rc = kExitOk;
  if (args.repair && !equal) {
    // The repair opens transports of its own: these go first (a DPDK port takes its device,
    // a memif socket, for itself: a second one in the same process is refused).
    transports->preferred.reset();
    transports->fallback.reset();
    ReplicationPlan plan;
    plan.command = "verify";
    plan.args.source = args.source;
    plan.args.peers = {args.peer};
    plan.args.block_size = args.block_size;
    plan.args.transport = args.transport;
    plan.args.dpdk = args.dpdk;
    plan.args.tls = args.tls;
    plan.args.key_file = args.key_file;
    plan.args.meta_dir = args.meta_dir;
    plan.args.bind = args.bind;
    plan.args.progress = 0;
    plan.extra_dirty = report->diffs;
    plan.repair = true;
    plan.result = &repair;
    repair_rc = RunReplication(plan);
    if (repair_rc != kExitOk) {
      spdlog::error("repair of {} failed (the error above says why); the differing blocks are "
                    "listed below: rerun verify --repair once that is mended",
                    peer->ToString());
    }
  }
  if (args.json) {
    nlohmann::json diffs = nlohmann::json::array();
    for (const auto& d : report->diffs) diffs.push_back({{"offset", d.offset}, {"length", d.length}});
    nlohmann::json out = {{"equal", equal},
                          {"peer", peer->ToString()},
                          {"source", args.source},
                          {"blocks", report->blocks},
                          {"bytes", report->bytes},
                          {"block_size", options.block_size},
                          {"differing_blocks", report->differing_blocks},
                          {"replica_bytes", report->replica_bytes},
                          {"diffs", diffs},
                          {"seconds", seconds}};
    if (args.repair) {
      out["repaired"] = !equal && repair_rc == kExitOk;
      if (!repair.is_null()) out["repair"] = repair;
    }
    std::printf("%s\n", out.dump().c_str());
  } else if (equal) {
    std::printf("%s matches %s: %llu blocks, %s compared in %.2f s\n", peer->ToString().c_str(),
                args.source.c_str(), static_cast<unsigned long long>(report->blocks),
                FormatBytes(static_cast<double>(report->bytes)).c_str(), seconds);
  } else {
    std::printf("%s differs from %s in %llu of %llu blocks:\n", peer->ToString().c_str(),
                args.source.c_str(), static_cast<unsigned long long>(report->differing_blocks),
                static_cast<unsigned long long>(report->blocks));
    for (const auto& d : report->diffs) {
      std::printf("  offset %llu length %llu\n", static_cast<unsigned long long>(d.offset),
                  static_cast<unsigned long long>(d.length));
    }
    if (args.repair && repair_rc == kExitOk) {
      std::printf("repaired: %llu bytes resent to %s\n",
                  static_cast<unsigned long long>(repair.value("bytes_sent", uint64_t{0})),
                  peer->ToString().c_str());
    }
  }
  if (!args.json && report->replica_bytes != (*source)->size()) {
    // Shorter: the ranges past its end differ above. Longer: the bytes past the source's end
    // are no part of the volume, and a push to it is refused until it is removed or truncated.
    std::printf("  its copy holds %llu bytes, the source %llu\n",
                static_cast<unsigned long long>(report->replica_bytes),
                static_cast<unsigned long long>((*source)->size()));
  }
  if (repair_rc != kExitOk) return repair_rc;
  // Differences found and repaired still exit 1: the copies differed when verify looked.
  return equal ? kExitOk : kExitDiffers;
}

}  // namespace blkmirror::cli
