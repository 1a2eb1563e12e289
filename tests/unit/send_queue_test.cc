// SendQueue and ControlRing (transport/send_queue.h): the ring of entries by counters, control
// copies with wrap padding, batch reservation (all or nothing) and cancellation.
#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "transport/send_queue.h"

namespace blkmirror::transport {
namespace {

// A control frame (Error) carrying `text` as its payload.
WorkItem ControlItem(const std::string& text, uint64_t tag = 0) {
  proto::Frame f;
  f.body = proto::Error{7};
  f.payload_len = static_cast<uint32_t>(text.size());
  WorkItem item;
  item.conn = 1;
  item.tag = tag;
  item.signal = true;
  item.header = proto::Encode(f);
  item.control = std::as_bytes(std::span(text.data(), text.size()));
  return item;
}

// A Data frame of `len` bytes at `data` (never copied).
WorkItem DataItem(const std::byte* data, uint32_t len, uint64_t tag = 0) {
  proto::Frame f;
  f.flags = static_cast<uint16_t>(proto::AckLevel::kReceived);
  f.payload_len = len;
  f.body = proto::Data{tag, 0, len, 0};
  WorkItem item;
  item.conn = 1;
  item.tag = tag;
  item.signal = true;
  item.header = proto::Encode(f);
  item.data = data;
  return item;
}

std::string Text(const SendEntry& e) {
  return std::string(reinterpret_cast<const char*>(e.payload), e.payload_len);
}

TEST(ControlRingTest, ACopyThatWouldCrossTheEndStartsOverAndHoldsTheSkippedBytes) {
  ControlRing ring;
  ring.Allocate(100);
  std::string a(40, 'a'), b(40, 'b'), c(30, 'c');
  auto ca = ring.Append(std::as_bytes(std::span(a)));
  auto cb = ring.Append(std::as_bytes(std::span(b)));
  ASSERT_TRUE(ca && cb);
  EXPECT_EQ(ca->data, ring.data());
  EXPECT_EQ(cb->data, ring.data() + 40);
  EXPECT_EQ(ca->held, 40u);
  EXPECT_EQ(ring.used(), 80u);
  // 20 bytes left before the end, 0 at the start: 30 bytes do not fit.
  EXPECT_FALSE(ring.Append(std::as_bytes(std::span(c))));
  EXPECT_EQ(ring.used(), 80u);
  ring.Free(ca->held);  // the start is free now
  auto cc = ring.Append(std::as_bytes(std::span(c)));
  ASSERT_TRUE(cc);
  EXPECT_EQ(cc->data, ring.data());   // wrapped to the start
  EXPECT_EQ(cc->held, 20u + 30u);     // the 20 skipped bytes at the end, then its own
  EXPECT_EQ(ring.used(), 40u + 50u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(cc->data), 30), c);
  // [30, 40) is free, 10 bytes: 11 do not fit, 10 do.
  EXPECT_FALSE(ring.Place(ring.cursor(), 11));
  auto ten = ring.Place(ring.cursor(), 10);
  ASSERT_TRUE(ten);
  EXPECT_EQ(ten->pos, 30u);
  EXPECT_EQ(ten->held, 10u);
  ring.Free(cb->held);
  ring.Free(cc->held);
  EXPECT_EQ(ring.used(), 0u);
  // Empty: the whole ring, from the start.
  std::string full(100, 'f');
  auto cf = ring.Append(std::as_bytes(std::span(full)));
  ASSERT_TRUE(cf);
  EXPECT_EQ(cf->data, ring.data());
  EXPECT_EQ(ring.used(), 100u);
  EXPECT_FALSE(ring.Place(ring.cursor(), 1));
  std::string more(101, 'm');
  ring.Free(cf->held);
  EXPECT_FALSE(ring.Append(std::as_bytes(std::span(more))));
}

TEST(ControlRingTest, AttachedStorageIsWhereTheCopiesGo) {
  std::vector<std::byte> storage(64);
  ControlRing ring;
  ring.Attach(storage);
  std::string x = "hello";
  auto copy = ring.Append(std::as_bytes(std::span(x)));
  ASSERT_TRUE(copy);
  EXPECT_EQ(copy->data, storage.data());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(storage.data()), 5), x);
}

TEST(SendQueueTest, EntriesWrapAroundTheRingInOrder) {
  SendQueue q;
  q.Init(4, 256);
  EXPECT_EQ(q.capacity(), 4u);
  std::vector<std::byte> block(1000);
  std::vector<int32_t> sizes;  // header + payload of each frame pushed
  uint64_t next_pop = 0;
  for (uint64_t i = 0; i < 23; ++i) {
    std::string text = "frame " + std::to_string(i);
    SendEntry* e = i % 3 == 0 ? q.Push(DataItem(block.data(), 1000, i))
                              : q.Push(ControlItem(text, i));
    ASSERT_NE(e, nullptr) << i;
    EXPECT_EQ(e, &q.at(i));
    if (i % 3 == 0) {
      EXPECT_TRUE(e->data);
      EXPECT_EQ(e->payload, block.data());  // not copied
      EXPECT_EQ(e->ctrl_bytes, 0u);
    } else {
      EXPECT_FALSE(e->data);
      EXPECT_EQ(Text(*e), text);
      EXPECT_NE(e->payload, reinterpret_cast<const std::byte*>(text.data()));  // copied
    }
    sizes.push_back(static_cast<int32_t>(proto::kHeaderSize + e->payload_len));
    if (q.space() == 0) {
      EXPECT_EQ(q.Push(ControlItem("x")), nullptr);  // full
      // The two oldest leave.
      q.MarkDone(q.head() + 2);
      for (int k = 0; k < 2; ++k) {
        auto sent = q.PopDone();
        ASSERT_TRUE(sent);
        EXPECT_EQ(sent->tag, next_pop);
        EXPECT_EQ(sent->res, sizes[next_pop]);
        ++next_pop;
      }
      EXPECT_FALSE(q.PopDone());  // nothing else is done
    }
  }
  EXPECT_EQ(q.tail(), 23u);
  EXPECT_GT(q.head(), 2 * q.capacity());  // went round several times
  q.MarkDone(q.tail());
  while (q.PopDone()) ++next_pop;
  EXPECT_EQ(next_pop, 23u);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.control().used(), 0u);
}

TEST(SendQueueTest, ABatchFitsExactlyAtCapacityAndNotOneFrameMore) {
  SendQueue q;
  q.Init(4, 1024);
  ASSERT_NE(q.Push(ControlItem("queued")), nullptr);
  // Three frames fit on top of the one queued; a fourth in the same batch does not.
  std::vector<std::byte> block(10);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(q.Reserve(1, DataItem(block.data(), 10)).ok()) << i;
  Status over = q.Reserve(1, DataItem(block.data(), 10));
  EXPECT_EQ(over.code(), ErrorCode::kBusy);
  EXPECT_NE(over.message().find("send queue is full"), std::string::npos) << over.message();
  // Reserving queued nothing.
  EXPECT_EQ(q.size(), 1u);
  EXPECT_EQ(q.space(), 3u);
  // The next batch starts from what is queued, not from the failed batch's claims.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(q.Reserve(2, DataItem(block.data(), 10)).ok()) << i;
  for (int i = 0; i < 3; ++i) ASSERT_NE(q.Push(DataItem(block.data(), 10)), nullptr) << i;
  EXPECT_EQ(q.space(), 0u);
  EXPECT_EQ(q.Reserve(3, ControlItem("x")).code(), ErrorCode::kBusy);
}

TEST(SendQueueTest, ABatchOfControlBytesFitsExactlyTheRingAndNotOneByteMore) {
  SendQueue q;
  q.Init(16, 1000);
  std::string half(500, 'h'), one(1, '1');
  ASSERT_TRUE(q.Reserve(1, ControlItem(half)).ok());
  ASSERT_TRUE(q.Reserve(1, ControlItem(half)).ok());
  Status over = q.Reserve(1, ControlItem(one));
  EXPECT_EQ(over.code(), ErrorCode::kBusy);
  EXPECT_NE(over.message().find("control queue is full"), std::string::npos) << over.message();
  EXPECT_EQ(q.control().used(), 0u);
  EXPECT_EQ(q.size(), 0u);
  // The two halves, reserved in a new batch, are pushed: every Push succeeds.
  ASSERT_TRUE(q.Reserve(2, ControlItem(half)).ok());
  ASSERT_TRUE(q.Reserve(2, ControlItem(half)).ok());
  ASSERT_NE(q.Push(ControlItem(half)), nullptr);
  ASSERT_NE(q.Push(ControlItem(half)), nullptr);
  EXPECT_EQ(q.control().used(), 1000u);
  // Data frames take no ring bytes: they still fit.
  std::vector<std::byte> block(10);
  EXPECT_TRUE(q.Reserve(3, DataItem(block.data(), 10)).ok());
  EXPECT_EQ(q.Reserve(3, ControlItem(one)).code(), ErrorCode::kBusy);
}

TEST(SendQueueTest, ABatchReservationCountsTheWrapPadding) {
  SendQueue q;
  q.Init(16, 100);
  // Ring: [0, 40) free after the first is popped, [40, 80) held, tail at 80.
  ASSERT_NE(q.Push(ControlItem(std::string(40, 'a'))), nullptr);
  ASSERT_NE(q.Push(ControlItem(std::string(40, 'b'))), nullptr);
  q.MarkDone(1);
  ASSERT_TRUE(q.PopDone());
  // 60 bytes are free in all (20 at the end, 40 at the start), but 30 + 30 need the padding:
  // the first goes to [0, 30) skipping 20, the second finds 10 bytes.
  ASSERT_TRUE(q.Reserve(1, ControlItem(std::string(30, 'c'))).ok());
  EXPECT_EQ(q.Reserve(1, ControlItem(std::string(30, 'd'))).code(), ErrorCode::kBusy);
  // 20 + 40 fit exactly: the end, then the start.
  ASSERT_TRUE(q.Reserve(2, ControlItem(std::string(20, 'e'))).ok());
  ASSERT_TRUE(q.Reserve(2, ControlItem(std::string(40, 'f'))).ok());
  EXPECT_EQ(q.Reserve(2, ControlItem("g")).code(), ErrorCode::kBusy);
  SendEntry* e = q.Push(ControlItem(std::string(20, 'e')));
  SendEntry* f = q.Push(ControlItem(std::string(40, 'f')));
  ASSERT_TRUE(e && f);
  EXPECT_EQ(e->payload, q.control().data() + 80);
  EXPECT_EQ(f->payload, q.control().data());
  EXPECT_EQ(Text(*f), std::string(40, 'f'));
  EXPECT_EQ(q.control().used(), 100u);
}

TEST(SendQueueTest, CancelledEntriesComeOutAfterTheSentOnesWithECANCELED) {
  SendQueue q;
  q.Init(8, 256);
  std::vector<std::byte> block(100);
  ASSERT_NE(q.Push(DataItem(block.data(), 100, 1)), nullptr);
  ASSERT_NE(q.Push(ControlItem("two", 2)), nullptr);
  ASSERT_NE(q.Push(ControlItem("three", 3)), nullptr);
  q.MarkDone(1);  // the first was sent
  q.CancelQueued();
  auto first = q.PopDone();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->tag, 1u);
  EXPECT_EQ(first->res, static_cast<int32_t>(proto::kHeaderSize + 100));
  for (uint64_t tag : {2, 3}) {
    auto cancelled = q.PopDone();
    ASSERT_TRUE(cancelled);
    EXPECT_EQ(cancelled->tag, tag);
    EXPECT_EQ(cancelled->res, -ECANCELED);
    EXPECT_TRUE(cancelled->signal);
  }
  EXPECT_FALSE(q.PopDone());
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.control().used(), 0u);  // every control copy given back
  // The queue is usable again; a new entry is not cancelled.
  ASSERT_NE(q.Push(ControlItem("four", 4)), nullptr);
  q.MarkDone(q.tail());
  auto four = q.PopDone();
  ASSERT_TRUE(four);
  EXPECT_EQ(four->res, static_cast<int32_t>(proto::kHeaderSize + 4));
}

}  // namespace
}  // namespace blkmirror::transport
