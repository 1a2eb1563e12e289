// lz4 and zstd for Data payloads (proto::Codec, --compress): liblz4 and libzstd do the work; this
// keeps their contexts (one per user: not thread safe) and says the rules once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"
#include "proto/frame.h"

namespace blkmirror::engine {

// --compress-mode: whether a block is compressed only while that pays (CompressGovernor), or
// always (fewer bytes on the wire even where that is slower: a metered link).
enum class CompressMode : uint8_t { kAuto, kAlways };

// "auto" or "always"; the error names the text.
Result<CompressMode> ParseCompressMode(std::string_view text);
std::string_view CompressModeName(CompressMode mode);

// What --compress asks for: lz4, or zstd at a level (1 to 19; 3 by default), and when.
struct CompressSpec {
  proto::Codec codec = proto::Codec::kNone;
  int level = 0;
  CompressMode mode = CompressMode::kAuto;

  // "lz4", "zstd", "zstd:LEVEL" or "none"; the error names the text.
  static Result<CompressSpec> Parse(std::string_view text);
  std::string ToString() const;
};

// A compressed payload is kept only when it is at most this share of the block (7/8): less
// saving is not worth the replica's decompression.
inline constexpr uint32_t KeepCompressedBelow(uint32_t length) { return length - length / 8; }

class Compressor {
 public:
  explicit Compressor(CompressSpec spec);
  ~Compressor();
  Compressor(const Compressor&) = delete;
  Compressor& operator=(const Compressor&) = delete;

  // Compresses src[0, length) into dst; the compressed size, or 0 when it is not below
  // KeepCompressedBelow(length) (the block goes as it is). A `dst` of KeepCompressedBelow(length)
  // bytes is enough: what does not fit there is not kept anyway.
  uint32_t Compress(const std::byte* src, uint32_t length, std::span<std::byte> dst);

 private:
  CompressSpec spec_;
  struct Contexts;
  std::unique_ptr<Contexts> ctx_;
};

// --compress-mode auto: compressing costs the primary's loop CPU time, and pays only where the
// link or the replica, not that CPU, is the limit. Which one it is is measured, not guessed:
// a probe of each choice (compressing, then not) of kProbeNs, whose first kSettleNs are not
// counted (the previous choice's writes drain), compares the bytes submitted per second; the
// faster choice then holds for a while (kMinHoldNs, doubling up to kMaxHoldNs while the same
// choice keeps winning), and the probes run again, since data and load change. Compression wins
// ties within kTieShare: it saves the link for everything else on it. A probe that runs more
// than a probe's length past its end (no writes came: an idle volume) says nothing and is done
// again. Times are passed in, so a test drives it without a clock.
class CompressGovernor {
 public:
  static constexpr uint64_t kProbeNs = 100'000'000;
  static constexpr uint64_t kSettleNs = 25'000'000;
  static constexpr uint64_t kMinHoldNs = 1'000'000'000;
  static constexpr uint64_t kMaxHoldNs = 16'000'000'000;
  static constexpr double kTieShare = 0.03;

  // A block of `bytes` is submitted at `now_ns`: whether to compress it.
  bool Next(uint64_t bytes, uint64_t now_ns);

  // The last probes' rates (bytes per second) and whether compression won them. TakeDecision
  // returns true once for the first decision and for each that changes the choice (a log line
  // each).
  struct Decision {
    double rate_compressed = 0;
    double rate_plain = 0;
    bool compress = true;
  };
  bool TakeDecision(Decision& out);

 private:
  enum class Phase : uint8_t { kStart, kProbeCompressed, kProbePlain, kHold };
  void Begin(Phase phase, uint64_t now_ns, uint64_t length_ns);
  void EndPhase(uint64_t now_ns);

  Phase phase_ = Phase::kStart;
  uint64_t start_ns_ = 0;
  uint64_t end_ns_ = 0;
  uint64_t counted_ = 0;  // bytes submitted in this probe after its settling time
  uint64_t hold_ns_ = kMinHoldNs;
  double pending_compressed_ = 0;  // the compressed probe's rate, until the plain one ends
  Decision last_;
  bool decided_once_ = false;
  bool decided_ = false;  // a decision TakeDecision has not returned yet
};

class Decompressor {
 public:
  Decompressor();
  ~Decompressor();
  Decompressor(const Decompressor&) = delete;
  Decompressor& operator=(const Decompressor&) = delete;

  // Decompresses src[0, length) into dst, which must come out exactly `expected` bytes; false
  // otherwise (a corrupt or lying payload).
  bool Decompress(proto::Codec codec, const std::byte* src, uint32_t length, std::byte* dst,
                  uint32_t expected);

 private:
  struct Contexts;
  std::unique_ptr<Contexts> ctx_;
};

}  // namespace blkmirror::engine
