// `blkmirror status --source PATH`: what the primary's metadata says about each replica: which
// blocks it may be missing (dirty), read from the bitmaps without changing them.
#include <dirent.h>
#include <unistd.h>

#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/meta.h"
#include "cli/setup.h"
#include "engine/dirty_bitmap.h"
#include "engine/session.h"
#include "io/uring/uring_block_device.h"

namespace blkmirror::cli {

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
