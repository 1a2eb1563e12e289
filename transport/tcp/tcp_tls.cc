// TCP backend, TLS half (--tls): the same connections, with a tls::Session between the frames
// and the socket. The io_uring loop still owns the socket: one SEND of ciphertext and one RECV
// of ciphertext in flight per connection; frames are encrypted from the send queue (the pool
// buffers of Data frames included, no copy before the cipher) and decrypted straight into the
// frame's header, control slot or pool buffer. Once the handshake is over, the kernel takes the
// records where it can (kTLS) and the connection goes on as plain TCP.
//
// Accepted connections shake hands in the loop (bounded by the engine's handshake timeout and
// --max-connections, as every connection before its Hello); Connect shakes hands before it
// returns, within its timeout.
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <cassert>
#include <cstring>

#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "transport/tcp/tcp_internal.h"

namespace blkmirror::transport::tcp {
namespace {
std::atomic<bool> ktls_said{false};
}  // namespace

void SayKtlsOnce(const std::string& text) {
  if (!ktls_said.exchange(true)) spdlog::info("{}", text);
}

void TcpTransport::TlsStartSend(Conn& conn) {
  if (conn.send_inflight) return;
  tls::Session& s = *conn.tls;
  if (!s.handshake_done() && conn.sq_sent < conn.sq.tail() && !conn.closing) {
    // A frame for a peer still in its TLS handshake (the engine refusing it: an Error, then
    // close): nothing reaches a peer before its handshake is over, so the connection closes now.
    conn.local_close = true;
    Fail(conn, Status());
    return;
  }
  if (s.handshake_done() && !conn.ktls_pending && !conn.closing && !conn.send_broken &&
      !conn.tls_failing) {
    // Encrypt queued frames, in order, until the session's buffer is full.
    while (conn.sq_sent < conn.sq.tail()) {
      SendEntry& e = conn.sq.at(conn.sq_sent);
      const uint32_t total = static_cast<uint32_t>(proto::kHeaderSize) + e.payload_len;
      const std::byte* src;
      size_t len;
      if (conn.tls_tx_off < proto::kHeaderSize) {
        src = e.header.data() + conn.tls_tx_off;
        len = proto::kHeaderSize - conn.tls_tx_off;
      } else {
        src = e.payload + (conn.tls_tx_off - proto::kHeaderSize);
        len = total - conn.tls_tx_off;
      }
      auto put = s.Write(src, len);
      if (!put.ok()) {
        Fail(conn, put.status());
        return;
      }
      if (*put == 0) break;
      conn.tls_tx_off += static_cast<uint32_t>(*put);
      if (conn.tls_tx_off == total) {
        conn.tls_tx_off = 0;
        ++conn.sq_sent;
        conn.sq.MarkDone(conn.sq_sent);  // encrypted: the buffer is the caller's again
      }
    }
    conn.sq_batch_end = conn.sq_sent;
  }
  if (conn.closing && !conn.tls_failing) return;
  auto pending = s.TxPending();
  if (pending.empty()) {
    if (conn.tls_failing) Fail(conn, conn.tls_fail);
    return;
  }
  io_uring_sqe* sqe = ring_.GetSqe(&conn.send_op);
  io_uring_prep_send(sqe, conn.fd, pending.data(), pending.size(), MSG_NOSIGNAL | MSG_WAITALL);
  conn.tls_tx_len = pending.size();
  conn.send_inflight = true;
}

void TcpTransport::TlsOnSend(Conn& conn, int32_t res) {
  conn.send_inflight = false;
  if (conn.closing && !conn.tls_failing) return;
  if (res == -EAGAIN || res == -EINTR) {
    TlsStartSend(conn);
    return;
  }
  if (res < 0) {
    conn.send_broken = true;
    conn.send_error = Status::Errno(-res, fmt::format("send to {} failed", conn.peer));
    if (conn.tls_failing) {
      Fail(conn, conn.tls_fail);  // the alert did not make it; the reason stands
    } else if (!conn.recv_inflight) {
      Fail(conn, conn.send_error);
    }
    return;
  }
  conn.tls->TxConsume(static_cast<size_t>(res));
  if (conn.ktls_pending) {
    TryKernelTls(conn);
    if (!conn.tls) return;
  }
  TlsStartSend(conn);
}

void TcpTransport::TlsStartRecv(Conn& conn) {
  if (conn.closing || conn.tls_failing || conn.ktls_pending) return;
  if (!TlsDeliver(conn)) return;
  if (conn.recv_inflight || conn.tls == nullptr) return;
  auto space = conn.tls->RxSpace();
  if (space.empty()) return;  // the session holds a full buffer: Poll resumes
  io_uring_sqe* sqe = ring_.GetSqe(&conn.recv_op);
  io_uring_prep_recv(sqe, conn.fd, space.data(), space.size(), 0);
  conn.recv_inflight = true;
}

void TcpTransport::TlsOnRecv(Conn& conn, int32_t res) {
  conn.recv_inflight = false;
  if (conn.closing || conn.tls_failing) return;
  if (res == -EAGAIN || res == -EINTR) {
    TlsStartRecv(conn);
    return;
  }
  if (res <= 0) {
    Fail(conn, res == 0 && !conn.send_broken && !conn.tls->handshake_done()
                   ? conn.tls->ClosedDuringHandshake()
                   : ReceiveEnded(conn, res));
    return;
  }
  conn.tls->RxCommit(static_cast<size_t>(res));
  TlsStartRecv(conn);
}

bool TcpTransport::TlsDeliver(Conn& conn) {
  tls::Session& s = *conn.tls;
  if (!s.handshake_done()) {
    auto done = s.Handshake();
    if (!done.ok()) {
      TlsFail(conn, done.status());
      return false;
    }
    TlsStartSend(conn);  // what the handshake wrote
    if (!*done) return true;
    spdlog::debug("tls: {}: {}", conn.peer, s.Describe());
    if (options_.tls.ktls) {
      conn.ktls_pending = true;
      TryKernelTls(conn);
      if (conn.ktls_pending || conn.tls == nullptr) return false;  // resumed when it is done
    }
  }
  for (;;) {
    if (conn.ready_count + conn.ready_lent >= kReadyCap) return false;  // resumed by Poll
    std::byte* dst;
    uint32_t want;
    if (!RecvTarget(conn, dst, want)) return false;
    auto got = s.Read(dst, want);
    if (!got.ok()) {
      Fail(conn, got.status());
      return false;
    }
    if (*got == 0) return true;
    if (!Received(conn, static_cast<uint32_t>(*got))) return false;
  }
}

void TcpTransport::TlsFail(Conn& conn, Status reason) {
  if (conn.tls->peer_speaks_plain()) {
    TellPlainPeer(conn, "this replica requires TLS: give the primary --tls (and what the replica "
                        "authenticates with: --cert/--cert-key/--ca, or --key-file)");
  }
  if (conn.tls->TxPending().empty() || conn.send_broken) {
    Fail(conn, std::move(reason));
    return;
  }
  // The alert for the peer first (it names what it refused), then the failure.
  conn.tls_failing = true;
  conn.tls_fail = std::move(reason);
  TlsStartSend(conn);
}

void TcpTransport::TryKernelTls(Conn& conn) {
  if (conn.send_inflight || !conn.tls->TxPending().empty()) return;  // after the last send
  conn.ktls_pending = false;
  Status taken = conn.tls->TakeKernelTls(conn.fd);
  if (taken.ok()) {
    SayKtlsOnce("tls: kTLS active: the kernel encrypts and decrypts the records");
    spdlog::debug("tls: {}: kTLS on", conn.peer);
    conn.tls.reset();
    conn.ktls = true;
    conn.sq_batch_end = conn.sq_sent;
    StartSend(conn);
    StartRecv(conn);
    return;
  }
  if (taken.code() == ErrorCode::kProtocol) {
    Fail(conn, taken);
    return;
  }
  SayKtlsOnce(fmt::format("tls: no kTLS here ({}); TLS records are encrypted in user space",
                          taken.message()));
  StartSend(conn);
  StartRecv(conn);
}

void TcpTransport::TellPlainPeer(Conn& conn, const std::string& text) {
  // A plain blkmirror Error frame, written at once: nothing else is on its way to this peer yet.
  proto::Frame frame;
  frame.body = proto::Error{static_cast<uint32_t>(ErrorCode::kRefused)};
  frame.payload_len = static_cast<uint32_t>(std::min<size_t>(text.size(), proto::kMaxControlPayload));
  proto::RawHeader header = proto::Encode(frame);
  iovec iov[2] = {{header.data(), header.size()},
                  {const_cast<char*>(text.data()), frame.payload_len}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  (void)sendmsg(conn.fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
}

Status TcpTransport::ClientHandshake(int fd, tls::Session& s, const std::string& peer,
                                     std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto wait = [&](short events) -> Status {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Status::Error(ErrorCode::kTimeout,
                           fmt::format("TLS handshake with {} did not complete within {} ms",
                                       peer, timeout.count()));
    }
    pollfd pfd{fd, events, 0};
    int n = poll(&pfd, 1, static_cast<int>(left.count()));
    if (n < 0 && errno != EINTR) return Status::Errno(errno, "poll");
    return Status::Ok();
  };
  auto flush = [&]() -> Status {
    for (auto out = s.TxPending(); !out.empty(); out = s.TxPending()) {
      ssize_t n = send(fd, out.data(), out.size(), MSG_NOSIGNAL);
      if (n > 0) {
        s.TxConsume(static_cast<size_t>(n));
      } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        RETURN_IF_ERROR(wait(POLLOUT));
      } else {
        return Status::Errno(errno, fmt::format("TLS handshake: send to {}", peer));
      }
    }
    return Status::Ok();
  };
  for (;;) {
    auto done = s.Handshake();
    if (!done.ok()) {
      if (s.peer_speaks_plain()) {
        // Read what the plain peer says (its Error frame) until it closes, briefly.
        for (int i = 0; i < 10; ++i) {
          auto space = s.RxSpace();
          if (space.empty()) break;
          if (!wait(POLLIN).ok()) break;
          ssize_t n = recv(fd, space.data(), space.size(), MSG_DONTWAIT);
          if (n <= 0 && !(n < 0 && errno == EAGAIN)) break;
          if (n > 0) s.RxCommit(static_cast<size_t>(n));
        }
        return s.ClosedDuringHandshake();
      }
      (void)flush();  // the alert, so that the peer knows why
      return done.status();
    }
    RETURN_IF_ERROR(flush());
    if (*done) return Status::Ok();
    auto space = s.RxSpace();
    if (space.empty()) {
      return Status::Protocol("TLS handshake with {}: its handshake records fill our buffer", peer);
    }
    ssize_t n = recv(fd, space.data(), space.size(), 0);
    if (n > 0) {
      s.RxCommit(static_cast<size_t>(n));
    } else if (n == 0) {
      return s.ClosedDuringHandshake();
    } else if (errno == EAGAIN || errno == EINTR) {
      RETURN_IF_ERROR(wait(POLLIN));
    } else if (errno == ECONNRESET) {
      return s.ClosedDuringHandshake();
    } else {
      return Status::Errno(errno, fmt::format("TLS handshake: receive from {}", peer));
    }
  }
}

}  // namespace blkmirror::transport::tcp
