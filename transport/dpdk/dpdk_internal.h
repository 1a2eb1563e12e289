// Private to the DPDK backend: the transport object shared by its setup (dpdk_transport.cc) and
// data-path (dpdk_datapath.cc) halves.
#pragma once

#include <array>
#include <chrono>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "io/ring.h"
#include "transport/dpdk/channel.h"
#include "transport/dpdk/dpdk_transport.h"
#include "transport/dpdk/port.h"

struct rte_mbuf;

namespace blkmirror::transport::dpdk {

inline constexpr size_t kBurst = 32;
// Payloads at least this long are sent by reference where the port allows (Port::attaches_tx);
// shorter ones cost less to copy than a second segment.
inline constexpr size_t kAttachMin = 512;
// After the last packet in or out, the loop keeps polling the port this long before it sleeps
// (on the rx interrupt, or a timer where the driver has none).
inline constexpr uint64_t kSpinNs = 200'000;
// A sender with at most this many packets unacknowledged keeps polling for the ack.
inline constexpr uint32_t kSpinInFlight = 16;
// How often an idle transport looks at its port when the driver has no rx interrupt, and as a
// safety net when it has one.
inline constexpr std::chrono::milliseconds kIdleTickNoIntr{1};
inline constexpr std::chrono::milliseconds kIdleTickIntr{50};

struct Op : io::RingOp {
  enum class Kind : uint8_t { kNop, kTimer, kRxEvent };
  Kind kind = Kind::kNop;
};

struct Conn {
  enum class Mode : uint8_t {
    kAwaitHello,   // accepted control connection, first frame not seen yet
    kAwaitAnswer,  // we connected and offered DPDK; the answer is due
    kPlain,        // a peer that speaks plain TCP: every call goes to the TCP transport
    kDpdk,         // frames move over the port
  };
  ConnId id = kNoConn;  // the control connection's id in the TCP transport
  Mode mode = Mode::kAwaitHello;
  std::string peer;
  std::unique_ptr<Channel> channel;
  Route route;  // to the peer
  uint64_t local_session = 0;  // in packets the peer sends us
  uint64_t peer_session = 0;   // in packets we send
  bool closing = false;
  bool control_closed = false;  // the TCP transport reported its kClosed
  Status close_reason;
  // The answer to our offer (Connect): ok, or why the peer refused.
  bool answered = false;
  Status answer;
};

// Test-only packet faults on receive (--test-fault packet:...), applied before decoding.
struct PacketFaults {
  double drop = 0, dup = 0, reorder = 0, corrupt = 0;
  bool any() const { return drop > 0 || dup > 0 || reorder > 0 || corrupt > 0; }
  static Result<PacketFaults> Parse(std::string_view text);
};

class DpdkTransport final : public Transport, public io::RingHandler {
 public:
  DpdkTransport(const TransportContext& context, std::unique_ptr<Transport> tcp,
                PacketFaults faults);
  ~DpdkTransport() override;

  std::string_view name() const override { return "dpdk"; }
  Status Register(io::BufferPool& pool) override;
  Result<Endpoint> Listen(const Endpoint& local) override;
  Result<ConnId> Connect(const Endpoint& peer, std::chrono::milliseconds timeout) override;
  Status Post(std::span<const WorkItem> items) override;
  size_t SendSpace(ConnId conn) const override;
  size_t Poll(std::span<Completion> out) override;
  void Release(ConnId conn, io::BufferRef buffer) override;
  void Trust(ConnId conn) override;
  void Close(ConnId conn) override;
  std::string PeerName(ConnId conn) const override;

  void OnCqe(io::RingOp* op, int32_t res, uint32_t flags) override;

 private:
  // Setup (dpdk_transport.cc).
  Status OpenPort(const char* role);
  proto::TransportHello LocalHello(const Conn& conn) const;
  Status StartChannel(Conn& conn, const proto::TransportHello& peer_hello);
  void OnControl(Completion& c, std::span<Completion> out, size_t& n, bool stash);
  void OnFirstFrame(Conn& conn, Completion& c, std::span<Completion> out, size_t& n, bool stash);
  void Emit(Completion&& c, std::span<Completion> out, size_t& n, bool stash);
  Conn* Find(ConnId id) const;
  void Erase(ConnId id);

  // Data path (dpdk_datapath.cc).
  void Receive(uint64_t now);
  void Deliver(rte_mbuf* m, uint64_t now);
  size_t Transmit(Conn& conn, uint64_t now);  // packets handed to the port
  size_t Drain(Conn& conn, std::span<Completion> out);
  void Fail(Conn& conn, Status reason);
  void ScheduleWake(bool hot, uint64_t now);

  io::Ring& ring_;
  TransportOptions options_;
  std::unique_ptr<Transport> tcp_;  // the control connections
  io::BufferPool* pool_ = nullptr;
  std::unique_ptr<Port> port_;
  uint32_t local_ip_ = 0;
  uint16_t udp_port_ = 0;
  uint32_t mtu_ = 0;
  std::vector<std::unique_ptr<Conn>> conns_;
  // Connections whose kClosed went out at the last Poll: freed at the next one, because the
  // control payloads handed out with that kClosed point into them.
  std::vector<std::unique_ptr<Conn>> closed_;
  // Completions kept for the next Poll (those that arrived while Connect waited for an answer,
  // with their control payloads copied).
  std::deque<Completion> pending_;
  std::deque<std::vector<std::byte>> pending_payloads_;
  size_t pending_payloads_lent_ = 0;
  std::array<Completion, 64> inner_{};
  std::array<TxPacket, kBurst> txp_{};
  std::array<rte_mbuf*, kBurst> mbufs_{};
  std::array<uint64_t, static_cast<size_t>(DropReason::kCount)> drops_{};
  uint64_t last_activity_ns_ = 0;
  uint64_t posts_ = 0;  // Post calls: the batch number of SendQueue::Reserve
  Op nop_op_, timer_op_, rx_op_;
  bool nop_inflight_ = false, timer_inflight_ = false, rx_inflight_ = false;
  __kernel_timespec timer_ts_{};
  PacketFaults faults_;
  std::mt19937_64 fault_rng_{12345};
  static constexpr size_t kMaxDelayed = 64;
  std::array<rte_mbuf*, kMaxDelayed> delayed_{};  // held back by the fault layer (reordering)
  size_t delayed_n_ = 0;
  bool shutting_down_ = false;
};

}  // namespace blkmirror::transport::dpdk
