#include "engine/compress.h"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>
#include <lz4.h>
#include <zstd.h>

namespace blkmirror::engine {

constexpr int kDefaultZstdLevel = 3;
constexpr int kMaxZstdLevel = 19;

Result<CompressSpec> CompressSpec::Parse(std::string_view text) {
  if (text == "none") return CompressSpec{};
  if (text == "lz4") return CompressSpec{proto::Codec::kLz4, 0};
  if (text == "zstd") return CompressSpec{proto::Codec::kZstd, kDefaultZstdLevel};
  if (text.rfind("zstd:", 0) == 0) {
    std::string_view digits = text.substr(5);
    int level = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), level);
    if (ec == std::errc() && end == digits.data() + digits.size() && level >= 1 &&
        level <= kMaxZstdLevel) {
      return CompressSpec{proto::Codec::kZstd, level};
    }
    return Status::Invalid("'{}': a zstd level is 1 to {}", text, kMaxZstdLevel);
  }
  return Status::Invalid("'{}': expected lz4, zstd, zstd:LEVEL or none", text);
}

Result<CompressMode> ParseCompressMode(std::string_view text) {
  if (text == "auto") return CompressMode::kAuto;
  if (text == "always") return CompressMode::kAlways;
  return Status::Invalid("'{}': expected auto or always", text);
}

std::string_view CompressModeName(CompressMode mode) {
  return mode == CompressMode::kAuto ? "auto" : "always";
}

CompressGovernor::CompressGovernor(uint32_t probe_writes)
    : probe_writes_(std::max<uint32_t>(8, probe_writes)) {}

bool CompressGovernor::Next(uint64_t bytes, bool zero, uint64_t now_ns) {
  if (phase_ == Phase::kHold && now_ns >= hold_end_ns_) Begin(Phase::kProbePlain, now_ns);
  if (phase_ == Phase::kStart || (phase_ != Phase::kHold && now_ns - last_ns_ > kIdleNs)) {
    // The first writes, or the first after a pause (that probe says nothing): they fill an
    // empty window at once, as fast as the loop goes; that is no rate. Counting starts once
    // they have completed too.
    Begin(Phase::kProbePlain, now_ns);
    settle_until_ += probe_writes_;
  }
  if (phase_ != Phase::kHold) {
    if (!counting_ && completed_ >= settle_until_) {
      counting_ = true;
      RestartCount(now_ns);
    }
    // Settling counts too: a loop that compresses a batch of writes in one turn hears of the
    // completions that end the settling only after it.
    const bool lost = phase_ == Phase::kProbeCompressed &&
                      static_cast<double>(ProbeNs(now_ns)) >=
                          kGiveUpFactor * static_cast<double>(plain_ns_);
    if (lost || (counting_ && data_writes_ >= probe_writes_)) EndProbe(now_ns);
  }
  last_ns_ = now_ns;
  ++submitted_;
  if (counting_ && zero) {
    // Zeros cost the same either way and go far faster than data: a run of them would make
    // whichever probe met it look fast. The count starts over past it, and the time it took is
    // no probe's.
    zero_counted_ += bytes;
    if (zero_counted_ > counted_) {
      voided_ns_ += now_ns - count_start_ns_;
      RestartCount(now_ns);
    }
  } else if (counting_) {
    counted_ += bytes;
    ++data_writes_;
  }
  switch (phase_) {
    case Phase::kProbePlain: return false;
    case Phase::kProbeCompressed: return true;
    case Phase::kStart:
    case Phase::kHold: break;
  }
  return last_.compress;
}

void CompressGovernor::RestartCount(uint64_t now_ns) {
  count_start_ns_ = now_ns;
  counted_ = 0;
  zero_counted_ = 0;
  data_writes_ = 0;
}

uint64_t CompressGovernor::ProbeNs(uint64_t now_ns) const {
  return now_ns - probe_start_ns_ - voided_ns_;
}

void CompressGovernor::Begin(Phase phase, uint64_t now_ns) {
  phase_ = phase;
  probe_start_ns_ = now_ns;
  voided_ns_ = 0;
  settle_until_ = submitted_;
  counting_ = false;
  counted_ = 0;
  last_ns_ = now_ns;
}

void CompressGovernor::EndProbe(uint64_t now_ns) {
  const uint64_t elapsed = std::max<uint64_t>(1, now_ns - count_start_ns_);
  const double rate =
      counting_ ? static_cast<double>(counted_) * 1e9 / static_cast<double>(elapsed) : 0;
  if (phase_ == Phase::kProbePlain) {
    plain_rate_ = rate;
    plain_ns_ = ProbeNs(now_ns);
    Begin(Phase::kProbeCompressed, now_ns);
    return;
  }
  const bool compress = rate >= plain_rate_ * (1 - kTieShare);
  // A probe that gave up measured nothing to be sure of.
  const bool decisive = counting_ && data_writes_ >= probe_writes_ &&
                        std::max(rate, plain_rate_) >= kDecisive * std::min(rate, plain_rate_);
  if (decided_once_ && compress == last_.compress) {
    hold_ns_ = std::min(hold_ns_ * 2, kMaxHoldNs);
  } else {
    hold_ns_ = kMinHoldNs;
    decided_ = true;
  }
  if (decisive) hold_ns_ = std::max(hold_ns_, kDecisiveHoldNs);
  decided_once_ = true;
  last_ = Decision{rate, plain_rate_, compress};
  Begin(Phase::kHold, now_ns);
  hold_end_ns_ = now_ns + hold_ns_;
}

bool CompressGovernor::TakeDecision(Decision& out) {
  if (!decided_) return false;
  decided_ = false;
  out = last_;
  return true;
}

std::string CompressSpec::ToString() const {
  switch (codec) {
    case proto::Codec::kLz4: return "lz4";
    case proto::Codec::kZstd: return fmt::format("zstd:{}", level);
    case proto::Codec::kNone: break;
  }
  return "none";
}

struct Compressor::Contexts {
  ZSTD_CCtx* zstd = nullptr;
  ~Contexts() { ZSTD_freeCCtx(zstd); }
};

Compressor::Compressor(CompressSpec spec) : spec_(spec), ctx_(std::make_unique<Contexts>()) {
  if (spec_.codec == proto::Codec::kZstd) {
    ctx_->zstd = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(ctx_->zstd, ZSTD_c_compressionLevel, spec_.level);
  }
}

Compressor::~Compressor() = default;

uint32_t Compressor::Compress(const std::byte* src, uint32_t length, std::span<std::byte> dst) {
  // Output that would not be kept is not produced: both codecs stop (and fail) at the room's end.
  const size_t room = std::min<size_t>(dst.size(), KeepCompressedBelow(length));
  size_t n = 0;
  switch (spec_.codec) {
    case proto::Codec::kLz4: {
      const int r = LZ4_compress_default(reinterpret_cast<const char*>(src),
                                         reinterpret_cast<char*>(dst.data()),
                                         static_cast<int>(length), static_cast<int>(room));
      n = r > 0 ? static_cast<size_t>(r) : 0;
      break;
    }
    case proto::Codec::kZstd: {
      const size_t r = ZSTD_compress2(ctx_->zstd, dst.data(), room, src, length);
      n = ZSTD_isError(r) ? 0 : r;
      break;
    }
    case proto::Codec::kNone:
      return 0;
  }
  return n > 0 && n < KeepCompressedBelow(length) ? static_cast<uint32_t>(n) : 0;
}

struct Decompressor::Contexts {
  ZSTD_DCtx* zstd = ZSTD_createDCtx();
  ~Contexts() { ZSTD_freeDCtx(zstd); }
};

Decompressor::Decompressor() : ctx_(std::make_unique<Contexts>()) {}
Decompressor::~Decompressor() = default;

bool Decompressor::Decompress(proto::Codec codec, const std::byte* src, uint32_t length,
                              std::byte* dst, uint32_t expected) {
  switch (codec) {
    case proto::Codec::kLz4: {
      // Safe: never reads past src + length nor writes past dst + expected.
      const int r = LZ4_decompress_safe(reinterpret_cast<const char*>(src),
                                        reinterpret_cast<char*>(dst), static_cast<int>(length),
                                        static_cast<int>(expected));
      return r >= 0 && static_cast<uint32_t>(r) == expected;
    }
    case proto::Codec::kZstd: {
      const size_t r = ZSTD_decompressDCtx(ctx_->zstd, dst, expected, src, length);
      return !ZSTD_isError(r) && r == expected;
    }
    case proto::Codec::kNone:
      break;
  }
  return false;
}

}  // namespace blkmirror::engine
