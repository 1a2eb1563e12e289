// `blkmirror status --source PATH`: what the primary's metadata says about each replica: which
// blocks it may be missing (dirty), read from the bitmaps without changing them.
#include <dirent.h>
#include <unistd.h>

#include <cstdio>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/admin.h"
#include "cli/commands.h"
#include "cli/config.h"
#include "cli/logging.h"
#include "cli/run.h"
#include "cli/meta.h"
#include "cli/setup.h"
#include "common/units.h"
#include "engine/dirty_bitmap.h"
#include "engine/session.h"
#include "io/uring/uring_block_device.h"

namespace blkmirror::cli {
namespace {

// The text of the daemon's answer (cli/daemon.cc's Answer).
std::vector<std::string> DaemonStatusLines(const nlohmann::json& j) {
  std::vector<std::string> lines;
  const auto& d = j["daemon"];
  const auto& resources = j["resources"];
  lines.push_back(fmt::format("daemon pid {}, node {}, {}, up {} s: {} resource(s)",
                              d["pid"].get<int>(),
                              d["node"].get<std::string>().empty() ? "(host name)"
                                                                   : d["node"].get<std::string>(),
                              d["config_dir"].get<std::string>(),
                              d["uptime_seconds"].get<uint64_t>(), resources.size()));
  for (const auto& r : resources) {
    std::string head = fmt::format("{}: {}, {}", r["name"].get<std::string>(),
                                   r["role"].get<std::string>(), r["state"].get<std::string>());
    if (r["starts"].get<uint64_t>() > 1) {
      head += fmt::format(" (started {} times)", r["starts"].get<uint64_t>());
    }
    if (r.contains("error")) head += ": " + r["error"].get<std::string>();
    lines.push_back(head);
    if (r.contains("status")) {
      const auto& st = r["status"];
      if (st["role"] == "primary") {
        for (const std::string& line : VolumeStatusLines(st)) lines.push_back("  " + line);
      } else {
        const std::string primary = st["primary"].get<std::string>();
        lines.push_back(fmt::format(
            "  replica target {}: {}; {}; {} session(s), {} written, {} CRC mismatch(es)",
            st["target"].get<std::string>(),
            fmt::join(st["listening"].get<std::vector<std::string>>(), ", "),
            primary.empty() ? "no primary" : "primary " + primary,
            st["sessions"].get<uint64_t>(), FormatBytes(st["bytes_written"].get<double>()),
            st["crc_mismatches"].get<uint64_t>()));
      }
    }
    if (r.contains("restart_needed")) {
      lines.push_back(fmt::format("  changed in the files, needs a restart of the daemon: {}",
                                  fmt::join(r["restart_needed"].get<std::vector<std::string>>(), ", ")));
    }
  }
  return lines;
}

}  // namespace

int RunDaemonStatus(const StatusArgs& args) {
  auto fail = [](const Status& s, int code = kExitFailed) {
    PrintError("status", s);
    return code;
  };
  std::string path = args.admin_socket;
  if (path.empty()) {
    ParsedDaemonConfig settings = LoadDaemonConfig(args.config_dir);
    path = settings.problems.empty() && !settings.config.admin_socket.empty()
               ? settings.config.admin_socket
               : std::string(kDefaultAdminSocket);
  }
  const std::string request = args.name.empty() ? "status" : "status " + args.name;
  for (;;) {
    auto answer = AdminQuery(path, request);
    if (!answer.ok()) return fail(answer.status());
    nlohmann::json j = nlohmann::json::parse(*answer, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return fail(Status::Error(ErrorCode::kProtocol,
                                fmt::format("the daemon at {} answered something not JSON", path)));
    }
    if (j.contains("error")) {
      const std::string error = j["error"].is_string() ? j["error"].get<std::string>() : j["error"].dump();
      return fail(Status::Error(ErrorCode::kRefused, fmt::format("the daemon at {}: {}", path, error)),
                  error.rfind("no resource", 0) == 0 ? kExitUsage : kExitFailed);
    }
    if (args.json) {
      std::printf("%s\n", j.dump().c_str());
    } else {
      try {
        for (const std::string& line : DaemonStatusLines(j)) std::printf("%s\n", line.c_str());
      } catch (const nlohmann::json::exception& e) {
        return fail(Status::Error(ErrorCode::kProtocol,
                                  fmt::format("the daemon at {} answered an unexpected status: {}",
                                              path, e.what())));
      }
      if (args.watch) std::printf("\n");
    }
    std::fflush(stdout);
    if (!args.watch) return kExitOk;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}


int RunStatus(const StatusArgs& args) {
  auto fail = [](const Status& s, int code = kExitFailed) {
    PrintError("status", s);
    return code;
  };
  if (args.source.empty()) {
    return fail(Status::Invalid("give --source PATH (a push's metadata) or --volume NAME (a "
                                "running volume)"),
                kExitUsage);
  }
  auto info = io::StatPath(args.source);
  if (!info.ok()) return fail(info.status().Context("--source"));
  std::string meta_dir =
      args.meta_dir.empty() ? DefaultMetaDir(args.source, info->is_block_device) : args.meta_dir;
  auto volume = ReadKeyValues(meta_dir + "/volume");
  if (!volume.ok()) {
    return fail(Status::Error(ErrorCode::kNotFound,
                              fmt::format("no metadata for {} in {} (no push yet?)", args.source,
                                          meta_dir)));
  }
  nlohmann::json peers = nlohmann::json::array();
  DIR* dir = opendir(meta_dir.c_str());
  if (dir == nullptr) return fail(Status::Errno(errno, meta_dir));
  std::vector<std::string> names;
  while (dirent* e = readdir(dir)) {
    std::string name = e->d_name;
    if (name.rfind("peer-", 0) == 0 && name.size() > 7 &&
        name.substr(name.size() - 7) == ".bitmap") {
      names.push_back(name);
    }
  }
  closedir(dir);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    auto b = engine::DirtyBitmap::ReadOnly(meta_dir + "/" + name);
    if (!b.ok()) return fail(b.status());
    const auto& key = (*b)->key();
    nlohmann::json ranges = nlohmann::json::array();
    uint64_t start = 0;
    bool in = false;
    for (uint64_t blk = 0; blk <= (*b)->blocks(); ++blk) {
      bool dirty = blk < (*b)->blocks() && (*b)->Test(blk);
      if (dirty && !in) start = blk;
      if (!dirty && in) {
        uint64_t off = start * key.block_size;
        uint64_t end = std::min<uint64_t>(blk * key.block_size, key.volume_size);
        ranges.push_back({{"offset", off}, {"length", end - off}});
      }
      in = dirty;
    }
    peers.push_back({{"replica_id", engine::IdHex(key.replica_id)},
                     {"block_size", key.block_size},
                     {"blocks", (*b)->blocks()},
                     {"blocks_dirty", (*b)->CountSet()},
                     {"dirty_ranges", ranges}});
  }
  nlohmann::json out = {{"source", args.source},
                        {"meta_dir", meta_dir},
                        {"volume_id", (*volume)["volume_id"]},
                        {"last_push_source", (*volume)["source"]},
                        {"replicas", peers}};
  if (args.json) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("%s (metadata in %s): %zu replica(s) known\n", args.source.c_str(),
                meta_dir.c_str(), peers.size());
    for (const auto& p : peers) {
      std::printf("  replica %s: %llu of %llu blocks dirty\n",
                  p["replica_id"].get<std::string>().c_str(),
                  static_cast<unsigned long long>(p["blocks_dirty"].get<uint64_t>()),
                  static_cast<unsigned long long>(p["blocks"].get<uint64_t>()));
    }
  }
  return kExitOk;
}

}  // namespace blkmirror::cli
