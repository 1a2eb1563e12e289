#include "io/uring/uring_block_device.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <spdlog/spdlog.h>

namespace blkmirror::io {
namespace {

class UringBlockDevice final : public BlockDevice, public RingHandler {
 public:
  UringBlockDevice(Ring& ring, std::string name, uint32_t depth)
      : ring_(ring), name_(std::move(name)), slots_(depth), done_(depth) {
    free_.reserve(depth);
    for (uint32_t i = 0; i < depth; ++i) {
      slots_[i].handler = this;
      free_.push_back(depth - 1 - i);
    }
  }

  ~UringBlockDevice() override {
    // Requests still in the kernel reference our slots: wait them out before freeing.
    while (in_flight_ > pending_) {
      if (!ring_.Wait(std::chrono::milliseconds(100)).ok()) break;
    }
    if (direct_idx_ >= 0) ring_.UnregisterFile(direct_idx_);
    if (buffered_idx_ >= 0) ring_.UnregisterFile(buffered_idx_);
    if (direct_fd_ >= 0 && direct_fd_ != buffered_fd_) close(direct_fd_);
    if (buffered_fd_ >= 0) close(buffered_fd_);
  }

  Status Init(int buffered_fd, int direct_fd, uint64_t size, uint32_t alignment,
              bool inline_writes) {
    buffered_fd_ = buffered_fd;
    direct_fd_ = direct_fd;
    inline_writes_ = inline_writes;
    size_ = size;
    alignment_ = alignment;
    ASSIGN_OR_RETURN(buffered_idx_, ring_.RegisterFile(buffered_fd_));
    if (direct_fd_ >= 0) {
      ASSIGN_OR_RETURN(direct_idx_, ring_.RegisterFile(direct_fd_));
    }
    return Status::Ok();
  }

  uint64_t size() const override { return size_; }
  const std::string& name() const override { return name_; }
  bool direct() const override { return direct_fd_ >= 0; }
  uint32_t alignment() const override { return alignment_; }
  uint32_t queue_depth() const override { return static_cast<uint32_t>(slots_.size()); }
  uint32_t in_flight() const override { return in_flight_; }

  Status Submit(std::span<const IoRequest> requests) override {
    // Completions not yet polled still count: they hold places in the completion ring.
    if (requests.size() > slots_.size() - in_flight_) {
      return Status::Error(ErrorCode::kBusy,
                           fmt::format("{}: {} requests exceed the free queue depth {} of {}",
                                       name_, requests.size(), slots_.size() - in_flight_,
                                       slots_.size()));
    }
    for (const IoRequest& r : requests) {
      if ((r.op == IoOp::kWrite || r.op == IoOp::kZero) &&
          (r.offset > size_ || r.len > size_ - r.offset)) {
        return Status::Invalid("{}: {} of {} bytes at offset {} exceeds the size {}", name_,
                               r.op == IoOp::kWrite ? "write" : "zeroing", r.len, r.offset,
                               size_);
      }
    }
    for (const IoRequest& r : requests) {
      uint32_t idx = free_.back();
      free_.pop_back();
      Slot& s = slots_[idx];
      s.req = r;
      s.done = 0;
      s.zero = r.unmap ? ZeroStage::kPunch : ZeroStage::kZeroRange;
      ++in_flight_;
      Issue(s);
    }
    return Status::Ok();
  }

  size_t Poll(std::span<IoCompletion> out) override {
    size_t n = 0;
    while (n < out.size() && pending_ > 0) {
      out[n++] = done_[done_head_];
      done_head_ = (done_head_ + 1) % done_.size();
      --pending_;
      --in_flight_;
    }
    return n;
  }

  void OnCqe(RingOp* op, int32_t res, uint32_t /*flags*/) override {
    auto& s = *static_cast<Slot*>(op);
    if (res == -EAGAIN || res == -EINTR) {
      Issue(s);
      return;
    }
    if (s.req.op == IoOp::kZero) return OnZero(s, res);
    if (res < 0) {
      Complete(s, res);
      return;
    }
    if (s.req.op == IoOp::kFlush) {
      Complete(s, 0);
      return;
    }
    s.done += static_cast<uint32_t>(res);
    if (s.done >= s.req.len || (s.req.op == IoOp::kRead && res == 0)) {
      Complete(s, static_cast<int32_t>(s.done));
      return;
    }
    if (s.req.op == IoOp::kWrite && res == 0) {
      Complete(s, -EIO);  // a write that makes no progress would loop forever
      return;
    }
    Issue(s);  // short transfer: the rest
  }

 private:
  // How a kZero request is being served: the device's own zeroing first (fallocate), then the
  // fallbacks for devices that lack it, then the flush that makes it durable when asked.
  enum class ZeroStage : uint8_t {
    kZeroRange,  // FALLOC_FL_ZERO_RANGE: zeros, the range stays allocated
    kPunch,      // FALLOC_FL_PUNCH_HOLE: zeros, deallocated (asked for, or ZERO_RANGE missing)
    kWrite,      // writing zeros from zero_ (neither is supported)
    kSync,       // the fdatasync of a dsync request
  };

  struct Slot : RingOp {
    IoRequest req;
    uint32_t done = 0;
    ZeroStage zero = ZeroStage::kZeroRange;
  };

  void OnZero(Slot& s, int32_t res) {
    const bool unsupported = res == -EOPNOTSUPP || res == -EINVAL || res == -ENODEV;
    switch (s.zero) {
      case ZeroStage::kZeroRange:
        if (unsupported) {
          s.zero = ZeroStage::kPunch;
          return Issue(s);
        }
        break;
      case ZeroStage::kPunch:
        if (unsupported) {
          s.zero = ZeroStage::kWrite;
          s.done = 0;
          return Issue(s);
        }
        break;
      case ZeroStage::kWrite:
        if (res == 0) return Complete(s, -EIO);  // no progress
        if (res > 0) {
          s.done += static_cast<uint32_t>(res);
          if (s.done < s.req.len) return Issue(s);
          res = 0;
        }
        break;
      case ZeroStage::kSync:
        return Complete(s, res < 0 ? res : 0);
    }
    if (res < 0) return Complete(s, res);
    if (s.req.dsync) {
      s.zero = ZeroStage::kSync;
      return Issue(s);
    }
    Complete(s, 0);
  }

  void IssueZero(Slot& s, io_uring_sqe* sqe) {
    switch (s.zero) {
      case ZeroStage::kZeroRange:
        io_uring_prep_fallocate(sqe, buffered_idx_, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                                s.req.offset, s.req.len);
        break;
      case ZeroStage::kPunch:
        io_uring_prep_fallocate(sqe, buffered_idx_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                s.req.offset, s.req.len);
        break;
      case ZeroStage::kWrite: {
        if (zero_ == nullptr) {
          zero_.reset(static_cast<std::byte*>(std::aligned_alloc(kZeroChunk, kZeroChunk)));
          std::memset(zero_.get(), 0, kZeroChunk);
        }
        uint32_t len = std::min<uint32_t>(s.req.len - s.done, kZeroChunk);
        uint64_t off = s.req.offset + s.done;
        bool aligned = direct_fd_ >= 0 && off % alignment_ == 0 && len % alignment_ == 0;
        io_uring_prep_write(sqe, aligned ? direct_idx_ : buffered_idx_, zero_.get(), len, off);
        break;
      }
      case ZeroStage::kSync:
        io_uring_prep_fsync(sqe, buffered_idx_, IORING_FSYNC_DATASYNC);
        break;
    }
    sqe->flags |= IOSQE_FIXED_FILE;
  }

  void Issue(Slot& s) {
    if (inline_writes_ && s.req.op == IoOp::kWrite) return WriteInline(s);
    io_uring_sqe* sqe = ring_.GetSqe(&s);
    if (s.req.op == IoOp::kZero) return IssueZero(s, sqe);
    if (s.req.op == IoOp::kFlush) {
      io_uring_prep_fsync(sqe, buffered_idx_, IORING_FSYNC_DATASYNC);
      sqe->flags |= IOSQE_FIXED_FILE;
      return;
    }
    std::byte* p = s.req.data + s.done;
    uint64_t off = s.req.offset + s.done;
    uint32_t len = s.req.len - s.done;
    bool aligned = direct_fd_ >= 0 && off % alignment_ == 0 && len % alignment_ == 0 &&
                   reinterpret_cast<uintptr_t>(p) % alignment_ == 0;
    int file = aligned ? direct_idx_ : buffered_idx_;
    bool fixed = s.req.buf_index != kNoBufIndex && ring_.has_buffers();
    if (s.req.op == IoOp::kRead) {
      if (fixed) {
        io_uring_prep_read_fixed(sqe, file, p, len, off, static_cast<int>(s.req.buf_index));
      } else {
        io_uring_prep_read(sqe, file, p, len, off);
      }
    } else {
      if (fixed) {
        io_uring_prep_write_fixed(sqe, file, p, len, off, static_cast<int>(s.req.buf_index));
      } else {
        io_uring_prep_write(sqe, file, p, len, off);
      }
      if (s.req.dsync) sqe->rw_flags = RWF_DSYNC;
    }
    sqe->flags |= IOSQE_FIXED_FILE;
  }

  // A write done here, with pwritev2: on a file system with no asynchronous buffered write
  // path (tmpfs), io_uring would hand it to a worker thread, and the wake-up and context switches
  // cost more than the page-cache copy. It completes at the next Poll, as any other.
  void WriteInline(Slot& s) {
    while (s.done < s.req.len) {
      iovec v{s.req.data + s.done, s.req.len - s.done};
      ssize_t n = pwritev2(buffered_fd_, &v, 1, static_cast<off_t>(s.req.offset + s.done),
                           s.req.dsync ? RWF_DSYNC : 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Complete(s, n < 0 ? -errno : -EIO);
      s.done += static_cast<uint32_t>(n);
    }
    Complete(s, static_cast<int32_t>(s.done));
  }

  void Complete(Slot& s, int32_t res) {
    size_t tail = (done_head_ + pending_) % done_.size();
    done_[tail] = IoCompletion{s.req.tag, res};
    ++pending_;
    free_.push_back(static_cast<uint32_t>(&s - slots_.data()));
  }

  Ring& ring_;
  std::string name_;
  int buffered_fd_ = -1;
  int direct_fd_ = -1;
  bool inline_writes_ = false;
  int buffered_idx_ = -1;
  int direct_idx_ = -1;
  uint64_t size_ = 0;
  uint32_t alignment_ = 4096;
  // Zeros to write from, for devices that cannot zero a range themselves (allocated on first use).
  static constexpr uint32_t kZeroChunk = 1 << 20;
  struct FreeDeleter {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, FreeDeleter> zero_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  // Completions not yet polled. Their slots are free again, but they still count in in_flight_
  // until polled, so the ring never holds more than queue_depth entries.
  std::vector<IoCompletion> done_;
  size_t done_head_ = 0;
  size_t pending_ = 0;
  uint32_t in_flight_ = 0;
};

// Extends a regular file to `want` bytes, sparsely (ftruncate): allocating a whole volume up
// front would serialize that work before the first block (on tmpfs it zeroes every page). The
// space is checked first, so a disk that cannot hold the volume is a clear error now rather
// than ENOSPC in the middle.
Status ExtendFile(int fd, const std::string& path, uint64_t have, uint64_t want) {
  struct stat st {};
  struct statvfs vfs {};
  if (fstat(fd, &st) == 0 && fstatvfs(fd, &vfs) == 0) {
    uint64_t allocated = static_cast<uint64_t>(st.st_blocks) * 512;
    uint64_t need = want > allocated ? want - allocated : 0;
    uint64_t avail = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    // A file system that reports no size at all (f_blocks 0: ramfs, some FUSE) has no limit to
    // check against; a full one still fails its writes with ENOSPC, which the engine reports.
    if (vfs.f_blocks != 0 && need > avail) {
      return Status::Errno(ENOSPC, fmt::format("{}: cannot grow to {} bytes: {} more needed, the "
                                               "file system has {} available",
                                               path, want, need, avail));
    }
  }
  (void)have;
  if (ftruncate(fd, static_cast<off_t>(want)) != 0) {
    return Status::Errno(errno, fmt::format("{}: ftruncate to {} bytes", path, want));
  }
  return Status::Ok();
}

}  // namespace

Result<PathInfo> StatPath(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT) return Status::Error(ErrorCode::kNotFound, path + ": no such file");
    return Status::Errno(err, path);
  }
  PathInfo info;
  if (S_ISBLK(st.st_mode)) {
    info.is_block_device = true;
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Status::Errno(errno, path);
    uint64_t bytes = 0;
    int rc = ioctl(fd, BLKGETSIZE64, &bytes);
    int err = errno;
    close(fd);
    if (rc != 0) return Status::Errno(err, path + ": BLKGETSIZE64");
    info.size = bytes;
  } else if (S_ISREG(st.st_mode)) {
    info.size = static_cast<uint64_t>(st.st_size);
  } else {
    return Status::Invalid("{}: not a regular file or block device", path);
  }
  return info;
}

Result<std::unique_ptr<BlockDevice>> OpenUringDevice(Ring& ring, const std::string& path,
                                                     const UringOpenOptions& options) {
  int flags = (options.writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;
  if (options.create) flags |= O_CREAT;
  int fd = open(path.c_str(), flags, 0644);
  if (fd < 0) {
    int err = errno;
    return Status::Errno(err, fmt::format("cannot open {} for {}", path,
                                          options.writable ? "writing" : "reading"));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return Status::Errno(err, path);
  }
  uint64_t size = 0;
  uint32_t alignment = 4096;
  if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
      int err = errno;
      close(fd);
      return Status::Errno(err, path + ": BLKGETSIZE64");
    }
    int lbs = 0;
    if (ioctl(fd, BLKSSZGET, &lbs) == 0 && lbs > 0) alignment = static_cast<uint32_t>(lbs);
  } else if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
    if (options.writable && size < options.min_size) {
      Status s = ExtendFile(fd, path, size, options.min_size);
      if (!s.ok()) {
        close(fd);
        return s;
      }
      size = options.min_size;
    }
  } else {
    close(fd);
    return Status::Invalid("{}: not a regular file or block device", path);
  }

  int direct_fd = -1;
  if (options.prefer_direct) {
    direct_fd = open(path.c_str(), (flags & ~O_CREAT) | O_DIRECT);
    if (direct_fd < 0) {
      // ramfs, tmpfs before Linux 6.6 and some FUSE file systems refuse O_DIRECT: buffered it
      // is, said once per device.
      spdlog::info("{}: the file system refuses O_DIRECT ({}); using buffered I/O", path,
                   std::strerror(errno));
    }
  }
  struct statfs fs {};
  const bool inline_writes = fstatfs(fd, &fs) == 0 && fs.f_type == TMPFS_MAGIC;
  if (inline_writes) {
    spdlog::info("{}: on tmpfs: writes are done inline (it has no asynchronous write path)", path);
  }
  auto dev = std::make_unique<UringBlockDevice>(ring, path, options.queue_depth);
  RETURN_IF_ERROR(dev->Init(fd, direct_fd, size, alignment, inline_writes));
  return std::unique_ptr<BlockDevice>(std::move(dev));
}

}  // namespace blkmirror::io
