// The replication engine end to end in one thread: a Replicator and ReplicaServers connected by
// the loopback transport, replicas writing to in-memory devices. Covers the window, ack levels,
// ordering, NACK -> resend, retry exhaustion, fan-out, handshake refusals and malformed input.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <thread>

#include "common/crc32c.h"
#include "engine/replicator.h"
#include "io/mem/mem_block_device.h"
#include "io/ring.h"
#include "tests/unit/loopback_replica.h"
#include "transport/loopback/loopback_transport.h"

namespace blkmirror::engine {
namespace {

using proto::AckLevel;
using Replica = testing::LoopbackReplica;

std::vector<std::byte> RandomBytes(size_t n, uint32_t seed) {
  std::vector<std::byte> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<std::byte>(rng());
  return v;
}

class ReplicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ring = io::Ring::Create(64);
    ASSERT_TRUE(ring.ok()) << ring.status().message();
    ring_ = std::move(ring).value();
  }

  // A replica listening on "replica<i>:7000", with a target of `capacity` bytes and receive
  // buffers of `max_block`.
  Replica& AddReplica(uint64_t capacity, size_t max_block = 64 << 10, std::string fault = "",
                      std::optional<Key> key = std::nullopt) {
    testing::LoopbackReplicaOptions o;
    o.capacity = capacity;
    o.max_block = max_block;
    o.fault = std::move(fault);
    o.key = key;
    o.max_version = replica_max_version_;
    replicas_.push_back(testing::MakeLoopbackReplica(
        net_, *ring_, "replica" + std::to_string(replicas_.size()), std::move(o)));
    return *replicas_.back();
  }

  // Fills a replica's target with non-zero bytes: zeros must then be written, not assumed.
  static void Poison(Replica& r) {
    std::fill(r.device->mutable_contents().begin(), r.device->mutable_contents().end(),
              std::byte{0xee});
  }

  // The primary: a pool, a transport, and a Replicator to every replica added so far.
  Status StartPrimary(ReplicatorOptions options) {
    options_ = options;
    rep_.reset();  // a previous one holds buffers of the pool replaced below
    primary_transport_.reset();
    primary_pool_ =
        std::move(io::BufferPool::Create(
                      options.block_size,
                      options.window + 4 + Replicator::OwnBuffers(options, replicas_.size()),
                      io::HugePages::kNever)
                      .value());
    primary_transport_ = net_.CreateTransport("primary");
    RETURN_IF_ERROR(primary_transport_->Register(*primary_pool_));
    ASSIGN_OR_RETURN(rep_, Replicator::Create(*ring_, *primary_pool_, options));
    std::vector<PeerConfig> peers;
    for (auto& r : replicas_) {
      if (unreachable_first_) {
        peers.push_back({&unreachable_, r->endpoint, primary_transport_.get()});
      } else {
        peers.push_back({primary_transport_.get(), r->endpoint});
      }
    }
    RETURN_IF_ERROR(rep_->StartConnect(peers));
    for (int i = 0; i < 1000 && !rep_->ready() && rep_->failure().ok(); ++i) Step();
    RETURN_IF_ERROR(rep_->failure());
    return rep_->ready() ? Status::Ok() : Status::Error(ErrorCode::kTimeout, "no handshake");
  }

  // One turn of every loop. Completions the primary reports land in done_. A replica in
  // frozen_ is not stepped (a hung peer: no acks, no heartbeats).
  void Step() {
    std::array<WriteCompletion, 16> out;
    size_t n = rep_ ? rep_->Poll(out) : 0;
    for (size_t i = 0; i < n; ++i) done_.push_back(out[i]);
    for (size_t i = 0; i < replicas_.size(); ++i) {
      if (replicas_[i]->server && !(frozen_ >> i & 1)) replicas_[i]->server->Step();
    }
  }

  // Pushes `data` as a volume through the Replicator; returns the first failed completion's
  // status, or the Replicator's failure. Checks the window is never exceeded.
  Status Push(const std::vector<std::byte>& data, PeerMask mask = kAllPeers) {
    const uint32_t bs = options_.block_size;
    uint64_t next = 0;
    size_t expected = (data.size() + bs - 1) / bs;
    // Bounded by time, not turns: some tests wait on a timeout (a silent peer).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (done_.size() < expected && std::chrono::steady_clock::now() < deadline) {
      size_t before = done_.size();
      uint64_t submitted = next;
      while (next < data.size() && rep_->CanSubmit()) {
        auto buf = primary_pool_->TryGet();
        if (!buf) break;
        auto len = static_cast<uint32_t>(std::min<uint64_t>(bs, data.size() - next));
        std::memcpy(buf->data(), data.data() + next, len);
        RETURN_IF_ERROR(rep_->Submit(next, std::move(*buf), len, next, mask));
        next += len;
        max_in_flight_ = std::max(max_in_flight_, rep_->in_flight());
      }
      Step();
      if (done_.size() == before && next == submitted) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      for (const auto& c : done_) RETURN_IF_ERROR(c.status);
      RETURN_IF_ERROR(rep_->failure());
    }
    return done_.size() == expected ? Status::Ok()
                                    : Status::Error(ErrorCode::kTimeout, "push did not finish");
  }

  // Push, then CloseAll: what a test does before it compares the replicas with the source.
  ::testing::AssertionResult PushAndClose(const std::vector<std::byte>& data) {
    Status s = Push(data);
    if (!s.ok()) return ::testing::AssertionFailure() << s.message();
    CloseAll();
    return ::testing::AssertionSuccess();
  }

  void CloseAll() {
    rep_->StartClose();
    for (int i = 0; i < 1000 && !rep_->closed(); ++i) Step();
    EXPECT_TRUE(rep_->closed());
    for (int i = 0; i < 10; ++i) Step();
  }

  // A preferred transport that reaches no peer (as RDMA where no device does): with
  // unreachable_first_, every peer gets it first and the loopback transport as its fallback.
  class Unreachable final : public transport::Transport {
   public:
    std::string_view name() const override { return "nowhere"; }
    Status Register(io::BufferPool&) override { return Status::Ok(); }
    Result<transport::Endpoint> Listen(const transport::Endpoint&) override {
      return Status::Error(ErrorCode::kUnavailable, "nowhere listens");
    }
    Result<transport::ConnId> Connect(const transport::Endpoint& peer,
                                      std::chrono::milliseconds) override {
      ++connects;
      return Status::Error(ErrorCode::kUnavailable,
                           fmt::format("no device here reaches {}", peer.ToString()));
    }
    Status Post(std::span<const transport::WorkItem>) override {
      return Status::Error(ErrorCode::kUnavailable, "nowhere has no connection");
    }
    size_t SendSpace(transport::ConnId) const override { return 0; }
    size_t Poll(std::span<transport::Completion>) override { return 0; }
    void Release(transport::ConnId, io::BufferRef) override {}
    void Trust(transport::ConnId) override {}
    void Close(transport::ConnId) override {}
    std::string PeerName(transport::ConnId) const override { return ""; }
    int connects = 0;
  };
  Unreachable unreachable_;
  bool unreachable_first_ = false;

  transport::LoopbackNetwork net_;
  std::unique_ptr<io::Ring> ring_;
  std::vector<std::unique_ptr<Replica>> replicas_;
  ReplicatorOptions options_;
  std::unique_ptr<io::BufferPool> primary_pool_;
  std::unique_ptr<transport::Transport> primary_transport_;
  std::unique_ptr<Replicator> rep_;
  std::vector<WriteCompletion> done_;
  uint32_t max_in_flight_ = 0;
  uint64_t frozen_ = 0;
  uint16_t replica_max_version_ = proto::kMaxProtocolVersion;  // for replicas added from now on
};

ReplicatorOptions Options(uint64_t volume, AckLevel ack, uint32_t block = 16 << 10,
                          uint32_t window = 4) {
  ReplicatorOptions o;
  o.ack = ack;
  o.block_size = block;
  o.window = window;
  o.volume_size = volume;
  return o;
}

bool Equal(std::span<const std::byte> a, const std::vector<std::byte>& b) {
  return a.size() >= b.size() && std::memcmp(a.data(), b.data(), b.size()) == 0;
}

class AckLevels : public ReplicatorTest, public ::testing::WithParamInterface<AckLevel> {};

TEST_P(AckLevels, ReplicatesEveryBlockAndRespectsTheWindow) {
  auto data = RandomBytes(40 * (16 << 10) + 1234, 1);  // a short last block
  Replica& r = AddReplica(data.size());
  ASSERT_TRUE(StartPrimary(Options(data.size(), GetParam())).ok());
  const auto t0 = std::chrono::steady_clock::now();
  Status s = Push(data);
  ASSERT_TRUE(s.ok()) << s.message();
  const auto elapsed = std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now() - t0)
                           .count();
  // Each write's latency is from its Submit to its completion: within the push.
  for (const auto& c : done_) {
    EXPECT_LE(c.latency_ns, static_cast<uint64_t>(elapsed)) << "write at " << c.offset;
  }
  CloseAll();
  EXPECT_EQ(done_.size(), 41u);
  EXPECT_LE(max_in_flight_, 4u);
  EXPECT_TRUE(Equal(r.device->contents(), data));
  EXPECT_EQ(r.device->writes(), 41u);  // each block written once
  auto stats = rep_->stats();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].blocks_acked, 41u);
  EXPECT_EQ(stats[0].retransmits, 0u);
  // Every block's ack was timed; nothing is in flight once all are acked.
  EXPECT_EQ(stats[0].ack_latency.count(), 41u);
  EXPECT_LE(stats[0].ack_latency.sum(), 41 * static_cast<uint64_t>(elapsed));
  EXPECT_EQ(stats[0].bytes_in_flight, 0u);
  if (GetParam() == AckLevel::kDurable) {
    EXPECT_TRUE(Equal(r.device->durable_contents(), data));
  }
  // Every buffer went back to its pool.
  rep_.reset();
  EXPECT_EQ(primary_pool_->available(), primary_pool_->count());
  EXPECT_EQ(r.pool->available(), r.pool->count());
}

INSTANTIATE_TEST_SUITE_P(Replicator, AckLevels,
                         ::testing::Values(AckLevel::kSent, AckLevel::kReceived,
                                           AckLevel::kDurable),
                         [](const auto& info) { return std::string(proto::AckLevelName(info.param)); });

// Blocks of zeros go as zero ranges to replicas that take them (protocol 2), as Data with their
// CRC to a protocol-1 replica; both end with the same contents.
TEST_F(ReplicatorTest, ZeroBlocksGoAsZeroRangesWhereTheReplicaTakesThem) {
  auto data = RandomBytes(8 * (16 << 10), 3);
  for (size_t block : {1u, 2u, 6u}) {
    std::fill(data.begin() + block * (16 << 10), data.begin() + (block + 1) * (16 << 10),
              std::byte{0});
  }
  Replica& modern = AddReplica(data.size());
  replica_max_version_ = 1;
  Replica& old = AddReplica(data.size());
  // Both targets start non-zero: the zeros must be written, not assumed.
  Poison(modern);
  Poison(old);
  ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable)).ok());
  ASSERT_TRUE(PushAndClose(data));
  EXPECT_TRUE(Equal(modern.device->contents(), data));
  EXPECT_TRUE(Equal(old.device->contents(), data));
  EXPECT_EQ(modern.device->zeroes(), 3u);
  EXPECT_EQ(modern.device->writes(), 5u);
  EXPECT_EQ(old.device->zeroes(), 0u);
  EXPECT_EQ(old.device->writes(), 8u);
  auto stats = rep_->stats();
  EXPECT_EQ(stats[0].zero_bytes, 3u * (16 << 10));
  EXPECT_EQ(stats[0].bytes_sent, 5u * (16 << 10));
  EXPECT_EQ(stats[1].zero_bytes, 0u);
  EXPECT_EQ(stats[1].bytes_sent, data.size());
  EXPECT_EQ(stats[1].crc_mismatches, 0u);
}

// A preferred transport that cannot reach a peer gives way to the fallback, per peer, and the
// reason stays in the peer's stats (push --json fallback_reason).
TEST_F(ReplicatorTest, APeerThePreferredTransportCannotReachGoesOverTheFallback) {
  auto data = RandomBytes(4 * (16 << 10), 8);
  Replica& a = AddReplica(data.size());
  Replica& b = AddReplica(data.size());
  unreachable_first_ = true;
  ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable)).ok());
  EXPECT_EQ(unreachable_.connects, 2);
  ASSERT_TRUE(PushAndClose(data));
  EXPECT_TRUE(Equal(a.device->contents(), data));
  EXPECT_TRUE(Equal(b.device->contents(), data));
  for (const auto& st : rep_->stats()) {
    EXPECT_EQ(st.transport, primary_transport_->name());
    EXPECT_NE(st.fallback_reason.find("nowhere: no device here reaches"), std::string::npos)
        << st.fallback_reason;
  }
}

// A zero range is whole sectors: the short, all-zero tail of a volume whose size is no multiple
// of 512 goes as data (a Zero frame of 312 bytes is malformed, and the replica would drop us).
TEST_F(ReplicatorTest, AShortTailOfZerosGoesAsData) {
  auto data = RandomBytes(3 * (16 << 10) + 312, 4);
  std::fill(data.begin() + (16 << 10), data.begin() + 2 * (16 << 10), std::byte{0});
  std::fill(data.begin() + 3 * (16 << 10), data.end(), std::byte{0});
  Replica& r = AddReplica(data.size());
  Poison(r);
  ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable)).ok());
  ASSERT_TRUE(PushAndClose(data));
  EXPECT_TRUE(Equal(r.device->contents(), data));
  EXPECT_EQ(r.device->zeroes(), 1u);
  EXPECT_EQ(r.device->writes(), 3u);
  EXPECT_EQ(rep_->stats()[0].zero_bytes, 16u << 10);
  EXPECT_EQ(rep_->stats()[0].bytes_sent, 2u * (16 << 10) + 312);
}

// --compress: payloads that compress go compressed (each block once, whatever the peers), those
// that do not go as they are; the replicas end equal to the source.
TEST_F(ReplicatorTest, CompressedPayloadsWhereTheySave) {
  for (const char* spec : {"lz4", "zstd:3"}) {
    SCOPED_TRACE(spec);
    replicas_.clear();
    done_.clear();
    // Blocks of text-like bytes (compress well) and of random bytes (do not).
    auto data = RandomBytes(8 * (16 << 10), 5);
    for (size_t i = 0; i < 4 * (16 << 10); ++i) data[i] = static_cast<std::byte>("abcabcabd"[i % 9]);
    Replica& a = AddReplica(data.size());
    Replica& b = AddReplica(data.size());
    ReplicatorOptions o = Options(data.size(), AckLevel::kDurable);
    auto parsed = CompressSpec::Parse(spec);
    ASSERT_TRUE(parsed.ok());
    o.compress = *parsed;
    o.compress.mode = CompressMode::kAlways;  // auto would decide by this machine's speed
    ASSERT_TRUE(StartPrimary(o).ok());
    ASSERT_TRUE(PushAndClose(data));
    EXPECT_TRUE(Equal(a.device->contents(), data));
    EXPECT_TRUE(Equal(b.device->contents(), data));
    for (const auto& st : rep_->stats()) {
      EXPECT_EQ(st.bytes_sent, data.size());
      EXPECT_GT(st.wire_bytes, 4u * (16 << 10));  // the random half as it is
      EXPECT_LT(st.wire_bytes, 4u * (16 << 10) + 4096);  // the text half in little
      EXPECT_EQ(st.crc_mismatches, 0u);
    }
  }
}

TEST_F(ReplicatorTest, DurableCompletionMeansFlushed) {
  // Every write reported complete at `durable` is in the device's flushed contents.
  auto data = RandomBytes(16 * (16 << 10), 2);
  Replica& r = AddReplica(data.size());
  ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable)).ok());
  uint64_t next = 0;
  for (int guard = 0; guard < 10000 && done_.size() < 16; ++guard) {
    while (next < data.size() && rep_->CanSubmit()) {
      auto buf = primary_pool_->TryGet();
      std::memcpy(buf->data(), data.data() + next, 16 << 10);
      ASSERT_TRUE(rep_->Submit(next, std::move(*buf), 16 << 10, next).ok());
      next += 16 << 10;
    }
    size_t before = done_.size();
    Step();
    for (size_t i = before; i < done_.size(); ++i) {
      const auto& c = done_[i];
      ASSERT_TRUE(c.status.ok());
      auto durable = r.device->durable_contents();
      EXPECT_EQ(std::memcmp(durable.data() + c.offset, data.data() + c.offset, c.length), 0)
          << "block at " << c.offset << " acked durable before its flush";
    }
  }
  EXPECT_EQ(done_.size(), 16u);
  CloseAll();
}

TEST_F(ReplicatorTest, CanSubmitIsFalseWhileTheWindowIsFull) {
  auto data = RandomBytes(8 * (16 << 10), 3);
  AddReplica(data.size());
  ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable, 16 << 10, 2)).ok());
  for (uint64_t off = 0; off < 2 * (16 << 10); off += 16 << 10) {
    ASSERT_TRUE(rep_->CanSubmit());
    auto buf = primary_pool_->TryGet();
    ASSERT_TRUE(rep_->Submit(off, std::move(*buf), 16 << 10, off).ok());
  }
  EXPECT_FALSE(rep_->CanSubmit());
  auto buf = primary_pool_->TryGet();
  Status s = rep_->Submit(2 * (16 << 10), std::move(*buf), 16 << 10, 0);
  EXPECT_EQ(s.code(), ErrorCode::kBusy);
  for (int i = 0; i < 100 && done_.size() < 2; ++i) Step();
  EXPECT_EQ(done_.size(), 2u);
  EXPECT_TRUE(rep_->CanSubmit());
}

TEST_F(ReplicatorTest, OneWriteOfABlockAtATime) {
  // A second write of a block while the first is in flight is refused (it could overtake the
  // first on a replica's disk, and the first's durable ack would clear the second's dirty bit).
  auto data = RandomBytes(4 * (16 << 10), 21);
  Replica& r = AddReplica(data.size());
  ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable)).ok());
  auto first = primary_pool_->TryGet();
  std::memcpy(first->data(), data.data(), 16 << 10);
  ASSERT_TRUE(rep_->Submit(0, std::move(*first), 16 << 10, 1).ok());
  auto second = primary_pool_->TryGet();
  std::memcpy(second->data(), data.data() + (16 << 10), 16 << 10);
  Status s = rep_->Submit(0, std::move(*second), 16 << 10, 2);
  EXPECT_EQ(s.code(), ErrorCode::kBusy) << s.message();
  EXPECT_NE(s.message().find("[0, +16384) is still in flight"), std::string::npos) << s.message();
  for (int i = 0; i < 100 && !rep_->idle(); ++i) Step();
  ASSERT_TRUE(rep_->idle());
  auto again = primary_pool_->TryGet();
  std::memcpy(again->data(), data.data() + (16 << 10), 16 << 10);
  ASSERT_TRUE(rep_->Submit(0, std::move(*again), 16 << 10, 3).ok());
  for (int i = 0; i < 100 && !rep_->idle(); ++i) Step();
  EXPECT_EQ(std::memcmp(r.device->durable_contents().data(), data.data() + (16 << 10), 16 << 10),
            0);
}

TEST_F(ReplicatorTest, SubmitRejectsWritesThatAreNotOneBlock) {
  AddReplica(1 << 20);
  ASSERT_TRUE(StartPrimary(Options(100000, AckLevel::kDurable)).ok());
  auto submit = [&](uint64_t off, uint32_t len) {
    auto buf = primary_pool_->TryGet();
    return rep_->Submit(off, std::move(*buf), len, 0);
  };
  EXPECT_EQ(submit(100, 16 << 10).code(), ErrorCode::kInvalidArgument);      // unaligned
  EXPECT_EQ(submit(0, 1000).code(), ErrorCode::kInvalidArgument);            // short block
  EXPECT_EQ(submit(98304, 16 << 10).code(), ErrorCode::kInvalidArgument);    // past the end
  EXPECT_EQ(submit(6 * (16 << 10), 16 << 10).code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(submit(98304, 100000 - 98304).ok());                           // the last block
}

TEST_F(ReplicatorTest, CorruptedBlocksAreNackedResentAndNeverWritten) {
  auto data = RandomBytes(30 * (16 << 10), 4);
  Replica& r = AddReplica(data.size(), 64 << 10, "flip-rx-data:every=3");
  ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable)).ok());
  ASSERT_TRUE(PushAndClose(data));
  EXPECT_TRUE(Equal(r.device->contents(), data));
  // The first transmission of seqs 2, 5, ..., 29: exactly 10, whatever the timing.
  ASSERT_EQ(r.faulty->faults_injected(), 10u);
  auto stats = rep_->stats();
  EXPECT_EQ(stats[0].crc_mismatches, 10u);
  EXPECT_EQ(stats[0].retransmits, 10u);
  EXPECT_EQ(r.server->stats().crc_mismatches, 10u);
  // A corrupted block is never written: one write per block, no more.
  EXPECT_EQ(r.device->writes(), 30u);
}

TEST_F(ReplicatorTest, ABlockRejectedUpToItsLastAllowedTryStillArrives) {
  auto data = RandomBytes(12 * (16 << 10), 14);
  // Every 4th block fails 3 times, and max_retries is 3: the 4th transmission is the last one
  // allowed, and it arrives intact.
  Replica& r = AddReplica(data.size(), 64 << 10, "flip-rx-data:every=4,tries=3");
  auto o = Options(data.size(), AckLevel::kDurable);
  o.max_retries = 3;
  ASSERT_TRUE(StartPrimary(o).ok());
  ASSERT_TRUE(PushAndClose(data));
  EXPECT_TRUE(Equal(r.device->contents(), data));
  ASSERT_EQ(r.faulty->faults_injected(), 9u);  // seqs 3, 7, 11, three times each
  EXPECT_EQ(rep_->stats()[0].retransmits, 9u);
  EXPECT_EQ(r.device->writes(), 12u);
}

TEST_F(ReplicatorTest, ABlockThatKeepsFailingFailsThePushNamingItsOffset) {
  auto data = RandomBytes(8 * (16 << 10), 5);
  const uint64_t bad = 5 * (16 << 10);
  Replica& r = AddReplica(data.size(), 64 << 10, "flip-rx-data:offset=" + std::to_string(bad));
  auto o = Options(data.size(), AckLevel::kDurable);
  o.max_retries = 3;
  ASSERT_TRUE(StartPrimary(o).ok());
  Status s = Push(data);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("offset " + std::to_string(bad)), std::string::npos) << s.message();
  EXPECT_EQ(r.faulty->faults_injected(), 4u);  // the first send and 3 resends
  // The bad block never reached the disk.
  std::vector<std::byte> zero(16 << 10);
  EXPECT_EQ(std::memcmp(r.device->contents().data() + bad, zero.data(), zero.size()), 0);
  for (int i = 0; i < 20; ++i) Step();
  rep_.reset();
  for (int i = 0; i < 20; ++i) Step();
  EXPECT_EQ(primary_pool_->available(), primary_pool_->count());
}

TEST_F(ReplicatorTest, FansOutToThreeReplicas) {
  auto data = RandomBytes(25 * (16 << 10) + 4096, 6);
  for (int i = 0; i < 3; ++i) AddReplica(data.size());
  ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable, 16 << 10, 8)).ok());
  ASSERT_TRUE(Push(data).ok());
  CloseAll();
  for (auto& r : replicas_) EXPECT_TRUE(Equal(r->device->contents(), data));
  for (const auto& st : rep_->stats()) EXPECT_EQ(st.blocks_acked, 26u);
}

TEST_F(ReplicatorTest, RefusesABlockLargerThanTheReplicaAccepts) {
  AddReplica(1 << 20, 16 << 10);
  Status s = StartPrimary(Options(1 << 20, AckLevel::kDurable, 32 << 10));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("block size 32768 exceeds"), std::string::npos) << s.message();
}

TEST_F(ReplicatorTest, RefusesAVolumeThatDoesNotFit) {
  AddReplica(1 << 20);
  Status s = StartPrimary(Options(2 << 20, AckLevel::kDurable));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("does not fit"), std::string::npos) << s.message();
}

TEST_F(ReplicatorTest, RefusesAnUnsupportedProtocolVersion) {
  AddReplica(1 << 20);
  auto o = Options(1 << 20, AckLevel::kDurable);
  o.min_version = proto::kMaxProtocolVersion + 1;
  o.max_version = proto::kMaxProtocolVersion + 2;
  Status s = StartPrimary(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("protocol version mismatch"), std::string::npos) << s.message();
}

TEST_F(ReplicatorTest, OneWriterPerVolume) {
  auto data = RandomBytes(4 * (16 << 10), 7);
  Replica& r = AddReplica(data.size());
  ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable)).ok());
  // A second primary while the first is in session.
  auto pool2 = std::move(io::BufferPool::Create(16 << 10, 8, io::HugePages::kNever).value());
  auto t2 = net_.CreateTransport("primary2");
  ASSERT_TRUE(t2->Register(*pool2).ok());
  auto rep2 = std::move(Replicator::Create(*ring_, *pool2, Options(data.size(),
                                                                    AckLevel::kDurable))
                            .value());
  PeerConfig peer{t2.get(), r.endpoint};
  ASSERT_TRUE(rep2->StartConnect(std::span(&peer, 1)).ok());
  std::array<WriteCompletion, 4> sink;
  for (int i = 0; i < 100 && rep2->failure().ok(); ++i) {
    rep2->Poll(sink);
    Step();
  }
  ASSERT_FALSE(rep2->failure().ok());
  EXPECT_NE(rep2->failure().message().find("one writer per volume"), std::string::npos)
      << rep2->failure().message();
  // The first session is unharmed.
  ASSERT_TRUE(Push(data).ok());
  CloseAll();
  EXPECT_TRUE(Equal(r.device->contents(), data));
}

Key TestKey(uint8_t fill) {
  Key k;
  k.bytes.fill(fill);
  return k;
}

TEST_F(ReplicatorTest, AuthenticatedSessionsReplicate) {
  auto data = RandomBytes(8 * (16 << 10), 11);
  Replica& r = AddReplica(data.size(), 64 << 10, "", TestKey(7));
  auto o = Options(data.size(), AckLevel::kDurable);
  o.key = TestKey(7);
  ASSERT_TRUE(StartPrimary(o).ok());
  ASSERT_TRUE(Push(data).ok());
  CloseAll();
  EXPECT_TRUE(Equal(r.device->contents(), data));
}

TEST_F(ReplicatorTest, APrimaryWithoutTheKeyIsRefusedBeforeWritingAnything) {
  auto data = RandomBytes(8 * (16 << 10), 12);
  Replica& r = AddReplica(data.size(), 64 << 10, "", TestKey(7));
  for (std::optional<Key> key : {std::optional<Key>(), std::optional<Key>(TestKey(8))}) {
    auto o = Options(data.size(), AckLevel::kDurable);
    o.key = key;
    Status s = StartPrimary(o);
    ASSERT_FALSE(s.ok());
    if (key) {
      EXPECT_NE(s.message().find("authentication failed"), std::string::npos) << s.message();
    } else {
      EXPECT_NE(s.message().find("requires authentication"), std::string::npos) << s.message();
    }
    for (int i = 0; i < 20; ++i) Step();
    rep_.reset();
  }
  EXPECT_EQ(r.device->writes(), 0u);
  EXPECT_EQ(r.server->stats().auth_failures, 1u);
}

TEST_F(ReplicatorTest, APrimaryWithAKeyRefusesAReplicaThatCannotProveIt) {
  AddReplica(1 << 20);  // no key: it cannot prove anything
  auto o = Options(1 << 20, AckLevel::kDurable);
  o.key = TestKey(7);
  Status s = StartPrimary(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("did not prove it holds our key"), std::string::npos) << s.message();
}

TEST_F(ReplicatorTest, QuorumCarriesOnWhenAReplicaIsLost) {
  auto data = RandomBytes(64 * (16 << 10), 13);
  for (int i = 0; i < 3; ++i) AddReplica(data.size());
  auto o = Options(data.size(), AckLevel::kDurable, 16 << 10, 4);
  o.quorum = 2;
  ASSERT_TRUE(StartPrimary(o).ok());
  std::vector<std::unique_ptr<DirtyBitmap>> bitmaps;
  for (size_t i = 0; i < 3; ++i) {
    BitmapKey key{16 << 10, data.size(), {}, {}};
    bitmaps.push_back(DirtyBitmap::InMemory(key));
    rep_->AttachBitmap(i, bitmaps.back().get());
  }
  // Replica 1 goes away after the first 8 blocks.
  std::vector<std::byte> first(data.begin(), data.begin() + 8 * (16 << 10));
  ASSERT_TRUE(Push(first).ok());
  replicas_[1]->Stop();
  done_.clear();
  ASSERT_TRUE(PushAndClose(data));
  auto stats = rep_->stats();
  EXPECT_EQ(stats[1].state, PeerState::kLost);
  EXPECT_FALSE(stats[1].lost_reason.empty());
  EXPECT_TRUE(Equal(replicas_[0]->device->contents(), data));
  EXPECT_TRUE(Equal(replicas_[2]->device->contents(), data));
  // What replica 1 missed is still dirty in its bitmap; the others are clean.
  EXPECT_EQ(bitmaps[0]->CountSet(), 0u);
  EXPECT_EQ(bitmaps[2]->CountSet(), 0u);
  EXPECT_GE(bitmaps[1]->CountSet(), 56u);
  rep_.reset();  // the bitmaps must outlive the Replicator
}

TEST_F(ReplicatorTest, LosingTheQuorumFailsThePush) {
  auto data = RandomBytes(32 * (16 << 10), 14);
  for (int i = 0; i < 2; ++i) AddReplica(data.size());
  ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable)).ok());  // quorum: all
  replicas_[0]->Stop();
  Status s = Push(data);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("the quorum needs 2"), std::string::npos) << s.message();
}

TEST_F(ReplicatorTest, ASilentReplicaIsLostAfterThePeerTimeout) {
  auto data = RandomBytes(16 * (16 << 10), 15);
  for (int i = 0; i < 2; ++i) AddReplica(data.size());
  auto o = Options(data.size(), AckLevel::kDurable);
  o.quorum = 1;
  o.peer_timeout = std::chrono::milliseconds(200);
  ASSERT_TRUE(StartPrimary(o).ok());
  frozen_ = 0b10;  // replica 1 hangs: no acks, no heartbeats
  Status s = Push(data);
  for (int i = 0; i < 400 && rep_->stats()[1].state != PeerState::kLost; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    Step();
  }
  ASSERT_TRUE(s.ok()) << s.message();
  auto stats = rep_->stats();
  EXPECT_EQ(stats[1].state, PeerState::kLost);
  EXPECT_NE(stats[1].lost_reason.find("--peer-timeout"), std::string::npos) << stats[1].lost_reason;
  EXPECT_TRUE(Equal(replicas_[0]->device->contents(), data));
}

// A replica that is slow (here: not stepped at all, yet not lost) above the quorum holds its own
// window and no more: the writes go on to the healthy replica, reported as skipped for the slow
// one, which gets them later (the caller's plan).
TEST_F(ReplicatorTest, ASlowReplicaAboveTheQuorumDoesNotHoldTheOthersBack) {
  auto data = RandomBytes(32 * (16 << 10), 18);
  for (int i = 0; i < 2; ++i) AddReplica(data.size());
  auto o = Options(data.size(), AckLevel::kDurable, 16 << 10, 4);
  o.quorum = 1;
  o.peer_timeout = std::chrono::milliseconds(60000);
  ASSERT_EQ(Replicator::WriteSlots(o, 2), 8u);
  ASSERT_TRUE(StartPrimary(o).ok());
  frozen_ = 0b10;
  Status s = Push(data);
  ASSERT_TRUE(s.ok()) << s.message();
  ASSERT_EQ(done_.size(), 32u);
  size_t skipped = 0;
  for (const auto& c : done_) skipped += (c.skipped >> 1) & 1;
  EXPECT_EQ(skipped, 28u) << "the slow replica took its window of 4, no more";
  auto stats = rep_->stats();
  EXPECT_EQ(stats[1].blocks_behind, 28u);
  EXPECT_EQ(stats[1].state, PeerState::kInSession);
  EXPECT_TRUE(Equal(replicas_[0]->device->contents(), data));
  frozen_ = 0;  // it wakes up: its 4 writes land, then the session ends cleanly
  CloseAll();
  EXPECT_EQ(rep_->stats()[1].blocks_acked, 4u);
}

// Alive (heartbeats) but stuck (no acks): lost after the ack timeout; the quorum carries on.
TEST_F(ReplicatorTest, AReplicaThatNeverAcksIsLostAfterTheAckTimeout) {
  auto data = RandomBytes(16 * (16 << 10), 19);
  AddReplica(data.size());
  AddReplica(data.size(), 64 << 10, "drop-tx-acks");
  auto o = Options(data.size(), AckLevel::kDurable);
  o.quorum = 1;
  o.peer_timeout = std::chrono::milliseconds(60000);
  o.ack_timeout = std::chrono::milliseconds(300);
  ASSERT_TRUE(StartPrimary(o).ok());
  Status s = Push(data);
  ASSERT_TRUE(s.ok()) << s.message();
  for (int i = 0; i < 400 && rep_->stats()[1].state != PeerState::kLost; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    Step();
  }
  auto stats = rep_->stats();
  ASSERT_EQ(stats[1].state, PeerState::kLost);
  EXPECT_NE(stats[1].lost_reason.find("--ack-timeout"), std::string::npos) << stats[1].lost_reason;
  EXPECT_EQ(stats[1].blocks_acked, 0u);
  EXPECT_TRUE(Equal(replicas_[0]->device->contents(), data));
}

TEST_F(ReplicatorTest, ResyncSendsOnlyDirtyBlocksToTheirPeers) {
  auto data = RandomBytes(16 * (16 << 10), 16);
  for (int i = 0; i < 2; ++i) AddReplica(data.size());
  ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable)).ok());
  // Only replica 1 gets the blocks (as a resync would send what it alone misses).
  ASSERT_TRUE(Push(data, 0b10).ok());
  CloseAll();
  EXPECT_EQ(replicas_[0]->device->writes(), 0u);
  EXPECT_TRUE(Equal(replicas_[1]->device->contents(), data));
}

TEST_F(ReplicatorTest, AReceivedSessionEndsDurableAndCleansItsBitmap) {
  auto data = RandomBytes(16 * (16 << 10), 17);
  Replica& r = AddReplica(data.size());
  auto o = Options(data.size(), AckLevel::kReceived);
  o.flush_interval = std::chrono::microseconds(0);  // no flush but the final one
  ASSERT_TRUE(StartPrimary(o).ok());
  BitmapKey key{16 << 10, data.size(), {}, {}};
  auto bitmap = DirtyBitmap::InMemory(key);
  rep_->AttachBitmap(0, bitmap.get());
  ASSERT_TRUE(Push(data).ok());
  EXPECT_EQ(bitmap->CountSet(), 16u) << "received acks must not clear bits";
  for (int i = 0; i < 1000 && !rep_->idle(); ++i) Step();
  CloseAll();
  EXPECT_EQ(bitmap->CountSet(), 0u) << "the final durable ack clears them";
  EXPECT_TRUE(Equal(r.device->durable_contents(), data));
  rep_.reset();  // the bitmap must outlive the Replicator
}

// A push at `received` with a bitmap, the Replicator flushing on its own whenever one is due.
class OwnFlushTest : public ReplicatorTest {
 protected:
  // Pushes `data` to one replica of protocol `version`, then steps a while.
  Replica& PushFlushingOften(const std::vector<std::byte>& data, uint16_t version) {
    replica_max_version_ = version;
    Replica& r = AddReplica(data.size());
    auto o = Options(data.size(), AckLevel::kReceived);
    o.flush_interval = std::chrono::microseconds(1);
    EXPECT_TRUE(StartPrimary(o).ok());
    bitmap_ = DirtyBitmap::InMemory(BitmapKey{16 << 10, data.size(), {}, {}});
    rep_->AttachBitmap(0, bitmap_.get());
    EXPECT_TRUE(Push(data).ok());
    for (int i = 0; i < 1000 && (bitmap_->CountSet() > 0 || !rep_->idle()); ++i) Step();
    return r;
  }
  void TearDown() override { rep_.reset(); }  // before the bitmap
  std::unique_ptr<DirtyBitmap> bitmap_;
};

// The bits of acked blocks clear while the session goes on (a reconnect resends only what no
// flush covered). The flushes are the Replicator's own: no completion reports them.
TEST_F(OwnFlushTest, AReceivedSessionFlushesOnItsOwnAndCleansItsBitmapAsItGoes) {
  auto data = RandomBytes(16 * (16 << 10), 18);
  Replica& r = PushFlushingOften(data, proto::kExtentsVersion);
  EXPECT_EQ(bitmap_->CountSet(), 0u);
  EXPECT_GE(r.device->flushes(), 1u);
  EXPECT_TRUE(Equal(r.device->durable_contents(), data));
  EXPECT_EQ(done_.size(), 16u) << "the Replicator's own flushes are not completions";
  EXPECT_EQ(rep_->in_flight(), 0u);
  EXPECT_GE(rep_->stats()[0].flushes_sent, 1u);
  CloseAll();
}

// A replica of protocol 1 has no Flush: its bits clear at the session's end only.
TEST_F(OwnFlushTest, AProtocol1ReplicaGetsNoFlushAndItsBitsClearAtTheEnd) {
  auto data = RandomBytes(16 * (16 << 10), 19);
  Replica& r = PushFlushingOften(data, 1);
  EXPECT_EQ(bitmap_->CountSet(), 16u);
  EXPECT_EQ(rep_->stats()[0].flushes_sent, 0u);
  CloseAll();
  EXPECT_EQ(bitmap_->CountSet(), 0u);
  EXPECT_TRUE(Equal(r.device->durable_contents(), data));
}

// ---- Protocol 2: extents, zero ranges, flushes (a volume's writes) ---------------------------

class ExtentTest : public ReplicatorTest {
 protected:
  static constexpr uint32_t kBlock = 16 << 10;
  ReplicatorOptions ExtentOptions(uint64_t size, AckLevel ack) {
    auto o = Options(size, ack, kBlock, 4);
    o.extents = true;
    return o;
  }
  // Submits one extent of `bytes` at `offset` and steps until it completed.
  Status Write(uint64_t offset, const std::vector<std::byte>& bytes, PeerMask mask = kAllPeers) {
    auto buf = primary_pool_->TryGet();
    if (!buf) return Status::Error(ErrorCode::kBusy, "no buffer");
    std::memcpy(buf->data(), bytes.data(), bytes.size());
    size_t before = done_.size();
    RETURN_IF_ERROR(rep_->Submit(offset, std::move(*buf), static_cast<uint32_t>(bytes.size()),
                                 next_token_++, mask));
    return Settle(before);
  }
  Status Settle(size_t before) {
    for (int i = 0; i < 1000 && (done_.size() == before || !rep_->idle()); ++i) Step();
    if (done_.size() == before) return Status::Error(ErrorCode::kTimeout, "no completion");
    return done_.back().status;
  }
  uint64_t next_token_ = 1;
};

TEST_F(ExtentTest, ExtentsOfAnySectorAlignedRangeReachTheReplica) {
  const uint64_t size = 8 * kBlock + 1536;  // a tail of three sectors
  Replica& r = AddReplica(size);
  ASSERT_TRUE(StartPrimary(ExtentOptions(size, AckLevel::kDurable)).ok());
  std::vector<std::byte> image(size);
  struct Case {
    uint64_t offset;
    uint32_t length;
  };
  // Inside a block, across two blocks, a whole block, the tail.
  for (Case c : {Case{512, 4096}, Case{kBlock - 1024, 2048}, Case{3 * kBlock, kBlock},
                 Case{8 * kBlock, 1536}}) {
    auto bytes = RandomBytes(c.length, static_cast<uint32_t>(c.offset));
    Status s = Write(c.offset, bytes);
    ASSERT_TRUE(s.ok()) << c.offset << ": " << s.message();
    std::memcpy(image.data() + c.offset, bytes.data(), bytes.size());
  }
  EXPECT_TRUE(Equal(r.device->durable_contents(), image));
  // What is not an extent is refused before anything is sent.
  for (Case c : {Case{100, 512}, Case{512, 100}, Case{0, kBlock + 512}, Case{size - 512, 1024}}) {
    auto buf = primary_pool_->TryGet();
    Status s = rep_->Submit(c.offset, std::move(*buf), c.length, 0);
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << c.offset << "+" << c.length;
  }
  CloseAll();
}

// A zero range asked for outright must be whole sectors, also at the volume's short end.
TEST_F(ExtentTest, AZeroRangeOfPartSectorsIsRefusedNotSent) {
  const uint64_t size = 4 * kBlock + 312;
  Replica& r = AddReplica(size);
  ASSERT_TRUE(StartPrimary(ExtentOptions(size, AckLevel::kDurable)).ok());
  Status zero = rep_->SubmitZero(4 * kBlock, 312, false, 1);
  EXPECT_EQ(zero.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(zero.message().find("not whole sectors"), std::string::npos) << zero.message();
  ASSERT_TRUE(rep_->SubmitZero(3 * kBlock, kBlock, false, 2).ok());  // whole sectors: goes
  CloseAll();
  EXPECT_EQ(r.device->zeroes(), 1u);
}

TEST_F(ExtentTest, ZeroRangesAndFlushesReachTheReplica) {
  const uint64_t size = 64 * kBlock;
  Replica& r = AddReplica(size);
  ASSERT_TRUE(StartPrimary(ExtentOptions(size, AckLevel::kReceived)).ok());
  auto bytes = RandomBytes(kBlock, 31);
  for (uint64_t b = 0; b < 8; ++b) ASSERT_TRUE(Write(b * kBlock, bytes).ok());
  // Zero two and a half blocks from the middle of block 1, unmap allowed.
  size_t before = done_.size();
  ASSERT_TRUE(rep_->SubmitZero(kBlock + 4096, 2 * kBlock + kBlock / 2, true, 77).ok());
  ASSERT_TRUE(Settle(before).ok());
  EXPECT_EQ(done_.back().token, 77u);
  std::vector<std::byte> image(size);
  for (uint64_t b = 0; b < 8; ++b) std::memcpy(image.data() + b * kBlock, bytes.data(), kBlock);
  std::memset(image.data() + kBlock + 4096, 0, 2 * kBlock + kBlock / 2);
  EXPECT_TRUE(Equal(r.device->contents(), image));
  // At ack level received, the flush is what makes them durable on the replica.
  EXPECT_FALSE(Equal(r.device->durable_contents(), image));
  uint64_t flushes = r.device->flushes();
  before = done_.size();
  ASSERT_TRUE(rep_->SubmitFlush(78).ok());
  ASSERT_TRUE(Settle(before).ok());
  EXPECT_EQ(done_.back().token, 78u);
  EXPECT_EQ(r.device->flushes(), flushes + 1);
  EXPECT_TRUE(Equal(r.device->durable_contents(), image));
  CloseAll();
}

// A durable ack settles a block (its bit clears, at once or once it is no longer hot) only when
// the replica's copy of the block is then whole: the write covered the block, or the block was
// clean (or only hot) before the write.
TEST_F(ExtentTest, APartialWriteSettlesOnlyABlockThatWasCleanBefore) {
  const uint64_t size = 8 * kBlock;
  AddReplica(size);
  auto o = ExtentOptions(size, AckLevel::kDurable);
  o.hot_bytes = size;  // settled blocks stay hot (a volume's setting)
  ASSERT_TRUE(StartPrimary(o).ok());
  BitmapKey key{kBlock, size, {}, {}};
  auto bitmap = DirtyBitmap::InMemory(key);
  bitmap->ClearAll();
  bitmap->Set(2);  // block 2 is behind (missed writes, resync pending)
  bitmap->Set(3);
  rep_->AttachBitmap(0, bitmap.get());
  const HotBlocks& hot = rep_->hot_blocks(0);
  auto settled = [&](uint64_t b) { return !bitmap->Test(b) || hot.hot(b); };
  auto small = RandomBytes(4096, 5);
  ASSERT_TRUE(Write(1 * kBlock + 4096, small).ok());  // clean block, partial write
  EXPECT_TRUE(settled(1));
  EXPECT_TRUE(bitmap->Test(1) && hot.hot(1)) << "a settled block stays set a while (hot)";
  ASSERT_TRUE(Write(1 * kBlock + 8192, small).ok());  // hot block, partial write: still whole
  EXPECT_TRUE(settled(1));
  ASSERT_TRUE(Write(2 * kBlock + 4096, small).ok());  // dirty block, partial write
  EXPECT_FALSE(settled(2)) << "a partial write cannot make a dirty block whole";
  ASSERT_TRUE(Write(3 * kBlock, RandomBytes(kBlock, 6)).ok());  // dirty block, whole write
  EXPECT_TRUE(settled(3));
  size_t before = done_.size();
  ASSERT_TRUE(rep_->SubmitZero(4 * kBlock + 512, 2 * kBlock, false, 9).ok());  // 4 (part), 5, 6 (part)
  ASSERT_TRUE(Settle(before).ok());
  for (uint64_t b : {4, 5, 6}) EXPECT_TRUE(settled(b)) << b;
  // The end of the session clears what is hot; the dirty block stays dirty.
  CloseAll();
  for (uint64_t b : {1, 3, 4, 5, 6}) EXPECT_FALSE(bitmap->Test(b)) << b;
  EXPECT_TRUE(bitmap->Test(2));
  rep_.reset();
}

// At ack level sent a write completes once it left, but a Flush only once the replica acked it:
// it promises durability.
TEST_F(ExtentTest, AtSentAFlushCompletesOnlyOnceTheReplicaAckedIt) {
  const uint64_t size = 8 * kBlock;
  Replica& r = AddReplica(size);
  ASSERT_TRUE(StartPrimary(ExtentOptions(size, AckLevel::kSent)).ok());
  auto bytes = RandomBytes(kBlock, 47);
  ASSERT_TRUE(Write(0, bytes).ok());
  frozen_ = 1;  // the replica takes nothing in from now on
  size_t before = done_.size();
  ASSERT_TRUE(rep_->SubmitFlush(100).ok());
  for (int i = 0; i < 50; ++i) Step();
  EXPECT_EQ(done_.size(), before) << "the Flush completed while the replica had not seen it";
  frozen_ = 0;
  ASSERT_TRUE(Settle(before).ok());
  EXPECT_EQ(done_.back().token, 100u);
  EXPECT_TRUE(Equal(r.device->durable_contents(), bytes));
  CloseAll();
}

// Below durable, a Flush's ack settles what the replica acked before the Flush was sent: the
// session need not end for the dirty bits of acked writes to clear.
TEST_F(ExtentTest, AFlushAckSettlesTheBlocksAckedBeforeIt) {
  const uint64_t size = 8 * kBlock;
  Replica& r = AddReplica(size);
  auto o = ExtentOptions(size, AckLevel::kReceived);
  o.flush_interval = std::chrono::microseconds(0);  // only the flushes this test submits
  ASSERT_TRUE(StartPrimary(o).ok());
  auto bitmap = DirtyBitmap::InMemory(BitmapKey{kBlock, size, {}, {}});
  bitmap->ClearAll();
  bitmap->Set(5);  // behind: no write of this session covers it
  rep_->AttachBitmap(0, bitmap.get());
  std::vector<std::byte> image(size);
  auto whole = RandomBytes(kBlock, 41);
  auto part = RandomBytes(4096, 42);
  for (uint64_t b : {0, 1}) {
    ASSERT_TRUE(Write(b * kBlock, whole).ok());
    std::memcpy(image.data() + b * kBlock, whole.data(), kBlock);
  }
  ASSERT_TRUE(Write(2 * kBlock + 4096, part).ok());  // a clean block, in part
  std::memcpy(image.data() + 2 * kBlock + 4096, part.data(), part.size());
  ASSERT_TRUE(Write(5 * kBlock + 4096, part).ok());  // a dirty block, in part: still behind
  std::memcpy(image.data() + 5 * kBlock + 4096, part.data(), part.size());
  for (uint64_t b : {0, 1, 2, 5}) EXPECT_TRUE(bitmap->Test(b)) << "received acks clear nothing";
  size_t before = done_.size();
  ASSERT_TRUE(rep_->SubmitFlush(100).ok());
  ASSERT_TRUE(Settle(before).ok());
  for (uint64_t b : {0, 1, 2}) EXPECT_FALSE(bitmap->Test(b)) << b;
  EXPECT_TRUE(bitmap->Test(5)) << "a partial write cannot make a dirty block whole";
  for (uint64_t b : {0, 1, 2}) {
    EXPECT_EQ(std::memcmp(r.device->durable_contents().data() + b * kBlock,
                          image.data() + b * kBlock, kBlock),
              0)
        << b;
  }
  CloseAll();
  EXPECT_TRUE(bitmap->Test(5));
  rep_.reset();
}

// A write sent after the Flush (the same block again, in flight or acked while the Flush waits
// for the replica's disk) is not made durable by it: its bit stays set until a later Flush or the
// session's end.
TEST_F(ExtentTest, AWriteSentAfterAFlushKeepsItsBitThroughThatFlushsAck) {
  const uint64_t size = 8 * kBlock;
  Replica& r = AddReplica(size);
  auto o = ExtentOptions(size, AckLevel::kReceived);
  o.flush_interval = std::chrono::microseconds(0);
  ASSERT_TRUE(StartPrimary(o).ok());
  auto bitmap = DirtyBitmap::InMemory(BitmapKey{kBlock, size, {}, {}});
  bitmap->ClearAll();
  rep_->AttachBitmap(0, bitmap.get());
  auto v1 = RandomBytes(kBlock, 43);
  auto v2 = RandomBytes(kBlock, 44);
  ASSERT_TRUE(Write(0, v1).ok());
  ASSERT_TRUE(Write(kBlock, v1).ok());
  // The Flush and the block's next write leave in the same turn, the write after the Flush.
  size_t before = done_.size();
  ASSERT_TRUE(rep_->SubmitFlush(100).ok());
  auto buf = primary_pool_->TryGet();
  ASSERT_TRUE(buf.has_value());
  std::memcpy(buf->data(), v2.data(), kBlock);
  ASSERT_TRUE(rep_->Submit(0, std::move(*buf), kBlock, 101).ok());
  for (int i = 0; i < 1000 && (done_.size() < before + 2 || !rep_->idle()); ++i) Step();
  ASSERT_EQ(done_.size(), before + 2);
  EXPECT_FALSE(bitmap->Test(1)) << "acked before the Flush was sent: durable at its ack";
  EXPECT_TRUE(bitmap->Test(0)) << "its newest write left after the Flush";
  CloseAll();
  EXPECT_FALSE(bitmap->Test(0)) << "the session's final flush covers it";
  EXPECT_EQ(std::memcmp(r.device->durable_contents().data(), v2.data(), kBlock), 0);
  rep_.reset();
}

// New data that a peer misses (written to the others only) keeps that peer's bit set, even when
// an earlier write of the block reached it and was acked in the same session.
TEST_F(ExtentTest, NewDataAPeerMissedKeepsItsBitThroughTheSessionsEnd) {
  const uint64_t size = 8 * kBlock;
  AddReplica(size);
  AddReplica(size);
  auto o = ExtentOptions(size, AckLevel::kReceived);
  o.flush_interval = std::chrono::microseconds(0);
  ASSERT_TRUE(StartPrimary(o).ok());
  std::vector<std::unique_ptr<DirtyBitmap>> bitmaps;
  for (size_t i = 0; i < 2; ++i) {
    bitmaps.push_back(DirtyBitmap::InMemory(BitmapKey{kBlock, size, {}, {}}));
    bitmaps.back()->ClearAll();
    rep_->AttachBitmap(i, bitmaps.back().get());
  }
  ASSERT_TRUE(Write(0, RandomBytes(kBlock, 45)).ok());  // both replicas ack it
  auto buf = primary_pool_->TryGet();
  ASSERT_TRUE(buf.has_value());
  auto v2 = RandomBytes(4096, 46);
  std::memcpy(buf->data(), v2.data(), v2.size());
  size_t before = done_.size();
  ASSERT_TRUE(rep_->Submit(4096, std::move(*buf), 4096, 102, 0b01, WriteOrigin::kNewData).ok());
  ASSERT_TRUE(Settle(before).ok());
  before = done_.size();
  ASSERT_TRUE(rep_->SubmitFlush(103).ok());
  ASSERT_TRUE(Settle(before).ok());
  EXPECT_FALSE(bitmaps[0]->Test(0));
  EXPECT_TRUE(bitmaps[1]->Test(0)) << "replica 1 missed the second write";
  CloseAll();
  EXPECT_FALSE(bitmaps[0]->Test(0));
  EXPECT_TRUE(bitmaps[1]->Test(0)) << "replica 1 missed the second write";
  rep_.reset();
}

TEST_F(ExtentTest, AReplicaThatSpeaksOnlyProtocol1IsRefusedClearly) {
  replica_max_version_ = 1;
  AddReplica(1 << 20);
  Status s = StartPrimary(ExtentOptions(1 << 20, AckLevel::kDurable));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("protocol version mismatch: the primary speaks 2..2, this replica "
                             "speaks 1..1"),
            std::string::npos)
      << s.message();
}

// A hand-driven client that speaks raw frames to a replica.
class RawClient {
 public:
  RawClient(transport::LoopbackNetwork& net, const transport::Endpoint& ep)
      : pool_(std::move(io::BufferPool::Create(64 << 10, 4, io::HugePages::kNever).value())),
        t_(net.CreateTransport("raw")) {
    EXPECT_TRUE(t_->Register(*pool_).ok());
    conn_ = t_->Connect(ep, std::chrono::milliseconds(100)).value();
  }
  void Send(const proto::Frame& f, const std::byte* data = nullptr) {
    transport::WorkItem item;
    item.conn = conn_;
    item.header = proto::Encode(f);
    item.data = data;
    ASSERT_TRUE(t_->Post(std::span(&item, 1)).ok());
  }
  // Collects frames until the connection closes or `steps` pass; returns the Error text if any.
  std::string Drain(int steps = 200) {
    std::string error;
    std::array<transport::Completion, 8> cs;
    for (int i = 0; i < steps && !closed_; ++i) {
      step();
      size_t n = t_->Poll(cs);
      for (size_t k = 0; k < n; ++k) {
        if (cs[k].kind == transport::CompletionKind::kClosed) closed_ = true;
        if (cs[k].kind != transport::CompletionKind::kRecv) continue;
        auto f = proto::Decode(cs[k].header);
        if (f.ok() && f->type() == proto::FrameType::kError) {
          error.assign(reinterpret_cast<const char*>(cs[k].control.data()), cs[k].control.size());
        }
        if (f.ok()) types.push_back(f->type());
        if (f.ok() && f->type() == proto::FrameType::kAck) {
          acks.push_back(std::get<proto::Ack>(f->body));
        }
      }
    }
    return error;
  }
  // Steps until a frame of `type` arrived (true) or the connection closed.
  bool WaitFor(proto::FrameType type, int steps = 200) {
    for (int i = 0; i < steps && !closed_; ++i) {
      Drain(1);
      if (std::find(types.begin(), types.end(), type) != types.end()) return true;
    }
    return false;
  }
  bool closed() const { return closed_; }
  // Whether an Ack received so far covers `seq`.
  bool Acked(uint64_t seq) const {
    return std::any_of(acks.begin(), acks.end(), [&](const proto::Ack& a) {
      return seq < a.cumulative ||
             (seq >= a.sack_base && seq - a.sack_base < 64 && (a.sack_bits >> (seq - a.sack_base) & 1));
    });
  }
  std::vector<proto::FrameType> types;
  std::vector<proto::Ack> acks;
  std::function<void()> step;

 private:
  std::unique_ptr<io::BufferPool> pool_;
  std::unique_ptr<transport::Transport> t_;
  transport::ConnId conn_;
  bool closed_ = false;
};

class ReplicaInputTest : public ReplicatorTest {
 protected:
  void SetUp() override {
    ReplicatorTest::SetUp();
    AddReplica(1 << 20);
  }
  std::unique_ptr<RawClient> Client() {
    auto c = std::make_unique<RawClient>(net_, replicas_[0]->endpoint);
    c->step = [this] { replicas_[0]->server->Step(); };
    return c;
  }
  // Sends a Hello (protocol `version`) and waits for the HelloOk: only then may a client send
  // Data.
  void Open(RawClient& c, uint16_t version = 1) {
    c.Send(Hello(version));
    ASSERT_TRUE(c.WaitFor(proto::FrameType::kHelloOk));
  }
  proto::Frame Hello(uint16_t version = 1) {
    proto::Hello h;
    h.min_version = version;
    h.max_version = version;
    h.block_size = 16 << 10;
    h.window = 4;
    h.volume_size = 1 << 20;
    proto::Frame f;
    f.body = h;
    return f;
  }
  proto::Frame DataFrame(uint64_t seq, uint64_t offset, uint32_t len, uint32_t crc) {
    proto::Frame f;
    f.flags = static_cast<uint16_t>(AckLevel::kReceived);
    f.payload_len = len;
    f.body = proto::Data{seq, offset, len, crc};
    return f;
  }
  // The replica's disk fails its next session's first write.
  void FailFirstWrite() {
    Replica& r = *replicas_[0];
    r.Stop();
    r.options.disk_fault = io::DiskFaultSpec{};
    r.options.disk_fault->fail_nth_write = 1;
    r.Start(net_, *ring_);
  }
  // Sends block 0 under `seq` with its right CRC.
  void SendBlock(RawClient& c, uint64_t seq) {
    block_.assign(16 << 10, std::byte{7});
    c.Send(DataFrame(seq, 0, 16 << 10, Crc32c(block_.data(), block_.size())), block_.data());
  }
  std::vector<std::byte> block_;
  // After a bad client, a good push still works.
  void ExpectStillServing() {
    auto data = RandomBytes(1 << 20, 9);
    ASSERT_TRUE(StartPrimary(Options(data.size(), AckLevel::kDurable)).ok());
    ASSERT_TRUE(Push(data).ok());
    CloseAll();
    EXPECT_TRUE(Equal(replicas_[0]->device->contents(), data));
  }
};

// The transport closes the connection before the frame takes a buffer (Transport::Trust): the
// engine never sees it.
TEST_F(ReplicaInputTest, DataBeforeTheSessionIsAdmittedClosesTheConnection) {
  for (bool hello_first : {false, true}) {
    auto c = Client();
    if (hello_first) c->Send(Hello());  // and Data right behind it, before the HelloOk
    std::vector<std::byte> block(16 << 10);
    c->Send(DataFrame(0, 0, 16 << 10, Crc32c(block.data(), block.size())), block.data());
    c->Drain();
    EXPECT_TRUE(c->closed()) << hello_first;
    EXPECT_EQ(replicas_[0]->device->writes(), 0u);
    EXPECT_EQ(replicas_[0]->pool->available(), replicas_[0]->pool->count());
  }
  ExpectStillServing();
}

TEST_F(ReplicaInputTest, DataOutsideTheVolumeIsRefused) {
  auto c = Client();
  Open(*c);
  std::vector<std::byte> block(16 << 10);
  c->Send(DataFrame(0, 2 << 20, 16 << 10, 0), block.data());
  std::string err = c->Drain();
  EXPECT_TRUE(c->closed());
  EXPECT_NE(err.find("is not a block of the 1048576-byte volume"), std::string::npos) << err;
  EXPECT_EQ(replicas_[0]->device->writes(), 0u);
  ExpectStillServing();
}

TEST_F(ReplicaInputTest, WrongLengthAndDuplicateSeqAreRefused) {
  {
    auto c = Client();
    Open(*c);
    std::vector<std::byte> block(8 << 10);
    c->Send(DataFrame(0, 0, 8 << 10, 0), block.data());
    std::string err = c->Drain();
    EXPECT_NE(err.find("does not match the block size"), std::string::npos) << err;
  }
  {
    auto c = Client();
    Open(*c);
    std::vector<std::byte> block(16 << 10);
    uint32_t crc = Crc32c(block.data(), block.size());
    c->Send(DataFrame(0, 0, 16 << 10, crc), block.data());
    c->Send(DataFrame(0, 16 << 10, 16 << 10, crc), block.data());
    std::string err = c->Drain();
    EXPECT_NE(err.find("duplicate"), std::string::npos) << err;
  }
  ExpectStillServing();
}

TEST_F(ReplicaInputTest, Protocol2RangesAreCheckedAndProtocol1HasNoZeroOrFlush) {
  std::vector<std::byte> block(16 << 10);
  const uint32_t crc = Crc32c(block.data(), 4096);
  struct Case {
    uint64_t offset;
    uint32_t length;
    const char* needle;
  };
  for (Case c : {Case{1 << 20, 4096, "sector-aligned range of the 1048576-byte volume"},
                 Case{(1 << 20) - 2048, 4096, "sector-aligned range"},
                 Case{4096, 1000, "sector-aligned range"}}) {
    auto cl = Client();
    Open(*cl, 2);
    cl->Send(DataFrame(0, c.offset, c.length, crc), block.data());
    std::string err = cl->Drain();
    EXPECT_TRUE(cl->closed()) << c.offset;
    EXPECT_NE(err.find(c.needle), std::string::npos) << err;
  }
  {
    auto cl = Client();
    Open(*cl, 2);
    proto::Frame z;
    z.flags = static_cast<uint16_t>(AckLevel::kReceived);
    z.body = proto::Zero{0, (1 << 20) - 512, 1024};
    cl->Send(z);
    std::string err = cl->Drain();
    EXPECT_NE(err.find("Zero seq 0: [1048064, +1024) is not a sector-aligned range"),
              std::string::npos)
        << err;
  }
  for (proto::Frame f : {proto::Frame{static_cast<uint16_t>(AckLevel::kReceived), 0,
                                      proto::Zero{0, 0, 512}},
                         proto::Frame{0, 0, proto::Flush{0}}}) {
    auto cl = Client();
    Open(*cl, 1);
    cl->Send(f);
    std::string err = cl->Drain();
    EXPECT_NE(err.find(std::string("unexpected ") + std::string(proto::FrameTypeName(f.type()))),
              std::string::npos)
        << err;
  }
  EXPECT_EQ(replicas_[0]->device->writes(), 0u);
  EXPECT_EQ(replicas_[0]->device->zeroes(), 0u);
  ExpectStillServing();
}

// A write the replica's disk fails ends the session with an Error; a Flush behind it is never
// acked: its ack would tell the primary that the failed block is durable.
TEST_F(ReplicaInputTest, AFlushBehindAWriteTheDiskFailedIsNeverAcked) {
  FailFirstWrite();
  auto c = Client();
  Open(*c, proto::kExtentsVersion);
  SendBlock(*c, 0);
  proto::Frame flush;
  flush.body = proto::Flush{1};
  c->Send(flush);
  std::string err = c->Drain(200);
  EXPECT_NE(err.find("replica disk error"), std::string::npos) << err;
  EXPECT_FALSE(c->Acked(1)) << "the Flush was acked after the write before it failed";
}

// The same after Bye: a write that fails while the session ends gets no durable final Ack.
TEST_F(ReplicaInputTest, AWriteTheDiskFailsAfterByeGetsNoDurableFinalAck) {
  FailFirstWrite();
  auto c = Client();
  Open(*c);
  SendBlock(*c, 0);
  proto::Frame bye;
  bye.body = proto::Bye{};
  c->Send(bye);
  c->Drain(200);
  EXPECT_TRUE(c->closed());
  for (const proto::Ack& a : c->acks) {
    EXPECT_FALSE(a.level == AckLevel::kDurable && a.cumulative > 0)
        << "the failed write was acked durable by the final flush";
  }
}

TEST_F(ReplicaInputTest, ABadCrcIsNackedAndNotWritten) {
  auto c = Client();
  Open(*c);
  std::vector<std::byte> block(16 << 10, std::byte{7});
  c->Send(DataFrame(0, 0, 16 << 10, 0x12345678), block.data());
  std::string err = c->Drain(50);
  EXPECT_TRUE(err.empty()) << err;
  EXPECT_FALSE(c->closed());
  EXPECT_NE(std::find(c->types.begin(), c->types.end(), proto::FrameType::kNack), c->types.end());
  EXPECT_EQ(replicas_[0]->device->writes(), 0u);
  EXPECT_EQ(replicas_[0]->server->stats().crc_mismatches, 1u);
}

}  // namespace
}  // namespace blkmirror::engine
