// UringBlockDevice on real files through a real io_uring, StatPath, and MemBlockDevice.
//
// Every file lives in a fresh mkdtemp directory (under /tmp, on the root file system, or
// /dev/shm for tmpfs) that the fixture removes. Requests are driven to completion by
// submitting, then looping Ring::Submit / Ring::Wait(10 ms) / Poll with a bound, so a lost
// completion fails the test instead of hanging it.
#include "io/uring/uring_block_device.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "io/buffer_pool.h"
#include "io/mem/mem_block_device.h"
#include "io/ring.h"

namespace blkmirror::io {
namespace {

using namespace std::chrono_literals;

// ---- Helpers ------------------------------------------------------------------------------------

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBuf = std::unique_ptr<std::byte[], FreeDeleter>;

// `n` bytes (rounded up to 4096 for aligned_alloc) aligned to 4096.
AlignedBuf AllocAligned(size_t n) {
  size_t rounded = (std::max<size_t>(n, 1) + 4095) / 4096 * 4096;
  return AlignedBuf(static_cast<std::byte*>(std::aligned_alloc(4096, rounded)));
}

void FillRandom(std::byte* p, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<std::byte>(rng());
}

std::vector<std::byte> RandomBytes(size_t n, uint64_t seed) {
  std::vector<std::byte> v(n);
  FillRandom(v.data(), n, seed);
  return v;
}

// Reads the file with plain POSIX calls: an independent witness of what the device wrote.
std::vector<std::byte> ReadFile(const std::string& path, uint64_t offset, size_t len) {
  std::vector<std::byte> out(len);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << path << ": " << std::strerror(errno);
  if (fd < 0) return {};
  ssize_t n = pread(fd, out.data(), len, static_cast<off_t>(offset));
  EXPECT_EQ(n, static_cast<ssize_t>(len)) << path;
  close(fd);
  return out;
}

void WriteFile(const std::string& path, const std::vector<std::byte>& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  close(fd);
}

uint64_t FileSize(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return static_cast<uint64_t>(st.st_size);
}

// True when the file system under `dir` accepts O_DIRECT (probed with a scratch file).
bool FsAcceptsODirect(const std::string& dir) {
  std::string probe = dir + "/.odirect-probe";
  int fd = open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
  bool ok = fd >= 0;
  if (ok) close(fd);
  unlink(probe.c_str());
  return ok;
}

// Pages of [offset, offset + len) in the page cache (mincore on a mapping, which does not
// fault them in). Tells a direct write (no cached pages) from a buffered one.
size_t CachedPages(const std::string& path, uint64_t offset, size_t len) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << path;
  if (fd < 0) return 0;
  void* m = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
  close(fd);
  EXPECT_NE(m, MAP_FAILED) << std::strerror(errno);
  if (m == MAP_FAILED) return 0;
  size_t pages = (len + 4095) / 4096;
  std::vector<unsigned char> vec(pages);
  EXPECT_EQ(mincore(m, len, vec.data()), 0) << std::strerror(errno);
  munmap(m, len);
  return static_cast<size_t>(std::count_if(vec.begin(), vec.end(), [](unsigned char c) {
    return (c & 1) != 0;
  }));
}

IoRequest Read(uint64_t offset, std::byte* data, uint32_t len, uint64_t tag,
               uint32_t buf_index = kNoBufIndex) {
  return IoRequest{IoOp::kRead, offset, data, len, buf_index, tag};
}
IoRequest Write(uint64_t offset, std::byte* data, uint32_t len, uint64_t tag,
                uint32_t buf_index = kNoBufIndex) {
  return IoRequest{IoOp::kWrite, offset, data, len, buf_index, tag};
}
IoRequest Flush(uint64_t tag) { return IoRequest{IoOp::kFlush, 0, nullptr, 0, kNoBufIndex, tag}; }
IoRequest Zero(uint64_t offset, uint32_t len, uint64_t tag, bool unmap, bool dsync = false) {
  IoRequest r{IoOp::kZero, offset, nullptr, len, kNoBufIndex, tag};
  r.unmap = unmap;
  r.dsync = dsync;
  return r;
}

// Drives the ring until `n` completions came out of `dev` (or ~10 s passed: then the test fails
// with what it got). Returns them in arrival order.
std::vector<IoCompletion> Drain(Ring& ring, BlockDevice& dev, size_t n) {
  std::vector<IoCompletion> out;
  std::array<IoCompletion, 16> batch;
  for (int round = 0; round < 1000 && out.size() < n; ++round) {
    Status s = ring.Submit();
    EXPECT_TRUE(s.ok()) << s.message();
    for (size_t got; (got = dev.Poll(batch)) > 0;) out.insert(out.end(), batch.begin(), batch.begin() + got);
    if (out.size() >= n) break;
    s = ring.Wait(10ms);
    EXPECT_TRUE(s.ok()) << s.message();
    for (size_t got; (got = dev.Poll(batch)) > 0;) out.insert(out.end(), batch.begin(), batch.begin() + got);
  }
  EXPECT_EQ(out.size(), n) << "completions missing after ~10 s on " << dev.name();
  return out;
}

// Submits the batch (which must be accepted) and returns its completions.
std::vector<IoCompletion> RunBatch(Ring& ring, BlockDevice& dev, std::vector<IoRequest> reqs) {
  Status s = dev.Submit(reqs);
  EXPECT_TRUE(s.ok()) << s.message();
  if (!s.ok()) return {};
  return Drain(ring, dev, reqs.size());
}

// One request; returns its res.
int32_t RunOne(Ring& ring, BlockDevice& dev, const IoRequest& req) {
  auto done = RunBatch(ring, dev, {req});
  if (done.size() != 1) return INT32_MIN;
  EXPECT_EQ(done[0].tag, req.tag);
  return done[0].res;
}

// tag -> res, failing on duplicates.
std::map<uint64_t, int32_t> ByTag(const std::vector<IoCompletion>& done) {
  std::map<uint64_t, int32_t> m;
  for (const auto& c : done) EXPECT_TRUE(m.emplace(c.tag, c.res).second) << "tag " << c.tag << " twice";
  return m;
}

class TempDir {
 public:
  explicit TempDir(const std::string& parent) {
    std::string tmpl = parent + "/blkmirror-uring-test-XXXXXX";
    if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---- The fixture ------------------------------------------------------------------------------

class UringBlockDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>("/tmp");
    ASSERT_FALSE(dir_->path().empty()) << "mkdtemp under /tmp: " << std::strerror(errno);
    auto r = Ring::Create(256);
    ASSERT_TRUE(r.ok()) << r.status().message();
    ring_ = std::move(r).value();
  }

  std::string Path(const std::string& name) const { return dir_->path() + "/" + name; }

  std::unique_ptr<BlockDevice> Open(const std::string& path, UringOpenOptions options) {
    auto r = OpenUringDevice(*ring_, path, options);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? std::move(r).value() : nullptr;
  }
  std::unique_ptr<BlockDevice> OpenNew(const std::string& path, uint64_t size,
                                       uint32_t depth = 64, bool prefer_direct = true) {
    UringOpenOptions o;
    o.writable = true;
    o.create = true;
    o.min_size = size;
    o.queue_depth = depth;
    o.prefer_direct = prefer_direct;
    return Open(path, o);
  }

  // Writes random blocks at several offsets with and without alignment, reads them back
  // through the device, and checks the file with pread.
  void WriteReadRoundTrip(BlockDevice& dev, const std::string& path);

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<Ring> ring_;
};

struct Extent {
  uint64_t offset;
  uint32_t len;
};
// Aligned extents of different sizes, including the last block of a 1 MiB file.
constexpr std::array<Extent, 5> kAlignedExtents = {{
    {0, 4096}, {4096, 8192}, {65536, 65536}, {512 * 1024, 4096}, {1024 * 1024 - 8192, 8192}}};

void UringBlockDevice::WriteReadRoundTrip(BlockDevice& dev, const std::string& path) {
  uint64_t tag = 100;
  for (const Extent& e : kAlignedExtents) {
    auto src = AllocAligned(e.len);
    FillRandom(src.get(), e.len, e.offset + 1);
    EXPECT_EQ(RunOne(*ring_, dev, Write(e.offset, src.get(), e.len, tag++)),
              static_cast<int32_t>(e.len));
    auto dst = AllocAligned(e.len);
    std::memset(dst.get(), 0xEE, e.len);
    EXPECT_EQ(RunOne(*ring_, dev, Read(e.offset, dst.get(), e.len, tag++)),
              static_cast<int32_t>(e.len));
    EXPECT_EQ(std::memcmp(src.get(), dst.get(), e.len), 0) << "read back at " << e.offset;
    auto on_disk = ReadFile(path, e.offset, e.len);
    EXPECT_EQ(std::memcmp(src.get(), on_disk.data(), e.len), 0) << "file at " << e.offset;
  }
}

// ---- Data round trips -----------------------------------------------------------------------

TEST_F(UringBlockDevice, WriteThenReadBackWithoutPool) {
  std::string path = Path("plain.img");
  auto dev = OpenNew(path, 1 << 20);
  ASSERT_NE(dev, nullptr);
  EXPECT_EQ(dev->size(), 1u << 20);
  EXPECT_EQ(dev->name(), path);
  EXPECT_EQ(dev->queue_depth(), 64u);
  EXPECT_EQ(dev->in_flight(), 0u);
  WriteReadRoundTrip(*dev, path);
  EXPECT_EQ(dev->in_flight(), 0u);
}

TEST_F(UringBlockDevice, WriteThenReadBackWithRegisteredPool) {
  auto pool_or = BufferPool::Create(64 * 1024, 8, HugePages::kNever);
  ASSERT_TRUE(pool_or.ok()) << pool_or.status().message();
  auto& pool = pool_or.value();
  ASSERT_TRUE(ring_->RegisterBuffers(*pool).ok());
  EXPECT_TRUE(ring_->has_buffers());

  std::string path = Path("fixed.img");
  auto dev = OpenNew(path, 1 << 20);
  ASSERT_NE(dev, nullptr);
  uint64_t tag = 1;
  for (const Extent& e : kAlignedExtents) {
    auto src = pool->TryGet();
    auto dst = pool->TryGet();
    ASSERT_TRUE(src && dst);
    FillRandom(src->data(), e.len, e.offset + 7);
    std::memset(dst->data(), 0xEE, e.len);
    EXPECT_EQ(RunOne(*ring_, *dev, Write(e.offset, src->data(), e.len, tag++, src->index())),
              static_cast<int32_t>(e.len));
    EXPECT_EQ(RunOne(*ring_, *dev, Read(e.offset, dst->data(), e.len, tag++, dst->index())),
              static_cast<int32_t>(e.len));
    EXPECT_EQ(std::memcmp(src->data(), dst->data(), e.len), 0) << "offset " << e.offset;
    auto on_disk = ReadFile(path, e.offset, e.len);
    EXPECT_EQ(std::memcmp(src->data(), on_disk.data(), e.len), 0) << "file at " << e.offset;
  }
  // A request that uses the middle of a fixed buffer, with an unaligned length and offset
  // (the buffered descriptor, still READ_FIXED / WRITE_FIXED).
  auto buf = pool->TryGet();
  ASSERT_TRUE(buf.has_value());
  std::byte* p = buf->data() + 4096 + 3;
  FillRandom(p, 1000, 99);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(5000, p, 1000, tag++, buf->index())), 1000);
  std::vector<std::byte> want(p, p + 1000);
  std::memset(buf->data(), 0, buf->capacity());
  EXPECT_EQ(RunOne(*ring_, *dev, Read(5000, buf->data() + 8192 + 1, 1000, tag++, buf->index())),
            1000);
  EXPECT_EQ(std::memcmp(buf->data() + 8192 + 1, want.data(), 1000), 0);
  EXPECT_EQ(ReadFile(path, 5000, 1000), want);
}

TEST_F(UringBlockDevice, BufIndexWithoutRegisteredBuffersFallsBackToPlainIo) {
  // buf_index is only a hint when the ring has no registered pool.
  auto pool_or = BufferPool::Create(8192, 2, HugePages::kNever);
  ASSERT_TRUE(pool_or.ok());
  auto& pool = pool_or.value();
  auto buf = pool->TryGet();
  ASSERT_TRUE(buf.has_value());
  ASSERT_FALSE(ring_->has_buffers());
  std::string path = Path("hint.img");
  auto dev = OpenNew(path, 65536);
  ASSERT_NE(dev, nullptr);
  FillRandom(buf->data(), 8192, 5);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(8192, buf->data(), 8192, 1, buf->index())), 8192);
  std::vector<std::byte> want(buf->data(), buf->data() + 8192);
  EXPECT_EQ(ReadFile(path, 8192, 8192), want);
}

TEST_F(UringBlockDevice, FixedRequestOutsideItsBufferFailsWithEfault) {
  auto pool_or = BufferPool::Create(8192, 2, HugePages::kNever);
  ASSERT_TRUE(pool_or.ok());
  auto& pool = pool_or.value();
  ASSERT_TRUE(ring_->RegisterBuffers(*pool).ok());
  auto a = pool->TryGet();
  auto b = pool->TryGet();
  ASSERT_TRUE(a && b);
  auto dev = OpenNew(Path("efault.img"), 65536);
  ASSERT_NE(dev, nullptr);
  // Data in buffer b, but the index says a: the kernel must refuse, not read into b.
  std::memset(b->data(), 0x11, 8192);
  int32_t res = RunOne(*ring_, *dev, Read(0, b->data(), 8192, 1, a->index()));
  EXPECT_EQ(res, -EFAULT);
  EXPECT_EQ(b->data()[0], std::byte{0x11});
}

TEST_F(UringBlockDevice, UnalignedMemoryOffsetAndLengthGoBuffered) {
  std::string path = Path("unaligned.img");
  auto dev = OpenNew(path, 256 * 1024);
  ASSERT_NE(dev, nullptr);
  // Unaligned offset and length.
  auto data = RandomBytes(1234, 1);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(777, data.data(), 1234, 1)), 1234);
  EXPECT_EQ(ReadFile(path, 777, 1234), data);
  std::vector<std::byte> back(1234);
  EXPECT_EQ(RunOne(*ring_, *dev, Read(777, back.data(), 1234, 2)), 1234);
  EXPECT_EQ(back, data);
  // Aligned offset and length, unaligned memory.
  auto raw = AllocAligned(8192 + 4096);
  std::byte* p = raw.get() + 1;
  FillRandom(p, 8192, 2);
  std::vector<std::byte> want(p, p + 8192);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(16384, p, 8192, 3)), 8192);
  EXPECT_EQ(ReadFile(path, 16384, 8192), want);
  std::memset(p, 0, 8192);
  EXPECT_EQ(RunOne(*ring_, *dev, Read(16384, p, 8192, 4)), 8192);
  EXPECT_EQ(std::memcmp(p, want.data(), 8192), 0);
  // Aligned offset, unaligned length, spanning a page boundary.
  auto odd = RandomBytes(4096 + 100, 3);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(32768, odd.data(), 4196, 5)), 4196);
  EXPECT_EQ(ReadFile(path, 32768, 4196), odd);
}

TEST_F(UringBlockDevice, ZeroLengthRequestsComplete) {
  auto dev = OpenNew(Path("zero.img"), 65536);
  ASSERT_NE(dev, nullptr);
  auto buf = AllocAligned(4096);
  EXPECT_EQ(RunOne(*ring_, *dev, Read(4096, buf.get(), 0, 1)), 0);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(4096, buf.get(), 0, 2)), 0);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(65536, buf.get(), 0, 3)), 0);  // at the very end
}

// ---- The end of the file ----------------------------------------------------------------------

class UringBlockDeviceTail : public UringBlockDevice {
 protected:
  void SetUp() override {
    UringBlockDevice::SetUp();
    if (HasFatalFailure()) return;
    path_ = Path("tail.img");
    contents_ = RandomBytes(10000, 42);
    WriteFile(path_, contents_);
  }
  std::string path_;
  std::vector<std::byte> contents_;
};

TEST_F(UringBlockDeviceTail, ReadCrossingTheEndReturnsTheBytesThatExist) {
  UringOpenOptions o;  // read-only, existing file
  auto dev = Open(path_, o);
  ASSERT_NE(dev, nullptr);
  EXPECT_EQ(dev->size(), 10000u);
  // Aligned request (direct descriptor) that crosses the end: 1808 bytes.
  auto buf = AllocAligned(16384);
  std::memset(buf.get(), 0xEE, 16384);
  EXPECT_EQ(RunOne(*ring_, *dev, Read(8192, buf.get(), 8192, 1)), 10000 - 8192);
  EXPECT_EQ(std::memcmp(buf.get(), contents_.data() + 8192, 10000 - 8192), 0);
  // (The rest of the file-system block may be overwritten: O_DIRECT transfers whole blocks.)
  // The whole file and more in one request.
  std::memset(buf.get(), 0xEE, 16384);
  EXPECT_EQ(RunOne(*ring_, *dev, Read(0, buf.get(), 16384, 2)), 10000);
  EXPECT_EQ(std::memcmp(buf.get(), contents_.data(), 10000), 0);
  // Unaligned start that crosses the end.
  EXPECT_EQ(RunOne(*ring_, *dev, Read(9000, buf.get(), 4096, 3)), 1000);
  EXPECT_EQ(std::memcmp(buf.get(), contents_.data() + 9000, 1000), 0);
}

TEST_F(UringBlockDeviceTail, ReadAtOrAfterTheEndReturnsZero) {
  auto dev = Open(path_, UringOpenOptions{});
  ASSERT_NE(dev, nullptr);
  auto buf = AllocAligned(4096);
  EXPECT_EQ(RunOne(*ring_, *dev, Read(10000, buf.get(), 4096, 1)), 0);
  EXPECT_EQ(RunOne(*ring_, *dev, Read(12288, buf.get(), 4096, 2)), 0);  // aligned, past the end
  EXPECT_EQ(RunOne(*ring_, *dev, Read(1 << 30, buf.get(), 4096, 3)), 0);
}

TEST_F(UringBlockDeviceTail, UnalignedTailReadsAndWrites) {
  UringOpenOptions o;
  o.writable = true;
  auto dev = Open(path_, o);
  ASSERT_NE(dev, nullptr);
  EXPECT_EQ(dev->size(), 10000u) << "min_size 0 must not change the size";
  // The short last block: 1808 bytes at 8192.
  auto buf = AllocAligned(8192);
  EXPECT_EQ(RunOne(*ring_, *dev, Read(8192, buf.get(), 10000 - 8192, 1)), 10000 - 8192);
  EXPECT_EQ(std::memcmp(buf.get(), contents_.data() + 8192, 10000 - 8192), 0);
  // Rewrite the short last block, then a 1234-byte piece at an unaligned offset.
  FillRandom(buf.get(), 10000 - 8192, 7);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(8192, buf.get(), 10000 - 8192, 2)), 10000 - 8192);
  std::memcpy(contents_.data() + 8192, buf.get(), 10000 - 8192);
  auto piece = RandomBytes(1234, 8);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(3333, piece.data(), 1234, 3)), 1234);
  std::copy(piece.begin(), piece.end(), contents_.begin() + 3333);
  // A write that ends exactly at the end of the file is allowed.
  auto last = RandomBytes(10, 9);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(9990, last.data(), 10, 4)), 10);
  std::copy(last.begin(), last.end(), contents_.begin() + 9990);
  EXPECT_EQ(ReadFile(path_, 0, 10000), contents_);
  EXPECT_EQ(FileSize(path_), 10000u) << "writes must not grow the file";
}

// ---- Direct I/O and the buffered fallback -----------------------------------------------------

TEST_F(UringBlockDevice, RootFsFileOpensWithODirect) {
  struct statfs sfs {};
  ASSERT_EQ(statfs(dir_->path().c_str(), &sfs), 0);
  if (!FsAcceptsODirect(dir_->path())) {
    GTEST_SKIP() << "SKIPPED LOUDLY: " << dir_->path() << " (statfs f_type 0x" << std::hex
                 << sfs.f_type << ") refuses O_DIRECT, so the direct path cannot be tested here";
  }
  std::string path = Path("direct.img");
  auto dev = OpenNew(path, 1 << 20);
  ASSERT_NE(dev, nullptr);
  EXPECT_TRUE(dev->direct()) << "f_type 0x" << std::hex << sfs.f_type;
  EXPECT_EQ(dev->alignment(), 4096u);
  WriteReadRoundTrip(*dev, path);
}

TEST_F(UringBlockDevice, AlignedRequestsBypassThePageCacheAndUnalignedOnesDoNot) {
  if (!FsAcceptsODirect(dir_->path())) {
    GTEST_SKIP() << "SKIPPED LOUDLY: " << dir_->path() << " refuses O_DIRECT";
  }
  std::string path = Path("cache.img");
  auto dev = OpenNew(path, 1 << 20);
  ASSERT_NE(dev, nullptr);
  ASSERT_TRUE(dev->direct());
  ASSERT_EQ(CachedPages(path, 0, 1 << 20), 0u) << "a fresh file has nothing cached";
  // Aligned write and read of 64 KiB at 256 KiB: O_DIRECT, nothing lands in the page cache.
  auto buf = AllocAligned(65536);
  FillRandom(buf.get(), 65536, 1);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(256 * 1024, buf.get(), 65536, 1)), 65536);
  EXPECT_EQ(RunOne(*ring_, *dev, Read(256 * 1024, buf.get(), 65536, 2)), 65536);
  EXPECT_EQ(CachedPages(path, 256 * 1024, 65536), 0u) << "aligned I/O went through the cache";
  // An unaligned write at 512 KiB + 100: the buffered descriptor, so its page is cached.
  EXPECT_EQ(RunOne(*ring_, *dev, Write(512 * 1024 + 100, buf.get(), 1000, 3)), 1000);
  EXPECT_EQ(CachedPages(path, 512 * 1024, 4096), 1u) << "unaligned I/O bypassed the cache";
}

TEST_F(UringBlockDevice, PreferDirectFalseUsesBufferedIo) {
  std::string path = Path("buffered.img");
  auto dev = OpenNew(path, 1 << 20, 64, /*prefer_direct=*/false);
  ASSERT_NE(dev, nullptr);
  EXPECT_FALSE(dev->direct());
  // An aligned write lands in the page cache (checked before anything else reads the file).
  auto buf = AllocAligned(65536);
  FillRandom(buf.get(), 65536, 1);
  ASSERT_EQ(CachedPages(path, 256 * 1024, 65536), 0u);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(256 * 1024, buf.get(), 65536, 1)), 65536);
  EXPECT_EQ(CachedPages(path, 256 * 1024, 65536), 16u);
  WriteReadRoundTrip(*dev, path);
}

TEST_F(UringBlockDevice, TmpfsFileWorks) {
  TempDir shm("/dev/shm");
  ASSERT_FALSE(shm.path().empty()) << "mkdtemp under /dev/shm: " << std::strerror(errno);
  struct statfs sfs {};
  ASSERT_EQ(statfs(shm.path().c_str(), &sfs), 0);
  ASSERT_EQ(sfs.f_type, static_cast<decltype(sfs.f_type)>(TMPFS_MAGIC)) << "/dev/shm is not tmpfs";
  bool fs_direct = FsAcceptsODirect(shm.path());
  std::string path = shm.path() + "/tmpfs.img";
  std::ostringstream log;
  auto saved = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(log)));
  auto dev = OpenNew(path, 1 << 20);
  spdlog::set_default_logger(saved);
  ASSERT_NE(dev, nullptr);
  // Writes are done inline there (tmpfs has no asynchronous write path), and said so.
  EXPECT_NE(log.str().find(path + ": on tmpfs: writes are done inline"), std::string::npos)
      << log.str();
  // The device uses O_DIRECT exactly when the file system takes it (tmpfs does since Linux 6.6).
  EXPECT_EQ(dev->direct(), fs_direct);
  WriteReadRoundTrip(*dev, path);
  auto piece = RandomBytes(1234, 3);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(4097, piece.data(), 1234, 1)), 1234);
  EXPECT_EQ(ReadFile(path, 4097, 1234), piece);
  dev.reset();  // before the TempDir goes
}

TEST_F(UringBlockDevice, FallsBackToBufferedWhenTheFsRefusesODirect) {
  // tmpfs takes O_DIRECT since Linux 6.6; ramfs never does (open(O_DIRECT) fails with EINVAL).
  // Mounting one needs CAP_SYS_ADMIN, which the tests have in CI (root).
  TempDir dir(::testing::TempDir());
  ASSERT_FALSE(dir.path().empty()) << "mkdtemp: " << std::strerror(errno);
  if (mount("ramfs", dir.path().c_str(), "ramfs", 0, "mode=0700") != 0) {
    GTEST_SKIP() << "SKIPPED LOUDLY: cannot mount a ramfs on " << dir.path() << " ("
                 << std::strerror(errno) << "; not root?), so the refused-O_DIRECT fallback "
                 << "is not exercised";
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{dir.path()};
  ASSERT_FALSE(FsAcceptsODirect(dir.path())) << "ramfs accepted O_DIRECT";

  // The fallback is said in the log, once, naming the file.
  std::ostringstream log;
  auto saved = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(log)));
  std::string path = dir.path() + "/fallback.img";
  auto dev = OpenNew(path, 1 << 20);
  spdlog::set_default_logger(saved);
  ASSERT_NE(dev, nullptr);
  EXPECT_FALSE(dev->direct());
  const std::string said = log.str();
  EXPECT_NE(said.find(path + ": the file system refuses O_DIRECT"), std::string::npos) << said;
  EXPECT_EQ(said.find("refuses O_DIRECT"), said.rfind("refuses O_DIRECT")) << "said more than once: " << said;

  WriteReadRoundTrip(*dev, path);
  auto piece = RandomBytes(1234, 5);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(4097, piece.data(), 1234, 1)), 1234);
  EXPECT_EQ(ReadFile(path, 4097, 1234), piece);
  dev.reset();
}

// ---- Opening ----------------------------------------------------------------------------------

TEST_F(UringBlockDevice, MinSizeExtendsANewFile) {
  std::string path = Path("new.img");
  ASSERT_FALSE(std::filesystem::exists(path));
  const uint64_t size = 3 * 1024 * 1024 + 4096;
  auto dev = OpenNew(path, size);
  ASSERT_NE(dev, nullptr);
  EXPECT_EQ(dev->size(), size);
  EXPECT_EQ(FileSize(path), size);
  // The new space reads as zeros, up to the last byte.
  auto buf = AllocAligned(8192);
  std::memset(buf.get(), 0xEE, 8192);
  EXPECT_EQ(RunOne(*ring_, *dev, Read(size - 8192, buf.get(), 8192, 1)), 8192);
  for (size_t i = 0; i < 8192; ++i) ASSERT_EQ(buf.get()[i], std::byte{0}) << i;
}

TEST_F(UringBlockDevice, MinSizeNeverShrinksAndGrowsAnExistingFile) {
  std::string path = Path("existing.img");
  auto data = RandomBytes(20000, 1);
  WriteFile(path, data);
  UringOpenOptions o;
  o.writable = true;
  o.min_size = 4096;  // smaller than the file
  {
    auto dev = Open(path, o);
    ASSERT_NE(dev, nullptr);
    EXPECT_EQ(dev->size(), 20000u);
  }
  EXPECT_EQ(FileSize(path), 20000u);
  o.min_size = 65536;  // larger: grows, keeping the contents
  {
    auto dev = Open(path, o);
    ASSERT_NE(dev, nullptr);
    EXPECT_EQ(dev->size(), 65536u);
  }
  EXPECT_EQ(FileSize(path), 65536u);
  EXPECT_EQ(ReadFile(path, 0, 20000), data);
}

TEST_F(UringBlockDevice, OpeningAMissingFileNamesThePath) {
  std::string path = Path("does-not-exist.img");
  for (bool writable : {false, true}) {
    UringOpenOptions o;
    o.writable = writable;
    auto r = OpenUringDevice(*ring_, path, o);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().err(), ENOENT);
    EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
  }
  EXPECT_FALSE(std::filesystem::exists(path)) << "create=false must not create the file";
}

TEST_F(UringBlockDevice, ADirectoryIsRefused) {
  auto r = OpenUringDevice(*ring_, dir_->path(), UringOpenOptions{});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a regular file or block device"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find(dir_->path()), std::string::npos) << r.status().message();
  UringOpenOptions w;
  w.writable = true;
  auto rw = OpenUringDevice(*ring_, dir_->path(), w);
  ASSERT_FALSE(rw.ok());
  EXPECT_NE(rw.status().message().find(dir_->path()), std::string::npos) << rw.status().message();
}

TEST_F(UringBlockDevice, ACharacterDeviceIsRefused) {
  auto r = OpenUringDevice(*ring_, "/dev/null", UringOpenOptions{});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a regular file or block device"), std::string::npos)
      << r.status().message();
}

// ---- Submit's checks --------------------------------------------------------------------------

TEST_F(UringBlockDevice, SubmitBeyondQueueDepthFailsWithBusyAndQueuesNothing) {
  auto dev = OpenNew(Path("depth.img"), 65536, /*depth=*/4);
  ASSERT_NE(dev, nullptr);
  EXPECT_EQ(dev->queue_depth(), 4u);
  auto buf = AllocAligned(5 * 4096);
  std::vector<IoRequest> five;
  for (uint32_t i = 0; i < 5; ++i) five.push_back(Read(i * 4096, buf.get() + i * 4096, 4096, i));
  Status s = dev->Submit(five);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kBusy);
  EXPECT_NE(s.message().find(dev->name()), std::string::npos) << s.message();
  EXPECT_EQ(dev->in_flight(), 0u);
  EXPECT_EQ(ring_->pending_sqes(), 0u) << "a refused batch must queue nothing";

  // Four fit; a fifth does not while they are in flight.
  ASSERT_TRUE(dev->Submit(std::span(five).first(4)).ok());
  EXPECT_EQ(dev->in_flight(), 4u);
  Status more = dev->Submit(std::span(five).subspan(4));
  EXPECT_EQ(more.code(), ErrorCode::kBusy);
  auto done = Drain(*ring_, *dev, 4);
  auto tags = ByTag(done);
  EXPECT_EQ(tags.size(), 4u);
  for (uint64_t t = 0; t < 4; ++t) EXPECT_EQ(tags[t], 4096) << "tag " << t;
  EXPECT_EQ(dev->in_flight(), 0u);
  // And now the fifth fits.
  EXPECT_EQ(RunOne(*ring_, *dev, five[4]), 4096);
}

// Regression: a slot goes back to the free list when its CQE arrives, before the completion is
// polled; completed-but-unpolled requests must still count against the queue depth, or
// Complete() overwrites an unpolled completion (a lost tag) and Poll() returns another twice.
TEST_F(UringBlockDevice, UnpolledCompletionsCountAgainstQueueDepth) {
  std::string path = Path("unpolled.img");
  WriteFile(path, RandomBytes(65536, 1));
  UringOpenOptions o;
  o.queue_depth = 4;
  o.prefer_direct = false;  // page-cache reads complete at once
  auto dev = Open(path, o);
  ASSERT_NE(dev, nullptr);
  auto buf = AllocAligned(5 * 4096);
  std::vector<IoRequest> reqs;
  for (uint32_t i = 0; i < 5; ++i) reqs.push_back(Read(i * 4096, buf.get() + i * 4096, 4096, i + 1));
  ASSERT_TRUE(dev->Submit(std::span(reqs).first(4)).ok());
  // Let the four complete inside the device without polling them.
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(ring_->Wait(10ms).ok());
  EXPECT_EQ(dev->in_flight(), 4u) << "unpolled completions count as in flight";
  Status s = dev->Submit(std::span(reqs).subspan(4));
  EXPECT_EQ(s.code(), ErrorCode::kBusy)
      << "a fifth request was accepted with queue depth 4 and 4 completions unpolled ("
      << s.message() << ")";
  size_t expect = s.ok() ? 5 : 4;
  auto done = Drain(*ring_, *dev, expect);
  std::map<uint64_t, int> seen;
  for (const auto& c : done) ++seen[c.tag];
  for (uint64_t t = 1; t <= expect; ++t) {
    EXPECT_EQ(seen[t], 1) << "tag " << t << " completed " << seen[t] << " times";
  }
}

TEST_F(UringBlockDevice, WriteBeyondTheSizeFailsNamingTheFile) {
  std::string path = Path("small.img");
  auto dev = OpenNew(path, 65536);
  ASSERT_NE(dev, nullptr);
  auto buf = AllocAligned(8192);
  for (const IoRequest& bad : {Write(65536, buf.get(), 4096, 1), Write(61440, buf.get(), 8192, 2),
                               Write(65535, buf.get(), 2, 3), Write(1ull << 40, buf.get(), 1, 4),
                               Write(UINT64_MAX, buf.get(), 4096, 5),
                               Write(4096, buf.get(), UINT32_MAX, 6)}) {
    Status s = dev->Submit({&bad, 1});
    ASSERT_FALSE(s.ok()) << "write of " << bad.len << " at " << bad.offset;
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
  }
  // One bad request refuses the whole batch.
  std::vector<IoRequest> batch = {Write(0, buf.get(), 4096, 7), Write(65536, buf.get(), 4096, 8)};
  EXPECT_FALSE(dev->Submit(batch).ok());
  EXPECT_EQ(dev->in_flight(), 0u);
  EXPECT_EQ(ring_->pending_sqes(), 0u);
  EXPECT_EQ(FileSize(path), 65536u);
}

TEST_F(UringBlockDevice, WriteOnAReadOnlyDeviceCompletesWithAnError) {
  std::string path = Path("ro.img");
  WriteFile(path, RandomBytes(8192, 1));
  auto dev = Open(path, UringOpenOptions{});  // writable = false
  ASSERT_NE(dev, nullptr);
  auto buf = AllocAligned(4096);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(0, buf.get(), 4096, 1)), -EBADF);
}

// ---- Flush and batches ------------------------------------------------------------------------

TEST_F(UringBlockDevice, FlushCompletesWithZero) {
  std::string path = Path("flush.img");
  auto dev = OpenNew(path, 65536);
  ASSERT_NE(dev, nullptr);
  auto buf = AllocAligned(4096);
  FillRandom(buf.get(), 4096, 3);
  EXPECT_EQ(RunOne(*ring_, *dev, Write(0, buf.get(), 4096, 1)), 4096);
  EXPECT_EQ(RunOne(*ring_, *dev, Flush(77)), 0);
  // A flush with nothing written is fine too, and on a buffered device.
  EXPECT_EQ(RunOne(*ring_, *dev, Flush(78)), 0);
  auto buffered = OpenNew(Path("flush-buffered.img"), 65536, 8, false);
  ASSERT_NE(buffered, nullptr);
  EXPECT_EQ(RunOne(*ring_, *buffered, Write(100, buf.get(), 10, 1)), 10);
  EXPECT_EQ(RunOne(*ring_, *buffered, Flush(2)), 0);
}

// ---- Zero ranges ------------------------------------------------------------------------------

// Fills `path` (a new 1 MiB file) with random bytes, zeroes [4096 + 512, +300 KiB) through the
// device, and checks the file with pread: zeros there, the rest untouched.
void ZeroRangeOn(Ring& ring, BlockDevice& dev, const std::string& path, bool unmap, bool dsync) {
  auto data = RandomBytes(1 << 20, 8);
  for (uint64_t off = 0; off < (1 << 20); off += 65536) {
    ASSERT_EQ(RunOne(ring, dev, Write(off, data.data() + off, 65536, 1)), 65536);
  }
  const uint64_t at = 4096 + 512;
  const uint32_t len = 300 << 10;
  ASSERT_EQ(RunOne(ring, dev, Zero(at, len, 2, unmap, dsync)), 0);
  std::fill(data.begin() + static_cast<ptrdiff_t>(at),
            data.begin() + static_cast<ptrdiff_t>(at + len), std::byte{0});
  EXPECT_EQ(ReadFile(path, 0, 1 << 20), data);
}

TEST_F(UringBlockDevice, ZeroRangesReadBackAsZerosOnEveryFileSystemKind) {
  std::string path = Path("zero.img");
  auto dev = OpenNew(path, 1 << 20);
  ASSERT_NE(dev, nullptr);
  ZeroRangeOn(*ring_, *dev, path, false, false);
  ZeroRangeOn(*ring_, *dev, path, true, true);
  // A punched range gives its blocks back (the file system here can tell).
  struct stat before {};
  ASSERT_EQ(stat(path.c_str(), &before), 0);
  ASSERT_EQ(RunOne(*ring_, *dev, Zero(0, 1 << 20, 3, true)), 0);
  struct stat after {};
  ASSERT_EQ(stat(path.c_str(), &after), 0);
  EXPECT_LT(after.st_blocks, before.st_blocks);
  // tmpfs (no ZERO_RANGE: punched instead).
  TempDir shm("/dev/shm");
  ASSERT_FALSE(shm.path().empty());
  std::string shm_path = shm.path() + "/zero.img";
  auto on_shm = OpenNew(shm_path, 1 << 20);
  ASSERT_NE(on_shm, nullptr);
  ZeroRangeOn(*ring_, *on_shm, shm_path, false, true);
  on_shm.reset();
  // Beyond the end: refused, naming the device.
  Status s = dev->Submit(std::vector<IoRequest>{Zero((1 << 20) - 512, 1024, 4, false)});
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(s.message().find("zeroing of 1024 bytes"), std::string::npos) << s.message();
}

TEST_F(UringBlockDevice, ZeroRangesFallBackToWritingZerosWhereFallocateIsMissing) {
  // ramfs has no fallocate hole punching or zeroing: the device writes zeros itself.
  TempDir dir(::testing::TempDir());
  ASSERT_FALSE(dir.path().empty());
  if (mount("ramfs", dir.path().c_str(), "ramfs", 0, "mode=0700") != 0) {
    GTEST_SKIP() << "SKIPPED LOUDLY: cannot mount a ramfs on " << dir.path() << " ("
                 << std::strerror(errno) << "; not root?), so the zero-writing fallback is not "
                 << "exercised";
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{dir.path()};
  std::string path = dir.path() + "/zero.img";
  auto dev = OpenNew(path, 1 << 20);
  ASSERT_NE(dev, nullptr);
  ZeroRangeOn(*ring_, *dev, path, true, true);
  ZeroRangeOn(*ring_, *dev, path, false, false);
  dev.reset();
}

TEST(MemBlockDevice, ZeroRangesAndTheirDurability) {
  MemBlockDevice dev("mem", 8192);
  std::vector<std::byte> ones(8192, std::byte{1});
  ASSERT_TRUE(dev.Submit(std::vector<IoRequest>{IoRequest{IoOp::kWrite, 0, ones.data(), 8192,
                                                           kNoBufIndex, 1, true}})
                  .ok());
  ASSERT_TRUE(dev.Submit(std::vector<IoRequest>{Zero(1024, 512, 2, false, false)}).ok());
  std::array<IoCompletion, 4> done;
  ASSERT_EQ(dev.Poll(done), 2u);
  EXPECT_EQ(done[1].res, 0);
  EXPECT_EQ(dev.contents()[1024], std::byte{0});
  EXPECT_EQ(dev.durable_contents()[1024], std::byte{1}) << "not dsync: not durable yet";
  EXPECT_EQ(dev.zeroes(), 1u);
  EXPECT_FALSE(dev.Submit(std::vector<IoRequest>{Zero(8000, 512, 3, false)}).ok());
}

TEST_F(UringBlockDevice, ManyRequestsInOneBatchAllCompleteWithTheirTags) {
  std::string path = Path("batch.img");
  constexpr uint32_t kN = 64;
  auto dev = OpenNew(path, kN * 4096, kN);
  ASSERT_NE(dev, nullptr);
  auto src = AllocAligned(kN * 4096);
  FillRandom(src.get(), kN * 4096, 11);
  std::vector<IoRequest> writes;
  for (uint32_t i = 0; i < kN; ++i) {
    writes.push_back(Write(uint64_t{i} * 4096, src.get() + i * 4096, 4096, 1000 + i));
  }
  auto done = RunBatch(*ring_, *dev, writes);
  auto tags = ByTag(done);
  ASSERT_EQ(tags.size(), kN);
  for (uint32_t i = 0; i < kN; ++i) EXPECT_EQ(tags[1000 + i], 4096) << "write tag " << 1000 + i;
  EXPECT_EQ(dev->in_flight(), 0u);

  // Reads into a scrambled layout, so a mix-up of tags or buffers would show.
  auto dst = AllocAligned(kN * 4096);
  std::vector<IoRequest> reads;
  for (uint32_t i = 0; i < kN; ++i) {
    uint32_t j = (i * 37) % kN;
    reads.push_back(Read(uint64_t{j} * 4096, dst.get() + i * 4096, 4096, 5000 + j));
  }
  tags = ByTag(RunBatch(*ring_, *dev, reads));
  ASSERT_EQ(tags.size(), kN);
  for (uint32_t i = 0; i < kN; ++i) {
    uint32_t j = (i * 37) % kN;
    EXPECT_EQ(tags[5000 + j], 4096);
    EXPECT_EQ(std::memcmp(dst.get() + i * 4096, src.get() + j * 4096, 4096), 0) << "block " << j;
  }
  EXPECT_EQ(ReadFile(path, 0, kN * 4096),
            std::vector<std::byte>(src.get(), src.get() + kN * 4096));
}

TEST_F(UringBlockDevice, BatchLargerThanTheSubmissionQueueCompletes) {
  // A ring of 8 SQEs (32 CQEs) and a batch of 32: GetSqe must push the full SQ to the kernel
  // and go on.
  auto small = Ring::Create(8);
  ASSERT_TRUE(small.ok()) << small.status().message();
  auto& ring = small.value();
  std::string path = Path("small-ring.img");
  auto r = OpenUringDevice(*ring, path, UringOpenOptions{true, true, 32 * 4096, 32, true});
  ASSERT_TRUE(r.ok()) << r.status().message();
  auto& dev = r.value();
  auto src = AllocAligned(32 * 4096);
  FillRandom(src.get(), 32 * 4096, 12);
  std::vector<IoRequest> writes;
  for (uint32_t i = 0; i < 32; ++i) writes.push_back(Write(i * 4096, src.get() + i * 4096, 4096, i));
  auto tags = ByTag(RunBatch(*ring, *dev, writes));
  ASSERT_EQ(tags.size(), 32u);
  for (uint64_t i = 0; i < 32; ++i) EXPECT_EQ(tags[i], 4096) << i;
  EXPECT_EQ(ReadFile(path, 0, 32 * 4096), std::vector<std::byte>(src.get(), src.get() + 32 * 4096));
  dev.reset();  // before its ring
}

TEST_F(UringBlockDevice, RepeatedBatchesReuseSlots) {
  // Many more requests over time than the depth: slots must recycle correctly.
  auto dev = OpenNew(Path("reuse.img"), 256 * 4096, 8);
  ASSERT_NE(dev, nullptr);
  auto buf = AllocAligned(8 * 4096);
  uint64_t tag = 0;
  for (int round = 0; round < 50; ++round) {
    std::vector<IoRequest> reqs;
    for (uint32_t i = 0; i < 8; ++i) {
      uint64_t off = uint64_t{(round * 8 + i) % 256} * 4096;
      reqs.push_back(i % 2 ? Read(off, buf.get() + i * 4096, 4096, tag++)
                           : Write(off, buf.get() + i * 4096, 4096, tag++));
    }
    auto tags = ByTag(RunBatch(*ring_, *dev, reqs));
    ASSERT_EQ(tags.size(), 8u) << "round " << round;
    for (const auto& [t, res] : tags) {
      EXPECT_GE(t, tag - 8);
      EXPECT_EQ(res, 4096);
    }
  }
  EXPECT_EQ(dev->in_flight(), 0u);
}

TEST_F(UringBlockDevice, DestroyingWithRequestsInFlightWaitsForThem) {
  // The destructor must wait out requests in the kernel; otherwise their completions would be
  // dispatched to a freed device (ASan reports it in the Wait calls below).
  std::string path = Path("inflight.img");
  auto dev = OpenNew(path, 64 * 65536, 64);
  ASSERT_NE(dev, nullptr);
  auto src = AllocAligned(64 * 65536);
  FillRandom(src.get(), 64 * 65536, 3);
  std::vector<IoRequest> writes;
  for (uint32_t i = 0; i < 64; ++i) {
    writes.push_back(Write(uint64_t{i} * 65536, src.get() + size_t{i} * 65536, 65536, i));
  }
  ASSERT_TRUE(dev->Submit(writes).ok());
  ASSERT_TRUE(ring_->Submit().ok());
  dev.reset();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(ring_->Wait(1ms).ok());
  // The writes did land.
  EXPECT_EQ(ReadFile(path, 0, 64 * 65536),
            std::vector<std::byte>(src.get(), src.get() + 64 * 65536));
  // The ring is still usable and the fixed-file slots were released.
  auto again = OpenNew(Path("after.img"), 65536);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(RunOne(*ring_, *again, Write(0, src.get(), 4096, 1)), 4096);
}

TEST_F(UringBlockDevice, ManyDevicesOnOneRing) {
  std::vector<std::unique_ptr<BlockDevice>> devs;
  for (int i = 0; i < 20; ++i) {
    devs.push_back(OpenNew(Path("multi" + std::to_string(i) + ".img"), 65536, 4));
    ASSERT_NE(devs.back(), nullptr);
  }
  auto buf = AllocAligned(4096);
  for (size_t i = 0; i < devs.size(); ++i) {
    std::memset(buf.get(), static_cast<int>(i), 4096);
    EXPECT_EQ(RunOne(*ring_, *devs[i], Write(8192, buf.get(), 4096, i)), 4096);
  }
  for (size_t i = 0; i < devs.size(); ++i) {
    EXPECT_EQ(ReadFile(Path("multi" + std::to_string(i) + ".img"), 8192, 1)[0],
              static_cast<std::byte>(i));
  }
}

// ---- StatPath -----------------------------------------------------------------------------------

TEST_F(UringBlockDevice, StatPathReportsTheSizeOfAFile) {
  std::string path = Path("stat.img");
  WriteFile(path, RandomBytes(10000, 1));
  auto r = StatPath(path);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->size, 10000u);
  EXPECT_FALSE(r->is_block_device);
  WriteFile(path, {});
  r = StatPath(path);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size, 0u);
}

TEST_F(UringBlockDevice, StatPathMissingIsNotFound) {
  std::string path = Path("missing.img");
  auto r = StatPath(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
  // A missing parent directory is not found either.
  EXPECT_EQ(StatPath(Path("no-dir/x.img")).status().code(), ErrorCode::kNotFound);
}

TEST_F(UringBlockDevice, StatPathRefusesDirectoriesAndCharacterDevices) {
  for (const std::string& p : {dir_->path(), std::string("/dev/null")}) {
    auto r = StatPath(p);
    ASSERT_FALSE(r.ok()) << p;
    EXPECT_NE(r.status().message().find("not a regular file or block device"), std::string::npos)
        << r.status().message();
  }
}

TEST_F(UringBlockDevice, StatPathOfABlockDevice) {
  // Any block device this machine has (read-only use: StatPath only opens and asks its size).
  for (const char* p : {"/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/loop0"}) {
    struct stat st {};
    if (stat(p, &st) != 0 || !S_ISBLK(st.st_mode)) continue;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    close(fd);
    auto r = StatPath(p);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_TRUE(r->is_block_device) << p;
    return;
  }
  GTEST_SKIP() << "SKIPPED LOUDLY: no openable block device found for StatPath";
}

// ---- MemBlockDevice -----------------------------------------------------------------------------

std::vector<IoCompletion> PollAll(MemBlockDevice& dev) {
  std::vector<IoCompletion> out(dev.queue_depth() + 1);
  out.resize(dev.Poll(out));
  return out;
}

TEST(MemBlockDevice, WriteThenReadCompletesAtPollInOrder) {
  MemBlockDevice dev("mem0", 65536, 8);
  EXPECT_EQ(dev.size(), 65536u);
  EXPECT_EQ(dev.name(), "mem0");
  EXPECT_FALSE(dev.direct());
  EXPECT_EQ(dev.alignment(), 1u);
  auto data = RandomBytes(1000, 1);
  std::vector<std::byte> back(1000);
  std::vector<IoRequest> reqs = {Write(123, data.data(), 1000, 1), Read(123, back.data(), 1000, 2)};
  ASSERT_TRUE(dev.Submit(reqs).ok());
  EXPECT_EQ(dev.in_flight(), 2u);
  auto done = PollAll(dev);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[0].tag, 1u);
  EXPECT_EQ(done[0].res, 1000);
  EXPECT_EQ(done[1].tag, 2u);
  EXPECT_EQ(done[1].res, 1000);
  EXPECT_EQ(back, data);
  EXPECT_EQ(dev.in_flight(), 0u);
  EXPECT_EQ(PollAll(dev).size(), 0u);
  EXPECT_EQ(std::memcmp(dev.contents().data() + 123, data.data(), 1000), 0);
  EXPECT_EQ(dev.writes(), 1u);
}

TEST(MemBlockDevice, PollHandsOutAtMostWhatFits) {
  MemBlockDevice dev("mem", 4096, 8);
  std::byte b{};
  std::vector<IoRequest> reqs;
  for (uint64_t t = 0; t < 5; ++t) reqs.push_back(Read(0, &b, 1, t));
  ASSERT_TRUE(dev.Submit(reqs).ok());
  std::array<IoCompletion, 2> two;
  EXPECT_EQ(dev.Poll(two), 2u);
  EXPECT_EQ(two[0].tag, 0u);
  EXPECT_EQ(two[1].tag, 1u);
  EXPECT_EQ(dev.in_flight(), 3u);
  EXPECT_EQ(dev.Poll(two), 2u);
  EXPECT_EQ(two[0].tag, 2u);
  EXPECT_EQ(dev.Poll(two), 1u);
  EXPECT_EQ(two[0].tag, 4u);
  EXPECT_EQ(dev.Poll(two), 0u);
}

TEST(MemBlockDevice, ReadsCrossingTheEndAreShort) {
  MemBlockDevice dev("mem", 10000);
  std::vector<std::byte> buf(8192);
  std::vector<IoRequest> reqs = {Read(8192, buf.data(), 8192, 1), Read(10000, buf.data(), 10, 2)};
  ASSERT_TRUE(dev.Submit(reqs).ok());
  auto done = PollAll(dev);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[0].res, 10000 - 8192);
  EXPECT_EQ(done[1].res, 0);
  // A read that starts beyond the end returns nothing, as on a file.
  IoRequest past = Read(10001, buf.data(), 1, 3);
  ASSERT_TRUE(dev.Submit({&past, 1}).ok());
  auto after = PollAll(dev);
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].res, 0);
}

TEST(MemBlockDevice, WritesBeyondTheSizeAreRefused) {
  MemBlockDevice dev("memdev", 4096);
  std::vector<std::byte> buf(4096);
  for (const IoRequest& bad :
       {Write(1, buf.data(), 4096, 1), Write(4097, buf.data(), 0, 2), Write(UINT64_MAX, buf.data(), 1, 3)}) {
    Status s = dev.Submit({&bad, 1});
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(s.message().find("memdev"), std::string::npos) << s.message();
  }
  EXPECT_EQ(dev.in_flight(), 0u);
  EXPECT_EQ(dev.writes(), 0u);
  IoRequest fits = Write(0, buf.data(), 4096, 4);
  EXPECT_TRUE(dev.Submit({&fits, 1}).ok());
}

TEST(MemBlockDevice, QueueDepthCountsUnpolledCompletions) {
  MemBlockDevice dev("mem", 4096, 2);
  std::byte b{};
  std::vector<IoRequest> three = {Read(0, &b, 1, 1), Read(0, &b, 1, 2), Read(0, &b, 1, 3)};
  Status s = dev.Submit(three);
  EXPECT_EQ(s.code(), ErrorCode::kBusy);
  EXPECT_EQ(dev.in_flight(), 0u);
  ASSERT_TRUE(dev.Submit(std::span(three).first(2)).ok());
  EXPECT_EQ(dev.Submit(std::span(three).subspan(2)).code(), ErrorCode::kBusy);
  EXPECT_EQ(PollAll(dev).size(), 2u);
  EXPECT_TRUE(dev.Submit(std::span(three).subspan(2)).ok());
}

TEST(MemBlockDevice, FlushMakesWritesDurableAndDropUnsyncedLosesTheRest) {
  MemBlockDevice dev("mem", 8192);
  auto a = RandomBytes(4096, 1);
  auto b = RandomBytes(4096, 2);
  std::vector<IoRequest> first = {Write(0, a.data(), 4096, 1), Flush(2)};
  ASSERT_TRUE(dev.Submit(first).ok());
  auto done = PollAll(dev);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[1].tag, 2u);
  EXPECT_EQ(done[1].res, 0);
  EXPECT_EQ(dev.flushes(), 1u);
  EXPECT_EQ(std::memcmp(dev.durable_contents().data(), a.data(), 4096), 0);

  IoRequest unsynced = Write(4096, b.data(), 4096, 3);
  IoRequest overwrite = Write(0, b.data(), 100, 4);
  std::vector<IoRequest> second = {unsynced, overwrite};
  ASSERT_TRUE(dev.Submit(second).ok());
  EXPECT_EQ(PollAll(dev).size(), 2u);
  EXPECT_EQ(std::memcmp(dev.contents().data() + 4096, b.data(), 4096), 0);
  // Not durable yet: the durable image still has zeros there and a's first bytes.
  EXPECT_EQ(dev.durable_contents()[4096], std::byte{0});
  EXPECT_EQ(std::memcmp(dev.durable_contents().data(), a.data(), 4096), 0);

  dev.DropUnsynced();
  EXPECT_EQ(std::memcmp(dev.contents().data(), a.data(), 4096), 0);
  for (size_t i = 4096; i < 8192; ++i) ASSERT_EQ(dev.contents()[i], std::byte{0}) << i;
  std::vector<std::byte> back(4096);
  IoRequest rd = Read(0, back.data(), 4096, 5);
  ASSERT_TRUE(dev.Submit({&rd, 1}).ok());
  EXPECT_EQ(PollAll(dev).size(), 1u);
  EXPECT_EQ(back, a);
  EXPECT_EQ(dev.writes(), 3u);
}

TEST(MemBlockDevice, MutableContentsIsWhatReadsSee) {
  MemBlockDevice dev("mem", 4096);
  dev.mutable_contents()[10] = std::byte{0x42};
  std::byte b{};
  IoRequest rd = Read(10, &b, 1, 1);
  ASSERT_TRUE(dev.Submit({&rd, 1}).ok());
  EXPECT_EQ(PollAll(dev).size(), 1u);
  EXPECT_EQ(b, std::byte{0x42});
}

}  // namespace
}  // namespace blkmirror::io
