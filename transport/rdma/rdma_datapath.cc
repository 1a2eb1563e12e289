// RDMA backend, data-path half: Post, Poll, Release, and the work completions of sends and
// receives. Nothing here allocates: every queue, WR array and ring was sized when its
// connection was set up (rdma_transport.cc).
#include <arpa/inet.h>
#include <spdlog/spdlog.h>

#include <cassert>
#include <cstring>
#include <optional>

#include "common/clock.h"
#include "transport/rdma/rdma_internal.h"

namespace blkmirror::transport::rdma {
namespace {

Status WcError(const Conn& c, const ibv_wc& wc, bool send) {
  int err = EIO;
  std::string_view hint;
  switch (wc.status) {
    case IBV_WC_RETRY_EXC_ERR:
      err = ETIMEDOUT;
      hint =
          " (the peer stopped acknowledging: it is down or unreachable, or its packets are "
          "dropped, e.g. by an MTU mismatch on the path)";
      break;
    case IBV_WC_RNR_RETRY_EXC_ERR:
      err = ETIMEDOUT;
      hint = " (the peer had no receive posted)";
      break;
    case IBV_WC_REM_ACCESS_ERR:
      err = EACCES;
      hint =
          " (the peer refused the RDMA write: a slot outside its registered pool, or a "
          "stale rkey)";
      break;
    case IBV_WC_REM_INV_REQ_ERR:
      hint = " (the peer's receive buffer is too small for the frame)";
      break;
    case IBV_WC_LOC_LEN_ERR:
    case IBV_WC_LOC_PROT_ERR:
      hint = " (a local buffer outside the registered memory: a bug)";
      break;
    default:
      break;
  }
  return Status::Error(static_cast<ErrorCode>(err),
                       fmt::format("RDMA {} on the connection to {} failed: {} (wc status {}, "
                                   "vendor error 0x{:x}){} [{}]",
                                   send ? "send" : "receive", c.peer, ibv_wc_status_str(wc.status),
                                   static_cast<int>(wc.status), wc.vendor_err, hint, c.path));
}


}  // namespace

Conn* RdmaTransport::Find(ConnId id) const {
  for (const auto& c : conns_) {
    if (c->id == id) return c.get();
  }
  return nullptr;
}

void RdmaTransport::Fail(Conn& c, Status reason) {
  if (c.closing) return;
  c.closing = true;
  c.close_reason = std::move(reason);
  if (!c.close_reason.ok()) spdlog::debug("rdma: {}: {}", c.peer, c.close_reason.message());
  RequestWake();  // the next Poll tears the QP down and reports the close
}

void RdmaTransport::Abort(Conn& c, Status reason) {
  if (c.closing) return;
  c.rx_stopped = true;
  Fail(c, std::move(reason));
}

size_t RdmaTransport::SendSpace(ConnId id) const {
  Conn* c = Find(id);
  if (c == nullptr || c->closing) return 0;
  return c->sq.space();
}

Status RdmaTransport::Post(std::span<const WorkItem> items) {
  // Check the whole batch first, room included (frames to one connection add up): all or
  // nothing.
  const uint64_t batch = ++posts_;
  for (const WorkItem& item : items) {
    Conn* c = Find(item.conn);
    if (c == nullptr || c->closing || !c->announced) {
      return Status::Error(ErrorCode::kClosed,
                           fmt::format("rdma: connection to {} is closed", PeerName(item.conn)));
    }
    auto checked = CheckWorkItem(item);
    if (!checked.ok()) return checked.status().Context("rdma");
    const proto::Prefix& prefix = *checked;
    if (proto::CarriesBlockData(prefix.type)) {
      const ConnectInfo& p = c->peer_info;
      if (p.max_slots == 0) {
        return Status::Invalid(
            "rdma: {} advertises no receive slots: Data frames go from the "
            "connecting side to the accepting side only",
            c->peer);
      }
      if (uint64_t{prefix.payload_len} + proto::kHeaderSize > p.slot_size) {
        return Status::Invalid(
            "rdma: a Data frame of {} bytes does not fit {}'s receive "
            "buffers ({} bytes, {} of them for the header)",
            prefix.payload_len, c->peer, p.slot_size, proto::kHeaderSize);
      }
      if (prefix.payload_len > 0 &&
          (item.data == nullptr || !pool_->Contains(item.data, prefix.payload_len))) {
        return Status::Invalid("rdma: a Data payload must lie in the registered buffer pool");
      }
    }
    Status room = c->sq.Reserve(batch, item);
    if (!room.ok()) return room.Context(fmt::format("rdma: to {}", c->peer));
  }
  for (const WorkItem& item : items) {
    SendEntry* queued = Find(item.conn)->sq.Push(item);
    assert(queued != nullptr);  // reserved above
    (void)queued;
  }
  posted_ = posted_ || !items.empty();  // an answer may follow soon: keep polling
  // One ibv_post_send per connection for what can go now.
  for (size_t i = 0; i < items.size(); ++i) {
    bool last = true;
    for (size_t j = i + 1; j < items.size() && last; ++j) last = items[j].conn != items[i].conn;
    if (last) Pump(*Find(items[i].conn));
  }
  return Status::Ok();
}

bool RdmaTransport::CreditDue(const Conn& c) const {
  return !c.grants_pending.empty() || c.rx_owed >= c.credit_threshold() ||
         (c.peer_starved && c.rx_owed > 0);
}

// The last message credit is kept for credit messages; taking it, a credit message must return
// something (so that the peer, answering the "starved" flag, can send its own).
bool RdmaTransport::CanSendCredit(const Conn& c) const {
  return c.tx_credits >= 2 || (c.tx_credits == 1 && c.rx_owed > 0);
}

ibv_send_wr& RdmaTransport::NextWr(Conn& c, size_t n, uint64_t entries_after, uint32_t* index) {
  uint64_t seq = c.wr_posted++;
  auto idx = static_cast<uint32_t>(seq % kSendDepth);
  c.wrs[idx] = WrInfo{seq, entries_after};
  ibv_send_wr& wr = c.swr[n];
  wr = ibv_send_wr{};
  wr.wr_id = MakeWrId(WrKind::kSend, idx);
  wr.sg_list = &c.ssge[2 * n];
  if (++c.unsignaled >= kSignalEvery) {
    wr.send_flags = IBV_SEND_SIGNALED;
    c.unsignaled = 0;
  }
  *index = idx;
  return wr;
}

void RdmaTransport::BuildCredit(Conn& c, size_t n) {
  uint32_t idx = 0;
  ibv_send_wr& wr = NextWr(c, n, c.sq_posted, &idx);
  std::byte* p = c.send_slot(idx);
  auto count = static_cast<uint32_t>(std::min<size_t>(c.grants_pending.size(), kMaxGrantsPerMsg));
  const bool starved = c.tx_credits == 1;
  // The first grants carry the region they point into (only trusted connections have grants).
  const bool region = count > 0 && !c.region_sent;
  StoreLe<uint32_t>(p, c.rx_owed);
  StoreLe<uint16_t>(p + 4, static_cast<uint16_t>((starved ? kCreditStarved : 0) |
                                                 (region ? kCreditRegion : 0)));
  StoreLe<uint16_t>(p + 6, static_cast<uint16_t>(count));
  size_t off = kCreditHeaderSize;
  if (region) {
    StoreLe<uint32_t>(p + off, c.slot_rkey);
    StoreLe<uint32_t>(p + off + 4, 0);
    StoreLe<uint64_t>(p + off + 8, reinterpret_cast<uint64_t>(pool_->base()));
    off += kRegionSize;
    c.region_sent = true;
  }
  for (uint32_t i = 0; i < count; ++i) {
    uint32_t s = c.grants_pending[i];
    StoreLe<uint32_t>(p + off + kGrantSize * i, s);
    StoreLe<uint32_t>(p + off + kGrantSize * i + 4, c.slots[s].buffer.index());
    c.slots[s].announced = true;
  }
  c.grants_pending.erase(c.grants_pending.begin(), c.grants_pending.begin() + count);
  ibv_sge& sge = c.ssge[2 * n];
  sge.addr = reinterpret_cast<uintptr_t>(p);
  sge.length = static_cast<uint32_t>(off + kGrantSize * count);
  sge.lkey = c.area_mr->lkey;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND_WITH_IMM;
  wr.imm_data = htonl(kCreditImm);
  c.tx_credits -= 1;
  c.rx_owed = 0;
  c.peer_starved = false;
}

void RdmaTransport::BuildFrame(Conn& c, SendEntry& e, size_t n) {
  uint32_t idx = 0;
  ibv_send_wr& wr = NextWr(c, n, c.sq_posted + 1, &idx);
  std::byte* header = c.send_slot(idx);
  std::memcpy(header, e.header.data(), proto::kHeaderSize);
  ibv_sge* sge = &c.ssge[2 * n];
  int k = 0;
  if (e.data) {
    if (c.corrupt_next_header) {
      header[0] ^= std::byte{0xff};
      c.corrupt_next_header = false;
    }
    RemoteSlot slot = c.remote[c.remote_head];
    c.remote_head = (c.remote_head + 1) % c.remote.size();
    --c.remote_count;
    c.remote_held[slot.slot] = 0;
    // Payload first, header behind it: one write lands both contiguously in the slot.
    if (e.payload_len > 0) {
      sge[k++] = ibv_sge{reinterpret_cast<uintptr_t>(e.payload), e.payload_len, c.pool_lkey};
    }
    sge[k++] = ibv_sge{reinterpret_cast<uintptr_t>(header), proto::kHeaderSize, c.area_mr->lkey};
    wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
    wr.wr.rdma.remote_addr = slot.addr;
    wr.wr.rdma.rkey = c.peer_info.slot_rkey;
    wr.imm_data = htonl(DataImm(slot.slot, c.tx_data_seq++));
  } else {
    sge[k++] = ibv_sge{reinterpret_cast<uintptr_t>(header), proto::kHeaderSize, c.area_mr->lkey};
    if (e.payload_len > 0) {
      sge[k++] = ibv_sge{reinterpret_cast<uintptr_t>(e.payload), e.payload_len, c.area_mr->lkey};
    }
    wr.opcode = IBV_WR_SEND;
  }
  wr.num_sge = k;
  c.tx_credits -= 1;
}

// Posts what may go now, in order: credit messages first, then queued frames while there is
// send-queue room, a message credit to spare, and (Data) a granted slot.
void RdmaTransport::Pump(Conn& c) {
  if (c.closing || !c.established || c.qp.get() == nullptr) return;
  for (;;) {
    size_t n = 0;
    while (n < kMaxPostBatch && c.wr_space() > n && CreditDue(c) && CanSendCredit(c)) {
      BuildCredit(c, n++);
    }
    while (n < kMaxPostBatch && c.sq_posted < c.sq.tail() && c.wr_space() > n + 1 &&
           c.tx_credits >= 2) {
      SendEntry& e = c.sq.at(c.sq_posted);
      if (e.data && c.remote_count == 0) break;  // waits for a slot; what follows waits too
      BuildFrame(c, e, n++);
      ++c.sq_posted;
    }
    if (n == 0) return;
    for (size_t i = 0; i + 1 < n; ++i) c.swr[i].next = &c.swr[i + 1];
    c.swr[n - 1].next = nullptr;
    if (!(c.swr[n - 1].send_flags & IBV_SEND_SIGNALED)) {
      c.swr[n - 1].send_flags |= IBV_SEND_SIGNALED;
      c.unsignaled = 0;
    }
    ibv_send_wr* bad = nullptr;
    int rc = ibv_post_send(c.qp.get(), c.swr.data(), &bad);
    if (rc != 0) {
      Abort(c, Status::Errno(rc, fmt::format("ibv_post_send to {}", c.peer)));
      return;
    }
    if (n < kMaxPostBatch) return;
  }
}

void RdmaTransport::PostReceives(Conn& c) {
  if (c.repost.empty()) return;
  if (c.closing || c.qp.get() == nullptr) {
    c.repost.clear();
    return;
  }
  const size_t n = c.repost.size();
  for (size_t i = 0; i < n; ++i) {
    uint32_t idx = c.repost[i];
    c.rsge[i] =
        ibv_sge{reinterpret_cast<uintptr_t>(c.recv_buf(idx)), kRecvBufSize, c.area_mr->lkey};
    c.rwr[i] = ibv_recv_wr{};
    c.rwr[i].wr_id = MakeWrId(WrKind::kRecv, idx);
    c.rwr[i].next = i + 1 < n ? &c.rwr[i + 1] : nullptr;
    c.rwr[i].sg_list = &c.rsge[i];
    c.rwr[i].num_sge = 1;
  }
  ibv_recv_wr* bad = nullptr;
  int rc = ibv_post_recv(c.qp.get(), c.rwr.data(), &bad);
  c.repost.clear();
  if (rc != 0) {
    Abort(c, Status::Errno(rc, fmt::format("ibv_post_recv for {}", c.peer)));
    return;
  }
  c.rx_owed += static_cast<uint32_t>(n);
}

size_t RdmaTransport::DrainCq(Conn& c) {
  if (!c.cq) return 0;
  std::array<ibv_wc, kCqBatch> wc;
  size_t handled = 0;
  for (;;) {
    int n = ibv_poll_cq(c.cq.get(), kCqBatch, wc.data());
    if (n < 0) {
      Abort(c, Status::Error(static_cast<ErrorCode>(EIO),
                             fmt::format("ibv_poll_cq failed on the connection to {}", c.peer)));
      break;
    }
    for (int i = 0; i < n; ++i) OnWc(c, wc[static_cast<size_t>(i)]);
    handled += static_cast<size_t>(n);
    if (n < kCqBatch) break;
  }
  PostReceives(c);
  return handled;
}

void RdmaTransport::OnWc(Conn& c, const ibv_wc& wc) {
  const auto kind = static_cast<WrKind>(wc.wr_id >> 32);
  const auto idx = static_cast<uint32_t>(wc.wr_id);
  if (wc.status != IBV_WC_SUCCESS) {
    if (c.closing) return;  // the rest of a teardown
    if (wc.status == IBV_WC_WR_FLUSH_ERR) {
      // Teardown in progress without a reason seen yet (the CM event may follow).
      Abort(c, Status::Error(ErrorCode::kClosed,
                             fmt::format("connection to {} was torn down (work requests "
                                         "flushed)",
                                         c.peer)));
      return;
    }
    Abort(c, WcError(c, wc, kind == WrKind::kSend));
    return;
  }
  if (kind == WrKind::kSend) {
    if (idx >= kSendDepth) return;
    // A signaled completion: this WR and every WR before it on the QP are done.
    const WrInfo& w = c.wrs[idx];
    c.wr_done = std::max(c.wr_done, w.seq + 1);
    c.sq.MarkDone(w.entries_after);
    return;
  }
  if (kind != WrKind::kRecv || idx >= c.rq_depth || c.local_close || c.rx_stopped) return;
  switch (wc.opcode) {
    case IBV_WC_RECV_RDMA_WITH_IMM:
      OnDataWritten(c, idx, ntohl(wc.imm_data), wc.byte_len);
      return;
    case IBV_WC_RECV:
      if (wc.wc_flags & IBV_WC_WITH_IMM) {
        OnCredit(c, idx, ntohl(wc.imm_data), wc.byte_len);
      } else {
        OnControl(c, idx, wc.byte_len);
      }
      return;
    default:
      Abort(c, Status::Protocol("unexpected receive completion (opcode {}) from {}",
                                static_cast<int>(wc.opcode), c.peer));
      return;
  }
}

void RdmaTransport::OnDataWritten(Conn& c, uint32_t recv_index, uint32_t imm, uint32_t byte_len) {
  if (c.role != Role::kAccepted) {
    return Abort(c,
                 Status::Protocol("{} wrote a Data frame, but this side granted no slots", c.peer));
  }
  const uint32_t s = ImmSlot(imm);
  if (s >= c.slots.size() || !c.slots[s].granted || !c.slots[s].announced) {
    return Abort(
        c, Status::Protocol("{} wrote into RDMA slot {}, which it was not granted", c.peer, s));
  }
  if (ImmSeq(imm) != SeqBits(c.rx_data_seq)) {
    return Abort(c, Status::Protocol("Data frame #{} from {} carries sequence bits 0x{:x}, "
                                     "expected 0x{:x}: frames lost or reordered",
                                     c.rx_data_seq, c.peer, ImmSeq(imm), SeqBits(c.rx_data_seq)));
  }
  Slot& slot = c.slots[s];
  if (byte_len < proto::kHeaderSize || byte_len > slot.buffer.capacity()) {
    return Abort(c, Status::Protocol("bad frame from {}: an RDMA write of {} bytes into slot "
                                     "{} (buffers hold {})",
                                     c.peer, byte_len, s, slot.buffer.capacity()));
  }
  Ready r;
  std::memcpy(r.header.data(), slot.buffer.data() + byte_len - proto::kHeaderSize,
              proto::kHeaderSize);
  auto prefix = proto::DecodePrefix(r.header);
  if (!prefix.ok()) {
    return Abort(
        c, prefix.status().Context(fmt::format("bad frame from {} in RDMA slot {}", c.peer, s)));
  }
  if (!proto::CarriesBlockData(prefix->type)) {
    return Abort(c, Status::Protocol("bad frame from {}: a {} frame arrived by RDMA write", c.peer,
                                     proto::FrameTypeName(prefix->type)));
  }
  if (prefix->payload_len != byte_len - proto::kHeaderSize) {
    return Abort(c, Status::Protocol("bad frame from {}: the Data header says {} payload "
                                     "bytes, the RDMA write carried {}",
                                     c.peer, prefix->payload_len, byte_len - proto::kHeaderSize));
  }
  ++c.rx_data_seq;
  r.data = std::move(slot.buffer);
  r.recv_index = recv_index;
  r.payload_len = prefix->payload_len;
  r.is_data = true;
  slot.granted = false;
  slot.announced = false;
  c.idle_slots.push_back(s);
  PushReady(c, std::move(r));
}

void RdmaTransport::OnControl(Conn& c, uint32_t recv_index, uint32_t byte_len) {
  if (byte_len < proto::kHeaderSize) {
    return Abort(
        c, Status::Protocol("truncated frame from {}: a message of {} bytes", c.peer, byte_len));
  }
  Ready r;
  std::memcpy(r.header.data(), c.recv_buf(recv_index), proto::kHeaderSize);
  auto prefix = proto::DecodePrefix(r.header);
  if (!prefix.ok()) {
    return Abort(c, prefix.status().Context(fmt::format("bad frame from {}", c.peer)));
  }
  if (proto::CarriesBlockData(prefix->type)) {
    return Abort(c, Status::Protocol("bad frame from {}: a Data frame arrived as a SEND", c.peer));
  }
  if (prefix->payload_len != byte_len - proto::kHeaderSize) {
    return Abort(c, Status::Protocol("truncated frame from {}: the {} header says {} payload "
                                     "bytes, {} arrived",
                                     c.peer, proto::FrameTypeName(prefix->type),
                                     prefix->payload_len, byte_len - proto::kHeaderSize));
  }
  r.recv_index = recv_index;
  r.payload_len = prefix->payload_len;
  r.is_data = false;
  PushReady(c, std::move(r));
}

void RdmaTransport::OnCredit(Conn& c, uint32_t recv_index, uint32_t imm, uint32_t byte_len) {
  c.repost.push_back(recv_index);  // read below, before the repost at the end of the drain
  const std::byte* p = c.recv_buf(recv_index);
  if (imm != kCreditImm || byte_len < kCreditHeaderSize) {
    return Abort(c, Status::Protocol("bad credit message from {} (imm 0x{:08x}, {} bytes)", c.peer,
                                     imm, byte_len));
  }
  const auto returned = LoadLe<uint32_t>(p);
  const auto flags = LoadLe<uint16_t>(p + 4);
  const auto count = LoadLe<uint16_t>(p + 6);
  const size_t off = kCreditHeaderSize + ((flags & kCreditRegion) ? kRegionSize : 0);
  if (byte_len < off + size_t{kGrantSize} * count) {
    return Abort(c, Status::Protocol("bad credit message from {}: {} grants{} in {} bytes", c.peer,
                                     count, (flags & kCreditRegion) ? " and a region" : "",
                                     byte_len));
  }
  if (uint64_t{c.tx_credits} + returned > c.peer_info.rq_depth) {
    return Abort(c, Status::Protocol("{} returned {} message credits, more than it gave ({} "
                                     "held, {} posted)",
                                     c.peer, returned, c.tx_credits, c.peer_info.rq_depth));
  }
  c.tx_credits += returned;
  if (flags & kCreditStarved) c.peer_starved = true;
  ConnectInfo& info = c.peer_info;
  if (flags & kCreditRegion) {
    const auto rkey = LoadLe<uint32_t>(p + kCreditHeaderSize);
    const auto base = LoadLe<uint64_t>(p + kCreditHeaderSize + 8);
    if (info.max_slots == 0 || info.slot_base != 0 || base == 0 ||
        uint64_t{info.slot_size} * info.slot_count > UINT64_MAX - base) {
      return Abort(c, Status::Protocol("bad slot region from {}: base 0x{:x}, {} x {} bytes{}",
                                       c.peer, base, info.slot_count, info.slot_size,
                                       info.slot_base != 0 ? ", announced twice"
                                       : info.max_slots == 0 ? ", but it has no slots"
                                                             : ""));
    }
    info.slot_rkey = rkey;
    info.slot_base = base;
  }
  for (uint32_t i = 0; i < count; ++i) {
    const auto s = LoadLe<uint32_t>(p + off + kGrantSize * i);
    const auto buffer = LoadLe<uint32_t>(p + off + kGrantSize * i + 4);
    if (info.slot_base == 0 || s >= info.max_slots || buffer >= info.slot_count ||
        c.remote_held[s] != 0) {
      return Abort(
          c, Status::Protocol("bad slot grant from {}: slot {} (of {}), buffer {} (of "
                              "{}){}",
                              c.peer, s, info.max_slots, buffer, info.slot_count,
                              info.slot_base != 0 && s < info.max_slots && c.remote_held[s] != 0
                                  ? ", granted twice"
                                  : ""));
    }
    c.remote[(c.remote_head + c.remote_count) % c.remote.size()] =
        RemoteSlot{s, info.slot_base + uint64_t{buffer} * info.slot_size};
    ++c.remote_count;
    c.remote_held[s] = 1;
  }
}

void RdmaTransport::PushReady(Conn& c, Ready&& r) {
  if (c.ready_count == c.ready.size()) {
    // Cannot happen: every ready frame holds one of the rq_depth receive WQEs.
    return Abort(c, Status::Protocol("receive queue overrun from {}", c.peer));
  }
  c.ready[(c.ready_head + c.ready_count) % c.ready.size()] = std::move(r);
  ++c.ready_count;
}

void RdmaTransport::OnCqEvents(Device& d) {
  for (;;) {
    ibv_cq* cq = nullptr;
    void* context = nullptr;
    if (ibv_get_cq_event(d.channel.get(), &cq, &context) != 0) return;  // EAGAIN: drained
    ibv_ack_cq_events(cq, 1);
    static_cast<Conn*>(context)->cq_armed = false;  // Poll re-arms, then drains the CQ
  }
}

size_t RdmaTransport::Drain(Conn& c, std::span<Completion> out) {
  if (!c.announced) {
    // Never reported to the engine (an accept that failed before kAccepted): goes silently.
    if (c.closing) {
      Teardown(c);
      Bury(c);
    }
    return 0;
  }
  size_t n = 0;
  // Sends the NIC has finished, in order.
  n += ReportSent(c.sq, c.id, out.subspan(n));
  // Frames received (dropped after a local Close: the caller is done with the connection).
  while (n < out.size() && c.ready_count > 0) {
    Ready& r = c.ready[c.ready_head];
    c.ready_head = (c.ready_head + 1) % c.ready.size();
    --c.ready_count;
    if (c.local_close) {
      r.data.Reset();
      continue;
    }
    Completion& x = out[n++].Reset();
    x.kind = CompletionKind::kRecv;
    x.conn = c.id;
    x.header = r.header;
    if (r.is_data) {
      x.data = std::move(r.data);
      c.repost.push_back(r.recv_index);  // a Data frame's WQE carried no bytes: post it now
    } else {
      x.control =
          std::span<const std::byte>(c.recv_buf(r.recv_index) + proto::kHeaderSize, r.payload_len);
      c.lent.push_back(r.recv_index);  // valid until the next Poll
    }
  }
  if (!c.closing || !c.torn_down || c.ready_count > 0 || c.sq.has_done()) return n;
  // Closed and torn down: cancel what never completed (-ECANCELED), then report the close.
  c.sq.CancelQueued();
  n += ReportSent(c.sq, c.id, out.subspan(n));
  if (n < out.size() && c.sq.empty()) {
    Completion& x = out[n++].Reset();
    x.kind = CompletionKind::kClosed;
    x.conn = c.id;
    x.status = c.close_reason;
    Bury(c);  // freed at the next Poll: control spans handed out just now stay valid
  }
  return n;
}

size_t RdmaTransport::Poll(std::span<Completion> out) {
  const uint64_t now = NowNs();
  // Busy-polling (the last Poll left a NOP in the ring): drain without arming. Otherwise the loop
  // may sleep after this Poll: arm first, then drain, so that a completion after the drain
  // raises an event (and wakes the ring).
  const bool spinning = now < spin_until_ns_;
  CollectRemains();  // the caller is done with what the last Poll handed out
  HandleCmEvents();
  size_t handled = 0;
  for (auto& cp : conns_) {
    Conn& c = *cp;
    if (c.torn_down) continue;
    // Control payloads handed out at the last Poll are dead now: their receives go back.
    c.repost.insert(c.repost.end(), c.lent.begin(), c.lent.end());
    c.lent.clear();
    if (!spinning && !c.cq_armed && ibv_req_notify_cq(c.cq.get(), 0) == 0) c.cq_armed = true;
    handled += DrainCq(c);
  }
  for (auto& cp : conns_) {
    Conn& c = *cp;
    if (c.closing && !c.torn_down) Teardown(c);
    if (c.role == Role::kAccepted && c.established && !c.closing) TopUpSlots(c);
  }
  size_t n = 0;
  while (n < out.size() && !accepted_.empty()) {
    ConnId id = accepted_.front();
    accepted_.erase(accepted_.begin());
    Conn* c = Find(id);
    if (c == nullptr || c->closing) continue;
    c->announced = true;
    Completion& x = out[n++].Reset();
    x.kind = CompletionKind::kAccepted;
    x.conn = id;
  }
  // Drain may bury a connection: walk by index, backwards.
  for (size_t i = conns_.size(); i-- > 0 && n < out.size();) {
    n += Drain(*conns_[i], out.subspan(n));
  }
  bool wake = false;
  for (auto& cp : conns_) {
    Conn& c = *cp;
    PostReceives(c);
    Pump(c);
    // Receives lent to the caller return at the next Poll; if the peer may be waiting for
    // their credits, make sure that Poll comes soon.
    if (!c.lent.empty() && c.lent.size() + c.rx_owed >= c.credit_threshold()) wake = true;
  }
  if (wake) RequestWake();
  ArmCmPoll();
  for (auto& d : devices_) ArmDevicePoll(*d);
  UpdatePolling(now, spinning, handled > 0 || n > 0);
  return n;
}

// Traffic (work completions, frames delivered or posted) keeps the transport busy-polling for
// the budget, and sends outstanding on the NIC keep it polling until their completion comes, up
// to kMaxOutstandingSpinNs after the last traffic. While it polls, the loop must not sleep: a NOP
// in the ring makes its next Ring::Wait return at once (the loop then calls Poll again). A Poll
// that drained without arming (`spinning`) cannot let the loop sleep either: one more Poll arms
// the CQs and drains them before it may.
void RdmaTransport::UpdatePolling(uint64_t now, bool spinning, bool traffic) {
  if (traffic || posted_) traffic_ns_ = now;
  posted_ = false;
  polling_ = false;
  spin_until_ns_ = 0;
  // Only a live connection is worth polling for: the last frames and flushes of connections
  // that close (a process shutting down) let the loop sleep.
  bool live = false, outstanding = false;
  for (const auto& cp : conns_) {
    const Conn& c = *cp;
    if (!c.established || c.closing) continue;
    live = true;
    outstanding = outstanding || c.wr_posted > c.wr_done;
  }
  if (poll_budget_ns_ > 0 && !shutting_down_ && live) {
    spin_until_ns_ = traffic_ns_ + poll_budget_ns_;
    if (outstanding && now < traffic_ns_ + kMaxOutstandingSpinNs) {
      spin_until_ns_ = std::max(spin_until_ns_,
                                std::min(now + poll_budget_ns_, traffic_ns_ + kMaxOutstandingSpinNs));
    }
    polling_ = now < spin_until_ns_;
  }
  polling_ = polling_ || spinning;
  if (polling_) RequestWake();
}

bool RdmaTransport::TEST_Polling() const { return polling_; }

void RdmaTransport::Release(ConnId id, io::BufferRef buffer) {
  if (!buffer) return;
  Conn* c = Find(id);
  if (c == nullptr || c->closing || c->role != Role::kAccepted || !c->trusted ||
      buffer.pool() != pool_ || c->idle_slots.empty()) {
    buffer.Reset();  // back to the pool
    return;
  }
  // The buffer becomes a slot again; the grant goes out with the loop's next Submit/Wait.
  GrantSlot(*c, std::move(buffer));
  RequestWake();
}

}  // namespace blkmirror::transport::rdma
