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
