// Whether a block holds only zero bytes: the Replicator sends such blocks as zero ranges.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace blkmirror {

// True when [data, data + length) is all zeros. Reads 64 bytes at a time and stops at the first
// 64 that are not, so a block of data costs a few loads; only an all-zero block is read whole.
inline bool IsAllZero(const void* block, size_t length) {
  const auto* data = static_cast<const unsigned char*>(block);
  size_t i = 0;
  for (; i + 64 <= length; i += 64) {
    uint64_t acc = 0;
    for (size_t j = 0; j < 64; j += 8) {
      uint64_t word;
      std::memcpy(&word, data + i + j, sizeof word);
      acc |= word;
    }
    if (acc != 0) return false;
  }
  for (; i < length; ++i) {
    if (data[i] != 0) return false;
  }
  return true;
}

}  // namespace blkmirror
