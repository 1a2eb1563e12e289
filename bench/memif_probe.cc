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
// The EAL and the port are set up as transport/dpdk/port.cc does (same EAL arguments, memif
// devargs, mbuf pool and ring sizes), so the probe and blkmirror differ only above the driver.
// MEMIF_PROBE_EAL=hugepages|no-huge forces the EAL's memory (default: port.cc's rule, hugepages
// when 64 are free); the receiver prints which it ran on (eal=).
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/clock.h"

namespace {

// As in transport/dpdk/port.cc.
constexpr uint16_t kRingSize = 1024;
constexpr unsigned kMbufs = 8191;
constexpr unsigned kMbufCache = 256;
constexpr int kNoHugeMemoryMb = 256;
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

long FreeHugepages() {
  std::ifstream f("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
  long n = 0;
  f >> n;
  return f ? n : 0;
}

std::string AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof(set), &set);
  std::string out;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    if (!out.empty()) out += ',';
    out += std::to_string(cpu);
  }
  return out.empty() ? "0" : out;
}

// The EAL as port.cc starts it; returns "hugepages" or "no-huge".
const char* InitEal() {
  std::vector<std::string> args = {"memif_probe",    "--lcores",    "0@(" + AllowedCpus() + ")",
                                   "--no-telemetry", "--log-level", "*:notice",
                                   "--no-pci"};
  // MEMIF_PROBE_EAL=hugepages|no-huge: the mode blkmirror's processes ended up in
  // (bench/compare-dpdk passes it, so that both sides of the comparison run alike); else port.cc's
  // rule.
  const char* mode = std::getenv("MEMIF_PROBE_EAL");
  const bool huge = mode != nullptr && std::strcmp(mode, "hugepages") == 0 ? true
                    : mode != nullptr && std::strcmp(mode, "no-huge") == 0 ? false
                                                                           : FreeHugepages() >= 64;
  if (huge) {
    args.push_back("--in-memory");
  } else {
    args.insert(args.end(), {"--no-huge", "--no-shconf", "-m", std::to_string(kNoHugeMemoryMb)});
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  if (rte_eal_init(static_cast<int>(argv.size()), argv.data()) < 0) {
    Die(std::string("EAL initialisation failed: ") + rte_strerror(rte_errno));
  }
  return huge ? "hugepages" : "no-huge";
}

// The memif port, with the devargs, pool and rings of port.cc.
uint16_t OpenPort(const std::string& socket, const char* role, rte_mempool** pool) {
  const std::string devargs =
      "net_memif0,socket=" + socket + ",role=" + role + ",bsize=10240,rsize=12,socket-abstract=no";
  if (rte_dev_probe(devargs.c_str()) != 0) {
    Die("cannot open " + devargs + ": " + rte_strerror(rte_errno));
  }
  uint16_t id = 0;
  if (rte_eth_dev_get_port_by_name("net_memif0", &id) != 0) Die("no ethdev net_memif0");
  const uint32_t room = RTE_PKTMBUF_HEADROOM + kMtu + kEthHeader + 64;
  *pool = rte_pktmbuf_pool_create("probe_mbufs", kMbufs, kMbufCache, 0, static_cast<uint16_t>(room),
                                  SOCKET_ID_ANY);
  if (*pool == nullptr) Die(std::string("no memory for the mbufs: ") + rte_strerror(rte_errno));
  rte_eth_conf conf{};
  if (int rc = rte_eth_dev_configure(id, 1, 1, &conf); rc != 0)
    Die("configure: " + std::to_string(rc));
  if (rte_eth_rx_queue_setup(id, 0, kRingSize, rte_eth_dev_socket_id(id), nullptr, *pool) != 0 ||
      rte_eth_tx_queue_setup(id, 0, kRingSize, rte_eth_dev_socket_id(id), nullptr) != 0) {
    Die("queue setup failed");
  }
  if (int rc = rte_eth_dev_start(id); rc != 0) {
    Die("cannot start the port (" + std::to_string(rc) + "): is the receiver up on " + socket +
        "?");
  }
  return id;
}

bool LinkUp(uint16_t id) {
  rte_eth_link link{};
  rte_eth_link_get_nowait(id, &link);
  return link.link_status == RTE_ETH_LINK_UP;
}

int Receive(uint16_t id, uint64_t frames, uint32_t frame, const char* eal) {
  std::printf("ready\n");
  std::fflush(stdout);
  rte_mbuf* pkts[kBurst];
  uint64_t got = 0, bytes = 0, first = 0, last = 0;
  uint64_t idle_since = blkmirror::NowNs();
  while (got < frames) {
    const uint16_t n = rte_eth_rx_burst(id, 0, pkts, kBurst);
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
      static_cast<double>(bytes) / seconds, eal);
  std::fflush(stdout);
  // Leave before the sender does (see the header); the kernel takes the port and the memory.
  _exit(bytes == frames * frame ? 0 : 1);
}

int Send(uint16_t id, rte_mempool* pool, uint64_t frames, uint32_t frame) {
  const uint64_t link_deadline = blkmirror::NowNs() + kStallNs;
  while (!LinkUp(id)) {
    if (blkmirror::NowNs() > link_deadline) Die("the memif link did not come up");
    usleep(1000);
  }
  rte_mbuf* pkts[kBurst];
  uint16_t held = 0;  // mbufs allocated and not yet taken by the ring, at the front of pkts
  uint64_t sent = 0;
  const uint64_t t0 = blkmirror::NowNs();
  uint64_t progress_at = t0;
  while (sent < frames) {
    const uint16_t want = static_cast<uint16_t>(std::min<uint64_t>(kBurst, frames - sent));
    if (held < want) {
      if (rte_pktmbuf_alloc_bulk(pool, pkts + held, want - held) != 0) continue;
      for (uint16_t i = held; i < want; ++i) {
        // A broadcast Ethernet header; the payload is whatever the buffer holds.
        if (rte_pktmbuf_append(pkts[i], static_cast<uint16_t>(frame)) == nullptr) Die("mbuf room");
        std::memcpy(rte_pktmbuf_mtod(pkts[i], char*), kEthernet, sizeof(kEthernet));
      }
      held = want;
    }
    const uint16_t n = rte_eth_tx_burst(id, 0, pkts, held);
    if (n > 0) {
      std::memmove(pkts, pkts + n, (held - n) * sizeof(pkts[0]));
      held = static_cast<uint16_t>(held - n);
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
  while (LinkUp(id)) {
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
  const char* eal = InitEal();
  rte_mempool* pool = nullptr;
  const uint16_t id = OpenPort(socket, send ? "client" : "server", &pool);
  return send ? Send(id, pool, frames, frame) : Receive(id, frames, frame, eal);
}
