#include "transport/dpdk/port.h"

#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <mutex>
#include <numeric>
#include <utility>
#include <vector>

#include <rte_bus.h>
#include <rte_log.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <spdlog/spdlog.h>

namespace blkmirror::transport::dpdk {
namespace {

constexpr uint16_t kRingSize = 1024;
constexpr unsigned kMbufs = 8191;
constexpr unsigned kMbufCache = 256;
// Memory the EAL takes without hugepages (MB): the mbuf pool and the drivers' rings.
constexpr int kNoHugeMemoryMb = 256;

// Free 2 MiB hugepages, from the kernel's counters.
long FreeHugepages() {
  std::ifstream f("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
  long n = 0;
  f >> n;
  return f ? n : 0;
}

// "0-1" style list of the CPUs this process may run on, so the EAL does not pin the loop.
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

// The EAL's and drivers' messages go to our log (debug level: what matters reaches the user as
// the error of the call that failed).
// The last line DPDK logged: the driver's own reason, added to our error when a call fails.
std::string& LastDpdkLine() {
  static std::string line;
  return line;
}

ssize_t WriteDpdkLog(void*, const char* buf, size_t size) {
  std::string_view text(buf, size);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
  if (!text.empty()) {
    spdlog::debug("dpdk: {}", text);
    LastDpdkLine() = std::string(text);
  }
  return static_cast<ssize_t>(size);
}

// " (the driver said: ...)" for an error message, from what DPDK logged since `mark`.
std::string DriverSaid() {
  std::string line = std::exchange(LastDpdkLine(), std::string());
  return line.empty() ? std::string() : fmt::format(" (the driver said: {})", line);
}

bool eal_huge = false;

Status InitEal(bool pci, EalMemory memory) {
  static std::once_flag once;
  static Status result;
  std::call_once(once, [pci, memory] {
    // No device at start (ports are hot-plugged), and no scan of the PCI bus unless a port is a
    // PCI device: a vdev-only process leaves the host's NICs alone.
    std::vector<std::string> args = {"blkmirror", "--lcores", "0@(" + AllowedCpus() + ")",
                                     "--no-telemetry", "--log-level", "*:notice"};
    if (!pci) args.push_back("--no-pci");
    // 2 MiB pages for the mbufs when the machine has spare ones; without them the EAL works on
    // ordinary memory (slower to map for a NIC, the same for memif and af_packet).
    const bool huge = memory == EalMemory::kHugepages ||
                      (memory == EalMemory::kAuto && FreeHugepages() >= 64);
    eal_huge = huge;
    if (huge) {
      args.insert(args.end(), {"--in-memory"});
    } else {
      args.insert(args.end(), {"--no-huge", "--no-shconf", "-m", std::to_string(kNoHugeMemoryMb)});
      spdlog::info("dpdk: no free 2 MiB hugepages (vm.nr_hugepages): the EAL runs on {} MB of "
                   "ordinary memory",
                   kNoHugeMemoryMb);
    }
    static cookie_io_functions_t log_io{nullptr, WriteDpdkLog, nullptr, nullptr};
    if (FILE* log = fopencookie(nullptr, "w", log_io); log != nullptr) {
      setvbuf(log, nullptr, _IOLBF, 0);
      rte_openlog_stream(log);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    if (rte_eal_init(static_cast<int>(argv.size()), argv.data()) < 0) {
      result = Status::Error(ErrorCode::kUnavailable,
                             fmt::format("dpdk: EAL initialisation failed: {}",
                                         rte_strerror(rte_errno)));
      return;
    }
    // The EAL leaves an empty runtime directory behind even without shared config: remove it
    // at exit (the backend promises no files in /var/run).
    std::atexit([] {
      rte_eal_cleanup();
      rmdir("/var/run/dpdk/rte");
      rmdir("/var/run/dpdk");
    });
  });
  return result;
}

std::atomic<int> next_device{0};

uint32_t InterfaceIpv4(const std::string& iface) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return 0;
  uint32_t ip = 0;
  for (ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET || iface != a->ifa_name) {
      continue;
    }
    ip = ntohl(reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr.s_addr);
    break;
  }
  freeifaddrs(list);
  return ip;
}

// The kernel interface's MTU, 0 when it cannot be read.
uint32_t InterfaceMtu(const std::string& iface) {
  std::ifstream f("/sys/class/net/" + iface + "/mtu");
  uint32_t mtu = 0;
  f >> mtu;
  return f ? mtu : 0;
}

// A memif server's socket left behind by a process that died: nobody accepts on it any more,
// so the new server may take its place (a live one is left alone: its owner is reported).
Status RemoveStaleSocket(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return Status::Ok();
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Errno(errno, "socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  const int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  const int err = errno;
  close(fd);
  if (rc == 0) {
    return Status::Error(ErrorCode::kBusy,
                         fmt::format("memif socket {} is served by another process already",
                                     path));
  }
  if (err == ECONNREFUSED) {
    spdlog::info("dpdk: removing the stale memif socket {} (nobody serves it)", path);
    unlink(path.c_str());
  }
  return Status::Ok();
}

struct Device {
  std::string devargs;  // for rte_dev_probe
  std::string iface;    // kernel interface, for its address and MTU
  bool memif = false;
  uint32_t mtu = 0;     // the IP MTU the port will use
};

Result<Device> ParseDevice(const PortSpec& spec) {
  const std::string& d = spec.device;
  auto after = [&](std::string_view prefix) { return d.substr(prefix.size()); };
  const int n = next_device++;
  Device dev;
  if (d.starts_with("af_packet:") || d.starts_with("af_xdp:")) {
    dev.iface = d.substr(d.find(':') + 1);
    if (if_nametoindex(dev.iface.c_str()) == 0) {
      return Status::Error(ErrorCode::kNotFound,
                           fmt::format("--dpdk-port {}: no interface '{}' here", d, dev.iface));
    }
    // The drivers report 1500 whatever the interface has: the kernel's MTU is the truth.
    const uint32_t kernel_mtu = InterfaceMtu(dev.iface);
    dev.mtu = spec.mtu != 0 ? spec.mtu : std::min(kernel_mtu != 0 ? kernel_mtu : 1500, kMaxMtu);
  } else {
    dev.mtu = spec.mtu;
  }
  if (d.starts_with("memif:")) {
    std::string rest = after("memif:");
    std::string socket = rest.substr(0, rest.find(','));
    std::string role = spec.default_role.empty() ? "client" : spec.default_role;
    if (rest.find(",role=") != std::string::npos) role = rest.substr(rest.find(",role=") + 6);
    if (socket.empty() || (role != "server" && role != "client")) {
      return Status::Invalid("--dpdk-port {}: expected memif:SOCKET[,role=server|client]", d);
    }
    if (role == "server") RETURN_IF_ERROR(RemoveStaleSocket(socket));
    // Buffers large enough for a jumbo packet, so none arrives in a chain of mbufs; 4096-slot
    // rings, so a full congestion window fits without tx drops.
    dev.devargs = fmt::format(
        "net_memif{},socket={},role={},bsize=10240,rsize=12,socket-abstract=no", n, socket, role);
    dev.memif = true;
    if (dev.mtu == 0) dev.mtu = kMaxMtu;  // memif carries jumbo frames
  } else if (d.starts_with("af_packet:")) {
    // Ring frames hold one packet and its tpacket header, 16-byte aligned; a block holds whole
    // frames back to back and is a multiple of the page; the ring a multiple of the block.
    const uint32_t framesz = (dev.mtu + kEthHeader + 74 + 15) / 16 * 16;
    const uint32_t per_block = 4096 / std::gcd(framesz, 4096u);
    const uint32_t framecnt = (2048 + per_block - 1) / per_block * per_block;
    // qdisc_bypass=0: traffic control (tbf, ...) on the interface applies to the packets.
    dev.devargs = fmt::format(
        "net_af_packet{},iface={},framesz={},blocksz={},framecnt={},qdisc_bypass=0", n, dev.iface,
        framesz, framesz * per_block, framecnt);
  } else if (d.starts_with("af_xdp:")) {
    dev.devargs = fmt::format("net_af_xdp{},iface={}", n, dev.iface);
  } else if (d.starts_with("pci:")) {
    dev.devargs = after("pci:");
  } else if (d.starts_with("net_")) {
    dev.devargs = d;
    dev.memif = d.starts_with("net_memif");
  } else {
    return Status::Invalid("--dpdk-port '{}': expected memif:SOCKET, af_packet:IFACE, "
                           "af_xdp:IFACE, pci:ADDRESS or a DPDK vdev (net_...)",
                           d);
  }
  return dev;
}

}  // namespace

Result<std::unique_ptr<Port>> Port::Open(const PortSpec& spec) {
  RETURN_IF_ERROR(InitEal(spec.device.starts_with("pci:"), spec.eal_memory));
  ASSIGN_OR_RETURN(Device dev, ParseDevice(spec));
  auto port = std::unique_ptr<Port>(new Port());
  port->name_ = spec.device;
  LastDpdkLine().clear();
  if (int rc = rte_dev_probe(dev.devargs.c_str()); rc != 0) {
    return Status::Error(ErrorCode::kUnavailable,
                         fmt::format("dpdk: cannot open port {} ({}): {}{}", spec.device,
                                     dev.devargs, rte_strerror(-rc), DriverSaid()));
  }
  std::string name = dev.devargs.substr(0, dev.devargs.find(','));
  port->device_name_ = name;
  uint16_t id = 0;
  if (rte_eth_dev_get_port_by_name(name.c_str(), &id) != 0) {
    return Status::Error(ErrorCode::kUnavailable,
                         fmt::format("dpdk: port {} opened but has no ethdev '{}'", spec.device,
                                     name));
  }
  port->port_id_ = id;
  rte_eth_dev_info info{};
  if (int rc = rte_eth_dev_info_get(id, &info); rc != 0) {
    return Status::Errno(-rc, fmt::format("dpdk: info of port {}", spec.device));
  }
  // The IP MTU: as asked, else the interface's (af_packet, af_xdp), jumbo for memif, else the
  // port's; capped to jumbo.
  uint16_t port_mtu = 1500;
  rte_eth_dev_get_mtu(id, &port_mtu);
  port->mtu_ = std::min(dev.mtu != 0 ? dev.mtu : port_mtu, kMaxMtu);
  if (port->mtu_ < kMinMtu) {
    return Status::Invalid("dpdk: port {} has an MTU of {} (at least {} needed)", spec.device,
                           port->mtu_, kMinMtu);
  }
  const std::string pool_name = fmt::format("bm_mbufs_{}", id);
  // Room for a whole packet and what drivers put beside it (af_packet's ring header).
  const uint32_t room = RTE_PKTMBUF_HEADROOM + (port->mtu_ + kEthHeader + 256 + 63) / 64 * 64;
  port->pool_ = rte_pktmbuf_pool_create(pool_name.c_str(), kMbufs, kMbufCache, 0,
                                        static_cast<uint16_t>(room), SOCKET_ID_ANY);
  if (port->pool_ == nullptr) {
    return Status::Error(ErrorCode::kUnavailable,
                         fmt::format("dpdk: no memory for the mbufs of port {}: {}", spec.device,
                                     rte_strerror(rte_errno)));
  }
  rte_eth_conf conf{};
  if (int rc = port->SetUpAttach(info, dev.devargs); rc != 0) {
    return Status::Error(ErrorCode::kUnavailable,
                         fmt::format("dpdk: no memory for the mbufs of port {}: {}", spec.device,
                                     rte_strerror(rc)));
  }
  if (port->attach_tx_) conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
  conf.intr_conf.rxq = 1;
  bool intr = rte_eth_dev_configure(id, 1, 1, &conf) == 0;
  if (!intr) {
    conf.intr_conf.rxq = 0;
    if (int rc = rte_eth_dev_configure(id, 1, 1, &conf); rc != 0) {
      return Status::Errno(-rc, fmt::format("dpdk: configure port {}{}", spec.device, DriverSaid()));
    }
  }
  if (int rc = rte_eth_rx_queue_setup(id, 0, kRingSize, rte_eth_dev_socket_id(id), nullptr,
                                      port->pool_);
      rc != 0) {
    return Status::Errno(-rc, fmt::format("dpdk: rx queue of port {}{}", spec.device, DriverSaid()));
  }
  if (int rc = rte_eth_tx_queue_setup(id, 0, kRingSize, rte_eth_dev_socket_id(id), nullptr);
      rc != 0) {
    return Status::Errno(-rc, fmt::format("dpdk: tx queue of port {}{}", spec.device, DriverSaid()));
  }
  if (spec.mtu != 0 || !dev.memif) rte_eth_dev_set_mtu(id, static_cast<uint16_t>(port->mtu_));
  if (int rc = rte_eth_dev_start(id); rc != 0) {
    std::string hint = dev.memif ? " (a memif client needs its server: is the peer running, with "
                                   "the same socket?)"
                                 : "";
    return Status::Errno(-rc, fmt::format("dpdk: cannot start port {}{}{}", spec.device, hint,
                                          DriverSaid()));
  }
  port->started_ = true;
  rte_eth_promiscuous_enable(id);
  rte_ether_addr mac{};
  rte_eth_macaddr_get(id, &mac);
  std::memcpy(port->mac_.data(), mac.addr_bytes, 6);
  if (!dev.iface.empty()) port->kernel_ipv4_ = InterfaceIpv4(dev.iface);
  if (intr) {
    int fd = rte_eth_dev_rx_intr_ctl_q_get_fd(id, 0);
    port->rx_fd_ = fd >= 0 ? fd : -1;
  }
  spdlog::info("dpdk: port {} up: {} ({}), MAC {}, MTU {}, {}, {}", spec.device, name,
               info.driver_name, MacToString(port->mac_), port->mtu_,
               port->rx_fd_ >= 0 ? "rx interrupts" : "no rx interrupts (timer wakeups when idle)",
               port->attach_tx_ ? "block data sent by reference"
                                : "block data copied into mbufs");
  return port;
}

bool Port::eal_on_hugepages() { return eal_huge; }

struct Port::Attached {
  // One shared info for every attached segment. Its count is 1 plus the segments alive, so it
  // never reaches 0 and the callback never runs: the memory is the buffer pool's, not DPDK's.
  rte_mbuf_ext_shared_info info{};
  static void NeverFreed(void*, void*) {}
};

int Port::SetUpAttach(const rte_eth_dev_info& info, const std::string& devargs) {
  const std::string_view driver = info.driver_name;
  const bool copies_out =
      (driver == "net_memif" && devargs.find("zero-copy=yes") == std::string::npos) ||
      driver == "net_af_packet" || driver == "net_af_xdp";
  if (!copies_out || (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MULTI_SEGS) == 0) return 0;
  const std::string name = fmt::format("bm_attach_{}", port_id_);
  attach_pool_ = rte_pktmbuf_pool_create(name.c_str(), kMbufs, kMbufCache, 0, 0, SOCKET_ID_ANY);
  if (attach_pool_ == nullptr) return rte_errno;
  attached_ = std::make_unique<Attached>();
  attached_->info.free_cb = &Attached::NeverFreed;
  rte_mbuf_ext_refcnt_set(&attached_->info, 1);
  attach_tx_ = true;
  return 0;
}

Port::~Port() {
  if (started_) {
    rte_eth_dev_stop(port_id_);
    rte_eth_dev_close(port_id_);
  }
  if (!device_name_.empty()) rte_eal_hotplug_remove("vdev", device_name_.c_str());
  if (pool_ != nullptr) rte_mempool_free(pool_);
  if (attach_pool_ != nullptr) rte_mempool_free(attach_pool_);
}

bool Port::link_up() const {
  rte_eth_link link{};
  rte_eth_link_get_nowait(port_id_, &link);
  return link.link_status == RTE_ETH_LINK_UP;
}

uint16_t Port::RxBurst(rte_mbuf** pkts, uint16_t n) { return rte_eth_rx_burst(port_id_, 0, pkts, n); }

uint16_t Port::TxBurst(rte_mbuf** pkts, uint16_t n) {
  uint16_t sent = 0;
  // A full tx ring drains in microseconds: retry a few times before dropping.
  for (int tries = 0; tries < 64 && sent < n; ++tries) {
    sent += rte_eth_tx_burst(port_id_, 0, pkts + sent, static_cast<uint16_t>(n - sent));
  }
  for (uint16_t i = sent; i < n; ++i) rte_pktmbuf_free(pkts[i]);
  tx_dropped_ += n - sent;
  if (attach_tx_ && rte_mbuf_ext_refcnt_read(&attached_->info) != 1) {
    // The driver kept sent packets (attaches_tx() assumed it would not): later bytes by copy.
    // What it still holds goes out with its packet CRC, which a changed buffer no longer matches.
    spdlog::warn("dpdk: port {}'s driver keeps sent packets: block data is copied from now on",
                 name_);
    attach_tx_ = false;
  }
  return sent;
}

rte_mbuf* Port::Attach(const std::byte* data, uint16_t len) {
  rte_mbuf* m = rte_pktmbuf_alloc(attach_pool_);
  if (m == nullptr) return nullptr;
  rte_mbuf_ext_refcnt_update(&attached_->info, 1);
  // No IOVA: the drivers that attach copy with the CPU.
  rte_pktmbuf_attach_extbuf(m, const_cast<std::byte*>(data), RTE_BAD_IOVA, len, &attached_->info);
  m->data_len = len;
  m->pkt_len = len;
  return m;
}

rte_mbuf* Port::Alloc(uint32_t len) {
  rte_mbuf* m = rte_pktmbuf_alloc(pool_);
  if (m == nullptr) return nullptr;
  if (rte_pktmbuf_append(m, static_cast<uint16_t>(len)) == nullptr) {
    rte_pktmbuf_free(m);
    return nullptr;
  }
  return m;
}

void Port::ArmRxInterrupt(bool on) {
  if (rx_fd_ < 0 || on == armed_) return;
  if (on) {
    rte_eth_dev_rx_intr_enable(port_id_, 0);
  } else {
    rte_eth_dev_rx_intr_disable(port_id_, 0);
  }
  armed_ = on;
}

}  // namespace blkmirror::transport::dpdk
