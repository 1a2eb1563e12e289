// memif_probe: the raw memif rate between two DPDK processes, the ceiling that bench/compare-dpdk
// sets next to a push over memif. One process sends BYTES of FRAME-byte Ethernet frames as fast as
// the memif ring takes them; the other receives and counts them. No reliability, no CRC, no
// copy of the payload by the probe (the memif driver's own copies, into and out of the shared
// ring, are the only ones): what is left is what the driver and the ring cost.
//
//   memif_probe recv SOCKET BYTES [FRAME]   the memif server: start it first; prints "ready"
//   memif_probe send SOCKET BYTES [FRAME]   the memif client
//
// FRAME defaults to 9014: an IP MTU of 9000 (blkmirror's on memif) plus the Ethernet header, the
// size of every full packet of a push. The receiver prints, as key=value lines, the bytes it
// counted, the seconds from its first packet to its last and bytes_per_second, and exits as soon
// as it has counted BYTES (rounded up to whole frames), before the sender closes: a memif peer
// may crash when the other side disconnects first. The sender then sees the link go down and
// exits without tearing its port down. Both exit 1 when nothing moves for 10 s.
//
// The EAL and the port are blkmirror's own (transport/dpdk/port.h: the same EAL arguments, memif
// devargs, mbuf pool and ring sizes), so the probe and blkmirror differ only above the port.
// MEMIF_PROBE_EAL=hugepages|no-huge forces the EAL's memory (default: port.cc's rule, hugepages
// when 64 are free); the receiver prints which it ran on (eal=).
#include <rte_mbuf.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "transport/dpdk/port.h"

namespace {

using blkmirror::transport::dpdk::EalMemory;
using blkmirror::transport::dpdk::Port;
using blkmirror::transport::dpdk::PortSpec;

constexpr uint32_t kMtu = 9000;
constexpr uint32_t kEthHeader = 14;
constexpr uint16_t kBurst = 32;
constexpr uint64_t kStallNs = 10'000'000'000;
// Broadcast destination, a local source MAC, IPv4.
constexpr unsigned char kEthernet[kEthHeader] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                                                 0,    0,    0,    0,    1,    0x08, 0x00};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "memif_probe: %s\n", what.c_str());
  std::fflush(stdout);
  _exit(1);
}

// The memif port as blkmirror opens it; MEMIF_PROBE_EAL forces the EAL's memory (see above).
std::unique_ptr<Port> OpenPort(const std::string& socket, const char* role) {
  const char* mode = std::getenv("MEMIF_PROBE_EAL");
  PortSpec spec{"memif:" + socket + ",role=" + role, role, kMtu};
  if (mode != nullptr && std::strcmp(mode, "hugepages") == 0) spec.eal_memory = EalMemory::kHugepages;
  if (mode != nullptr && std::strcmp(mode, "no-huge") == 0) spec.eal_memory = EalMemory::kNoHuge;
  auto port = Port::Open(spec);
  if (!port.ok()) Die(port.status().message());
  return std::move(port).value();
}

int Receive(Port& port, uint64_t frames, uint32_t frame) {
  std::printf("ready\n");
  std::fflush(stdout);
  rte_mbuf* pkts[kBurst];
  uint64_t got = 0, bytes = 0, first = 0, last = 0;
  uint64_t idle_since = blkmirror::NowNs();
  while (got < frames) {
    const uint16_t n = port.RxBurst(pkts, kBurst);
    if (n == 0) {
      // The sender connects when it is ready: wait for it without a deadline until the first
      // packet, then give up after kStallNs without one.
      if (got > 0 && blkmirror::NowNs() - idle_since > kStallNs) {
        Die("stalled after " + std::to_string(bytes) + " bytes");
      }
      continue;
    }
    last = blkmirror::NowNs();
    if (got == 0) first = last;
    idle_since = last;
    for (uint16_t i = 0; i < n; ++i) bytes += rte_pktmbuf_pkt_len(pkts[i]);
    rte_pktmbuf_free_bulk(pkts, n);
    got += n;
  }
  const double seconds = static_cast<double>(last - first) / 1e9;
  std::printf(
      "memif_frame_bytes=%u\nmemif_frames=%lu\nmemif_bytes=%lu\nmemif_seconds=%.6f\n"
      "memif_bytes_per_second=%.0f\neal=%s\n",
      frame, static_cast<unsigned long>(got), static_cast<unsigned long>(bytes), seconds,
      static_cast<double>(bytes) / seconds, Port::eal_on_hugepages() ? "hugepages" : "no-huge");
  std::fflush(stdout);
  // Leave before the sender does (see the header); the kernel takes the port and the memory.
  _exit(bytes == frames * frame ? 0 : 1);
}

int Send(Port& port, uint64_t frames, uint32_t frame) {
  const uint64_t link_deadline = blkmirror::NowNs() + kStallNs;
  while (!port.link_up()) {
    if (blkmirror::NowNs() > link_deadline) Die("the memif link did not come up");
    usleep(1000);
  }
  rte_mbuf* pkts[kBurst];
  uint64_t sent = 0;
  const uint64_t t0 = blkmirror::NowNs();
  uint64_t progress_at = t0;
  while (sent < frames) {
    const uint16_t want = static_cast<uint16_t>(std::min<uint64_t>(kBurst, frames - sent));
    uint16_t built = 0;
    for (; built < want; ++built) {
      // A broadcast Ethernet header; the payload is whatever the buffer holds.
      pkts[built] = port.Alloc(frame);
      if (pkts[built] == nullptr) break;
      std::memcpy(rte_pktmbuf_mtod(pkts[built], char*), kEthernet, sizeof(kEthernet));
    }
    // What the ring does not take (after the port's retries) is freed and not counted.
    const uint16_t n = port.TxBurst(pkts, built);
    if (n > 0) {
      sent += n;
      progress_at = blkmirror::NowNs();
    } else if (blkmirror::NowNs() - progress_at > kStallNs) {
      Die("the ring took nothing for 10 s after " + std::to_string(sent) + " frames");
    }
  }
  const uint64_t t1 = blkmirror::NowNs();
  std::printf("memif_send_seconds=%.6f\n", static_cast<double>(t1 - t0) / 1e9);
  std::fflush(stdout);
  // The receiver leaves once it has counted everything: wait for the link to go down.
  const uint64_t down_deadline = blkmirror::NowNs() + kStallNs;
  while (port.link_up()) {
    if (blkmirror::NowNs() > down_deadline) Die("the receiver did not leave");
    usleep(1000);
  }
  _exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || (std::strcmp(argv[1], "send") != 0 && std::strcmp(argv[1], "recv") != 0)) {
    std::fprintf(stderr, "usage: memif_probe send|recv SOCKET BYTES [FRAME]\n");
    return 2;
  }
  const bool send = std::strcmp(argv[1], "send") == 0;
  const std::string socket = argv[2];
  const uint64_t bytes = std::strtoull(argv[3], nullptr, 10);
  const uint32_t frame =
      argc > 4 ? static_cast<uint32_t>(std::strtoul(argv[4], nullptr, 10)) : kMtu + kEthHeader;
  if (bytes == 0 || frame < 64 || frame > kMtu + kEthHeader) {
    std::fprintf(stderr, "memif_probe: BYTES > 0 and 64 <= FRAME <= %u\n", kMtu + kEthHeader);
    return 2;
  }
  const uint64_t frames = (bytes + frame - 1) / frame;
  spdlog::set_level(spdlog::level::warn);  // stdout is for the key=value lines
  auto port = OpenPort(socket, send ? "client" : "server");
  return send ? Send(*port, frames, frame) : Receive(*port, frames, frame);
}
