#include "cli/meta.h"

#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

#include "engine/session.h"

namespace blkmirror::cli {
std::string Basename(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

namespace {

std::string Dirname(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

int g_crash_point = 0;

Status SimulatedCrash(const std::string& path, int step) {
  return Status::Error(ErrorCode::kProtocol,
                       fmt::format("{}: simulated crash after step {}", path, step));
}

}  // namespace

void SetWriteCrashPointForTest(int step) { g_crash_point = step; }

bool ParseHex(const std::string& hex, proto::VolumeId& out) {
  if (hex.size() != 32) return false;
  size_t len = 0;
  return sodium_hex2bin(out.bytes.data(), out.bytes.size(), hex.data(), hex.size(), nullptr, &len,
                        nullptr) == 0 &&
         len == 16;
}

std::string DefaultMetaDir(const std::string& path, bool is_block_device) {
  if (is_block_device) return "/var/lib/blkmirror/" + Basename(path);
  return path + ".blkmirror";
}

Status EnsureDir(const std::string& dir) {
  std::string partial;
  std::stringstream ss(dir);
  std::string part;
  if (!dir.empty() && dir[0] == '/') partial = "/";
  while (std::getline(ss, part, '/')) {
    if (part.empty()) continue;
    partial += part + "/";
    if (mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::Errno(errno, fmt::format("cannot create the metadata directory {} (choose "
                                              "another with --meta-dir)",
                                              dir));
    }
  }
  return Status::Ok();
}

Result<KeyValues> ReadKeyValues(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT) return Status::Error(ErrorCode::kNotFound, path + ": no such file");
    return Status::Errno(errno, path);
  }
  KeyValues kv;
  std::string line;
  while (std::getline(in, line)) {
    size_t eq = line.find('=');
    if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return kv;
}

Status WriteKeyValues(const std::string& path, const KeyValues& values) {
  std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Status::Errno(errno, "cannot write " + tmp);
  std::string text;
  for (const auto& [k, v] : values) text += k + "=" + v + "\n";
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  if (ok && g_crash_point == 1) {
    close(fd);
    return SimulatedCrash(path, 1);
  }
  ok = ok && fsync(fd) == 0;
  int err = errno;
  close(fd);
  if (!ok) return Status::Errno(err, "cannot write " + tmp);
  if (g_crash_point == 2) return SimulatedCrash(path, 2);
  if (rename(tmp.c_str(), path.c_str()) != 0) return Status::Errno(errno, "cannot rename " + tmp);
  if (g_crash_point == 3) return SimulatedCrash(path, 3);
  int dfd = open(Dirname(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  if (g_crash_point == 4) return SimulatedCrash(path, 4);
  return Status::Ok();
}

std::string BitmapPath(const std::string& meta_dir, const proto::ReplicaId& replica) {
  return meta_dir + "/peer-" + engine::IdHex(replica) + ".bitmap";
}

Result<proto::ReplicaId> ReplicaIdentity(const std::string& meta_dir, const std::string& target,
                                         const proto::VolumeId& volume_id, bool for_write) {
  struct stat st {};
  if (stat(target.c_str(), &st) != 0) return Status::Errno(errno, target);
  // What identifies "the same target": the inode of a file, the device number and size of a
  // block device (a different disk at the same path with the same size is not detected).
  std::string where = S_ISBLK(st.st_mode)
                          ? fmt::format("rdev {:x}", static_cast<uint64_t>(st.st_rdev))
                          : fmt::format("dev {:x} ino {}", static_cast<uint64_t>(st.st_dev),
                                        static_cast<uint64_t>(st.st_ino));
  std::string path = meta_dir + "/replica";
  auto kv = ReadKeyValues(path);
  proto::ReplicaId id;
  bool valid = kv.ok() && ParseHex((*kv)["replica_id"], id) && (*kv)["target"] == where;
  if (valid && for_write && (*kv)["volume_id"] != engine::IdHex(volume_id)) {
    spdlog::info("{}: another volume ({}) writes to it now: new replica identity", target,
                 engine::IdHex(volume_id));
    valid = false;
  }
  if (valid) return id;
  if (!for_write) return proto::ReplicaId{};  // nothing a primary can have a bitmap for
  randombytes_buf(id.bytes.data(), id.bytes.size());
  RETURN_IF_ERROR(EnsureDir(meta_dir));
  RETURN_IF_ERROR(WriteKeyValues(path, {{"replica_id", engine::IdHex(id)},
                                        {"volume_id", engine::IdHex(volume_id)},
                                        {"target", where}}));
  if (kv.ok()) spdlog::info("{}: not the target its identity was kept for: new identity", target);
  return id;
}

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kNone: return "none";
    case Role::kPrimary: return "primary";
    case Role::kReplica: return "replica";
  }
  return "unknown";
}

namespace {

Result<uint64_t> ParseGeneration(const std::string& text, const std::string& path,
                                 const char* field) {
  uint64_t g = 0;
  if (text.size() != 16 || sscanf(text.c_str(), "%16" SCNx64, &g) != 1 || g == 0) {
    return Status::Invalid("{}: field {}: '{}' is not a generation (16 hex digits)", path, field,
                           text);
  }
  return g;
}

}  // namespace

Result<NodeState> ReadNodeState(const std::string& meta_dir) {
  const std::string path = meta_dir + "/generations";
  auto kv = ReadKeyValues(path);
  if (!kv.ok()) {
    if (kv.status().code() == ErrorCode::kNotFound) return NodeState{};
    return kv.status();
  }
  NodeState st;
  const std::string& role = (*kv)["role"];
  if (role == "primary") {
    st.role = Role::kPrimary;
  } else if (role == "replica") {
    st.role = Role::kReplica;
  } else {
    return Status::Invalid("{}: field role: '{}' is not primary or replica", path, role);
  }
  if (!ParseHex((*kv)["volume_id"], st.volume_id)) {
    return Status::Invalid("{}: field volume_id: '{}' is not 32 hex digits", path,
                           (*kv)["volume_id"]);
  }
  const std::string& current = (*kv)["current"];
  if (current != "none") {
    ASSIGN_OR_RETURN(st.generations.current, ParseGeneration(current, path, "current"));
  }
  std::stringstream history((*kv)["history"]);
  std::string item;
  while (std::getline(history, item, ',')) {
    if (item.empty()) continue;
    if (st.generations.history.size() == proto::kMaxHistory) {
      return Status::Invalid("{}: field history: more than {} generations", path,
                             proto::kMaxHistory);
    }
    ASSIGN_OR_RETURN(uint64_t g, ParseGeneration(item, path, "history"));
    st.generations.history.push_back(g);
  }
  const std::string& consistent = (*kv)["consistent"];
  if (consistent != "0" && consistent != "1") {
    return Status::Invalid("{}: field consistent: '{}' is not 0 or 1", path, consistent);
  }
  st.generations.consistent = consistent == "1";
  return st;
}

Status WriteNodeState(const std::string& meta_dir, const NodeState& st) {
  RETURN_IF_ERROR(EnsureDir(meta_dir));
  std::string history;
  for (uint64_t g : st.generations.history) {
    history += (history.empty() ? "" : ",") + engine::GenerationHex(g);
  }
  return WriteKeyValues(meta_dir + "/generations",
                        {{"role", std::string(RoleName(st.role))},
                         {"volume_id", engine::IdHex(st.volume_id)},
                         {"current", engine::GenerationHex(st.generations.current)},
                         {"history", history},
                         {"consistent", st.generations.consistent ? "1" : "0"}});
}

Status WriteProcessInfo(const std::string& meta_dir, const ProcessInfo& info) {
  RETURN_IF_ERROR(EnsureDir(meta_dir));
  return WriteKeyValues(meta_dir + "/process", {{"pid", std::to_string(info.pid)},
                                                {"command", info.command},
                                                {"writer", info.writer}});
}

void RemoveProcessInfo(const std::string& meta_dir) { unlink((meta_dir + "/process").c_str()); }

std::optional<ProcessInfo> RunningProcess(const std::string& meta_dir) {
  auto kv = ReadKeyValues(meta_dir + "/process");
  if (!kv.ok()) return std::nullopt;
  ProcessInfo info;
  info.pid = static_cast<pid_t>(std::atol((*kv)["pid"].c_str()));
  info.command = (*kv)["command"];
  info.writer = (*kv)["writer"];
  if (info.pid <= 0 || kill(info.pid, 0) != 0) return std::nullopt;
  return info;
}

}  // namespace blkmirror::cli
