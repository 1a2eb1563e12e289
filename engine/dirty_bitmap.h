// DirtyBitmap: per replica, one bit per block of the volume; a set bit means "this replica may
// not hold this block as the source has it". It is what makes a later push send only what a
// replica is missing (delta resync), and it must survive a crash of the primary.
//
// Ordering that makes it crash-safe (tested in tests/unit/dirty_bitmap_test.cc):
//   - a bit is SET and the set is durable (pwrite + fdatasync, Sync()) BEFORE the block is sent;
//   - a bit is CLEARED only when the replica acked the block durable; clears reach the file
//     lazily (a crash may lose some: those blocks are resent, nothing is lost).
// A torn write of the file mixes, per sector, the old and the new contents: old words have more
// bits set (safe), new ones only lack bits whose blocks were acked durable (safe).
//
// File layout (little-endian): a 4096-byte header
//   magic "BKMRBMAP" | u32 version (1) | u32 header CRC32C (of the header with this zeroed) |
//   u32 block size | u32 reserved | u64 volume size | u64 blocks | 16-byte volume id |
//   16-byte replica id
// then the bits (bit b of byte b/8 for block b), padded to whole 4096-byte pages.
//
// Thread safety: none.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "proto/frame.h"

namespace blkmirror::engine {

struct BitmapKey {
  uint32_t block_size = 0;
  uint64_t volume_size = 0;
  proto::VolumeId volume_id;
  proto::ReplicaId replica_id;
  uint64_t blocks() const { return (volume_size + block_size - 1) / block_size; }
};

class DirtyBitmap {
 public:
  // Opens the bitmap at `path` if it exists and was kept for exactly `key`; otherwise (missing,
  // another volume, replica, block size or size, a damaged header) creates a new one with every
  // bit set, durable before it returns. `existed` says which happened.
  static Result<std::unique_ptr<DirtyBitmap>> Open(const std::string& path, const BitmapKey& key,
                                                   bool* existed);
  // Reads a bitmap file as it is, without changing it (for `blkmirror status`); an error when
  // the file is missing or its header is damaged.
  static Result<std::unique_ptr<DirtyBitmap>> ReadOnly(const std::string& path);
  const BitmapKey& key() const { return key_; }
  // A bitmap in memory only (every bit set), for tests and for peers without metadata.
  static std::unique_ptr<DirtyBitmap> InMemory(const BitmapKey& key);
  ~DirtyBitmap();

  uint64_t blocks() const { return key_.blocks(); }
  bool Test(uint64_t block) const { return (bits_[block / 8] >> (block % 8)) & 1; }
  void Set(uint64_t block);
  void Clear(uint64_t block);
  // Sets every block that bytes [offset, offset + length) of the volume touch, whatever their
  // alignment (a range of pieces smaller than a block may start and end inside blocks), up to
  // the volume's end.
  void SetRange(uint64_t offset, uint64_t length);
  void SetAll();
  // Clears every bit (a checksum comparison found the replica equal): lazily durable, as clears.
  void ClearAll();
  uint64_t CountSet() const;
  // True when sets happened since the last Sync (they must be synced before their blocks go).
  bool has_unsynced_sets() const { return unsynced_sets_; }
  bool has_unsynced_changes() const { return !dirty_pages_.empty(); }
  // Writes the changed pages and fdatasyncs. A no-op in memory or when nothing changed.
  Status Sync();
  const std::string& path() const { return path_; }

 private:
  DirtyBitmap(std::string path, const BitmapKey& key, int fd);
  void Touch(uint64_t block);
  std::vector<uint8_t> Header() const;

  std::string path_;
  BitmapKey key_;
  int fd_ = -1;
  std::vector<uint8_t> bits_;              // padded to whole pages
  std::vector<uint32_t> dirty_pages_;      // pages changed since the last Sync
  std::vector<uint8_t> page_dirty_flag_;
  bool unsynced_sets_ = false;
};

}  // namespace blkmirror::engine
