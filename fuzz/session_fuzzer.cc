// session_fuzzer ("the handshake fuzzer"): a ReplicaServer fed hand-made frames by raw clients.
//
// A ReplicaServer (in-memory target behind a forwarding device, a pool of a few small buffers)
// listens on the loopback transport; up to two raw client connections at a time send the frames
// the input describes (fuzz/input_formats.h, session_input), the server is stepped between them,
// and every frame the server sends back is checked. Most records have magic, version and header
// CRC fixed up so the server's own checks are reached; the rest exercise the transport's
// refusal (a stream transport closes a connection whose bytes it cannot frame; the client does
// the same here when the loopback refuses to post such a header). With the setup bits, the
// replica requires authentication (the fuzzer can compute correct proofs), and every Nth disk
// request fails with EIO or ENOSPC.
//
// Properties (a violation traps; ASan/UBSan reports fail the run too):
//   - The device is written only with a payload some client sent in a Data frame whose CRC32C
//     matched (a compressed one: once decompressed, to exactly its length), which is one block of the volume of that connection's write-session Hello
//     (protocol 1) or a sector-aligned extent of at most a block within it (protocol 2), and that
//     connection received a HelloOk (with a key: after a correct proof); it is zeroed only in a
//     range a protocol-2 Zero frame asked for. Durable-level writes and zero ranges carry dsync.
//     At the end, every byte of the device that changed holds such a payload, or a zero inside
//     such a range. The session's version is the highest both sides speak, as the model of
//     docs/protocol.md says, and HelloOk names it.
//   - Every frame the server sends decodes and is one a replica may send at that point: HelloOk
//     only after Hello (with a key: after a correct proof, carrying a correct replica proof),
//     its Generation (protocol 3) once, only after the client's, without primary-only flags,
//     Acks only for seqs of acceptable frames (a Data with a matching CRC, a Zero, a Flush;
//     durable ones only for writes made with dsync or flushed since, and for a Flush only after
//     a device flush), Nacks only for blocks whose CRC did not match or whose compressed payload
//     did not decompress, VerifyResps only
//     for requests made, with one CRC per block, each the CRC32C of what the target holds of
//     that block (or an errno when a read failed).
//   - Once every client has closed and the server has been stepped and shut down, every buffer
//     of its pool is back, and the server settles without waiting on the ring.
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "common/clock.h"
#include "common/crc32c.h"
#include "engine/auth.h"
#include "engine/compress.h"
#include "engine/replica.h"
#include "fuzz/fuzz_common.h"
#include "fuzz/input_formats.h"
#include "io/buffer_pool.h"
#include "io/mem/mem_block_device.h"
#include "proto/frame.h"
#include "transport/loopback/loopback_transport.h"

namespace blkmirror::fuzz {
namespace {

namespace si = session_input;
using proto::FrameType;

constexpr uint64_t kDeviceSize = 64 << 10;
constexpr size_t kMaxBlock = 8 << 10;  // the largest block the replica accepts
constexpr size_t kServerBufferSize = kMaxBlock + transport::kReceiveHeadroom;
constexpr size_t kServerBuffers = 4;
constexpr int kMaxConnects = 8;   // client connections per input
constexpr int kMaxRecords = 64;   // frames per input
constexpr int kSettleSteps = 64;  // steps for the server to settle once the clients are gone
const transport::Endpoint kEndpoint{"replica", 7000};

engine::Key TheKey() {
  engine::Key k;
  for (size_t i = 0; i < k.bytes.size(); ++i) k.bytes[i] = static_cast<uint8_t>(0x5A ^ i);
  return k;
}

io::BufferPool& ServerPool() {
  static io::BufferPool* pool =
      io::BufferPool::Create(kServerBufferSize, kServerBuffers, io::HugePages::kNever)
          .value()
          .release();
  return *pool;
}

io::BufferPool& ClientPool() {
  static io::BufferPool* pool =
      io::BufferPool::Create(4096, 1, io::HugePages::kNever).value().release();
  return *pool;
}

// What the device holds before each run (not zeros: a write of zeros must show).
const std::vector<std::byte>& InitialContents() {
  static const std::vector<std::byte> bytes = [] {
    std::vector<std::byte> b(kDeviceSize);
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::byte>(i * 7 + 3);
    return b;
  }();
  return bytes;
}

class Run;

// Forwards to the run's MemBlockDevice, has every write checked, and fails every Nth request
// (the setup's choice) with an I/O error instead of performing it.
class WatchedDevice final : public io::BlockDevice {
 public:
  WatchedDevice(io::MemBlockDevice& dev, Run& run, uint32_t fail_every)
      : dev_(dev), run_(run), fail_every_(fail_every) {}
  uint64_t size() const override { return dev_.size(); }
  const std::string& name() const override { return dev_.name(); }
  bool direct() const override { return false; }
  uint32_t alignment() const override { return 1; }
  uint32_t queue_depth() const override { return dev_.queue_depth(); }
  uint32_t in_flight() const override {
    return dev_.in_flight() + static_cast<uint32_t>(failed_.size());
  }
  Status Submit(std::span<const io::IoRequest> requests) override;
  size_t Poll(std::span<io::IoCompletion> out) override {
    size_t n = 0;
    while (n < out.size() && !failed_.empty()) {
      out[n++] = failed_.front();
      failed_.pop_front();
    }
    return n + dev_.Poll(out.subspan(n));
  }

 private:
  io::MemBlockDevice& dev_;
  Run& run_;
  uint32_t fail_every_;
  uint64_t requests_ = 0;
  std::deque<io::IoCompletion> failed_;
};

// A Data, Zero or Flush frame a client sent.
struct SentData {
  FrameType type = FrameType::kData;
  size_t conn = 0;
  uint64_t seq = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint32_t crc = 0;
  bool durable = false;
  bool eligible = false;  // a replica may write it (see the properties above)
  bool written = false;
  bool flushed = false;  // written with dsync, or a flush completed after it was written
  bool bad_payload = false;  // compressed, and does not decompress to `length` bytes
  std::vector<std::byte> payload;  // the data (compressed frames: once decompressed)
};

// A VerifyReq a client sent.
struct SentVerify {
  proto::VerifyReq req;
  size_t writes_before = 0;  // device writes when it was sent
  bool answered = false;
};

struct ClientConn {
  transport::ConnId id = transport::kNoConn;
  bool open = true;
  std::optional<proto::Hello> hello;  // the first Hello sent
  proto::RawHeader hello_raw{};
  std::optional<engine::Nonce> nonce_r;  // from the replica's AuthChallenge
  std::optional<engine::Nonce> nonce_p;  // from our correct AuthProof
  bool got_hello_ok = false;
  bool sent_generation = false;  // protocol 3: the client's Generation went out (after HelloOk)
  bool got_generation = false;   // ... and the replica's came back
  std::set<uint64_t> good_seqs;  // eligible Data frames sent
  std::vector<SentVerify> verifies;
};

// A write the device saw, and the Data frames it could have come from.
struct SeenWrite {
  uint64_t offset = 0;
  uint32_t length = 0;
  std::vector<size_t> sources;
};

class Run {
 public:
  explicit Run(uint8_t setup)
      : key_(setup & si::kSetupKey ? std::optional(TheKey()) : std::nullopt),
        keep_timeouts_(setup & si::kSetupKeepTimeouts),
        fail_every_((setup & si::kSetupFailMask) >> si::kSetupFailShift),
        dev_("fuzzdev", kDeviceSize) {
    std::memcpy(dev_.mutable_contents().data(), InitialContents().data(), kDeviceSize);
    server_t_ = net_.CreateTransport("replica");
    FUZZ_CHECK(server_t_->Register(ServerPool()).ok(), "register the server pool");
    FUZZ_CHECK(server_t_->Listen(kEndpoint).ok(), "listen");
    client_t_ = net_.CreateTransport("client");
    FUZZ_CHECK(client_t_->Register(ClientPool()).ok(), "register the client pool");
    engine::ReplicaOptions options;
    options.target_name = dev_.name();
    options.key = key_;
    options.open_target =
        [this](uint64_t size, engine::TargetUse) -> Result<std::unique_ptr<io::BlockDevice>> {
      if (size > dev_.size()) return Status::Error(ErrorCode::kRefused, "volume does not fit");
      return std::unique_ptr<io::BlockDevice>(
          std::make_unique<WatchedDevice>(dev_, *this, fail_every_));
    };
    auto server = engine::ReplicaServer::Create(ProcessRing(), ServerPool(), std::move(options));
    FUZZ_CHECK(server.ok(), "ReplicaServer::Create: {}", server.status().message());
    server_ = std::move(server).value();
    server_->AddTransport(server_t_.get());
  }

  void Record(ByteReader& in);
  void Finish();
  void OnWrite(const io::IoRequest& r);
  void OnZero(const io::IoRequest& r);
  void OnFlush();
  void OnFailed(const io::IoRequest& r) {
    if (r.op == io::IoOp::kRead) ++failed_reads_;
  }

 private:
  ClientConn* ConnFor(size_t slot);
  ClientConn* ByConnId(transport::ConnId id);
  void Step(int n);
  void PollClient();
  void OnReply(ClientConn& c, const transport::Completion& comp);
  void NoteSent(ClientConn& c, size_t ci, const proto::RawHeader& h,
                std::span<const std::byte> payload);

  std::optional<engine::Key> key_;
  bool keep_timeouts_;
  uint32_t fail_every_;
  uint32_t failed_reads_ = 0;
  transport::LoopbackNetwork net_;  // outlives the transports
  io::MemBlockDevice dev_;
  std::unique_ptr<transport::Transport> server_t_;
  std::unique_ptr<transport::Transport> client_t_;
  std::unique_ptr<engine::ReplicaServer> server_;
  std::vector<ClientConn> conns_;
  std::array<int, 2> slots_{-1, -1};
  std::deque<std::vector<std::byte>> payloads_;  // Data payloads stay put until delivered
  std::vector<SentData> sent_;
  engine::Decompressor decompressor_;
  std::vector<SeenWrite> writes_;
  std::array<transport::Completion, 16> completions_;
};

Status WatchedDevice::Submit(std::span<const io::IoRequest> requests) {
  if (in_flight() + requests.size() > queue_depth()) {
    return Status::Error(ErrorCode::kBusy, "fuzz device: queue depth exceeded");
  }
  for (const io::IoRequest& r : requests) {
    if (fail_every_ != 0 && ++requests_ % fail_every_ == 0) {
      int err = r.op == io::IoOp::kWrite && (requests_ & 1) ? ENOSPC : EIO;
      failed_.push_back(io::IoCompletion{r.tag, -err});
      run_.OnFailed(r);
      continue;
    }
    RETURN_IF_ERROR(dev_.Submit(std::span(&r, 1)));
    if (r.op == io::IoOp::kWrite) run_.OnWrite(r);
    if (r.op == io::IoOp::kZero) run_.OnZero(r);
    if (r.op == io::IoOp::kFlush) run_.OnFlush();
  }
  return Status::Ok();
}

void Run::OnFlush() {
  for (SentData& sd : sent_) sd.flushed |= sd.written;
}

void Run::OnZero(const io::IoRequest& r) {
  SeenWrite w{r.offset, r.len, {}};
  bool dsync_ok = false;
  for (size_t i = 0; i < sent_.size(); ++i) {
    SentData& sd = sent_[i];
    if (sd.type != FrameType::kZero || !sd.eligible || sd.offset != r.offset ||
        sd.length != r.len) {
      continue;
    }
    sd.written = true;
    sd.flushed |= r.dsync;
    w.sources.push_back(i);
    dsync_ok |= sd.durable == r.dsync;
  }
  FUZZ_CHECK(!w.sources.empty(),
             "the replica zeroed {} bytes at offset {} that no acceptable Zero frame asked for",
             r.len, r.offset);
  FUZZ_CHECK(dsync_ok,
             "the replica zeroed the range at offset {} with dsync={} for a Zero frame asking for "
             "the other ack level",
             r.offset, r.dsync);
  writes_.push_back(std::move(w));
}

void Run::OnWrite(const io::IoRequest& r) {
  SeenWrite w{r.offset, r.len, {}};
  bool dsync_ok = false;
  for (size_t i = 0; i < sent_.size(); ++i) {
    SentData& sd = sent_[i];
    if (sd.type != FrameType::kData || !sd.eligible || sd.offset != r.offset ||
        sd.length != r.len ||
        std::memcmp(sd.payload.data(), r.data, r.len) != 0) {
      continue;
    }
    sd.written = true;
    sd.flushed |= r.dsync;
    w.sources.push_back(i);
    dsync_ok |= sd.durable == r.dsync;
  }
  FUZZ_CHECK(!w.sources.empty(),
             "the replica wrote {} bytes at offset {} (CRC32C 0x{:08x}) that no acceptable Data "
             "frame carried",
             r.len, r.offset, Crc32c(r.data, r.len));
  FUZZ_CHECK(dsync_ok,
             "the replica wrote the block at offset {} with dsync={} for a Data frame "
             "asking for the other ack level",
             r.offset, r.dsync);
  writes_.push_back(std::move(w));
}

ClientConn* Run::ConnFor(size_t slot) {
  if (slots_[slot] >= 0 && conns_[static_cast<size_t>(slots_[slot])].open) {
    return &conns_[static_cast<size_t>(slots_[slot])];
  }
  if (conns_.size() >= kMaxConnects) return nullptr;
  auto id = client_t_->Connect(kEndpoint, std::chrono::milliseconds(0));
  FUZZ_CHECK(id.ok(), "loopback connect: {}", id.status().message());
  conns_.push_back(ClientConn{*id});
  slots_[slot] = static_cast<int>(conns_.size() - 1);
  return &conns_.back();
}

ClientConn* Run::ByConnId(transport::ConnId id) {
  for (auto& c : conns_) {
    if (c.id == id) return &c;
  }
  return nullptr;
}

void Run::Record(ByteReader& in) {
  const uint8_t ctl = in.U8();
  proto::RawHeader h{};
  in.Fill(h);
  const bool fix = (ctl & si::kFixMask) != 0;
  const size_t slot = (ctl & si::kConn1) ? 1 : 0;
  const auto type = static_cast<FrameType>(GetType(h));
  if (fix && type == FrameType::kHello && !keep_timeouts_) PutLe32(h, kOffBody + 40, 0);
  if (ctl & si::kFixLen) {
    uint32_t len = 0;
    switch (type) {
      case FrameType::kData:
        len = GetLe32(h, kOffBody + 16);
        break;
      case FrameType::kAuthProof:
        len = proto::kAuthNonceSize + proto::kAuthMacSize;
        break;
      case FrameType::kAuthChallenge:
        len = proto::kAuthNonceSize;
        break;
      case FrameType::kError:
        len = GetLe32(h, kOffPayloadLen) % (proto::kMaxErrorText + 1);
        break;
      case FrameType::kVerifyResp:
        len = GetLe32(h, kOffBody + 8) * 4;
        break;
      default:
        break;
    }
    PutLe32(h, kOffPayloadLen, len);
  }
  const uint32_t payload_len = GetLe32(h, kOffPayloadLen);
  ClientConn* c = ConnFor(slot);
  const size_t ci = c != nullptr ? static_cast<size_t>(c - conns_.data()) : 0;

  transport::WorkItem item;
  std::span<const std::byte> payload;
  if (type == FrameType::kData) {
    // What the loopback copies into a replica buffer; larger payloads close the connection.
    size_t n = payload_len <= kServerBufferSize ? payload_len : 0;
    auto& buf = payloads_.emplace_back(std::max<size_t>(n, 1));
    if (ctl & si::kCompact) {
      std::array<std::byte, 255> pattern;
      size_t k = in.U8();
      in.Fill(std::span(pattern.data(), k));
      if (k > 0 && n > 0) {
        // The pattern, then doubling copies of what is filled so far.
        size_t filled = std::min(k, n);
        std::memcpy(buf.data(), pattern.data(), filled);
        while (filled < n) {
          size_t more = std::min(filled, n - filled);
          std::memcpy(buf.data() + filled, buf.data(), more);
          filled += more;
        }
      }
    } else {
      in.Fill(std::span(buf.data(), n));
    }
    if (ctl & si::kFixBody) {
      // A compressed payload's CRC is the data's: of what it decompresses to, when it does.
      const proto::Codec codec = proto::DataCodec(GetLe16(h, kOffFlags));
      const uint32_t length = GetLe32(h, kOffBody + 16);
      std::vector<std::byte> data(codec != proto::Codec::kNone && length <= kServerBufferSize
                                      ? length
                                      : 0);
      const bool decompressed =
          !data.empty() && decompressor_.Decompress(codec, buf.data(), static_cast<uint32_t>(n),
                                                    data.data(), length);
      PutLe32(h, kOffBody + 20,
              decompressed ? Crc32c(data.data(), length) : Crc32c(buf.data(), n));
    }
    item.data = buf.data();
    payload = std::span(buf.data(), n);
  } else {
    size_t n = payload_len <= proto::kMaxControlPayload ? payload_len : 0;
    auto& buf = payloads_.emplace_back(n);
    in.Fill(buf);
    if (type == FrameType::kAuthProof && (ctl & si::kFixBody) && key_ && c != nullptr && c->hello &&
        c->nonce_r && n == proto::kAuthNonceSize + proto::kAuthMacSize) {
      engine::Nonce nonce_p;
      std::memcpy(nonce_p.data(), buf.data(), nonce_p.size());
      engine::Mac mac = engine::PrimaryProof(*key_, c->hello_raw, *c->nonce_r, nonce_p);
      std::memcpy(buf.data() + nonce_p.size(), mac.data(), mac.size());
    }
    item.control = buf;
    payload = buf;
  }
  if (fix) FixPrefix(h);
  if (c != nullptr) {
    item.conn = c->id;
    item.header = h;
    if (client_t_->Post(std::span(&item, 1)).ok()) {
      NoteSent(*c, ci, h, payload);
    } else {
      // What a stream transport does with bytes it cannot frame (or a closed connection): close.
      client_t_->Close(c->id);
      c->open = false;
    }
  }
  switch (ctl >> si::kAfterShift) {
    case si::kAfterStep:
      Step(1);
      break;
    case si::kAfterStep4:
      Step(4);
      break;
    case si::kAfterNone:
      break;
    case si::kAfterClose:
      if (c != nullptr) {
        client_t_->Close(c->id);
        c->open = false;
      }
      Step(1);
      break;
  }
}

// The session version a Hello gets, from docs/protocol.md: the highest both sides speak; 0 when
// they share none.
uint16_t Version(const proto::Hello& h) {
  const uint16_t v = std::min(h.max_version, proto::kMaxProtocolVersion);
  return v >= std::max(h.min_version, proto::kMinProtocolVersion) ? v : 0;
}

// A write session data may flow in: protocol 3 only once the client's Generation went out
// (the replica refuses data before it).
bool WriteSession(const ClientConn& c) {
  return c.hello && c.hello->kind == proto::SessionKind::kWrite && Version(*c.hello) != 0 &&
         (Version(*c.hello) < proto::kGenerationsVersion || c.sent_generation);
}

// Where a Data frame may write: protocol 1, exactly one block of the volume; protocol 2, a
// sector-aligned extent of at most a block within it (its length a multiple of the sector, or
// reaching the volume's end).
bool ExtentOk(const proto::Hello& h, uint64_t offset, uint64_t length) {
  if (Version(h) < 2) {
    return offset % h.block_size == 0 && offset < h.volume_size &&
           length == std::min<uint64_t>(h.block_size, h.volume_size - offset);
  }
  return length > 0 && length <= h.block_size && offset % proto::kSectorSize == 0 &&
         offset <= h.volume_size && length <= h.volume_size - offset &&
         (length % proto::kSectorSize == 0 || offset + length == h.volume_size);
}

// Records what a posted frame means for the properties.
void Run::NoteSent(ClientConn& c, size_t ci, const proto::RawHeader& h,
                   std::span<const std::byte> payload) {
  auto f = proto::Decode(h);
  if (!f.ok()) return;
  switch (f->type()) {
    case FrameType::kHello:
      if (!c.hello) {
        c.hello = std::get<proto::Hello>(f->body);
        c.hello_raw = h;
      }
      return;
    case FrameType::kAuthProof: {
      if (!key_ || !c.hello || !c.nonce_r || c.nonce_p) return;
      engine::Nonce nonce_p;
      std::memcpy(nonce_p.data(), payload.data(), nonce_p.size());
      engine::Mac want = engine::PrimaryProof(*key_, c.hello_raw, *c.nonce_r, nonce_p);
      if (std::memcmp(want.data(), payload.data() + nonce_p.size(), want.size()) == 0) {
        c.nonce_p = nonce_p;
      }
      return;
    }
    case FrameType::kVerifyReq:
      c.verifies.push_back({std::get<proto::VerifyReq>(f->body), writes_.size()});
      return;
    case FrameType::kGeneration:
      // The first plain one opens the session's data (the replica takes frames in order, and
      // refuses one that comes too early: then nothing is written anyway).
      if (c.hello && Version(*c.hello) >= proto::kGenerationsVersion &&
          !(f->flags & (proto::kGenSyncStart | proto::kGenInSync))) {
        c.sent_generation = true;
      }
      return;
    case FrameType::kData: {
      const auto& d = std::get<proto::Data>(f->body);
      SentData sd;
      sd.conn = ci;
      sd.seq = d.seq;
      sd.offset = d.offset;
      sd.length = d.length;
      sd.crc = d.crc;
      sd.durable =
          (f->flags & proto::kDataAckMask) == static_cast<uint16_t>(proto::AckLevel::kDurable);
      const proto::Codec codec = proto::DataCodec(f->flags);
      if (codec != proto::Codec::kNone) {
        // The model decompresses with the same libraries: what the replica must write, or
        // NACK as a bad payload.
        sd.payload.resize(d.length);
        sd.bad_payload = !decompressor_.Decompress(codec, payload.data(),
                                                   static_cast<uint32_t>(payload.size()),
                                                   sd.payload.data(), d.length);
        if (sd.bad_payload) sd.payload.clear();
      } else if (payload.size() == d.length) {
        sd.payload.assign(payload.begin(), payload.end());
      }
      sd.eligible = WriteSession(c) && sd.payload.size() == d.length &&
                    Crc32c(sd.payload) == d.crc && ExtentOk(*c.hello, d.offset, d.length);
      if (sd.eligible) c.good_seqs.insert(d.seq);
      sent_.push_back(std::move(sd));
      return;
    }
    case FrameType::kZero: {
      const auto& z = std::get<proto::Zero>(f->body);
      SentData sd;
      sd.type = FrameType::kZero;
      sd.conn = ci;
      sd.seq = z.seq;
      sd.offset = z.offset;
      sd.length = static_cast<uint32_t>(std::min<uint64_t>(z.length, UINT32_MAX));
      sd.durable =
          (f->flags & proto::kDataAckMask) == static_cast<uint16_t>(proto::AckLevel::kDurable);
      sd.eligible = WriteSession(c) && Version(*c.hello) >= 2 && z.length > 0 &&
                    z.length <= UINT32_MAX && z.offset % proto::kSectorSize == 0 &&
                    z.length % proto::kSectorSize == 0 && z.offset <= c.hello->volume_size &&
                    z.length <= c.hello->volume_size - z.offset;
      if (sd.eligible) c.good_seqs.insert(z.seq);
      sent_.push_back(std::move(sd));
      return;
    }
    case FrameType::kFlush: {
      SentData sd;
      sd.type = FrameType::kFlush;
      sd.conn = ci;
      sd.seq = std::get<proto::Flush>(f->body).seq;
      sd.eligible = WriteSession(c) && Version(*c.hello) >= 2;
      sd.written = true;  // durable once a device flush follows it
      if (sd.eligible) c.good_seqs.insert(sd.seq);
      sent_.push_back(std::move(sd));
      return;
    }
    default:
      return;
  }
}

void Run::Step(int n) {
  for (int i = 0; i < n; ++i) {
    server_->Step();
    PollClient();
  }
}

void Run::PollClient() {
  for (;;) {
    size_t n = client_t_->Poll(completions_);
    for (size_t i = 0; i < n; ++i) {
      transport::Completion& comp = completions_[i];
      ClientConn* c = ByConnId(comp.conn);
      FUZZ_CHECK(c != nullptr, "client completion for unknown connection {}", comp.conn);
      switch (comp.kind) {
        case transport::CompletionKind::kRecv:
          OnReply(*c, comp);
          break;
        case transport::CompletionKind::kClosed:
          c->open = false;
          break;
        case transport::CompletionKind::kSent:
          break;
        case transport::CompletionKind::kAccepted:
          FUZZ_CHECK(false, "the client accepted a connection");
      }
    }
    if (n < completions_.size()) break;
  }
}

// A frame the replica sent on `c`.
void Run::OnReply(ClientConn& c, const transport::Completion& comp) {
  FUZZ_CHECK(!comp.data, "the replica sent block data");
  auto f = proto::Decode(comp.header);
  FUZZ_CHECK(f.ok(), "the replica sent a frame that does not decode: {}", f.status().message());
  const auto type = f->type();
  switch (type) {
    case FrameType::kAuthChallenge:
      FUZZ_CHECK(key_.has_value(), "AuthChallenge from a replica without a key");
      FUZZ_CHECK(c.hello && !c.nonce_r && !c.got_hello_ok, "AuthChallenge out of place");
      c.nonce_r.emplace();
      std::memcpy(c.nonce_r->data(), comp.control.data(), c.nonce_r->size());
      return;
    case FrameType::kHelloOk: {
      const auto& ok = std::get<proto::HelloOk>(f->body);
      FUZZ_CHECK(c.hello && !c.got_hello_ok, "HelloOk without a Hello, or twice");
      FUZZ_CHECK(ok.version == Version(*c.hello),
                 "HelloOk chose version {} for a Hello offering {}..{}", ok.version,
                 c.hello->min_version, c.hello->max_version);
      FUZZ_CHECK(ok.max_block_size == kMaxBlock && ok.capacity == kDeviceSize,
                 "HelloOk announces max block {} and capacity {}", ok.max_block_size, ok.capacity);
      if (key_) {
        FUZZ_CHECK(c.nonce_p.has_value(), "HelloOk to a client that never proved the key");
        engine::Mac want =
            engine::ReplicaProof(*key_, c.hello_raw, comp.header, *c.nonce_p, *c.nonce_r);
        FUZZ_CHECK(comp.control.size() == want.size() &&
                       std::memcmp(comp.control.data(), want.data(), want.size()) == 0,
                   "HelloOk carries a wrong replica proof");
      } else {
        FUZZ_CHECK(comp.control.empty(), "HelloOk with a proof from a replica without a key");
      }
      c.got_hello_ok = true;
      return;
    }
    case FrameType::kAck: {
      const auto& a = std::get<proto::Ack>(f->body);
      FUZZ_CHECK(c.got_hello_ok, "Ack before HelloOk");
      FUZZ_CHECK(a.cumulative <= c.good_seqs.size(),
                 "Ack up to seq {} but only {} Data frames with a good CRC were sent", a.cumulative,
                 c.good_seqs.size());
      auto check = [&](uint64_t seq) {
        FUZZ_CHECK(c.good_seqs.count(seq) == 1, "Ack covers seq {}, never sent with a good CRC",
                   seq);
        if (a.level != proto::AckLevel::kDurable) return;
        bool durable = false;
        for (const SentData& sd : sent_) {
          durable |= &conns_[sd.conn] == &c && sd.seq == seq && sd.eligible && sd.flushed;
        }
        FUZZ_CHECK(durable, "durable Ack covers seq {}, not written (or flushed) durably", seq);
      };
      for (uint64_t s = 0; s < a.cumulative; ++s) check(s);
      for (uint64_t i = 0; i < 64; ++i) {
        if ((a.sack_bits >> i) & 1) check(a.sack_base + i);
      }
      return;
    }
    case FrameType::kNack: {
      const auto& n = std::get<proto::Nack>(f->body);
      FUZZ_CHECK(c.got_hello_ok, "Nack before HelloOk");
      bool found = false;
      for (const SentData& sd : sent_) {
        const bool same = &conns_[sd.conn] == &c && sd.seq == n.seq && sd.offset == n.offset &&
                          sd.crc == n.expected_crc;
        if (n.reason == proto::NackReason::kBadPayload) {
          found |= same && sd.bad_payload;
        } else {
          found |= same && n.reason == proto::NackReason::kCrcMismatch &&
                   sd.payload.size() == sd.length && Crc32c(sd.payload) == n.actual_crc &&
                   n.actual_crc != n.expected_crc;
        }
      }
      FUZZ_CHECK(found, "Nack of seq {} at offset {} (reason {}) matches no Data frame with a "
                 "bad CRC or a compressed payload that does not decompress",
                 n.seq, n.offset, static_cast<uint32_t>(n.reason));
      return;
    }
    case FrameType::kVerifyResp: {
      const auto& v = std::get<proto::VerifyResp>(f->body);
      SentVerify* sv = nullptr;
      for (auto& x : c.verifies) {
        if (!x.answered && x.req.request_id == v.request_id && x.req.offset == v.offset) {
          sv = &x;
          break;
        }
      }
      FUZZ_CHECK(c.got_hello_ok && sv != nullptr,
                 "VerifyResp for request {} at offset {} that was never made (or answered twice)",
                 v.request_id, v.offset);
      sv->answered = true;
      const proto::VerifyReq& q = sv->req;
      const uint64_t blocks = (q.length + q.block_size - 1) / q.block_size;
      if (v.err != 0) {
        FUZZ_CHECK(failed_reads_ > 0 && v.count == 0 && comp.control.empty(),
                   "VerifyResp with err {} and {} CRCs ({} reads failed)", v.err, v.count,
                   failed_reads_);
        return;
      }
      FUZZ_CHECK(v.count == blocks, "VerifyResp for [{}, +{}) with block size {}: {} CRCs, err {}",
                 q.offset, q.length, q.block_size, v.count, v.err);
      if (writes_.size() != sv->writes_before) return;  // the device changed in between
      // Each block's CRC covers the bytes the target has of it (none past its end).
      auto now = dev_.contents();
      for (uint64_t i = 0; i < blocks; ++i) {
        uint64_t off = q.offset + i * q.block_size;
        uint64_t end = std::min({q.offset + q.length, off + q.block_size, uint64_t{now.size()}});
        uint32_t want = off < end ? Crc32c(now.data() + off, end - off) : Crc32c(nullptr, 0);
        FUZZ_CHECK(proto::LoadLe32(comp.control.data() + 4 * i) == want,
                   "VerifyResp CRC of the block at {} is 0x{:08x}, the target's is 0x{:08x}", off,
                   proto::LoadLe32(comp.control.data() + 4 * i), want);
      }
      return;
    }
    case FrameType::kGeneration:
      FUZZ_CHECK(c.got_hello_ok && c.sent_generation && !c.got_generation,
                 "the replica sent a Generation out of turn");
      FUZZ_CHECK(!(f->flags & (proto::kGenSyncStart | proto::kGenInSync)),
                 "the replica sent a Generation with primary-only flags");
      c.got_generation = true;
      return;
    case FrameType::kHeartbeat:
      FUZZ_CHECK(c.got_hello_ok, "Heartbeat before HelloOk");
      return;
    case FrameType::kError:
      return;
    default:
      FUZZ_CHECK(false, "the replica sent a {} frame", proto::FrameTypeName(type));
  }
}

void Run::Finish() {
  for (auto& c : conns_) {
    if (c.open) client_t_->Close(c.id);
    c.open = false;
  }
  for (int i = 0, idle = 0; i < kSettleSteps && idle < 2; ++i) {
    idle = server_->Step() == 0 ? idle + 1 : 0;
    PollClient();
  }
  uint64_t t0 = NowNs();
  server_->Shutdown();
  PollClient();
  FUZZ_CHECK(ServerPool().available() == ServerPool().count(),
             "{} of the replica's {} buffers are still out after every client closed",
             ServerPool().count() - ServerPool().available(), ServerPool().count());
  server_.reset();
  FUZZ_CHECK(NowNs() - t0 < kNoWaitLimitNs,
             "the replica took {} ms to shut down: sessions were left after every client closed",
             (NowNs() - t0) / 1000000);

  for (const SeenWrite& w : writes_) {
    bool accepted = false;
    for (size_t i : w.sources) accepted |= conns_[sent_[i].conn].got_hello_ok;
    FUZZ_CHECK(accepted, "block at offset {} written for a connection that never got HelloOk",
               w.offset);
  }
  // Every byte that changed holds what an acceptable, written Data frame carried there. Whole
  // pages compare with memcmp; only a page that changed is looked at byte by byte.
  auto now = dev_.contents();
  const auto& initial = InitialContents();
  constexpr size_t kPage = 4096;
  std::array<uint8_t, kPage> explained;
  for (size_t page = 0; page < now.size(); page += kPage) {
    size_t len = std::min(kPage, now.size() - page);
    if (std::memcmp(now.data() + page, initial.data() + page, len) == 0) continue;
    explained.fill(0);
    for (const SentData& sd : sent_) {
      uint64_t from = std::max<uint64_t>(sd.offset, page);
      uint64_t to = std::min<uint64_t>(sd.offset + sd.length, page + len);
      if (!sd.written || from >= to || sd.type == FrameType::kFlush) continue;
      for (uint64_t i = from; i < to; ++i) {
        const std::byte want =
            sd.type == FrameType::kZero ? std::byte{0} : sd.payload[i - sd.offset];
        if (now[i] == want) explained[i - page] = 1;
      }
    }
    for (size_t i = page; i < page + len; ++i) {
      FUZZ_CHECK(now[i] == initial[i] || explained[i - page],
                 "device byte {} changed, and no written Data frame carried its new value", i);
    }
  }
}

}  // namespace
}  // namespace blkmirror::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  blkmirror::fuzz::QuietLogs();
  (void)blkmirror::fuzz::ProcessRing();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blkmirror::fuzz;
  ByteReader in(data, size);
  Run run(in.U8());
  for (int i = 0; i < kMaxRecords && !in.empty(); ++i) run.Record(in);
  run.Finish();
  return 0;
}
