// Microbenchmarks (Google Benchmark): CRC32C with ISA-L against a plain SSE4.2 loop, the frame
// codec, the buffer pool. Run: build/release/bench/micro_bench
#include <benchmark/benchmark.h>
#include <nmmintrin.h>

#include <cstring>
#include <random>
#include <vector>

#include "common/crc32c.h"
#include "io/buffer_pool.h"
#include "proto/frame.h"

namespace blkmirror {
namespace {

std::vector<std::byte> Random(size_t n) {
  std::vector<std::byte> v(n);
  std::mt19937_64 rng(1);
  for (auto& b : v) b = static_cast<std::byte>(rng());
  return v;
}

// The loop one writes without a library: the SSE4.2 crc32 instruction, 8 bytes at a time.
// Latency-bound (3 cycles per instruction, one dependency chain); ISA-L folds with PCLMUL.
uint32_t Crc32cSse42(const std::byte* p, size_t n) {
  uint64_t crc = 0xFFFFFFFFu;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    crc = _mm_crc32_u64(crc, v);
    p += 8;
    n -= 8;
  }
  auto c = static_cast<uint32_t>(crc);
  while (n-- > 0) c = _mm_crc32_u8(c, static_cast<uint8_t>(*p++));
  return c ^ 0xFFFFFFFFu;
}

void BM_Crc32cIsal(benchmark::State& state) {
  auto data = Random(static_cast<size_t>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(Crc32c(data.data(), data.size()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Crc32cIsal)->Arg(4096)->Arg(64 << 10)->Arg(1 << 20);

void BM_Crc32cSse42Loop(benchmark::State& state) {
  auto data = Random(static_cast<size_t>(state.range(0)));
  if (Crc32cSse42(data.data(), data.size()) != Crc32c(data.data(), data.size())) {
    state.SkipWithError("the SSE4.2 loop disagrees with ISA-L");
  }
  for (auto _ : state) benchmark::DoNotOptimize(Crc32cSse42(data.data(), data.size()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Crc32cSse42Loop)->Arg(4096)->Arg(64 << 10)->Arg(1 << 20);

void BM_FrameEncodeData(benchmark::State& state) {
  proto::Frame f;
  f.flags = 2;
  f.payload_len = 1 << 20;
  uint64_t seq = 0;
  for (auto _ : state) {
    f.body = proto::Data{seq, seq << 20, 1 << 20, 0x12345678};
    benchmark::DoNotOptimize(proto::Encode(f));
    ++seq;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_FrameEncodeData);

void BM_FrameDecodeData(benchmark::State& state) {
  proto::Frame f;
  f.flags = 2;
  f.payload_len = 1 << 20;
  f.body = proto::Data{7, 7 << 20, 1 << 20, 0x12345678};
  auto raw = proto::Encode(f);
  for (auto _ : state) {
    auto decoded = proto::Decode(raw);
    benchmark::DoNotOptimize(decoded);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_FrameDecodeData);

void BM_BufferPoolGetPut(benchmark::State& state) {
  auto pool = std::move(io::BufferPool::Create(1 << 20, 64, io::HugePages::kAuto).value());
  for (auto _ : state) {
    auto b = pool->TryGet();
    benchmark::DoNotOptimize(b->data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_BufferPoolGetPut);

}  // namespace
}  // namespace blkmirror
