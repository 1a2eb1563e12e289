#include "common/crc32c.h"

#include <isa-l/crc.h>

#include <climits>

namespace blkmirror {

uint32_t Crc32cExtend(uint32_t state, std::span<const std::byte> data) {
  // crc32_iscsi takes an int length: feed chunks below INT_MAX.
  constexpr size_t kMaxChunk = size_t{1} << 30;
  auto* p = reinterpret_cast<unsigned char*>(const_cast<std::byte*>(data.data()));
  size_t left = data.size();
  while (left > 0) {
    size_t n = left < kMaxChunk ? left : kMaxChunk;
    state = crc32_iscsi(p, static_cast<int>(n), state);
    p += n;
    left -= n;
  }
  return state;
}

uint32_t Crc32c(std::span<const std::byte> data) {
  return Crc32cFinish(Crc32cExtend(kCrc32cInit, data));
}

}  // namespace blkmirror
