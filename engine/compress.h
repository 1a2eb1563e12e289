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

// What --compress asks for: lz4, or zstd at a level (1 to 19; 3 by default).
struct CompressSpec {
  proto::Codec codec = proto::Codec::kNone;
  int level = 0;

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
