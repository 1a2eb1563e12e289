// The TCP backend over real sockets on 127.0.0.1, driven by a real io_uring.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "io/ring.h"
#include "transport/registry.h"
#include "transport/testing/events.h"

namespace blkmirror::transport {
namespace {

using test_events::Count;
using test_events::Event;
using test_events::Record;

class TcpTransportTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    ring_ = std::move(io::Ring::Create(256).value());
    server_pool_ = std::move(io::BufferPool::Create(64 << 10, 8, io::HugePages::kNever).value());
    client_pool_ = std::move(io::BufferPool::Create(64 << 10, 8, io::HugePages::kNever).value());
    TransportContext ctx{ring_.get(), {}};
    ctx.options.send_queue_depth = 64;
    ctx.options.tcp_zerocopy = GetParam();
    server_ = std::move(CreateTransport("tcp", ctx).value());
    client_ = std::move(CreateTransport("tcp", ctx).value());
    ASSERT_TRUE(server_->Register(*server_pool_).ok());
    ASSERT_TRUE(client_->Register(*client_pool_).ok());
    auto bound = server_->Listen({"127.0.0.1", 0});
    ASSERT_TRUE(bound.ok()) << bound.status().message();
    endpoint_ = *bound;
    ASSERT_NE(endpoint_.port, 0);
  }

  // Runs the loop until `pred` holds (bounded), collecting every completion of both sides.
  template <typename Pred>
  bool RunUntil(Pred pred, int max_turns = 2000) {
    for (int i = 0; i < max_turns; ++i) {
      Collect(*server_, server_events_);
      Collect(*client_, client_events_);
      if (pred()) return true;
      EXPECT_TRUE(ring_->Wait(std::chrono::milliseconds(5)).ok());
    }
    return false;
  }

  void Collect(Transport& t, std::vector<Event>& events) {
    std::array<Completion, 16> cs;
    size_t n;
    while ((n = t.Poll(cs)) > 0) {
      for (size_t i = 0; i < n; ++i) {
        events.push_back(Record(cs[i]));
        if (cs[i].data) t.Release(cs[i].conn, std::move(cs[i].data));
      }
    }
  }

  ConnId Accepted() {
    EXPECT_TRUE(RunUntil([&] { return Count(server_events_, CompletionKind::kAccepted) > 0; }));
    for (auto& e : server_events_) {
      if (e.kind == CompletionKind::kAccepted) return e.conn;
    }
    return kNoConn;
  }

  // An accepted connection that the engine admitted (Trust): it may receive Data frames.
  ConnId Admitted() {
    ConnId conn = Accepted();
    server_->Trust(conn);
    return conn;
  }

  static WorkItem DataItem(ConnId conn, uint64_t seq, const std::byte* data, uint32_t len) {
    proto::Frame f;
    f.flags = static_cast<uint16_t>(proto::AckLevel::kReceived);
    f.payload_len = len;
    f.body = proto::Data{seq, seq * 65536, len, 0};
    WorkItem item;
    item.conn = conn;
    item.tag = seq;
    item.signal = true;
    item.header = proto::Encode(f);
    item.data = data;
    return item;
  }

  // A plain socket connected to the server, for sending bytes the transport never would.
  int RawSocket() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(endpoint_.port);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    return fd;
  }

  std::string ClosedReason() {
    for (auto& e : server_events_) {
      if (e.kind == CompletionKind::kClosed) return e.status;
    }
    return "";
  }

  std::unique_ptr<io::Ring> ring_;
  std::unique_ptr<io::BufferPool> server_pool_, client_pool_;
  std::unique_ptr<Transport> server_, client_;
  Endpoint endpoint_;
  std::vector<Event> server_events_, client_events_;
};

TEST_P(TcpTransportTest, ConnectToAClosedPortNamesThePeer) {
  auto conn = client_->Connect({"127.0.0.1", 1}, std::chrono::milliseconds(500));
  ASSERT_FALSE(conn.ok());
  EXPECT_NE(conn.status().message().find("cannot connect to 127.0.0.1:1"), std::string::npos)
      << conn.status().message();
  EXPECT_EQ(conn.status().err(), ECONNREFUSED);
}

TEST_P(TcpTransportTest, UnresolvableHostIsAClearError) {
  auto conn = client_->Connect({"no-such-host.invalid", 7000}, std::chrono::milliseconds(500));
  ASSERT_FALSE(conn.ok());
  EXPECT_NE(conn.status().message().find("no-such-host.invalid"), std::string::npos);
}

TEST_P(TcpTransportTest, FramesArriveInOrderWithTheirPayloads) {
  auto conn = client_->Connect(endpoint_, std::chrono::milliseconds(1000));
  ASSERT_TRUE(conn.ok()) << conn.status().message();
  ConnId server_conn = Admitted();
  ASSERT_NE(server_conn, kNoConn);

  // 100 Data frames of varied sizes through an 8-buffer receive pool (backpressure), with
  // control frames in between.
  std::mt19937 rng(42);
  std::vector<std::vector<std::byte>> blocks;
  for (int i = 0; i < 100; ++i) {
    std::vector<std::byte> b(1 + rng() % (64 << 10));
    for (auto& x : b) x = static_cast<std::byte>(rng());
    blocks.push_back(std::move(b));
  }
  std::string text = "hello";
  for (uint64_t i = 0; i < blocks.size(); ++i) {
    auto item = DataItem(*conn, i, blocks[i].data(), static_cast<uint32_t>(blocks[i].size()));
    ASSERT_TRUE(RunUntil([&] { return client_->SendSpace(*conn) > 1; }));
    ASSERT_TRUE(client_->Post(std::span(&item, 1)).ok());
    if (i % 10 == 0) {
      proto::Frame f;
      f.body = proto::Error{42};
      f.payload_len = static_cast<uint32_t>(text.size());
      WorkItem c;
      c.conn = *conn;
      c.header = proto::Encode(f);
      c.control = std::as_bytes(std::span(text.data(), text.size()));
      ASSERT_TRUE(client_->Post(std::span(&c, 1)).ok());
    }
  }
  ASSERT_TRUE(RunUntil([&] { return Count(server_events_, CompletionKind::kRecv) == 110; }));
  ASSERT_TRUE(RunUntil([&] { return Count(client_events_, CompletionKind::kSent) == 100; }));
  uint64_t next = 0;
  for (auto& e : server_events_) {
    if (e.kind != CompletionKind::kRecv) continue;
    auto f = proto::Decode(e.header);
    ASSERT_TRUE(f.ok());
    if (f->type() == proto::FrameType::kError) {
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(e.payload.data()), e.payload.size()),
                text);
      continue;
    }
    const auto& d = std::get<proto::Data>(f->body);
    ASSERT_EQ(d.seq, next) << "frames out of order";
    EXPECT_EQ(e.payload, blocks[next]);
    ++next;
  }
  EXPECT_EQ(next, 100u);
  // kSent tags come back in order too.
  uint64_t tag = 0;
  for (auto& e : client_events_) {
    if (e.kind == CompletionKind::kSent) {
      EXPECT_EQ(e.tag, tag++);
    }
  }
  EXPECT_EQ(server_pool_->available(), server_pool_->count());
}

TEST_P(TcpTransportTest, PostRefusesWhenTheQueueIsFullOrTheConnectionGone) {
  auto conn = client_->Connect(endpoint_, std::chrono::milliseconds(1000));
  ASSERT_TRUE(conn.ok());
  Admitted();
  std::vector<std::byte> block(64 << 10);
  // Nothing is submitted to the kernel between these Posts: the queue (64) fills.
  size_t posted = 0;
  for (uint64_t i = 0; i < 100; ++i) {
    auto item = DataItem(*conn, i, block.data(), 64 << 10);
    Status s = client_->Post(std::span(&item, 1));
    if (!s.ok()) {
      EXPECT_EQ(s.code(), ErrorCode::kBusy) << s.message();
      break;
    }
    ++posted;
  }
  EXPECT_EQ(posted, 64u);
  EXPECT_EQ(client_->SendSpace(*conn), 0u);
  client_->Close(*conn);
  auto item = DataItem(*conn, 0, block.data(), 64 << 10);
  EXPECT_EQ(client_->Post(std::span(&item, 1)).code(), ErrorCode::kClosed);
  // Every signaled send completes, cancelled or not, before the close.
  ASSERT_TRUE(RunUntil([&] { return Count(client_events_, CompletionKind::kClosed) == 1; }));
  EXPECT_EQ(Count(client_events_, CompletionKind::kSent), 64u);
  EXPECT_EQ(client_events_.back().kind, CompletionKind::kClosed);
}

// A batch that does not fit, counted per connection and cumulatively (frames, control-ring
// bytes), is refused whole: nothing of it reaches any peer, and every SendSpace stays as it was.
TEST_P(TcpTransportTest, ABatchThatDoesNotFitQueuesNothing) {
  auto conn = client_->Connect(endpoint_, std::chrono::milliseconds(1000));
  ASSERT_TRUE(conn.ok());
  Admitted();
  auto other = client_->Connect(endpoint_, std::chrono::milliseconds(1000));
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(RunUntil([&] { return Count(server_events_, CompletionKind::kAccepted) == 2; }));
  const size_t space = client_->SendSpace(*conn);
  const size_t other_space = client_->SendSpace(*other);
  ASSERT_EQ(space, 64u);

  auto control = [](ConnId c, const std::string& text, uint64_t tag) {
    proto::Frame f;
    f.body = proto::Error{1};
    f.payload_len = static_cast<uint32_t>(text.size());
    WorkItem item;
    item.conn = c;
    item.tag = tag;
    item.signal = true;
    item.header = proto::Encode(f);
    item.control = std::as_bytes(std::span(text.data(), text.size()));
    return item;
  };
  std::string small = "fits";
  std::vector<std::byte> block(64 << 10);

  // One frame more than the queue holds, all to one connection (each alone would fit), after a
  // frame to another connection that fits.
  std::vector<WorkItem> frames{control(*other, small, 1000)};
  for (uint64_t i = 0; i <= space; ++i) frames.push_back(DataItem(*conn, i, block.data(), 4096));
  Status s = client_->Post(frames);
  EXPECT_EQ(s.code(), ErrorCode::kBusy) << s.message();
  EXPECT_NE(s.message().find("send queue is full"), std::string::npos) << s.message();

  // Control payloads that add up to more than the connection's control ring (128 KiB), in
  // fewer frames than its queue holds.
  std::string big(proto::kMaxControlPayload, 'x');
  std::vector<WorkItem> bytes{control(*other, small, 1001)};
  for (uint64_t i = 0; i < (128 << 10) / big.size() + 1; ++i) {
    bytes.push_back(control(*conn, big, 2000 + i));
  }
  ASSERT_LT(bytes.size(), space);
  s = client_->Post(bytes);
  EXPECT_EQ(s.code(), ErrorCode::kBusy) << s.message();
  EXPECT_NE(s.message().find("control queue is full"), std::string::npos) << s.message();

  EXPECT_EQ(client_->SendSpace(*conn), space);
  EXPECT_EQ(client_->SendSpace(*other), other_space);
  // Nothing went: one frame posted now on each connection is the first (and only) to arrive.
  const std::string last_text = "last";  // outlives the items that point into it
  WorkItem last[] = {control(*conn, last_text, 1), control(*other, last_text, 2)};
  ASSERT_TRUE(client_->Post(last).ok());
  ASSERT_TRUE(RunUntil([&] { return Count(client_events_, CompletionKind::kSent) == 2; }));
  ASSERT_TRUE(RunUntil([&] { return Count(server_events_, CompletionKind::kRecv) >= 2; }));
  for (int i = 0; i < 20; ++i) RunUntil([] { return false; }, 1);
  EXPECT_EQ(Count(server_events_, CompletionKind::kRecv), 2u);
  for (auto& e : server_events_) {
    if (e.kind != CompletionKind::kRecv) continue;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(e.payload.data()), e.payload.size()),
              "last");
  }
  uint64_t tags = 0;
  for (auto& e : client_events_) {
    if (e.kind == CompletionKind::kSent) tags += e.tag;
  }
  EXPECT_EQ(tags, 3u);  // only the last two
  EXPECT_EQ(client_->SendSpace(*conn), space);
}

TEST_P(TcpTransportTest, GarbageClosesTheConnectionWithAReason) {
  int fd = RawSocket();
  const char junk[64] = "GET / HTTP/1.1\r\nHost: example\r\n\r\n";
  ASSERT_EQ(write(fd, junk, sizeof(junk)), 64);
  ASSERT_TRUE(RunUntil([&] { return Count(server_events_, CompletionKind::kClosed) == 1; }));
  EXPECT_NE(ClosedReason().find("bad frame magic"), std::string::npos) << ClosedReason();
  close(fd);
}

TEST_P(TcpTransportTest, ATruncatedFrameIsReportedAsSuch) {
  int fd = RawSocket();
  proto::Frame f;
  f.body = proto::Bye{};
  auto raw = proto::Encode(f);
  ASSERT_EQ(write(fd, raw.data(), 20), 20);
  close(fd);
  ASSERT_TRUE(RunUntil([&] { return Count(server_events_, CompletionKind::kClosed) == 1; }));
  EXPECT_NE(ClosedReason().find("truncated frame"), std::string::npos) << ClosedReason();
}

TEST_P(TcpTransportTest, AnOversizedDataFrameIsRefused) {
  int fd = RawSocket();
  Admitted();
  proto::Frame f;
  f.flags = static_cast<uint16_t>(proto::AckLevel::kReceived);
  f.payload_len = 1 << 20;  // more than the server's 64 KiB buffers
  f.body = proto::Data{0, 0, 1 << 20, 0};
  auto raw = proto::Encode(f);
  ASSERT_EQ(write(fd, raw.data(), raw.size()), 64);
  ASSERT_TRUE(RunUntil([&] { return Count(server_events_, CompletionKind::kClosed) == 1; }));
  EXPECT_NE(ClosedReason().find("exceeds the buffer size"), std::string::npos) << ClosedReason();
  close(fd);
}

// Data frames go from the connecting side to the accepting side, once it trusts the connection:
// a stranger's Data header closes its connection before it gets a receive buffer.
TEST_P(TcpTransportTest, ADataFrameBeforeTrustClosesTheConnectionWithoutTakingABuffer) {
  auto conn = client_->Connect(endpoint_, std::chrono::milliseconds(1000));
  ASSERT_TRUE(conn.ok());
  ConnId server_conn = Accepted();  // not trusted
  ASSERT_NE(server_conn, kNoConn);
  std::vector<std::byte> block(4096);
  auto item = DataItem(*conn, 0, block.data(), 4096);
  ASSERT_TRUE(client_->Post(std::span(&item, 1)).ok());
  ASSERT_TRUE(RunUntil([&] { return Count(server_events_, CompletionKind::kClosed) == 1; }));
  EXPECT_NE(ClosedReason().find("Data frame before its session was admitted"), std::string::npos)
      << ClosedReason();
  EXPECT_EQ(Count(server_events_, CompletionKind::kRecv), 0u);
  EXPECT_EQ(server_pool_->available(), server_pool_->count());
  // A raw stranger that sends only the header of a Data frame and then waits: the same.
  int fd = RawSocket();
  auto raw = item.header;
  ASSERT_EQ(write(fd, raw.data(), raw.size()), 64);
  ASSERT_TRUE(RunUntil([&] { return Count(server_events_, CompletionKind::kClosed) == 2; }));
  EXPECT_EQ(server_pool_->available(), server_pool_->count());
  close(fd);
}

TEST_P(TcpTransportTest, ADataFrameToTheConnectingSideClosesTheConnection) {
  auto conn = client_->Connect(endpoint_, std::chrono::milliseconds(1000));
  ASSERT_TRUE(conn.ok());
  ConnId server_conn = Admitted();
  std::vector<std::byte> block(4096);
  auto item = DataItem(server_conn, 0, block.data(), 4096);
  ASSERT_TRUE(server_->Post(std::span(&item, 1)).ok());
  ASSERT_TRUE(RunUntil([&] { return Count(client_events_, CompletionKind::kClosed) == 1; }));
  const auto& closed = client_events_.back();
  ASSERT_EQ(closed.kind, CompletionKind::kClosed);
  EXPECT_NE(closed.status.find("unexpected Data frame"), std::string::npos) << closed.status;
  EXPECT_EQ(Count(client_events_, CompletionKind::kRecv), 0u);
  EXPECT_EQ(client_pool_->available(), client_pool_->count());
}

TEST_P(TcpTransportTest, APeerClosingIsReportedAfterItsLastFrames) {
  auto conn = client_->Connect(endpoint_, std::chrono::milliseconds(1000));
  ASSERT_TRUE(conn.ok());
  ConnId server_conn = Accepted();
  proto::Frame f;
  f.body = proto::Bye{};
  WorkItem item;
  item.conn = server_conn;
  item.signal = true;
  item.header = proto::Encode(f);
  ASSERT_TRUE(server_->Post(std::span(&item, 1)).ok());
  ASSERT_TRUE(RunUntil([&] { return Count(server_events_, CompletionKind::kSent) == 1; }));
  server_->Close(server_conn);
  ASSERT_TRUE(RunUntil([&] { return Count(client_events_, CompletionKind::kClosed) == 1; }));
  ASSERT_GE(client_events_.size(), 2u);
  EXPECT_EQ(client_events_[0].kind, CompletionKind::kRecv);  // the Bye, then the close
  EXPECT_NE(client_events_.back().status.find("closed the connection"), std::string::npos);
}

TEST_P(TcpTransportTest, AnErrorSentJustBeforeACloseArrivesIntact) {
  // The peer's last frame and its close can come out of one Poll: the frame's control payload
  // must stay valid until the next Poll, although the connection is gone.
  auto conn = client_->Connect(endpoint_, std::chrono::milliseconds(1000));
  ASSERT_TRUE(conn.ok());
  ConnId server_conn = Accepted();
  std::string text(900, 'e');
  proto::Frame f;
  f.body = proto::Error{5};
  f.payload_len = static_cast<uint32_t>(text.size());
  WorkItem item;
  item.conn = server_conn;
  item.signal = true;
  item.header = proto::Encode(f);
  item.control = std::as_bytes(std::span(text.data(), text.size()));
  ASSERT_TRUE(server_->Post(std::span(&item, 1)).ok());
  ASSERT_TRUE(RunUntil([&] { return Count(server_events_, CompletionKind::kSent) == 1; }));
  server_->Close(server_conn);
  // Let both the frame and the close land before the client polls at all.
  for (int i = 0; i < 20; ++i) (void)ring_->Wait(std::chrono::milliseconds(5));
  std::array<Completion, 8> cs;
  size_t n = 0;
  for (int i = 0; i < 200 && n < 2; ++i) {
    n += client_->Poll(std::span(cs).subspan(n));
    if (n < 2) (void)ring_->Wait(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(n, 2u);
  ASSERT_EQ(cs[0].kind, CompletionKind::kRecv);
  ASSERT_EQ(cs[1].kind, CompletionKind::kClosed);
  // Read the payload now, after the Poll that reported the close (ASan checks the memory).
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(cs[0].control.data()), cs[0].control.size()),
            text);
}

INSTANTIATE_TEST_SUITE_P(Tcp, TcpTransportTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "ZeroCopy" : "Copy"; });

}  // namespace
}  // namespace blkmirror::transport
