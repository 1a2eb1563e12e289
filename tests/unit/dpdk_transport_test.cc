// The DPDK backend end to end in one process: two transports over a real memif pair (two DPDK
// ports on one socket), each on its own loop thread, with and without the packet fault layer.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "common/crc32c.h"
#include "io/ring.h"
#include "transport/registry.h"

namespace blkmirror::transport {
namespace {

#ifdef BLKMIRROR_SANITIZED
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

constexpr uint32_t kBlock = 64 << 10;

bool HaveDpdk() {
  for (auto name : TransportNames()) {
    if (name == "dpdk") return true;
  }
  return false;
}

std::string SocketPath(const char* what) {
  return fmt::format("/tmp/bm-dpdk-test-{}-{}.sock", getpid(), what);
}

// The replica side: accepts one connection, trusts it, checks every Data frame's CRC and order,
// answers each with a Heartbeat carrying its seq, until it has seen `want` frames or is stopped.
struct Server {
  std::unique_ptr<io::Ring> ring;
  std::unique_ptr<io::BufferPool> pool;
  std::unique_ptr<Transport> t;
  Endpoint bound;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> frames{0};
  std::string error;

  Status Start(const std::string& socket, const std::string& faults) {
    ASSIGN_OR_RETURN(ring, io::Ring::Create(256));
    ASSIGN_OR_RETURN(pool, io::BufferPool::Create(kBlock + kReceiveHeadroom, 64,
                                                  io::HugePages::kNever));
    TransportContext ctx{ring.get(), {}};
    ctx.options.dpdk_port = "memif:" + socket + ",role=server";
    ctx.options.dpdk_ip = "10.77.0.2";
    ctx.options.dpdk_test_faults = faults;
    ASSIGN_OR_RETURN(t, CreateTransport("dpdk", ctx));
    RETURN_IF_ERROR(t->Register(*pool));
    ASSIGN_OR_RETURN(bound, t->Listen({"127.0.0.1", 0}));
    return Status::Ok();
  }

  void Run(uint64_t want) {
    std::array<Completion, 32> cs;
    uint64_t next_seq = 0;
    // Until stopped: answers lost on the way are resent only while this side polls.
    while (!stop && error.empty()) {
      (void)ring->Wait(std::chrono::milliseconds(2));
      size_t n = t->Poll(cs);
      for (size_t i = 0; i < n; ++i) {
        Completion& c = cs[i];
        if (c.kind == CompletionKind::kAccepted) t->Trust(c.conn);
        if (c.kind != CompletionKind::kRecv || !c.data) continue;
        auto f = proto::Decode(std::span<const std::byte, proto::kHeaderSize>(c.header));
        const auto& d = std::get<proto::Data>(f->body);
        if (d.seq != next_seq) error = fmt::format("seq {} arrived, {} expected", d.seq, next_seq);
        if (Crc32c(c.data.data(), d.length) != d.crc) error = fmt::format("seq {}: bad CRC", d.seq);
        ++next_seq;
        proto::Frame hb;
        hb.body = proto::Heartbeat{d.seq, 0};
        WorkItem item;
        item.conn = c.conn;
        item.header = proto::Encode(hb);
        if (Status s = t->Post({&item, 1}); !s.ok()) error = s.message();
        t->Release(c.conn, std::move(c.data));
        ++frames;
      }
    }
    if (frames > want) error = fmt::format("{} frames arrived, {} sent", frames.load(), want);
  }
};

class DpdkTransportTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (!HaveDpdk()) GTEST_SKIP() << "SKIPPED LOUDLY: this build has no DPDK transport";
    if (kSanitized) {
      GTEST_SKIP() << "SKIPPED LOUDLY: the DPDK EAL runs only in the uninstrumented build (its "
                      "own threads and memory are outside the sanitizers' model); the Release "
                      "unit tests run this test";
    }
  }
};

TEST_P(DpdkTransportTest, BlocksArriveOnceInOrderAndEveryAckComesBack) {
  const std::string faults = GetParam();
  const std::string socket = SocketPath(faults.empty() ? "clean" : "lossy");
  Server server;
  Status started = server.Start(socket, faults);
  ASSERT_TRUE(started.ok()) << started.message();
  constexpr uint64_t kFrames = 400;
  std::thread loop([&] { server.Run(kFrames); });

  auto ring = std::move(io::Ring::Create(256).value());
  auto pool = std::move(io::BufferPool::Create(kBlock, 32, io::HugePages::kNever).value());
  TransportContext ctx{ring.get(), {}};
  ctx.options.dpdk_port = "memif:" + socket;
  ctx.options.dpdk_ip = "10.77.0.1";
  ctx.options.dpdk_test_faults = faults;
  auto client = CreateTransport("dpdk", ctx);
  ASSERT_TRUE(client.ok()) << client.status().message();
  Transport& t = **client;
  ASSERT_TRUE(t.Register(*pool).ok());
  auto conn = t.Connect(server.bound, std::chrono::seconds(10));
  ASSERT_TRUE(conn.ok()) << conn.status().message();

  std::mt19937_64 rng(7);
  std::vector<io::BufferRef> buffers;
  for (int i = 0; i < 16; ++i) buffers.push_back(std::move(*pool->TryGet()));
  uint64_t posted = 0, sent = 0, answered = 0;
  std::array<Completion, 32> cs;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (answered < kFrames && std::chrono::steady_clock::now() < deadline &&
         server.error.empty()) {
    // Keep 16 blocks in flight: block i lives in buffer i % 16 until its kSent.
    while (posted < kFrames && posted - sent < buffers.size()) {
      io::BufferRef& b = buffers[posted % buffers.size()];
      const uint32_t len = 4096 * (1 + static_cast<uint32_t>(rng() % (kBlock / 4096)));
      for (uint32_t j = 0; j < len; j += 8) {
        const uint64_t v = rng();
        std::memcpy(b.data() + j, &v, 8);
      }
      proto::Frame f;
      f.payload_len = len;
      f.flags = static_cast<uint16_t>(proto::AckLevel::kReceived);
      f.body = proto::Data{posted, posted * kBlock, len, Crc32c(b.data(), len)};
      WorkItem item;
      item.conn = *conn;
      item.tag = posted;
      item.signal = true;
      item.header = proto::Encode(f);
      item.data = b.data();
      ASSERT_TRUE(t.Post({&item, 1}).ok());
      ++posted;
    }
    (void)ring->Wait(std::chrono::milliseconds(2));
    size_t n = t.Poll(cs);
    for (size_t i = 0; i < n; ++i) {
      Completion& c = cs[i];
      ASSERT_NE(c.kind, CompletionKind::kClosed) << c.status.message();
      if (c.kind == CompletionKind::kSent) {
        ASSERT_EQ(c.tag, sent) << "kSent out of order";
        ASSERT_GT(c.res, 0);
        ++sent;
      } else if (c.kind == CompletionKind::kRecv) {
        auto f = proto::Decode(std::span<const std::byte, proto::kHeaderSize>(c.header));
        ASSERT_TRUE(f.ok());
        ASSERT_EQ(std::get<proto::Heartbeat>(f->body).sent_ns, answered) << "answer out of order";
        ++answered;
      }
    }
  }
  server.stop = true;
  loop.join();
  t.Close(*conn);
  EXPECT_EQ(server.error, "");
  EXPECT_EQ(server.frames.load(), kFrames);
  EXPECT_EQ(sent, kFrames);
  EXPECT_EQ(answered, kFrames);
  unlink(socket.c_str());
}

INSTANTIATE_TEST_SUITE_P(Memif, DpdkTransportTest,
                         ::testing::Values("", "drop=0.02,dup=0.01,reorder=0.02,corrupt=0.01"),
                         [](const auto& info) {
                           return std::string(info.param[0] == '\0' ? "Clean" : "Lossy");
                         });

TEST(DpdkTransportSetupTest, ErrorsNameWhatIsWrong) {
  if (!HaveDpdk()) GTEST_SKIP() << "SKIPPED LOUDLY: this build has no DPDK transport";
  auto ring = std::move(io::Ring::Create(64).value());
  TransportContext ctx{ring.get(), {}};
  auto none = CreateTransport("dpdk", ctx);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("--dpdk-port"), std::string::npos)
      << none.status().message();
  ctx.options.dpdk_port = "memif:/tmp/x";
  ctx.options.dpdk_test_faults = "drop=2";
  auto bad = CreateTransport("dpdk", ctx);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("drop=2"), std::string::npos) << bad.status().message();
}

}  // namespace
}  // namespace blkmirror::transport
