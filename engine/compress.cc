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

bool CompressGovernor::Next(uint64_t bytes, uint64_t now_ns) {
  if (phase_ == Phase::kStart) Begin(Phase::kProbeCompressed, now_ns, kProbeNs);
  while (now_ns >= end_ns_) EndPhase(now_ns);
  if (phase_ != Phase::kHold && now_ns >= start_ns_ + kSettleNs) counted_ += bytes;
  switch (phase_) {
    case Phase::kProbeCompressed: return true;
    case Phase::kProbePlain: return false;
    case Phase::kStart:
    case Phase::kHold: break;
  }
  return last_.compress;
}

void CompressGovernor::Begin(Phase phase, uint64_t now_ns, uint64_t length_ns) {
  phase_ = phase;
  start_ns_ = now_ns;
  end_ns_ = now_ns + length_ns;
  counted_ = 0;
}

void CompressGovernor::EndPhase(uint64_t now_ns) {
  if (phase_ != Phase::kHold && now_ns >= end_ns_ + kProbeNs) {
    Begin(Phase::kProbeCompressed, now_ns, kProbeNs);  // no writes for a while: probe again
    return;
  }
  const double rate = static_cast<double>(counted_) * 1e9 / static_cast<double>(now_ns - start_ns_ - kSettleNs);
  switch (phase_) {
    case Phase::kProbeCompressed:
      pending_compressed_ = rate;
      Begin(Phase::kProbePlain, now_ns, kProbeNs);
      return;
    case Phase::kProbePlain: {
      const bool compress = pending_compressed_ >= rate * (1 - kTieShare);
      if (decided_once_ && compress == last_.compress) {
        hold_ns_ = std::min(hold_ns_ * 2, kMaxHoldNs);
      } else {
        hold_ns_ = kMinHoldNs;
      }
      decided_ = decided_ || !decided_once_ || compress != last_.compress;
      decided_once_ = true;
      last_ = Decision{pending_compressed_, rate, compress};
      Begin(Phase::kHold, now_ns, hold_ns_);
      return;
    }
    case Phase::kStart:
    case Phase::kHold:
      Begin(Phase::kProbeCompressed, now_ns, kProbeNs);
      return;
  }
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
