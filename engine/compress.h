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
// link or the replica, not that CPU, is the limit. Which one it is is measured, not guessed: a
// probe of each choice, not compressing first, then compressing, compares the bytes submitted
// per second.
// - A probe counts only once every write submitted before it has completed: until then the
//   window still carries the other choice's writes (on a 1 Gbit/s link, 32 MiB in flight take a
//   quarter of a second to drain). The first probe, and the first after a pause, also waits
//   for the writes that filled the empty window, which go out at once whatever the link.
// - It then counts `probe_writes` writes of data (a window's worth: where the window is the
//   limit, writes go out in bursts as acks free it, and a probe shorter than a burst's period
//   would measure the burst, not the rate), from the first one's time to the next one's. Zero
//   blocks cost the same either way and go far faster: a run of them restarts the count.
// - The compressing probe gives up once it has taken kGiveUpFactor times as long as the plain
//   one did, settling included and counts voided by zeros left out of both: where compressing
//   loses it usually loses by far, and a short push should not pay a whole probe for it.
// The faster choice then holds for a while (kMinHoldNs, doubling up to kMaxHoldNs while the same
// choice keeps winning; at least kDecisiveHoldNs when a whole probe found it kDecisive times as
// fast: probes cost the loser's rate while they run), and the probes run again, since data and
// load change. Compression wins ties within kTieShare: it saves the link for everything else on
// it. A probe in which no write comes for kIdleNs (an idle volume) says nothing and starts over.
// Times are passed in, so a test drives it without a clock.
class CompressGovernor {
 public:
  static constexpr double kGiveUpFactor = 1.5;
  static constexpr uint64_t kIdleNs = 1'000'000'000;
  static constexpr uint64_t kMinHoldNs = 1'000'000'000;
  static constexpr uint64_t kMaxHoldNs = 16'000'000'000;
  static constexpr double kDecisive = 1.5;
  static constexpr uint64_t kDecisiveHoldNs = 4'000'000'000;
  static constexpr double kTieShare = 0.03;

  // `probe_writes`: writes a probe counts (at least 8); the Replicator gives its window.
  explicit CompressGovernor(uint32_t probe_writes);

  // A write of `bytes` (`zero`: all zeros, sent as a zero range) is submitted at `now_ns`:
  // whether to compress it. Each such write must be reported Completed once, whatever its
  // outcome.
  bool Next(uint64_t bytes, bool zero, uint64_t now_ns);
  void Completed() { ++completed_; }

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
  enum class Phase : uint8_t { kStart, kProbePlain, kProbeCompressed, kHold };
  void Begin(Phase phase, uint64_t now_ns);
  void EndProbe(uint64_t now_ns);
  void RestartCount(uint64_t now_ns);
  uint64_t ProbeNs(uint64_t now_ns) const;  // the probe's time so far, runs of zeros left out

  uint32_t probe_writes_;
  Phase phase_ = Phase::kStart;
  uint64_t submitted_ = 0;     // writes Next saw
  uint64_t completed_ = 0;     // of them, completed
  uint64_t settle_until_ = 0;  // a probe counts once completed_ reaches this
  bool counting_ = false;
  uint64_t count_start_ns_ = 0;
  uint64_t counted_ = 0;       // data bytes submitted while counting
  uint64_t data_writes_ = 0;   // and their writes
  uint64_t zero_counted_ = 0;  // zero bytes submitted while counting
  uint64_t hold_end_ns_ = 0;
  uint64_t last_ns_ = 0;       // the previous write's time
  uint64_t hold_ns_ = kMinHoldNs;
  double plain_rate_ = 0;      // the plain probe's, until the compressing one ends
  uint64_t probe_start_ns_ = 0;
  uint64_t voided_ns_ = 0;     // of this probe's time, spent in counts a run of zeros voided
  uint64_t plain_ns_ = 0;      // the plain probe's ProbeNs at its end (settling included)
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
