#include "transport/dpdk/channel.h"

#include <algorithm>
#include <bit>
#include <cstring>

namespace blkmirror::transport::dpdk {
namespace {

constexpr double kMinCwnd = 4;

}  // namespace

Channel::Channel(ChannelConfig config, io::BufferPool* pool, bool accepted, std::string peer)
    : config_(config), pool_(pool), accepted_(accepted), peer_(std::move(peer)) {
  sq_.Init(std::max<uint32_t>(config_.send_queue_depth, 1), kCtrlRingBytes);
  meta_.resize(sq_.capacity());
  // Sequence numbers wrap at 2^32: the ring of packets in flight is a power of two so that
  // `seq % size` stays continuous across the wrap.
  inflight_.resize(std::bit_ceil(std::max<uint32_t>(config_.max_window, kSackBits + 1)));
  config_.max_window = static_cast<uint32_t>(inflight_.size());
  cwnd_ = std::min<double>(config_.initial_cwnd, config_.max_window);
  ssthresh_ = config_.max_window;
  resend_.reserve(inflight_.size());
  peer_credit_ = static_cast<uint32_t>(kRxReady);  // what every fresh receiver can take
  credit_sent_ = Credit();
}

void Channel::Fail(Status reason) {
  if (failure_.ok()) failure_ = std::move(reason);
}

uint32_t Channel::Credit() const { return rx_head_ + static_cast<uint32_t>(kRxReady); }

bool Channel::Queue(const WorkItem& item) {
  if (sq_.Push(item) == nullptr) return false;
  MetaAt(sq_.tail() - 1) = FrameTx{};
  return true;
}

void Channel::FillAck(RelHeader& h) const {
  h.ack = rcv_nxt_;
  h.sack = rcv_seen_.words[0];
  h.credit = Credit();
  h.high = rcv_high_;
}

TxPacket Channel::MakePacket(uint32_t seq, const Inflight& slot) {
  const SendEntry& f = sq_.at(slot.frame);
  TxPacket p;
  p.header.kind = PacketKind::kData;
  p.header.seq = seq;
  p.header.frame_no = Wire(slot.frame);
  p.header.frame_off = slot.frame_off;
  p.header.frame_len = static_cast<uint32_t>(proto::kHeaderSize) + f.payload_len;
  p.header.payload_len = static_cast<uint16_t>(slot.len);
  FillAck(p.header);
  uint32_t off = slot.frame_off;
  uint32_t end = off + slot.len;
  if (off < proto::kHeaderSize) {
    uint32_t h_end = std::min<uint32_t>(end, proto::kHeaderSize);
    p.a = {f.header.data() + off, h_end - off};
    off = h_end;
  }
  if (off < end) {
    p.b = {f.payload + (off - proto::kHeaderSize), end - off};
  }
  return p;
}

size_t Channel::Transmit(uint64_t now_ns, std::span<TxPacket> out) {
  if (failed()) return 0;
  size_t n = 0;
  // Retransmissions first: they hold the receiver's frame back.
  while (n < out.size() && resend_pos_ < resend_.size()) {
    uint32_t seq = resend_[resend_pos_++];
    Inflight& slot = SlotAt(seq);
    slot.due = false;
    if (Before(seq, snd_una_) || !Before(seq, snd_nxt_) || slot.sacked) continue;
    out[n++] = MakePacket(seq, slot);
    slot.sent_ns = now_ns;
    slot.order = ++sends_;
    slot.resent = true;
    ++stats_.retransmits;
  }
  if (resend_pos_ == resend_.size()) {
    resend_.clear();
    resend_pos_ = 0;
  }
  // New packets, within the congestion window and the receiver's frame credit.
  const uint32_t window = std::min<uint32_t>(static_cast<uint32_t>(cwnd_), config_.max_window);
  bool credit_blocked = false;
  while (n < out.size() && tx_started_ != sq_.tail() && snd_nxt_ - snd_una_ < window) {
    const uint32_t frame_len =
        static_cast<uint32_t>(proto::kHeaderSize) + sq_.at(tx_started_).payload_len;
    if (tx_off_ == 0) {
      if (!Before(Wire(tx_started_), peer_credit_)) {
        credit_blocked = true;
        break;
      }
      MetaAt(tx_started_) = FrameTx{snd_nxt_, (frame_len + config_.chunk - 1) / config_.chunk};
    }
    Inflight& slot = SlotAt(snd_nxt_);
    slot = Inflight{tx_started_, tx_off_, std::min(config_.chunk, frame_len - tx_off_), now_ns,
                    ++sends_};
    out[n++] = MakePacket(snd_nxt_, slot);
    ++snd_nxt_;
    tx_off_ += slot.len;
    if (tx_off_ == frame_len) {
      ++tx_started_;
      tx_off_ = 0;
    }
  }
  if (credit_blocked && snd_una_ == snd_nxt_ && n < out.size() &&
      now_ns - probe_ns_ >= rto_ns_) {
    // Blocked on frame credit with nothing in flight: ask for the receiver's credit again.
    TxPacket& p = out[n++];
    p = TxPacket{};
    p.header.kind = PacketKind::kProbe;
    FillAck(p.header);
    probe_ns_ = now_ns;
  } else if (n == 0 && (ack_due_ || (credit_dirty_ && Credit() != credit_sent_)) &&
             !out.empty()) {
    TxPacket& p = out[n++];
    p = TxPacket{};
    p.header.kind = PacketKind::kAck;
    FillAck(p.header);
  }
  if (n > 0) {
    ack_due_ = false;
    credit_dirty_ = false;
    credit_sent_ = Credit();
  }
  stats_.packets_sent += n;
  return n;
}

void Channel::OnAck(uint64_t now_ns, const RelHeader& h) {
  if (Before(peer_credit_, h.credit) && h.credit - Wire(sq_.head()) <= sq_.capacity() + kRxReady) {
    peer_credit_ = h.credit;
    last_progress_ns_ = now_ns;
  }
  // An ack of packets never sent is a broken or hostile peer's: ignored.
  if (Before(h.ack, snd_una_) || Before(snd_nxt_, h.ack)) return;
  if (Before(snd_una_, h.ack)) {
    const uint32_t acked = h.ack - snd_una_;
    const Inflight& last = SlotAt(h.ack - 1);
    if (!last.resent && !last.sacked) {
      // Jacobson/Karels: the RTO is the smoothed RTT plus four deviations, so a steady RTT
      // (even a long one, behind a queue) gives a timeout just above it.
      const uint64_t sample = now_ns - last.sent_ns;
      if (srtt_ns_ == 0) {
        srtt_ns_ = sample;
        rttvar_ns_ = sample / 2;
      } else {
        const uint64_t err = sample > srtt_ns_ ? sample - srtt_ns_ : srtt_ns_ - sample;
        rttvar_ns_ = (3 * rttvar_ns_ + err) / 4;
        srtt_ns_ = (7 * srtt_ns_ + sample) / 8;
      }
    }
    rto_ns_ = std::clamp<uint64_t>(srtt_ns_ + 4 * rttvar_ns_, kRtoMin, kRtoMax);
    cwnd_ = std::min<double>(cwnd_ < ssthresh_ ? cwnd_ + acked : cwnd_ + acked / cwnd_,
                             config_.max_window);
    snd_una_ = h.ack;
    last_progress_ns_ = now_ns;
    while (tx_acked_ != tx_started_) {
      const FrameTx& f = MetaAt(tx_acked_);
      if (Before(snd_una_, f.first_seq + f.packets)) break;
      ++tx_acked_;
    }
    sq_.MarkDone(tx_acked_);
  }
  // Sacked packets are not sent again; those below `high` sent before the one that reached it
  // were lost.
  for (int i = 0; i < static_cast<int>(kSackBits); ++i) {
    if (!((h.sack >> i) & 1)) continue;
    const uint32_t seq = h.ack + 1 + static_cast<uint32_t>(i);
    if (!Before(seq, snd_nxt_)) break;
    SlotAt(seq).sacked = true;
  }
  if (!Before(h.ack, h.high) || Before(snd_nxt_, h.high)) return;
  const uint64_t overtaken = SlotAt(h.high - 1).order;
  // Only within the sack's reach: a packet past it may have arrived (the receiver keeps up to
  // kRecvWindow); it shows once the cumulative ack moves.
  const uint32_t reach = Before(h.high - 1, h.ack + 1 + kSackBits) ? h.high - 1
                                                                   : h.ack + 1 + kSackBits;
  for (uint32_t seq = std::max(h.ack, snd_una_, [](uint32_t a, uint32_t b) { return Before(a, b); });
       Before(seq, reach); ++seq) {
    Inflight& slot = SlotAt(seq);
    if (slot.sacked || slot.due || slot.order >= overtaken) continue;
    slot.due = true;
    resend_.push_back(seq);
  }
}

void Channel::Tick(uint64_t now_ns) {
  if (failed()) return;
  const bool waiting = snd_una_ != snd_nxt_ ||
                       (tx_started_ != sq_.tail() && !Before(Wire(tx_started_), peer_credit_));
  if (!waiting) {
    waiting_ = false;
    return;
  }
  if (!waiting_) {
    waiting_ = true;  // the liveness clock starts now
    last_progress_ns_ = now_ns;
  }
  if (now_ns - last_progress_ns_ > config_.dead_after_ns) {
    Fail(Status::Error(
        ErrorCode::kTimeout,
        fmt::format("{} acknowledged nothing for {} s ({} packets unacknowledged, {} frames "
                    "waiting): the peer is gone or stuck",
                    peer_, config_.dead_after_ns / 1'000'000'000, snd_nxt_ - snd_una_,
                    sq_.tail() - tx_acked_)));
    return;
  }
  if (snd_una_ == snd_nxt_) return;
  if (now_ns - SlotAt(snd_una_).sent_ns < rto_ns_) return;
  // Retransmission timeout: go back to the oldest unacknowledged packet.
  ++stats_.timeouts;
  rto_ns_ = std::min(rto_ns_ * 2, kRtoMax);
  resend_.clear();
  resend_pos_ = 0;
  for (uint32_t seq = snd_una_; seq != snd_nxt_; ++seq) {
    Inflight& slot = SlotAt(seq);
    slot.due = !slot.sacked;
    if (slot.due) resend_.push_back(seq);
  }
  cwnd_ = std::max(kMinCwnd, cwnd_ / 2);
  ssthresh_ = cwnd_;
}

std::string Channel::Describe() const {
  const RxFrame& f = rx_[rx_frame_ % kRxReady];
  return fmt::format(
      "snd una {} nxt {} (window {:.0f}, rto {} us, {} due) frames acked {} started {} tail {} "
      "(peer credit {}), rcv nxt {} sack {:#x} high {} frame {} ({}/{} bytes) ready {}",
      snd_una_, snd_nxt_, cwnd_, rto_ns_ / 1000, resend_.size() - resend_pos_, tx_acked_,
      tx_started_, sq_.tail(), peer_credit_, rcv_nxt_, rcv_seen_.words[0], rcv_high_, rx_frame_,
      f.started ? f.got : 0, f.started ? f.len : 0, rx_ready_);
}

bool Channel::Busy() const {
  return snd_una_ != snd_nxt_ || tx_started_ != sq_.tail() || ack_due_ ||
         (credit_dirty_ && Credit() != credit_sent_) || !resend_.empty();
}

void Channel::Receive(uint64_t now_ns, const PacketView& packet) {
  if (failed()) return;
  ++stats_.packets_received;
  OnAck(now_ns, packet.header);
  if (packet.header.kind == PacketKind::kProbe) ack_due_ = true;
  if (packet.header.kind == PacketKind::kData) OnData(now_ns, packet);
}

void Channel::OnData(uint64_t now_ns, const PacketView& p) {
  (void)now_ns;
  const RelHeader& h = p.header;
  ack_due_ = true;  // every data packet is answered (a duplicate may mean our ack was lost)
  auto drop = [&](DropReason r) { ++stats_.drops[static_cast<size_t>(r)]; };
  if (Before(h.seq, rcv_nxt_)) return drop(DropReason::kStale);
  const uint32_t d = h.seq - rcv_nxt_;
  if (d > kRecvWindow) return drop(DropReason::kStale);
  if (d > 0 && rcv_seen_.test(d - 1)) return drop(DropReason::kStale);
  if (Before(rcv_high_, h.seq + 1)) rcv_high_ = h.seq + 1;
  // In order (d == 0), the packet is the first missing one of the first incomplete frame: seqs
  // are given to frames in order, so anything else is a broken sender. Out of order, it may be
  // a packet that cannot be placed yet: dropped, the sender sends it again.
  auto bad = [&](Status reason, DropReason r) {
    if (d == 0) return Fail(std::move(reason));
    drop(r);
  };
  const uint32_t ahead = h.frame_no - rx_frame_;  // frames past the first incomplete one
  if (Before(h.frame_no, rx_frame_) || (d == 0 && ahead != 0) ||
      h.frame_no - rx_head_ >= kRxReady) {
    if (d > 0 && !Before(h.frame_no, rx_frame_)) return drop(DropReason::kNoRoom);
    return bad(Status::Protocol("bad packet from {}: seq {} carries frame {}, expected frame {}",
                                peer_, h.seq, h.frame_no, rx_frame_),
               DropReason::kOutOfOrder);
  }
  if (h.frame_off % config_.chunk != 0 ||
      h.payload_len != std::min(config_.chunk, h.frame_len - h.frame_off)) {
    // Both sides cut frames at the chunk size agreed in the TransportHello: a packet cut
    // otherwise could overlap bytes already placed.
    return bad(Status::Protocol("bad packet from {}: {} bytes at offset {} of frame {}, not cut "
                                "at the agreed {}-byte chunks",
                                peer_, h.payload_len, h.frame_off, h.frame_no, config_.chunk),
               DropReason::kMalformed);
  }
  RxFrame& f = rx_[h.frame_no % kRxReady];
  if (f.complete) {
    return bad(Status::Protocol("bad packet from {}: seq {} for frame {}, already complete",
                                peer_, h.seq, h.frame_no),
               DropReason::kMalformed);
  }
  if (!f.started) {
    // Frames take their buffers in order: one that started ahead of an earlier one could hold
    // the last buffer the earlier one needs, and neither would ever complete.
    for (uint32_t g = rx_frame_; g != h.frame_no; ++g) {
      if (!rx_[g % kRxReady].started) return drop(DropReason::kOutOfOrder);
    }
    if (h.frame_off == 0) {
      if (!StartFrame(p, f)) return;
    } else if (d == 0) {
      // Every earlier seq arrived, so this frame's first packet did: a broken sender.
      return Fail(Status::Protocol("bad packet from {}: seq {} at offset {} is the first of "
                                   "frame {}",
                                   peer_, h.seq, h.frame_off, h.frame_no));
    } else if (!StartFrameLate(p, f)) {
      return;
    }
  } else if (h.frame_len != f.len) {
    return Fail(Status::Protocol("bad packet from {}: frame {} announced {} bytes, then {}",
                                 peer_, h.frame_no, f.len, h.frame_len));
  } else if (h.seq - f.first_seq != h.frame_off / config_.chunk) {
    // A frame's packets have consecutive seqs from its first one's: a packet whose offset is
    // not its seq's would place bytes twice (and could replace the header checked at the start).
    return bad(Status::Protocol("bad packet from {}: seq {} carries offset {} of frame {}, "
                                "whose first packet was seq {}",
                                peer_, h.seq, h.frame_off, h.frame_no, f.first_seq),
               DropReason::kMalformed);
  } else if (h.frame_off == 0 && !f.header_read) {
    // The first packet of a frame started by a later one: its header is checked now. Its
    // length is more than a control frame's, so a header that passes is a Data frame's.
    if (!ReadHeader(p, f)) return;
    f.header_read = true;
  }
  Place(f, p);
  if (d == 0) {
    ++rcv_nxt_;
    while (rcv_seen_.test(0)) {
      rcv_seen_.ShiftOne();
      ++rcv_nxt_;
    }
    rcv_seen_.ShiftOne();
  } else {
    rcv_seen_.set(d - 1);
  }
  if (f.got == f.len) f.complete = true;
  while (rx_frame_ - rx_head_ < kRxReady && rx_[rx_frame_ % kRxReady].complete) {
    ++rx_frame_;
    ++rx_ready_;
  }
}

std::optional<proto::Prefix> Channel::ReadHeader(const PacketView& p, RxFrame& f) {
  const RelHeader& h = p.header;
  if (h.payload_len < proto::kHeaderSize) {
    Fail(Status::Protocol("bad packet from {}: the first packet of frame {} has {} bytes, less "
                          "than a frame header",
                          peer_, h.frame_no, h.payload_len));
    return std::nullopt;
  }
  std::memcpy(f.header.data(), p.payload.data(), proto::kHeaderSize);
  auto prefix = proto::DecodePrefix(f.header);
  if (!prefix.ok()) {
    Fail(prefix.status().Context(fmt::format("bad frame from {}", peer_)));
    return std::nullopt;
  }
  if (proto::kHeaderSize + prefix->payload_len != h.frame_len) {
    Fail(Status::Protocol("bad packet from {}: frame of {} bytes in packets announcing {}", peer_,
                          proto::kHeaderSize + prefix->payload_len, h.frame_len));
    return std::nullopt;
  }
  if (proto::CarriesBlockData(prefix->type)) {
    if (!(accepted_ && trusted_)) {
      Fail(UnexpectedData(peer_, accepted_));
      return std::nullopt;
    }
    if (prefix->payload_len > pool_->buffer_size()) {
      Fail(Status::Protocol("bad frame from {}: Data payload of {} bytes exceeds the buffer "
                            "size {}",
                            peer_, prefix->payload_len, pool_->buffer_size()));
      return std::nullopt;
    }
  }
  return *prefix;
}

bool Channel::TakeBuffer(RxFrame& f) {
  auto buffer = pool_->TryGet();
  if (!buffer) {
    ++stats_.drops[static_cast<size_t>(DropReason::kNoRoom)];
    return false;  // the sender retransmits it after the RTO
  }
  f.data = std::move(*buffer);
  return true;
}

bool Channel::StartFrame(const PacketView& p, RxFrame& f) {
  const RelHeader& h = p.header;
  auto prefix = ReadHeader(p, f);
  if (!prefix) return false;
  if (proto::CarriesBlockData(prefix->type) && !TakeBuffer(f)) return false;
  f.started = true;
  f.header_read = true;
  f.len = h.frame_len;
  f.got = 0;
  f.first_seq = h.seq;
  return true;
}

bool Channel::StartFrameLate(const PacketView& p, RxFrame& f) {
  const RelHeader& h = p.header;
  auto drop = [&](DropReason r) {
    ++stats_.drops[static_cast<size_t>(r)];
    return false;
  };
  // Only a Data frame is longer than any control frame; only a trusted peer's gets a buffer
  // before its header is read. Anything else waits for its first packet (dropped, resent).
  const uint32_t payload = h.frame_len - static_cast<uint32_t>(proto::kHeaderSize);
  if (h.frame_len < proto::kHeaderSize || payload <= proto::kMaxControlPayload ||
      !(accepted_ && trusted_)) {
    return drop(DropReason::kOutOfOrder);
  }
  if (payload > pool_->buffer_size()) return drop(DropReason::kMalformed);
  if (!TakeBuffer(f)) return false;
  f.started = true;
  f.header_read = false;
  f.len = h.frame_len;
  f.got = 0;
  f.first_seq = h.seq - h.frame_off / config_.chunk;
  return true;
}

void Channel::Place(RxFrame& f, const PacketView& p) {
  uint32_t off = p.header.frame_off;
  std::span<const std::byte> bytes = p.payload;
  if (off < proto::kHeaderSize) {
    size_t n = std::min<size_t>(bytes.size(), proto::kHeaderSize - off);
    std::memcpy(f.header.data() + off, bytes.data(), n);
    bytes = bytes.subspan(n);
    off += static_cast<uint32_t>(n);
  }
  if (!bytes.empty()) {
    std::byte* dst = f.data ? f.data.data() : f.ctrl.data();
    std::memcpy(dst + (off - proto::kHeaderSize), bytes.data(), bytes.size());
  }
  f.got += p.header.payload_len;
}

}  // namespace blkmirror::transport::dpdk
