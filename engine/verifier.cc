#include "engine/verifier.h"

#include <array>

#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "common/crc32c.h"
#include "engine/session.h"

namespace blkmirror::engine {
namespace {

constexpr size_t kChunks = 2;  // VerifyReqs outstanding

struct Chunk {
  bool active = false;
  uint32_t id = 0;
  uint64_t first_block = 0;
  uint32_t count = 0;
  uint32_t reads_issued = 0;
  uint32_t reads_done = 0;
  bool remote = false;
  std::array<uint32_t, proto::kMaxVerifyBlocks> local{};
  std::array<uint32_t, proto::kMaxVerifyBlocks> remote_crcs{};
};

// One source read: `blocks` consecutive blocks of a chunk (as many as a pool buffer holds), so
// that small blocks are still read in large requests.
struct Read {
  io::BufferRef buffer;
  Chunk* chunk = nullptr;
  uint32_t block = 0;
  uint32_t blocks = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

class VerifyRun {
 public:
  VerifyRun(io::Ring& ring, io::BufferPool& pool, io::BlockDevice& source,
            transport::Transport& t, transport::Transport* fallback, const VerifyOptions& options)
      : ring_(ring), pool_(pool), source_(source), t_(&t), fallback_(fallback), options_(options),
        reads_(options.read_depth) {
    for (uint32_t i = 0; i < reads_.size(); ++i) free_reads_.push_back(i);
  }

  Result<VerifyReport> Run(const transport::Endpoint& peer) {
    peer_ = peer.ToString();
    const uint64_t size = source_.size();
    if (size == 0) return Status::Invalid("{}: the source is empty", source_.name());
    total_blocks_ = (size + options_.block_size - 1) / options_.block_size;
    ASSIGN_OR_RETURN(auto conn, transport::ConnectWithFallback(*t_, fallback_, peer,
                                                               options_.connect_timeout));
    t_ = conn.transport;
    conn_ = conn.conn;
    proto::Hello hello;
    hello.kind = proto::SessionKind::kVerify;
    hello.block_size = options_.block_size;
    hello.window = 1;
    hello.volume_size = size;
    hello.volume_id = options_.volume_id;
    handshake_ = ClientHandshake(hello, options_.key, peer_);
    RETURN_IF_ERROR(handshake_.Start(*t_, conn_));

    uint64_t last_event = NowNs();
    const uint64_t timeout_ns = ToNs(options_.reply_timeout);
    while (status_.ok() && (!ready_ || compared_blocks_ < total_blocks_)) {
      bool progress = false;
      if (ready_) progress |= Issue();
      progress |= PollAll();
      progress |= CompareHead();
      if (progress) {
        last_event = NowNs();
        RETURN_IF_ERROR(ring_.Submit());
        continue;
      }
      if (NowNs() - last_event > timeout_ns) {
        status_ = Status::Error(ErrorCode::kTimeout,
                                fmt::format("{} did not answer within {} ms", peer_,
                                            options_.reply_timeout.count()));
        break;
      }
      RETURN_IF_ERROR(ring_.Wait(std::chrono::milliseconds(50)));
    }
    Finish();
    if (!status_.ok()) return status_;
    return report_;
  }

 private:
  // Sends requests and source reads as far as the chunk slots and buffers allow.
  bool Issue() {
    bool any = false;
    for (Chunk& c : chunks_) {
      if (c.active || next_block_ >= total_blocks_) continue;
      c = Chunk{};
      c.active = true;
      c.id = next_id_++;
      c.first_block = next_block_;
      c.count = static_cast<uint32_t>(
          std::min<uint64_t>(proto::kMaxVerifyBlocks, total_blocks_ - next_block_));
      next_block_ += c.count;
      uint64_t offset = c.first_block * options_.block_size;
      uint64_t end = std::min(source_.size(), (c.first_block + c.count) * options_.block_size);
      proto::Frame f;
      f.body = proto::VerifyReq{offset, end - offset, options_.block_size, c.id};
      auto item = ControlItem(conn_, f);
      Status s = t_->Post(std::span(&item, 1));
      if (!s.ok()) {
        status_ = s;
        return false;
      }
      any = true;
    }
    // Source reads, oldest chunk first.
    for (Chunk* c : Ordered()) {
      while (c->reads_issued < c->count && !free_reads_.empty()) {
        auto buffer = pool_.TryGet();
        if (!buffer) return any;
        uint32_t ri = free_reads_.back();
        free_reads_.pop_back();
        Read& r = reads_[ri];
        r.chunk = c;
        r.block = c->reads_issued;
        r.blocks = std::min<uint32_t>(
            std::max<uint32_t>(1, static_cast<uint32_t>(pool_.buffer_size() / options_.block_size)),
            c->count - c->reads_issued);
        r.offset = (c->first_block + r.block) * options_.block_size;
        r.length = static_cast<uint32_t>(std::min<uint64_t>(
            uint64_t{r.blocks} * options_.block_size, source_.size() - r.offset));
        r.buffer = std::move(*buffer);
        io::IoRequest req;
        req.op = io::IoOp::kRead;
        req.offset = r.offset;
        req.data = r.buffer.data();
        req.len = r.length;
        req.buf_index = r.buffer.index();
        req.tag = ri;
        Status s = source_.Submit(std::span(&req, 1));
        if (!s.ok()) {
          status_ = s;
          return any;
        }
        c->reads_issued += r.blocks;
        any = true;
      }
    }
    return any;
  }

  std::array<Chunk*, kChunks> Ordered() {
    std::array<Chunk*, kChunks> order{&chunks_[0], &chunks_[1]};
    if (!chunks_[0].active ||
        (chunks_[1].active && chunks_[1].first_block < chunks_[0].first_block)) {
      std::swap(order[0], order[1]);
    }
    return order;
  }

  bool PollAll() {
    bool any = false;
    std::array<io::IoCompletion, 32> io;
    size_t n;
    while ((n = source_.Poll(io)) > 0) {
      any = true;
      for (size_t i = 0; i < n; ++i) {
        Read& r = reads_[io[i].tag];
        if (io[i].res < 0) {
          status_ = Status::Errno(-io[i].res, fmt::format("cannot read {} at offset {}",
                                                          source_.name(), r.offset));
        } else if (static_cast<uint32_t>(io[i].res) != r.length) {
          status_ = Status::Errno(EIO, fmt::format("short read of {} at offset {}: {} of {} "
                                                   "bytes (did the source shrink?)",
                                                   source_.name(), r.offset, io[i].res,
                                                   r.length));
        } else {
          const uint32_t bs = options_.block_size;
          for (uint32_t j = 0; j < r.blocks; ++j) {
            r.chunk->local[r.block + j] =
                Crc32c(r.buffer.data() + uint64_t{j} * bs, std::min(bs, r.length - j * bs));
          }
        }
        r.chunk->reads_done += r.blocks;
        r.buffer.Reset();
        free_reads_.push_back(static_cast<uint32_t>(io[i].tag));
      }
    }
    std::array<transport::Completion, 16> cs;
    while ((n = t_->Poll(cs)) > 0) {
      any = true;
      for (size_t i = 0; i < n; ++i) OnTransport(cs[i]);
    }
    return any;
  }

  void OnTransport(transport::Completion& c) {
    if (c.conn != conn_) return;
    if (c.kind == transport::CompletionKind::kClosed) {
      closed_ = true;
      if (status_.ok() && !bye_sent_) {
        status_ = c.status.ok() ? Status::Error(ErrorCode::kClosed, peer_ + " closed the connection")
                                : c.status;
      }
      return;
    }
    if (c.kind == transport::CompletionKind::kSent) return;
    if (c.kind != transport::CompletionKind::kRecv) return;
    if (c.data) t_->Release(c.conn, std::move(c.data));
    auto frame = proto::Decode(c.header);
    if (!frame.ok()) {
      status_ = frame.status().Context("bad frame from " + peer_);
      return;
    }
    if (!ready_) {
      auto open = handshake_.OnFrame(*t_, conn_, *frame, c.header, c.control);
      if (!open.ok()) {
        status_ = open.status();
      } else if (*open) {
        ready_ = true;
        report_.replica_id = handshake_.hello_ok().replica_id;
        report_.replica_bytes = handshake_.hello_ok().capacity;
      }
      return;
    }
    switch (frame->type()) {
      case proto::FrameType::kError:
        status_ = StatusFromError(std::get<proto::Error>(frame->body), c.control, peer_);
        return;
      case proto::FrameType::kVerifyResp:
        return OnResp(std::get<proto::VerifyResp>(frame->body), c.control);
      case proto::FrameType::kHeartbeat:
        return;
      default:
        status_ = Status::Protocol("{} sent an unexpected {} frame", peer_,
                                   proto::FrameTypeName(frame->type()));
    }
  }

  void OnResp(const proto::VerifyResp& r, std::span<const std::byte> payload) {
    for (Chunk& c : chunks_) {
      if (!c.active || c.id != r.request_id || c.remote) continue;
      if (r.err != 0) {
        status_ = Status::Errno(r.err, fmt::format("{} could not read its copy at offset {}",
                                                   peer_, r.offset));
        return;
      }
      if (r.count != c.count || r.offset != c.first_block * options_.block_size) {
        status_ = Status::Protocol("{} answered {} CRCs at offset {}; asked for {} at {}", peer_,
                                   r.count, r.offset, c.count, c.first_block * options_.block_size);
        return;
      }
      for (uint32_t i = 0; i < c.count; ++i) c.remote_crcs[i] = proto::LoadLe32(&payload[4 * i]);
      c.remote = true;
      return;
    }
    status_ = Status::Protocol("{} answered verify request {} that is not outstanding", peer_,
                               r.request_id);
  }

  bool CompareHead() {
    Chunk* c = Ordered()[0];
    if (!c->active || !c->remote || c->reads_done < c->count || !status_.ok()) return false;
    for (uint32_t i = 0; i < c->count; ++i) {
      uint64_t block = c->first_block + i;
      uint64_t offset = block * options_.block_size;
      uint64_t length = std::min<uint64_t>(options_.block_size, source_.size() - offset);
      report_.blocks++;
      report_.bytes += length;
      if (c->local[i] == c->remote_crcs[i]) continue;
      report_.differing_blocks++;
      if (!report_.diffs.empty() &&
          report_.diffs.back().offset + report_.diffs.back().length == offset) {
        report_.diffs.back().length += length;
      } else {
        report_.diffs.push_back(DiffRange{offset, length});
      }
    }
    compared_blocks_ += c->count;
    c->active = false;
    if (options_.progress) options_.progress(report_.bytes);
    return true;
  }

  void Finish() {
    // Reads still in the kernel point at our buffers: let them land. Bounded by time, not by
    // turns: Wait returns at once while a transport busy-polls.
    using Clock = std::chrono::steady_clock;
    auto deadline = Clock::now() + std::chrono::seconds(2);
    while (free_reads_.size() < reads_.size() && Clock::now() < deadline) {
      (void)ring_.Wait(std::chrono::milliseconds(20));
      PollAll();
    }
    if (closed_) return;
    proto::Frame f;
    f.body = proto::Bye{};
    auto item = ControlItem(conn_, f);
    item.signal = true;
    bye_sent_ = true;
    if (!t_->Post(std::span(&item, 1)).ok()) t_->Close(conn_);
    // The replica ends the session on our Bye (its last frame, then it closes): once it has
    // closed, it is done with the target, and a write session right after (push
    // --checksum-skip to a replica that must grow) is not refused for this one.
    auto wait_closed = [&](std::chrono::seconds bound) {
      const auto until = Clock::now() + bound;
      while (!closed_ && Clock::now() < until) {
        (void)ring_.Wait(std::chrono::milliseconds(20));
        PollAll();
      }
    };
    wait_closed(std::chrono::seconds(2));
    if (closed_) return;
    t_->Close(conn_);
    wait_closed(std::chrono::seconds(1));
  }

  io::Ring& ring_;
  io::BufferPool& pool_;
  io::BlockDevice& source_;
  transport::Transport* t_;
  transport::Transport* fallback_;
  const VerifyOptions& options_;
  std::string peer_;
  transport::ConnId conn_ = transport::kNoConn;
  ClientHandshake handshake_;
  bool ready_ = false;
  bool closed_ = false;
  bool bye_sent_ = false;
  Status status_;
  uint64_t total_blocks_ = 0;
  uint64_t next_block_ = 0;
  uint64_t compared_blocks_ = 0;
  uint32_t next_id_ = 1;
  std::array<Chunk, kChunks> chunks_;
  std::vector<Read> reads_;
  std::vector<uint32_t> free_reads_;
  VerifyReport report_;
};

}  // namespace

Result<VerifyReport> Verify(io::Ring& ring, io::BufferPool& pool, io::BlockDevice& source,
                            transport::Transport& transport, const transport::Endpoint& peer,
                            const VerifyOptions& options, transport::Transport* fallback) {
  if (pool.buffer_size() < options.block_size) {
    return Status::Invalid("verify: buffers of {} bytes cannot hold a {}-byte block",
                           pool.buffer_size(), options.block_size);
  }
  if (options.read_depth == 0) return Status::Invalid("verify: read depth 0");
  auto run = std::make_unique<VerifyRun>(ring, pool, source, transport, fallback, options);
  return run->Run(peer);
}

}  // namespace blkmirror::engine
