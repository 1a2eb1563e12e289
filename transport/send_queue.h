// SendQueue: one connection's queue of frames on their way out, the same for every backend
// (tcp, rdma, dpdk). It holds what Transport::Post queued until the backend has sent it (dpdk:
// until the peer acknowledged it), and makes Post all or nothing.
//
//   - Entries live in a ring addressed by monotonic counters: [head, done) are finished and wait
//     for Poll to report them, [done, tail) are queued or with the kernel/NIC. A backend keeps
//     its own cursors between done and tail (tcp: what is in the SENDMSG in flight; rdma: what is
//     posted to the QP) and moves `done` with MarkDone.
//   - A Data frame's payload is not copied: the entry points into the caller's pool buffer. Any
//     other payload (<= proto::kMaxControlPayload) is copied at Push into the ControlRing, a byte
//     ring freed in order as entries are popped; a copy that would cross the ring's end skips to
//     its start, and the entry holds the skipped bytes too until it is popped.
//   - All or nothing: a backend's Post first calls Reserve(batch, item) for every item of the batch
//     on its connection's queue (several items may go to one queue: they add up), and queues with
//     Push only once every Reserve succeeded. A failed Reserve leaves nothing to undo: a queue
//     forgets the claims of a batch when it sees the next batch number.
//
// Memory: Init allocates (setup); nothing else does. The control ring is the queue's own memory
// or the backend's (rdma: an area registered with the NIC), which must then outlive the queue.
// Thread safety: none; a queue belongs to its transport's loop thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/status.h"
#include "proto/frame.h"
#include "transport/transport.h"

namespace blkmirror::transport {

// A byte ring for copies of control payloads, allocated at the tail and freed at the head, in
// the same order. A copy is contiguous: one that does not fit before the ring's end starts at
// its beginning, and the bytes skipped are held with it ("wrap padding").
class ControlRing {
 public:
  // The allocation state: where the next copy would start, and how many bytes are held.
  struct Cursor {
    size_t tail = 0;
    size_t used = 0;
  };
  // Where a copy goes: at `pos`, holding `held` bytes (its length plus any wrap padding).
  struct Placement {
    size_t pos = 0;
    uint32_t held = 0;
    Cursor after;  // the state once it is there
  };

  ControlRing() = default;
  ControlRing(const ControlRing&) = delete;
  ControlRing& operator=(const ControlRing&) = delete;

  // Setup. Allocate: `bytes` of the ring's own memory. Attach: `storage`, the caller's, which
  // must outlive the ring. Either one empties the ring.
  void Allocate(size_t bytes);
  void Attach(std::span<std::byte> storage);

  size_t capacity() const { return storage_.size(); }
  size_t used() const { return cursor_.used; }
  Cursor cursor() const { return cursor_; }
  const std::byte* data() const { return storage_.data(); }

  // Where `len` (> 0) bytes would go if the ring were at `from`; nothing when they do not fit.
  // Changes nothing: a batch is planned by chaining placements from cursor().
  std::optional<Placement> Place(Cursor from, uint32_t len) const;

  // A copy held in the ring: the bytes and what to Free for them.
  struct Copy {
    std::byte* data = nullptr;
    uint32_t held = 0;
  };
  // Copies `bytes` (not empty) in at the tail; nothing when they do not fit.
  std::optional<Copy> Append(std::span<const std::byte> bytes);
  // Gives back the oldest copy: `held` is what its Append returned.
  void Free(uint32_t held);
  void Clear() { cursor_ = {}; }

 private:
  std::vector<std::byte> owned_;
  std::span<std::byte> storage_;
  Cursor cursor_;
};

struct SendEntry {
  proto::RawHeader header{};
  const std::byte* payload = nullptr;  // Data: the caller's pool buffer; else the control ring
  uint32_t payload_len = 0;
  uint32_t ctrl_bytes = 0;  // control-ring bytes held (payload + wrap padding)
  uint64_t tag = 0;
  bool signal = false;
  bool data = false;       // a block payload (proto::CarriesBlockData)
  bool cancelled = false;  // by CancelQueued: never (entirely) sent
};

// What a popped entry leaves for its kSent completion.
struct SendResult {
  uint64_t tag = 0;
  int32_t res = 0;  // header + payload bytes, or -ECANCELED
  bool signal = false;
};

class SendQueue {
 public:
  SendQueue() = default;
  SendQueue(const SendQueue&) = delete;
  SendQueue& operator=(const SendQueue&) = delete;

  // Setup: room for `depth` (>= 1) frames, and a control ring of `control_bytes` of the queue's
  // own memory, or in `control_storage` (the backend's; it must outlive the queue).
  void Init(uint32_t depth, size_t control_bytes);
  void Init(uint32_t depth, std::span<std::byte> control_storage);

  // ---- Room ----
  size_t capacity() const { return entries_.size(); }
  size_t size() const { return tail_ - head_; }  // entries held (queued, in flight, or done)
  size_t space() const { return capacity() - size(); }  // Transport::SendSpace
  bool empty() const { return head_ == tail_; }
  const ControlRing& control() const { return ring_; }

  // Claims room for `item` (checked with CheckWorkItem) as one more frame of batch `batch`, on
  // top of what the batch already claimed here: one entry, and its control payload's bytes in
  // the ring (with wrap padding) unless it is a Data frame. Nothing is queued. Fails (kBusy,
  // saying which room is short) when it would not fit. `batch`: a number other than 0 and other
  // than the previous Post's on this queue (a transport counts its Posts: ++posts_).
  [[nodiscard]] Status Reserve(uint64_t batch, const WorkItem& item);

  // Queues `item` (checked with CheckWorkItem) at the tail, copying a control payload into the
  // ring; returns its entry, or nullptr when it does not fit (never after a Reserve of the same
  // batch for it and the items pushed before it). A Data payload stays the caller's.
  SendEntry* Push(const WorkItem& item);

  // ---- Entries by counter ----
  uint64_t head() const { return head_; }
  uint64_t done() const { return done_; }
  uint64_t tail() const { return tail_; }
  // The entry at `counter`, in [head, tail). A backend that needs more per frame keeps a
  // parallel array of capacity() at index(counter).
  size_t index(uint64_t counter) const { return counter % entries_.size(); }
  SendEntry& at(uint64_t counter) { return entries_[index(counter)]; }
  const SendEntry& at(uint64_t counter) const { return entries_[index(counter)]; }

  // ---- Completion ----
  // Entries before `counter` are finished (sent, their buffers free again). Never moves back.
  void MarkDone(uint64_t counter);
  bool has_done() const { return head_ < done_; }
  // Removes the oldest finished entry, freeing its control bytes; nothing when none is.
  std::optional<SendResult> PopDone();
  // For a closing connection, once nothing of it is with the kernel or NIC any more: every
  // entry not finished is cancelled and finished now; PopDone reports them with -ECANCELED.
  void CancelQueued();

 private:
  std::vector<SendEntry> entries_;
  ControlRing ring_;
  uint64_t head_ = 0, done_ = 0, tail_ = 0;
  // Claims of the batch being reserved (see Reserve).
  uint64_t plan_batch_ = 0;
  size_t plan_frames_ = 0;
  ControlRing::Cursor plan_ring_;
};

// Transport::Poll's report of finished sends: pops them in order and writes a kSent completion
// of `conn` for each signaled one into `out`, until it is full; returns how many it wrote.
size_t ReportSent(SendQueue& sq, ConnId conn, std::span<Completion> out);

}  // namespace blkmirror::transport
