// The metadata the commands keep on disk, beside the data (setup path only):
//   primary  <meta-dir>/volume                     what the last push saw of the source
//            <meta-dir>/peer-<replica id>.bitmap   one DirtyBitmap per replica (engine/)
//   replica  <meta-dir>/replica                    the target's data identity
// Small key=value files are replaced atomically (write a temporary, fsync, rename, fsync the
// directory), so a crash leaves the old file or the new one.
#pragma once

#include <map>
#include <string>

#include "common/status.h"
#include "proto/frame.h"

namespace blkmirror::cli {

// "<path>.blkmirror" beside a regular file; /var/lib/blkmirror/<name> for a block device.
std::string DefaultMetaDir(const std::string& path, bool is_block_device);
Status EnsureDir(const std::string& dir);

using KeyValues = std::map<std::string, std::string>;
Result<KeyValues> ReadKeyValues(const std::string& path);  // kNotFound when missing
Status WriteKeyValues(const std::string& path, const KeyValues& values);

std::string BitmapPath(const std::string& meta_dir, const proto::ReplicaId& replica);

// The replica's data identity for `target`: kept in <meta-dir>/replica and renewed (a new random
// id, durable before it is used) when the target is not the one it was kept for (another file
// or device at that path) or, for a write session, when another volume writes to it.
Result<proto::ReplicaId> ReplicaIdentity(const std::string& meta_dir, const std::string& target,
                                         const proto::VolumeId& volume_id, bool for_write);

}  // namespace blkmirror::cli
