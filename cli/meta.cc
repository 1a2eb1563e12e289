#include "cli/meta.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

#include "engine/session.h"

namespace blkmirror::cli {
namespace {

std::string Basename(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string Dirname(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

bool ParseHex(const std::string& hex, proto::VolumeId& out) {
  if (hex.size() != 32) return false;
  size_t len = 0;
  return sodium_hex2bin(out.bytes.data(), out.bytes.size(), hex.data(), hex.size(), nullptr, &len,
                        nullptr) == 0 &&
         len == 16;
}

}  // namespace

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
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            fsync(fd) == 0;
  int err = errno;
  close(fd);
  if (!ok) return Status::Errno(err, "cannot write " + tmp);
  if (rename(tmp.c_str(), path.c_str()) != 0) return Status::Errno(errno, "cannot rename " + tmp);
  int dfd = open(Dirname(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
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

}  // namespace blkmirror::cli
