// Channel: the reliability layer of one DPDK connection, both directions, with no DPDK in it
// (packets in and out are descriptors; the transport moves them through its port). It turns an
// unreliable, reordering, duplicating, corrupting packet path into what the transport contract
// promises: frames delivered in order, exactly once, or the connection closed with the reason.
//
// Sending (eRPC's design as the anchor): frames are cut into packets of `chunk` bytes, each with
// a sequence number. The receiver's acks are cumulative (`ack`) with a 64-bit selective map
// (`sack`) and the highest seq it saw (`high`): every packet below `high` neither acked nor
// sacked and sent before the packet that reached `high` was lost, and is sent again at once
// (RACK's rule: again only once a packet sent after the retransmission arrives without it).
// When the oldest unacked packet is older than the RTO (smoothed RTT + 4 deviations, at least
// kRtoMin), every unacked, unsacked packet is sent again (go-back-N) and the RTO doubles, up to
// kRtoMax. The congestion window, in packets, starts in slow start (doubling per window acked)
// up to a threshold, then grows by one per window acked (AIMD); a timeout halves it and sets the
// threshold there. Loss that acks reveal is repaired, not read as congestion. Frame credits are
// flow control: the receiver names the first frame number it cannot take yet, and the sender
// starts no frame at or past it; a sender blocked on credit probes the receiver every RTO.
//
// Receiving: packets are placed straight into the frame's destination (a pool buffer for block
// data, a control slot otherwise) at their frame offset, in any of the frames within the credit;
// a frame's first packet (its 64-byte header) starts it, or, for a frame longer than any
// control frame (a Data frame) on a trusted channel, any of its packets does, the header being
// checked when its packet comes. Frames take their buffers in order and are handed out in order.
// A block buffer is taken only for a Data frame on a trusted, accepted channel (transport
// contract).
// Duplicates and packets outside the window are dropped and counted, never placed twice.
//
// Liveness: with packets unacked (or a frame blocked on credit) and no progress for `dead_after`,
// the channel fails: the peer is alive-but-stuck or gone.
//
// Thread safety: none; a channel belongs to its transport's loop.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "io/buffer_pool.h"
#include "proto/frame.h"
#include "transport/dpdk/packet.h"
#include "transport/send_queue.h"
#include "transport/transport.h"

namespace blkmirror::transport::dpdk {

inline constexpr uint32_t kSackBits = 64;     // selective acks a packet carries
inline constexpr uint32_t kRecvWindow = 1024;  // packets past `ack` a receiver keeps
inline constexpr size_t kRxReady = 32;  // frames received and not yet handed out, per channel
inline constexpr uint64_t kRtoMin = 5'000'000;    // ns (a peer may sleep 1 ms between polls)
inline constexpr uint64_t kRtoMax = 200'000'000;  // ns
inline constexpr size_t kCtrlRingBytes = 128 << 10;  // queued control payloads per channel

struct ChannelConfig {
  uint32_t chunk = ChunkSize(1500);  // frame bytes per packet
  uint32_t max_window = 1024;        // packets in flight at most
  uint32_t initial_cwnd = 128;
  uint32_t send_queue_depth = 1024;  // frames queued before Post refuses
  uint64_t dead_after_ns = 10'000'000'000;
};

// A packet to send: its payload is `a` (bytes of the frame header, possibly none) then `b` (bytes
// of the frame's payload, possibly none; a Data frame's block, in the pool).
struct TxPacket {
  RelHeader header;
  std::span<const std::byte> a, b;
};

struct RxFrame {
  proto::RawHeader header{};
  io::BufferRef data;
  alignas(8) std::array<std::byte, proto::kMaxControlPayload> ctrl{};
  // Assembly: the first packet that arrives starts it (a later one only for a Data frame, which
  // then takes its buffer before its header is read); complete when every byte is placed.
  bool started = false;
  bool header_read = false;  // the first packet came and its header was checked
  bool complete = false;
  uint32_t len = 0, got = 0;
  uint32_t first_seq = 0;  // the seq of its first packet
};

struct ChannelStats {
  uint64_t packets_sent = 0, packets_received = 0, retransmits = 0, timeouts = 0;
  std::array<uint64_t, static_cast<size_t>(DropReason::kCount)> drops{};
};

class Channel {
 public:
  Channel(ChannelConfig config, io::BufferPool* pool, bool accepted, std::string peer);

  const std::string& peer() const { return peer_; }
  bool accepted() const { return accepted_; }
  void Trust() { trusted_ = accepted_; }
  bool failed() const { return !failure_.ok(); }
  const Status& failure() const { return failure_; }
  const ChannelStats& stats() const { return stats_; }

  // Sending side: frames live in a transport::SendQueue (the one every backend uses) from
  // Queue until acknowledged. SendSpace is the room left; Reserve claims room for one item of a
  // batch (all or nothing across a Post); Queue queues it (false when it does not fit).
  size_t SendSpace() const { return sq_.space(); }
  [[nodiscard]] Status Reserve(uint64_t batch, const WorkItem& item) {
    return sq_.Reserve(batch, item);
  }
  bool Queue(const WorkItem& item);
  // Up to out.size() packets to send now (retransmits first, then new data, then an ack if one
  // is due); returns how many. Each points into frames that stay queued until acknowledged.
  size_t Transmit(uint64_t now_ns, std::span<TxPacket> out);
  // Acknowledged frames, oldest first, at most `max`: calls done(SendResult) for each.
  template <typename F>
  void TakeAcked(F&& done, size_t max = SIZE_MAX) {
    for (; max > 0; --max) {
      auto r = sq_.PopDone();
      if (!r) break;
      done(*r);
    }
  }
  // For a closing channel: every frame, acknowledged or not (those with res -ECANCELED), at
  // most `max` at a time; true once none is left.
  template <typename F>
  bool TakeUnacked(F&& cancelled, size_t max = SIZE_MAX) {
    if (!cancelled_) {
      sq_.CancelQueued();
      cancelled_ = true;
      tx_acked_ = tx_started_ = sq_.tail();
      tx_off_ = 0;
    }
    TakeAcked(cancelled, max);
    return sq_.empty();
  }
  // Nothing queued or unacknowledged.
  bool Idle() const { return sq_.empty(); }

  // Receiving side: one decoded packet of this channel's session.
  void Receive(uint64_t now_ns, const PacketView& packet);
  // Received frames, in order: calls take(frame) for each; the frame's data BufferRef may be
  // moved out (else it goes back to the pool), its header and control bytes stay valid until
  // the next TakeReceived.
  template <typename F>
  void TakeReceived(F&& take, size_t max = SIZE_MAX) {
    for (; rx_ready_ > 0 && max > 0; --max) {
      RxFrame& f = rx_[rx_head_ % kRxReady];
      take(f);
      f.data.Reset();  // not moved out: a later control frame in this slot must not land in it
      f.started = f.complete = false;
      ++rx_head_;
      --rx_ready_;
      credit_dirty_ = true;  // room for one more frame: tell the sender
    }
  }
  size_t ready() const { return rx_ready_; }
  // Packets sent and not acknowledged yet.
  uint32_t in_flight() const { return snd_nxt_ - snd_una_; }
  // Data arrived since the last packet this channel sent: an ack is owed.
  bool ack_due() const { return ack_due_; }

  // Checks the timers: RTO and liveness. Call on every loop turn while Busy().
  void Tick(uint64_t now_ns);

  // The sequence and credit state, for logs: "snd 10..12/12 frames 3..5/7 credit 19 cwnd 64
  // rcv 40+0x0 frame 9 ready 0".
  std::string Describe() const;

  // True while packets are in flight, frames wait, or an ack is due (the loop should poll).
  bool Busy() const;

 private:
  struct Inflight {
    uint64_t frame = 0;  // its SendQueue counter (the wire's frame_no is its low 32 bits)
    uint32_t frame_off = 0;
    uint32_t len = 0;
    uint64_t sent_ns = 0;
    // Its place in the order of every send: RACK's "sent before" (packets sent in one burst
    // share their sent_ns).
    uint64_t order = 0;
    bool sacked = false;
    bool resent = false;  // sent more than once (no RTT sample from it: Karn)
    bool due = false;     // queued for retransmission
  };
  static bool Before(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) < 0; }
  // Per queued frame, beside its SendQueue entry: where its packets start, how many.
  struct FrameTx {
    uint32_t first_seq = 0;
    uint32_t packets = 0;
  };
  FrameTx& MetaAt(uint64_t frame) { return meta_[sq_.index(frame)]; }
  static uint32_t Wire(uint64_t frame) { return static_cast<uint32_t>(frame); }
  Inflight& SlotAt(uint32_t seq) { return inflight_[seq % inflight_.size()]; }
  void Fail(Status reason);
  void OnAck(uint64_t now_ns, const RelHeader& h);
  void OnData(uint64_t now_ns, const PacketView& p);
  // The frame header in a frame's first packet, checked (nullopt: the channel failed).
  std::optional<proto::Prefix> ReadHeader(const PacketView& p, RxFrame& f);
  bool TakeBuffer(RxFrame& f);  // false (and counted) when the pool has none free
  // Start f from its first packet, or from a later one (the first was lost); false when the
  // packet was dropped or the channel failed.
  bool StartFrame(const PacketView& p, RxFrame& f);
  bool StartFrameLate(const PacketView& p, RxFrame& f);
  void Place(RxFrame& f, const PacketView& p);
  TxPacket MakePacket(uint32_t seq, const Inflight& slot);
  void FillAck(RelHeader& h) const;
  uint32_t Credit() const;

  ChannelConfig config_;
  io::BufferPool* pool_;
  bool accepted_;
  bool trusted_ = false;
  std::string peer_;
  Status failure_;
  ChannelStats stats_;

  // Sending. SendQueue counters: [head, tx_acked_) acknowledged, not yet taken;
  // [tx_acked_, tx_started_) with packets out; tx_started_ is being cut (at tx_off_);
  // (tx_started_, tail) queued.
  SendQueue sq_;
  std::vector<FrameTx> meta_;
  uint64_t tx_acked_ = 0, tx_started_ = 0;
  uint32_t tx_off_ = 0;
  bool cancelled_ = false;
  std::vector<Inflight> inflight_;
  uint64_t sends_ = 0;  // packets sent, retransmissions included: the last one's order
  uint32_t snd_una_ = 0, snd_nxt_ = 0;
  uint32_t peer_credit_ = 0;  // frames numbered below it may be started
  double cwnd_;
  double ssthresh_;
  uint64_t srtt_ns_ = 0;
  uint64_t rttvar_ns_ = 0;
  uint64_t rto_ns_ = kRtoMin;
  uint64_t last_progress_ns_ = 0;
  bool waiting_ = false;  // for an ack or for credit, since last_progress_ns_
  uint64_t probe_ns_ = 0;
  std::vector<uint32_t> resend_;  // seqs due again, oldest first
  size_t resend_pos_ = 0;

  // Receiving.
  std::array<RxFrame, kRxReady> rx_;
  uint32_t rx_head_ = 0;   // frame number of rx_[rx_head_ % kRxReady]
  size_t rx_ready_ = 0;
  uint32_t rx_frame_ = 0;  // the first frame not complete (rx_head_ + rx_ready_)
  uint32_t rcv_nxt_ = 0;
  // Bit i: packet rcv_nxt_ + 1 + i arrived. Wider than the sack an ack carries (its first 64
  // bits), so packets behind a hole are kept, not dropped, while the hole is repaired.
  struct SeenMap {
    std::array<uint64_t, kRecvWindow / 64> words{};
    bool test(uint32_t i) const { return (words[i / 64] >> (i % 64)) & 1; }
    void set(uint32_t i) { words[i / 64] |= uint64_t{1} << (i % 64); }
    void ShiftOne() {
      for (size_t w = 0; w < words.size(); ++w) {
        words[w] = (words[w] >> 1) | (w + 1 < words.size() ? words[w + 1] << 63 : 0);
      }
    }
  };
  SeenMap rcv_seen_;
  uint32_t rcv_high_ = 0;  // one past the highest seq seen
  bool ack_due_ = false;
  bool credit_dirty_ = false;
  uint32_t credit_sent_ = 0;
};

}  // namespace blkmirror::transport::dpdk
