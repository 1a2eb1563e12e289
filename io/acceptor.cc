#include "io/acceptor.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace blkmirror::io {

std::string SockaddrName(const sockaddr* sa) {
  char host[INET6_ADDRSTRLEN] = "?";
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
  if (sa->sa_family == AF_UNIX) return "unix";
  return "unknown";
}

Result<std::unique_ptr<Acceptor>> Acceptor::ListenTcp(Ring& ring, const std::string& host,
                                                      uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* ai = nullptr;
  std::string port_text = std::to_string(port);
  if (int rc = getaddrinfo(host.c_str(), port_text.c_str(), &hints, &ai); rc != 0) {
    return Status::Error(ErrorCode::kNotFound,
                         fmt::format("cannot resolve host '{}': {}", host, gai_strerror(rc)));
  }
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    freeaddrinfo(ai);
    return Status::Errno(err, "socket");
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 128) != 0) {
    int err = errno;
    freeaddrinfo(ai);
    close(fd);
    return Status::Errno(err, fmt::format("cannot listen on {}:{}", host, port));
  }
  freeaddrinfo(ai);
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  auto a = std::unique_ptr<Acceptor>(
      new Acceptor(ring, fd, SockaddrName(reinterpret_cast<sockaddr*>(&bound)), ""));
  a->Arm();
  return a;
}

Result<std::unique_ptr<Acceptor>> Acceptor::ListenUnix(Ring& ring, const std::string& path) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Status::Invalid("unix socket path '{}' is empty or longer than {} bytes", path,
                           sizeof(addr.sun_path) - 1);
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Errno(errno, "socket(AF_UNIX)");
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      close(fd);
      return Status::Error(ErrorCode::kRefused,
                           fmt::format("{} exists and is not a socket: refusing to replace it",
                                       path));
    }
    unlink(path.c_str());  // a stale socket of an earlier run
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 128) != 0) {
    int err = errno;
    close(fd);
    return Status::Errno(err, fmt::format("cannot listen on unix socket {}", path));
  }
  chmod(path.c_str(), 0660);
  auto a = std::unique_ptr<Acceptor>(new Acceptor(ring, fd, "unix:" + path, path));
  a->Arm();
  return a;
}

Acceptor::Acceptor(Ring& ring, int fd, std::string local, std::string unix_path)
    : ring_(ring), fd_(fd), local_(std::move(local)), unix_path_(std::move(unix_path)) {
  accept_op_.handler = this;
  retry_op_.handler = this;
  retry_op_.retry = true;
}

Acceptor::~Acceptor() {
  stopping_ = true;
  if (accept_inflight_) io_uring_prep_cancel(ring_.GetSqe(nullptr), &accept_op_, 0);
  if (retry_inflight_) io_uring_prep_cancel(ring_.GetSqe(nullptr), &retry_op_, 0);
  for (int i = 0; i < 100 && (accept_inflight_ || retry_inflight_); ++i) {
    if (!ring_.Wait(std::chrono::milliseconds(20)).ok()) break;
  }
  for (auto& a : accepted_) close(a.fd);
  close(fd_);
  if (!unix_path_.empty()) unlink(unix_path_.c_str());
}

void Acceptor::Arm() {
  if (stopping_ || accept_inflight_) return;
  addr_len_ = sizeof(addr_);
  io_uring_prep_accept(ring_.GetSqe(&accept_op_), fd_, reinterpret_cast<sockaddr*>(&addr_),
                       &addr_len_, SOCK_CLOEXEC);
  accept_inflight_ = true;
}

void Acceptor::RetryLater(int32_t res) {
  auto delay = std::min(kAcceptRetryMax, kAcceptRetryFirst * (1 << std::min(failures_, 5u)));
  if (failures_ == 0) {
    spdlog::warn("{}: accept failed: {}; retrying every {} to {} ms until it works (the process "
                 "is out of descriptors or memory: see the connection limits and ulimit -n)",
                 local_, std::strerror(-res), kAcceptRetryFirst.count(), kAcceptRetryMax.count());
  }
  ++failures_;
  retry_ts_.tv_sec = delay.count() / 1000;
  retry_ts_.tv_nsec = (delay.count() % 1000) * 1'000'000;
  io_uring_prep_timeout(ring_.GetSqe(&retry_op_), &retry_ts_, 0, 0);
  retry_inflight_ = true;
}

void Acceptor::OnCqe(RingOp* op, int32_t res, uint32_t) {
  if (static_cast<Op*>(op)->retry) {
    retry_inflight_ = false;
    Arm();
    return;
  }
  accept_inflight_ = false;
  if (stopping_ || res == -ECANCELED) return;
  if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
    RetryLater(res);  // retrying at once would spin; descriptors free up later
    return;
  }
  if (res < 0) {
    spdlog::warn("{}: accept failed: {}", local_, std::strerror(-res));
    Arm();
    return;
  }
  if (failures_ > 0) {
    spdlog::info("{}: accepting again after {} failed attempts", local_, failures_);
    failures_ = 0;
  }
  if (!is_unix()) {
    int one = 1;
    setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  accepted_.push_back(AcceptedSocket{res, SockaddrName(reinterpret_cast<sockaddr*>(&addr_))});
  Arm();
}

size_t Acceptor::Take(std::span<AcceptedSocket> out) {
  size_t n = 0;
  while (n < out.size() && !accepted_.empty()) {
    out[n++] = std::move(accepted_.front());
    accepted_.pop_front();
  }
  return n;
}

}  // namespace blkmirror::io
