// UringBlockDevice: regular files and block devices through the loop's io_uring.
//
// Opened with O_DIRECT where the file system allows it (one that refuses it, as tmpfs did before
// Linux 6.6 and some FUSE file systems still do, falls back to buffered I/O and says so once in
// the log). Requests whose offset, length or
// address is not aligned for direct I/O (a volume's short last block) go through a second,
// buffered descriptor of the same file. Both descriptors are fixed files of the ring; reads and
// writes into the registered pool use READ_FIXED / WRITE_FIXED. On tmpfs, writes are done inline
// in Submit (pwritev2; RWF_DSYNC for dsync) and complete at the next Poll: tmpfs has no
// asynchronous write path, and io_uring's hand-off of each write to a worker thread costs more
// than the copy into the page cache.
#pragma once

#include <memory>
#include <string>

#include "io/block_device.h"
#include "io/ring.h"

namespace blkmirror::io {

struct UringOpenOptions {
  bool writable = false;
  bool create = false;      // create a regular file that does not exist
  uint64_t min_size = 0;    // regular files: extend (sparsely, space checked) to at least this
  uint32_t queue_depth = 64;
  bool prefer_direct = true;
};

Result<std::unique_ptr<BlockDevice>> OpenUringDevice(Ring& ring, const std::string& path,
                                                     const UringOpenOptions& options);

// Size of an existing file or block device without opening it for I/O; kNotFound if absent.
struct PathInfo {
  bool is_block_device = false;
  uint64_t size = 0;
};
Result<PathInfo> StatPath(const std::string& path);

}  // namespace blkmirror::io
