// SendQueue and ControlRing: setup (Init, Allocate, Attach) and the per-frame operations every
// backend's data path calls. Only the setup functions allocate.
#include "transport/send_queue.h"

#include <cassert>
#include <cerrno>
#include <cstring>

namespace blkmirror::transport {

void ControlRing::Allocate(size_t bytes) {
  owned_.assign(bytes, std::byte{0});
  storage_ = owned_;
  cursor_ = {};
}

void ControlRing::Attach(std::span<std::byte> storage) {
  owned_.clear();
  owned_.shrink_to_fit();
  storage_ = storage;
  cursor_ = {};
}

std::optional<ControlRing::Placement> ControlRing::Place(Cursor from, uint32_t len) const {
  const size_t cap = capacity();
  assert(len > 0 && from.used <= cap && (cap == 0 || from.tail < cap));
  if (len > cap) return std::nullopt;
  if (from.used == 0) return Placement{0, len, Cursor{len % cap, len}};  // empty: start over
  if (from.used == cap) return std::nullopt;
  size_t head = (from.tail + cap - from.used) % cap;  // oldest byte still held
  if (head > from.tail) {
    // Free: [tail, head).
    if (head - from.tail < len) return std::nullopt;
    return Placement{from.tail, len, Cursor{from.tail + len, from.used + len}};
  }
  // Free: [tail, cap) and [0, head).
  if (cap - from.tail >= len) {
    return Placement{from.tail, len, Cursor{(from.tail + len) % cap, from.used + len}};
  }
  if (head < len) return std::nullopt;
  auto held = static_cast<uint32_t>(cap - from.tail + len);  // with the skipped end
  return Placement{0, held, Cursor{len % cap, from.used + held}};
}

std::optional<ControlRing::Copy> ControlRing::Append(std::span<const std::byte> bytes) {
  auto place = Place(cursor_, static_cast<uint32_t>(bytes.size()));
  if (!place) return std::nullopt;
  std::byte* dst = storage_.data() + place->pos;
  std::memcpy(dst, bytes.data(), bytes.size());
  cursor_ = place->after;
  return Copy{dst, place->held};
}

void ControlRing::Free(uint32_t held) {
  assert(held <= cursor_.used);
  cursor_.used -= held;
}

void SendQueue::Init(uint32_t depth, size_t control_bytes) {
  assert(depth >= 1);
  entries_.assign(depth, SendEntry{});
  ring_.Allocate(control_bytes);
  head_ = done_ = tail_ = 0;
  plan_batch_ = 0;
}

void SendQueue::Init(uint32_t depth, std::span<std::byte> control_storage) {
  assert(depth >= 1);
  entries_.assign(depth, SendEntry{});
  ring_.Attach(control_storage);
  head_ = done_ = tail_ = 0;
  plan_batch_ = 0;
}

namespace {

// The control bytes an item copies into the ring (0 for a Data frame: its payload stays put).
uint32_t ControlLen(const WorkItem& item) {
  auto prefix = proto::DecodePrefix(item.header);
  if (!prefix.ok() || proto::CarriesBlockData(prefix->type)) return 0;
  return static_cast<uint32_t>(item.control.size());
}

}  // namespace

Status SendQueue::Reserve(uint64_t batch, const WorkItem& item) {
  assert(batch != 0);
  if (batch != plan_batch_) {
    plan_batch_ = batch;
    plan_frames_ = 0;
    plan_ring_ = ring_.cursor();
  }
  if (plan_frames_ + 1 > space()) {
    return Status::Error(ErrorCode::kBusy,
                         fmt::format("send queue is full ({} of {} frames queued{})", size(),
                                     capacity(),
                                     plan_frames_ > 0
                                         ? fmt::format(", {} more earlier in this batch",
                                                       plan_frames_)
                                         : ""));
  }
  uint32_t len = ControlLen(item);
  if (len > 0) {
    auto place = ring_.Place(plan_ring_, len);
    if (!place) {
      return Status::Error(
          ErrorCode::kBusy,
          fmt::format("control queue is full (a {}-byte payload does not fit: {} of {} bytes "
                      "held{})",
                      len, ring_.used(), ring_.capacity(),
                      plan_ring_.used > ring_.used()
                          ? fmt::format(", {} more earlier in this batch",
                                        plan_ring_.used - ring_.used())
                          : ""));
    }
    plan_ring_ = place->after;
  }
  ++plan_frames_;
  return Status::Ok();
}

SendEntry* SendQueue::Push(const WorkItem& item) {
  if (space() == 0) return nullptr;
  auto prefix = proto::DecodePrefix(item.header);
  if (!prefix.ok()) return nullptr;  // Post checked it (CheckWorkItem)
  SendEntry& e = at(tail_);
  e.data = proto::CarriesBlockData(prefix->type);
  e.ctrl_bytes = 0;
  if (e.data) {
    e.payload = item.data;
    e.payload_len = prefix->payload_len;
  } else if (!item.control.empty()) {
    auto copy = ring_.Append(item.control);
    if (!copy) return nullptr;
    e.payload = copy->data;
    e.payload_len = static_cast<uint32_t>(item.control.size());
    e.ctrl_bytes = copy->held;
  } else {
    e.payload = nullptr;
    e.payload_len = 0;
  }
  e.header = item.header;
  e.tag = item.tag;
  e.signal = item.signal;
  e.cancelled = false;
  ++tail_;
  return &e;
}

void SendQueue::MarkDone(uint64_t counter) {
  assert(counter <= tail_);
  if (counter > done_) done_ = counter;
}

std::optional<SendResult> SendQueue::PopDone() {
  if (head_ == done_) return std::nullopt;
  SendEntry& e = at(head_);
  SendResult r;
  r.tag = e.tag;
  r.signal = e.signal;
  r.res = e.cancelled ? -ECANCELED : static_cast<int32_t>(proto::kHeaderSize + e.payload_len);
  ring_.Free(e.ctrl_bytes);
  e.ctrl_bytes = 0;
  ++head_;
  return r;
}

void SendQueue::CancelQueued() {
  for (uint64_t c = done_; c < tail_; ++c) at(c).cancelled = true;
  done_ = tail_;
}

size_t ReportSent(SendQueue& sq, ConnId conn, std::span<Completion> out) {
  size_t n = 0;
  while (n < out.size()) {
    std::optional<SendResult> r = sq.PopDone();
    if (!r) break;
    if (!r->signal) continue;
    Completion& c = out[n++].Reset();
    c.kind = CompletionKind::kSent;
    c.conn = conn;
    c.tag = r->tag;
    c.res = r->res;  // bytes, or -ECANCELED
  }
  return n;
}

}  // namespace blkmirror::transport
