// DPDK backend, setup half: the port, the control connections over TCP, the TransportHello
// exchange, teardown.
#include <sys/random.h>

#include <charconv>
#include <cstring>

#include <rte_mbuf.h>
#include <spdlog/spdlog.h>

#include "transport/dpdk/dpdk_internal.h"
#include "transport/tcp/tcp_transport.h"

namespace blkmirror::transport {

Result<std::unique_ptr<Transport>> CreateDpdkTransport(const TransportContext& context) {
  if (context.ring == nullptr) return Status::Invalid("dpdk transport: no io_uring ring given");
  if (context.options.dpdk_port.empty()) {
    return Status::Invalid("the dpdk transport needs a port: --dpdk-port memif:SOCKET, "
                           "af_packet:IFACE, af_xdp:IFACE or pci:ADDRESS");
  }
  dpdk::PacketFaults faults;
  if (!context.options.dpdk_test_faults.empty()) {
    ASSIGN_OR_RETURN(faults, dpdk::PacketFaults::Parse(context.options.dpdk_test_faults));
    spdlog::warn("TEST FAULT INJECTION ACTIVE on dpdk: received packets: {} (never use this in "
                 "production)",
                 context.options.dpdk_test_faults);
  }
  ASSIGN_OR_RETURN(auto tcp, CreateTcpTransport(context));
  return std::unique_ptr<Transport>(
      std::make_unique<dpdk::DpdkTransport>(context, std::move(tcp), faults));
}

namespace dpdk {
namespace {

uint64_t RandomSession() {
  uint64_t v = 0;
  while (v == 0) {
    if (getrandom(&v, sizeof(v), 0) != sizeof(v)) v = 0x9E3779B97F4A7C15ull ^ uint64_t(getpid());
  }
  return v;
}

}  // namespace

Result<PacketFaults> PacketFaults::Parse(std::string_view text) {
  PacketFaults f;
  std::string_view rest = text;
  while (!rest.empty()) {
    std::string_view item = rest.substr(0, rest.find(','));
    rest = item.size() < rest.size() ? rest.substr(item.size() + 1) : std::string_view();
    auto eq = item.find('=');
    std::string_view key = item.substr(0, eq);
    double* field = key == "drop" ? &f.drop : key == "dup" ? &f.dup : key == "reorder" ? &f.reorder
                    : key == "corrupt" ? &f.corrupt : nullptr;
    double v = -1;
    if (eq != std::string_view::npos) {
      std::string num(item.substr(eq + 1));
      char* end = nullptr;
      v = std::strtod(num.c_str(), &end);
      if (end == num.c_str() || *end != '\0') v = -1;
    }
    if (field == nullptr || v < 0 || v > 0.5) {
      return Status::Invalid("dpdk packet faults '{}': expected drop|dup|reorder|corrupt=RATE "
                             "(0 to 0.5), comma-separated, at '{}'",
                             text, item);
    }
    *field = v;
  }
  return f;
}

DpdkTransport::DpdkTransport(const TransportContext& context, std::unique_ptr<Transport> tcp,
                             PacketFaults faults)
    : ring_(*context.ring), options_(context.options), tcp_(std::move(tcp)), faults_(faults) {
  nop_op_.handler = timer_op_.handler = rx_op_.handler = this;
  nop_op_.kind = Op::Kind::kNop;
  timer_op_.kind = Op::Kind::kTimer;
  rx_op_.kind = Op::Kind::kRxEvent;
}

DpdkTransport::~DpdkTransport() {
  shutting_down_ = true;
  if (timer_inflight_) io_uring_prep_timeout_remove(ring_.GetSqe(nullptr), uint64_t(&timer_op_), 0);
  if (rx_inflight_) io_uring_prep_poll_remove(ring_.GetSqe(nullptr), uint64_t(&rx_op_));
  // The ring's completions for our ops come within a turn or two; a second at most.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while ((nop_inflight_ || timer_inflight_ || rx_inflight_) &&
         std::chrono::steady_clock::now() < deadline) {
    if (!ring_.Wait(std::chrono::milliseconds(10)).ok()) break;
  }
  for (auto& c : conns_) {
    if (c->channel) c->channel->TakeUnacked([](const SendResult&) {});
  }
  for (size_t i = 0; i < delayed_n_; ++i) rte_pktmbuf_free(delayed_[i]);
  conns_.clear();
  closed_.clear();
  tcp_.reset();
  port_.reset();
}

Status DpdkTransport::Register(io::BufferPool& pool) {
  if (pool_ != nullptr) return Status::Invalid("dpdk transport: a pool is already registered");
  RETURN_IF_ERROR(tcp_->Register(pool));
  pool_ = &pool;
  return Status::Ok();
}

Status DpdkTransport::OpenPort(const char* role) {
  if (port_) return Status::Ok();
  PortSpec spec{options_.dpdk_port, role, options_.dpdk_mtu};
  ASSIGN_OR_RETURN(port_, Port::Open(spec));
  if (!options_.dpdk_ip.empty()) {
    ASSIGN_OR_RETURN(local_ip_, ParseIpv4(options_.dpdk_ip));
  } else {
    local_ip_ = port_->kernel_ipv4();
  }
  if (local_ip_ == 0) {
    port_.reset();
    return Status::Invalid("dpdk port {} has no IPv4 address of its own: give this node's with "
                           "--dpdk-ip",
                           options_.dpdk_port);
  }
  mtu_ = port_->mtu();
  return Status::Ok();
}

Result<Endpoint> DpdkTransport::Listen(const Endpoint& local) {
  RETURN_IF_ERROR(OpenPort("server"));
  ASSIGN_OR_RETURN(Endpoint bound, tcp_->Listen(local));
  if (udp_port_ == 0) udp_port_ = bound.port;
  spdlog::info("dpdk: serving on {} (control over tcp), packets to {}:{} on port {}",
               bound.ToString(), Ipv4ToString(local_ip_), udp_port_, options_.dpdk_port);
  return bound;
}

proto::TransportHello DpdkTransport::LocalHello(const Conn& conn) const {
  proto::TransportHello h;
  h.mac = port_->mac();
  h.ipv4 = local_ip_;
  h.udp_port = udp_port_;
  h.mtu = static_cast<uint16_t>(mtu_);
  h.session = conn.local_session;
  h.window = ChannelConfig{}.max_window;
  return h;
}

Status DpdkTransport::StartChannel(Conn& conn, const proto::TransportHello& peer) {
  if (peer.version != kPacketVersion) {
    return Status::Protocol("{} speaks DPDK packet version {}, this build {}", conn.peer,
                            peer.version, kPacketVersion);
  }
  if (peer.mtu < kMinMtu) {
    return Status::Protocol("{} announced an MTU of {} (at least {} needed)", conn.peer, peer.mtu,
                            kMinMtu);
  }
  for (const auto& other : conns_) {
    if (other.get() != &conn && other->mode == Conn::Mode::kDpdk &&
        other->route.dst_ip == peer.ipv4 && other->route.dst_port == peer.udp_port &&
        other->peer_session == peer.session) {
      return Status::Protocol("{} reused session {} of another connection", conn.peer,
                              peer.session);
    }
  }
  conn.peer_session = peer.session;
  conn.route.src_mac = port_->mac();
  conn.route.dst_mac = peer.mac;
  conn.route.src_ip = local_ip_;
  conn.route.dst_ip = peer.ipv4;
  conn.route.src_port = udp_port_;
  conn.route.dst_port = peer.udp_port;
  ChannelConfig config;
  config.chunk = ChunkSize(std::min<uint32_t>(mtu_, peer.mtu));
  config.send_queue_depth = options_.send_queue_depth;
  config.max_window = std::min(config.max_window, peer.window);
  conn.channel = std::make_unique<Channel>(config, pool_, conn.mode == Conn::Mode::kAwaitHello,
                                           conn.peer);
  conn.mode = Conn::Mode::kDpdk;
  return Status::Ok();
}

Result<ConnId> DpdkTransport::Connect(const Endpoint& peer, std::chrono::milliseconds timeout) {
  if (pool_ == nullptr) return Status::Invalid("dpdk transport: Register a pool before Connect");
  RETURN_IF_ERROR(OpenPort("client"));
  if (udp_port_ == 0) udp_port_ = static_cast<uint16_t>(49152 + RandomSession() % 16384);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  // Packets sent before the link is up are lost: wait for it (memif connects in the background).
  while (!port_->link_up() && std::chrono::steady_clock::now() < deadline) {
    (void)ring_.Wait(std::chrono::milliseconds(5));
  }
  if (!port_->link_up()) {
    return Status::Error(ErrorCode::kTimeout,
                         fmt::format("cannot connect to {} over dpdk: the link of port {} is "
                                     "still down after {} ms",
                                     peer.ToString(), options_.dpdk_port, timeout.count()));
  }
  ASSIGN_OR_RETURN(ConnId id, tcp_->Connect(peer, timeout));
  auto owned = std::make_unique<Conn>();
  Conn& conn = *owned;
  conn.id = id;
  conn.mode = Conn::Mode::kAwaitAnswer;
  conn.peer = peer.ToString();
  conn.local_session = RandomSession();
  conns_.push_back(std::move(owned));
  proto::Frame offer;
  offer.body = LocalHello(conn);
  WorkItem item;
  item.conn = id;
  item.header = proto::Encode(offer);
  Status posted = tcp_->Post({&item, 1});
  // Wait for the answer; what else the control connections report meanwhile waits in pending_.
  while (posted.ok() && !conn.answered && std::chrono::steady_clock::now() < deadline) {
    (void)ring_.Wait(std::chrono::milliseconds(10));
    size_t n = tcp_->Poll(inner_);
    size_t unused = 0;
    for (size_t i = 0; i < n; ++i) OnControl(inner_[i], {}, unused, /*stash=*/true);
  }
  Status failed = !posted.ok()      ? posted
                  : !conn.answered ? Status::Error(ErrorCode::kTimeout,
                                                   fmt::format("no answer to the DPDK offer "
                                                               "within {} ms",
                                                               timeout.count()))
                                   : conn.answer;
  if (!failed.ok()) {
    tcp_->Close(id);
    Erase(id);
    return Status::Error(failed.code(),
                         fmt::format("cannot connect to {} over dpdk: {}", peer.ToString(),
                                     failed.message()));
  }
  spdlog::info("dpdk: {} connected: packets to {} {}:{}, MTU {}", conn.peer,
               MacToString(conn.route.dst_mac), Ipv4ToString(conn.route.dst_ip),
               conn.route.dst_port, mtu_);
  return id;
}

void DpdkTransport::Emit(Completion&& c, std::span<Completion> out, size_t& n, bool stash) {
  if (!stash && n < out.size()) {
    out[n++] = std::move(c);
    return;
  }
  if (!c.control.empty()) {
    pending_payloads_.emplace_back(c.control.begin(), c.control.end());
    c.control = pending_payloads_.back();
  }
  pending_.push_back(std::move(c));
}

// A completion of the TCP transport: the control connections' events, and every event of a
// plain connection.
void DpdkTransport::OnControl(Completion& c, std::span<Completion> out, size_t& n, bool stash) {
  if (c.kind == CompletionKind::kAccepted) {
    auto conn = std::make_unique<Conn>();
    conn->id = c.conn;
    conn->mode = Conn::Mode::kAwaitHello;
    conn->peer = tcp_->PeerName(c.conn);
    conns_.push_back(std::move(conn));
    return;  // reported once its first frame says what it is
  }
  Conn* conn = Find(c.conn);
  if (conn == nullptr) return;  // closed here already
  if (conn->mode == Conn::Mode::kPlain) {
    if (c.kind == CompletionKind::kClosed) Erase(c.conn);
    return Emit(std::move(c), out, n, stash);
  }
  if (c.kind == CompletionKind::kClosed) {
    conn->control_closed = true;
    if (conn->mode == Conn::Mode::kAwaitHello) return Erase(c.conn);
    if (conn->mode == Conn::Mode::kAwaitAnswer) {
      conn->answered = true;
      conn->answer = Status::Error(ErrorCode::kClosed,
                                   fmt::format("the peer closed the connection without "
                                               "answering ({}); does it serve dpdk?",
                                               c.status.message()));
      return;
    }
    Fail(*conn, c.status.ok() ? Status::Error(ErrorCode::kClosed,
                                              fmt::format("{} closed the connection", conn->peer))
                              : c.status);
    return;
  }
  if (c.kind == CompletionKind::kSent) return;  // our TransportHello left
  // kRecv.
  if (conn->mode == Conn::Mode::kAwaitHello) return OnFirstFrame(*conn, c, out, n, stash);
  auto frame = proto::Decode(std::span<const std::byte, proto::kHeaderSize>(c.header));
  if (conn->mode == Conn::Mode::kAwaitAnswer) {
    conn->answered = true;
    if (frame.ok() && frame->type() == proto::FrameType::kTransportHello &&
        (frame->flags & proto::kTransportAnswer)) {
      conn->answer = StartChannel(*conn, std::get<proto::TransportHello>(frame->body));
    } else if (frame.ok() && frame->type() == proto::FrameType::kError) {
      conn->answer = Status::Error(ErrorCode::kUnavailable,
                                   fmt::format("it does not serve dpdk; it answered: {}",
                                               std::string_view(reinterpret_cast<const char*>(
                                                                    c.control.data()),
                                                                c.control.size())));
    } else {
      conn->answer = Status::Protocol(
          "it answered the DPDK offer with {}",
          frame.ok() ? std::string(proto::FrameTypeName(frame->type())) : frame.status().message());
    }
    return;
  }
  Fail(*conn, Status::Protocol("{} sent a {} frame on the control connection of a DPDK "
                               "connection",
                               conn->peer,
                               frame.ok() ? proto::FrameTypeName(frame->type()) : "malformed"));
}

void DpdkTransport::OnFirstFrame(Conn& conn, Completion& c, std::span<Completion> out, size_t& n,
                                 bool stash) {
  auto frame = proto::Decode(std::span<const std::byte, proto::kHeaderSize>(c.header));
  if (!frame.ok() || frame->type() != proto::FrameType::kTransportHello) {
    // A plain TCP peer: the connection stays on TCP.
    conn.mode = Conn::Mode::kPlain;
    Completion accepted;
    accepted.kind = CompletionKind::kAccepted;
    accepted.conn = conn.id;
    Emit(std::move(accepted), out, n, stash);
    return Emit(std::move(c), out, n, stash);
  }
  const auto& offer = std::get<proto::TransportHello>(frame->body);
  conn.local_session = RandomSession();
  Status started = (frame->flags & proto::kTransportAnswer)
                       ? Status::Protocol("{} sent a TransportHello answer first", conn.peer)
                       : StartChannel(conn, offer);
  if (!started.ok()) {
    spdlog::warn("dpdk: refusing {}: {}", conn.peer, started.message());
    tcp_->Close(conn.id);
    return Erase(conn.id);
  }
  proto::Frame answer;
  answer.flags = proto::kTransportAnswer;
  answer.body = LocalHello(conn);
  WorkItem item;
  item.conn = conn.id;
  item.header = proto::Encode(answer);
  if (Status posted = tcp_->Post({&item, 1}); !posted.ok()) {
    tcp_->Close(conn.id);
    return Erase(conn.id);
  }
  Completion accepted;
  accepted.kind = CompletionKind::kAccepted;
  accepted.conn = conn.id;
  Emit(std::move(accepted), out, n, stash);
}

Conn* DpdkTransport::Find(ConnId id) const {
  for (const auto& c : conns_) {
    if (c->id == id) return c.get();
  }
  return nullptr;
}

void DpdkTransport::Erase(ConnId id) {
  for (auto it = conns_.begin(); it != conns_.end(); ++it) {
    if ((*it)->id == id) {
      closed_.push_back(std::move(*it));
      conns_.erase(it);
      return;
    }
  }
}

std::string DpdkTransport::PeerName(ConnId id) const {
  Conn* conn = Find(id);
  return conn != nullptr ? conn->peer : tcp_->PeerName(id);
}

}  // namespace dpdk
}  // namespace blkmirror::transport
