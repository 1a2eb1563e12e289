// DPDK backend, data-path half: Post, Poll, packets in and out, the loop's wakeups. Nothing here
// allocates per packet or per frame: mbufs come from the port's pool, queues were sized when the
// connection was made.
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <rte_mbuf.h>
#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "transport/dpdk/dpdk_internal.h"

namespace blkmirror::transport::dpdk {

size_t DpdkTransport::SendSpace(ConnId id) const {
  Conn* conn = Find(id);
  if (conn == nullptr || conn->closing) return 0;
  if (conn->mode == Conn::Mode::kPlain) return tcp_->SendSpace(id);
  if (conn->mode != Conn::Mode::kDpdk) return 0;
  return conn->channel->SendSpace();
}

Status DpdkTransport::Post(std::span<const WorkItem> items) {
  // All or nothing: every item is checked, and room claimed for the whole batch on each
  // connection's queue, before any is queued.
  const uint64_t batch = ++posts_;
  bool any_plain = false;
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& item = items[i];
    Conn* conn = Find(item.conn);
    if (conn == nullptr || conn->closing ||
        (conn->mode != Conn::Mode::kDpdk && conn->mode != Conn::Mode::kPlain)) {
      return Status::Error(ErrorCode::kClosed,
                           fmt::format("dpdk: connection to {} is closed", PeerName(item.conn)));
    }
    auto checked = CheckWorkItem(item);
    if (!checked.ok()) return checked.status().Context("dpdk");
    if (conn->mode == Conn::Mode::kDpdk) {
      RETURN_IF_ERROR(
          conn->channel->Reserve(batch, item).Context(fmt::format("dpdk: to {}", conn->peer)));
      continue;
    }
    any_plain = true;
    size_t share = 0;
    for (size_t j = 0; j <= i; ++j) share += items[j].conn == item.conn;
    if (share > tcp_->SendSpace(item.conn)) {
      return Status::Error(ErrorCode::kBusy,
                           fmt::format("dpdk: send queue to {} is full", conn->peer));
    }
  }
  // Plain TCP connections' items go to the TCP transport (itself all or nothing).
  for (const WorkItem& item : items) {
    if (any_plain && Find(item.conn)->mode == Conn::Mode::kPlain) {
      RETURN_IF_ERROR(tcp_->Post({&item, 1}));
    }
  }
  const uint64_t now = NowNs();
  bool any_dpdk = false;
  for (const WorkItem& item : items) {
    Conn* conn = Find(item.conn);
    if (conn->mode != Conn::Mode::kDpdk) continue;
    (void)conn->channel->Queue(item);  // room reserved above
    any_dpdk = true;
  }
  if (!any_dpdk) return Status::Ok();
  for (const WorkItem& item : items) {
    Conn* conn = Find(item.conn);
    if (conn->mode == Conn::Mode::kDpdk && conn->channel->Busy()) Transmit(*conn, now);
  }
  ScheduleWake(/*hot=*/true, now);
  return Status::Ok();
}

size_t DpdkTransport::Transmit(Conn& conn, uint64_t now) {
  if (conn.closing || !port_) return 0;
  size_t sent = 0;
  for (;;) {
    const size_t k = conn.channel->Transmit(now, txp_);
    size_t built = 0;
    for (size_t i = 0; i < k; ++i) {
      TxPacket& p = txp_[i];
      // Payload bytes past the frame header go by reference where the port allows; a packet
      // that runs out of mbufs is lost, and resent after the RTO.
      const bool attach = port_->attaches_tx() && p.b.size() >= kAttachMin;
      const size_t copied = p.a.size() + (attach ? 0 : p.b.size());
      rte_mbuf* m = port_->Alloc(static_cast<uint32_t>(kPacketOverhead + copied));
      if (m == nullptr) continue;
      auto* data = rte_pktmbuf_mtod(m, std::byte*);
      std::span<std::byte> a{data + kPacketOverhead, p.a.size()};
      if (!p.a.empty()) std::memcpy(a.data(), p.a.data(), p.a.size());  // none past the header
      std::span<const std::byte> b = p.b;
      if (attach) {
        rte_mbuf* seg = port_->Attach(p.b.data(), static_cast<uint16_t>(p.b.size()));
        if (seg == nullptr || rte_pktmbuf_chain(m, seg) != 0) {
          if (seg != nullptr) rte_pktmbuf_free(seg);
          rte_pktmbuf_free(m);
          continue;
        }
      } else if (!p.b.empty()) {
        std::memcpy(a.data() + a.size(), p.b.data(), p.b.size());
        b = {a.data() + a.size(), p.b.size()};
      }
      p.header.session = conn.peer_session;
      EncodePacket({data, kPacketOverhead}, conn.route, p.header, a, b);
      mbufs_[built++] = m;
    }
    if (built > 0) sent += port_->TxBurst(mbufs_.data(), static_cast<uint16_t>(built));
    if (k < txp_.size()) break;
  }
  return sent;
}

void DpdkTransport::Deliver(rte_mbuf* m, uint64_t now) {
  if (m->nb_segs > 1 && rte_pktmbuf_linearize(m) != 0) {
    ++drops_[static_cast<size_t>(DropReason::kMalformed)];
    rte_pktmbuf_free(m);
    return;
  }
  std::span<const std::byte> bytes{rte_pktmbuf_mtod(m, const std::byte*), m->data_len};
  DecodeResult r = DecodePacket(bytes, local_ip_, udp_port_);
  if (!r.ok) {
    ++drops_[static_cast<size_t>(r.error.reason)];
    if (r.error.reason != DropReason::kNotForUs) {
      spdlog::debug("dpdk: dropped a packet: {}", r.error.status.message());
    }
    rte_pktmbuf_free(m);
    return;
  }
  Conn* target = nullptr;
  for (const auto& c : conns_) {
    if (c->mode == Conn::Mode::kDpdk && !c->closing &&
        c->local_session == r.view.header.session && c->route.dst_ip == r.view.src_ip &&
        c->route.dst_port == r.view.src_port) {
      target = c.get();
      break;
    }
  }
  if (target == nullptr) {
    ++drops_[static_cast<size_t>(DropReason::kUnknownSession)];
  } else {
    target->channel->Receive(now, r.view);
  }
  rte_pktmbuf_free(m);
}

void DpdkTransport::Receive(uint64_t now) {
  if (!port_) return;
  std::array<rte_mbuf*, kBurst> burst;
  // Packets the fault layer held back arrive after this poll's bursts (reordered).
  std::array<rte_mbuf*, kMaxDelayed> held;
  const size_t held_n = delayed_n_;
  std::copy_n(delayed_.begin(), held_n, held.begin());
  delayed_n_ = 0;
  for (int rounds = 0; rounds < 16; ++rounds) {
    const uint16_t got = port_->RxBurst(burst.data(), static_cast<uint16_t>(burst.size()));
    if (got > 0) last_activity_ns_ = now;
    for (uint16_t i = 0; i < got; ++i) {
      rte_mbuf* m = burst[i];
      if (faults_.any()) {
        std::uniform_real_distribution<double> u(0, 1);
        if (u(fault_rng_) < faults_.drop) {
          rte_pktmbuf_free(m);
          continue;
        }
        if (u(fault_rng_) < faults_.corrupt && m->data_len > 0) {
          auto* d = rte_pktmbuf_mtod(m, uint8_t*);
          d[fault_rng_() % m->data_len] ^= uint8_t(1u << (fault_rng_() % 8));
        }
        if (u(fault_rng_) < faults_.dup) {
          rte_mbuf* copy = rte_pktmbuf_copy(m, m->pool, 0, UINT32_MAX);
          if (copy != nullptr) Deliver(copy, now);
        }
        if (u(fault_rng_) < faults_.reorder && delayed_n_ < kMaxDelayed) {
          delayed_[delayed_n_++] = m;
          continue;
        }
      }
      Deliver(m, now);
    }
    // Ack every burst, not once a poll: the sender's clock (RTT, loss detection) runs on acks.
    for (const auto& c : conns_) {
      if (c->mode == Conn::Mode::kDpdk && !c->closing && c->channel->ack_due()) Transmit(*c, now);
    }
    if (got < burst.size()) break;
  }
  for (size_t i = 0; i < held_n; ++i) Deliver(held[i], now);
}

void DpdkTransport::Fail(Conn& conn, Status reason) {
  if (conn.closing) return;
  conn.closing = true;
  conn.close_reason = std::move(reason);
  if (!conn.control_closed) tcp_->Close(conn.id);
}

size_t DpdkTransport::Drain(Conn& conn, std::span<Completion> out) {
  size_t n = 0;
  Channel& ch = *conn.channel;
  const bool local_close = conn.closing && conn.close_reason.ok();
  auto sent = [&](const SendResult& r) {
    if (!r.signal) return;
    Completion& c = out[n++].Reset();
    c.kind = CompletionKind::kSent;
    c.conn = conn.id;
    c.tag = r.tag;
    c.res = r.res;
  };
  ch.TakeAcked(sent, out.size());
  // Frames received (dropped after a local Close: the caller is done with the connection).
  ch.TakeReceived(
      [&](RxFrame& f) {
        if (local_close) {
          f.data.Reset();
          return;
        }
        Completion& c = out[n++].Reset();
        c.kind = CompletionKind::kRecv;
        c.conn = conn.id;
        c.header = f.header;
        if (f.data) {
          c.data = std::move(f.data);
        } else {
          c.control = {f.ctrl.data(), proto::DecodePrefix(f.header)->payload_len};
        }
      },
      out.size() - n);
  if (!conn.closing || ch.ready() > 0 || n == out.size()) return n;
  // Closing: cancel what was never acknowledged, then report the close.
  const bool all = ch.TakeUnacked(sent, out.size() - n - 1);
  if (!all) return n;
  const ChannelStats& st = ch.stats();
  spdlog::info("dpdk: {} closed: {} packets sent ({} retransmitted, {} timeouts), {} received, "
               "dropped: {} stale, {} out of order, {} no room; {}",
               conn.peer, st.packets_sent, st.retransmits, st.timeouts, st.packets_received,
               st.drops[size_t(DropReason::kStale)], st.drops[size_t(DropReason::kOutOfOrder)],
               st.drops[size_t(DropReason::kNoRoom)], ch.Describe());
  Completion& c = out[n++].Reset();
  c.kind = CompletionKind::kClosed;
  c.conn = conn.id;
  c.status = conn.close_reason;
  return n;
}

size_t DpdkTransport::Poll(std::span<Completion> out) {
  closed_.clear();  // the caller is done with what the last Poll handed out
  for (; pending_payloads_lent_ > 0; --pending_payloads_lent_) pending_payloads_.pop_front();
  size_t n = 0;
  while (n < out.size() && !pending_.empty()) {
    Completion& c = pending_.front();
    if (!c.control.empty()) ++pending_payloads_lent_;
    out[n++] = std::move(c);
    pending_.pop_front();
  }
  const uint64_t now = NowNs();
  const uint64_t before = last_activity_ns_;
  Receive(now);
  bool hot = last_activity_ns_ != before;
  // The control connections (and every plain connection): at most two completions each.
  if (out.size() - n >= 2) {
    size_t got = tcp_->Poll(std::span(inner_).first(std::min(inner_.size(), (out.size() - n) / 2)));
    for (size_t i = 0; i < got; ++i) OnControl(inner_[i], out, n, /*stash=*/false);
  }
  // Drain may retire a connection: walk by index, backwards.
  for (size_t i = conns_.size(); i-- > 0;) {
    Conn& conn = *conns_[i];
    if (conn.mode != Conn::Mode::kDpdk) continue;
    Channel& ch = *conn.channel;
    const uint64_t timeouts = ch.stats().timeouts;
    ch.Tick(now);
    if (ch.stats().timeouts != timeouts) {
      spdlog::debug("dpdk: {}: retransmission timeout: {}", conn.peer, ch.Describe());
    }
    if (ch.failed()) Fail(conn, ch.failure());
    if (n < out.size()) {
      const size_t before_n = n;
      n += Drain(conn, out.subspan(n));
      if (n > before_n && out[n - 1].kind == CompletionKind::kClosed &&
          out[n - 1].conn == conn.id) {
        Erase(conn.id);
        continue;
      }
    }
    // Packets in or out keep the loop polling. Waiting for acks does only while few packets
    // are out (a small write waiting for its ack: latency); a bulk sender sleeps on the timer
    // instead, since on two cores a spinning sender starves the receiver that owes the acks.
    hot = Transmit(conn, now) > 0 || hot ||
          (ch.in_flight() > 0 && ch.in_flight() <= kSpinInFlight);
  }
  ScheduleWake(hot, now);
  return n;
}

void DpdkTransport::ScheduleWake(bool hot, uint64_t now) {
  if (!port_ || shutting_down_) return;
  if (hot) last_activity_ns_ = now;
  if (now - last_activity_ns_ < kSpinNs) {
    // Busy-poll: a NOP completes at once, so the loop's next Wait returns and it polls again.
    port_->ArmRxInterrupt(false);
    if (!nop_inflight_) {
      io_uring_prep_nop(ring_.GetSqe(&nop_op_));
      nop_inflight_ = true;
    }
    return;
  }
  // Idle: sleep until a packet (rx interrupt) or the next tick. Without a DPDK connection
  // nothing on the port is ours: no tick at all (a new connection starts over TCP).
  const bool connected = std::any_of(conns_.begin(), conns_.end(), [](const auto& c) {
    return c->mode == Conn::Mode::kDpdk;
  });
  if (!connected) return;
  if (port_->rx_event_fd() >= 0) {
    port_->ArmRxInterrupt(true);
    if (!rx_inflight_) {
      io_uring_prep_poll_add(ring_.GetSqe(&rx_op_), port_->rx_event_fd(), POLLIN);
      rx_inflight_ = true;
    }
  }
  if (!timer_inflight_) {
    auto tick = port_->rx_event_fd() >= 0 ? kIdleTickIntr : kIdleTickNoIntr;
    timer_ts_.tv_sec = 0;
    timer_ts_.tv_nsec = std::chrono::nanoseconds(tick).count();
    io_uring_prep_timeout(ring_.GetSqe(&timer_op_), &timer_ts_, 0, 0);
    timer_inflight_ = true;
  }
}

void DpdkTransport::OnCqe(io::RingOp* ring_op, int32_t res, uint32_t flags) {
  (void)res;
  (void)flags;
  auto* op = static_cast<Op*>(ring_op);
  switch (op->kind) {
    case Op::Kind::kNop:
      nop_inflight_ = false;
      break;
    case Op::Kind::kTimer:
      timer_inflight_ = false;
      break;
    case Op::Kind::kRxEvent: {
      rx_inflight_ = false;
      uint64_t v;
      if (port_ && port_->rx_event_fd() >= 0) (void)!read(port_->rx_event_fd(), &v, sizeof(v));
      break;
    }
  }
}

void DpdkTransport::Release(ConnId id, io::BufferRef buffer) {
  buffer.Reset();  // back to the pool; a frame waiting for one is resent by its sender
  (void)id;
}

void DpdkTransport::Trust(ConnId id) {
  Conn* conn = Find(id);
  if (conn == nullptr) return;
  if (conn->mode == Conn::Mode::kPlain) return tcp_->Trust(id);
  if (conn->channel) conn->channel->Trust();
}

void DpdkTransport::Close(ConnId id) {
  Conn* conn = Find(id);
  if (conn == nullptr) return;
  if (conn->mode == Conn::Mode::kPlain) return tcp_->Close(id);
  if (conn->mode != Conn::Mode::kDpdk) {
    tcp_->Close(id);
    return Erase(id);
  }
  Fail(*conn, Status());
}

}  // namespace blkmirror::transport::dpdk
