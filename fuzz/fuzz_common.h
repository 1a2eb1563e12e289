// What the blkmirror fuzz targets share: a reader over the fuzzer's bytes, frame header fix-ups,
// the process-wide ring, quiet logging, and the property check that aborts.
//
// A target checks a property with FUZZ_CHECK(cond, "fmt", args...): on failure it prints the
// message and traps, and libFuzzer saves the input as a crash artifact.
//
// Thread safety: none; libFuzzer runs one input at a time on one thread.
#pragma once

#include <fmt/format.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>

#include "common/crc32c.h"
#include "io/ring.h"
#include "proto/frame.h"

namespace blkmirror::fuzz {

// Prints "fuzz property violated: <message>" and traps (libFuzzer saves the input).
#define FUZZ_CHECK(cond, ...)                                                          \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "fuzz property violated (%s:%d): %s\n", __FILE__, __LINE__, \
                   fmt::format(__VA_ARGS__).c_str());                                  \
      std::fflush(stderr);                                                             \
      __builtin_trap();                                                                \
    }                                                                                  \
  } while (0)

// The longest a step that waits for nothing (a shutdown once every peer is gone, a destructor)
// may take: a wait for a peer (the close timeouts are 30 s) shows, while a loaded machine's
// scheduling (218 ms seen with a test run beside the fuzzer) does not.
inline constexpr uint64_t kNoWaitLimitNs = 5'000'000'000;

// Reads the fuzzer's bytes front to back; past the end every read yields zeros, so any input is
// a complete program.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  bool empty() const { return n_ == 0; }
  size_t remaining() const { return n_; }
  uint8_t U8() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  uint16_t U16() { return static_cast<uint16_t>(U8() | U8() << 8); }
  uint32_t U32() { return static_cast<uint32_t>(U16()) | static_cast<uint32_t>(U16()) << 16; }
  uint64_t U64() { return static_cast<uint64_t>(U32()) | static_cast<uint64_t>(U32()) << 32; }
  // Copies up to out.size() bytes into `out`, zero-filling the rest; returns how many were real.
  size_t Fill(std::span<std::byte> out) {
    size_t k = std::min(out.size(), n_);
    if (k > 0) std::memcpy(out.data(), p_, k);
    if (k < out.size()) std::memset(out.data() + k, 0, out.size() - k);
    p_ += k;
    n_ -= k;
    return k;
  }

 private:
  const uint8_t* p_;
  size_t n_;
};

// Field offsets of the 64-byte header (proto/frame.h's table).
inline constexpr size_t kOffMagic = 0;
inline constexpr size_t kOffVersion = 4;
inline constexpr size_t kOffType = 5;
inline constexpr size_t kOffFlags = 6;
inline constexpr size_t kOffPayloadLen = 8;
inline constexpr size_t kOffHeaderCrc = 12;
inline constexpr size_t kOffBody = 16;

inline uint16_t GetLe16(const proto::RawHeader& h, size_t off) {
  return static_cast<uint16_t>(static_cast<uint8_t>(h[off]) |
                               static_cast<uint8_t>(h[off + 1]) << 8);
}
inline uint32_t GetLe32(const proto::RawHeader& h, size_t off) {
  return proto::LoadLe32(h.data() + off);
}
inline void PutLe32(proto::RawHeader& h, size_t off, uint32_t v) {
  proto::StoreLe32(h.data() + off, v);
}
inline uint64_t GetLe64(const proto::RawHeader& h, size_t off) {
  return GetLe32(h, off) | static_cast<uint64_t>(GetLe32(h, off + 4)) << 32;
}
inline void PutLe64(proto::RawHeader& h, size_t off, uint64_t v) {
  PutLe32(h, off, static_cast<uint32_t>(v));
  PutLe32(h, off + 4, static_cast<uint32_t>(v >> 32));
}
inline uint8_t GetType(const proto::RawHeader& h) { return static_cast<uint8_t>(h[kOffType]); }

// Recomputes the header CRC (CRC32C of the header with the CRC field zeroed).
inline void FixHeaderCrc(proto::RawHeader& h) {
  PutLe32(h, kOffHeaderCrc, 0);
  PutLe32(h, kOffHeaderCrc, Crc32c(h.data(), h.size()));
}

// Makes the prefix valid as far as magic, version and CRC go (type, flags, lengths untouched).
inline void FixPrefix(proto::RawHeader& h) {
  PutLe32(h, kOffMagic, proto::kMagic);
  h[kOffVersion] = static_cast<std::byte>(proto::kFrameVersion);
  FixHeaderCrc(h);
}

// One ring per process: the engine's APIs want one, the fuzzers never wait on it.
inline io::Ring& ProcessRing() {
  static io::Ring* ring = [] {
    auto r = io::Ring::Create(64);
    if (!r.ok()) {
      std::fprintf(stderr, "fuzz: cannot create the io_uring the engine needs: %s\n",
                   r.status().message().c_str());
      std::exit(1);
    }
    return std::move(r).value().release();  // lives as long as the process
  }();
  return *ring;
}

// Log lines are formatted (so their arguments are exercised) but go nowhere, unless FUZZ_LOG is
// set in the environment (to read what the engine said about an input being reproduced).
inline void QuietLogs() {
  if (std::getenv("FUZZ_LOG") != nullptr) {
    spdlog::set_default_logger(spdlog::stderr_logger_st("fuzz"));
    spdlog::set_level(spdlog::level::trace);
    return;
  }
  auto sink = std::make_shared<spdlog::sinks::null_sink_st>();
  auto logger = std::make_shared<spdlog::logger>("fuzz", sink);
  logger->set_level(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

}  // namespace blkmirror::fuzz
