#include "frontend/nbd/nbd_frontend.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>

#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "common/fixed_ring.h"
#include "common/log_limiter.h"
#include "io/acceptor.h"
#include "proto/frame.h"

namespace blkmirror::frontend {
namespace {

namespace nbd = proto::nbd;

constexpr uint32_t kNone = UINT32_MAX;
// iovecs per SENDMSG (IOV_MAX): replies are gathered, several at a time. The largest reply, a
// READ of max_payload in segments with a chunk header each, must fit (checked at Create).
constexpr size_t kMaxIov = 1024;
// A client whose replies cannot leave (it stopped reading) is closed after this.
constexpr uint64_t kSendStallNs = ToNs(std::chrono::seconds(60));
// A client that has not finished its handshake this long after it connected is closed: until
// then it holds one of the --max-clients places.
constexpr uint64_t kHandshakeNs = ToNs(std::chrono::seconds(10));
// A client's reply queue holds what its requests in progress will answer (max_requests; counted
// twice, as a READ's reply stays in progress until sent) and this many replies more: those given
// at once (write acks, errors, CACHE, BLOCK_STATUS, handshake replies). Its next message is read
// only while the queue has room for what that message adds (ReplyRoom), so a client that sends
// and never reads holds a bounded queue until kSendStallNs closes it.
constexpr size_t kSpareReplies = 16;

class NbdFrontendImpl;

struct Op : io::RingOp {
  enum class Kind : uint8_t { kRecv, kSend } kind = Kind::kRecv;
  uint32_t client = kNone;
};

// One segment of a request: what the volume serves and completes.
struct Segment {
  uint32_t gen = 0;  // bumped when the record is freed: a late Complete is told apart
  uint32_t request = kNone;
  uint32_t next = kNone;  // the request's next segment, in offset order
  uint64_t offset = 0;
  uint32_t length = 0;
  io::BufferRef data;  // READ: the bytes read (from Complete)
  std::array<std::byte, nbd::kStructuredHeaderSize + 8> chunk{};  // OFFSET_DATA header
};

// A client request in progress.
struct RequestRec {
  bool used = false;
  uint32_t client = kNone;
  nbd::Request req;
  uint32_t first = kNone, last = kNone;  // segments, in offset order
  uint32_t total = 0;                   // segments it will have
  uint32_t created = 0;                 // segments made so far (a WRITE's come with its payload)
  uint32_t done = 0;
  uint32_t error = 0;  // NBD errno of the first failed segment
};

// A reply waiting to go: bytes (handshake replies, error chunks), or a request's reply built
// from its segments.
struct SendItem {
  std::vector<std::byte> bytes;
  uint32_t request = kNone;  // its segments' data follows `head`
  std::array<std::byte, nbd::kStructuredHeaderSize + 8> head{};
  uint32_t head_len = 0;
  size_t sent = 0;  // bytes of this item already sent
};

struct Client {
  uint32_t index = 0;
  uint32_t gen = 0;
  bool used = false;
  int fd = -1;
  std::string peer;
  nbd::ServerHandshake handshake{nbd::ExportInfo{}};
  bool transmission = false;
  uint64_t connected_ns = 0;
  bool closing = false;      // no new operation starts; freed once none is in flight
  bool close_after = false;  // close once the send queue is empty (DISC, a fatal error, the
                             // server's shutdown); no new request is read, but the rest of one
                             // begun is (a WRITE's payload), so that it completes and is answered
  std::string close_reason;

  // Receiving.
  enum class Rx : uint8_t { kHandshake, kHeader, kPayload, kDiscard } rx = Rx::kHandshake;
  Op recv_op;
  bool recv_inflight = false;
  std::array<std::byte, nbd::kMaxOptionData> small{};
  uint32_t got = 0, want = 0;
  uint32_t payload_request = kNone;  // the WRITE whose payload is arriving
  uint32_t payload_segment = kNone;  // the segment being filled
  uint64_t payload_left = 0;         // bytes of the payload not yet received
  uint64_t discard_left = 0;         // bytes of a refused WRITE's payload to read and drop
  uint32_t outstanding = 0;          // requests in progress
  bool header_waiting = false;       // a header is in `small`, waiting for a request record

  // Sending.
  Op send_op;
  bool send_inflight = false;
  FixedRing<SendItem> sendq;  // sized at setup: ReplyRoom keeps it from filling
  std::array<iovec, kMaxIov> iov{};
  size_t iov_items = 0;  // SendItems covered by the SENDMSG in flight
  msghdr msg{};
  uint64_t send_started_ns = 0;

  bool busy() const { return recv_inflight || send_inflight; }
};

class NbdFrontendImpl final : public NbdFrontend, public io::RingHandler {
 public:
  NbdFrontendImpl(io::Ring& ring, io::BufferPool& pool, NbdFrontendOptions options)
      : ring_(ring), pool_(pool), options_(std::move(options)) {
    clients_.resize(options_.max_clients);
    for (uint32_t i = 0; i < clients_.size(); ++i) {
      Client& c = clients_[i];
      c.index = i;
      c.recv_op.handler = this;
      c.recv_op.kind = Op::Kind::kRecv;
      c.recv_op.client = i;
      c.send_op.handler = this;
      c.send_op.kind = Op::Kind::kSend;
      c.send_op.client = i;
      c.sendq.Init(2 * size_t{options_.max_requests} + kSpareReplies);
    }
    const size_t requests = size_t{options_.max_clients} * options_.max_requests;
    requests_.resize(requests);
    for (uint32_t i = static_cast<uint32_t>(requests); i-- > 0;) free_requests_.push_back(i);
    // Segments: every request's worth at the largest payload would be too many; a request takes
    // them as it goes, and reading pauses when none is free.
    const size_t segments = std::max<size_t>(requests * 4, pool.count() * 2);
    segments_.resize(segments);
    ready_.Init(segments);
    pending_reads_.Init(requests);
    for (uint32_t i = static_cast<uint32_t>(segments); i-- > 0;) free_segments_.push_back(i);
  }

  ~NbdFrontendImpl() override {
    for (Client& c : clients_) {
      if (c.used) CloseClient(c, "the server is shutting down");
    }
    for (int i = 0; i < 100 && AnyBusy(); ++i) {
      if (!ring_.Wait(std::chrono::milliseconds(20)).ok()) break;
    }
    for (Client& c : clients_) {
      if (c.used) Free(c);
    }
  }

  Status Listen() {
    for (const std::string& where : options_.listen) {
      Result<std::unique_ptr<io::Acceptor>> a = Status::Ok();
      if (where.rfind("unix:", 0) == 0) {
        a = io::Acceptor::ListenUnix(ring_, where.substr(5));
      } else {
        size_t colon = where.rfind(':');
        if (colon == std::string::npos) {
          return Status::Invalid("--export '{}': expected unix:PATH or HOST:PORT", where);
        }
        std::string host = where.substr(0, colon);
        if (host.size() > 1 && host.front() == '[' && host.back() == ']') {
          host = host.substr(1, host.size() - 2);
        }
        uint16_t port = static_cast<uint16_t>(std::strtoul(where.c_str() + colon + 1, nullptr, 10));
        a = io::Acceptor::ListenTcp(ring_, host, port);
      }
      if (!a.ok()) return a.status().Context("--export " + where);
      spdlog::info("nbd: serving export '{}' ({} bytes) on {}", options_.export_info.name,
                   options_.export_info.size, (*a)->local());
      acceptors_.push_back(std::move(*a));
    }
    return Status::Ok();
  }

  std::string_view name() const override { return "nbd"; }

  std::vector<std::string> listening() const override {
    std::vector<std::string> out;
    for (const auto& a : acceptors_) out.push_back(a->local());
    return out;
  }

  size_t clients() const override {
    return static_cast<size_t>(
        std::count_if(clients_.begin(), clients_.end(), [](const Client& c) { return c.used; }));
  }

  size_t Poll(std::span<Request> out) override {
    TakeAccepted();
    const uint64_t now = NowNs();
    for (Client& c : clients_) {
      if (!c.used) continue;
      if (c.closing) {
        if (!c.busy()) Free(c);
        continue;
      }
      if (c.send_inflight && now - c.send_started_ns > kSendStallNs) {
        CloseClient(c, "its replies have not left for 60 s (it stopped reading)");
        continue;
      }
      if (!c.transmission && now - c.connected_ns > kHandshakeNs) {
        CloseClient(c, "no handshake within 10 s of connecting");
        continue;
      }
      StartRecv(c);  // resumes a receive that waited for a buffer, a segment or a request slot
      StartSend(c);
    }
    size_t n = 0;
    while (n < out.size() && !ready_.empty()) {
      uint32_t si = ready_.front();
      ready_.pop_front();
      Segment& seg = segments_[si];
      RequestRec& r = requests_[seg.request];
      Request& q = out[n++];
      q = Request{};
      q.id = uint64_t{seg.gen} << 32 | si;
      q.offset = seg.offset;
      q.length = seg.length;
      q.fua = (r.req.flags & nbd::kCmdFlagFua) != 0;
      switch (static_cast<nbd::Command>(r.req.type)) {
        case nbd::Command::kRead:
          q.op = RequestOp::kRead;
          break;
        case nbd::Command::kWrite:
          q.op = RequestOp::kWrite;
          q.data = std::move(seg.data);
          break;
        case nbd::Command::kFlush:
          q.op = RequestOp::kFlush;
          break;
        case nbd::Command::kTrim:
          q.op = RequestOp::kZero;
          q.unmap = true;
          break;
        case nbd::Command::kWriteZeroes:
          q.op = RequestOp::kZero;
          q.unmap = !(r.req.flags & nbd::kCmdFlagNoHole);
          break;
        default:
          break;  // never made into segments
      }
    }
    return n;
  }

  void Complete(uint64_t id, int32_t res, io::BufferRef data) override {
    const auto si = static_cast<uint32_t>(id);
    const auto gen = static_cast<uint32_t>(id >> 32);
    if (si >= segments_.size() || segments_[si].gen != gen || segments_[si].request == kNone) {
      return;  // its client is gone: `data` goes back to the pool
    }
    Segment& seg = segments_[si];
    RequestRec& r = requests_[seg.request];
    seg.data = std::move(data);
    if (res < 0 && r.error == 0) r.error = nbd::ErrnoToNbd(-res);
    ++r.done;
    if (r.done == r.total && r.created == r.total) QueueReply(seg.request);
  }

  void Shutdown() override {
    shutting_down_ = true;
    acceptors_.clear();
    for (Client& c : clients_) {
      if (!c.used || c.closing) continue;
      if (c.outstanding == 0 && c.sendq.empty()) {
        CloseClient(c, "the server is shutting down");
      } else {
        c.close_after = true;
        c.close_reason = "the server is shutting down";
      }
    }
  }

  bool closed() const override {
    return std::none_of(clients_.begin(), clients_.end(), [](const Client& c) { return c.used; });
  }

  void OnCqe(io::RingOp* ring_op, int32_t res, uint32_t) override {
    auto* op = static_cast<Op*>(ring_op);
    Client& c = clients_[op->client];
    if (op->kind == Op::Kind::kRecv) {
      c.recv_inflight = false;
      OnRecv(c, res);
    } else {
      c.send_inflight = false;
      OnSend(c, res);
    }
  }

 private:
  bool AnyBusy() const {
    return std::any_of(clients_.begin(), clients_.end(),
                       [](const Client& c) { return c.used && c.busy(); });
  }

  void TakeAccepted() {
    std::array<io::AcceptedSocket, 8> got;
    for (auto& a : acceptors_) {
      size_t n;
      while ((n = a->Take(got)) > 0) {
        for (size_t i = 0; i < n; ++i) Admit(got[i]);
      }
    }
  }

  void Admit(io::AcceptedSocket& s) {
    auto it = std::find_if(clients_.begin(), clients_.end(), [](const Client& c) { return !c.used; });
    if (shutting_down_ || it == clients_.end()) {
      if (auto left_out = refusals_.Allow(NowNs())) {
        spdlog::warn("nbd: {}: refused: {}{}", s.peer,
                     shutting_down_ ? "shutting down"
                                    : fmt::format("{} clients connected (--max-clients)",
                                                  clients_.size()),
                     LeftOut(*left_out));
      }
      close(s.fd);
      return;
    }
    Client& c = *it;
    c.used = true;
    ++c.gen;
    c.fd = s.fd;
    c.peer = fmt::format("{}#{}", s.peer, ++connections_);  // unix peers have no address
    c.handshake = nbd::ServerHandshake(options_.export_info);
    c.transmission = false;
    c.connected_ns = NowNs();
    c.closing = false;
    c.close_after = false;
    c.close_reason.clear();
    c.rx = Client::Rx::kHandshake;
    c.got = 0;
    c.want = static_cast<uint32_t>(c.handshake.Want());
    c.payload_request = kNone;
    c.payload_segment = kNone;
    c.payload_left = 0;
    c.discard_left = 0;
    c.outstanding = 0;
    c.header_waiting = false;
    c.sendq.clear();
    auto greeting = c.handshake.Greeting();
    QueueBytes(c, std::vector<std::byte>(greeting.begin(), greeting.end()));
    spdlog::info("nbd: {} connected", c.peer);
    StartRecv(c);
    StartSend(c);
  }

  // --- receiving --------------------------------------------------------------------------------

  void StartRecv(Client& c) {
    if (c.closing || c.recv_inflight) return;
    const bool new_message = c.rx == Client::Rx::kHandshake || c.rx == Client::Rx::kHeader;
    if (new_message && (c.close_after || !ReplyRoom(c))) return;
    std::byte* dst = nullptr;
    size_t len = 0;
    switch (c.rx) {
      case Client::Rx::kHandshake:
      case Client::Rx::kHeader:
        if (c.header_waiting) {
          c.header_waiting = false;
          OnHeader(c);  // a request record may be free now
          if (c.header_waiting || c.recv_inflight || c.closing) return;
          return StartRecv(c);
        }
        if (c.rx == Client::Rx::kHeader && c.outstanding >= options_.max_requests) return;
        dst = c.small.data() + c.got;
        len = c.want - c.got;
        break;
      case Client::Rx::kPayload: {
        if (c.payload_segment == kNone && !NextPayloadSegment(c)) return;  // waits for room
        Segment& seg = segments_[c.payload_segment];
        dst = seg.data.data() + c.got;
        len = seg.length - c.got;
        break;
      }
      case Client::Rx::kDiscard:
        dst = c.small.data();
        len = static_cast<size_t>(std::min<uint64_t>(c.discard_left, c.small.size()));
        break;
    }
    io_uring_prep_recv(ring_.GetSqe(&c.recv_op), c.fd, dst, len, MSG_WAITALL);
    c.recv_inflight = true;
  }

  void OnRecv(Client& c, int32_t res) {
    if (c.closing) return;
    if (res == -EAGAIN || res == -EINTR) return StartRecv(c);
    if (res < 0) return CloseClient(c, fmt::format("receive failed: {}", std::strerror(-res)));
    if (res == 0) {
      bool clean = c.rx == Client::Rx::kHeader && c.got == 0;
      return CloseClient(c, clean ? "disconnected" : "disconnected in the middle of a message");
    }
    c.got += static_cast<uint32_t>(res);
    switch (c.rx) {
      case Client::Rx::kHandshake:
        if (c.got < c.want) break;
        OnHandshakeBytes(c);
        break;
      case Client::Rx::kHeader:
        if (c.got < c.want) break;
        OnHeader(c);
        break;
      case Client::Rx::kPayload: {
        Segment& seg = segments_[c.payload_segment];
        if (c.got < seg.length) break;
        c.payload_left -= seg.length;
        ready_.push_back(c.payload_segment);  // its bytes are in: the volume may have it
        c.payload_segment = kNone;
        c.got = 0;
        if (c.payload_left == 0) {
          c.payload_request = kNone;
          ExpectHeader(c);
        }
        break;
      }
      case Client::Rx::kDiscard:
        c.discard_left -= c.got;
        c.got = 0;
        if (c.discard_left == 0) ExpectHeader(c);
        break;
    }
    StartRecv(c);
  }

  void ExpectHeader(Client& c) {
    c.rx = Client::Rx::kHeader;
    c.got = 0;
    c.want = nbd::kRequestSize;
  }

  void OnHandshakeBytes(Client& c) {
    nbd::HandshakeStep step = c.handshake.Feed(std::span<const std::byte>(c.small.data(), c.want));
    if (!step.reply.empty()) QueueBytes(c, std::move(step.reply));
    switch (step.state) {
      case nbd::HandshakeState::kMore:
        c.got = 0;
        c.want = static_cast<uint32_t>(c.handshake.Want());
        break;
      case nbd::HandshakeState::kTransmission:
        c.transmission = true;
        spdlog::info("nbd: {}: transmission ({}structured replies{})", c.peer,
                     c.handshake.negotiated().structured_replies ? "" : "no ",
                     c.handshake.negotiated().base_allocation ? ", base:allocation" : "");
        ExpectHeader(c);
        break;
      case nbd::HandshakeState::kClose:
        c.close_after = true;
        c.close_reason = step.reason;
        break;
    }
    StartSend(c);
  }

  void OnHeader(Client& c) {
    auto parsed = nbd::DecodeRequest(std::span<const std::byte, nbd::kRequestSize>(
        c.small.data(), nbd::kRequestSize));
    if (!parsed.ok()) return CloseClient(c, parsed.status().message());
    const nbd::Request& r = *parsed;
    const auto& neg = c.handshake.negotiated();
    if (r.type == static_cast<uint16_t>(nbd::Command::kDisc)) {
      c.close_after = true;
      c.close_reason = "disconnected (NBD_CMD_DISC)";
      StartSend(c);
      return;
    }
    nbd::RequestCheck check = nbd::CheckRequest(r, c.handshake.export_info(), neg);
    if (check.error != 0) {
      if (auto left_out = bad_requests_.Allow(NowNs())) {
        spdlog::warn("nbd: {}: refused {} [{}, +{}): {}{}", c.peer, nbd::CommandName(r.type),
                     r.offset, r.length, check.message, LeftOut(*left_out));
      }
      QueueError(c, r.cookie, check.error, check.message);
      if (check.fatal) {
        c.close_after = true;
        c.close_reason = check.message;
      } else if (r.type == static_cast<uint16_t>(nbd::Command::kWrite) && r.length > 0) {
        c.rx = Client::Rx::kDiscard;  // its payload follows: read and drop it
        c.discard_left = r.length;
        c.got = 0;
      } else {
        ExpectHeader(c);
      }
      StartSend(c);
      return;
    }
    switch (static_cast<nbd::Command>(r.type)) {
      case nbd::Command::kBlockStatus:
        return AnswerBlockStatus(c, r);
      case nbd::Command::kCache:
        QueueSimple(c, r.cookie, 0);
        ExpectHeader(c);
        return;
      default:
        break;
    }
    uint32_t ri = NewRequest(c, r);
    if (ri == kNone) {
      // No request record free (every client at its limit): the header stays in `small`;
      // retried at the next Poll.
      c.header_waiting = true;
      return;
    }
    RequestRec& rec = requests_[ri];
    if (r.type == static_cast<uint16_t>(nbd::Command::kWrite)) {
      c.rx = Client::Rx::kPayload;
      c.payload_request = ri;
      c.payload_segment = kNone;
      c.payload_left = r.length;
      c.got = 0;
      return;
    }
    // READ: every segment now; FLUSH, TRIM, WRITE_ZEROES: one.
    while (rec.created < rec.total) {
      uint32_t si = NewSegment(ri, false);
      if (si == kNone) break;  // the rest at the next Poll (MakeReadSegments)
      ready_.push_back(si);
    }
    if (rec.created < rec.total) pending_reads_.push_back(ri);
    ExpectHeader(c);
  }

  // A request record for `r` on client `c`, or kNone when none is free.
  uint32_t NewRequest(Client& c, const nbd::Request& r) {
    if (free_requests_.empty()) return kNone;
    uint32_t ri = free_requests_.back();
    free_requests_.pop_back();
    RequestRec& rec = requests_[ri];
    rec = RequestRec{};
    rec.used = true;
    rec.client = c.index;
    rec.req = r;
    const auto cmd = static_cast<nbd::Command>(r.type);
    if (cmd == nbd::Command::kRead || cmd == nbd::Command::kWrite) {
      // Segments end at multiples of the segment size (one replication block each).
      const uint64_t seg = options_.segment_size;
      uint64_t first = r.offset / seg, last = (r.offset + r.length - 1) / seg;
      rec.total = static_cast<uint32_t>(last - first + 1);
    } else {
      rec.total = 1;
    }
    ++c.outstanding;
    return ri;
  }

  // Appends the next segment of request `ri` (with a pool buffer when `with_buffer`); kNone when
  // no record or buffer is free.
  uint32_t NewSegment(uint32_t ri, bool with_buffer) {
    if (free_segments_.empty()) return kNone;
    RequestRec& rec = requests_[ri];
    const nbd::Request& r = rec.req;
    uint64_t offset = r.offset;
    uint32_t length = r.length;
    const auto cmd = static_cast<nbd::Command>(r.type);
    if (cmd == nbd::Command::kRead || cmd == nbd::Command::kWrite) {
      const uint64_t seg = options_.segment_size;
      uint64_t start = rec.created == 0 ? r.offset : (r.offset / seg + rec.created) * seg;
      uint64_t end = std::min<uint64_t>(r.offset + r.length, (start / seg + 1) * seg);
      offset = start;
      length = static_cast<uint32_t>(end - start);
    }
    io::BufferRef buffer;
    if (with_buffer) {
      auto b = pool_.TryGet();
      if (!b) return kNone;
      buffer = std::move(*b);
    }
    uint32_t si = free_segments_.back();
    free_segments_.pop_back();
    Segment& s = segments_[si];
    s.request = ri;
    s.next = kNone;
    s.offset = offset;
    s.length = length;
    s.data = std::move(buffer);
    if (rec.last == kNone) {
      rec.first = si;
    } else {
      segments_[rec.last].next = si;
    }
    rec.last = si;
    ++rec.created;
    return si;
  }

  // The next segment of the WRITE whose payload is arriving, with its buffer; false when it
  // must wait (no buffer or record free).
  bool NextPayloadSegment(Client& c) {
    uint32_t si = NewSegment(c.payload_request, true);
    if (si == kNone) return false;
    c.payload_segment = si;
    c.got = 0;
    return true;
  }

  // READs whose segments did not all fit at once get the rest as records free up.
  void MakeReadSegments() {
    while (!pending_reads_.empty()) {
      uint32_t ri = pending_reads_.front();
      RequestRec& rec = requests_[ri];
      if (!rec.used) {
        pending_reads_.pop_front();
        continue;
      }
      while (rec.created < rec.total) {
        uint32_t si = NewSegment(ri, false);
        if (si == kNone) return;
        ready_.push_back(si);
      }
      pending_reads_.pop_front();
    }
  }

  void AnswerBlockStatus(Client& c, const nbd::Request& r) {
    uint64_t size = c.handshake.export_info().size;
    uint64_t len = std::min<uint64_t>(r.length, size - r.offset);
    nbd::Extent e{static_cast<uint32_t>(len), 0};  // allocated (or unknown): data
    QueueBytes(c, nbd::EncodeBlockStatus(r.cookie, std::span(&e, 1)));
    ExpectHeader(c);
    StartSend(c);
  }

  // --- replies ----------------------------------------------------------------------------------

  // Whether the queue has room for the reply of one more message (a request or an option): what
  // is queued, plus a reply to come for each request in progress, stays below its capacity.
  static bool ReplyRoom(const Client& c) {
    return c.sendq.size() + c.outstanding < c.sendq.capacity();
  }

  void Queue(Client& c, SendItem item) {
    if (c.sendq.full()) {  // ReplyRoom before each read keeps this from happening
      return CloseClient(c, fmt::format("{} replies queued: its reply queue is full",
                                        c.sendq.size()));
    }
    c.sendq.push_back(std::move(item));
  }

  void QueueBytes(Client& c, std::vector<std::byte> bytes) {
    SendItem item;
    item.bytes = std::move(bytes);
    Queue(c, std::move(item));
  }

  void QueueSimple(Client& c, uint64_t cookie, uint32_t error) {
    SendItem item;
    auto h = nbd::EncodeSimpleReply(error, cookie);
    std::memcpy(item.head.data(), h.data(), h.size());
    item.head_len = static_cast<uint32_t>(h.size());
    Queue(c, std::move(item));
  }

  void QueueError(Client& c, uint64_t cookie, uint32_t error, std::string_view message) {
    if (c.handshake.negotiated().structured_replies) {
      QueueBytes(c, nbd::EncodeErrorChunk(cookie, error, message));
    } else {
      QueueSimple(c, cookie, error);
    }
  }

  // Every segment of request `ri` is done: its reply goes on the queue.
  void QueueReply(uint32_t ri) {
    RequestRec& rec = requests_[ri];
    Client& c = clients_[rec.client];
    const bool read = rec.req.type == static_cast<uint16_t>(nbd::Command::kRead);
    if (rec.error != 0 || !read) {
      if (rec.error != 0) {
        QueueError(c, rec.req.cookie, rec.error,
                   fmt::format("{} [{}, +{}) failed", nbd::CommandName(rec.req.type),
                               rec.req.offset, rec.req.length));
      } else {
        QueueSimple(c, rec.req.cookie, 0);
      }
      FreeRequest(ri);
      StartSend(c);
      return;
    }
    SendItem item;
    item.request = ri;
    if (c.handshake.negotiated().structured_replies) {
      for (uint32_t si = rec.first; si != kNone; si = segments_[si].next) {
        Segment& s = segments_[si];
        uint16_t flags = s.next == kNone ? nbd::kReplyFlagDone : 0;
        s.chunk = nbd::EncodeOffsetDataHeader(flags, rec.req.cookie, s.offset, s.length);
      }
    } else {
      auto h = nbd::EncodeSimpleReply(0, rec.req.cookie);
      std::memcpy(item.head.data(), h.data(), h.size());
      item.head_len = static_cast<uint32_t>(h.size());
    }
    Queue(c, std::move(item));
    StartSend(c);
  }

  void StartSend(Client& c) {
    if (c.closing || c.send_inflight) return;
    if (c.sendq.empty()) {
      if (c.close_after && c.outstanding == 0) CloseClient(c, c.close_reason);
      return;
    }
    const bool structured = c.handshake.negotiated().structured_replies;
    size_t n = 0, items = 0;
    for (size_t i = 0; i < c.sendq.size(); ++i) {
      SendItem& item = c.sendq[i];
      // This item's iovecs, skipping what an earlier partial send already took.
      size_t skip = item.sent;
      auto add = [&](const void* p, size_t len) {
        if (len <= skip) {
          skip -= len;
          return;
        }
        c.iov[n++] = iovec{const_cast<std::byte*>(static_cast<const std::byte*>(p)) + skip,
                           len - skip};
        skip = 0;
      };
      size_t need = 2 + (item.request == kNone ? 0 : 2 * requests_[item.request].total);
      if (n + need > c.iov.size()) break;
      if (!item.bytes.empty()) add(item.bytes.data(), item.bytes.size());
      if (item.head_len > 0) add(item.head.data(), item.head_len);
      if (item.request != kNone) {
        for (uint32_t si = requests_[item.request].first; si != kNone; si = segments_[si].next) {
          Segment& s = segments_[si];
          if (structured) add(s.chunk.data(), s.chunk.size());
          add(s.data.data(), s.length);
        }
      }
      ++items;
    }
    if (n == 0) return;  // an item too large for one SENDMSG cannot happen (max_payload bound)
    c.iov_items = items;
    c.msg = msghdr{};
    c.msg.msg_iov = c.iov.data();
    c.msg.msg_iovlen = n;
    io_uring_prep_sendmsg(ring_.GetSqe(&c.send_op), c.fd, &c.msg, MSG_NOSIGNAL);
    c.send_inflight = true;
    c.send_started_ns = NowNs();
  }

  static size_t ItemSize(const SendItem& item, const std::vector<RequestRec>& requests,
                         const std::vector<Segment>& segments, bool structured) {
    size_t size = item.bytes.size() + item.head_len;
    if (item.request != kNone) {
      for (uint32_t si = requests[item.request].first; si != kNone; si = segments[si].next) {
        size += segments[si].length + (structured ? segments[si].chunk.size() : 0);
      }
    }
    return size;
  }

  void OnSend(Client& c, int32_t res) {
    if (c.closing) return;
    if (res == -EAGAIN || res == -EINTR) return StartSend(c);
    if (res < 0) return CloseClient(c, fmt::format("send failed: {}", std::strerror(-res)));
    const bool structured = c.handshake.negotiated().structured_replies;
    size_t left = static_cast<size_t>(res);
    while (left > 0 && !c.sendq.empty()) {
      SendItem& item = c.sendq.front();
      size_t size = ItemSize(item, requests_, segments_, structured);
      size_t take = std::min(left, size - item.sent);
      item.sent += take;
      left -= take;
      if (item.sent < size) break;
      if (item.request != kNone) FreeRequest(item.request);
      c.sendq.pop_front();
    }
    StartSend(c);
    StartRecv(c);  // a reply gone may have made room for requests
  }

  // --- teardown ---------------------------------------------------------------------------------

  void FreeRequest(uint32_t ri) {
    RequestRec& rec = requests_[ri];
    for (uint32_t si = rec.first; si != kNone;) {
      Segment& s = segments_[si];
      uint32_t next = s.next;
      s.data.Reset();
      s.request = kNone;
      s.next = kNone;
      ++s.gen;
      free_segments_.push_back(si);
      si = next;
    }
    Client& c = clients_[rec.client];
    if (c.outstanding > 0) --c.outstanding;
    rec.used = false;
    free_requests_.push_back(ri);
    MakeReadSegments();
  }

  void CloseClient(Client& c, const std::string& reason) {
    if (c.closing) return;
    c.closing = true;
    spdlog::info("nbd: {}: {}", c.peer, reason.empty() ? "closed" : reason);
    shutdown(c.fd, SHUT_RDWR);  // wakes the receive and send in flight
  }

  // A closed client with nothing in flight: its requests and segments go (the volume's late
  // completions for them are dropped by generation), and so does the connection.
  void Free(Client& c) {
    for (uint32_t ri = 0; ri < requests_.size(); ++ri) {
      if (requests_[ri].used && requests_[ri].client == c.index) {
        // Segments handed to the volume are forgotten: their completions will not match.
        FreeRequest(ri);
      }
    }
    // Segments already queued for the volume belong to freed requests: drop them.
    ready_.erase_if([this](uint32_t si) { return segments_[si].request == kNone; });
    c.sendq.clear();
    close(c.fd);
    c.fd = -1;
    c.used = false;
  }

  io::Ring& ring_;
  io::BufferPool& pool_;
  NbdFrontendOptions options_;
  std::vector<std::unique_ptr<io::Acceptor>> acceptors_;
  std::vector<Client> clients_;
  std::vector<RequestRec> requests_;
  std::vector<uint32_t> free_requests_;
  std::vector<Segment> segments_;
  std::vector<uint32_t> free_segments_;
  FixedRing<uint32_t> ready_;          // segments for the volume, in order
  FixedRing<uint32_t> pending_reads_;  // READs still making segments
  bool shutting_down_ = false;
  uint64_t connections_ = 0;
  LogLimiter refusals_{kLogBurst, kLogPeriodNs};
  LogLimiter bad_requests_{kLogBurst, kLogPeriodNs};
};

// Whether a READ reply of `payload` bytes fits one SENDMSG: two iovecs (chunk header, data) per
// segment, for up to two segments more than whole ones (an unaligned start and end).
bool ReplyFits(uint64_t payload, uint32_t segment_size) {
  const uint64_t segments = payload / segment_size + 2;
  return 2 * segments + 2 <= kMaxIov;
}

}  // namespace

uint32_t MaxPayloadFor(uint32_t segment_size, uint32_t limit) {
  if (ReplyFits(limit, segment_size)) return limit;
  const uint64_t segments = (kMaxIov - 2) / 2 - 2;
  return static_cast<uint32_t>(segments * segment_size);
}

Result<std::unique_ptr<NbdFrontend>> NbdFrontend::Create(io::Ring& ring, io::BufferPool& pool,
                                                         NbdFrontendOptions options) {
  if (options.segment_size == 0 || options.segment_size % proto::kSectorSize != 0 ||
      options.segment_size > pool.buffer_size()) {
    return Status::Invalid("nbd: segment size {} is not a multiple of {} that fits the pool's "
                           "{}-byte buffers",
                           options.segment_size, proto::kSectorSize, pool.buffer_size());
  }
  if (!ReplyFits(options.export_info.max_payload, options.segment_size)) {
    return Status::Invalid("nbd: a {}-byte payload in {}-byte segments is too many segments for "
                           "one reply",
                           options.export_info.max_payload, options.segment_size);
  }
  if (options.listen.empty()) return Status::Invalid("nbd: nowhere to listen (--export)");
  if (options.max_clients == 0 || options.max_requests == 0) {
    return Status::Invalid("nbd: at least one client and one request");
  }
  auto f = std::make_unique<NbdFrontendImpl>(ring, pool, std::move(options));
  RETURN_IF_ERROR(f->Listen());
  return std::unique_ptr<NbdFrontend>(std::move(f));
}

}  // namespace blkmirror::frontend
