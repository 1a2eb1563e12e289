// The volume (engine/volume.h) end to end in one thread: client requests from a test frontend,
// the local disk in memory, replicas on the loopback network. Covers the reply rule at each ack
// level, ordering of overlapping writes, FLUSH and FUA, zero ranges, degraded mode with a lost
// replica and its background resync, the quorum, and the race of a resync copy with a newer
// client write of the same block.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "engine/volume.h"
#include "io/forwarding_block_device.h"
#include "io/mem/mem_block_device.h"
#include "io/ring.h"
#include "io/testing/faulty_block_device.h"
#include "tests/unit/loopback_replica.h"
#include "transport/loopback/loopback_transport.h"

namespace blkmirror::engine {
namespace {

using proto::AckLevel;

constexpr uint32_t kBlock = 64 << 10;
constexpr uint32_t kAlone = UINT32_MAX;  // VolumeSetup::quorum: writes go on with no replica
constexpr uint64_t kSize = 16 * uint64_t{kBlock};

// Client requests the test queues by hand; completions recorded by request id. A write's payload
// goes into a pool buffer when the volume takes the request, as the NBD frontend receives it
// only once it has a buffer for it.
class TestFrontend final : public frontend::Frontend {
 public:
  struct Done {
    int32_t res = 0;
    std::vector<std::byte> data;  // a read's bytes
  };

  explicit TestFrontend(io::BufferPool& pool) : pool_(pool) {}

  std::string_view name() const override { return "test"; }
  size_t Poll(std::span<frontend::Request> out) override {
    size_t n = 0;
    while (n < out.size() && !queue_.empty()) {
      Queued& q = queue_.front();
      if (q.request.op == frontend::RequestOp::kWrite) {
        auto b = pool_.TryGet();
        if (!b) break;
        std::memcpy(b->data(), q.payload.data(), q.payload.size());
        q.request.data = std::move(*b);
      }
      out[n++] = std::move(q.request);
      queue_.pop_front();
    }
    return n;
  }
  void Complete(uint64_t id, int32_t res, io::BufferRef data) override {
    Done d{res, {}};
    if (data) d.data.assign(data.data(), data.data() + lengths_[id]);
    if (on_complete) on_complete(id, res);
    done[id] = std::move(d);
  }
  size_t clients() const override { return 1; }
  void Shutdown() override { shut_ = true; }
  bool closed() const override { return shut_; }

  // A write of `bytes` (at most one pool buffer) at `offset`; returns its id.
  uint64_t Write(uint64_t offset, std::span<const std::byte> bytes, bool fua = false) {
    frontend::Request r = Make(frontend::RequestOp::kWrite, offset, bytes.size());
    r.fua = fua;
    return Queue(std::move(r), {bytes.begin(), bytes.end()});
  }
  uint64_t Read(uint64_t offset, uint32_t length) {
    return Queue(Make(frontend::RequestOp::kRead, offset, length));
  }
  uint64_t Zero(uint64_t offset, uint32_t length, bool unmap) {
    frontend::Request r = Make(frontend::RequestOp::kZero, offset, length);
    r.unmap = unmap;
    return Queue(std::move(r));
  }
  uint64_t Flush() { return Queue(Make(frontend::RequestOp::kFlush, 0, 0)); }

  size_t queued() const { return queue_.size(); }
  std::map<uint64_t, Done> done;
  std::function<void(uint64_t id, int32_t res)> on_complete;  // before `done` records it

 private:
  struct Queued {
    frontend::Request request;
    std::vector<std::byte> payload;
  };

  frontend::Request Make(frontend::RequestOp op, uint64_t offset, size_t length) {
    frontend::Request r;
    r.id = next_id_++;
    r.op = op;
    r.offset = offset;
    r.length = static_cast<uint32_t>(length);
    lengths_[r.id] = r.length;
    return r;
  }
  uint64_t Queue(frontend::Request r, std::vector<std::byte> payload = {}) {
    uint64_t id = r.id;
    queue_.push_back({std::move(r), std::move(payload)});
    return id;
  }

  io::BufferPool& pool_;
  std::deque<Queued> queue_;
  std::map<uint64_t, uint32_t> lengths_;
  uint64_t next_id_ = 1;
  bool shut_ = false;
};

// The local disk, with a hook on every read submitted (the volume reads only for clients and
// for resync copies), and completions held back while `hold` says so (a slow disk).
class HookedDisk final : public io::ForwardingBlockDevice {
 public:
  explicit HookedDisk(io::BlockDevice& target) : ForwardingBlockDevice(target) {}
  Status Submit(std::span<const io::IoRequest> requests) override {
    for (const auto& r : requests) {
      if (r.op == io::IoOp::kRead && on_read) on_read(r);
    }
    return ForwardingBlockDevice::Submit(requests);
  }
  size_t Poll(std::span<io::IoCompletion> out) override {
    std::array<io::IoCompletion, 64> got;
    size_t n = ForwardingBlockDevice::Poll(got);
    held_.insert(held_.end(), got.begin(), got.begin() + static_cast<ptrdiff_t>(n));
    size_t k = 0;
    for (auto it = held_.begin(); it != held_.end() && k < out.size();) {
      if (hold && hold(*it)) {
        ++it;
        continue;
      }
      out[k++] = *it;
      it = held_.erase(it);
    }
    return k;
  }
  uint32_t in_flight() const override {
    return ForwardingBlockDevice::in_flight() + static_cast<uint32_t>(held_.size());
  }
  std::function<void(const io::IoRequest&)> on_read;
  std::function<bool(const io::IoCompletion&)> hold;  // true: not yet

 private:
  std::vector<io::IoCompletion> held_;
};

std::vector<std::byte> RandomBytes(size_t n, std::mt19937& rng) {
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng());
  return v;
}

bool Same(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
}

bool Holds(std::span<const std::byte> device, uint64_t offset, std::span<const std::byte> bytes) {
  return std::memcmp(device.data() + offset, bytes.data(), bytes.size()) == 0;
}

struct VolumeSetup {
  AckLevel ack = AckLevel::kDurable;
  uint32_t quorum = 0;  // 0: all (kAlone: none)
  uint64_t resync_rate = 0;
};

class VolumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ring_ = std::move(io::Ring::Create(64).value());
    local_ = std::make_unique<io::MemBlockDevice>("local", kSize, 256);
    disk_ = std::make_unique<HookedDisk>(*local_);
  }

  void TearDown() override {
    if (!volume_) return;
    volume_->StartShutdown();
    EXPECT_TRUE(RunUntil([&] { return volume_->closed(); }));
    volume_.reset();
  }

  testing::LoopbackReplica& AddReplica() {
    testing::LoopbackReplicaOptions o;
    o.capacity = kSize;
    o.max_block = kBlock;
    replicas_.push_back(testing::MakeLoopbackReplica(
        net_, *ring_, "replica" + std::to_string(replicas_.size()), std::move(o)));
    return *replicas_.back();
  }

  // The volume over the local disk, to every replica added so far; waits until it is ready and
  // every replica in sync (a replica with no history gets the whole volume first).
  void StartVolume(VolumeSetup setup) {
    Status started = TryStartVolume(setup);
    ASSERT_TRUE(started.ok()) << started.message();
    ASSERT_TRUE(RunUntil([&] { return AllInSync(); })) << "initial resync did not finish";
  }

  // The same, up to ready() (or the failure).
  Status TryStartVolume(VolumeSetup setup) {
    pool_ = std::move(io::BufferPool::Create(kBlock, 64, io::HugePages::kNever).value());
    primary_ = net_.CreateTransport("primary");
    RETURN_IF_ERROR(primary_->Register(*pool_));
    frontend_ = std::make_unique<TestFrontend>(*pool_);
    VolumeOptions o;
    auto& r = o.replication;
    r.ack = setup.ack;
    r.block_size = kBlock;
    r.window = 8;
    r.volume_size = kSize;
    o.quorum = setup.quorum == 0 ? UINT32_MAX : setup.quorum == kAlone ? 0 : setup.quorum;
    r.peer_timeout = std::chrono::milliseconds(60000);  // losses here are closed connections
    for (auto& rep : replicas_) o.peers.push_back({primary_.get(), rep->endpoint});
    o.bitmap_for = [](size_t, const proto::ReplicaId& id,
                      bool* existed) -> Result<std::unique_ptr<DirtyBitmap>> {
      *existed = false;
      return DirtyBitmap::InMemory(BitmapKey{kBlock, kSize, {}, id});
    };
    o.resync_rate = setup.resync_rate;
    o.reconnect_min = std::chrono::milliseconds(1);
    o.reconnect_max = std::chrono::milliseconds(5);
    // The node's generations and each peer's last in-sync generation, kept as its metadata.
    o.generations = gens_;
    o.save_generations = [this](const Generations& g) {
      gens_ = g;
      return Status::Ok();
    };
    o.peer_synced_at = synced_at_;
    o.remember_synced_at = [this](size_t peer, uint64_t g) {
      synced_at_.resize(std::max(synced_at_.size(), peer + 1));
      synced_at_[peer] = g;
    };
    volume_ = std::move(Volume::Create(*ring_, *pool_, *disk_, *frontend_, o).value());
    RETURN_IF_ERROR(volume_->Start());
    if (!RunUntil([&] { return volume_->ready() || !volume_->failure().ok(); })) {
      return Status::Error(ErrorCode::kTimeout, "the volume did not start");
    }
    return volume_->failure();
  }

  void Step() {
    volume_->Step();
    for (size_t i = 0; i < replicas_.size(); ++i) {
      if (replicas_[i]->server && !(frozen_ >> i & 1)) {
        replicas_[i]->server->Step();
        if (!replicas_[i]->server->writer().empty()) saw_writer_ = true;
      }
    }
  }

  // Steps until `done` holds (true) or 20 s pass (false: the test fails on it, never on timing
  // otherwise).
  bool RunUntil(const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      Step();
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return true;
  }

  bool AllInSync() const {
    for (const auto& p : volume_->status().peers) {
      if (p.state != VolumePeerState::kInSync) return false;
    }
    return true;
  }

  // Waits for the replies of every request queued so far; returns false on a timeout.
  bool Drain() {
    return RunUntil([&] {
      return frontend_->queued() == 0 && frontend_->done.size() == expected_replies_;
    });
  }

  // A client write, applied to `model_` too (the volume replies in any order, but overlapping
  // writes land in arrival order).
  uint64_t Write(uint64_t offset, const std::vector<std::byte>& bytes, bool fua = false) {
    std::memcpy(model_.data() + offset, bytes.data(), bytes.size());
    ++expected_replies_;
    return frontend_->Write(offset, bytes, fua);
  }

  void ExpectEverywhere(const std::vector<std::byte>& want) {
    EXPECT_TRUE(Same(local_->contents(), want)) << "local disk";
    for (size_t i = 0; i < replicas_.size(); ++i) {
      EXPECT_TRUE(Same(replicas_[i]->device->contents(), want)) << "replica " << i;
    }
  }

  transport::LoopbackNetwork net_;
  std::unique_ptr<io::Ring> ring_;
  std::unique_ptr<io::MemBlockDevice> local_;
  std::unique_ptr<io::BlockDevice> faulty_;  // between local_ and disk_, when a test breaks it
  std::unique_ptr<HookedDisk> disk_;
  std::vector<std::unique_ptr<testing::LoopbackReplica>> replicas_;
  std::unique_ptr<io::BufferPool> pool_;
  std::unique_ptr<transport::Transport> primary_;
  std::unique_ptr<TestFrontend> frontend_;
  std::unique_ptr<Volume> volume_;
  std::vector<std::byte> model_ = std::vector<std::byte>(kSize);
  size_t expected_replies_ = 0;
  uint64_t frozen_ = 0;  // replicas not stepped: alive to the transport, making no progress
  bool saw_writer_ = false;  // a replica's writer() was not empty after one of its steps
  Generations gens_;     // the volume node's, as its metadata keeps them
  std::vector<uint64_t> synced_at_;
  std::mt19937 rng_{42};
};

class VolumeAckLevels : public VolumeTest, public ::testing::WithParamInterface<AckLevel> {};

// Writes of any sector-aligned extent reach the local disk and both replicas; at `durable`, a
// write is on every replica's durable contents (and on the local disk) when its reply goes out.
TEST_P(VolumeAckLevels, ClientWritesReachTheDiskAndEveryReplica) {
  AddReplica();
  AddReplica();
  StartVolume({GetParam()});
  std::map<uint64_t, std::pair<uint64_t, std::vector<std::byte>>> writes;
  int checked = 0;
  frontend_->on_complete = [&](uint64_t id, int32_t res) {
    ASSERT_EQ(res, 0);
    auto& [offset, bytes] = writes[id];
    EXPECT_TRUE(Holds(local_->contents(), offset, bytes)) << "local, offset " << offset;
    if (GetParam() != AckLevel::kDurable) return;
    for (auto& r : replicas_) {
      EXPECT_TRUE(Holds(r->device->durable_contents(), offset, bytes)) << "offset " << offset;
    }
    ++checked;
  };
  // Disjoint extents (the check above is about each write alone): 200 of them, 512 B to 64 KiB,
  // crossing block boundaries.
  for (uint64_t offset = 0; offset + kBlock <= kSize && writes.size() < 200;) {
    const uint32_t length = (1 + rng_() % (kBlock / 512)) * 512;
    auto bytes = RandomBytes(length, rng_);
    writes[Write(offset, bytes)] = {offset, bytes};
    offset += length + (rng_() % 4) * 512;
  }
  ASSERT_TRUE(Drain());
  if (GetParam() == AckLevel::kDurable) {
    EXPECT_EQ(checked, static_cast<int>(writes.size()));
  }
  ExpectEverywhere(model_);
}

INSTANTIATE_TEST_SUITE_P(All, VolumeAckLevels,
                         ::testing::Values(AckLevel::kSent, AckLevel::kReceived,
                                           AckLevel::kDurable));

// Overlapping writes in flight at once end the same on the local disk and on every replica: the
// last one to arrive wins everywhere.
TEST_F(VolumeTest, OverlappingWritesLandInArrivalOrderEverywhere) {
  AddReplica();
  AddReplica();
  StartVolume({AckLevel::kReceived});
  for (int i = 0; i < 300; ++i) {
    // Within the first three blocks, so most writes overlap several others.
    const uint64_t offset = (rng_() % (3 * kBlock / 512)) * 512;
    const uint64_t room = std::min<uint64_t>(kBlock, 3 * kBlock - offset);
    const uint32_t length = static_cast<uint32_t>((1 + rng_() % (room / 512)) * 512);
    Write(offset, RandomBytes(length, rng_));
  }
  ASSERT_TRUE(Drain());
  for (const auto& [id, d] : frontend_->done) EXPECT_EQ(d.res, 0) << id;
  ExpectEverywhere(model_);
}

// The race of a background resync with the clients, on purpose: each resync copy's local read
// is met by a client write of the same block (now partial, now whole) arriving right behind it,
// and the read is slow: it completes only once that write is done, or after a while if the
// write waits for it. The copy holds the block as it was before the write; the write must win
// on the replica.
TEST_F(VolumeTest, AResyncCopyNeverOverwritesANewerClientWrite) {
  // The local disk has data before the replica has ever seen it: the whole volume is dirty.
  auto initial = RandomBytes(kSize, rng_);
  std::memcpy(local_->mutable_contents().data(), initial.data(), kSize);
  model_ = initial;
  AddReplica();
  struct Race {
    uint64_t write_id;
    int polls = 0;
  };
  std::map<uint64_t, Race> races;  // by the read's tag
  disk_->on_read = [&](const io::IoRequest& r) {
    if (r.len != kBlock) return;  // a resync copy reads one whole block
    const bool whole = races.size() % 2 == 0;
    const uint64_t offset = whole ? r.offset : r.offset + 4096;
    races[r.tag] = {Write(offset, RandomBytes(whole ? kBlock : 8192, rng_))};
  };
  disk_->hold = [&](const io::IoCompletion& c) {
    auto it = races.find(c.tag);
    return it != races.end() && !frontend_->done.contains(it->second.write_id) &&
           ++it->second.polls < 200;
  };
  StartVolume({AckLevel::kDurable});
  ASSERT_TRUE(Drain());
  disk_->on_read = nullptr;
  disk_->hold = nullptr;
  EXPECT_GE(races.size(), kSize / kBlock) << "every block's copy met a write";
  for (const auto& [id, d] : frontend_->done) EXPECT_EQ(d.res, 0) << id;
  ExpectEverywhere(model_);
}

// At `received`, no client FLUSH needed: the volume's own Flushes (about once a second) make the
// replicas' copies durable and settle their dirty bits while the session goes on. A replica that
// then loses power and comes back holds every block without a resync.
TEST_F(VolumeTest, AtReceivedTheVolumesOwnFlushesSettleTheReplicasBits) {
  AddReplica();
  AddReplica();
  StartVolume({AckLevel::kReceived, /*quorum=*/1});
  for (int i = 0; i < 100; ++i) {
    const uint64_t offset = (rng_() % ((kSize - kBlock) / 512)) * 512;
    Write(offset, RandomBytes((1 + rng_() % 64) * 512, rng_));
  }
  ASSERT_TRUE(Drain());
  ASSERT_TRUE(RunUntil([&] {
    const auto st = volume_->status();
    return st.peers[0].dirty_bytes == 0 && st.peers[1].dirty_bytes == 0;
  })) << "the acked writes never settled";
  EXPECT_TRUE(Same(replicas_[1]->device->durable_contents(), model_));
  replicas_[1]->device->DropUnsynced();  // power loss: nothing lost that was settled
  replicas_[1]->Stop();
  ASSERT_TRUE(RunUntil([&] {
    return volume_->status().peers[1].state == VolumePeerState::kLost;
  }));
  EXPECT_EQ(volume_->status().peers[1].dirty_bytes, 0u) << "nothing to resync";
  replicas_[1]->Start(net_, *ring_);
  ASSERT_TRUE(RunUntil([&] { return AllInSync(); }));
  ExpectEverywhere(model_);
}

// A lost replica above the quorum: writes go on; it comes back (a restart over the same data),
// is reconnected and resynced in the background while the writes go on, and ends identical.
TEST_F(VolumeTest, ALostReplicaIsResyncedInTheBackgroundWhileWritesGoOn) {
  AddReplica();
  AddReplica();
  StartVolume({AckLevel::kDurable, /*quorum=*/1, /*resync_rate=*/4 * kBlock * 10});
  auto write_some = [&](int n) {
    for (int i = 0; i < n; ++i) {
      const uint64_t offset = (rng_() % ((kSize - kBlock) / 512)) * 512;
      Write(offset, RandomBytes((1 + rng_() % 32) * 512, rng_));
    }
  };
  write_some(50);
  ASSERT_TRUE(Drain());
  replicas_[1]->Stop();
  ASSERT_TRUE(RunUntil([&] {
    return volume_->status().peers[1].state == VolumePeerState::kLost;
  }));
  write_some(100);
  ASSERT_TRUE(Drain());
  EXPECT_GT(volume_->status().peers[1].dirty_bytes, 0u);
  replicas_[1]->Start(net_, *ring_);
  // Writes while it resyncs (rate-limited, so they overlap).
  bool saw_resync = false;
  for (int round = 0; round < 20; ++round) {
    write_some(10);
    ASSERT_TRUE(Drain());
    saw_resync |= volume_->status().peers[1].state == VolumePeerState::kResyncing;
  }
  EXPECT_TRUE(saw_resync);
  ASSERT_TRUE(RunUntil([&] { return AllInSync(); }));
  for (const auto& [id, d] : frontend_->done) EXPECT_EQ(d.res, 0) << id;
  EXPECT_EQ(volume_->status().peers[1].dirty_bytes, 0u);
  EXPECT_GE(volume_->status().peers[1].reconnects, 1u);
  ExpectEverywhere(model_);
}

// A replica above the quorum that stops making progress (not lost: its window is full) is
// skipped by the writes that go on; once it moves again it is sent every block it missed.
TEST_F(VolumeTest, AReplicaThatFellBehindIsSentWhatItMissed) {
  AddReplica();
  AddReplica();
  StartVolume({AckLevel::kDurable, /*quorum=*/1});
  frozen_ = 0b10;
  for (uint64_t b = 0; b < kSize / kBlock; ++b) {
    Write(b * kBlock + 512 * (b % 7), RandomBytes(4096 * (1 + b % 3), rng_));
  }
  ASSERT_TRUE(Drain());
  for (const auto& [id, d] : frontend_->done) EXPECT_EQ(d.res, 0) << id;
  EXPECT_NE(volume_->status().peers[1].state, VolumePeerState::kInSync);
  frozen_ = 0;
  ASSERT_TRUE(RunUntil([&] { return AllInSync(); }));
  const auto status = volume_->status();
  EXPECT_EQ(status.peers[1].resync_done_bytes, status.peers[1].resync_total_bytes)
      << "each block counted once";
  ExpectEverywhere(model_);
}

// A replica in sync holds the volume's generations, consistent. One lost while writes go on is
// behind a new generation when it is back: it is inconsistent while it gets only what it
// missed (from the bitmap), then takes the volume's generations.
TEST_F(VolumeTest, GenerationsFollowEachReplicaIntoSync) {
  AddReplica();
  AddReplica();
  StartVolume({AckLevel::kDurable, /*quorum=*/1});
  ASSERT_NE(gens_.current, 0u);
  for (auto& r : replicas_) {
    ASSERT_TRUE(RunUntil([&] { return r->kept.generations.current == gens_.current; }));
    EXPECT_TRUE(r->kept.generations.consistent);
  }
  const uint64_t first = gens_.current;
  Write(0, RandomBytes(8192, rng_));
  ASSERT_TRUE(Drain());
  EXPECT_EQ(gens_.current, first) << "every replica in sync: no new generation";
  replicas_[1]->Stop();
  ASSERT_TRUE(RunUntil([&] {
    return volume_->status().peers[1].state != VolumePeerState::kInSync;
  }));
  Write(3 * kBlock, RandomBytes(4096, rng_));
  Write(7 * kBlock + 512, RandomBytes(1024, rng_));
  ASSERT_TRUE(Drain());
  EXPECT_NE(gens_.current, first) << "a write without replica 1 starts a new generation";
  ASSERT_EQ(gens_.history.size(), 1u);
  EXPECT_EQ(gens_.history[0], first);
  ASSERT_TRUE(RunUntil([&] { return replicas_[0]->kept.generations == gens_; }));
  EXPECT_EQ(replicas_[1]->kept.generations.current, first);
  const uint64_t second = gens_.current;
  Write(9 * kBlock, RandomBytes(4096, rng_));
  ASSERT_TRUE(Drain());
  EXPECT_EQ(gens_.current, second) << "one new generation per stretch without the replica";

  replicas_[1]->Start(net_, *ring_);
  bool saw_inconsistent = false;
  ASSERT_TRUE(RunUntil([&] {
    saw_inconsistent |= !replicas_[1]->kept.generations.consistent;
    return AllInSync() && replicas_[1]->kept.generations == gens_;
  }));
  EXPECT_TRUE(saw_inconsistent) << "a replica being resynced is inconsistent";
  EXPECT_TRUE(replicas_[1]->kept.generations.consistent);
  EXPECT_LE(volume_->status().peers[1].resync_total_bytes, 3u * kBlock)
      << "behind at a generation the bitmap counts from: only the blocks it missed";
  ExpectEverywhere(model_);
}

// A replica whose generations are ahead of the volume's (a node promoted and written while this
// one was down) makes the volume refuse to start; one that diverged (both wrote since they last
// agreed) the same, naming it split brain. Nothing is written to the replica.
TEST_F(VolumeTest, AVolumeBehindOrDivergedFromAReplicaRefusesToStart) {
  for (bool split : {false, true}) {
    SCOPED_TRACE(split ? "split brain" : "volume behind");
    replicas_.clear();
    auto& r = AddReplica();
    gens_ = Generations{};
    gens_.StartNew(0x100);
    gens_.consistent = true;
    Generations other = gens_;
    other.StartNew(split ? 0x300 : 0x200);  // ahead of 0x100
    if (split) gens_.StartNew(0x400);         // ... and this node wrote apart from it too
    r.kept_volume = {};
    r.kept.generations = other;
    const uint64_t saves = r.generation_saves;
    saw_writer_ = false;
    Status s = TryStartVolume({AckLevel::kDurable});
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), ErrorCode::kDiverged) << s.message();
    EXPECT_NE(s.message().find(split ? "split brain" : "the primary is behind"),
              std::string::npos)
        << s.message();
    EXPECT_NE(s.message().find("demote --discard-my-data"), std::string::npos) << s.message();
    EXPECT_EQ(r.device->writes(), 0u);
    EXPECT_EQ(r.generation_saves, saves) << "the replica's generations are untouched";
    // What serve records as the disk's writer: a refused primary never is (demote
    // --discard-my-data refuses while a primary writes; the refused one must not hold it off).
    EXPECT_FALSE(saw_writer_) << "the replica named the refused primary its writer";
    volume_.reset();
  }
}

// With quorum 0 a primary left alone writes on its local disk (a new generation, the blocks
// marked for the replica: a hot one too); the replica, back, gets exactly those.
TEST_F(VolumeTest, APrimaryAloneWritesLocallyAndTheReplicaGetsTheWritesBack) {
  AddReplica();
  StartVolume({AckLevel::kDurable, kAlone});
  Write(0, RandomBytes(kBlock, rng_));  // block 0 is hot on the replica now
  ASSERT_TRUE(Drain());
  const uint64_t before = gens_.current;
  replicas_[0]->Stop();
  ASSERT_TRUE(RunUntil([&] { return volume_->status().live_peers == 0; }));
  uint64_t alone = Write(4096, RandomBytes(8192, rng_));
  Write(5 * kBlock, RandomBytes(kBlock, rng_));
  ASSERT_TRUE(Drain());
  EXPECT_EQ(frontend_->done[alone].res, 0) << "a write with no replica succeeds at quorum 0";
  EXPECT_NE(gens_.current, before);
  EXPECT_EQ(volume_->status().peers[0].dirty_bytes, 2u * kBlock);
  replicas_[0]->Start(net_, *ring_);
  ASSERT_TRUE(RunUntil([&] { return AllInSync(); }));
  EXPECT_EQ(volume_->status().peers[0].resync_total_bytes, 2u * kBlock);
  ExpectEverywhere(model_);
}

// At quorum 0 a write needs every replica in session, and none once none is: writes in flight
// to a replica that is lost complete (from the local disk) instead of failing with EIO, with one
// replica left or with none; the lost ones get those writes back in their resync.
TEST_F(VolumeTest, AtQuorumZeroWritesInFlightToALostReplicaSucceed) {
  AddReplica();
  AddReplica();
  StartVolume({AckLevel::kDurable, kAlone});
  for (size_t victim : {size_t{1}, size_t{0}}) {
    frozen_ = uint64_t{1} << victim;  // it holds the writes sent to it, unacked
    std::vector<uint64_t> ids;
    for (int i = 0; i < 6; ++i) {
      ids.push_back(Write((victim * 8 + static_cast<uint64_t>(i)) * kBlock + 512,
                          RandomBytes(4096, rng_)));
    }
    ASSERT_TRUE(RunUntil([&] { return volume_->status().peers[victim].bytes_in_flight > 0; }));
    replicas_[victim]->Stop();
    frozen_ = 0;
    ASSERT_TRUE(Drain());
    for (uint64_t id : ids) {
      EXPECT_EQ(frontend_->done[id].res, 0) << "replica " << victim << " lost";
    }
  }
  EXPECT_EQ(volume_->status().live_peers, 0u);
  for (auto& r : replicas_) r->Start(net_, *ring_);
  ASSERT_TRUE(RunUntil([&] { return AllInSync(); }));
  ExpectEverywhere(model_);
}

// Below the quorum a write fails with EIO (and is not acked as replicated); reads go on. Once
// the replica is back, writes succeed again and what it missed is resynced.
TEST_F(VolumeTest, BelowTheQuorumWritesFailWithEioAndReadsGoOn) {
  AddReplica();
  StartVolume({AckLevel::kDurable});
  auto first = RandomBytes(8192, rng_);
  Write(0, first);
  ASSERT_TRUE(Drain());
  replicas_[0]->Stop();
  ASSERT_TRUE(RunUntil([&] { return volume_->status().live_peers == 0; }));
  uint64_t refused = frontend_->Write(kBlock, RandomBytes(4096, rng_));
  uint64_t read = frontend_->Read(0, 8192);
  expected_replies_ += 2;
  ASSERT_TRUE(Drain());
  EXPECT_EQ(frontend_->done[refused].res, -EIO);
  ASSERT_EQ(frontend_->done[read].res, 0);
  EXPECT_TRUE(Same(frontend_->done[read].data, first));
  replicas_[0]->Start(net_, *ring_);
  ASSERT_TRUE(RunUntil([&] { return AllInSync(); }));
  auto later = RandomBytes(4096, rng_);
  uint64_t ok = Write(2 * kBlock, later);
  ASSERT_TRUE(Drain());
  EXPECT_EQ(frontend_->done[ok].res, 0);
  ExpectEverywhere(model_);
}

// FLUSH and FUA mean durable on the replicas whatever the ack level: at `sent`, a write's reply
// promises nothing about the replica, but a FLUSH after it (or FUA on it) does.
TEST_F(VolumeTest, FlushAndFuaAreDurableOnTheReplicasAtEveryAckLevel) {
  AddReplica();
  StartVolume({AckLevel::kSent});
  auto a = RandomBytes(16384, rng_);
  Write(0, a);
  ASSERT_TRUE(Drain());
  uint64_t flush = frontend_->Flush();
  ++expected_replies_;
  bool flushed_durable = false;
  frontend_->on_complete = [&](uint64_t id, int32_t res) {
    if (id != flush) return;
    EXPECT_EQ(res, 0);
    flushed_durable = Holds(replicas_[0]->device->durable_contents(), 0, a) &&
                      Holds(local_->durable_contents(), 0, a);
  };
  ASSERT_TRUE(Drain());
  EXPECT_TRUE(flushed_durable);

  auto b = RandomBytes(8192, rng_);
  bool fua_durable = false;
  uint64_t fua = 0;
  frontend_->on_complete = [&](uint64_t id, int32_t res) {
    if (id != fua) return;
    EXPECT_EQ(res, 0);
    fua_durable = Holds(replicas_[0]->device->durable_contents(), 3 * kBlock, b) &&
                  Holds(local_->durable_contents(), 3 * kBlock, b);
  };
  fua = Write(3 * kBlock, b, /*fua=*/true);
  ASSERT_TRUE(Drain());
  EXPECT_TRUE(fua_durable);
  ExpectEverywhere(model_);
}

// A write the local disk fails, after it went to the replicas: the client gets the error, and
// the replicas do not keep a block this disk does not hold. The block goes back into their
// bitmaps and the background resync copies this disk's version, partial block or whole.
TEST_P(VolumeAckLevels, AWriteTheLocalDiskFailsLeavesNoReplicaDifferent) {
  io::DiskFaultSpec spec;
  spec.fail_nth_write = 2;
  faulty_ = std::make_unique<io::FaultyBlockDevice>(
      std::make_unique<io::ForwardingBlockDevice>(*local_), spec);
  disk_ = std::make_unique<HookedDisk>(*faulty_);
  AddReplica();
  AddReplica();
  StartVolume({GetParam()});
  const uint64_t ok = Write(0, RandomBytes(kBlock, rng_));
  ASSERT_TRUE(Drain());
  const auto lost = RandomBytes(8192, rng_);
  const uint64_t failed = Write(2 * kBlock + 4096, lost);  // the disk's second write
  std::memcpy(model_.data() + 2 * kBlock + 4096, local_->contents().data() + 2 * kBlock + 4096,
              lost.size());  // what the disk holds there: not the failed write's bytes
  ASSERT_TRUE(Drain());
  EXPECT_EQ(frontend_->done[ok].res, 0);
  EXPECT_EQ(frontend_->done[failed].res, -EIO);
  ASSERT_TRUE(RunUntil([&] { return AllInSync(); }));
  ExpectEverywhere(model_);
}

// TRIM and WRITE_ZEROES: ranges across blocks read as zeros locally and on the replica, sent as
// ranges (no block write on the replica).
TEST_F(VolumeTest, ZeroRangesReachTheReplicas) {
  AddReplica();
  StartVolume({AckLevel::kDurable});
  auto data = RandomBytes(4 * kBlock, rng_);
  for (uint64_t off = 0; off < data.size(); off += kBlock) {
    Write(off, std::vector<std::byte>(data.begin() + static_cast<ptrdiff_t>(off),
                                      data.begin() + static_cast<ptrdiff_t>(off + kBlock)));
  }
  ASSERT_TRUE(Drain());
  const uint64_t writes_before = replicas_[0]->device->writes();
  const uint64_t zero_off = kBlock / 2, zero_len = 2 * kBlock;
  uint64_t z1 = frontend_->Zero(zero_off, zero_len, /*unmap=*/true);
  uint64_t z2 = frontend_->Zero(3 * kBlock + 512, 1024, /*unmap=*/false);
  expected_replies_ += 2;
  std::memset(model_.data() + zero_off, 0, zero_len);
  std::memset(model_.data() + 3 * kBlock + 512, 0, 1024);
  ASSERT_TRUE(Drain());
  EXPECT_EQ(frontend_->done[z1].res, 0);
  EXPECT_EQ(frontend_->done[z2].res, 0);
  EXPECT_EQ(replicas_[0]->device->writes(), writes_before);
  EXPECT_GE(replicas_[0]->device->zeroes(), 2u);
  ExpectEverywhere(model_);
}

}  // namespace
}  // namespace blkmirror::engine
