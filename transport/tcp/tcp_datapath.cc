// TCP backend, data-path half: Post, Poll, and the io_uring completions of sends and receives.
// Nothing here allocates: every queue was sized when its connection was made.
#include <sys/socket.h>

#include <cassert>
#include <cstring>

#include <spdlog/spdlog.h>

#include "transport/tcp/tcp_internal.h"

namespace blkmirror::transport::tcp {

Conn* TcpTransport::Find(ConnId id) const {
  for (const auto& c : conns_) {
    if (c->id == id) return c.get();
  }
  return nullptr;
}

void TcpTransport::Fail(Conn& conn, Status reason) {
  if (conn.closing) return;
  conn.closing = true;
  conn.close_reason = std::move(reason);
  // Wakes the RECV (and any SENDMSG) in flight; they complete and the connection winds down.
  shutdown(conn.fd, SHUT_RDWR);
}

size_t TcpTransport::SendSpace(ConnId id) const {
  Conn* conn = Find(id);
  if (conn == nullptr || conn->closing) return 0;
  return conn->sq.space();
}

Status TcpTransport::Post(std::span<const WorkItem> items) {
  // Check the whole batch first, room included (frames to one connection add up): all or
  // nothing.
  const uint64_t batch = ++posts_;
  for (const WorkItem& item : items) {
    Conn* conn = Find(item.conn);
    if (conn == nullptr || conn->closing) {
      return Status::Error(ErrorCode::kClosed,
                           fmt::format("tcp: connection to {} is closed", PeerName(item.conn)));
    }
    auto checked = CheckWorkItem(item);
    if (!checked.ok()) return checked.status().Context("tcp");
    Status room = conn->sq.Reserve(batch, item);
    if (!room.ok()) return room.Context(fmt::format("tcp: to {}", conn->peer));
  }
  for (const WorkItem& item : items) {
    Conn& conn = *Find(item.conn);
    SendEntry* queued = conn.sq.Push(item);
    assert(queued != nullptr);  // reserved above
    (void)queued;
    if (!conn.send_inflight) StartSend(conn);
  }
  return Status::Ok();
}

void TcpTransport::StartSend(Conn& conn) {
  if (conn.tls) {
    TlsStartSend(conn);
    return;
  }
  if (conn.closing || conn.send_broken || conn.send_inflight ||
      conn.sq_batch_end == conn.sq.tail()) {
    return;
  }
  if (conn.zc_count == conn.zc_marks.size()) return;  // resumed by a zero-copy notification
  size_t n = 0;
  uint64_t c = conn.sq_batch_end;
  for (; c < conn.sq.tail() && c - conn.sq_batch_end < kMaxBatchFrames; ++c) {
    SendEntry& e = conn.sq.at(c);
    conn.iov[n] = iovec{e.header.data(), e.header.size()};
    conn.iov_ends_entry[n] = e.payload_len == 0;
    ++n;
    if (e.payload_len > 0) {
      conn.iov[n] = iovec{const_cast<std::byte*>(e.payload), e.payload_len};
      conn.iov_ends_entry[n] = true;
      ++n;
    }
  }
  conn.sq_batch_end = c;
  conn.iov_count = n;
  conn.iov_pos = 0;
  conn.msg = msghdr{};
  conn.msg.msg_iov = conn.iov.data();
  conn.msg.msg_iovlen = n;
  PrepSend(conn);
}

void TcpTransport::PrepSend(Conn& conn) {
  io_uring_sqe* sqe = ring_.GetSqe(&conn.send_op);
  if (conn.ktls) {
    // The kernel's TLS sendmsg refuses MSG_WAITALL (and zero-copy) with EOPNOTSUPP; short
    // sends are resumed below all the same.
    io_uring_prep_sendmsg(sqe, conn.fd, &conn.msg, MSG_NOSIGNAL);
  } else if (options_.tcp_zerocopy) {
    io_uring_prep_sendmsg_zc(sqe, conn.fd, &conn.msg, MSG_NOSIGNAL | MSG_WAITALL);
  } else {
    io_uring_prep_sendmsg(sqe, conn.fd, &conn.msg, MSG_NOSIGNAL | MSG_WAITALL);
  }
  conn.send_inflight = true;
}

void TcpTransport::OnSend(Conn& conn, int32_t res, uint32_t flags) {
  if (conn.tls) {
    TlsOnSend(conn, res);
    return;
  }
  if (flags & IORING_CQE_F_NOTIF) {
    // Zero-copy: the kernel let go of the pages of the oldest send with a notification.
    if (conn.zc_count > 0) {
      conn.sq.MarkDone(conn.zc_marks[conn.zc_head]);
      conn.zc_head = (conn.zc_head + 1) % conn.zc_marks.size();
      --conn.zc_count;
    }
    return;
  }
  conn.send_inflight = false;
  // Whatever this send completed: with zero-copy its buffers are free only at its notification.
  auto settle = [&] {
    if (flags & IORING_CQE_F_MORE) {
      conn.zc_marks[(conn.zc_head + conn.zc_count) % conn.zc_marks.size()] = conn.sq_sent;
      ++conn.zc_count;
    } else if (conn.zc_count == 0) {
      conn.sq.MarkDone(conn.sq_sent);
    }
  };
  if (conn.closing) {
    settle();
    return;
  }
  if (res == -EAGAIN || res == -EINTR) {
    settle();
    PrepSend(conn);
    return;
  }
  if (res < 0) {
    settle();
    conn.send_broken = true;
    conn.send_error = Status::Errno(-res, fmt::format("send to {} failed", conn.peer));
    if (!conn.recv_inflight) Fail(conn, conn.send_error);
    return;
  }
  // Consume `res` bytes from the gather list; each fully sent entry moves to "sent".
  size_t left = static_cast<size_t>(res);
  while (conn.iov_pos < conn.iov_count) {
    iovec& v = conn.iov[conn.iov_pos];
    if (left < v.iov_len) {
      v.iov_base = static_cast<char*>(v.iov_base) + left;
      v.iov_len -= left;
      break;
    }
    left -= v.iov_len;
    if (conn.iov_ends_entry[conn.iov_pos]) ++conn.sq_sent;
    ++conn.iov_pos;
  }
  settle();
  if (conn.iov_pos < conn.iov_count) {
    // Short send (MSG_WAITALL makes it rare): send the rest of the same gather list.
    conn.msg.msg_iov = conn.iov.data() + conn.iov_pos;
    conn.msg.msg_iovlen = conn.iov_count - conn.iov_pos;
    PrepSend(conn);
    return;
  }
  StartSend(conn);
}

bool TcpTransport::RecvTarget(Conn& conn, std::byte*& dst, uint32_t& want) {
  ReadyFrame& f = conn.ready[(conn.ready_head + conn.ready_count) % kReadyCap];
  if (!conn.rx_in_payload) {
    dst = f.header.data() + conn.rx_got;
    want = static_cast<uint32_t>(proto::kHeaderSize) - conn.rx_got;
  } else {
    if (proto::CarriesBlockData(conn.rx_prefix.type)) {
      if (!f.data) {
        auto buffer = pool_->TryGet();
        if (!buffer) {
          conn.rx_wait_buffer = true;  // resumed by Poll once a buffer is free
          return false;
        }
        f.data = std::move(*buffer);
      }
      dst = f.data.data() + conn.rx_got;
    } else {
      dst = f.ctrl.data() + conn.rx_got;
    }
    want = conn.rx_prefix.payload_len - conn.rx_got;
  }
  conn.rx_wait_buffer = false;
  return true;
}

void TcpTransport::StartRecv(Conn& conn) {
  if (conn.tls) {
    TlsStartRecv(conn);
    return;
  }
  if (conn.closing || conn.recv_inflight) return;
  if (conn.ready_count + conn.ready_lent >= kReadyCap) return;  // resumed by Poll
  std::byte* dst;
  uint32_t want;
  if (!RecvTarget(conn, dst, want)) return;
  io_uring_sqe* sqe = ring_.GetSqe(&conn.recv_op);
  io_uring_prep_recv(sqe, conn.fd, dst, want, MSG_WAITALL);
  conn.recv_inflight = true;
}

void TcpTransport::OnRecv(Conn& conn, int32_t res) {
  if (conn.tls) {
    TlsOnRecv(conn, res);
    return;
  }
  conn.recv_inflight = false;
  if (conn.closing) return;
  if (res == -EAGAIN || res == -EINTR) {
    StartRecv(conn);
    return;
  }
  if (res == -EIO && conn.ktls) {
    // kTLS hands a record other than application data (an alert) to no one without a cmsg.
    Fail(conn, Status::Error(ErrorCode::kRefused,
                             fmt::format("{} sent a TLS alert (kTLS): it ended the session; its "
                                         "log says why",
                                         conn.peer)));
    return;
  }
  if (res <= 0) {
    Fail(conn, ReceiveEnded(conn, res));
    return;
  }
  if (Received(conn, static_cast<uint32_t>(res))) StartRecv(conn);
}

bool TcpTransport::Received(Conn& conn, uint32_t n) {
  conn.rx_got += n;
  ReadyFrame& f = conn.ready[(conn.ready_head + conn.ready_count) % kReadyCap];
  if (!conn.rx_in_payload) {
    if (conn.rx_got < proto::kHeaderSize) return true;
    auto prefix = proto::DecodePrefix(f.header);
    if (!prefix.ok()) {
      // A TLS record where a frame should start: a peer with --tls talking to us without.
      if (!conn.tls && !conn.ktls && f.header[0] == std::byte{0x16} &&
          f.header[1] == std::byte{0x03}) {
        std::string text = fmt::format(
            "{} speaks TLS (its first bytes are a TLS handshake record) and this side runs "
            "without --tls: give both sides --tls, or neither",
            conn.peer);
        TellPlainPeer(conn, "this replica runs without TLS: drop --tls, or give it --tls too");
        Fail(conn, Status::Error(ErrorCode::kRefused, text));
        return false;
      }
      Fail(conn, prefix.status().Context(fmt::format("bad frame from {}", conn.peer)));
      return false;
    }
    if (proto::CarriesBlockData(prefix->type) && !(conn.accepted && conn.trusted)) {
      Fail(conn, UnexpectedData(conn.peer, conn.accepted));
      return false;
    }
    if (proto::CarriesBlockData(prefix->type) && prefix->payload_len > pool_->buffer_size()) {
      Fail(conn, Status::Protocol("bad frame from {}: Data payload of {} bytes exceeds the "
                                  "buffer size {}",
                                  conn.peer, prefix->payload_len, pool_->buffer_size()));
      return false;
    }
    conn.rx_prefix = *prefix;
    conn.rx_got = 0;
    if (prefix->payload_len == 0) {
      FrameReceived(conn);
    } else {
      conn.rx_in_payload = true;
    }
    return true;
  }
  if (conn.rx_got < conn.rx_prefix.payload_len) return true;
  conn.rx_in_payload = false;
  conn.rx_got = 0;
  FrameReceived(conn);
  return true;
}

void TcpTransport::FrameReceived(Conn& conn) { ++conn.ready_count; }

void TcpTransport::OnCqe(io::RingOp* ring_op, int32_t res, uint32_t flags) {
  auto* op = static_cast<Op*>(ring_op);
  switch (op->kind) {
    case Op::Kind::kSend:
      OnSend(*op->conn, res, flags);
      if (!op->conn->send_inflight && !op->conn->closing) StartSend(*op->conn);
      break;
    case Op::Kind::kRecv:
      OnRecv(*op->conn, res);
      break;
    case Op::Kind::kAccept:
      OnAccept(*op->listener, res);
      break;
    case Op::Kind::kAcceptRetry:
      op->listener->retry_inflight = false;
      if (!shutting_down_) ArmAccept(*op->listener);
      break;
  }
}

size_t TcpTransport::Drain(Conn& conn, std::span<Completion> out) {
  size_t n = 0;
  // Sends the kernel has taken, in order.
  n += ReportSent(conn.sq, conn.id, out);
  // Frames received (dropped after a local Close: the caller is done with the connection).
  while (n < out.size() && conn.ready_count > 0) {
    ReadyFrame& f = conn.ready[conn.ready_head];
    conn.ready_head = (conn.ready_head + 1) % kReadyCap;
    --conn.ready_count;
    if (conn.local_close) {
      f.data.Reset();
      continue;
    }
    Completion& c = out[n++].Reset();
    c.kind = CompletionKind::kRecv;
    c.conn = conn.id;
    c.header = f.header;
    uint32_t len = proto::DecodePrefix(f.header)->payload_len;
    if (f.data) {
      c.data = std::move(f.data);
      c.control = {};
    } else {
      c.control = std::span<const std::byte>(f.ctrl.data(), len);
    }
    ++conn.ready_lent;
  }
  if (!conn.closing || conn.busy() || conn.ready_count > 0 || conn.sq.has_done()) {
    return n;
  }
  // Closing and idle: cancel what never left, then report the close.
  conn.sq.CancelQueued();
  n += ReportSent(conn.sq, conn.id, out.subspan(n));
  if (n < out.size() && conn.sq.empty()) {
    Completion& c = out[n++].Reset();
    c.kind = CompletionKind::kClosed;
    c.conn = conn.id;
    c.status = conn.close_reason;
    // A payload buffer half-filled for a frame that never completed goes back to the pool.
    conn.ready[(conn.ready_head + conn.ready_count) % kReadyCap].data.Reset();
    Destroy(&conn);
  }
  return n;
}

size_t TcpTransport::Poll(std::span<Completion> out) {
  closed_.clear();  // the caller is done with what the last Poll handed out
  size_t n = 0;
  while (n < out.size() && !accepted_.empty()) {
    Completion& c = out[n++].Reset();
    c.kind = CompletionKind::kAccepted;
    c.conn = accepted_.front();
    accepted_.erase(accepted_.begin());
  }
  // Drain may destroy a connection: walk by index, backwards.
  for (size_t i = conns_.size(); i-- > 0 && n < out.size();) {
    Conn& conn = *conns_[i];
    conn.ready_lent = 0;  // control payloads handed out at the previous Poll are dead now
    bool resume = !conn.closing && !conn.recv_inflight;
    n += Drain(conn, out.subspan(n));
    if (resume && i < conns_.size() && conns_[i].get() == &conn) StartRecv(conn);
  }
  return n;
}

void TcpTransport::Trust(ConnId id) {
  Conn* conn = Find(id);
  if (conn != nullptr && conn->accepted) conn->trusted = true;
}

void TcpTransport::Release(ConnId id, io::BufferRef buffer) {
  buffer.Reset();  // back to the pool; a receive waiting for a buffer resumes at the next Poll
  (void)id;
}

Status TcpTransport::ReceiveEnded(const Conn& conn, int32_t res) const {
  if (conn.send_broken) return conn.send_error;
  if (res < 0) return Status::Errno(-res, fmt::format("receive from {} failed", conn.peer));
  if (!conn.rx_in_payload && conn.rx_got == 0) {
    return Status::Error(ErrorCode::kClosed, fmt::format("{} closed the connection", conn.peer));
  }
  uint32_t total = conn.rx_in_payload ? conn.rx_prefix.payload_len : proto::kHeaderSize;
  return Status::Protocol("{} closed the connection in the middle of a frame {} ({} of {} "
                          "bytes): truncated frame",
                          conn.peer, conn.rx_in_payload ? "payload" : "header", conn.rx_got,
                          total);
}

}  // namespace blkmirror::transport::tcp
