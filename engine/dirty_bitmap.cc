#include "engine/dirty_bitmap.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include <spdlog/spdlog.h>

#include "common/crc32c.h"

namespace blkmirror::engine {
namespace {

constexpr size_t kPage = 4096;
constexpr char kMagic[8] = {'B', 'K', 'M', 'R', 'B', 'M', 'A', 'P'};
constexpr uint32_t kVersion = 1;

uint32_t Get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t Get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void Put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

size_t BitBytes(uint64_t blocks) { return ((blocks + 7) / 8 + kPage - 1) / kPage * kPage; }

Status WriteAll(int fd, const uint8_t* p, size_t n, uint64_t off, const std::string& path) {
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::Errno(errno, "writing the dirty bitmap " + path);
    }
    p += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
  return Status::Ok();
}

}  // namespace

DirtyBitmap::DirtyBitmap(std::string path, const BitmapKey& key, int fd)
    : path_(std::move(path)),
      key_(key),
      fd_(fd),
      bits_(BitBytes(key.blocks()), 0),
      page_dirty_flag_(BitBytes(key.blocks()) / kPage, 0) {
  dirty_pages_.reserve(page_dirty_flag_.size());
}

DirtyBitmap::~DirtyBitmap() {
  if (fd_ >= 0) {
    if (has_unsynced_changes()) {
      Status s = Sync();
      if (!s.ok()) spdlog::warn("{}", s.message());
    }
    close(fd_);
  }
}

std::vector<uint8_t> DirtyBitmap::Header() const {
  std::vector<uint8_t> h(kPage, 0);
  std::memcpy(h.data(), kMagic, 8);
  Put32(h.data() + 8, kVersion);
  Put32(h.data() + 16, key_.block_size);
  Put64(h.data() + 24, key_.volume_size);
  Put64(h.data() + 32, key_.blocks());
  std::memcpy(h.data() + 40, key_.volume_id.bytes.data(), 16);
  std::memcpy(h.data() + 56, key_.replica_id.bytes.data(), 16);
  Put32(h.data() + 12, Crc32c(h.data(), h.size()));
  return h;
}

std::unique_ptr<DirtyBitmap> DirtyBitmap::InMemory(const BitmapKey& key) {
  auto b = std::unique_ptr<DirtyBitmap>(new DirtyBitmap("", key, -1));
  b->SetAll();
  b->dirty_pages_.clear();
  std::fill(b->page_dirty_flag_.begin(), b->page_dirty_flag_.end(), 0);
  b->unsynced_sets_ = false;
  return b;
}

Result<std::unique_ptr<DirtyBitmap>> DirtyBitmap::ReadOnly(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Errno(errno, "cannot read the dirty bitmap " + path);
  std::vector<uint8_t> h(kPage);
  ssize_t n = pread(fd, h.data(), h.size(), 0);
  BitmapKey key;
  if (n == static_cast<ssize_t>(kPage) && std::memcmp(h.data(), kMagic, 8) == 0) {
    key.block_size = Get32(h.data() + 16);
    key.volume_size = Get64(h.data() + 24);
    std::memcpy(key.volume_id.bytes.data(), h.data() + 40, 16);
    std::memcpy(key.replica_id.bytes.data(), h.data() + 56, 16);
  }
  auto b = std::unique_ptr<DirtyBitmap>(new DirtyBitmap(path, key, -1));
  if (key.block_size == 0 || b->Header() != h) {
    close(fd);
    return Status::Error(ErrorCode::kProtocol, path + ": not a valid dirty bitmap (damaged?)");
  }
  ssize_t got = pread(fd, b->bits_.data(), b->bits_.size(), static_cast<off_t>(kPage));
  close(fd);
  if (got != static_cast<ssize_t>(b->bits_.size())) {
    return Status::Error(ErrorCode::kProtocol, path + ": truncated dirty bitmap");
  }
  return b;
}

Result<std::unique_ptr<DirtyBitmap>> DirtyBitmap::Open(const std::string& path,
                                                       const BitmapKey& key, bool* existed) {
  *existed = false;
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Status::Errno(errno, "cannot open the dirty bitmap " + path);
  auto b = std::unique_ptr<DirtyBitmap>(new DirtyBitmap(path, key, fd));
  std::vector<uint8_t> want = b->Header();
  std::vector<uint8_t> have(kPage);
  ssize_t n = pread(fd, have.data(), have.size(), 0);
  struct stat st {};
  fstat(fd, &st);
  bool match = n == static_cast<ssize_t>(kPage) && have == want &&
               static_cast<uint64_t>(st.st_size) >= kPage + b->bits_.size();
  if (match) {
    size_t got = 0;
    while (got < b->bits_.size()) {
      ssize_t r = pread(fd, b->bits_.data() + got, b->bits_.size() - got,
                        static_cast<off_t>(kPage + got));
      if (r <= 0) {
        match = false;
        break;
      }
      got += static_cast<size_t>(r);
    }
  }
  if (match) {
    *existed = true;
    return b;
  }
  if (n > 0) {
    spdlog::info("{}: kept for another volume, replica or geometry; starting over (every block "
                 "dirty)",
                 path);
  }
  // A new bitmap: every bit set, durable before anything relies on it. The header goes last, so
  // a crash in between leaves a file that does not match and is started over again.
  b->SetAll();
  if (ftruncate(fd, 0) != 0) return Status::Errno(errno, "truncating " + path);
  RETURN_IF_ERROR(WriteAll(fd, b->bits_.data(), b->bits_.size(), kPage, path));
  if (fdatasync(fd) != 0) return Status::Errno(errno, "fdatasync " + path);
  RETURN_IF_ERROR(WriteAll(fd, want.data(), want.size(), 0, path));
  if (fdatasync(fd) != 0) return Status::Errno(errno, "fdatasync " + path);
  b->dirty_pages_.clear();
  std::fill(b->page_dirty_flag_.begin(), b->page_dirty_flag_.end(), 0);
  b->unsynced_sets_ = false;
  return b;
}

void DirtyBitmap::Touch(uint64_t block) {
  size_t page = block / 8 / kPage;
  if (!page_dirty_flag_[page]) {
    page_dirty_flag_[page] = 1;
    dirty_pages_.push_back(static_cast<uint32_t>(page));  // reserved: never reallocates
  }
}

void DirtyBitmap::Set(uint64_t block) {
  if (Test(block)) return;
  bits_[block / 8] |= static_cast<uint8_t>(1u << (block % 8));
  Touch(block);
  unsynced_sets_ = true;
}

void DirtyBitmap::Clear(uint64_t block) {
  if (!Test(block)) return;
  bits_[block / 8] &= static_cast<uint8_t>(~(1u << (block % 8)));
  Touch(block);
}

void DirtyBitmap::SetRange(uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= key_.volume_size) return;
  const uint64_t end = std::min(offset + length, key_.volume_size);
  for (uint64_t b = offset / key_.block_size; b <= (end - 1) / key_.block_size; ++b) Set(b);
}

void DirtyBitmap::SetAll() {
  uint64_t n = blocks();
  std::fill(bits_.begin(), bits_.begin() + static_cast<ptrdiff_t>(n / 8), 0xFF);
  if (n % 8) bits_[n / 8] = static_cast<uint8_t>((1u << (n % 8)) - 1);
  for (size_t page = 0; page < page_dirty_flag_.size(); ++page) {
    if (!page_dirty_flag_[page]) {
      page_dirty_flag_[page] = 1;
      dirty_pages_.push_back(static_cast<uint32_t>(page));
    }
  }
  unsynced_sets_ = true;
}

void DirtyBitmap::ClearAll() {
  std::fill(bits_.begin(), bits_.end(), 0);
  for (size_t page = 0; page < page_dirty_flag_.size(); ++page) {
    if (!page_dirty_flag_[page]) {
      page_dirty_flag_[page] = 1;
      dirty_pages_.push_back(static_cast<uint32_t>(page));
    }
  }
}

uint64_t DirtyBitmap::CountSet() const {
  uint64_t n = 0;
  for (uint8_t b : bits_) n += static_cast<uint64_t>(std::popcount(b));
  return n;
}

Status DirtyBitmap::Sync() {
  if (fd_ < 0 || dirty_pages_.empty()) {
    dirty_pages_.clear();
    std::fill(page_dirty_flag_.begin(), page_dirty_flag_.end(), 0);
    unsynced_sets_ = false;
    return Status::Ok();
  }
  for (uint32_t page : dirty_pages_) {
    RETURN_IF_ERROR(WriteAll(fd_, bits_.data() + size_t{page} * kPage, kPage,
                             kPage + uint64_t{page} * kPage, path_));
    page_dirty_flag_[page] = 0;
  }
  dirty_pages_.clear();
  if (fdatasync(fd_) != 0) return Status::Errno(errno, "fdatasync " + path_);
  unsynced_sets_ = false;
  return Status::Ok();
}

}  // namespace blkmirror::engine
