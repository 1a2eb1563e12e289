// The metadata the commands keep on disk, beside the data (setup path only):
//   primary  <meta-dir>/volume                     what the last push saw of the source
//            <meta-dir>/peer-<replica id>.bitmap   one DirtyBitmap per replica (engine/)
//   replica  <meta-dir>/replica                    the target's data identity
//   both     <meta-dir>/generations                the node's role and data generations
//            <meta-dir>/process                    the serve or volume process using it now
// Small key=value files are replaced atomically (write a temporary, fsync, rename, fsync the
// directory), so a crash leaves the old file or the new one.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "engine/generations.h"
#include "proto/frame.h"

namespace blkmirror::cli {

// The last component of a path.
std::string Basename(const std::string& path);
// "<path>.blkmirror" beside a regular file; /var/lib/blkmirror/<name> for a block device.
std::string DefaultMetaDir(const std::string& path, bool is_block_device);
Status EnsureDir(const std::string& dir);

using KeyValues = std::map<std::string, std::string>;
Result<KeyValues> ReadKeyValues(const std::string& path);  // kNotFound when missing
Status WriteKeyValues(const std::string& path, const KeyValues& values);

std::string BitmapPath(const std::string& meta_dir, const proto::ReplicaId& replica);

// 32 hex digits (a volume or replica id).
bool ParseHex(const std::string& hex, proto::VolumeId& out);

// A node's role for a volume and its data generations (<meta-dir>/generations), kept durably:
// what `promote` and `demote` change, what `volume` and `serve` read and update.
enum class Role : uint8_t { kNone, kPrimary, kReplica };
std::string_view RoleName(Role role);
struct NodeState {
  Role role = Role::kNone;  // kNone: nothing kept (a disk never part of a volume)
  proto::VolumeId volume_id;
  engine::Generations generations;
};
// The error names the file and the field when the file is damaged.
Result<NodeState> ReadNodeState(const std::string& meta_dir);
Status WriteNodeState(const std::string& meta_dir, const NodeState& state);

// The process using a disk now (<meta-dir>/process): `serve` or `volume`, its pid, and for
// serve the primary writing to it ("" when none).
struct ProcessInfo {
  pid_t pid = 0;
  std::string command;
  std::string writer;
};
Status WriteProcessInfo(const std::string& meta_dir, const ProcessInfo& info);
void RemoveProcessInfo(const std::string& meta_dir);
// The process recorded there, if it is still alive.
std::optional<ProcessInfo> RunningProcess(const std::string& meta_dir);

// Test hook: WriteKeyValues stops (as a crash would) after this many of its steps (1: the
// temporary written, 2: synced, 3: renamed over the file, 4: the directory synced) and fails;
// 0: never.
void SetWriteCrashPointForTest(int step);

// The replica's data identity for `target`: kept in <meta-dir>/replica and renewed (a new random
// id, durable before it is used) when the target is not the one it was kept for (another file
// or device at that path) or, for a write session, when another volume writes to it.
Result<proto::ReplicaId> ReplicaIdentity(const std::string& meta_dir, const std::string& target,
                                         const proto::VolumeId& volume_id, bool for_write);

}  // namespace blkmirror::cli
