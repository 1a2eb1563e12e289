// Port: one DPDK ethernet port with one rx and one tx queue, and the process's EAL behind it.
//
// The EAL is initialised once per process, on first use, in-process and leaving no files: on
// 2 MiB hugepages with --in-memory when some are free, else with --no-huge --no-shconf (said once
// in the log); its main lcore may run on any CPU the process may (no pinning). Devices are
// hot-plugged after that (rte_dev_probe), so one process can open several ports (the unit tests
// open both ends of a memif pair).
//
// Port descriptions (`--dpdk-port`):
//   memif:SOCKET[,role=server|client]   shared memory with another process on this host
//   af_packet:IFACE                      a kernel interface, through a packet socket
//   af_xdp:IFACE                         a kernel interface, through an AF_XDP socket
//   pci:DOMAIN:BUS:DEV.FN                a NIC bound to vfio-pci (a real node; not testable here)
//   net_...,ARGS                         any DPDK vdev, as DPDK's --vdev takes it
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "transport/dpdk/packet.h"

struct rte_eth_dev_info;
struct rte_mbuf;
struct rte_mempool;

namespace blkmirror::transport::dpdk {

// The EAL's memory: 2 MiB hugepages when 64 are free (kAuto), or as forced.
enum class EalMemory : uint8_t { kAuto, kHugepages, kNoHuge };

struct PortSpec {
  std::string device;       // as above
  std::string default_role; // memif role when the description names none ("server"/"client")
  uint32_t mtu = 0;         // IP MTU; 0: the port's (memif: 9000)
  EalMemory eal_memory = EalMemory::kAuto;  // used by the first port a process opens
};

class Port {
 public:
  static Result<std::unique_ptr<Port>> Open(const PortSpec& spec);
  ~Port();
  Port(const Port&) = delete;
  Port& operator=(const Port&) = delete;

  // True when the process's EAL runs on hugepages (after the first Open).
  static bool eal_on_hugepages();

  const std::string& name() const { return name_; }
  const MacAddr& mac() const { return mac_; }
  uint32_t mtu() const { return mtu_; }
  // The interface's IPv4 address (af_packet/af_xdp), 0 when the port has none of its own.
  uint32_t kernel_ipv4() const { return kernel_ipv4_; }
  bool link_up() const;

  uint16_t RxBurst(rte_mbuf** pkts, uint16_t n);
  // Sends what the queue takes; frees the rest (the reliability layer resends them).
  uint16_t TxBurst(rte_mbuf** pkts, uint16_t n);
  // An mbuf with room for `len` bytes of packet, or null when the pool is empty.
  rte_mbuf* Alloc(uint32_t len);

  // True when a packet may carry bytes by reference, in a segment attached to memory outside
  // DPDK (rte_pktmbuf_attach_extbuf) instead of a copy: the driver takes chained mbufs and is
  // one that copies them out and frees them within its tx burst (memif in copy mode, af_packet,
  // af_xdp), so the memory is free to change once TxBurst returns. A NIC's driver (PCI) keeps
  // sent mbufs until its DMA is done and would need the memory registered for DMA: it gets copies.
  bool attaches_tx() const { return attach_tx_; }
  // A segment of `len` bytes at `data`, not copied; null when none is free. Only when
  // attaches_tx().
  rte_mbuf* Attach(const std::byte* data, uint16_t len);

  // An fd that becomes readable when packets arrive while rx interrupts are armed (-1 when the
  // driver has none: the transport then wakes on a timer).
  int rx_event_fd() const { return rx_fd_; }
  // Arms (true) or disarms rx interrupts; a no-op without them.
  void ArmRxInterrupt(bool on);

  uint64_t tx_dropped() const { return tx_dropped_; }

 private:
  Port() = default;
  // Sets attach_tx_ (and its mbufs) where the driver allows; 0 or an rte_errno.
  int SetUpAttach(const rte_eth_dev_info& info, const std::string& devargs);
  std::string name_;
  std::string device_name_;  // for rte_dev_remove
  uint16_t port_id_ = 0;
  rte_mempool* pool_ = nullptr;
  rte_mempool* attach_pool_ = nullptr;  // mbufs without data room, for Attach
  struct Attached;                      // the shared info of attached segments
  std::unique_ptr<Attached> attached_;
  bool attach_tx_ = false;
  MacAddr mac_{};
  uint32_t mtu_ = 1500;
  uint32_t kernel_ipv4_ = 0;
  int rx_fd_ = -1;
  bool armed_ = false;
  bool started_ = false;
  uint64_t tx_dropped_ = 0;
};

}  // namespace blkmirror::transport::dpdk
