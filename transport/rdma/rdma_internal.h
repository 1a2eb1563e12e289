// Private to the RDMA backend: the wire structs it exchanges with its peer, RAII owners of the
// verbs objects, and the transport object shared by its setup (rdma_transport.cc) and data-path
// (rdma_datapath.cc) halves.
//
// Flow control (both directions of a connection, independently):
//   - Message credits. Every message (SEND, SEND WITH IMM, RDMA WRITE WITH IMM) consumes one
//     receive WQE at the peer. A sender starts with the peer's `rq_depth` credits (rdma_cm
//     private data) and gets them back in credit messages as the peer re-posts receives. A frame
//     needs 2 credits (the last one is kept for a credit message); a credit message needs 1 and,
//     when it takes the last one, returns at least one credit and says so (kCreditStarved), so
//     the peer answers with its own credits: neither side can end up unable to send them.
//   - Slot credits (Data frames, towards the accepting side only). The receiver grants slots:
//     (slot id, pool buffer index) pairs; the sender writes a Data frame into the slot's buffer
//     with RDMA WRITE WITH IMM, imm = slot id | low bits of a per-connection Data sequence. The
//     receiver hands the buffer to the engine (kRecv) and grants the slot id again, with the
//     buffer the engine gives back in Release().
// Teardown: a closing connection's QP gets one last pass over its CQ and is moved to the error
// state (rdma_disconnect); its unfinished sends are cancelled. The QP is then destroyed on the
// Reaper's thread (that can take seconds on a dead link), and until it is, the slot buffers it
// could still write into stay parked in the connection; they return to the pool once it is
// gone. The CQ, cm_id and buffers live until the first Poll after both its kClosed and the QP's
// destruction (control payload spans stay valid).
//
// Thread safety: none (the transport's loop thread only).
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "io/ring.h"
#include "transport/rdma/rdma_transport.h"
#include "transport/send_queue.h"

namespace blkmirror::transport::rdma {

// ---- Sizes ----------------------------------------------------------------------------------

// A receive buffer holds the largest frame that is not Data: header + control payload.
inline constexpr uint32_t kRecvBufSize = proto::kHeaderSize + proto::kMaxControlPayload;
inline constexpr uint32_t kSendDepth = 64;      // WRs in flight per send queue
inline constexpr uint32_t kCtrlRecvs = 64;      // receive WQEs per connection besides the slots
inline constexpr uint32_t kSendSlotSize = 256;  // per send-queue entry: a header or a credit msg
inline constexpr uint32_t kSignalEvery = 16;    // signal at least every Nth WR (and a batch's last)
inline constexpr size_t kMaxPostBatch = 32;     // WRs per ibv_post_send
inline constexpr int kCqBatch = 32;             // WCs per ibv_poll_cq
inline constexpr size_t kCtrlRingBytes = 128 << 10;  // queued control payloads per connection
inline constexpr uint32_t kImmSlotBits = 12;
inline constexpr uint32_t kMaxSlots = 1024;
// Busy-polling goes on while sends are outstanding on the NIC, but not longer than this after the
// last traffic: a peer that stopped answering is left to the QP's retry timeout, asleep.
inline constexpr uint64_t kMaxOutstandingSpinNs = 10'000'000;
static_assert(kMaxSlots <= (1u << kImmSlotBits));
static_assert(kSendDepth >= 2 * kSignalEvery, "a full queue must hold signaled WRs");
static_assert(kRecvBufSize % 64 == 0 && kSendSlotSize % 64 == 0);

// ---- Wire -----------------------------------------------------------------------------------

template <typename T>
inline void StoreLe(std::byte* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<std::byte>(uint64_t{v} >> (8 * i));
}
template <typename T>
inline T LoadLe(const std::byte* p) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return static_cast<T>(v);
}

inline constexpr uint32_t kConnectMagic = 0x44524D42;  // "BMRD"
// 2: the slot region (rkey, base) is no longer in the accept's private data; it comes in the
// first credit message after the engine trusts the connection (Transport::Trust).
inline constexpr uint16_t kWireVersion = 2;

// Why a connection request was refused (ConnectInfo::reject, in rdma_reject's private data).
enum class RejectReason : uint16_t {
  kNone = 0,
  kBadRequest = 1,  // private data missing, wrong magic or version
  kMtu = 2,         // the requested path MTU exceeds this side's port MTU (ConnectInfo::mtu)
  kResources = 3,   // this side could not set up the QP (see its log)
};

// rdma_cm private data of a connect request, an accept and a reject: a fixed little-endian
// layout (rdma_cm carries at most 56 bytes in a request over IB/RoCE).
struct ConnectInfo {
  uint32_t magic = kConnectMagic;
  uint16_t version = kWireVersion;
  uint16_t reject = 0;      // RejectReason (a reject only)
  uint32_t rq_depth = 0;    // receive WQEs posted for the peer's messages = its first credits
  uint32_t recv_size = 0;   // bytes per receive buffer (a SEND must fit)
  uint32_t mtu = 0;         // request: the path MTU in bytes; accept/reject: the port's MTU
  // The slot region: its rkey and base are 0 on the wire (a stranger must not learn them); the
  // accepting side announces them in its first credit message with grants (kCreditRegion), and
  // the connecting side stores them here.
  uint32_t slot_rkey = 0;   // slots: rkey of the pool region
  uint64_t slot_base = 0;   // slots: address of pool buffer 0 (0: region not announced yet)
  uint32_t slot_size = 0;   // slots: pool buffer size (a Data frame + 64 must fit)
  uint32_t slot_count = 0;  // slots: pool buffers (grants name buffers below this)
  uint32_t max_slots = 0;   // slot ids in immediates are below this (0: Data not accepted)
  uint32_t reserved = 0;
};
static_assert(sizeof(ConnectInfo) == 48, "ConnectInfo is a wire format");
inline constexpr size_t kConnectInfoSize = 48;

std::array<std::byte, kConnectInfoSize> EncodeConnectInfo(const ConnectInfo& info);
// rdma_connect / rdma_accept parameters carrying `pdata` (which must outlive the call).
rdma_conn_param ConnParam(const std::array<std::byte, kConnectInfoSize>& pdata);
// Checks the size, magic and version (the caller checks the values against its own limits).
Result<ConnectInfo> DecodeConnectInfo(const void* data, size_t len);

// A credit message: SEND WITH IMM (imm = kCreditImm), payload = CreditHeader, then the Region
// when flagged, then count Grants.
inline constexpr uint32_t kCreditImm = 0x43524454;  // "CRDT"
inline constexpr uint16_t kCreditStarved = 0x1;     // flag: this took the sender's last credit
inline constexpr uint16_t kCreditRegion = 0x2;      // flag: the slot region follows the header
inline constexpr size_t kCreditHeaderSize = 8;      // le32 returned, le16 flags, le16 count
inline constexpr size_t kRegionSize = 16;           // le32 rkey, le32 zero, le64 base address
inline constexpr size_t kGrantSize = 8;             // le32 slot id, le32 pool buffer index
inline constexpr uint32_t kMaxGrantsPerMsg =
    (kSendSlotSize - kCreditHeaderSize - kRegionSize) / kGrantSize;

inline uint32_t DataImm(uint32_t slot, uint64_t seq) {
  return slot | (static_cast<uint32_t>(seq) << kImmSlotBits);
}
inline uint32_t ImmSlot(uint32_t imm) { return imm & ((1u << kImmSlotBits) - 1); }
inline uint32_t ImmSeq(uint32_t imm) { return imm >> kImmSlotBits; }
inline uint32_t SeqBits(uint64_t seq) {
  return static_cast<uint32_t>(seq) & ((1u << (32 - kImmSlotBits)) - 1);
}

// ---- RAII owners ----------------------------------------------------------------------------

struct EventChannelDeleter {
  void operator()(rdma_event_channel* c) const { rdma_destroy_event_channel(c); }
};
using EventChannel = std::unique_ptr<rdma_event_channel, EventChannelDeleter>;

// Destroys the id (its QP must be gone: see QueuePair).
struct CmIdDeleter {
  void operator()(rdma_cm_id* id) const;
};
using CmId = std::unique_ptr<rdma_cm_id, CmIdDeleter>;

struct PdDeleter {
  void operator()(ibv_pd* pd) const { ibv_dealloc_pd(pd); }
};
using ProtectionDomain = std::unique_ptr<ibv_pd, PdDeleter>;

struct CompChannelDeleter {
  void operator()(ibv_comp_channel* c) const { ibv_destroy_comp_channel(c); }
};
using CompChannel = std::unique_ptr<ibv_comp_channel, CompChannelDeleter>;

struct CqDeleter {
  void operator()(ibv_cq* cq) const { ibv_destroy_cq(cq); }
};
using CompletionQueue = std::unique_ptr<ibv_cq, CqDeleter>;

struct MrDeleter {
  void operator()(ibv_mr* mr) const { ibv_dereg_mr(mr); }
};
using MemoryRegion = std::unique_ptr<ibv_mr, MrDeleter>;

// The RC QP of a cm_id (rdma_create_qp / rdma_destroy_qp). Does not own the id.
class QueuePair {
 public:
  QueuePair() = default;
  ~QueuePair() { Reset(); }
  QueuePair(const QueuePair&) = delete;
  QueuePair& operator=(const QueuePair&) = delete;

  Status Create(rdma_cm_id* id, ibv_pd* pd, ibv_qp_init_attr& attr);
  void Reset();
  // Gives up ownership (someone else destroys the QP); returns its id.
  rdma_cm_id* Release() { return std::exchange(id_, nullptr); }
  ibv_qp* get() const { return id_ != nullptr ? id_->qp : nullptr; }

 private:
  rdma_cm_id* id_ = nullptr;
};

// Anonymous page-aligned memory (a connection's receive buffers, headers, control payloads).
class MappedArea {
 public:
  MappedArea() = default;
  ~MappedArea();
  MappedArea(const MappedArea&) = delete;
  MappedArea& operator=(const MappedArea&) = delete;
  Status Map(size_t bytes);
  std::byte* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// Destroys torn-down queue pairs on a thread of its own. Destroying a QP can take seconds
// (soft-RoCE waits for packets still queued on a downed interface; a NIC runs firmware commands)
// and the loop must not stall for it: a peer lost on a dead link would take every other peer's
// heartbeats with it. What it is handed is already in the error state, and nothing on the loop
// thread touches it again. Destroy and Done are for the loop thread; the destructor finishes
// what is still queued.
class Reaper {
 public:
  Reaper();
  ~Reaper();
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;

  // rdma_destroy_qp(id), soon; `conn` comes back from Done() once it is done.
  void Destroy(rdma_cm_id* id, ConnId conn);
  // The connections whose QP was destroyed since the last call.
  std::vector<ConnId> Done();
  // Blocks until everything handed over is destroyed (teardown of the transport).
  void WaitIdle();

 private:
  void Run();
  bool busy_ = false;  // destroying one now
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<rdma_cm_id*, ConnId>> todo_;
  std::vector<ConnId> done_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once the rest exists
};

// ---- Transport state ------------------------------------------------------------------------

struct Device;

struct Op : io::RingOp {
  enum class Kind : uint8_t { kCmEvents, kCqEvents, kWake };
  Kind kind = Kind::kWake;
  Device* device = nullptr;
};

// Per RDMA device (ibv_context, opened and owned by librdmacm): what every connection on it
// shares. One pool MR per access mode: local only (the connecting side sends from it), or with
// remote write (the accepting side's slots).
struct Device {
  ibv_context* ctx = nullptr;
  std::string name;
  ProtectionDomain pd;
  CompChannel channel;  // every CQ on this device; its fd is POLL_ADDed to the ring
  MemoryRegion pool_mr_local;
  MemoryRegion pool_mr_remote;
  Op op;
  bool poll_armed = false;
};

struct Listener {
  CmId id;
  Endpoint local;
};

// One posted send WR, by send-queue index (wr_id).
struct WrInfo {
  uint64_t seq = 0;            // WR sequence number on this QP
  uint64_t entries_after = 0;  // send entries done once this WR is
};

// Receiver side: a slot the peer may write a Data frame into.
struct Slot {
  io::BufferRef buffer;    // held while granted
  bool granted = false;    // buffer held, the peer may write (once announced)
  bool announced = false;  // sent in a credit message
};

// Sender side: a granted slot of the peer.
struct RemoteSlot {
  uint32_t slot = 0;
  uint64_t addr = 0;
};

// A received frame waiting for Poll. Holds its receive WQE's buffer until delivered.
struct Ready {
  proto::RawHeader header{};
  io::BufferRef data;       // Data: the slot's buffer
  uint32_t recv_index = 0;  // the receive buffer (control: holds header + payload)
  uint32_t payload_len = 0;
  bool is_data = false;
};

enum class Role : uint8_t { kConnecting, kAccepted };

struct Conn {
  ~Conn() { qp.Reset(); }  // the QP goes before anything it could still touch

  ConnId id = kNoConn;
  Role role = Role::kConnecting;
  std::string peer;  // "10.0.0.2:7000"
  std::string path;  // "device rxe0 port 1, GID[1] ::ffff:10.0.0.1, path MTU 1024", for errors
  Device* device = nullptr;

  // Declaration order is destruction order reversed: QP, then CQ, MRs and memory, then the id.
  CmId cm_id;
  MappedArea area;  // [receive buffers][send slots][control ring]
  MemoryRegion area_mr;
  CompletionQueue cq;
  QueuePair qp;

  // Lifecycle.
  bool established = false;  // the QP may send
  bool announced = false;    // the engine knows this ConnId (returned by Connect, or kAccepted)
  bool closing = false;
  bool local_close = false;
  bool torn_down = false;   // QP in the error state and handed to the Reaper
  bool qp_destroying = false;  // ... and not destroyed yet
  std::vector<io::BufferRef> parked;  // slot buffers held until the QP is destroyed
  bool rx_stopped = false;  // a receive was bad: deliver nothing that came after it
  Status close_reason;
  bool cq_armed = false;  // ibv_req_notify_cq done since the last CQ event

  // What the peer told us at connect time, and the credits it gave since.
  ConnectInfo peer_info;
  uint32_t tx_credits = 0;    // receive WQEs the peer has posted for us, not yet used
  bool peer_starved = false;  // the peer used its last credit on a credit message: answer it
  uint32_t pool_lkey = 0;
  // Granted slots of the peer, FIFO (Data frames take them in order).
  std::vector<RemoteSlot> remote;
  size_t remote_head = 0, remote_count = 0;
  std::vector<uint8_t> remote_held;  // by slot id
  uint64_t tx_data_seq = 0;
  bool corrupt_next_header = false;  // TEST_CorruptNextDataHeader

  // Send queue (transport/send_queue.h), its control ring inside `area` (registered: area_mr's
  // lkey covers the control payloads' SGEs). Entries by monotonic counters:
  //   [head, done)          completed, not yet reported by Poll
  //   [done, sq_posted)     posted to the QP
  //   [sq_posted, tail)     queued (waiting for send-queue room, credits or a slot)
  SendQueue sq;
  uint64_t sq_posted = 0;
  std::array<WrInfo, kSendDepth> wrs{};
  uint64_t wr_posted = 0, wr_done = 0;
  uint32_t unsignaled = 0;
  std::array<ibv_send_wr, kMaxPostBatch> swr{};
  std::array<ibv_sge, 2 * kMaxPostBatch> ssge{};

  // Receive side.
  uint32_t rq_depth = 0;
  std::vector<ibv_recv_wr> rwr;
  std::vector<ibv_sge> rsge;
  std::vector<uint32_t> repost;  // receive buffers to post again now
  std::vector<uint32_t> lent;    // control payloads handed out at the last Poll
  uint32_t rx_owed = 0;          // receives re-posted, not yet returned as credits
  uint64_t rx_data_seq = 0;
  std::vector<Ready> ready;  // ring, rq_depth entries (each holds a receive WQE)
  size_t ready_head = 0, ready_count = 0;
  // Accepted side: the slots it grants, once the engine trusts the peer (Transport::Trust), and
  // the region they live in, announced with the first grants.
  bool trusted = false;
  bool region_sent = false;
  uint32_t slot_rkey = 0;
  std::vector<Slot> slots;
  std::vector<uint32_t> idle_slots;      // ids without a buffer (their buffer is the engine's)
  std::vector<uint32_t> grants_pending;  // granted, not yet announced

  std::byte* recv_buf(uint32_t i) const { return area.data() + size_t{i} * kRecvBufSize; }
  std::byte* send_slot(uint32_t i) const {
    return area.data() + size_t{rq_depth} * kRecvBufSize + size_t{i} * kSendSlotSize;
  }
  std::byte* ctrl_ring() const {
    return area.data() + size_t{rq_depth} * kRecvBufSize + size_t{kSendDepth} * kSendSlotSize;
  }
  uint32_t wr_space() const { return kSendDepth - static_cast<uint32_t>(wr_posted - wr_done); }
  uint32_t credit_threshold() const { return std::max(1u, rq_depth / 4); }
};

// wr_id: kind in the high half, index (send-queue entry or receive buffer) in the low half.
enum class WrKind : uint32_t { kSend = 1, kRecv = 2 };
inline uint64_t MakeWrId(WrKind kind, uint32_t index) {
  return (uint64_t{static_cast<uint32_t>(kind)} << 32) | index;
}

class RdmaTransport final : public Transport, public io::RingHandler {
 public:
  RdmaTransport(const TransportContext& context, const RdmaOptions& options, EventChannel events);
  ~RdmaTransport() override;

  std::string_view name() const override { return "rdma"; }
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

  // TEST ONLY: whether the last Poll left the transport busy-polling (a NOP in the ring to come
  // back to Poll); false means it armed its CQs and the loop may sleep. Never call it outside
  // tests.
  bool TEST_Polling() const;

  // TEST ONLY: the next Data frame posted on `conn` goes out with a corrupted header (its magic
  // flipped after Post's checks), so a test can watch the receiver's header check close the
  // connection. Never call it outside tests.
  void TEST_CorruptNextDataHeader(ConnId conn);

 private:
  // Setup (rdma_transport.cc).
  Result<Device*> GetDevice(ibv_context* ctx);
  Result<ibv_mr*> PoolMr(Device& device, bool remote_write);
  Status SetUpQp(Conn& conn);
  void HandleCmEvents();
  void OnConnectRequest(rdma_cm_id* id, const std::byte* pdata, size_t pdata_len);
  void Teardown(Conn& conn);
  void Bury(Conn& conn);
  // Returns the parked buffers of connections whose QP the Reaper destroyed, and frees buried
  // connections that are done with.
  void CollectRemains();
  void ArmCmPoll();
  void ArmDevicePoll(Device& device);
  void RequestWake();
  void TopUpSlots(Conn& conn);
  void GrantSlot(Conn& conn, io::BufferRef buffer);  // needs an idle slot id

  // Data path (rdma_datapath.cc).
  Conn* Find(ConnId id) const;
  // Starts closing `conn` with `reason` (the QP is torn down at the next Poll, or by Close).
  void Fail(Conn& conn, Status reason);
  // The same for something this side detected in what it received: later receives are dropped.
  void Abort(Conn& conn, Status reason);
  void Pump(Conn& conn);
  bool CreditDue(const Conn& conn) const;
  bool CanSendCredit(const Conn& conn) const;
  ibv_send_wr& NextWr(Conn& conn, size_t n, uint64_t entries_after, uint32_t* index);
  void BuildCredit(Conn& conn, size_t n);
  void BuildFrame(Conn& conn, SendEntry& e, size_t n);
  // Returns how many work completions it handled.
  size_t DrainCq(Conn& conn);
  // Busy-poll or sleep after this Poll (see Polling in rdma_transport.h).
  void UpdatePolling(uint64_t now_ns, bool spinning, bool traffic);
  void OnWc(Conn& conn, const ibv_wc& wc);
  void OnDataWritten(Conn& conn, uint32_t recv_index, uint32_t imm, uint32_t byte_len);
  void OnControl(Conn& conn, uint32_t recv_index, uint32_t byte_len);
  void OnCredit(Conn& conn, uint32_t recv_index, uint32_t imm, uint32_t byte_len);
  void PushReady(Conn& conn, Ready&& r);
  void PostReceives(Conn& conn);
  size_t Drain(Conn& conn, std::span<Completion> out);
  void OnCqEvents(Device& device);

  io::Ring& ring_;
  TransportOptions options_;
  RdmaOptions rdma_options_;
  io::BufferPool* pool_ = nullptr;
  EventChannel events_;  // the CM events of listeners and established connections
  Op cm_op_;
  bool cm_armed_ = false;
  Op wake_op_;
  bool wake_pending_ = false;
  bool shutting_down_ = false;
  // Adaptive polling (rdma_transport.h): busy-poll until spin_until_ns_ (NowNs); traffic_ns_ is
  // the last sign of traffic, posted_ says Post queued frames since the last Poll.
  uint64_t poll_budget_ns_ = 0;
  uint64_t spin_until_ns_ = 0;
  uint64_t traffic_ns_ = 0;
  bool posted_ = false;
  bool polling_ = false;  // the last Poll left a NOP in the ring to come back (TEST_Polling)
  uint64_t posts_ = 0;    // Posts so far: the batch number of SendQueue::Reserve
  ConnId next_id_ = 1;
  std::vector<std::unique_ptr<Device>> devices_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::unique_ptr<Conn>> conns_;
  // Closed at an earlier Poll: freed at the first Poll after that once its QP is destroyed.
  std::vector<std::unique_ptr<Conn>> graveyard_;
  std::vector<ConnId> accepted_;                  // established, not yet reported
  Reaper reaper_;  // last: it finishes before the connections and devices go
};

// "10.0.0.2:7000" / "[fe80::1]:7000".
std::string SockaddrToString(const sockaddr* sa);
// IBV_MTU_* -> bytes (0 when unknown).
uint32_t MtuBytes(int mtu_enum);

}  // namespace blkmirror::transport::rdma
