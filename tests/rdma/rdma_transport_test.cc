// The RDMA backend over soft-RoCE, inside the lab (scripts/lab): a server transport listening on
// LAB_IP1 (rxe1) in a thread of its own, a client on LAB_IP0 (rxe0) in the test's thread; each
// with its own io_uring ring, pool and transport (a transport is single-threaded, and the
// passive side accepts only when its own Poll runs). Then the engine over RDMA: a Replicator
// and a ReplicaServer in two threads.
//
// Outside the lab (no LAB_IP0/LAB_IP1 in the environment) every test is skipped, loudly; the lab
// suite script fails when anything is skipped.
#include "transport/rdma/rdma_transport.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "engine/replica.h"
#include "engine/testing/kept_target.h"
#include "engine/replicator.h"
#include "io/forwarding_block_device.h"
#include "io/mem/mem_block_device.h"
#include "io/ring.h"
#include "transport/rdma/rdma_internal.h"
#include "transport/testing/events.h"
#include "transport/testing/faulty_transport.h"

namespace blkmirror::transport {
namespace {

using namespace std::chrono_literals;
using test_events::Count;
using test_events::Describe;
using test_events::Event;
using test_events::Record;
using Clock = std::chrono::steady_clock;

// LAB_IP0 / LAB_IP1 / LAB_NORDMA_IP, or "" when not in the lab.
std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

#define REQUIRE_LAB()                                                                  \
  do {                                                                                 \
    for (const char* v : {"LAB_IP0", "LAB_IP1", "LAB_NORDMA_IP"}) {                    \
      if (Env(v).empty()) {                                                            \
        GTEST_SKIP() << "SKIPPED: " << v                                               \
                     << " is not set: this test needs the soft-RoCE lab (scripts/lab " \
                        "scripts/lab.d/suite.d/50-rdma-transport.sh)";                 \
      }                                                                                \
    }                                                                                  \
  } while (0)

proto::RawHeader DataHeader(uint64_t seq, uint32_t len) {
  proto::Frame f;
  f.flags = static_cast<uint16_t>(proto::AckLevel::kReceived);
  f.payload_len = len;
  f.body = proto::Data{seq, seq * 65536, len, 0};
  return proto::Encode(f);
}

// A control frame whose payload is `text` (which must outlive the Post: the span points at it).
WorkItem TextItem(ConnId conn, const std::string& text, uint64_t tag = 0, bool signal = false) {
  proto::Frame f;
  f.body = proto::Error{42};
  f.payload_len = static_cast<uint32_t>(text.size());
  WorkItem item;
  item.conn = conn;
  item.tag = tag;
  item.signal = signal;
  item.header = proto::Encode(f);
  item.control = std::as_bytes(std::span(text.data(), text.size()));
  return item;
}

// Would point at a temporary: refuse at compile time.
WorkItem TextItem(ConnId conn, std::string&& text, uint64_t tag = 0, bool signal = false) = delete;

std::string Text(const Event& e) {
  return std::string(reinterpret_cast<const char*>(e.payload.data()), e.payload.size());
}

// ---- A transport in a thread of its own -----------------------------------------------------

struct LoopConfig {
  // Trust every accepted connection at once, as the replica engine does after the handshake.
  bool trust_on_accept = true;
  uint32_t slots = 16;
  size_t buffers = 32;
  size_t buffer_size = (64 << 10) + kReceiveHeadroom;
};

// Owns a thread running ring + pool + RDMA transport, listening on LAB_IP1:0. Every completion
// is recorded (payload copied) and then given to `handler`, in the loop thread. Call() runs a
// function in the loop thread and returns its result.
class LoopThread {
 public:
  using Handler = std::function<void(LoopThread&, Completion&)>;
  using Tick = std::function<void(LoopThread&)>;

  LoopThread(LoopConfig config, Handler handler = {}, Tick tick = {})
      : config_(config), handler_(std::move(handler)), tick_(std::move(tick)) {
    std::promise<Result<Endpoint>> started;
    auto f = started.get_future();
    thread_ = std::thread([this, &started] { Run(started); });
    auto r = f.get();
    if (r.ok()) {
      endpoint_ = *r;
    } else {
      error_ = r.status().message();
    }
  }
  ~LoopThread() { Stop(); }

  const std::string& error() const { return error_; }
  const Endpoint& endpoint() const { return endpoint_; }

  // Runs `f` in the loop thread, waits for it. Not from inside another Call (deadlock).
  template <typename F>
  auto Call(F f) -> decltype(f()) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto result = task.get_future();
    {
      std::lock_guard lock(mu_);
      calls_.push_back([&task] { task(); });
    }
    return result.get();
  }

  // Waits (polling from outside) until `pred` holds in the loop thread.
  template <typename Pred>
  bool WaitFor(Pred pred, std::chrono::milliseconds limit = 20s) {
    auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      if (Call(pred)) return true;
      std::this_thread::sleep_for(2ms);
    }
    return false;
  }

  void Stop() {
    if (!thread_.joinable()) return;
    stop_ = true;
    thread_.join();
  }

  // Loop-thread state (use from handlers or Call).
  Transport& t() { return *transport_; }
  rdma::RdmaTransport& rdma() { return *static_cast<rdma::RdmaTransport*>(transport_.get()); }
  io::BufferPool& pool() { return *pool_; }
  std::vector<Event> events;
  std::deque<std::pair<ConnId, io::BufferRef>> held;  // Data buffers a handler keeps
  size_t max_held = 0;

 private:
  void Run(std::promise<Result<Endpoint>>& started) {
    auto ring = io::Ring::Create(256);
    if (!ring.ok()) return started.set_value(ring.status());
    ring_ = std::move(ring).value();
    auto pool = io::BufferPool::Create(config_.buffer_size, config_.buffers, io::HugePages::kNever);
    if (!pool.ok()) return started.set_value(pool.status());
    pool_ = std::move(pool).value();
    RdmaOptions options;
    options.slots_per_connection = config_.slots;
    TransportContext ctx{ring_.get(), {}};
    auto t = CreateRdmaTransport(ctx, options);
    if (!t.ok()) return started.set_value(t.status());
    transport_ = std::move(t).value();
    if (Status s = transport_->Register(*pool_); !s.ok()) return started.set_value(s);
    started.set_value(transport_->Listen({Env("LAB_IP1"), 0}));
    std::array<Completion, 16> cs;
    while (!stop_) {
      for (;;) {
        size_t n = transport_->Poll(cs);
        for (size_t i = 0; i < n; ++i) {
          events.push_back(Record(cs[i]));
          if (cs[i].kind == CompletionKind::kAccepted && config_.trust_on_accept) {
            transport_->Trust(cs[i].conn);
          }
          if (handler_) handler_(*this, cs[i]);
          if (cs[i].data) transport_->Release(cs[i].conn, std::move(cs[i].data));
        }
        if (n < cs.size()) break;
      }
      max_held = std::max(max_held, held.size());
      if (tick_) tick_(*this);
      std::deque<std::function<void()>> calls;
      {
        std::lock_guard lock(mu_);
        calls.swap(calls_);
      }
      for (auto& c : calls) c();
      (void)ring_->Wait(1ms);
    }
    held.clear();
    for (auto& c : cs) c.data.Reset();
    transport_.reset();
    pool_.reset();
    ring_.reset();
  }

  LoopConfig config_;
  Handler handler_;
  Tick tick_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::deque<std::function<void()>> calls_;
  Endpoint endpoint_;
  std::string error_;
  std::unique_ptr<io::Ring> ring_;
  std::unique_ptr<io::BufferPool> pool_;
  std::unique_ptr<Transport> transport_;
};

// ---- The client side, driven by the test's thread -------------------------------------------

class RdmaTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_LAB();
    ring_ = std::move(io::Ring::Create(256).value());
    pool_ = std::move(io::BufferPool::Create(64 << 10, 48, io::HugePages::kNever).value());
    RdmaOptions options;
    options.source_address = Env("LAB_IP0");
    TransportContext ctx{ring_.get(), {}};
    ctx.options.send_queue_depth = 64;
    auto t = CreateRdmaTransport(ctx, options);
    ASSERT_TRUE(t.ok()) << t.status().message();
    client_ = std::move(t).value();
    ASSERT_TRUE(client_->Register(*pool_).ok());
  }

  void TearDown() override {
    client_.reset();
    server_.reset();
  }

  void StartServer(LoopConfig config, LoopThread::Handler handler = {},
                   LoopThread::Tick tick = {}) {
    server_ = std::make_unique<LoopThread>(config, std::move(handler), std::move(tick));
    ASSERT_TRUE(server_->error().empty()) << server_->error();
    ASSERT_NE(server_->endpoint().port, 0);
  }

  // Runs the client's loop until `pred` holds (bounded by `limit`), collecting completions.
  template <typename Pred>
  bool RunUntil(Pred pred, std::chrono::milliseconds limit = 20s) {
    auto deadline = Clock::now() + limit;
    std::array<Completion, 16> cs;
    for (;;) {
      size_t n;
      while ((n = client_->Poll(cs)) > 0) {
        for (size_t i = 0; i < n; ++i) {
          events_.push_back(Record(cs[i]));
          if (cs[i].data) client_->Release(cs[i].conn, std::move(cs[i].data));
        }
      }
      if (pred()) return true;
      if (Clock::now() > deadline) return false;
      EXPECT_TRUE(ring_->Wait(1ms).ok());
    }
  }

  // Runs the client's loop until `pred` holds in the server's thread.
  template <typename Pred>
  bool RunUntilServer(Pred pred, std::chrono::milliseconds limit = 20s) {
    return RunUntil([&] { return server_->Call(pred); }, limit);
  }

  ConnId ConnectClient() {
    auto conn = client_->Connect(server_->endpoint(), 10s);
    EXPECT_TRUE(conn.ok()) << conn.status().message();
    if (!conn.ok()) return kNoConn;
    EXPECT_TRUE(
        server_->WaitFor([&] { return Count(server_->events, CompletionKind::kAccepted) == 1; }));
    return *conn;
  }

  ConnId ServerConn() {
    return server_->Call([&] {
      for (auto& e : server_->events) {
        if (e.kind == CompletionKind::kAccepted) return e.conn;
      }
      return kNoConn;
    });
  }

  // A signaled Data frame (sequence `seq`, tag `tag`) of `len` random bytes from `seed`, in a
  // client pool buffer; the bytes are also copied to *copy for the checks.
  WorkItem DataItem(ConnId conn, uint64_t seq, uint64_t tag, uint32_t len, uint32_t seed,
                    std::vector<std::byte>* copy) {
    WorkItem item;
    item.conn = conn;
    item.tag = tag;
    item.signal = true;
    item.header = DataHeader(seq, len);
    item.data = Block(len, seed, copy);
    return item;
  }

  // A pool buffer filled with `len` random bytes (kept until the test ends).
  const std::byte* Block(uint32_t len, uint32_t seed, std::vector<std::byte>* copy) {
    auto buf = pool_->TryGet();
    EXPECT_TRUE(buf.has_value()) << "client pool exhausted";
    std::mt19937 rng(seed);
    for (uint32_t i = 0; i < len; ++i) buf->data()[i] = static_cast<std::byte>(rng());
    copy->assign(buf->data(), buf->data() + len);
    blocks_.push_back(std::move(*buf));
    return blocks_.back().data();
  }

  std::unique_ptr<io::Ring> ring_;
  std::unique_ptr<io::BufferPool> pool_;
  std::unique_ptr<Transport> client_;
  std::unique_ptr<LoopThread> server_;
  std::vector<Event> events_;
  std::vector<io::BufferRef> blocks_;
};

TEST_F(RdmaTransportTest, FramesGoBothWaysInOrderWithTheirPayloads) {
  // The server echoes every control frame it receives, as a control frame of its own.
  StartServer({}, [](LoopThread& s, Completion& c) {
    if (c.kind != CompletionKind::kRecv || c.data) return;
    std::string echo =
        "echo " + std::string(reinterpret_cast<const char*>(c.control.data()), c.control.size());
    auto item = TextItem(c.conn, echo);
    ASSERT_TRUE(s.t().Post(std::span(&item, 1)).ok());
  });
  ConnId conn = ConnectClient();
  ASSERT_NE(conn, kNoConn);
  EXPECT_EQ(client_->name(), "rdma");
  EXPECT_EQ(client_->PeerName(conn), server_->endpoint().ToString());
  const ConnId server_conn = ServerConn();
  EXPECT_NE(
      server_->Call([&] { return server_->t().PeerName(server_conn); }).find(Env("LAB_IP0") + ":"),
      std::string::npos);

  // 40 Data frames of varied sizes (more than the 16 slots: they are re-granted as the server
  // releases them), a control frame after every 5th; all posted in batches of 4.
  std::mt19937 rng(7);
  std::vector<std::vector<std::byte>> sent(40);
  std::vector<WorkItem> batch;
  std::vector<std::string> texts;
  texts.reserve(8);
  for (uint64_t i = 0; i < sent.size(); ++i) {
    uint32_t len = 1 + rng() % (64 << 10);
    WorkItem item = DataItem(conn, i, i, len, static_cast<uint32_t>(i), &sent[i]);
    batch.push_back(item);
    if (i % 5 == 4) {
      texts.push_back("control " + std::to_string(i));
      batch.push_back(TextItem(conn, texts.back(), 1000 + i, true));
    }
    if (batch.size() >= 4 || i + 1 == sent.size()) {
      ASSERT_TRUE(RunUntil([&] { return client_->SendSpace(conn) >= batch.size(); }));
      Status s = client_->Post(batch);
      ASSERT_TRUE(s.ok()) << s.message();
      batch.clear();
    }
  }
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kRecv) == 48; }))
      << server_->Call([&] { return Count(server_->events, CompletionKind::kRecv); });
  ASSERT_TRUE(RunUntil([&] {
    return Count(events_, CompletionKind::kSent) == 48 &&
           Count(events_, CompletionKind::kRecv) == 8;
  }));
  // Server side: every frame, in order, bytes intact.
  auto server_events = server_->Call([&] { return server_->events; });
  uint64_t next = 0;
  size_t text_i = 0;
  for (auto& e : server_events) {
    if (e.kind != CompletionKind::kRecv) continue;
    auto f = proto::Decode(e.header);
    ASSERT_TRUE(f.ok()) << f.status().message();
    if (f->type() == proto::FrameType::kError) {
      ASSERT_LT(text_i, texts.size());
      EXPECT_EQ(Text(e), texts[text_i++]);
      EXPECT_EQ(next % 5, 0u) << "control frame out of place";
      continue;
    }
    const auto& d = std::get<proto::Data>(f->body);
    ASSERT_EQ(d.seq, next) << "Data frames out of order";
    ASSERT_EQ(e.payload.size(), sent[next].size());
    EXPECT_TRUE(e.payload == sent[next]) << "payload of frame " << next << " differs";
    ++next;
  }
  EXPECT_EQ(next, 40u);
  // Client side: kSent tags in posting order, with the bytes handed over; the echoes in order.
  std::vector<uint64_t> expected_tags;
  for (uint64_t i = 0; i < 40; ++i) {
    expected_tags.push_back(i);
    if (i % 5 == 4) expected_tags.push_back(1000 + i);
  }
  std::vector<uint64_t> tags;
  size_t echo_i = 0;
  for (auto& e : events_) {
    if (e.kind == CompletionKind::kSent) {
      tags.push_back(e.tag);
      EXPECT_GT(e.res, 0);
    } else if (e.kind == CompletionKind::kRecv) {
      ASSERT_LT(echo_i, texts.size());
      EXPECT_EQ(Text(e), "echo " + texts[echo_i++]);
    }
  }
  EXPECT_EQ(tags, expected_tags);
  // Data kSent res = header + payload.
  for (auto& e : events_) {
    if (e.kind == CompletionKind::kSent && e.tag < 40) {
      EXPECT_EQ(e.res, static_cast<int32_t>(64 + sent[e.tag].size()));
    }
  }
  // A clean close on the client: the server sees it, every slot goes back to its pool.
  client_->Close(conn);
  ASSERT_TRUE(RunUntil([&] { return Count(events_, CompletionKind::kClosed) == 1; }));
  EXPECT_TRUE(events_.back().status.empty()) << events_.back().status;
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kClosed) == 1; }));
  EXPECT_NE(
      server_->Call([&] { return server_->events.back().status; }).find("closed the connection"),
      std::string::npos);
  EXPECT_TRUE(
      RunUntilServer([&] { return server_->pool().available() == server_->pool().count(); }));
}

TEST_F(RdmaTransportTest, DataWaitsForCreditsAndAllArrivesInOrder) {
  // 4 slots, 8 pool buffers (so no top-up), and a receiver that holds every block and gives one
  // back every 10 ms: the sender runs out of slots again and again.
  LoopConfig config;
  config.slots = 4;
  config.buffers = 8;
  auto last_release = std::make_shared<Clock::time_point>(Clock::now());
  StartServer(
      config,
      [](LoopThread& s, Completion& c) {
        if (c.kind == CompletionKind::kRecv && c.data)
          s.held.emplace_back(c.conn, std::move(c.data));
      },
      [last_release](LoopThread& s) {
        if (s.held.empty() || Clock::now() - *last_release < 10ms) return;
        s.t().Release(s.held.front().first, std::move(s.held.front().second));
        s.held.pop_front();
        *last_release = Clock::now();
      });
  ConnId conn = ConnectClient();
  ASSERT_NE(conn, kNoConn);
  std::vector<std::vector<std::byte>> sent(30);
  std::vector<WorkItem> items;
  for (uint64_t i = 0; i < sent.size(); ++i) {
    uint32_t len = 32 << 10;
    WorkItem item = DataItem(conn, i, i, len, 100 + static_cast<uint32_t>(i), &sent[i]);
    items.push_back(item);
  }
  ASSERT_TRUE(client_->Post(items).ok());  // all at once: 26 of them wait for slots
  EXPECT_EQ(client_->SendSpace(conn), 64u - 30u);
  ASSERT_TRUE(
      RunUntilServer([&] { return Count(server_->events, CompletionKind::kRecv) == 30; }, 30s));
  ASSERT_TRUE(RunUntil([&] { return Count(events_, CompletionKind::kSent) == 30; }));
  EXPECT_EQ(client_->SendSpace(conn), 64u);
  EXPECT_EQ(server_->Call([&] { return server_->max_held; }), 4u) << "the slots were not the limit";
  auto server_events = server_->Call([&] { return server_->events; });
  uint64_t next = 0;
  for (auto& e : server_events) {
    if (e.kind != CompletionKind::kRecv) continue;
    auto f = proto::Decode(e.header);
    ASSERT_TRUE(f.ok());
    ASSERT_EQ(std::get<proto::Data>(f->body).seq, next);
    EXPECT_TRUE(e.payload == sent[next]) << "frame " << next;
    ++next;
  }
  EXPECT_EQ(next, 30u);
  uint64_t tag = 0;
  for (auto& e : events_) {
    if (e.kind == CompletionKind::kSent) {
      EXPECT_EQ(e.tag, tag++);
    }
  }
}

// Before the engine trusts an accepted connection (Transport::Trust, after the handshake and
// the key check), its peer gets no slot and no key to the pool: Data frames wait at the sender
// while control frames (the handshake) flow. Trust opens the slots and everything arrives.
TEST_F(RdmaTransportTest, AnUntrustedPeerGetsNoSlotUntilTrusted) {
  LoopConfig config;
  config.trust_on_accept = false;
  StartServer(config);
  ConnId conn = ConnectClient();
  ASSERT_NE(conn, kNoConn);
  const ConnId server_conn = ServerConn();
  // Frames leave in order: the control frame first (as the handshake precedes Data).
  std::vector<std::vector<std::byte>> sent(3);
  std::vector<WorkItem> items;
  const std::string hello = "hello before trust";  // outlives the Post
  items.push_back(TextItem(conn, hello, 100, true));
  for (uint64_t i = 0; i < sent.size(); ++i) {
    WorkItem item = DataItem(conn, i, i, 16 << 10, 900 + static_cast<uint32_t>(i), &sent[i]);
    items.push_back(item);
  }
  ASSERT_TRUE(client_->Post(items).ok());
  // The control frame arrives; no Data frame does, and the server's pool lends nothing.
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kRecv) == 1; }));
  EXPECT_FALSE(RunUntilServer(
      [&] { return Count(server_->events, CompletionKind::kRecv) > 1; }, 1500ms))
      << "a Data frame landed in an untrusted connection's memory";
  EXPECT_EQ(server_->Call([&] { return server_->pool().available(); }),
            server_->Call([&] { return server_->pool().count(); }))
      << "slots were granted before Trust";
  EXPECT_EQ(Count(events_, CompletionKind::kSent), 1u) << "only the control frame went out";

  server_->Call([&] {
    server_->t().Trust(server_conn);
    return 0;
  });
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kRecv) == 4; }));
  ASSERT_TRUE(RunUntil([&] { return Count(events_, CompletionKind::kSent) == 4; }));
  auto server_events = server_->Call([&] { return server_->events; });
  uint64_t next = 0;
  for (auto& e : server_events) {
    if (e.kind != CompletionKind::kRecv || e.payload.size() != (16u << 10)) continue;
    EXPECT_TRUE(e.payload == sent[next]) << "frame " << next;
    ++next;
  }
  EXPECT_EQ(next, 3u);
}

TEST_F(RdmaTransportTest, ConnectToAnAddressWithoutRdmaFailsFastNamingIt) {
  const std::string ip = Env("LAB_NORDMA_IP");
  // No source address: the route to the dummy interface has no RDMA device.
  auto ring = std::move(io::Ring::Create(32).value());
  TransportContext ctx{ring.get(), {}};
  auto t = std::move(CreateRdmaTransport(ctx).value());
  ASSERT_TRUE(t->Register(*pool_).ok());
  auto conn = t->Connect({ip, 7000}, 5s);
  ASSERT_FALSE(conn.ok());
  const std::string& msg = conn.status().message();
  EXPECT_NE(msg.find("cannot reach " + ip + ":7000 over RDMA"), std::string::npos) << msg;
  // Fast: address resolution itself fails; it does not wait out the connect timeout.
  EXPECT_NE(msg.find("rdma_resolve_addr"), std::string::npos) << msg;
  EXPECT_NE(conn.status().code(), ErrorCode::kTimeout) << msg;
  std::cout << "    error: " << msg << "\n";
  // Listening there fails as clearly.
  auto bound = t->Listen({ip, 0});
  ASSERT_FALSE(bound.ok());
  EXPECT_NE(bound.status().message().find("cannot listen on " + ip), std::string::npos)
      << bound.status().message();
  std::cout << "    error: " << bound.status().message() << "\n";
}

TEST_F(RdmaTransportTest, ConnectToAPortNobodyListensOnIsRefused) {
  StartServer({});
  Endpoint wrong = server_->endpoint();
  wrong.port = static_cast<uint16_t>(wrong.port == 65535 ? 65534 : wrong.port + 1);
  auto conn = client_->Connect(wrong, 5s);
  ASSERT_FALSE(conn.ok());
  const std::string& msg = conn.status().message();
  EXPECT_NE(msg.find("cannot reach " + wrong.ToString()), std::string::npos) << msg;
  EXPECT_NE(msg.find("device rxe"), std::string::npos) << msg;  // names the path
  std::cout << "    error: " << msg << "\n";
}

// The interface that holds `ip` (for the MTU test), or "".
std::string InterfaceOf(const std::string& ip) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string name;
  for (ifaddrs* a = list; a != nullptr && name.empty(); a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    char text[INET_ADDRSTRLEN] = "";
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, text, sizeof(text));
    if (ip == text) name = a->ifa_name;
  }
  freeifaddrs(list);
  return name;
}

// The server's interface gets a smaller MTU (rxe1's port MTU follows: 512), the client's path
// MTU stays 1024: the connection is refused with an error that says so, instead of a
// connection whose large packets vanish.
TEST_F(RdmaTransportTest, AnMtuMismatchIsRefusedNamingBothMtus) {
  const std::string ifname = InterfaceOf(Env("LAB_IP1"));
  ASSERT_FALSE(ifname.empty()) << "no interface has " << Env("LAB_IP1");
  std::string old_mtu;
  {
    std::ifstream f("/sys/class/net/" + ifname + "/mtu");
    f >> old_mtu;
  }
  ASSERT_FALSE(old_mtu.empty());
  ASSERT_EQ(std::system(("ip link set dev " + ifname + " mtu 1000").c_str()), 0);
  struct Restore {
    std::string cmd;
    ~Restore() { EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd; }
  } restore{"ip link set dev " + ifname + " mtu " + old_mtu};
  StartServer({});
  auto conn = client_->Connect(server_->endpoint(), 5s);
  ASSERT_FALSE(conn.ok());
  const std::string& msg = conn.status().message();
  std::cout << "    error: " << msg << "\n";
  EXPECT_NE(msg.find("cannot reach " + server_->endpoint().ToString()), std::string::npos) << msg;
  EXPECT_NE(msg.find("path MTU mismatch"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1024-byte packets"), std::string::npos) << msg;
  EXPECT_NE(msg.find("at most 512"), std::string::npos) << msg;
  EXPECT_NE(msg.find("device rxe"), std::string::npos) << msg;
}

// The server goes away (its transport destroyed: QP gone, DREQ sent) while the client still has
// frames queued and in flight: every signaled one completes (sent or -ECANCELED), then kClosed
// with a reason; nothing hangs.
TEST_F(RdmaTransportTest, PeerTornDownMidStreamCancelsAndCloses) {
  LoopConfig config;
  config.slots = 4;
  config.buffers = 8;
  StartServer(config, [](LoopThread& s, Completion& c) {
    if (c.kind == CompletionKind::kRecv && c.data) s.held.emplace_back(c.conn, std::move(c.data));
  });
  ConnId conn = ConnectClient();
  ASSERT_NE(conn, kNoConn);
  std::vector<std::vector<std::byte>> sent(20);
  std::vector<WorkItem> items;
  for (uint64_t i = 0; i < sent.size(); ++i) {
    WorkItem item = DataItem(conn, i, i, 16 << 10, static_cast<uint32_t>(i), &sent[i]);
    items.push_back(item);
  }
  ASSERT_TRUE(client_->Post(items).ok());
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kRecv) >= 2; }));
  auto start = Clock::now();
  server_->Stop();  // destroys the server's transport
  ASSERT_TRUE(RunUntil([&] { return Count(events_, CompletionKind::kClosed) == 1; }, 30s));
  std::cout << "    closed after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count()
            << " ms: " << events_.back().status << "\n";
  ASSERT_EQ(events_.back().kind, CompletionKind::kClosed);
  EXPECT_FALSE(events_.back().status.empty());
  EXPECT_NE(events_.back().status.find(server_->endpoint().ToString()), std::string::npos)
      << events_.back().status;
  size_t cancelled = 0;
  uint64_t tag = 0;
  for (auto& e : events_) {
    if (e.kind != CompletionKind::kSent) continue;
    EXPECT_EQ(e.tag, tag++);
    if (e.res == -ECANCELED) ++cancelled;
  }
  EXPECT_EQ(tag, 20u) << "every signaled item completes before kClosed";
  EXPECT_GE(cancelled, 12u);  // at most 8 could have been written (4 slots, 4 re-granted)
  EXPECT_EQ(client_->SendSpace(conn), 0u);
  const std::string late = "late";
  WorkItem item = TextItem(conn, late);
  EXPECT_EQ(client_->Post(std::span(&item, 1)).code(), ErrorCode::kClosed);
}

TEST_F(RdmaTransportTest, ServerClosingMidStreamIsReportedAfterItsLastFrames) {
  LoopConfig config;
  config.slots = 2;
  config.buffers = 4;
  StartServer(config, [](LoopThread& s, Completion& c) {
    if (c.kind == CompletionKind::kRecv && c.data) s.held.emplace_back(c.conn, std::move(c.data));
  });
  ConnId conn = ConnectClient();
  ASSERT_NE(conn, kNoConn);
  std::vector<std::vector<std::byte>> sent(10);
  std::vector<WorkItem> items;
  for (uint64_t i = 0; i < sent.size(); ++i) {
    WorkItem item = DataItem(conn, i, i, 8 << 10, static_cast<uint32_t>(i), &sent[i]);
    items.push_back(item);
  }
  ASSERT_TRUE(client_->Post(items).ok());
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kRecv) == 2; }));
  // The server sends a last frame, then closes.
  const ConnId server_conn = ServerConn();
  const std::string last_words = "last words";
  server_->Call([&] {
    auto bye = TextItem(server_conn, last_words);
    EXPECT_TRUE(server_->t().Post(std::span(&bye, 1)).ok());
    return 0;
  });
  ASSERT_TRUE(RunUntil([&] { return Count(events_, CompletionKind::kRecv) == 1; }));
  server_->Call([&] {
    server_->t().Close(server_conn);
    return 0;
  });
  ASSERT_TRUE(RunUntil([&] { return Count(events_, CompletionKind::kClosed) == 1; }, 30s));
  EXPECT_EQ(Text(*std::find_if(events_.begin(), events_.end(),
                               [](auto& e) { return e.kind == CompletionKind::kRecv; })),
            "last words");
  EXPECT_EQ(events_.back().kind, CompletionKind::kClosed);
  EXPECT_NE(events_.back().status.find("closed the connection"), std::string::npos)
      << events_.back().status;
  EXPECT_EQ(Count(events_, CompletionKind::kSent), 10u);
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kClosed) == 1; }));
  EXPECT_TRUE(server_->Call([&] { return server_->events.back().status; }).empty());
}

TEST_F(RdmaTransportTest, ABadHeaderInASlotClosesTheConnectionWithTheReason) {
  StartServer({});
  ConnId conn = ConnectClient();
  ASSERT_NE(conn, kNoConn);
  std::vector<std::byte> copy;
  WorkItem good;
  good.conn = conn;
  good.tag = 0;
  good.signal = true;
  good.header = DataHeader(0, 4096);
  good.data = Block(4096, 1, &copy);
  ASSERT_TRUE(client_->Post(std::span(&good, 1)).ok());
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kRecv) == 1; }));
  static_cast<rdma::RdmaTransport*>(client_.get())->TEST_CorruptNextDataHeader(conn);
  WorkItem bad = good;
  bad.tag = 1;
  bad.header = DataHeader(1, 4096);
  ASSERT_TRUE(client_->Post(std::span(&bad, 1)).ok());
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kClosed) == 1; }));
  std::string reason = server_->Call([&] { return server_->events.back().status; });
  std::cout << "    server: " << reason << "\n";
  EXPECT_NE(reason.find("bad frame from " + Env("LAB_IP0")), std::string::npos) << reason;
  EXPECT_NE(reason.find("in RDMA slot"), std::string::npos) << reason;
  EXPECT_NE(reason.find("bad frame magic"), std::string::npos) << reason;
  EXPECT_EQ(server_->Call([&] { return Count(server_->events, CompletionKind::kRecv); }), 1u);
  ASSERT_TRUE(RunUntil([&] { return Count(events_, CompletionKind::kClosed) == 1; }));
  EXPECT_EQ(Count(events_, CompletionKind::kSent), 2u);
}

TEST_F(RdmaTransportTest, PostRefusesDataThePeerCannotTake) {
  StartServer({});
  ConnId conn = ConnectClient();
  ASSERT_NE(conn, kNoConn);
  std::vector<std::byte> copy;
  const std::byte* block = Block(4096, 3, &copy);
  // Larger than the server's receive buffers (64 KiB + 4 KiB) minus the 64-byte header.
  WorkItem big;
  big.conn = conn;
  big.header = DataHeader(0, (68 << 10) - 63);
  big.data = block;
  Status s = client_->Post(std::span(&big, 1));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(s.message().find("does not fit"), std::string::npos) << s.message();
  // Not from the registered pool.
  std::vector<std::byte> outside(4096);
  WorkItem stray = big;
  stray.header = DataHeader(0, 4096);
  stray.data = outside.data();
  s = client_->Post(std::span(&stray, 1));
  EXPECT_NE(s.message().find("registered buffer pool"), std::string::npos) << s.message();
  // The connecting side advertises no slots: the server cannot send it Data frames.
  const ConnId server_conn = ServerConn();
  std::string refused = server_->Call([&] {
    auto buf = server_->pool().TryGet();
    WorkItem item;
    item.conn = server_conn;
    item.header = DataHeader(0, 4096);
    item.data = buf->data();
    return server_->t().Post(std::span(&item, 1)).message();
  });
  EXPECT_NE(refused.find("advertises no receive slots"), std::string::npos) << refused;
  // Nothing was queued by the refused posts: the connection still works.
  WorkItem good = stray;
  good.data = block;
  good.signal = true;
  ASSERT_TRUE(client_->Post(std::span(&good, 1)).ok());
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kRecv) == 1; }));
}

// 300 control frames, each echoed, while the server stalls for a while at the start: both
// directions run out of message credits (68 and 64 receives) and get them back, nothing is
// lost, nothing deadlocks, and the order holds.
TEST_F(RdmaTransportTest, ControlFloodRunsOnMessageCredits) {
  auto pause = std::make_shared<std::atomic<int>>(0);
  StartServer(
      {},
      [](LoopThread& s, Completion& c) {
        if (c.kind != CompletionKind::kRecv || c.data) return;
        std::string echo = "echo " + std::string(reinterpret_cast<const char*>(c.control.data()),
                                                 c.control.size());
        auto item = TextItem(c.conn, echo);
        Status posted = s.t().Post(std::span(&item, 1));
        EXPECT_TRUE(posted.ok()) << posted.message();
      },
      [pause](LoopThread&) {
        if (int ms = pause->exchange(0); ms > 0)
          std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      });
  ConnId conn = ConnectClient();
  ASSERT_NE(conn, kNoConn);
  pause->store(500);
  std::vector<std::string> texts;
  texts.reserve(300);
  for (int i = 0; i < 300; ++i) {
    texts.push_back("flood " + std::to_string(i) +
                    std::string(static_cast<size_t>(i % 7) * 300, 'x'));
    ASSERT_TRUE(RunUntil([&] { return client_->SendSpace(conn) > 0; }));
    auto item = TextItem(conn, texts.back(), static_cast<uint64_t>(i), i % 10 == 9);
    Status s = client_->Post(std::span(&item, 1));
    ASSERT_TRUE(s.ok()) << s.message();
  }
  ASSERT_TRUE(RunUntil([&] { return Count(events_, CompletionKind::kRecv) == 300; }, 60s))
      << Count(events_, CompletionKind::kRecv) << " echoes";
  size_t i = 0;
  for (auto& e : events_) {
    if (e.kind == CompletionKind::kRecv) {
      ASSERT_EQ(Text(e), "echo " + texts[i]) << "echo " << i;
      ++i;
    }
  }
  EXPECT_EQ(Count(events_, CompletionKind::kSent), 30u);
}

// Adaptive polling: a Post leaves the transport busy-polling (the next Wait comes straight back
// to Poll); once the traffic stops it arms its CQs and sleeps on the completion channel, and a
// frame arriving then still wakes the loop's Ring::Wait (it does not wait for its timeout).
TEST_F(RdmaTransportTest, BusyPollsWithTrafficThenSleepsOnTheChannel) {
  StartServer({}, [](LoopThread& s, Completion& c) {
    if (c.kind != CompletionKind::kRecv || c.data) return;
    std::string echo =
        "echo " + std::string(reinterpret_cast<const char*>(c.control.data()), c.control.size());
    auto item = TextItem(c.conn, echo);
    ASSERT_TRUE(s.t().Post(std::span(&item, 1)).ok());
  });
  ConnId conn = ConnectClient();
  ASSERT_NE(conn, kNoConn);
  auto& rdma = static_cast<rdma::RdmaTransport&>(*client_);
  const std::string ping = "ping";
  auto item = TextItem(conn, ping);
  ASSERT_TRUE(client_->Post(std::span(&item, 1)).ok());
  std::array<Completion, 16> cs;
  // Kept, not dropped: on a loaded machine the echo may already be back by this Poll.
  const size_t n = client_->Poll(cs);
  for (size_t i = 0; i < n; ++i) events_.push_back(Record(cs[i]));
  EXPECT_TRUE(rdma.TEST_Polling()) << "a Post is traffic: the transport polls for the answer";
  ASSERT_TRUE(RunUntil([&] { return Count(events_, CompletionKind::kRecv) == 1; }))
      << "no echo; the client saw: " << Describe(events_)
      << "; the server saw: " << server_->Call([&] { return Describe(server_->events); });
  // Nothing more comes (no engine, no heartbeats): the budget runs out and the transport sleeps.
  ASSERT_TRUE(RunUntil([&] { return !rdma.TEST_Polling(); }));

  // Asleep: the server's next frame must wake the client's ring through the completion channel.
  const ConnId server_conn = ServerConn();
  const std::string hello = "hello";
  server_->Call([&] {
    auto h = TextItem(server_conn, hello);
    EXPECT_TRUE(server_->t().Post(std::span(&h, 1)).ok());
    return 0;
  });
  const auto start = Clock::now();
  constexpr auto kLimit = 20s;
  while (Count(events_, CompletionKind::kRecv) < 2 && Clock::now() - start < kLimit) {
    ASSERT_TRUE(ring_->Wait(kLimit).ok());
    size_t n = client_->Poll(cs);
    for (size_t i = 0; i < n; ++i) events_.push_back(Record(cs[i]));
  }
  ASSERT_EQ(Count(events_, CompletionKind::kRecv), 2u);
  EXPECT_EQ(Text(events_.back()), "hello");
  EXPECT_LT(Clock::now() - start, kLimit) << "the frame did not wake Ring::Wait: a CQ unarmed?";
}

// Two connections from one client transport: one device, PD, pool MR and completion channel
// for both; the second connection gets fewer slots (the pool is half taken), both work.
TEST_F(RdmaTransportTest, TwoConnectionsShareTheDevice) {
  LoopConfig config;
  config.buffers = 24;  // the first connection takes 12 slots, the second 6
  StartServer(config);
  auto a = client_->Connect(server_->endpoint(), 10s);
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto b = client_->Connect(server_->endpoint(), 10s);
  ASSERT_TRUE(b.ok()) << b.status().message();
  ASSERT_NE(*a, *b);
  ASSERT_TRUE(
      RunUntilServer([&] { return Count(server_->events, CompletionKind::kAccepted) == 2; }));
  std::vector<std::vector<std::byte>> sent(40);
  for (uint64_t i = 0; i < sent.size(); ++i) {
    WorkItem item = DataItem(i % 2 == 0 ? *a : *b, i / 2, i, 16 << 10,
                             500 + static_cast<uint32_t>(i), &sent[i]);
    ASSERT_TRUE(client_->Post(std::span(&item, 1)).ok());
  }
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kRecv) == 40; }));
  ASSERT_TRUE(RunUntil([&] { return Count(events_, CompletionKind::kSent) == 40; }));
  auto server_events = server_->Call([&] { return server_->events; });
  std::map<ConnId, uint64_t> next;
  std::map<ConnId, int> which;  // server conn -> 0 (a) or 1 (b), by the first block's bytes
  for (auto& e : server_events) {
    if (e.kind != CompletionKind::kRecv) continue;
    uint64_t seq = std::get<proto::Data>(proto::Decode(e.header)->body).seq;
    if (!which.count(e.conn)) which[e.conn] = e.payload == sent[0] ? 0 : 1;
    ASSERT_EQ(seq, next[e.conn]++) << "out of order on one connection";
    EXPECT_TRUE(e.payload == sent[seq * 2 + static_cast<uint64_t>(which[e.conn])]);
  }
  ASSERT_EQ(next.size(), 2u);
  for (auto& [conn, n] : next) EXPECT_EQ(n, 20u);
  client_->Close(*a);
  client_->Close(*b);
  ASSERT_TRUE(RunUntilServer([&] { return Count(server_->events, CompletionKind::kClosed) == 2; }));
  EXPECT_TRUE(
      server_->WaitFor([&] { return server_->pool().available() == server_->pool().count(); }));
}

// ---- The engine over RDMA -------------------------------------------------------------------


// A ReplicaServer on LAB_IP1 over RDMA (optionally behind a FaultyTransport), in its own
// thread, writing to an in-memory device.
class ReplicaThread {
 public:
  ReplicaThread(uint64_t capacity, std::string fault)
      : device_("mem-replica", capacity), fault_(std::move(fault)) {
    std::promise<Result<Endpoint>> started;
    auto f = started.get_future();
    thread_ = std::thread([this, &started] { Run(started); });
    auto r = f.get();
    if (r.ok()) {
      endpoint_ = *r;
    } else {
      error_ = r.status().message();
    }
  }
  ~ReplicaThread() { Stop(); }

  void Stop() {
    if (!thread_.joinable()) return;
    stop_ = true;
    thread_.join();
  }

  const Endpoint& endpoint() const { return endpoint_; }
  const std::string& error() const { return error_; }
  // After Stop():
  io::MemBlockDevice& device() { return device_; }
  const engine::ReplicaStats& stats() const { return stats_; }
  uint64_t faults_injected() const { return faults_; }
  size_t pool_leaked() const { return pool_leaked_; }

 private:
  void Run(std::promise<Result<Endpoint>>& started) {
    auto ring = io::Ring::Create(256);
    if (!ring.ok()) return started.set_value(ring.status());
    auto pool = io::BufferPool::Create((64 << 10) + kReceiveHeadroom, 32, io::HugePages::kNever);
    if (!pool.ok()) return started.set_value(pool.status());
    TransportContext ctx{ring->get(), {}};
    auto made = CreateRdmaTransport(ctx);
    if (!made.ok()) return started.set_value(made.status());
    std::unique_ptr<Transport> t = std::move(made).value();
    FaultyTransport* faulty = nullptr;
    if (!fault_.empty()) {
      auto spec = FaultSpec::Parse(fault_);
      if (!spec.ok()) return started.set_value(spec.status());
      auto wrapped = std::make_unique<FaultyTransport>(std::move(t), *spec);
      faulty = wrapped.get();
      t = std::move(wrapped);
    }
    if (Status s = t->Register(**pool); !s.ok()) return started.set_value(s);
    auto bound = t->Listen({Env("LAB_IP1"), 0});
    if (!bound.ok()) return started.set_value(bound.status());
    engine::ReplicaOptions options;
    options.target_name = device_.name();
    io::MemBlockDevice* dev = &device_;
    options.open_target = engine::testing::KeptTarget(*dev);
    auto server = engine::ReplicaServer::Create(**ring, **pool, std::move(options));
    if (!server.ok()) return started.set_value(server.status());
    (*server)->AddTransport(t.get());
    started.set_value(*bound);
    while (!stop_) {
      (*server)->Step();
      (void)(*ring)->Wait(1ms);
    }
    (*server)->Shutdown();
    stats_ = (*server)->stats();
    if (faulty != nullptr) faults_ = faulty->faults_injected();
    server->reset();
    t.reset();
    pool_leaked_ = (*pool)->count() - (*pool)->available();
  }

  io::MemBlockDevice device_;
  std::string fault_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  Endpoint endpoint_;
  std::string error_;
  engine::ReplicaStats stats_;
  uint64_t faults_ = 0;
  size_t pool_leaked_ = 0;
};

class RdmaEngineTest : public ::testing::Test {
 protected:
  void SetUp() override { REQUIRE_LAB(); }

  // Replicates `data` (block 64 KiB, window 8, ack durable) to a replica over RDMA, until every
  // block completed or the first one failed; returns that failure (OK when all completed).
  // Whatever happens, it ends the way a push does (Close or destruction of the Replicator, then
  // of the transport, the pool and the ring, then the replica), and checks every buffer came
  // back on both sides. After it: stats_, and the replica stopped (its device and counters).
  Status Replicate(const std::vector<std::byte>& data, const std::string& fault,
                   uint32_t max_retries = 5) {
    replica_ = std::make_unique<ReplicaThread>(data.size(), fault);
    if (!replica_->error().empty()) return Status::Error(ErrorCode::kUnavailable, replica_->error());
    auto ring = std::move(io::Ring::Create(256).value());
    constexpr uint32_t kWindow = 8;
    auto pool =
        std::move(io::BufferPool::Create(kBlock, kWindow + 4, io::HugePages::kNever).value());
    RdmaOptions rdma_options;
    rdma_options.source_address = Env("LAB_IP0");
    TransportContext ctx{ring.get(), {}};
    auto t = std::move(CreateRdmaTransport(ctx, rdma_options).value());
    EXPECT_TRUE(t->Register(*pool).ok());
    engine::ReplicatorOptions o;
    o.ack = proto::AckLevel::kDurable;
    o.block_size = kBlock;
    o.window = kWindow;
    o.volume_size = data.size();
    o.max_retries = max_retries;
    auto rep = std::move(engine::Replicator::Create(*ring, *pool, o).value());
    engine::PeerConfig peer;
    peer.transport = t.get();
    peer.endpoint = replica_->endpoint();
    auto start = Clock::now();
    Status result = rep->Connect(std::span(&peer, 1));
    const size_t expected = (data.size() + kBlock - 1) / kBlock;
    size_t done = 0;
    uint64_t next = 0;
    std::array<engine::WriteCompletion, 16> out;
    auto deadline = Clock::now() + 120s;
    while (result.ok() && done < expected) {
      if (Clock::now() > deadline) {
        result = Status::Error(ErrorCode::kTimeout, "the push did not finish in 120 s");
        break;
      }
      while (next < data.size() && rep->CanSubmit()) {
        auto buf = pool->TryGet();
        if (!buf) break;
        auto len = static_cast<uint32_t>(std::min<uint64_t>(kBlock, data.size() - next));
        std::memcpy(buf->data(), data.data() + next, len);
        result = rep->Submit(next, std::move(*buf), len, next);
        if (!result.ok()) break;
        next += len;
      }
      size_t n = rep->Poll(out);
      for (size_t i = 0; i < n; ++i) {
        if (!out[i].status.ok() && result.ok()) result = out[i].status;
        ++done;
      }
      if (result.ok()) result = rep->failure();
      if (n == 0 && result.ok()) {
        EXPECT_TRUE(ring->Wait(1ms).ok());
      }
    }
    if (result.ok()) {
      result = rep->Close();
      auto took = std::chrono::duration<double>(Clock::now() - start).count();
      std::cout << "    " << data.size() / 1024 << " KiB in " << took << " s ("
                << data.size() / took / 1e6 << " MB/s)\n";
    }
    stats_ = rep->stats();
    rep.reset();
    EXPECT_EQ(pool->available(), pool->count()) << "the primary's pool lost buffers";
    t.reset();
    replica_->Stop();
    EXPECT_EQ(replica_->pool_leaked(), 0u) << "the replica's pool lost buffers";
    return result;
  }

  // After a successful Replicate: the replica holds `data`, durably, each block written once.
  void ExpectReplicated(const std::vector<std::byte>& data) {
    const size_t expected = (data.size() + kBlock - 1) / kBlock;
    const auto& written = replica_->device().contents();
    ASSERT_GE(written.size(), data.size());
    EXPECT_EQ(std::memcmp(written.data(), data.data(), data.size()), 0) << "replica differs";
    const auto& durable = replica_->device().durable_contents();
    EXPECT_EQ(std::memcmp(durable.data(), data.data(), data.size()), 0) << "not durable";
    ASSERT_EQ(stats_.size(), 1u);
    EXPECT_EQ(stats_[0].blocks_acked, expected);
    EXPECT_EQ(stats_[0].transport, "rdma");
    EXPECT_EQ(replica_->device().writes(), expected) << "a block was written twice or not at all";
  }

  static std::vector<std::byte> RandomBytes(size_t n, uint32_t seed) {
    std::vector<std::byte> v(n);
    std::mt19937 rng(seed);
    for (auto& b : v) b = static_cast<std::byte>(rng());
    return v;
  }

  static constexpr uint32_t kBlock = 64 << 10;
  std::unique_ptr<ReplicaThread> replica_;
  std::vector<engine::PeerStats> stats_;
};

TEST_F(RdmaEngineTest, ReplicatesAVolumeAtAckDurable) {
  auto data = RandomBytes((3 << 20) + 12288, 1);  // 3 MiB and a short last block
  Status s = Replicate(data, "");
  ASSERT_TRUE(s.ok()) << s.message();
  ExpectReplicated(data);
  EXPECT_EQ(stats_[0].retransmits, 0u);
  EXPECT_EQ(replica_->stats().crc_mismatches, 0u);
}

TEST_F(RdmaEngineTest, CorruptedBlocksAreNackedAndResent) {
  auto data = RandomBytes(2 << 20, 2);
  // Every 3rd block fails its first two tries: the seqs 2, 5, ..., 29 of the 32 blocks.
  Status s = Replicate(data, "flip-rx-data:every=3,tries=2");
  ASSERT_TRUE(s.ok()) << s.message();
  ExpectReplicated(data);
  EXPECT_EQ(replica_->faults_injected(), 20u);
  EXPECT_EQ(replica_->stats().crc_mismatches, 20u);
  EXPECT_EQ(stats_[0].crc_mismatches, 20u);
  EXPECT_EQ(stats_[0].retransmits, 20u);
}

// A block that fails its CRC on every try: the push gives up on it after max_retries resends,
// naming its offset and the replica, while other blocks (and their resends) are in flight; the
// bad block is never written, and both sides give every buffer back.
TEST_F(RdmaEngineTest, ABlockThatFailsEveryTryFailsThePushCleanly) {
  auto data = RandomBytes(2 << 20, 3);
  const uint64_t bad = 2 * kBlock;
  Status s = Replicate(data, "flip-rx-data:offset=" + std::to_string(bad), 5);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kCrcMismatch) << s.message();
  EXPECT_NE(s.message().find("block at offset " + std::to_string(bad)), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("6 times"), std::string::npos) << s.message();
  EXPECT_EQ(replica_->faults_injected(), 6u);  // the first send and 5 resends
  const auto& written = replica_->device().contents();
  std::vector<std::byte> zero(kBlock);
  EXPECT_EQ(std::memcmp(written.data() + bad, zero.data(), kBlock), 0) << "the bad block was written";
}

}  // namespace
}  // namespace blkmirror::transport
