// The NBD codec (proto/nbd.h): the handshake as clients drive it, every refusal of a malformed
// option, the option framing (oversized options skipped in chunks), the request decoder and
// every CheckRequest rule, and the reply encoders, byte for byte.
#include "proto/nbd.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace blkmirror::proto::nbd {
namespace {

using Wire = std::vector<std::byte>;

// ---- Helpers: wire bytes written independently of nbd.cc -------------------------------------

// Big-endian wire bytes.
class W {
 public:
  W& U8(uint8_t v) { return Be(v, 1); }
  W& U16(uint16_t v) { return Be(v, 2); }
  W& U32(uint32_t v) { return Be(v, 4); }
  W& U64(uint64_t v) { return Be(v, 8); }
  W& Str(std::string_view s) {
    for (char c : s) bytes_.push_back(static_cast<std::byte>(c));
    return *this;
  }
  W& Fill(size_t n, char c) { return Str(std::string(n, c)); }
  W& Add(const Wire& w) {
    bytes_.insert(bytes_.end(), w.begin(), w.end());
    return *this;
  }
  Wire bytes() const { return bytes_; }
  operator Wire() const { return bytes_; }  // NOLINT: implicit for brevity in tests

 private:
  W& Be(uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i) bytes_.push_back(static_cast<std::byte>(v >> (8 * i)));
    return *this;
  }
  Wire bytes_;
};

// "0003e889 045565a9" -> bytes (spaces ignored).
Wire Hex(std::string_view text) {
  Wire out;
  std::string digits;
  for (char c : text) {
    if (c != ' ') digits.push_back(c);
  }
  EXPECT_EQ(digits.size() % 2, 0u) << text;
  for (size_t i = 0; i + 1 < digits.size(); i += 2) {
    out.push_back(static_cast<std::byte>(std::stoul(digits.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// "0003e889 045565a9" -> "0003e889045565a9": expected hex, grouped by field for reading.
std::string H(std::string_view spaced) {
  std::string s;
  for (char c : spaced) {
    if (c != ' ') s.push_back(c);
  }
  return s;
}

std::string ToHex(const Wire& w) {
  static const char* kDigits = "0123456789abcdef";
  std::string s;
  for (std::byte b : w) {
    s.push_back(kDigits[static_cast<uint8_t>(b) >> 4]);
    s.push_back(kDigits[static_cast<uint8_t>(b) & 0xF]);
  }
  return s;
}

template <size_t N>
Wire ToWire(const std::array<std::byte, N>& a) {
  return Wire(a.begin(), a.end());
}

uint64_t Be(const Wire& w, size_t off, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = v << 8 | static_cast<uint8_t>(w.at(off + i));
  return v;
}

std::string Text(const Wire& w, size_t off = 0) {
  std::string s;
  for (size_t i = off; i < w.size(); ++i) s.push_back(static_cast<char>(w[i]));
  return s;
}

// One option as a client sends it.
Wire Opt(uint32_t option, const Wire& data) {
  return W().U64(0x49484156454F5054).U32(option).U32(static_cast<uint32_t>(data.size())).Add(data);
}
Wire Opt(Option option, const Wire& data = {}) { return Opt(static_cast<uint32_t>(option), data); }

// NBD_OPT_INFO / NBD_OPT_GO data.
Wire InfoData(std::string_view name, std::vector<uint16_t> infos) {
  W w;
  w.U32(static_cast<uint32_t>(name.size())).Str(name).U16(static_cast<uint16_t>(infos.size()));
  for (uint16_t i : infos) w.U16(i);
  return w;
}

// NBD_OPT_{LIST,SET}_META_CONTEXT data.
Wire MetaData(std::string_view name, std::vector<std::string> queries) {
  W w;
  w.U32(static_cast<uint32_t>(name.size())).Str(name).U32(static_cast<uint32_t>(queries.size()));
  for (const auto& q : queries) w.U32(static_cast<uint32_t>(q.size())).Str(q);
  return w;
}

struct Exchange {
  HandshakeState state = HandshakeState::kMore;
  Wire reply;  // every step's reply, in order
  std::string reason;
  std::vector<size_t> wants;  // Want() before each Feed
};

// Feeds `input` in the chunks Want() asks for until it is used up or the handshake ends.
Exchange Drive(ServerHandshake& hs, const Wire& input) {
  Exchange run;
  size_t at = 0;
  while (at < input.size()) {
    size_t want = hs.Want();
    run.wants.push_back(want);
    EXPECT_GT(want, 0u);
    EXPECT_LE(want, kMaxOptionData);
    if (want == 0 || at + want > input.size()) {
      ADD_FAILURE() << "input ends inside a chunk: " << input.size() - at << " bytes left, " << want
                    << " wanted";
      break;
    }
    HandshakeStep step = hs.Feed(std::span(input.data() + at, want));
    at += want;
    run.reply.insert(run.reply.end(), step.reply.begin(), step.reply.end());
    run.state = step.state;
    run.reason = step.reason;
    if (step.state != HandshakeState::kMore) {
      EXPECT_EQ(at, input.size()) << "input left after the handshake ended: " << step.reason;
      break;
    }
  }
  return run;
}

struct OptReply {
  uint32_t option = 0;
  uint32_t type = 0;
  Wire data;
};

// Splits a reply stream into option replies, checking magic and lengths.
std::vector<OptReply> Replies(const Wire& w) {
  std::vector<OptReply> out;
  size_t at = 0;
  while (at < w.size()) {
    if (w.size() - at < 20) {
      ADD_FAILURE() << "reply stream ends inside a header: " << ToHex(w);
      break;
    }
    EXPECT_EQ(Be(w, at, 8), 0x0003e889045565a9u) << "reply magic at " << at;
    OptReply r;
    r.option = static_cast<uint32_t>(Be(w, at + 8, 4));
    r.type = static_cast<uint32_t>(Be(w, at + 12, 4));
    auto len = static_cast<size_t>(Be(w, at + 16, 4));
    at += 20;
    if (w.size() - at < len) {
      ADD_FAILURE() << "reply length " << len << " past the end: " << ToHex(w);
      break;
    }
    r.data.assign(w.begin() + static_cast<ptrdiff_t>(at),
                  w.begin() + static_cast<ptrdiff_t>(at + len));
    at += len;
    out.push_back(std::move(r));
  }
  return out;
}

// Flags of the test export: flush, FUA, trim, write zeroes, fast zero, multi-conn.
constexpr uint16_t kExportFlags = kFlagSendFlush | kFlagSendFua | kFlagSendTrim |
                                  kFlagSendWriteZeroes | kFlagSendFastZero | kFlagCanMultiConn;
static_assert(kExportFlags == 0x096C);
constexpr uint16_t kServedPlain = 0x096D;       // + HAS_FLAGS
constexpr uint16_t kServedStructured = 0x09ED;  // + HAS_FLAGS + SEND_DF
constexpr uint64_t kSize = 1ull << 30;

ExportInfo TestExport() {
  ExportInfo e;
  e.name = "vol0";
  e.description = "test volume";
  e.size = kSize;
  e.transmission_flags = kExportFlags;
  e.min_block = 512;
  e.preferred_block = 4096;
  e.max_payload = 32u << 20;
  return e;
}

// A handshake past the client flags.
ServerHandshake Started(uint32_t client_flags = kClientFixedNewstyle | kClientNoZeroes,
                        ExportInfo e = TestExport()) {
  ServerHandshake hs(std::move(e));
  Exchange run = Drive(hs, W().U32(client_flags));
  EXPECT_EQ(run.state, HandshakeState::kMore) << run.reason;
  EXPECT_TRUE(run.reply.empty());
  return hs;
}

// Sends one option, expects haggling to go on and a single reply of `type`; returns its data.
Wire ExpectOneReply(ServerHandshake& hs, const Wire& option, uint32_t type) {
  Exchange run = Drive(hs, option);
  EXPECT_EQ(run.state, HandshakeState::kMore) << run.reason;
  auto replies = Replies(run.reply);
  EXPECT_EQ(replies.size(), 1u) << ToHex(run.reply);
  if (replies.size() != 1) return {};
  EXPECT_EQ(replies[0].option, static_cast<uint32_t>(Be(option, 8, 4)));
  EXPECT_EQ(replies[0].type, type) << Text(replies[0].data);
  EXPECT_EQ(hs.Want(), kOptionHeaderSize);
  return replies[0].data;
}

// ---- Greeting and client flags ----------------------------------------------------------------

TEST(NbdHandshake, GreetingBytes) {
  ServerHandshake hs(TestExport());
  EXPECT_EQ(ToHex(ToWire(hs.Greeting())), H("4e42444d41474943 49484156454f5054 0003"));
  EXPECT_EQ(hs.Want(), 4u);
}

TEST(NbdHandshake, ClientFlagsAccepted) {
  for (uint32_t flags : {0u, 1u, 2u, 3u}) {
    ServerHandshake hs(TestExport());
    Exchange run = Drive(hs, W().U32(flags));
    EXPECT_EQ(run.state, HandshakeState::kMore) << flags;
    EXPECT_TRUE(run.reply.empty());
    EXPECT_EQ(hs.Want(), kOptionHeaderSize);
  }
}

TEST(NbdHandshake, UnknownClientFlagsClose) {
  for (uint32_t flags : {4u, 7u, 0x80000000u, 0xFFFFFFFFu}) {
    ServerHandshake hs(TestExport());
    Exchange run = Drive(hs, W().U32(flags));
    EXPECT_EQ(run.state, HandshakeState::kClose) << flags;
    EXPECT_TRUE(run.reply.empty());
    EXPECT_NE(run.reason.find("unknown bits"), std::string::npos) << run.reason;
    EXPECT_EQ(hs.Want(), 0u);
  }
}

TEST(NbdHandshake, BadOptionMagicCloses) {
  ServerHandshake hs = Started();
  // NBDMAGIC where IHAVEOPT belongs.
  Exchange run = Drive(hs, W().U64(0x4e42444d41474943).U32(7).U32(0));
  EXPECT_EQ(run.state, HandshakeState::kClose);
  EXPECT_TRUE(run.reply.empty());
  EXPECT_NE(run.reason.find("0x4e42444d41474943"), std::string::npos) << run.reason;
  EXPECT_EQ(hs.Want(), 0u);
}

TEST(NbdHandshake, FeedAfterTheEndOrOfTheWrongSizeCloses) {
  ServerHandshake hs = Started();
  ASSERT_EQ(Drive(hs, Opt(Option::kAbort)).state, HandshakeState::kClose);
  Wire more = Opt(Option::kList);
  HandshakeStep step = hs.Feed(std::span(more.data(), kOptionHeaderSize));
  EXPECT_EQ(step.state, HandshakeState::kClose);
  EXPECT_TRUE(step.reply.empty());
  EXPECT_FALSE(step.reason.empty());

  ServerHandshake other(TestExport());
  Wire three = W().U16(0).U8(3);
  step = other.Feed(three);
  EXPECT_EQ(step.state, HandshakeState::kClose);
  EXPECT_NE(step.reason.find("fed 3 bytes where 4"), std::string::npos) << step.reason;
  EXPECT_EQ(other.Want(), 0u);
}

// ---- The GO handshake, as qemu and libnbd drive it --------------------------------------------

TEST(NbdHandshake, QemuGoHandshakeByteForByte) {
  ServerHandshake hs(TestExport());
  EXPECT_EQ(ToHex(ToWire(hs.Greeting())), H("4e42444d4147494349484156454f50540003"));
  Exchange flags = Drive(hs, Hex("00000003"));
  ASSERT_EQ(flags.state, HandshakeState::kMore);
  EXPECT_TRUE(flags.reply.empty());

  // Newer qemu asks for extended headers first, and falls back on NBD_REP_ERR_UNSUP.
  Wire ext = ExpectOneReply(hs, Opt(11, {}), kRepErrUnsup);
  EXPECT_FALSE(ext.empty());

  Exchange sr = Drive(hs, Hex("49484156454f5054 00000008 00000000"));
  ASSERT_EQ(sr.state, HandshakeState::kMore);
  EXPECT_EQ(ToHex(sr.reply), H("0003e889045565a9 00000008 00000001 00000000"));

  Exchange meta = Drive(hs, Hex("49484156454f5054 0000000a 0000001b"
                                "00000000 00000001 0000000f 626173653a616c6c6f636174696f6e"));
  ASSERT_EQ(meta.state, HandshakeState::kMore);
  EXPECT_EQ(ToHex(meta.reply), H("0003e889045565a9 0000000a 00000004 00000013"
                                 "00000001 626173653a616c6c6f636174696f6e"
                                 "0003e889045565a9 0000000a 00000001 00000000"));

  // GO, default export, NBD_INFO_BLOCK_SIZE requested.
  Exchange go = Drive(hs, Hex("49484156454f5054 00000007 00000008 00000000 0001 0003"));
  ASSERT_EQ(go.state, HandshakeState::kTransmission) << go.reason;
  // NBD_REP_INFO NBD_INFO_EXPORT (1 GiB, flags 0x09ed), NBD_REP_INFO NBD_INFO_BLOCK_SIZE (512,
  // 4096, 32 MiB), NBD_REP_ACK.
  EXPECT_EQ(ToHex(go.reply),
            H("0003e889045565a9 00000007 00000003 0000000c 0000 0000000040000000 09ed"
              "0003e889045565a9 00000007 00000003 0000000e 0003 00000200 00001000 02000000"
              "0003e889045565a9 00000007 00000001 00000000"));
  EXPECT_EQ(hs.Want(), 0u);
  EXPECT_TRUE(hs.negotiated().structured_replies);
  EXPECT_TRUE(hs.negotiated().base_allocation);
  EXPECT_EQ(hs.negotiated().transmission_flags, kServedStructured);
}

TEST(NbdHandshake, LibnbdGoWithNameAndDescription) {
  ServerHandshake hs = Started();
  ExpectOneReply(hs, Opt(Option::kStructuredReply), kRepAck);
  Exchange go =
      Drive(hs, Opt(Option::kGo, InfoData("vol0", {kInfoName, kInfoDescription, kInfoBlockSize})));
  ASSERT_EQ(go.state, HandshakeState::kTransmission) << go.reason;
  auto r = Replies(go.reply);
  ASSERT_EQ(r.size(), 5u);
  for (const auto& x : r) EXPECT_EQ(x.option, 7u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(r[i].type, kRepInfo);
  EXPECT_EQ(ToHex(r[0].data), H("0000 0000000040000000 09ed"));
  EXPECT_EQ(ToHex(r[1].data), H("0003 00000200 00001000 02000000"));
  EXPECT_EQ(ToHex(r[2].data), "0001" + ToHex(W().Str("vol0")));
  EXPECT_EQ(ToHex(r[3].data), "0002" + ToHex(W().Str("test volume")));
  EXPECT_EQ(r[4].type, kRepAck);
  EXPECT_TRUE(r[4].data.empty());
  EXPECT_FALSE(hs.negotiated().base_allocation);
}

TEST(NbdHandshake, GoWithoutStructuredRepliesClearsSendDf) {
  ExportInfo e = TestExport();
  e.transmission_flags |= kFlagSendDf;
  ServerHandshake hs = Started(kClientFixedNewstyle | kClientNoZeroes, e);
  Exchange go = Drive(hs, Opt(Option::kGo, InfoData("", {})));
  ASSERT_EQ(go.state, HandshakeState::kTransmission);
  auto r = Replies(go.reply);
  ASSERT_EQ(r.size(), 3u);  // export, block size, ACK
  EXPECT_EQ(Be(r[0].data, 10, 2), kServedPlain);
  EXPECT_EQ(Be(r[1].data, 0, 2), kInfoBlockSize);
  EXPECT_EQ(r[2].type, kRepAck);
  EXPECT_EQ(hs.negotiated().transmission_flags, kServedPlain);
  EXPECT_FALSE(hs.negotiated().structured_replies);
}

TEST(NbdHandshake, FastZeroIsServedOnlyWithWriteZeroes) {
  ExportInfo e = TestExport();
  e.transmission_flags = kFlagSendFastZero | kFlagSendFlush;
  ServerHandshake hs = Started(kClientFixedNewstyle | kClientNoZeroes, e);
  Exchange run = Drive(hs, Opt(Option::kExportName));
  ASSERT_EQ(run.state, HandshakeState::kTransmission);
  EXPECT_EQ(hs.negotiated().transmission_flags, kFlagHasFlags | kFlagSendFlush);
  EXPECT_EQ(Be(run.reply, 8, 2), kFlagHasFlags | kFlagSendFlush);
}

TEST(NbdHandshake, InfoThenGo) {
  ServerHandshake hs = Started();
  Exchange info = Drive(hs, Opt(Option::kInfo, InfoData("vol0", {kInfoName})));
  ASSERT_EQ(info.state, HandshakeState::kMore);
  auto r = Replies(info.reply);
  ASSERT_EQ(r.size(), 4u);  // export, block size, name, ACK
  EXPECT_EQ(r[0].option, 6u);
  EXPECT_EQ(ToHex(r[0].data), H("0000 0000000040000000 096d"));
  EXPECT_EQ(Be(r[1].data, 0, 2), kInfoBlockSize);
  EXPECT_EQ(Text(r[2].data, 2), "vol0");
  EXPECT_EQ(r[3].type, kRepAck);
  EXPECT_EQ(hs.Want(), kOptionHeaderSize);
  EXPECT_EQ(hs.negotiated().transmission_flags, 0);  // not in transmission yet

  Exchange go = Drive(hs, Opt(Option::kGo, InfoData("vol0", {kInfoName})));
  ASSERT_EQ(go.state, HandshakeState::kTransmission);
  auto g = Replies(go.reply);
  ASSERT_EQ(g.size(), 4u);
  EXPECT_EQ(g[0].option, 7u);
  EXPECT_EQ(g[0].data, r[0].data);  // the same information, as the document requires
  EXPECT_EQ(hs.negotiated().transmission_flags, kServedPlain);
}

TEST(NbdHandshake, DescriptionRequestedButEmptyIsNotSent) {
  ExportInfo e = TestExport();
  e.description.clear();
  ServerHandshake hs = Started(kClientFixedNewstyle, e);
  Exchange info = Drive(hs, Opt(Option::kInfo, InfoData("", {kInfoDescription, 0x7777})));
  auto r = Replies(info.reply);
  ASSERT_EQ(r.size(), 3u);  // export, block size, ACK: the unknown request is ignored
  EXPECT_EQ(Be(r[0].data, 0, 2), kInfoExport);
  EXPECT_EQ(Be(r[1].data, 0, 2), kInfoBlockSize);
  EXPECT_EQ(r[2].type, kRepAck);
}

// ---- EXPORT_NAME ------------------------------------------------------------------------------

TEST(NbdHandshake, ExportNameWithNoZeroes) {
  ServerHandshake hs = Started(kClientFixedNewstyle | kClientNoZeroes);
  Exchange run = Drive(hs, Opt(Option::kExportName, W().Str("vol0")));
  ASSERT_EQ(run.state, HandshakeState::kTransmission) << run.reason;
  EXPECT_EQ(ToHex(run.reply), H("0000000040000000 096d"));
  EXPECT_EQ(hs.negotiated().transmission_flags, kServedPlain);
  EXPECT_EQ(hs.Want(), 0u);
}

TEST(NbdHandshake, ExportNameWithZeroes) {
  ServerHandshake hs = Started(kClientFixedNewstyle);
  Exchange run = Drive(hs, Opt(Option::kExportName, W().Str("vol0")));
  ASSERT_EQ(run.state, HandshakeState::kTransmission) << run.reason;
  ASSERT_EQ(run.reply.size(), 8u + 2u + 124u);
  EXPECT_EQ(ToHex(Wire(run.reply.begin(), run.reply.begin() + 10)), H("0000000040000000 096d"));
  for (size_t i = 10; i < run.reply.size(); ++i) EXPECT_EQ(run.reply[i], std::byte{0}) << i;
}

TEST(NbdHandshake, ExportNameDefaultFromAnOldClientAfterStructuredReplies) {
  // A client without FIXED_NEWSTYLE is still served; the empty name is the default export.
  ServerHandshake hs = Started(0);
  ExpectOneReply(hs, Opt(Option::kStructuredReply), kRepAck);
  Exchange run = Drive(hs, Opt(Option::kExportName));
  ASSERT_EQ(run.state, HandshakeState::kTransmission);
  EXPECT_EQ(run.reply.size(), 134u);
  EXPECT_EQ(Be(run.reply, 8, 2), kServedStructured);
  EXPECT_TRUE(hs.negotiated().structured_replies);
}

TEST(NbdHandshake, ExportNameUnknownCloses) {
  ServerHandshake hs = Started();
  Exchange run = Drive(hs, Opt(Option::kExportName, W().Str("other\x01")));
  EXPECT_EQ(run.state, HandshakeState::kClose);
  EXPECT_TRUE(run.reply.empty());
  EXPECT_NE(run.reason.find("'other\\x01'"), std::string::npos) << run.reason;
  EXPECT_EQ(hs.Want(), 0u);
}

TEST(NbdHandshake, ExportNameOversizedClosesWithoutReadingIt) {
  ServerHandshake hs = Started();
  Wire header = W().U64(kOptsMagic).U32(1).U32(kMaxOptionData + 1);
  Exchange run = Drive(hs, header);
  EXPECT_EQ(run.state, HandshakeState::kClose);
  EXPECT_TRUE(run.reply.empty());
  EXPECT_FALSE(run.reason.empty());
}

// ---- LIST, ABORT, STARTTLS, unknown options ---------------------------------------------------

TEST(NbdHandshake, List) {
  ServerHandshake hs = Started();
  Exchange run = Drive(hs, Opt(Option::kList));
  ASSERT_EQ(run.state, HandshakeState::kMore);
  EXPECT_EQ(ToHex(run.reply), H("0003e889045565a9 00000003 00000002 00000008"
                                "00000004 766f6c30"
                                "0003e889045565a9 00000003 00000001 00000000"));
}

TEST(NbdHandshake, ListWithDataIsInvalidAndHagglingGoesOn) {
  ServerHandshake hs = Started();
  Wire msg = ExpectOneReply(hs, Opt(Option::kList, W().U8(0)), kRepErrInvalid);
  EXPECT_NE(Text(msg).find("takes no data"), std::string::npos) << Text(msg);
  Exchange run = Drive(hs, Opt(Option::kList));
  EXPECT_EQ(Replies(run.reply).size(), 2u);
}

TEST(NbdHandshake, Abort) {
  ServerHandshake hs = Started();
  Exchange run = Drive(hs, Opt(Option::kAbort));
  EXPECT_EQ(run.state, HandshakeState::kClose);
  EXPECT_EQ(ToHex(run.reply), H("0003e889045565a9 00000002 00000001 00000000"));
  EXPECT_NE(run.reason.find("NBD_OPT_ABORT"), std::string::npos) << run.reason;
  EXPECT_EQ(hs.Want(), 0u);
}

TEST(NbdHandshake, AbortWithDataStillAborts) {
  // The document: the server SHOULD ignore data sent with NBD_OPT_ABORT.
  ServerHandshake hs = Started();
  Exchange run = Drive(hs, Opt(Option::kAbort, W().Str("bye")));
  EXPECT_EQ(run.state, HandshakeState::kClose);
  EXPECT_EQ(ToHex(run.reply), H("0003e889045565a9 00000002 00000001 00000000"));

  ServerHandshake big = Started();
  Exchange huge = Drive(big, W().U64(kOptsMagic).U32(2).U32(0xFFFFFFFF));  // data never read
  EXPECT_EQ(huge.state, HandshakeState::kClose);
  EXPECT_EQ(ToHex(huge.reply), H("0003e889045565a9 00000002 00000001 00000000"));
}

TEST(NbdHandshake, StartTlsIsRefusedByPolicy) {
  ServerHandshake hs = Started();
  Wire msg = ExpectOneReply(hs, Opt(Option::kStartTls), kRepErrPolicy);
  EXPECT_NE(Text(msg).find("TLS"), std::string::npos) << Text(msg);
  // Haggling goes on without TLS.
  EXPECT_EQ(Drive(hs, Opt(Option::kGo, InfoData("", {}))).state, HandshakeState::kTransmission);
}

TEST(NbdHandshake, UnknownOptionsAreUnsupported) {
  ServerHandshake hs = Started();
  for (uint32_t option : {0u, 4u, 11u, 12u, 0x7FFFFFFFu, 0xFFFFFFFFu}) {
    SCOPED_TRACE(option);
    Wire msg = ExpectOneReply(hs, Opt(option, W().Str("data")), kRepErrUnsup);
    EXPECT_NE(Text(msg).find("not supported"), std::string::npos) << Text(msg);
  }
  // Data of exactly kMaxOptionData is read in one piece, not skipped.
  Wire full = Opt(99, W().Fill(kMaxOptionData, 'x'));
  Exchange run = Drive(hs, full);
  EXPECT_EQ(run.wants, (std::vector<size_t>{kOptionHeaderSize, kMaxOptionData}));
  ASSERT_EQ(Replies(run.reply).size(), 1u);
  EXPECT_EQ(Replies(run.reply)[0].type, kRepErrUnsup);
}

// ---- Oversized options --------------------------------------------------------------------------

TEST(NbdHandshake, OversizedOptionIsSkippedInChunksThenHagglingGoesOn) {
  ServerHandshake hs = Started();
  const uint32_t len = 2 * kMaxOptionData + 5;
  Exchange run = Drive(hs, Opt(Option::kList, W().Fill(len, 'z')));
  EXPECT_EQ(run.state, HandshakeState::kMore);
  EXPECT_EQ(run.wants, (std::vector<size_t>{kOptionHeaderSize, kMaxOptionData, kMaxOptionData, 5}));
  auto r = Replies(run.reply);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].option, 3u);
  EXPECT_EQ(r[0].type, kRepErrTooBig);
  EXPECT_NE(Text(r[0].data).find(std::to_string(len)), std::string::npos) << Text(r[0].data);

  // One byte over the limit: two chunks.
  Exchange one = Drive(hs, Opt(Option::kStructuredReply, W().Fill(kMaxOptionData + 1, 0)));
  EXPECT_EQ(one.wants, (std::vector<size_t>{kOptionHeaderSize, kMaxOptionData, 1}));
  EXPECT_EQ(Replies(one.reply).at(0).type, kRepErrTooBig);
  EXPECT_FALSE(hs.negotiated().structured_replies);

  Exchange list = Drive(hs, Opt(Option::kList));
  auto l = Replies(list.reply);
  ASSERT_EQ(l.size(), 2u);
  EXPECT_EQ(l[0].type, kRepServer);
  EXPECT_EQ(l[1].type, kRepAck);
}

TEST(NbdHandshake, SkippingRepliesOnlyAfterTheLastChunk) {
  ServerHandshake hs = Started();
  Wire header = W().U64(kOptsMagic).U32(6).U32(3 * kMaxOptionData);
  ASSERT_EQ(hs.Feed(header).state, HandshakeState::kMore);
  Wire chunk(kMaxOptionData);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(hs.Want(), kMaxOptionData);
    HandshakeStep step = hs.Feed(chunk);
    EXPECT_EQ(step.state, HandshakeState::kMore);
    EXPECT_EQ(step.reply.empty(), i < 2) << i;
  }
  EXPECT_EQ(hs.Want(), kOptionHeaderSize);
}

// ---- Malformed INFO / GO ------------------------------------------------------------------------

struct MalformedCase {
  const char* what;
  Wire data;
  uint32_t reply;
};

std::vector<MalformedCase> MalformedInfo() {
  return {
      {"no data", {}, kRepErrInvalid},
      {"3 bytes", W().U16(0).U8(0), kRepErrInvalid},
      {"name length past the data", W().U32(10).Str("vol0").U16(0), kRepErrInvalid},
      {"no request count", W().U32(4).Str("vol0"), kRepErrInvalid},
      {"half a request count", W().U32(4).Str("vol0").U8(0), kRepErrInvalid},
      {"count 2, one request", W().U32(4).Str("vol0").U16(2).U16(3), kRepErrInvalid},
      {"count 1, odd byte after", W().U32(4).Str("vol0").U16(1).U16(3).U8(0), kRepErrInvalid},
      {"count 0, a request after", W().U32(0).U16(0).U16(3), kRepErrInvalid},
      {"name longer than 4096", W().U32(4097).Fill(4097, 'a').U16(0), kRepErrInvalid},
      {"name length 0xffffffff", W().U32(0xFFFFFFFF).U16(0), kRepErrInvalid},
      {"unknown export", W().U32(5).Str("other").U16(1).U16(3), kRepErrUnknown},
      {"name differs by case", W().U32(4).Str("VOL0").U16(0), kRepErrUnknown},
  };
}

TEST(NbdHandshake, MalformedInfoAndGo) {
  for (Option option : {Option::kInfo, Option::kGo}) {
    ServerHandshake hs = Started();
    for (const auto& c : MalformedInfo()) {
      SCOPED_TRACE(c.what);
      Wire msg = ExpectOneReply(hs, Opt(option, c.data), c.reply);
      EXPECT_FALSE(msg.empty());
    }
    EXPECT_EQ(hs.negotiated().transmission_flags, 0);
  }
}

TEST(NbdHandshake, InfoNameTooLongSaysSo) {
  ServerHandshake hs = Started();
  Wire msg =
      ExpectOneReply(hs, Opt(Option::kGo, W().U32(4097).Fill(4097, 'a').U16(0)), kRepErrInvalid);
  EXPECT_NE(Text(msg).find("4097"), std::string::npos) << Text(msg);
  EXPECT_NE(Text(msg).find("4096"), std::string::npos) << Text(msg);
}

// ---- META_CONTEXT
// ---------------------------------------------------------------------------------

TEST(NbdHandshake, MetaContextBeforeStructuredRepliesIsInvalid) {
  for (Option option : {Option::kListMetaContext, Option::kSetMetaContext}) {
    ServerHandshake hs = Started();
    Wire msg = ExpectOneReply(hs, Opt(option, MetaData("", {"base:allocation"})), kRepErrInvalid);
    EXPECT_NE(Text(msg).find("NBD_OPT_STRUCTURED_REPLY"), std::string::npos) << Text(msg);
    EXPECT_FALSE(hs.negotiated().base_allocation);
  }
}

TEST(NbdHandshake, MalformedMetaContext) {
  const std::vector<MalformedCase> cases = {
      {"no data", {}, kRepErrInvalid},
      {"no query count", W().U32(0), kRepErrInvalid},
      {"name length past the data", W().U32(9).Str("vol0").U32(0), kRepErrInvalid},
      {"count 2, one query", W().U32(0).U32(2).U32(15).Str("base:allocation"), kRepErrInvalid},
      {"query length past the data", W().U32(0).U32(1).U32(16).Str("base:allocation"),
       kRepErrInvalid},
      {"half a query length", W().U32(0).U32(1).U16(0), kRepErrInvalid},
      {"odd byte after the queries", W().Add(MetaData("", {"base:allocation"})).U8(0),
       kRepErrInvalid},
      {"name longer than 4096", W().U32(4097).Fill(4097, 'a').U32(0), kRepErrInvalid},
      {"query longer than 4096", W().U32(0).U32(1).U32(4097).Fill(4097, 'b'), kRepErrInvalid},
      {"count 0xffffffff", W().U32(0).U32(0xFFFFFFFF).U32(0), kRepErrInvalid},
      {"unknown export", MetaData("other", {"base:allocation"}), kRepErrUnknown},
  };
  for (Option option : {Option::kListMetaContext, Option::kSetMetaContext}) {
    ServerHandshake hs = Started();
    ExpectOneReply(hs, Opt(Option::kStructuredReply), kRepAck);
    for (const auto& c : cases) {
      SCOPED_TRACE(c.what);
      Wire msg = ExpectOneReply(hs, Opt(option, c.data), c.reply);
      EXPECT_FALSE(msg.empty());
    }
  }
}

TEST(NbdHandshake, ListMetaContext) {
  struct Case {
    std::vector<std::string> queries;
    bool listed;
  };
  const std::vector<Case> cases = {
      {{}, true},
      {{"base:allocation"}, true},
      {{"base:"}, true},
      {{"base:allocation", "base:"}, true},  // listed once
      {{"base:other"}, false},
      {{"qemu:dirty-bitmap:b0"}, false},
      {{"base:allocation2"}, false},
  };
  ServerHandshake hs = Started();
  ExpectOneReply(hs, Opt(Option::kStructuredReply), kRepAck);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.queries.empty() ? "(no queries)" : c.queries[0]);
    for (std::string_view name : {"", "vol0"}) {
      Exchange run = Drive(hs, Opt(Option::kListMetaContext, MetaData(name, c.queries)));
      ASSERT_EQ(run.state, HandshakeState::kMore);
      if (c.listed) {
        EXPECT_EQ(ToHex(run.reply), H("0003e889045565a9 00000009 00000004 00000013"
                                      "00000000 626173653a616c6c6f636174696f6e"
                                      "0003e889045565a9 00000009 00000001 00000000"));
      } else {
        EXPECT_EQ(ToHex(run.reply), H("0003e889045565a9 00000009 00000001 00000000"));
      }
    }
  }
  EXPECT_FALSE(hs.negotiated().base_allocation);  // listing selects nothing
}

TEST(NbdHandshake, SetMetaContext) {
  struct Case {
    std::vector<std::string> queries;
    bool selected;
  };
  const std::vector<Case> cases = {
      {{"base:allocation"}, true},
      {{}, false},
      {{"base:"}, false},  // ignored in SET
      {{"base:allocation", "base:allocation"}, true},
      {{"qemu:dirty-bitmap:b0", "base:allocation"}, true},
      {{"qemu:dirty-bitmap:b0"}, false},
  };
  ServerHandshake hs = Started();
  ExpectOneReply(hs, Opt(Option::kStructuredReply), kRepAck);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.queries.empty() ? "(no queries)" : c.queries[0]);
    Exchange run = Drive(hs, Opt(Option::kSetMetaContext, MetaData("vol0", c.queries)));
    ASSERT_EQ(run.state, HandshakeState::kMore);
    auto r = Replies(run.reply);
    ASSERT_EQ(r.size(), c.selected ? 2u : 1u);
    if (c.selected) {
      EXPECT_EQ(r[0].type, kRepMetaContext);
      EXPECT_EQ(ToHex(r[0].data), H("00000001 626173653a616c6c6f636174696f6e"));
    }
    EXPECT_EQ(r.back().type, kRepAck);
    EXPECT_EQ(hs.negotiated().base_allocation, c.selected);
  }
}

TEST(NbdHandshake, FailedSetMetaContextClearsTheSelection) {
  ServerHandshake hs = Started();
  ExpectOneReply(hs, Opt(Option::kStructuredReply), kRepAck);
  ASSERT_EQ(
      Replies(Drive(hs, Opt(Option::kSetMetaContext, MetaData("", {"base:allocation"}))).reply)
          .size(),
      2u);
  ASSERT_TRUE(hs.negotiated().base_allocation);
  ExpectOneReply(hs, Opt(Option::kSetMetaContext, MetaData("other", {"base:allocation"})),
                 kRepErrUnknown);
  EXPECT_FALSE(hs.negotiated().base_allocation);
  ASSERT_EQ(Drive(hs, Opt(Option::kGo, InfoData("", {}))).state, HandshakeState::kTransmission);
  EXPECT_FALSE(hs.negotiated().base_allocation);
}

TEST(NbdHandshake, StructuredReplyWithDataIsInvalid) {
  ServerHandshake hs = Started();
  ExpectOneReply(hs, Opt(Option::kStructuredReply, W().U8(1)), kRepErrInvalid);
  EXPECT_FALSE(hs.negotiated().structured_replies);
  ExpectOneReply(hs, Opt(Option::kSetMetaContext, MetaData("", {"base:allocation"})),
                 kRepErrInvalid);
  ExpectOneReply(hs, Opt(Option::kStructuredReply), kRepAck);
  ExpectOneReply(hs, Opt(Option::kStructuredReply), kRepAck);  // again: still fine
  EXPECT_TRUE(hs.negotiated().structured_replies);
}

// ---- Requests
// -------------------------------------------------------------------------------------

Result<Request> Decode(const Wire& w) {
  return DecodeRequest(std::span<const std::byte, kRequestSize>(w.data(), kRequestSize));
}

TEST(NbdRequest, DecodeRoundTrip) {
  Wire raw = Hex("25609513 0011 0006 0102030405060708 0000001234567800 00ab0000");
  ASSERT_EQ(raw.size(), kRequestSize);
  auto r = Decode(raw);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->flags, 0x0011);
  EXPECT_EQ(r->type, 6);
  EXPECT_EQ(r->cookie, 0x0102030405060708u);
  EXPECT_EQ(r->offset, 0x1234567800u);
  EXPECT_EQ(r->length, 0x00ab0000u);
}

TEST(NbdRequest, DecodeBadMagic) {
  for (const char* magic : {"25609514", "12560953", "00000000", "13956025"}) {
    Wire raw = Hex(std::string(magic) + "0000 0000 0000000000000001 0000000000000000 00000200");
    auto r = Decode(raw);
    ASSERT_FALSE(r.ok()) << magic;
    EXPECT_EQ(r.status().code(), ErrorCode::kProtocol);
    EXPECT_NE(r.status().message().find(std::string("0x") + magic), std::string::npos)
        << r.status().message();
  }
}

constexpr uint16_t kRead = 0, kWrite = 1, kDisc = 2, kFlush = 3, kTrim = 4, kCache = 5,
                   kWriteZeroes = 6, kBlockStatus = 7;
constexpr uint16_t kAllFlags =
    kFlagSendFlush | kFlagSendFua | kFlagSendTrim | kFlagSendWriteZeroes | kFlagSendFastZero;
constexpr uint32_t kMaxPayload = 32u << 20;

struct CheckCase {
  const char* what;
  uint16_t type;
  uint16_t flags;
  uint64_t offset;
  uint32_t length;
  uint32_t error;
  bool fatal = false;
  uint16_t export_flags = kAllFlags;
  bool structured = true;
  bool base_allocation = true;
};

TEST(NbdRequest, CheckRequestRules) {
  const uint16_t ro = kAllFlags | kFlagReadOnly;
  const CheckCase cases[] = {
      // Served.
      {"read", kRead, 0, 0, 4096, 0},
      {"read the last block", kRead, 0, kSize - 512, 512, 0},
      {"read max payload", kRead, 0, 0, kMaxPayload, 0},
      {"read DF", kRead, kCmdFlagDf, 0, 4096, 0},
      {"read FUA (valid on every command)", kRead, kCmdFlagFua, 0, 4096, 0},
      {"read on a read-only export", kRead, 0, 0, 4096, 0, false, ro},
      {"write", kWrite, 0, 512, 1024, 0},
      {"write FUA", kWrite, kCmdFlagFua, 0, 4096, 0},
      {"write max payload", kWrite, 0, 0, kMaxPayload, 0},
      {"write up to the end", kWrite, 0, kSize - 4096, 4096, 0},
      {"disc", kDisc, 0, 0, 0, 0},
      {"flush", kFlush, 0, 0, 0, 0},
      {"flush FUA", kFlush, kCmdFlagFua, 0, 0, 0},
      {"trim", kTrim, 0, 0, 1 << 20, 0},
      {"trim FUA", kTrim, kCmdFlagFua, 0, 1 << 20, 0},
      {"cache", kCache, 0, 4096, 4096, 0},
      {"write zeroes, the whole export", kWriteZeroes, 0, 0, 1u << 30, 0},
      {"write zeroes all flags", kWriteZeroes, kCmdFlagFua | kCmdFlagNoHole | kCmdFlagFastZero, 0,
       4096, 0},
      {"block status, the whole export", kBlockStatus, 0, 0, 1u << 30, 0},
      {"block status REQ_ONE", kBlockStatus, kCmdFlagReqOne, 0, 4096, 0},
      // Unknown commands and flags.
      {"command 8", 8, 0, 0, 4096, kEinval},
      {"command 0xffff", 0xFFFF, 0, 0, 4096, kEinval},
      {"flag bit 5", kRead, 1 << 5, 0, 4096, kEinval},
      {"flag bit 15", kWrite, 1 << 15, 0, 4096, kEinval},
      {"FUA not offered", kWrite, kCmdFlagFua, 0, 4096, kEinval, false, kAllFlags & ~kFlagSendFua},
      {"NO_HOLE on write", kWrite, kCmdFlagNoHole, 0, 4096, kEinval},
      {"NO_HOLE on read", kRead, kCmdFlagNoHole, 0, 4096, kEinval},
      {"FAST_ZERO on write", kWrite, kCmdFlagFastZero, 0, 4096, kEinval},
      {"FAST_ZERO not offered", kWriteZeroes, kCmdFlagFastZero, 0, 4096, kEinval, false,
       kAllFlags & ~kFlagSendFastZero},
      {"DF on write", kWrite, kCmdFlagDf, 0, 4096, kEinval},
      {"DF on block status", kBlockStatus, kCmdFlagDf, 0, 4096, kEinval},
      {"DF without structured replies", kRead, kCmdFlagDf, 0, 4096, kEinval, false, kAllFlags,
       false, false},
      {"REQ_ONE on read", kRead, kCmdFlagReqOne, 0, 4096, kEinval},
      // Commands the export does not offer.
      {"flush not offered", kFlush, 0, 0, 0, kEinval, false, kAllFlags & ~kFlagSendFlush},
      {"trim not offered", kTrim, 0, 0, 4096, kEinval, false, kAllFlags & ~kFlagSendTrim},
      {"write zeroes not offered", kWriteZeroes, 0, 0, 4096, kEinval, false,
       kAllFlags & ~kFlagSendWriteZeroes},
      {"block status without base:allocation", kBlockStatus, 0, 0, 4096, kEinval, false, kAllFlags,
       true, false},
      // Read-only.
      {"write read-only", kWrite, 0, 0, 4096, kEperm, false, ro},
      {"trim read-only", kTrim, 0, 0, 4096, kEperm, false, ro},
      {"write zeroes read-only", kWriteZeroes, 0, 0, 4096, kEperm, false, ro},
      // DISC and FLUSH take no range.
      {"disc offset", kDisc, 0, 512, 0, kEinval},
      {"disc length", kDisc, 0, 0, 512, kEinval},
      {"flush offset", kFlush, 0, 512, 0, kEinval},
      {"flush length", kFlush, 0, 0, 512, kEinval},
      // Length 0.
      {"read 0", kRead, 0, 0, 0, kEinval},
      {"write 0", kWrite, 0, 0, 0, kEinval},
      {"trim 0", kTrim, 0, 0, 0, kEinval},
      {"cache 0", kCache, 0, 0, 0, kEinval},
      {"write zeroes 0", kWriteZeroes, 0, 0, 0, kEinval},
      {"block status 0", kBlockStatus, 0, 0, 0, kEinval},
      // Alignment.
      {"read offset unaligned", kRead, 0, 100, 512, kEinval},
      {"read length unaligned", kRead, 0, 0, 1000, kEinval},
      {"write unaligned", kWrite, 0, 256, 512, kEinval},
      {"trim unaligned", kTrim, 0, 0, 511, kEinval},
      {"cache unaligned", kCache, 0, 1, 512, kEinval},
      {"write zeroes unaligned", kWriteZeroes, 0, 513, 512, kEinval},
      {"block status unaligned", kBlockStatus, 0, 0, 100, kEinval},
      // Bounds.
      {"read at the end", kRead, 0, kSize, 512, kEinval},
      {"read across the end", kRead, 0, kSize - 512, 1024, kEinval},
      {"write across the end", kWrite, 0, kSize - 512, 1024, kEnospc},
      {"write past the end", kWrite, 0, 2 * kSize, 512, kEnospc},
      {"write zeroes across the end", kWriteZeroes, 0, kSize - 512, 1024, kEnospc},
      {"trim across the end", kTrim, 0, kSize - 512, 1024, kEinval},
      {"cache across the end", kCache, 0, kSize - 512, 1024, kEinval},
      {"block status across the end", kBlockStatus, 0, kSize - 512, 1024, kEinval},
      {"read offset + length overflows", kRead, 0, UINT64_MAX - 511, 1024, kEinval},
      {"write offset + length overflows", kWrite, 0, UINT64_MAX - 511, 1024, kEnospc},
      // Payload limits.
      {"read over max payload", kRead, 0, 0, kMaxPayload + 512, kEinval},
      {"write over max payload", kWrite, 0, 0, kMaxPayload + 512, kEoverflow, true},
      {"write over max payload, read-only", kWrite, 0, 0, kMaxPayload + 512, kEoverflow, true, ro},
      {"write over max payload, bad flags", kWrite, 0xFFFF, 1, 0xFFFFFFFF, kEoverflow, true},
  };
  for (const CheckCase& c : cases) {
    SCOPED_TRACE(c.what);
    ExportInfo e = TestExport();
    e.transmission_flags = c.export_flags;
    Negotiated n;
    n.structured_replies = c.structured;
    n.base_allocation = c.base_allocation;
    Request r;
    r.type = c.type;
    r.flags = c.flags;
    r.cookie = 77;
    r.offset = c.offset;
    r.length = c.length;
    RequestCheck got = CheckRequest(r, e, n);
    EXPECT_EQ(got.error, c.error) << got.message;
    EXPECT_EQ(got.fatal, c.fatal) << got.message;
    EXPECT_EQ(got.message.empty(), c.error == 0) << got.message;
    if (c.error != 0) {
      if (c.type <= kBlockStatus) {
        EXPECT_NE(got.message.find(CommandName(c.type)), std::string::npos) << got.message;
      }
      EXPECT_NE(got.message.find("offset " + std::to_string(c.offset)), std::string::npos)
          << got.message;
      EXPECT_NE(got.message.find("length " + std::to_string(c.length)), std::string::npos)
          << got.message;
    }
  }
}

TEST(NbdRequest, CheckRequestMinBlockOne) {
  ExportInfo e = TestExport();
  e.min_block = 1;
  e.size = 1000;
  Negotiated n;
  Request r;
  r.type = kRead;
  r.offset = 999;
  r.length = 1;
  EXPECT_EQ(CheckRequest(r, e, n).error, 0u);
  r.length = 2;
  EXPECT_EQ(CheckRequest(r, e, n).error, kEinval);
  e.min_block = 0;  // not a valid export, but no division by zero
  r.length = 1;
  EXPECT_EQ(CheckRequest(r, e, n).error, 0u);
}

TEST(NbdRequest, ErrnoToNbd) {
  const std::pair<int, uint32_t> cases[] = {
      {EPERM, 1},      {-EPERM, 1},     {EIO, 5},         {-EIO, 5},         {ENOMEM, 12},
      {EINVAL, 22},    {-EINVAL, 22},   {ENOSPC, 28},     {EDQUOT, 28},      {EFBIG, 28},
      {EOVERFLOW, 75}, {ENOTSUP, 95},   {EOPNOTSUPP, 95}, {-EOPNOTSUPP, 95}, {ESHUTDOWN, 108},
      {EAGAIN, 5},     {ECONNRESET, 5}, {0, 5},           {INT_MIN, 5},      {INT_MAX, 5},
  };
  for (auto [err, nbd] : cases) EXPECT_EQ(ErrnoToNbd(err), nbd) << err;
}

TEST(NbdRequest, CommandNames) {
  EXPECT_EQ(CommandName(0), "NBD_CMD_READ");
  EXPECT_EQ(CommandName(1), "NBD_CMD_WRITE");
  EXPECT_EQ(CommandName(6), "NBD_CMD_WRITE_ZEROES");
  EXPECT_EQ(CommandName(7), "NBD_CMD_BLOCK_STATUS");
  EXPECT_NE(CommandName(8).find("unknown"), std::string::npos);
}

// ---- Replies
// --------------------------------------------------------------------------------------

TEST(NbdReply, Simple) {
  EXPECT_EQ(ToHex(ToWire(EncodeSimpleReply(22, 0x0102030405060708))),
            H("67446698 00000016 0102030405060708"));
  EXPECT_EQ(ToHex(ToWire(EncodeSimpleReply(0, 0))), H("67446698 00000000 0000000000000000"));
}

TEST(NbdReply, StructuredHeader) {
  EXPECT_EQ(
      ToHex(ToWire(EncodeStructuredHeader(kReplyFlagDone, kReplyTypeNone, 0xAABBCCDDEEFF0011, 0))),
      H("668e33ef 0001 0000 aabbccddeeff0011 00000000"));
  EXPECT_EQ(ToHex(ToWire(EncodeStructuredHeader(0, 0x1234, 1, 0x01020304))),
            H("668e33ef 0000 1234 0000000000000001 01020304"));
}

TEST(NbdReply, OffsetDataHeader) {
  EXPECT_EQ(ToHex(ToWire(EncodeOffsetDataHeader(kReplyFlagDone, 9, 0x10000, 4096))),
            H("668e33ef 0001 0001 0000000000000009 00001008 0000000000010000"));
}

TEST(NbdReply, ErrorChunk) {
  EXPECT_EQ(ToHex(EncodeErrorChunk(5, kEinval, "bad")),
            H("668e33ef 0001 8001 0000000000000005 00000009 00000016 0003 626164"));
  EXPECT_EQ(ToHex(EncodeErrorChunk(5, kEio, "")),
            H("668e33ef 0001 8001 0000000000000005 00000006 00000005 0000"));

  // Cut to kMaxString, never inside a UTF-8 sequence.
  Wire longest = EncodeErrorChunk(1, kEio, std::string(5000, 'x'));
  ASSERT_EQ(longest.size(), kStructuredHeaderSize + 6 + kMaxString);
  EXPECT_EQ(Be(longest, 16, 4), 6 + kMaxString);
  EXPECT_EQ(Be(longest, 24, 2), kMaxString);
  std::string accented = std::string(4095, 'x') + "\xc3\xa9";  // 4097 bytes, é at the cut
  Wire cut = EncodeErrorChunk(1, kEio, accented);
  EXPECT_EQ(Be(cut, 24, 2), 4095u);
  EXPECT_EQ(cut.size(), kStructuredHeaderSize + 6 + 4095);
}

TEST(NbdReply, BlockStatus) {
  const Extent extents[] = {{4096, 0}, {8192, kStateHole | kStateZero}};
  EXPECT_EQ(ToHex(EncodeBlockStatus(0x42, extents)),
            H("668e33ef 0001 0005 0000000000000042 00000014"
              "00000001 00001000 00000000 00002000 00000003"));
}

}  // namespace
}  // namespace blkmirror::proto::nbd
