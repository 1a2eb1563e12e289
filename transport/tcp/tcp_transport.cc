// TCP backend, setup half: sockets, listeners, connects, teardown.
#include "transport/tcp/tcp_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>

#include <spdlog/spdlog.h>

#include "transport/tcp/tcp_internal.h"

namespace blkmirror::transport {

Result<std::unique_ptr<Transport>> CreateTcpTransport(const TransportContext& context) {
  if (context.ring == nullptr) return Status::Invalid("tcp transport: no io_uring ring given");
  std::unique_ptr<tls::Context> tls;
  if (context.options.tls.enabled) {
    ASSIGN_OR_RETURN(tls, tls::Context::Create(context.options.tls));
  }
  return std::unique_ptr<Transport>(
      std::make_unique<tcp::TcpTransport>(context, std::move(tls)));
}

namespace tcp {
namespace {

std::string AddrToString(const sockaddr* sa) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
    return fmt::format("{}:{}", host, port);
  }
  if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
    return fmt::format("[{}]:{}", host, port);
  }
  return "unknown";
}

void TuneSocket(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

Result<addrinfo*> Resolve(const Endpoint& ep, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* res = nullptr;
  std::string port = std::to_string(ep.port);
  int rc = getaddrinfo(ep.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    return Status::Error(ErrorCode::kNotFound, fmt::format("cannot resolve host '{}': {}", ep.host,
                                                           gai_strerror(rc)));
  }
  return res;
}

}  // namespace

TcpTransport::TcpTransport(const TransportContext& context, std::unique_ptr<tls::Context> tls)
    : ring_(*context.ring), options_(context.options), tls_(std::move(tls)) {}

TcpTransport::~TcpTransport() {
  shutting_down_ = true;
  for (auto& l : listeners_) {
    if (l->inflight) io_uring_prep_cancel(ring_.GetSqe(nullptr), &l->op, 0);
    if (l->retry_inflight) io_uring_prep_cancel(ring_.GetSqe(nullptr), &l->retry_op, 0);
  }
  for (auto& c : conns_) {
    if (!c->closing) Fail(*c, Status());
  }
  // Operations in the kernel point at our connections: wait until every one has completed.
  auto busy = [&] {
    for (auto& l : listeners_) {
      if (l->inflight || l->retry_inflight) return true;
    }
    for (auto& c : conns_) {
      if (c->busy()) return true;
    }
    return false;
  };
  for (int i = 0; i < 100 && busy(); ++i) {
    if (!ring_.Wait(std::chrono::milliseconds(50)).ok()) break;
  }
  for (auto& c : conns_) close(c->fd);
  for (auto& l : listeners_) close(l->fd);
}

Status TcpTransport::Register(io::BufferPool& pool) {
  if (pool_ != nullptr) return Status::Invalid("tcp transport: a pool is already registered");
  pool_ = &pool;
  return Status::Ok();
}

Result<Endpoint> TcpTransport::Listen(const Endpoint& local) {
  ASSIGN_OR_RETURN(addrinfo * ai, Resolve(local, /*passive=*/true));
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(ai);
    return Status::Errno(errno, "socket");
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 128) != 0) {
    int err = errno;
    freeaddrinfo(ai);
    close(fd);
    return Status::Errno(err, fmt::format("cannot listen on {} (tcp)", local.ToString()));
  }
  freeaddrinfo(ai);
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  auto listener = std::make_unique<Listener>();
  listener->fd = fd;
  ASSIGN_OR_RETURN(listener->local,
                   Endpoint::Parse(AddrToString(reinterpret_cast<sockaddr*>(&bound))));
  listener->op.handler = this;
  listener->op.kind = Op::Kind::kAccept;
  listener->op.listener = listener.get();
  listener->retry_op.handler = this;
  listener->retry_op.kind = Op::Kind::kAcceptRetry;
  listener->retry_op.listener = listener.get();
  Listener& l = *listener;
  listeners_.push_back(std::move(listener));
  ArmAccept(l);
  return l.local;
}

void TcpTransport::ArmAccept(Listener& l) {
  l.addr_len = sizeof(l.addr);
  io_uring_sqe* sqe = ring_.GetSqe(&l.op);
  io_uring_prep_accept(sqe, l.fd, reinterpret_cast<sockaddr*>(&l.addr), &l.addr_len,
                       SOCK_CLOEXEC);
  l.inflight = true;
}

void TcpTransport::OnAccept(Listener& l, int32_t res) {
  l.inflight = false;
  if (shutting_down_) return;
  if (res == -ECANCELED) return;
  if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
    RetryAcceptLater(l, res);  // retrying at once would spin; descriptors free up later
    return;
  }
  if (res < 0) {
    spdlog::warn("tcp {}: accept failed: {}", l.local.ToString(), std::strerror(-res));
    ArmAccept(l);
    return;
  }
  if (l.failures > 0) {
    spdlog::info("tcp {}: accepting again after {} failed attempts", l.local.ToString(),
                 l.failures);
    l.failures = 0;
  }
  TuneSocket(res);
  std::string peer = AddrToString(reinterpret_cast<sockaddr*>(&l.addr));
  std::unique_ptr<tls::Session> session;
  if (tls_) {
    auto made = tls::Session::Create(*tls_, tls::Role::kServer, peer);
    if (!made.ok()) {
      spdlog::warn("tcp {}: {}: {}", l.local.ToString(), peer, made.status().message());
      close(res);
      ArmAccept(l);
      return;
    }
    session = std::move(*made);
  }
  Conn* conn = AddConn(res, std::move(peer), std::move(session));
  conn->accepted = true;
  accepted_.push_back(conn->id);
  ArmAccept(l);
}

void TcpTransport::RetryAcceptLater(Listener& l, int32_t res) {
  auto delay = std::min(kAcceptRetryMax, kAcceptRetryFirst * (1 << std::min(l.failures, 5u)));
  if (l.failures == 0) {
    spdlog::warn("tcp {}: accept failed: {}; retrying every {} to {} ms until it works (the "
                 "process is out of descriptors or memory: see serve --max-connections and "
                 "ulimit -n)",
                 l.local.ToString(), std::strerror(-res), kAcceptRetryFirst.count(),
                 kAcceptRetryMax.count());
  }
  ++l.failures;
  l.retry_ts.tv_sec = delay.count() / 1000;
  l.retry_ts.tv_nsec = (delay.count() % 1000) * 1'000'000;
  io_uring_prep_timeout(ring_.GetSqe(&l.retry_op), &l.retry_ts, 0, 0);
  l.retry_inflight = true;
}

Result<ConnId> TcpTransport::Connect(const Endpoint& peer, std::chrono::milliseconds timeout) {
  if (pool_ == nullptr) return Status::Invalid("tcp transport: Register a pool before Connect");
  ASSIGN_OR_RETURN(addrinfo * list, Resolve(peer, /*passive=*/false));
  Status last = Status::Error(ErrorCode::kNotFound, "no address");
  for (addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      last = Status::Errno(errno, "socket");
      continue;
    }
    if (!options_.source_address.empty()) {
      auto src = Resolve({options_.source_address, 0}, /*passive=*/false);
      if (!src.ok()) {
        close(fd);
        freeaddrinfo(list);
        return src.status().Context("source address");
      }
      int brc = bind(fd, (*src)->ai_addr, (*src)->ai_addrlen);
      int berr = errno;
      freeaddrinfo(*src);
      if (brc != 0) {
        close(fd);
        last = Status::Errno(berr, fmt::format("bind to source address {}",
                                               options_.source_address));
        continue;
      }
    }
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    int err = rc == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
      pollfd pfd{fd, POLLOUT, 0};
      int n = poll(&pfd, 1, static_cast<int>(timeout.count()));
      if (n == 0) {
        err = ETIMEDOUT;
      } else {
        socklen_t len = sizeof(err);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      }
    }
    if (err != 0) {
      close(fd);
      last = Status::Errno(err, "connect");
      continue;
    }
    TuneSocket(fd);
    freeaddrinfo(list);
    std::unique_ptr<tls::Session> session;
    bool ktls = false;
    if (tls_) {
      // The TLS handshake, before any blkmirror byte, within what is left of the timeout.
      ASSIGN_OR_RETURN(session, tls::Session::Create(*tls_, tls::Role::kClient, peer.ToString()));
      Status shook = ClientHandshake(fd, *session, peer.ToString(), timeout);
      if (!shook.ok()) {
        close(fd);
        return shook;
      }
      spdlog::debug("tls: {}: {}", peer.ToString(), session->Describe());
      if (options_.tls.ktls) {
        Status taken = session->TakeKernelTls(fd);
        if (taken.ok()) {
          SayKtlsOnce("tls: kTLS active: the kernel encrypts and decrypts the records");
          session.reset();
          ktls = true;
        } else if (taken.code() == ErrorCode::kProtocol) {
          close(fd);
          return taken.Context(peer.ToString());
        } else {
          SayKtlsOnce(fmt::format("tls: no kTLS here ({}); TLS records are encrypted in user "
                                  "space",
                                  taken.message()));
        }
      }
    }
    // io_uring polls for readiness itself; a blocking socket keeps MSG_WAITALL simple.
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    Conn* conn = AddConn(fd, peer.ToString(), std::move(session));
    conn->ktls = ktls;
    return conn->id;
  }
  freeaddrinfo(list);
  std::string hint = last.err() == ECONNREFUSED ? " (is `blkmirror serve` listening there?)"
                     : last.err() == ETIMEDOUT  ? " (peer down or a firewall in the way?)"
                                                : "";
  return Status::Error(last.code(), fmt::format("cannot connect to {} over tcp: {}{}",
                                                peer.ToString(), last.message(), hint));
}

Conn* TcpTransport::AddConn(int fd, std::string peer, std::unique_ptr<tls::Session> tls) {
  auto conn = std::make_unique<Conn>();
  conn->id = next_id_++;
  conn->fd = fd;
  conn->peer = std::move(peer);
  conn->tls = std::move(tls);
  conn->sq.Init(options_.send_queue_depth, kCtrlRingBytes);
  conn->send_op.handler = this;
  conn->send_op.kind = Op::Kind::kSend;
  conn->send_op.conn = conn.get();
  conn->recv_op.handler = this;
  conn->recv_op.kind = Op::Kind::kRecv;
  conn->recv_op.conn = conn.get();
  Conn* raw = conn.get();
  conns_.push_back(std::move(conn));
  StartRecv(*raw);
  return raw;
}

void TcpTransport::Destroy(Conn* conn) {
  close(conn->fd);
  conn->fd = -1;
  for (auto it = conns_.begin(); it != conns_.end(); ++it) {
    if (it->get() == conn) {
      closed_.push_back(std::move(*it));  // freed at the next Poll
      conns_.erase(it);
      return;
    }
  }
}

void TcpTransport::Close(ConnId id) {
  Conn* conn = Find(id);
  if (conn == nullptr || conn->closing) return;
  conn->local_close = true;
  Fail(*conn, Status());
}

std::string TcpTransport::PeerName(ConnId id) const {
  Conn* conn = Find(id);
  return conn != nullptr ? conn->peer : fmt::format("closed connection #{}", id);
}

}  // namespace tcp
}  // namespace blkmirror::transport
