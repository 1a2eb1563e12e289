// `blkmirror push`: read the source with io_uring into pool buffers and replicate every block to
// every peer through the Replicator, at the ack level asked for.
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <cstdio>

#include "cli/commands.h"
#include "cli/setup.h"
#include "common/clock.h"
#include "common/histogram.h"
#include "common/progress.h"
#include "common/units.h"
#include "engine/replicator.h"
#include "io/uring/uring_block_device.h"

namespace blkmirror::cli {
namespace {

Result<proto::AckLevel> ParseAck(std::string_view text) {
  if (text == "sent") return proto::AckLevel::kSent;
  if (text == "received") return proto::AckLevel::kReceived;
  if (text == "durable") return proto::AckLevel::kDurable;
  return Status::Invalid("--ack '{}': expected sent, received or durable", text);
}

struct PushReport {
  uint64_t bytes = 0;
  uint64_t blocks = 0;
  double seconds = 0;
  LatencyHistogram latency;
  // Where the loop waited, for finding what limits a push (in --json as "waits_ms").
  uint64_t wait_acks_ns = 0;   // blocks read, window full: waiting for replicas
  uint64_t wait_reads_ns = 0;  // window open, nothing read yet: waiting for the source
};

// Reads the source into buffers (as many in flight as buffers allow) and feeds the Replicator.
class PushLoop {
 public:
  PushLoop(io::Ring& ring, io::BufferPool& pool, io::BlockDevice& source,
           engine::Replicator& replicator, uint32_t block_size, Progress& progress)
      : ring_(ring), pool_(pool), source_(source), rep_(replicator), block_size_(block_size),
        progress_(progress), slots_(pool.count()), ready_(pool.count()) {
    free_.reserve(pool.count());
    for (uint32_t i = 0; i < pool.count(); ++i) free_.push_back(i);
    batch_.reserve(pool.count());
  }

  Status Run(PushReport& report) {
    const uint64_t size = source_.size();
    const uint64_t total_blocks = (size + block_size_ - 1) / block_size_;
    uint64_t start = NowNs();
    while (report.blocks < total_blocks) {
      size_t events = 0;
      RETURN_IF_ERROR(IssueReads(size));
      events += batch_.size();
      ASSIGN_OR_RETURN(size_t reaped, ReapReads());
      events += reaped;
      while (ready_count_ > 0 && rep_.CanSubmit()) {
        Slot& s = slots_[ready_[ready_head_]];
        uint32_t si = ready_[ready_head_];
        ready_head_ = (ready_head_ + 1) % ready_.size();
        --ready_count_;
        RETURN_IF_ERROR(rep_.Submit(s.offset, std::move(s.buffer), s.length, s.offset));
        free_.push_back(si);
        ++events;
      }
      size_t n = rep_.Poll(done_);
      for (size_t i = 0; i < n; ++i) {
        const engine::WriteCompletion& c = done_[i];
        if (!c.status.ok()) return c.status;
        ++report.blocks;
        report.bytes += c.length;
        report.latency.Record(c.latency_ns);
      }
      events += n;
      RETURN_IF_ERROR(rep_.failure());
      progress_.Update(report.bytes);
      if (events == 0) {
        uint64_t t0 = NowNs();
        RETURN_IF_ERROR(ring_.Wait(std::chrono::milliseconds(100)));
        bool source_bound = ready_count_ == 0 && source_.in_flight() > 0;
        (source_bound ? report.wait_reads_ns : report.wait_acks_ns) += NowNs() - t0;
      } else {
        RETURN_IF_ERROR(ring_.Submit());
      }
    }
    report.seconds = static_cast<double>(NowNs() - start) / 1e9;
    return Status::Ok();
  }

  // Lets reads still in the kernel land before the buffers go away.
  void Drain() {
    for (int i = 0; i < 100 && source_.in_flight() > 0; ++i) {
      (void)ring_.Wait(std::chrono::milliseconds(20));
      (void)ReapReads();
    }
  }

 private:
  struct Slot {
    io::BufferRef buffer;
    uint64_t offset = 0;
    uint32_t length = 0;
  };

  Status IssueReads(uint64_t size) {
    batch_.clear();
    while (next_offset_ < size && !free_.empty() && pool_.available() > 0) {
      uint32_t si = free_.back();
      free_.pop_back();
      Slot& s = slots_[si];
      s.buffer = std::move(*pool_.TryGet());
      s.offset = next_offset_;
      s.length = static_cast<uint32_t>(std::min<uint64_t>(block_size_, size - next_offset_));
      next_offset_ += s.length;
      io::IoRequest r;
      r.op = io::IoOp::kRead;
      r.offset = s.offset;
      r.data = s.buffer.data();
      r.len = s.length;
      r.buf_index = s.buffer.index();
      r.tag = si;
      batch_.push_back(r);
    }
    if (batch_.empty()) return Status::Ok();
    return source_.Submit(batch_);
  }

  Result<size_t> ReapReads() {
    size_t total = 0;
    size_t n;
    while ((n = source_.Poll(io_)) > 0) {
      for (size_t i = 0; i < n; ++i) {
        auto si = static_cast<uint32_t>(io_[i].tag);
        Slot& s = slots_[si];
        if (io_[i].res < 0) {
          return Status::Errno(-io_[i].res, fmt::format("cannot read the source {} at offset {}",
                                                        source_.name(), s.offset));
        }
        if (static_cast<uint32_t>(io_[i].res) != s.length) {
          return Status::Errno(EIO, fmt::format("short read of the source {} at offset {}: {} "
                                                "of {} bytes (did it shrink during the push?)",
                                                source_.name(), s.offset, io_[i].res, s.length));
        }
        ready_[(ready_head_ + ready_count_) % ready_.size()] = si;
        ++ready_count_;
      }
      total += n;
    }
    return total;
  }

  io::Ring& ring_;
  io::BufferPool& pool_;
  io::BlockDevice& source_;
  engine::Replicator& rep_;
  uint32_t block_size_;
  Progress& progress_;
  uint64_t next_offset_ = 0;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  std::vector<uint32_t> ready_;  // ring of slots read and waiting for window space
  size_t ready_head_ = 0;
  size_t ready_count_ = 0;
  std::vector<io::IoRequest> batch_;
  std::array<io::IoCompletion, 64> io_;
  std::array<engine::WriteCompletion, 64> done_;
};

}  // namespace

int RunPush(const PushArgs& args) {
  auto fail = [](const Status& s, int code = kExitFailed) {
    PrintError("push", s);
    return code;
  };
  auto ack = ParseAck(args.ack);
  if (!ack.ok()) return fail(ack.status(), kExitUsage);
  auto block_size = ParseSize(args.block_size);
  if (!block_size.ok()) return fail(block_size.status().Context("--block-size"), kExitUsage);
  if (*block_size < proto::kBlockAlign || *block_size % proto::kBlockAlign != 0 ||
      *block_size > proto::kMaxBlockSize) {
    return fail(Status::Invalid("--block-size {}: must be a multiple of 4K between 4K and 64M",
                                args.block_size),
                kExitUsage);
  }
  if (args.window == 0 || args.window > 65536) {
    return fail(Status::Invalid("--window {}: must be between 1 and 65536", args.window),
                kExitUsage);
  }
  if (args.peers.empty()) return fail(Status::Invalid("at least one --peer is needed"), kExitUsage);
  std::vector<transport::Endpoint> endpoints;
  for (const std::string& p : args.peers) {
    auto ep = transport::Endpoint::Parse(p);
    if (!ep.ok()) return fail(ep.status().Context("--peer"), kExitUsage);
    endpoints.push_back(*ep);
  }
  auto info = io::StatPath(args.source);
  if (!info.ok()) return fail(info.status().Context("--source"));
  if (info->size == 0) return fail(Status::Invalid("the source {} is empty", args.source));
  auto volume_id = VolumeIdFor(args.source);
  if (!volume_id.ok()) return fail(volume_id.status());

  const auto bs = static_cast<uint32_t>(*block_size);
  // As many source reads in flight as blocks in the window: O_DIRECT reads must keep up.
  const uint32_t readahead = std::max<uint32_t>(4, args.window);
  auto loop = MakeLoop(bs, args.window + readahead, std::max<unsigned>(256, 4 * args.window));
  if (!loop.ok()) return fail(loop.status());
  io::UringOpenOptions open_options;
  open_options.queue_depth = static_cast<uint32_t>(loop->pool->count());
  auto source = io::OpenUringDevice(*loop->ring, args.source, open_options);
  if (!source.ok()) return fail(source.status());

  transport::TransportOptions transport_options;
  transport_options.tcp_zerocopy = args.tcp_zerocopy;
  auto transports = MakeTransports(*loop, args.transport, args.test_fault, transport_options);
  if (!transports.ok()) {
    return fail(transports.status(), transports.status().code() == ErrorCode::kInvalidArgument
                                         ? kExitUsage
                                         : kExitFailed);
  }

  engine::ReplicatorOptions options;
  options.ack = *ack;
  options.block_size = bs;
  options.window = args.window;
  options.volume_size = (*source)->size();
  options.volume_id = *volume_id;
  auto rep = engine::Replicator::Create(*loop->ring, *loop->pool, options);
  if (!rep.ok()) return fail(rep.status());
  std::vector<engine::PeerConfig> peers;
  for (const auto& ep : endpoints) {
    peers.push_back({transports->preferred.get(), ep, transports->fallback.get()});
  }
  Status connected = (*rep)->Connect(peers);
  if (!connected.ok()) return fail(connected);

  bool show = args.progress == 1 || (args.progress == -1 && isatty(STDERR_FILENO));
  Progress progress("push", (*source)->size(), show);
  PushReport report;
  PushLoop push(*loop->ring, *loop->pool, **source, **rep, bs, progress);
  Status result = push.Run(report);
  progress.Finish();
  push.Drain();
  if (result.ok()) result = (*rep)->Close();
  auto stats = (*rep)->stats();
  if (!result.ok()) return fail(result);

  uint64_t retransmits = 0, crc_mismatches = 0;
  nlohmann::json peers_json = nlohmann::json::array();
  std::string transport_used;
  for (const auto& s : stats) {
    retransmits += s.retransmits;
    crc_mismatches += s.crc_mismatches;
    transport_used = transport_used.empty() || transport_used == s.transport ? s.transport : "mixed";
    std::string why = !s.fallback_reason.empty() ? s.fallback_reason : transports->unavailable;
    peers_json.push_back({{"peer", s.peer},
                          {"transport", s.transport},
                          {"fallback_reason", why.empty() ? nlohmann::json(nullptr) : nlohmann::json(why)},
                          {"blocks_acked", s.blocks_acked},
                          {"bytes_acked", s.bytes_acked},
                          {"retransmits", s.retransmits},
                          {"crc_mismatches", s.crc_mismatches}});
  }
  double rate = report.seconds > 0 ? static_cast<double>(report.bytes) / report.seconds : 0;
  double p50 = static_cast<double>(report.latency.Quantile(0.50)) / 1e3;
  double p99 = static_cast<double>(report.latency.Quantile(0.99)) / 1e3;
  if (args.json) {
    nlohmann::json out = {{"bytes", report.bytes},
                          {"blocks", report.blocks},
                          {"seconds", report.seconds},
                          {"bytes_per_second", rate},
                          {"transport", transport_used},
                          {"ack", args.ack},
                          {"block_size", bs},
                          {"window", args.window},
                          {"peers", peers_json},
                          {"retransmits", retransmits},
                          {"crc_mismatches", crc_mismatches},
                          {"ack_latency_us", {{"p50", p50}, {"p99", p99}}},
                          {"waits_ms",
                           {{"acks", static_cast<double>(report.wait_acks_ns) / 1e6},
                            {"source", static_cast<double>(report.wait_reads_ns) / 1e6}}}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("pushed %s in %.2f s (%s) to %zu peer(s) over %s, ack %s; ack latency p50 %.1f "
                "us, p99 %.1f us; %llu retransmits, %llu CRC mismatches\n",
                FormatBytes(static_cast<double>(report.bytes)).c_str(), report.seconds,
                FormatRate(rate).c_str(), stats.size(), transport_used.c_str(), args.ack.c_str(),
                p50, p99,
                static_cast<unsigned long long>(retransmits),
                static_cast<unsigned long long>(crc_mismatches));
  }
  return kExitOk;
}

}  // namespace blkmirror::cli
