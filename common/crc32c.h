// CRC32C (Castagnoli, the iSCSI polynomial) over block data.
//
// Computed with ISA-L's crc32_iscsi, which picks the fastest implementation (PCLMUL/SSE4.2
// folding) for the CPU at run time. Thread-safe; no state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace blkmirror {

// The standard CRC32C of `data`: Crc32c("123456789") == 0xE3069283.
uint32_t Crc32c(std::span<const std::byte> data);
inline uint32_t Crc32c(const void* data, size_t len) {
  return Crc32c(std::span(static_cast<const std::byte*>(data), len));
}

// Incremental form: state = Crc32cExtend(state, chunk) over chunks starting with kCrc32cInit,
// then Crc32cFinish(state) equals Crc32c of the concatenation.
inline constexpr uint32_t kCrc32cInit = 0xFFFFFFFFu;
uint32_t Crc32cExtend(uint32_t state, std::span<const std::byte> data);
inline uint32_t Crc32cFinish(uint32_t state) { return state ^ 0xFFFFFFFFu; }

}  // namespace blkmirror
