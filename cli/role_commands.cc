// `blkmirror promote`, `demote` and `status --disk`: a node's role for a volume. Each works on
// the disk's kept state (cli/roles.h) and on the process using the disk now (its <meta-dir>/
// process record): promote stops the replica service (serve) on the disk once it is committed,
// demote stops the volume daemon first.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/meta.h"
#include "cli/roles.h"
#include "cli/setup.h"
#include "engine/session.h"
#include "io/uring/uring_block_device.h"

namespace blkmirror::cli {
namespace {

constexpr auto kStopWait = std::chrono::seconds(30);

Result<std::string> MetaDirFor(const RoleArgs& args) {
  if (!args.meta_dir.empty()) return args.meta_dir;
  ASSIGN_OR_RETURN(io::PathInfo info, io::StatPath(args.disk));
  return DefaultMetaDir(args.disk, info.is_block_device);
}

// SIGTERM to `p`, then waits for it to be gone (bounded).
Status Stop(const ProcessInfo& p) {
  spdlog::info("stopping blkmirror {} (pid {})", p.command, p.pid);
  if (kill(p.pid, SIGTERM) != 0 && errno != ESRCH) {
    return Status::Errno(errno, fmt::format("cannot stop blkmirror {} (pid {})", p.command, p.pid));
  }
  const auto deadline = std::chrono::steady_clock::now() + kStopWait;
  while (kill(p.pid, 0) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      return Status::Error(ErrorCode::kTimeout,
                           fmt::format("blkmirror {} (pid {}) did not exit within {} s of SIGTERM",
                                       p.command, p.pid, kStopWait.count()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return Status::Ok();
}

int ExitFor(const Status& s) {
  return s.code() == ErrorCode::kDiverged ? kExitRefused : kExitFailed;
}

}  // namespace

int RunPromote(const RoleArgs& args) {
  auto fail = [](const Status& s, int code) {
    PrintError("promote", s);
    return code;
  };
  auto meta_dir = MetaDirFor(args);
  if (!meta_dir.ok()) return fail(meta_dir.status().Context("--disk"), kExitFailed);
  auto running = RunningProcess(*meta_dir);
  if (running && running->command == "volume") {
    std::printf("%s is primary already (blkmirror volume pid %d exports it)\n", args.disk.c_str(),
                running->pid);
    return kExitOk;
  }
  const std::string connected = running ? running->writer : "";
  auto promoted = PromoteDisk(*meta_dir, args.force, connected);
  if (!promoted.ok()) return fail(promoted.status().Context(args.disk), ExitFor(promoted.status()));
  if (running) {
    Status stopped = Stop(*running);
    if (!stopped.ok()) return fail(stopped, kExitFailed);
  }
  std::printf("promoted %s: primary of volume %s at generation %s%s\n", args.disk.c_str(),
              engine::IdHex(promoted->volume_id).c_str(),
              engine::Describe(promoted->generations).c_str(),
              args.force ? " (forced)" : "");
  std::printf("export it: blkmirror volume --disk %s --peer HOST:PORT --export unix:PATH ...\n",
              args.disk.c_str());
  return kExitOk;
}

int RunDemote(const RoleArgs& args) {
  auto fail = [](const Status& s, int code) {
    PrintError("demote", s);
    return code;
  };
  auto meta_dir = MetaDirFor(args);
  if (!meta_dir.ok()) return fail(meta_dir.status().Context("--disk"), kExitFailed);
  auto running = RunningProcess(*meta_dir);
  if (running && running->command == "serve" && !running->writer.empty() && args.discard) {
    return fail(Status::Error(ErrorCode::kDiverged,
                              fmt::format("refused: primary {} is writing to {}; its data is in "
                                          "sync with it, nothing to discard",
                                          running->writer, args.disk)),
                kExitRefused);
  }
  if (running && running->command == "volume") {
    Status stopped = Stop(*running);
    if (!stopped.ok()) return fail(stopped, kExitFailed);
  }
  auto demoted = DemoteDisk(*meta_dir, args.discard);
  if (!demoted.ok()) return fail(demoted.status().Context(args.disk), ExitFor(demoted.status()));
  std::printf("demoted %s: replica of volume %s, %s\n", args.disk.c_str(),
              engine::IdHex(demoted->volume_id).c_str(),
              args.discard ? "its data discarded (the primary copies it in full)"
                           : fmt::format("at generation {}",
                                         engine::Describe(demoted->generations))
                                 .c_str());
  std::printf("serve it: blkmirror serve --listen HOST:PORT --target %s ...\n", args.disk.c_str());
  return kExitOk;
}

int RunDiskStatus(const StatusArgs& args) {
  auto fail = [](const Status& s) {
    PrintError("status", s);
    return kExitFailed;
  };
  auto meta_dir = MetaDirFor(RoleArgs{args.disk, args.meta_dir});
  if (!meta_dir.ok()) return fail(meta_dir.status().Context("--disk"));
  auto st = ReadNodeState(*meta_dir);
  if (!st.ok()) return fail(st.status());
  auto running = RunningProcess(*meta_dir);
  nlohmann::json history = nlohmann::json::array();
  for (uint64_t g : st->generations.history) history.push_back(engine::GenerationHex(g));
  nlohmann::json j = {{"disk", args.disk},
                      {"role", RoleName(st->role)},
                      {"volume_id", st->role == Role::kNone ? "" : engine::IdHex(st->volume_id)},
                      {"generation", engine::GenerationHex(st->generations.current)},
                      {"history", history},
                      {"consistent", st->generations.consistent},
                      {"process", running ? running->command : ""},
                      {"pid", running ? running->pid : 0},
                      {"writer", running ? running->writer : ""}};
  if (args.json) {
    std::printf("%s\n", j.dump().c_str());
    return kExitOk;
  }
  std::printf("%s: %s of volume %s, generation %s, %s\n", args.disk.c_str(),
              std::string(RoleName(st->role)).c_str(), j["volume_id"].get<std::string>().c_str(),
              engine::Describe(st->generations).c_str(),
              st->generations.consistent ? "consistent" : "inconsistent");
  if (running) {
    std::printf("  used by blkmirror %s (pid %d)%s%s\n", running->command.c_str(), running->pid,
                running->writer.empty() ? "" : ", written by ", running->writer.c_str());
  }
  return kExitOk;
}

}  // namespace blkmirror::cli
