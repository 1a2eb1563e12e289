// RDMA backend, setup half: rdma_cm (listen, connect, accept, disconnect), devices, PDs, MRs,
// CQs and QPs, teardown. The data path is in rdma_datapath.cc.
#include "transport/rdma/rdma_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "common/clock.h"
#include "transport/rdma/rdma_internal.h"

namespace blkmirror::transport {

Result<std::unique_ptr<Transport>> CreateRdmaTransport(const TransportContext& context) {
  RdmaOptions options;
  options.source_address = context.options.source_address;
  if (const char* env = std::getenv("BLKMIRROR_RDMA_POLL_US"); env != nullptr && *env != '\0') {
    std::string_view text(env);
    uint32_t us = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), us);
    if (ec != std::errc() || end != text.data() + text.size() || us > 1'000'000) {
      return Status::Invalid(
          "rdma transport: BLKMIRROR_RDMA_POLL_US={} is not a number of microseconds in "
          "0..1000000 (the busy-poll budget; unset it for the default, {} us)",
          text, kDefaultRdmaPollBudget.count());
    }
    options.poll_budget = std::chrono::microseconds(us);
  }
  return CreateRdmaTransport(context, options);
}

Result<std::unique_ptr<Transport>> CreateRdmaTransport(const TransportContext& context,
                                                       const RdmaOptions& options) {
  if (context.ring == nullptr) return Status::Invalid("rdma transport: no io_uring ring given");
  if (options.slots_per_connection < 1 || options.slots_per_connection > rdma::kMaxSlots) {
    return Status::Invalid("rdma transport: {} slots per connection is outside 1..{}",
                           options.slots_per_connection, rdma::kMaxSlots);
  }
  if (options.poll_budget.count() < 0) {
    return Status::Invalid("rdma transport: a negative busy-poll budget ({} us)",
                           options.poll_budget.count());
  }
  rdma_event_channel* channel = rdma_create_event_channel();
  if (channel == nullptr) {
    int err = errno;
    return Status::Error(
        ErrorCode::kUnavailable,
        fmt::format("RDMA is not available here: rdma_create_event_channel: {} (no RDMA device "
                    "or the rdma_ucm module is not loaded; for soft-RoCE: modprobe rdma_rxe && "
                    "rdma link add rxe0 type rxe netdev <interface>)",
                    std::strerror(err)));
  }
  rdma::EventChannel events(channel);
  int flags = fcntl(channel->fd, F_GETFL);
  if (flags < 0 || fcntl(channel->fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return Status::Errno(errno, "rdma transport: making the rdma_cm event channel non-blocking");
  }
  return std::unique_ptr<Transport>(
      std::make_unique<rdma::RdmaTransport>(context, options, std::move(events)));
}

namespace rdma {
namespace {

using Clock = std::chrono::steady_clock;

// A CM event, copied out so it can be acked before it is handled (destroying an id waits for
// its events to be acked, and the private data dies with the ack).
struct CmEvent {
  rdma_cm_event_type type = RDMA_CM_EVENT_ADDR_RESOLVED;
  rdma_cm_id* id = nullptr;
  rdma_cm_id* listen_id = nullptr;
  int status = 0;
  std::array<std::byte, 256> pdata{};
  size_t pdata_len = 0;
};

CmEvent CopyAndAck(rdma_cm_event* ev) {
  CmEvent e;
  e.type = ev->event;
  e.id = ev->id;
  e.listen_id = ev->listen_id;
  e.status = ev->status;
  if (ev->param.conn.private_data != nullptr) {
    e.pdata_len = std::min<size_t>(ev->param.conn.private_data_len, e.pdata.size());
    std::memcpy(e.pdata.data(), ev->param.conn.private_data, e.pdata_len);
  }
  rdma_ack_cm_event(ev);
  return e;
}

// Waits for the next event of a setup channel (blocking, bounded by `deadline`).
Result<CmEvent> WaitEvent(rdma_event_channel* channel, Clock::time_point deadline,
                          std::string_view step) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return Status::Error(ErrorCode::kTimeout, fmt::format("timed out waiting for {}", step));
    }
    pollfd pfd{channel->fd, POLLIN, 0};
    int n = poll(&pfd, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::Errno(errno, "poll on the rdma_cm event channel");
    if (n == 0) continue;  // the deadline check above reports it
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(channel, &ev) != 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return Status::Errno(errno, "rdma_get_cm_event");
    }
    return CopyAndAck(ev);
  }
}

Result<sockaddr_storage> ResolveHost(const std::string& host, uint16_t port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* res = nullptr;
  std::string port_text = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints, &res);
  if (rc != 0) {
    return Status::Error(ErrorCode::kNotFound,
                         fmt::format("cannot resolve host '{}': {}", host, gai_strerror(rc)));
  }
  sockaddr_storage out{};
  std::memcpy(&out, res->ai_addr, std::min<size_t>(res->ai_addrlen, sizeof(out)));
  freeaddrinfo(res);
  return out;
}

std::string GidToString(const ibv_gid& gid) {
  char text[INET6_ADDRSTRLEN] = "?";
  inet_ntop(AF_INET6, gid.raw, text, sizeof(text));
  return text;
}

std::string_view GidTypeName(uint32_t type) {
  switch (type) {
    case IBV_GID_TYPE_IB:
      return "IB";
    case IBV_GID_TYPE_ROCE_V1:
      return "RoCE v1";
    case IBV_GID_TYPE_ROCE_V2:
      return "RoCE v2";
    default:
      return "?";
  }
}

uint32_t PortActiveMtu(ibv_context* ctx, uint8_t port) {
  ibv_port_attr attr{};
  if (ctx == nullptr || ibv_query_port(ctx, port, &attr) != 0) return 0;
  return MtuBytes(attr.active_mtu);
}

// "device rxe0 port 1, GID ::ffff:10.0.0.1 (index 1, RoCE v2), path MTU 1024 (port MTU 1024)":
// what the rdma_cm route of `id` uses, for error messages.
std::string DescribePath(rdma_cm_id* id) {
  if (id == nullptr || id->verbs == nullptr) return "no RDMA device";
  std::string text = fmt::format("device {} port {}", ibv_get_device_name(id->verbs->device),
                                 static_cast<int>(id->port_num));
  const ibv_gid* sgid = nullptr;
  int path_mtu = 0;
  if (id->route.num_paths > 0 && id->route.path_rec != nullptr) {
    sgid = &id->route.path_rec[0].sgid;
    path_mtu = id->route.path_rec[0].mtu;
  } else {
    sgid = &id->route.addr.addr.ibaddr.sgid;
  }
  std::string gid_index = "not in the GID table";
  std::array<ibv_gid_entry, 256> table{};
  ssize_t n = ibv_query_gid_table(id->verbs, table.data(), table.size(), 0);
  for (ssize_t i = 0; i < n; ++i) {
    const ibv_gid_entry& g = table[static_cast<size_t>(i)];
    if (g.port_num != id->port_num || std::memcmp(g.gid.raw, sgid->raw, 16) != 0) continue;
    gid_index = fmt::format("index {}, {}", g.gid_index, GidTypeName(g.gid_type));
    if (g.gid_type == IBV_GID_TYPE_ROCE_V2) break;  // rdma_cm prefers RoCE v2
  }
  text += fmt::format(", GID {} ({})", GidToString(*sgid), gid_index);
  uint32_t port_mtu = PortActiveMtu(id->verbs, id->port_num);
  if (path_mtu != 0) text += fmt::format(", path MTU {}", MtuBytes(path_mtu));
  if (port_mtu != 0) text += fmt::format(" (port MTU {})", port_mtu);
  return text;
}

std::string_view RejectText(int status) {
  // IB CM REJ reasons (IBTA 12.6.7.2); rdma_cm passes them in RDMA_CM_EVENT_REJECTED.
  switch (status) {
    case 1:
      return "no QP available at the peer";
    case 3:
      return "the peer has no resources";
    case 8:
      return "nothing listens on that port over RDMA (is `blkmirror serve` running there with "
             "--transport rdma or auto?)";
    case 12:
      return "invalid GID: the peer cannot use the source GID (RoCE v1/v2 or address mismatch)";
    case 26:
      return "invalid MTU: the path MTU is not supported by the peer's port";
    case 28:
      return "refused by the peer";
    default:
      return "rejected";
  }
}

std::string AddressHint(int err, const std::string& host) {
  switch (err) {
    case ENODEV:
      return fmt::format(
          " (no RDMA device on the route to {}: no RoCE/IB GID for the route's "
          "source address; check `rdma link` and `ibv_devinfo -v`, and that the "
          "interface the route uses has an RDMA device)",
          host);
    case EADDRNOTAVAIL:
      return " (the source address is not configured on any interface)";
    case ETIMEDOUT:
      return " (no answer to address resolution: is the peer up and on the same network?)";
    case ENETUNREACH:
    case EHOSTUNREACH:
      return fmt::format(" (no route to {})", host);
    default:
      return "";
  }
}

// Peer-supplied values checked against what this side can use.
Status CheckPeerInfo(const ConnectInfo& info, bool expect_slots) {
  if (info.rq_depth < 2 || info.rq_depth > 65536) {
    return Status::Protocol("peer posted {} receives (expected 2..65536)", info.rq_depth);
  }
  if (info.recv_size < kRecvBufSize) {
    return Status::Protocol("peer's receive buffers hold {} bytes, a control frame needs {}",
                            info.recv_size, kRecvBufSize);
  }
  if (!expect_slots) return Status::Ok();
  // The region's rkey and base come later (kCreditRegion), checked then.
  if (info.slot_rkey != 0 || info.slot_base != 0 || info.slot_count == 0 || info.max_slots == 0 ||
      info.max_slots > kMaxSlots || info.slot_size < proto::kHeaderSize) {
    return Status::Protocol(
        "peer advertised an unusable slot region (rkey 0x{:x}, base 0x{:x}, {} x {} bytes, {} "
        "slots)",
        info.slot_rkey, info.slot_base, info.slot_count, info.slot_size, info.max_slots);
  }
  return Status::Ok();
}

}  // namespace

// ---- Small helpers ------------------------------------------------------------------------

void CmIdDeleter::operator()(rdma_cm_id* id) const {
  if (id->qp != nullptr) rdma_destroy_qp(id);
  rdma_destroy_id(id);
}

Status QueuePair::Create(rdma_cm_id* id, ibv_pd* pd, ibv_qp_init_attr& attr) {
  Reset();
  if (rdma_create_qp(id, pd, &attr) != 0) return Status::Errno(errno, "rdma_create_qp");
  id_ = id;
  return Status::Ok();
}

Reaper::Reaper() : thread_([this] { Run(); }) {}

Reaper::~Reaper() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Reaper::Destroy(rdma_cm_id* id, ConnId conn) {
  {
    std::lock_guard lock(mu_);
    todo_.emplace_back(id, conn);
  }
  cv_.notify_all();
}

std::vector<ConnId> Reaper::Done() {
  std::lock_guard lock(mu_);
  return std::exchange(done_, {});
}

void Reaper::WaitIdle() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return todo_.empty() && !busy_; });
}

void Reaper::Run() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || !todo_.empty(); });
    if (todo_.empty()) return;  // stop_, and nothing left
    auto [id, conn] = todo_.front();
    todo_.pop_front();
    busy_ = true;
    lock.unlock();
    const uint64_t start = NowNs();
    rdma_destroy_qp(id);
    const uint64_t took_ms = (NowNs() - start) / 1'000'000;
    if (took_ms >= 1000) {
      spdlog::info("rdma: destroying the queue pair of a lost connection took {} ms (on the "
                   "reaper thread; the loop went on)",
                   took_ms);
    }
    lock.lock();
    busy_ = false;
    done_.push_back(conn);
    cv_.notify_all();
  }
}

void QueuePair::Reset() {
  if (id_ != nullptr && id_->qp != nullptr) rdma_destroy_qp(id_);
  id_ = nullptr;
}

MappedArea::~MappedArea() {
  if (data_ != nullptr) munmap(data_, size_);
}

Status MappedArea::Map(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Status::Errno(errno, fmt::format("mmap of {} bytes", bytes));
  data_ = static_cast<std::byte*>(p);
  size_ = bytes;
  return Status::Ok();
}

std::array<std::byte, kConnectInfoSize> EncodeConnectInfo(const ConnectInfo& info) {
  std::array<std::byte, kConnectInfoSize> out{};
  std::byte* p = out.data();
  StoreLe(p + 0, info.magic);
  StoreLe(p + 4, info.version);
  StoreLe(p + 6, info.reject);
  StoreLe(p + 8, info.rq_depth);
  StoreLe(p + 12, info.recv_size);
  StoreLe(p + 16, info.mtu);
  StoreLe(p + 20, info.slot_rkey);
  StoreLe(p + 24, info.slot_base);
  StoreLe(p + 32, info.slot_size);
  StoreLe(p + 36, info.slot_count);
  StoreLe(p + 40, info.max_slots);
  StoreLe(p + 44, info.reserved);
  return out;
}

// The connection parameters both ends use (connect and accept), carrying `pdata`.
rdma_conn_param ConnParam(const std::array<std::byte, kConnectInfoSize>& pdata) {
  rdma_conn_param param{};
  param.private_data = pdata.data();
  param.private_data_len = static_cast<uint8_t>(pdata.size());
  param.responder_resources = 1;
  param.initiator_depth = 1;
  param.retry_count = 7;
  param.rnr_retry_count = 7;  // credits make RNR impossible; never turn a slip into an error
  return param;
}

Result<ConnectInfo> DecodeConnectInfo(const void* data, size_t len) {
  if (data == nullptr || len < kConnectInfoSize) {
    return Status::Protocol(
        "rdma_cm private data of {} bytes, expected {} (not a blkmirror "
        "peer?)",
        data == nullptr ? 0 : len, kConnectInfoSize);
  }
  const auto* p = static_cast<const std::byte*>(data);
  ConnectInfo info;
  info.magic = LoadLe<uint32_t>(p + 0);
  info.version = LoadLe<uint16_t>(p + 4);
  info.reject = LoadLe<uint16_t>(p + 6);
  info.rq_depth = LoadLe<uint32_t>(p + 8);
  info.recv_size = LoadLe<uint32_t>(p + 12);
  info.mtu = LoadLe<uint32_t>(p + 16);
  info.slot_rkey = LoadLe<uint32_t>(p + 20);
  info.slot_base = LoadLe<uint64_t>(p + 24);
  info.slot_size = LoadLe<uint32_t>(p + 32);
  info.slot_count = LoadLe<uint32_t>(p + 36);
  info.max_slots = LoadLe<uint32_t>(p + 40);
  info.reserved = LoadLe<uint32_t>(p + 44);
  if (info.magic != kConnectMagic) {
    return Status::Protocol(
        "rdma_cm private data has magic 0x{:08x}, expected 0x{:08x} (not a "
        "blkmirror peer?)",
        info.magic, kConnectMagic);
  }
  if (info.version != kWireVersion) {
    return Status::Protocol("RDMA wire version {} from the peer, this build speaks {}",
                            info.version, kWireVersion);
  }
  return info;
}

std::string SockaddrToString(const sockaddr* sa) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (sa == nullptr) return "unknown";
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    return fmt::format("{}:{}", host, ntohs(in->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    return fmt::format("[{}]:{}", host, ntohs(in6->sin6_port));
  }
  return "unknown";
}

uint32_t MtuBytes(int mtu_enum) {
  switch (mtu_enum) {
    case IBV_MTU_256:
      return 256;
    case IBV_MTU_512:
      return 512;
    case IBV_MTU_1024:
      return 1024;
    case IBV_MTU_2048:
      return 2048;
    case IBV_MTU_4096:
      return 4096;
    default:
      return 0;
  }
}

// ---- The transport --------------------------------------------------------------------------

RdmaTransport::RdmaTransport(const TransportContext& context, const RdmaOptions& options,
                             EventChannel events)
    : ring_(*context.ring),
      options_(context.options),
      rdma_options_(options),
      events_(std::move(events)) {
  cm_op_.handler = this;
  cm_op_.kind = Op::Kind::kCmEvents;
  wake_op_.handler = this;
  wake_op_.kind = Op::Kind::kWake;
  if (options_.send_queue_depth == 0) options_.send_queue_depth = 1;
  poll_budget_ns_ = ToNs(rdma_options_.poll_budget);
}

RdmaTransport::~RdmaTransport() {
  shutting_down_ = true;
  for (auto& c : conns_) {
    if (!c->closing) {
      c->closing = true;
      c->local_close = true;
    }
    Teardown(*c);
  }
  // Every QP destroyed before the buffers they could touch go back, and before the CQs, MRs
  // and devices they use go.
  reaper_.WaitIdle();
  CollectRemains();
  // POLL_ADDs in the ring point at our Ops: cancel them and wait for every one to complete.
  if (cm_armed_) io_uring_prep_cancel(ring_.GetSqe(nullptr), &cm_op_, 0);
  for (auto& d : devices_) {
    if (d->poll_armed) io_uring_prep_cancel(ring_.GetSqe(nullptr), &d->op, 0);
  }
  auto busy = [&] {
    if (cm_armed_ || wake_pending_) return true;
    return std::any_of(devices_.begin(), devices_.end(), [](auto& d) { return d->poll_armed; });
  };
  for (int i = 0; i < 100 && busy(); ++i) {
    if (!ring_.Wait(std::chrono::milliseconds(20)).ok()) break;
  }
  if (busy()) spdlog::error("rdma: ring operations still pending at destruction");
  graveyard_.clear();
  conns_.clear();
  listeners_.clear();
  devices_.clear();
}

Status RdmaTransport::Register(io::BufferPool& pool) {
  if (pool_ != nullptr) return Status::Invalid("rdma transport: a pool is already registered");
  pool_ = &pool;
  return Status::Ok();
}

Result<Device*> RdmaTransport::GetDevice(ibv_context* ctx) {
  if (ctx == nullptr) return Status::Error(ErrorCode::kUnavailable, "rdma_cm gave no device");
  for (auto& d : devices_) {
    if (d->ctx == ctx) return d.get();
  }
  auto d = std::make_unique<Device>();
  d->ctx = ctx;
  d->name = ibv_get_device_name(ctx->device);
  d->pd.reset(ibv_alloc_pd(ctx));
  if (!d->pd) return Status::Errno(errno, fmt::format("ibv_alloc_pd on {}", d->name));
  d->channel.reset(ibv_create_comp_channel(ctx));
  if (!d->channel)
    return Status::Errno(errno, fmt::format("ibv_create_comp_channel on {}", d->name));
  int flags = fcntl(d->channel->fd, F_GETFL);
  if (flags < 0 || fcntl(d->channel->fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return Status::Errno(errno,
                         fmt::format("making the completion channel of {} non-blocking", d->name));
  }
  d->op.handler = this;
  d->op.kind = Op::Kind::kCqEvents;
  d->op.device = d.get();
  Device* raw = d.get();
  devices_.push_back(std::move(d));
  ArmDevicePoll(*raw);
  return raw;
}

Result<ibv_mr*> RdmaTransport::PoolMr(Device& device, bool remote_write) {
  MemoryRegion& mr = remote_write ? device.pool_mr_remote : device.pool_mr_local;
  if (mr) return mr.get();
  int access = IBV_ACCESS_LOCAL_WRITE | (remote_write ? IBV_ACCESS_REMOTE_WRITE : 0);
  mr.reset(ibv_reg_mr(device.pd.get(), pool_->base(), pool_->region_bytes(), access));
  if (!mr) {
    int err = errno;
    return Status::Errno(err, fmt::format("ibv_reg_mr of the {} MiB buffer pool on {}{}",
                                          pool_->region_bytes() >> 20, device.name,
                                          err == ENOMEM || err == EPERM
                                              ? " (raise the locked-memory limit: ulimit -l, "
                                                "LimitMEMLOCK=)"
                                              : ""));
  }
  return mr.get();
}

// CQ, QP, the connection's own buffers, and every receive posted (before connect/accept).
Status RdmaTransport::SetUpQp(Conn& c) {
  Device& d = *c.device;
  const uint32_t nslots = static_cast<uint32_t>(c.slots.size());
  c.rq_depth = kCtrlRecvs + nslots;
  size_t bytes =
      size_t{c.rq_depth} * kRecvBufSize + size_t{kSendDepth} * kSendSlotSize + kCtrlRingBytes;
  RETURN_IF_ERROR(c.area.Map(bytes));
  c.area_mr.reset(ibv_reg_mr(d.pd.get(), c.area.data(), bytes, IBV_ACCESS_LOCAL_WRITE));
  if (!c.area_mr) return Status::Errno(errno, fmt::format("ibv_reg_mr on {}", d.name));
  c.cq.reset(
      ibv_create_cq(d.ctx, static_cast<int>(kSendDepth + c.rq_depth), &c, d.channel.get(), 0));
  if (!c.cq) return Status::Errno(errno, fmt::format("ibv_create_cq on {}", d.name));
  ibv_qp_init_attr attr{};
  attr.qp_context = &c;
  attr.send_cq = c.cq.get();
  attr.recv_cq = c.cq.get();
  attr.qp_type = IBV_QPT_RC;
  attr.sq_sig_all = 0;
  attr.cap.max_send_wr = kSendDepth;
  attr.cap.max_recv_wr = c.rq_depth;
  attr.cap.max_send_sge = 2;
  attr.cap.max_recv_sge = 1;
  RETURN_IF_ERROR(c.qp.Create(c.cm_id.get(), d.pd.get(), attr).Context(d.name));

  c.sq.Init(options_.send_queue_depth, std::span(c.ctrl_ring(), kCtrlRingBytes));
  c.rwr.resize(c.rq_depth);
  c.rsge.resize(c.rq_depth);
  c.repost.reserve(c.rq_depth);
  c.lent.reserve(c.rq_depth);
  c.ready.resize(c.rq_depth);
  for (uint32_t i = 0; i < c.rq_depth; ++i) c.repost.push_back(i);
  PostReceives(c);
  if (c.closing) return c.close_reason;
  c.rx_owed = 0;  // the first receives are the peer's initial credits, not returned ones
  if (ibv_req_notify_cq(c.cq.get(), 0) != 0) return Status::Errno(errno, "ibv_req_notify_cq");
  c.cq_armed = true;
  return Status::Ok();
}

Result<Endpoint> RdmaTransport::Listen(const Endpoint& local) {
  if (pool_ == nullptr) return Status::Invalid("rdma transport: Register a pool before Listen");
  auto fail = [&](int err, std::string_view what, std::string hint = "") {
    return Status::Error(static_cast<ErrorCode>(err),
                         fmt::format("cannot listen on {} over RDMA: {}: {}{}", local.ToString(),
                                     what, std::strerror(err), hint));
  };
  ASSIGN_OR_RETURN(sockaddr_storage addr, ResolveHost(local.host, local.port, /*passive=*/true));
  auto listener = std::make_unique<Listener>();
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(events_.get(), &id, nullptr, RDMA_PS_TCP) != 0) {
    return fail(errno, "rdma_create_id");
  }
  listener->id.reset(id);
  int one = 1;
  rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_REUSEADDR, &one, sizeof(one));
  if (rdma_bind_addr(id, reinterpret_cast<sockaddr*>(&addr)) != 0) {
    int err = errno;
    return fail(err, "rdma_bind_addr",
                err == ENODEV || err == EADDRNOTAVAIL
                    ? fmt::format(" (no RDMA device has the address {}: check `rdma link` and "
                                  "`ibv_devinfo -v`)",
                                  local.host)
                    : "");
  }
  if (rdma_listen(id, 128) != 0) return fail(errno, "rdma_listen");
  listener->local = Endpoint{local.host, ntohs(rdma_get_src_port(id))};
  Endpoint bound = listener->local;
  listeners_.push_back(std::move(listener));
  ArmCmPoll();
  spdlog::debug(
      "rdma: listening on {}{}", bound.ToString(),
      id->verbs != nullptr ? fmt::format(" ({})", ibv_get_device_name(id->verbs->device)) : "");
  return bound;
}

Result<ConnId> RdmaTransport::Connect(const Endpoint& peer, std::chrono::milliseconds timeout) {
  if (pool_ == nullptr) return Status::Invalid("rdma transport: Register a pool before Connect");
  const std::string name = peer.ToString();
  const auto deadline = Clock::now() + timeout;
  auto left_ms = [&] {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return static_cast<int>(std::clamp<int64_t>(ms.count(), 1, INT32_MAX));
  };
  auto fail = [&](const Status& s) {
    return Status::Error(s.code(), fmt::format("cannot reach {} over RDMA: {}", name, s.message()));
  };
  auto errno_fail = [&](int err, std::string_view what, std::string hint = "") {
    return Status::Error(
        static_cast<ErrorCode>(err),
        fmt::format("cannot reach {} over RDMA: {}: {}{}", name, what, std::strerror(err), hint));
  };
  auto dst = ResolveHost(peer.host, peer.port, /*passive=*/false);
  if (!dst.ok()) return fail(dst.status());
  std::optional<sockaddr_storage> src;
  if (!rdma_options_.source_address.empty()) {
    auto s = ResolveHost(rdma_options_.source_address, 0, /*passive=*/false);
    if (!s.ok()) return fail(s.status().Context("source address"));
    src = *s;
  }

  // Setup events go to a channel of their own (so Connect does not consume the listener's or
  // other connections' events); the id moves to the transport's channel once established.
  EventChannel setup(rdma_create_event_channel());
  if (!setup) return errno_fail(errno, "rdma_create_event_channel");
  auto conn = std::make_unique<Conn>();  // destroyed before `setup` on failure
  conn->id = next_id_++;
  conn->role = Role::kConnecting;
  conn->peer = name;
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(setup.get(), &id, conn.get(), RDMA_PS_TCP) != 0) {
    return errno_fail(errno, "rdma_create_id");
  }
  conn->cm_id.reset(id);

  // Address, then route (rdma_cm picks the device, port, RoCE v2 GID and path MTU).
  // Address resolution is tried with short, growing timeouts: when the ARP answer comes back
  // within the rdma_resolve_addr call itself (a peer on the same host, a veth pair), the kernel
  // misses the neighbour update and sleeps until the request's timeout, while a second try
  // finds the neighbour resolved at once.
  Result<CmEvent> ev = Status();
  for (int attempt_ms = 250;; attempt_ms = std::min(attempt_ms * 2, 4000)) {
    int ms = std::min(attempt_ms, left_ms());
    if (rdma_resolve_addr(id, src ? reinterpret_cast<sockaddr*>(&*src) : nullptr,
                          reinterpret_cast<sockaddr*>(&*dst), ms) != 0) {
      int err = errno;
      return errno_fail(err, "rdma_resolve_addr", AddressHint(err, peer.host));
    }
    ev = WaitEvent(setup.get(), deadline, "address resolution");
    if (!ev.ok()) return fail(ev.status());
    if (ev->type == RDMA_CM_EVENT_ADDR_RESOLVED) break;
    int err = ev->status < 0 ? -ev->status : EHOSTUNREACH;
    if (err == ETIMEDOUT && left_ms() > 1) continue;
    return errno_fail(err, fmt::format("rdma_resolve_addr ({})", rdma_event_str(ev->type)),
                      AddressHint(err, peer.host));
  }
  if (rdma_resolve_route(id, left_ms()) != 0) {
    int err = errno;
    return errno_fail(err, "rdma_resolve_route",
                      fmt::format(" ({}; no usable RoCE GID or route for it?)", DescribePath(id)));
  }
  ev = WaitEvent(setup.get(), deadline, "route resolution");
  if (!ev.ok()) return fail(ev.status().Context(DescribePath(id)));
  if (ev->type != RDMA_CM_EVENT_ROUTE_RESOLVED) {
    int err = ev->status < 0 ? -ev->status : EHOSTUNREACH;
    return errno_fail(
        err, fmt::format("rdma_resolve_route ({})", rdma_event_str(ev->type)),
        fmt::format(" ({}: no usable RoCE GID or path for this route?)", DescribePath(id)));
  }
  conn->path = DescribePath(id);
  const int path_mtu_enum = id->route.num_paths > 0 ? id->route.path_rec[0].mtu : 0;
  const uint32_t path_mtu = MtuBytes(path_mtu_enum);

  // Device resources, the QP, and every receive posted before the request goes out.
  auto device = GetDevice(id->verbs);
  if (!device.ok()) return fail(device.status().Context(conn->path));
  conn->device = *device;
  auto mr = PoolMr(**device, /*remote_write=*/false);
  if (!mr.ok()) return fail(mr.status());
  conn->pool_lkey = (*mr)->lkey;
  Status set_up = SetUpQp(*conn);
  if (!set_up.ok()) return fail(set_up.Context(conn->path));

  ConnectInfo mine;
  mine.rq_depth = conn->rq_depth;
  mine.recv_size = kRecvBufSize;
  mine.mtu = path_mtu;
  auto pdata = EncodeConnectInfo(mine);
  rdma_conn_param param = ConnParam(pdata);
  if (rdma_connect(id, &param) != 0)
    return errno_fail(errno, "rdma_connect", " (" + conn->path + ")");
  ev = WaitEvent(setup.get(), deadline, "the peer to accept (is its event loop running?)");
  if (!ev.ok()) return fail(ev.status().Context(conn->path));
  switch (ev->type) {
    case RDMA_CM_EVENT_ESTABLISHED:
      break;
    case RDMA_CM_EVENT_REJECTED: {
      auto info = DecodeConnectInfo(ev->pdata_len > 0 ? ev->pdata.data() : nullptr, ev->pdata_len);
      if (info.ok() && info->reject == static_cast<uint16_t>(RejectReason::kMtu)) {
        return Status::Error(
            ErrorCode::kRefused,
            fmt::format("cannot reach {} over RDMA: path MTU mismatch: this side ({}) sends "
                        "{}-byte packets, the peer's port takes at most {}: give both ends' "
                        "interfaces the same MTU (ip link set dev IF mtu N)",
                        name, conn->path, path_mtu, info->mtu));
      }
      std::string why =
          info.ok() && info->reject != 0
              ? fmt::format("refused by the peer (reason {}: see its log)", info->reject)
              : std::string(RejectText(ev->status));
      return Status::Error(
          ev->status == 8 ? static_cast<ErrorCode>(ECONNREFUSED) : ErrorCode::kRefused,
          fmt::format("cannot reach {} over RDMA: connection rejected (IB CM reason {}): {} "
                      "[{}]",
                      name, ev->status, why, conn->path));
    }
    case RDMA_CM_EVENT_UNREACHABLE:
      return Status::Error(static_cast<ErrorCode>(ETIMEDOUT),
                           fmt::format("cannot reach {} over RDMA: peer unreachable (no answer to "
                                       "the connection request: peer down, firewall on UDP "
                                       "4791, or GID/MTU mismatch) [{}]",
                                       name, conn->path));
    default: {
      int err = ev->status < 0 ? -ev->status : ECONNABORTED;
      return errno_fail(err, fmt::format("connection failed ({})", rdma_event_str(ev->type)),
                        " [" + conn->path + "]");
    }
  }
  auto info = DecodeConnectInfo(ev->pdata_len > 0 ? ev->pdata.data() : nullptr, ev->pdata_len);
  Status checked = info.ok() ? CheckPeerInfo(*info, /*expect_slots=*/true) : info.status();
  if (!checked.ok()) return fail(checked);
  if (info->mtu != 0 && path_mtu != 0 && path_mtu > info->mtu) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("cannot reach {} over RDMA: path MTU mismatch: this side ({}) "
                                     "sends {}-byte packets, the peer's port takes at most {}: "
                                     "give both ends' interfaces the same MTU",
                                     name, conn->path, path_mtu, info->mtu));
  }
  if (rdma_migrate_id(id, events_.get()) != 0) return errno_fail(errno, "rdma_migrate_id");
  conn->peer_info = *info;
  conn->tx_credits = info->rq_depth;
  conn->remote.resize(info->max_slots);
  conn->remote_held.assign(info->max_slots, 0);
  conn->established = true;
  conn->announced = true;
  Conn* raw = conn.get();
  conns_.push_back(std::move(conn));
  ArmCmPoll();
  spdlog::debug("rdma: connected to {} over {}", name, raw->path);
  return raw->id;
}

void RdmaTransport::HandleCmEvents() {
  for (;;) {
    rdma_cm_event* raw = nullptr;
    if (rdma_get_cm_event(events_.get(), &raw) != 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        spdlog::warn("rdma: rdma_get_cm_event: {}", std::strerror(errno));
      }
      return;
    }
    CmEvent ev = CopyAndAck(raw);
    if (ev.type == RDMA_CM_EVENT_CONNECT_REQUEST) {
      OnConnectRequest(ev.id, ev.pdata.data(), ev.pdata_len);
      continue;
    }
    auto* conn = ev.id != nullptr ? static_cast<Conn*>(ev.id->context) : nullptr;
    if (conn == nullptr) continue;  // a listener's event (e.g. DEVICE_REMOVAL)
    switch (ev.type) {
      case RDMA_CM_EVENT_ESTABLISHED:
        if (conn->role == Role::kAccepted && !conn->closing && !conn->established) {
          conn->established = true;
          accepted_.push_back(conn->id);
        }
        break;
      // Each case in its own block with named temporaries: clang 14 mis-scopes the destructor
      // of a temporary in a consteval-format call inside a switch (llvm-project#60249).
      case RDMA_CM_EVENT_DISCONNECTED: {
        Status why = Status::Error(ErrorCode::kClosed,
                                   fmt::format("{} closed the connection", conn->peer));
        Fail(*conn, why);
        break;
      }
      case RDMA_CM_EVENT_DEVICE_REMOVAL: {
        Status why = Status::Error(static_cast<ErrorCode>(ENODEV),
                                   fmt::format("connection to {}: RDMA device {} was removed",
                                               conn->peer, conn->device->name));
        Fail(*conn, why);
        break;
      }
      case RDMA_CM_EVENT_REJECTED:
      case RDMA_CM_EVENT_CONNECT_ERROR:
      case RDMA_CM_EVENT_UNREACHABLE: {
        Status why = Status::Error(ErrorCode::kClosed,
                                   fmt::format("connection from {} failed: {} (status {})",
                                               conn->peer, rdma_event_str(ev.type), ev.status));
        Fail(*conn, why);
        break;
      }
      default:
        break;  // TIMEWAIT_EXIT, ADDR_CHANGE, ...
    }
  }
}

void RdmaTransport::OnConnectRequest(rdma_cm_id* id, const std::byte* pdata, size_t pdata_len) {
  auto conn = std::make_unique<Conn>();
  conn->id = next_id_++;
  conn->role = Role::kAccepted;
  conn->cm_id.reset(id);  // from here on, the id is destroyed with `conn` unless kept
  id->context = conn.get();
  conn->peer = SockaddrToString(rdma_get_peer_addr(id));
  conn->path = DescribePath(id);
  auto reject = [&](RejectReason reason, uint32_t mtu, const Status& why) {
    spdlog::warn("rdma: refusing the connection from {} ({}): {}", conn->peer, conn->path,
                 why.message());
    ConnectInfo info;
    info.reject = static_cast<uint16_t>(reason);
    info.mtu = mtu;
    auto bytes = EncodeConnectInfo(info);
    conn->qp.Reset();
    rdma_reject(id, bytes.data(), static_cast<uint8_t>(bytes.size()));
  };
  auto info = DecodeConnectInfo(pdata_len > 0 ? pdata : nullptr, pdata_len);
  Status checked = info.ok() ? CheckPeerInfo(*info, /*expect_slots=*/false) : info.status();
  if (!checked.ok()) return reject(RejectReason::kBadRequest, 0, checked);
  const uint32_t port_mtu = PortActiveMtu(id->verbs, id->port_num);
  if (info->mtu != 0 && port_mtu != 0 && info->mtu > port_mtu) {
    return reject(RejectReason::kMtu, port_mtu,
                  Status::Error(ErrorCode::kRefused,
                                fmt::format("path MTU mismatch: the peer sends {}-byte packets, "
                                            "this port takes at most {}: give both ends' "
                                            "interfaces the same MTU",
                                            info->mtu, port_mtu)));
  }
  auto device = GetDevice(id->verbs);
  if (!device.ok()) return reject(RejectReason::kResources, port_mtu, device.status());
  conn->device = *device;
  auto mr = PoolMr(**device, /*remote_write=*/true);
  if (!mr.ok()) return reject(RejectReason::kResources, port_mtu, mr.status());
  conn->pool_lkey = (*mr)->lkey;

  // Slots: pool buffers held for the peer's Data frames. None yet: they (and the key to the
  // pool's memory) are granted when the engine trusts the peer (Trust).
  const uint32_t target = rdma_options_.slots_per_connection;
  conn->slots.resize(target);
  conn->idle_slots.reserve(target);
  conn->grants_pending.reserve(target);
  for (uint32_t s = target; s-- > 0;) conn->idle_slots.push_back(s);
  conn->slot_rkey = (*mr)->rkey;
  Status set_up = SetUpQp(*conn);
  if (!set_up.ok()) return reject(RejectReason::kResources, port_mtu, set_up);
  conn->peer_info = *info;
  conn->tx_credits = info->rq_depth;

  ConnectInfo mine;
  mine.rq_depth = conn->rq_depth;
  mine.recv_size = kRecvBufSize;
  mine.mtu = port_mtu;
  // slot_rkey and slot_base stay 0 here: they go to the peer only once it is trusted.
  mine.slot_size = static_cast<uint32_t>(pool_->buffer_size());
  mine.slot_count = static_cast<uint32_t>(pool_->count());
  mine.max_slots = target;
  auto bytes = EncodeConnectInfo(mine);
  rdma_conn_param param = ConnParam(bytes);
  if (rdma_accept(id, &param) != 0) {
    int err = errno;
    spdlog::warn("rdma: accepting {} failed: rdma_accept: {} ({})", conn->peer, std::strerror(err),
                 conn->path);
    return;  // `conn` (QP, id, slots) goes away
  }
  spdlog::debug("rdma: accepted {} over {}", conn->peer, conn->path);
  conns_.push_back(std::move(conn));
}

// Takes more slot buffers when the connection got fewer than it wanted and the pool has
// plenty again (more than half free).
void RdmaTransport::TopUpSlots(Conn& c) {
  if (!c.trusted) return;
  while (!c.idle_slots.empty() && pool_->available() > pool_->count() / 2) {
    auto buffer = pool_->TryGet();
    if (!buffer) return;
    GrantSlot(c, std::move(*buffer));
  }
}

// `buffer` becomes an idle slot of `c`; the grant goes out in the next credit message.
void RdmaTransport::GrantSlot(Conn& c, io::BufferRef buffer) {
  uint32_t s = c.idle_slots.back();
  c.idle_slots.pop_back();
  Slot& slot = c.slots[s];
  slot.buffer = std::move(buffer);
  slot.granted = true;
  slot.announced = false;
  c.grants_pending.push_back(s);
}

void RdmaTransport::Trust(ConnId id) {
  Conn* c = Find(id);
  if (c == nullptr || c->closing || c->role != Role::kAccepted || c->trusted) return;
  c->trusted = true;
  // The first slots: at most half of what is free now; TopUpSlots adds more later while the
  // pool has plenty. The region (rkey, base) goes out with the first credit message that
  // carries grants.
  size_t take = std::min<size_t>(c->idle_slots.size(), (pool_->available() + 1) / 2);
  for (size_t i = 0; i < take; ++i) {
    auto buffer = pool_->TryGet();
    if (!buffer) break;
    GrantSlot(*c, std::move(*buffer));
  }
  if (c->grants_pending.empty()) {
    spdlog::warn("rdma: {}: the buffer pool is empty; Data frames wait until buffers free up",
                 c->peer);
  }
  RequestWake();
}

// Stops the QP for good: one last pass over the CQ (what completed still counts), then error
// state (rdma_disconnect, which also tells the peer) and destruction. Afterwards nothing can
// read or write this connection's buffers or slots.
void RdmaTransport::Teardown(Conn& c) {
  if (c.torn_down) return;
  c.torn_down = true;
  const bool has_qp = c.qp.get() != nullptr;
  if (has_qp) {
    DrainCq(c);
    rdma_disconnect(c.cm_id.get());  // error state; fails harmlessly when never connected
    c.qp_destroying = true;
    reaper_.Destroy(c.qp.Release(), c.id);
  }
  for (Slot& s : c.slots) {
    // The peer may have been writing into a granted slot: its buffer waits for the QP to go.
    if (s.buffer && has_qp) c.parked.push_back(std::move(s.buffer));
    s.buffer.Reset();
    s.granted = false;
    s.announced = false;
  }
  c.grants_pending.clear();
  c.remote_count = 0;
  c.repost.clear();
}

void RdmaTransport::CollectRemains() {
  for (ConnId id : reaper_.Done()) {
    for (auto* list : {&conns_, &graveyard_}) {
      for (auto& c : *list) {
        if (c->id != id) continue;
        c->qp_destroying = false;
        c->parked.clear();  // back to the pool: nothing can write into them now
      }
    }
  }
  std::erase_if(graveyard_, [](const auto& c) { return !c->qp_destroying; });
}

void RdmaTransport::Bury(Conn& c) {
  for (auto it = conns_.begin(); it != conns_.end(); ++it) {
    if (it->get() == &c) {
      graveyard_.push_back(std::move(*it));
      conns_.erase(it);
      return;
    }
  }
}

void RdmaTransport::ArmCmPoll() {
  if (cm_armed_ || shutting_down_) return;
  io_uring_prep_poll_add(ring_.GetSqe(&cm_op_), events_->fd, POLLIN);
  cm_armed_ = true;
}

void RdmaTransport::ArmDevicePoll(Device& d) {
  if (d.poll_armed || shutting_down_) return;
  io_uring_prep_poll_add(ring_.GetSqe(&d.op), d.channel->fd, POLLIN);
  d.poll_armed = true;
}

// The loop's next Ring::Submit/Wait completes a NOP, which brings us to OnCqe (credits go
// out) and the loop to its next Poll.
void RdmaTransport::RequestWake() {
  if (wake_pending_ || shutting_down_) return;
  io_uring_prep_nop(ring_.GetSqe(&wake_op_));
  wake_pending_ = true;
}

void RdmaTransport::OnCqe(io::RingOp* ring_op, int32_t res, uint32_t /*flags*/) {
  auto* op = static_cast<Op*>(ring_op);
  switch (op->kind) {
    case Op::Kind::kCmEvents:
      cm_armed_ = false;  // re-armed by Poll once it has read the events
      break;
    case Op::Kind::kCqEvents:
      op->device->poll_armed = false;
      if (res >= 0 || res == -EINTR) {
        OnCqEvents(*op->device);
        ArmDevicePoll(*op->device);
      }
      break;
    case Op::Kind::kWake:
      wake_pending_ = false;
      if (!shutting_down_) {
        for (auto& c : conns_) Pump(*c);
      }
      break;
  }
}

void RdmaTransport::Close(ConnId id) {
  Conn* c = Find(id);
  if (c == nullptr || c->closing) return;
  c->local_close = true;
  Fail(*c, Status());
  Teardown(*c);
}

std::string RdmaTransport::PeerName(ConnId id) const {
  Conn* c = Find(id);
  return c != nullptr ? c->peer : fmt::format("closed connection #{}", id);
}

void RdmaTransport::TEST_CorruptNextDataHeader(ConnId id) {
  if (Conn* c = Find(id)) c->corrupt_next_header = true;
}

}  // namespace rdma
}  // namespace blkmirror::transport
