// Where threads meet: a primary and a replica, each with its own loop (ring, pool, transport)
// on its own thread in one process, over TCP on 127.0.0.1, as a storage daemon that hosts both
// would run them. Nothing is shared but the process (logging, libsodium, the allocator): the
// ThreadSanitizer build (scripts/test) checks that this holds.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <future>
#include <random>
#include <thread>

#include "engine/replica.h"
#include "engine/testing/kept_target.h"
#include "engine/replicator.h"
#include "io/forwarding_block_device.h"
#include "io/mem/mem_block_device.h"
#include "io/ring.h"
#include "transport/registry.h"

namespace blkmirror::engine {
namespace {


void RunPrimaryAndReplicaOnTwoThreads(const Key* key) {
  constexpr uint32_t kBlock = 64 << 10;
  std::vector<std::byte> data(8 << 20);
  std::mt19937 rng(5);
  for (auto& b : data) b = static_cast<std::byte>(rng());
  io::MemBlockDevice target("mem", data.size(), 64);
  std::atomic<bool> stop{false};
  std::promise<transport::Endpoint> bound;

  std::thread replica([&] {
    auto ring = io::Ring::Create(256).value();
    auto pool = io::BufferPool::Create(kBlock + transport::kReceiveHeadroom, 32,
                                       io::HugePages::kNever)
                    .value();
    transport::TransportContext ctx{ring.get(), {}};
    auto t = transport::CreateTransport("tcp", ctx).value();
    ASSERT_TRUE(t->Register(*pool).ok());
    auto ep = t->Listen({"127.0.0.1", 0});
    ASSERT_TRUE(ep.ok());
    ReplicaOptions options;
    options.target_name = "mem";
    if (key != nullptr) options.key = *key;
    options.open_target = engine::testing::KeptTarget(target);
    auto server = ReplicaServer::Create(*ring, *pool, std::move(options)).value();
    server->AddTransport(t.get());
    bound.set_value(*ep);
    while (!stop.load()) {
      if (server->Step() == 0) (void)ring->Wait(std::chrono::milliseconds(5));
    }
    server->Shutdown();
  });

  transport::Endpoint ep = bound.get_future().get();
  {
    auto ring = io::Ring::Create(256).value();
    auto pool = io::BufferPool::Create(kBlock, 16, io::HugePages::kNever).value();
    transport::TransportContext ctx{ring.get(), {}};
    auto t = transport::CreateTransport("tcp", ctx).value();
    ASSERT_TRUE(t->Register(*pool).ok());
    ReplicatorOptions o;
    o.block_size = kBlock;
    o.window = 8;
    o.volume_size = data.size();
    if (key != nullptr) o.key = *key;
    auto rep = Replicator::Create(*ring, *pool, o).value();
    PeerConfig peer{t.get(), ep};
    ASSERT_TRUE(rep->Connect(std::span(&peer, 1)).ok());
    uint64_t next = 0, done = 0;
    std::array<WriteCompletion, 16> out;
    while (done < data.size() / kBlock) {
      while (next < data.size() && rep->CanSubmit() && pool->available() > 0) {
        auto buf = pool->TryGet();
        std::memcpy(buf->data(), data.data() + next, kBlock);
        ASSERT_TRUE(rep->Submit(next, std::move(*buf), kBlock, next).ok());
        next += kBlock;
      }
      size_t n = rep->Poll(out);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_TRUE(out[i].status.ok()) << out[i].status.message();
      }
      done += n;
      if (n == 0) {
        ASSERT_TRUE(ring->Wait(std::chrono::milliseconds(5)).ok());
      }
    }
    ASSERT_TRUE(rep->Close().ok());
  }
  stop.store(true);
  replica.join();
  EXPECT_EQ(std::memcmp(target.durable_contents().data(), data.data(), data.size()), 0);
}

TEST(Threads, PrimaryAndReplicaLoopsOnTheirOwnThreads) { RunPrimaryAndReplicaOnTwoThreads(nullptr); }

TEST(Threads, AuthenticatedSessionsOnTheirOwnThreads) {
  Key key;
  key.bytes.fill(3);
  RunPrimaryAndReplicaOnTwoThreads(&key);
}

}  // namespace
}  // namespace blkmirror::engine
