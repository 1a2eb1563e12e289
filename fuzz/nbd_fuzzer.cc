// nbd_fuzzer: the NBD server codec (proto/nbd.h) on arbitrary client bytes.
//
// Input (fuzz/input_formats.h, nbd_input): 4 setup bytes choose the export (transmission flags,
// minimum block, maximum payload, size, name, description); the rest is what a client sends.
// A ServerHandshake is fed the chunks its Want() asks for until it reaches the transmission
// phase, closes, or the input ends; after the transmission phase starts, the remaining bytes are
// 28-byte requests, each decoded and checked against the export, a WRITE's payload consumed after
// it unless the check says the stream cannot go on.
//
// The fuzzer keeps its own model of the option framing (client flags, 16-byte headers, data of
// the header's length, oversized data skipped) and of what was negotiated, independent of nbd.cc.
//
// Properties (a violation traps; ASan/UBSan reports fail the run too):
//   - While the handshake reads, Want() is in 1..kMaxOptionData and is exactly what the framing
//     says comes next (4, 16, the option's length, or the next chunk of an oversized option).
//   - Every reply is well-formed: a sequence of option replies (magic, the option being answered,
//     a length that fits what follows) whose last one is final (ACK or an error) and whose others
//     are not; per type, consistent data (SERVER's name length, INFO lengths 12 / 14 / >= 2, the
//     export's size and flags in NBD_INFO_EXPORT, META_CONTEXT naming base:allocation with id 0
//     when listed and kBaseAllocationId when set, error messages of at most kMaxString bytes).
//     Or, for EXPORT_NAME, the 10-byte (NO_ZEROES) or 134-byte export reply.
//   - Steps that only read (client flags, a header before its data, a skipped chunk but the
//     last) send nothing; an oversized option is answered with exactly one NBD_REP_ERR_TOO_BIG
//     after its last chunk (EXPORT_NAME closes, ABORT acks and closes at the header).
//   - kTransmission is reached only through NBD_OPT_GO ending in ACK, or NBD_OPT_EXPORT_NAME
//     naming "" or the export; the flags sent there are negotiated().transmission_flags, carry
//     HAS_FLAGS, SEND_DF exactly when structured replies were acked, and otherwise the export's.
//     negotiated() matches the model: structured replies once acked, base:allocation exactly
//     when the last SET_META_CONTEXT selected it (cleared by a failed one). kClose says why;
//     after either, Want() is 0.
//   - CheckRequest: error 0 implies a known command with only flags it takes and the export
//     offers, within the export (no overflow), aligned to min_block, length > 0 (0 and offset 0
//     for DISC and FLUSH), a READ or WRITE payload of at most max_payload, no write on a
//     read-only export, BLOCK_STATUS only with base:allocation. An error is one of EPERM,
//     EINVAL, ENOSPC, EOVERFLOW with a message; fatal exactly for a WRITE over max_payload.
//     DecodeRequest fails exactly on a wrong magic. Error chunks encode with consistent lengths.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "fuzz/input_formats.h"
#include "proto/nbd.h"

namespace blkmirror::fuzz {
namespace {

namespace ni = nbd_input;
namespace nbd = proto::nbd;
using Bytes = std::span<const std::byte>;

uint64_t Be(Bytes b, size_t off, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = v << 8 | static_cast<uint8_t>(b[off + i]);
  return v;
}

std::string_view AsText(Bytes b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

nbd::ExportInfo ChooseExport(ByteReader& in) {
  nbd::ExportInfo e;
  e.transmission_flags = in.U16();
  uint8_t geometry = in.U8();
  uint8_t naming = in.U8();
  e.min_block = ni::kMinBlocks[geometry & 3];
  e.preferred_block = std::max<uint32_t>(e.min_block, 4096);
  e.max_payload = ni::kMaxPayloads[(geometry >> 2) & 3];
  e.size = ni::kSizes[(geometry >> 4) & 7];
  e.name = ni::kNames[naming & 3];
  if (naming & ni::kSetupDescription) e.description = "a fuzzed export";
  return e;
}

// What the client negotiated so far, as the replies say.
struct Model {
  bool structured = false;
  bool base_allocation = false;
  bool no_zeroes = false;
};

uint16_t ExpectedFlags(const nbd::ExportInfo& e, bool structured) {
  uint16_t f = e.transmission_flags | nbd::kFlagHasFlags;
  f = structured ? (f | nbd::kFlagSendDf) : (f & static_cast<uint16_t>(~nbd::kFlagSendDf));
  if (!(f & nbd::kFlagSendWriteZeroes)) f &= static_cast<uint16_t>(~nbd::kFlagSendFastZero);
  return f;
}

struct OptReply {
  uint32_t type;
  Bytes data;
};

bool IsError(uint32_t type) { return (type & (1u << 31)) != 0; }

// Parses `reply` as option replies to `option` (magic, option, lengths), checks that only the
// last one is final, and returns them.
std::vector<OptReply> ParseReplies(Bytes reply, uint32_t option) {
  std::vector<OptReply> out;
  size_t at = 0;
  while (at < reply.size()) {
    FUZZ_CHECK(reply.size() - at >= 20, "option reply cut inside its header at byte {}", at);
    FUZZ_CHECK(Be(reply, at, 8) == nbd::kRepMagic, "option reply magic 0x{:x}", Be(reply, at, 8));
    FUZZ_CHECK(Be(reply, at + 8, 4) == option, "reply to option {} names option {}", option,
               Be(reply, at + 8, 4));
    auto type = static_cast<uint32_t>(Be(reply, at + 12, 4));
    auto len = static_cast<size_t>(Be(reply, at + 16, 4));
    at += 20;
    FUZZ_CHECK(reply.size() - at >= len, "option reply length {} past the {} bytes left", len,
               reply.size() - at);
    out.push_back({type, reply.subspan(at, len)});
    at += len;
  }
  FUZZ_CHECK(!out.empty(), "option {} got no reply", option);
  for (size_t i = 0; i < out.size(); ++i) {
    bool final = out[i].type == nbd::kRepAck || IsError(out[i].type);
    FUZZ_CHECK(final == (i + 1 == out.size()), "reply {} of {} to option {} (type 0x{:x}) is {}",
               i + 1, out.size(), option, out[i].type, final ? "final too early" : "not final");
  }
  return out;
}

// Per-type consistency of the replies to a completed option.
void CheckReplyData(const std::vector<OptReply>& replies, uint32_t option, const nbd::ExportInfo& e,
                    const Model& m) {
  for (const OptReply& r : replies) {
    Bytes d = r.data;
    if (IsError(r.type)) {
      FUZZ_CHECK(d.size() <= nbd::kMaxString, "error message of {} bytes", d.size());
      continue;
    }
    switch (r.type) {
      case nbd::kRepAck:
        FUZZ_CHECK(d.empty(), "ACK with {} bytes of data", d.size());
        break;
      case nbd::kRepServer:
        FUZZ_CHECK(option == static_cast<uint32_t>(nbd::Option::kList), "SERVER reply to {}",
                   option);
        FUZZ_CHECK(d.size() >= 4 && Be(d, 0, 4) == d.size() - 4, "SERVER name length mismatch");
        FUZZ_CHECK(AsText(d.subspan(4)) == e.name, "SERVER names another export");
        break;
      case nbd::kRepInfo: {
        FUZZ_CHECK(option == static_cast<uint32_t>(nbd::Option::kInfo) ||
                       option == static_cast<uint32_t>(nbd::Option::kGo),
                   "INFO reply to option {}", option);
        FUZZ_CHECK(d.size() >= 2, "INFO reply of {} bytes", d.size());
        auto info = static_cast<uint16_t>(Be(d, 0, 2));
        if (info == nbd::kInfoExport) {
          FUZZ_CHECK(d.size() == 12, "NBD_INFO_EXPORT of {} bytes", d.size());
          FUZZ_CHECK(Be(d, 2, 8) == e.size, "NBD_INFO_EXPORT size {}", Be(d, 2, 8));
          FUZZ_CHECK(Be(d, 10, 2) == ExpectedFlags(e, m.structured),
                     "NBD_INFO_EXPORT flags 0x{:04x}, expected 0x{:04x}", Be(d, 10, 2),
                     ExpectedFlags(e, m.structured));
        } else if (info == nbd::kInfoBlockSize) {
          FUZZ_CHECK(d.size() == 14, "NBD_INFO_BLOCK_SIZE of {} bytes", d.size());
          FUZZ_CHECK(Be(d, 2, 4) == e.min_block && Be(d, 6, 4) == e.preferred_block &&
                         Be(d, 10, 4) == e.max_payload,
                     "NBD_INFO_BLOCK_SIZE values differ from the export's");
        } else {
          FUZZ_CHECK(info == nbd::kInfoName || info == nbd::kInfoDescription,
                     "unexpected NBD_INFO type {}", info);
        }
        break;
      }
      case nbd::kRepMetaContext: {
        bool set = option == static_cast<uint32_t>(nbd::Option::kSetMetaContext);
        FUZZ_CHECK(set || option == static_cast<uint32_t>(nbd::Option::kListMetaContext),
                   "META_CONTEXT reply to option {}", option);
        FUZZ_CHECK(d.size() >= 4, "META_CONTEXT of {} bytes", d.size());
        FUZZ_CHECK(Be(d, 0, 4) == (set ? nbd::kBaseAllocationId : 0), "META_CONTEXT id {}",
                   Be(d, 0, 4));
        FUZZ_CHECK(AsText(d.subspan(4)) == nbd::kBaseAllocation, "META_CONTEXT for another name");
        break;
      }
      default:
        FUZZ_CHECK(false, "unknown option reply type 0x{:x}", r.type);
    }
  }
}

// The step that completes `option` with `data`.
void CheckOptionStep(const nbd::ServerHandshake& hs, const nbd::HandshakeStep& step,
                     uint32_t option, Bytes data, Model& m) {
  const nbd::ExportInfo& e = hs.export_info();
  Bytes reply = step.reply;
  if (option == static_cast<uint32_t>(nbd::Option::kExportName)) {
    std::string_view name = AsText(data);
    bool known = name.empty() || name == e.name;
    if (!known) {
      FUZZ_CHECK(step.state == nbd::HandshakeState::kClose && reply.empty(),
                 "EXPORT_NAME of an unknown export did not close silently");
      return;
    }
    FUZZ_CHECK(step.state == nbd::HandshakeState::kTransmission,
               "EXPORT_NAME of the export did not start transmission");
    FUZZ_CHECK(reply.size() == (m.no_zeroes ? 10u : 134u), "EXPORT_NAME reply of {} bytes",
               reply.size());
    FUZZ_CHECK(Be(reply, 0, 8) == e.size, "EXPORT_NAME reply size {}", Be(reply, 0, 8));
    FUZZ_CHECK(Be(reply, 8, 2) == ExpectedFlags(e, m.structured) &&
                   Be(reply, 8, 2) == hs.negotiated().transmission_flags,
               "EXPORT_NAME flags 0x{:04x}", Be(reply, 8, 2));
    for (size_t i = 10; i < reply.size(); ++i) {
      FUZZ_CHECK(reply[i] == std::byte{0}, "EXPORT_NAME padding byte {} not zero", i);
    }
    return;
  }
  std::vector<OptReply> replies = ParseReplies(reply, option);
  CheckReplyData(replies, option, e, m);
  const bool acked = replies.back().type == nbd::kRepAck;
  switch (static_cast<nbd::Option>(option)) {
    case nbd::Option::kAbort:
      FUZZ_CHECK(step.state == nbd::HandshakeState::kClose && replies.size() == 1 && acked,
                 "ABORT not answered by ACK then close");
      return;
    case nbd::Option::kGo:
      FUZZ_CHECK((step.state == nbd::HandshakeState::kTransmission) == acked,
                 "GO ended in {} but transmission is {}", acked ? "ACK" : "an error",
                 step.state == nbd::HandshakeState::kTransmission ? "on" : "off");
      if (acked) {
        FUZZ_CHECK(hs.negotiated().transmission_flags == ExpectedFlags(e, m.structured),
                   "negotiated flags 0x{:04x} differ from those sent",
                   hs.negotiated().transmission_flags);
        FUZZ_CHECK(replies.size() >= 2 && replies[0].type == nbd::kRepInfo,
                   "GO acked without NBD_INFO_EXPORT");
      }
      break;
    case nbd::Option::kStructuredReply:
      if (acked) m.structured = true;
      FUZZ_CHECK(step.state == nbd::HandshakeState::kMore, "option {} ended haggling", option);
      break;
    case nbd::Option::kSetMetaContext:
      FUZZ_CHECK(!acked || m.structured, "SET_META_CONTEXT acked without structured replies");
      m.base_allocation = acked && replies.size() == 2;
      FUZZ_CHECK(step.state == nbd::HandshakeState::kMore, "option {} ended haggling", option);
      break;
    case nbd::Option::kListMetaContext:
      FUZZ_CHECK(!acked || m.structured, "LIST_META_CONTEXT acked without structured replies");
      FUZZ_CHECK(step.state == nbd::HandshakeState::kMore, "option {} ended haggling", option);
      break;
    default:
      FUZZ_CHECK(step.state == nbd::HandshakeState::kMore, "option {} ended haggling", option);
      break;
  }
}

// Drives the handshake; true when the transmission phase started.
bool Handshake(nbd::ServerHandshake& hs, ByteReader& in) {
  using nbd::HandshakeState;
  auto greeting = hs.Greeting();
  FUZZ_CHECK(Be(greeting, 0, 8) == nbd::kMagic && Be(greeting, 8, 8) == nbd::kOptsMagic &&
                 Be(greeting, 16, 2) == (nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes),
             "greeting bytes");
  enum class Next { kFlags, kHeader, kData, kSkip } next = Next::kFlags;
  uint32_t option = 0;
  uint32_t length = 0;
  uint32_t skip_left = 0;
  Model m;
  static std::array<std::byte, nbd::kMaxOptionData> buf;
  for (;;) {
    const size_t want = hs.Want();
    size_t expected = 0;
    switch (next) {
      case Next::kFlags:
        expected = 4;
        break;
      case Next::kHeader:
        expected = nbd::kOptionHeaderSize;
        break;
      case Next::kData:
        expected = length;
        break;
      case Next::kSkip:
        expected = std::min<uint32_t>(skip_left, nbd::kMaxOptionData);
        break;
    }
    FUZZ_CHECK(want >= 1 && want <= nbd::kMaxOptionData, "Want() {} while reading", want);
    FUZZ_CHECK(want == expected, "Want() {}, the framing says {}", want, expected);
    if (in.remaining() < want) return false;
    std::span<std::byte> chunk(buf.data(), want);
    in.Fill(chunk);
    nbd::HandshakeStep step = hs.Feed(chunk);

    bool completes = false;  // the chunk completes an option
    Bytes data;
    switch (next) {
      case Next::kFlags: {
        bool known = (Be(chunk, 0, 4) & ~uint64_t{3}) == 0;
        FUZZ_CHECK(step.reply.empty(), "a reply to the client flags");
        FUZZ_CHECK((step.state == HandshakeState::kMore) == known,
                   "client flags 0x{:08x}: state {}", Be(chunk, 0, 4),
                   static_cast<int>(step.state));
        m.no_zeroes = (Be(chunk, 0, 4) & nbd::kClientNoZeroes) != 0;
        next = Next::kHeader;
        break;
      }
      case Next::kHeader: {
        option = static_cast<uint32_t>(Be(chunk, 8, 4));
        length = static_cast<uint32_t>(Be(chunk, 12, 4));
        if (Be(chunk, 0, 8) != nbd::kOptsMagic) {
          FUZZ_CHECK(step.state == HandshakeState::kClose && step.reply.empty(),
                     "a bad option magic did not close silently");
          break;
        }
        if (length == 0) {
          completes = true;
        } else if (length <= nbd::kMaxOptionData) {
          FUZZ_CHECK(step.state == HandshakeState::kMore && step.reply.empty(),
                     "an option header with data was answered before its data");
          next = Next::kData;
        } else if (option == static_cast<uint32_t>(nbd::Option::kExportName)) {
          FUZZ_CHECK(step.state == HandshakeState::kClose && step.reply.empty(),
                     "an oversized EXPORT_NAME did not close silently");
        } else if (option == static_cast<uint32_t>(nbd::Option::kAbort)) {
          completes = true;  // acked and closed at once, its data unread
        } else {
          FUZZ_CHECK(step.state == HandshakeState::kMore && step.reply.empty(),
                     "an oversized option was answered before it was skipped");
          skip_left = length;
          next = Next::kSkip;
        }
        break;
      }
      case Next::kData:
        completes = true;
        data = chunk;
        next = Next::kHeader;
        break;
      case Next::kSkip:
        skip_left -= static_cast<uint32_t>(want);
        FUZZ_CHECK(step.state == HandshakeState::kMore, "skipping ended haggling");
        if (skip_left > 0) {
          FUZZ_CHECK(step.reply.empty(), "a reply before the last skipped chunk");
        } else {
          auto replies = ParseReplies(step.reply, option);
          FUZZ_CHECK(replies.size() == 1 && replies[0].type == nbd::kRepErrTooBig,
                     "an oversized option not answered by exactly NBD_REP_ERR_TOO_BIG");
          next = Next::kHeader;
        }
        break;
    }
    if (completes) CheckOptionStep(hs, step, option, data, m);

    FUZZ_CHECK(hs.negotiated().structured_replies == m.structured,
               "negotiated structured replies {} differ from the replies",
               hs.negotiated().structured_replies);
    FUZZ_CHECK(hs.negotiated().base_allocation == m.base_allocation,
               "negotiated base:allocation {} differs from the replies",
               hs.negotiated().base_allocation);
    if (step.state == HandshakeState::kTransmission) {
      FUZZ_CHECK(completes && (option == static_cast<uint32_t>(nbd::Option::kGo) ||
                               option == static_cast<uint32_t>(nbd::Option::kExportName)),
                 "transmission reached through option {}", option);
    }
    if (step.state != HandshakeState::kMore) {
      FUZZ_CHECK(hs.Want() == 0, "Want() {} after the handshake ended", hs.Want());
      FUZZ_CHECK(step.state == HandshakeState::kTransmission || !step.reason.empty(),
                 "closed without a reason");
      return step.state == HandshakeState::kTransmission;
    }
    FUZZ_CHECK(hs.negotiated().transmission_flags == 0, "transmission flags set while haggling");
  }
}

bool Aligned(uint64_t v, uint32_t min_block) { return min_block == 0 || v % min_block == 0; }

void CheckOne(const nbd::Request& r, const nbd::RequestCheck& c, const nbd::ExportInfo& e,
              const nbd::Negotiated& n) {
  using nbd::Command;
  const auto cmd = static_cast<Command>(r.type);
  const bool is_write = cmd == Command::kWrite;
  FUZZ_CHECK(c.fatal == (c.error != 0 && is_write && r.length > e.max_payload),
             "fatal {} for {} length {} (max payload {})", c.fatal, nbd::CommandName(r.type),
             r.length, e.max_payload);
  if (c.error != 0) {
    FUZZ_CHECK(c.error == nbd::kEperm || c.error == nbd::kEinval || c.error == nbd::kEnospc ||
                   c.error == nbd::kEoverflow,
               "error {}", c.error);
    FUZZ_CHECK(!c.message.empty(), "error {} without a message", c.error);
    std::vector<std::byte> chunk = nbd::EncodeErrorChunk(r.cookie, c.error, c.message);
    FUZZ_CHECK(chunk.size() >= nbd::kStructuredHeaderSize + 6 &&
                   Be(chunk, 16, 4) == chunk.size() - nbd::kStructuredHeaderSize &&
                   Be(chunk, 24, 2) == chunk.size() - nbd::kStructuredHeaderSize - 6 &&
                   Be(chunk, 24, 2) <= nbd::kMaxString,
               "error chunk lengths inconsistent");
    return;
  }
  FUZZ_CHECK(c.message.empty(), "served with a message: {}", c.message);
  FUZZ_CHECK(r.type <= static_cast<uint16_t>(Command::kBlockStatus), "served command {}", r.type);
  const uint16_t ef = e.transmission_flags;
  FUZZ_CHECK((r.flags & ~uint16_t{0x1F}) == 0, "served with unknown flags 0x{:04x}", r.flags);
  FUZZ_CHECK(!(r.flags & nbd::kCmdFlagFua) || (ef & nbd::kFlagSendFua), "FUA not offered");
  FUZZ_CHECK(
      !(r.flags & (nbd::kCmdFlagNoHole | nbd::kCmdFlagFastZero)) || cmd == Command::kWriteZeroes,
      "NO_HOLE / FAST_ZERO on {}", nbd::CommandName(r.type));
  FUZZ_CHECK(!(r.flags & nbd::kCmdFlagFastZero) || (ef & nbd::kFlagSendFastZero),
             "FAST_ZERO not offered");
  FUZZ_CHECK(!(r.flags & nbd::kCmdFlagDf) || (cmd == Command::kRead && n.structured_replies),
             "DF on {} (structured replies {})", nbd::CommandName(r.type), n.structured_replies);
  FUZZ_CHECK(!(r.flags & nbd::kCmdFlagReqOne) || cmd == Command::kBlockStatus, "REQ_ONE on {}",
             nbd::CommandName(r.type));
  FUZZ_CHECK(cmd != Command::kFlush || (ef & nbd::kFlagSendFlush), "flush not offered");
  FUZZ_CHECK(cmd != Command::kTrim || (ef & nbd::kFlagSendTrim), "trim not offered");
  FUZZ_CHECK(cmd != Command::kWriteZeroes || (ef & nbd::kFlagSendWriteZeroes),
             "write zeroes not offered");
  FUZZ_CHECK(cmd != Command::kBlockStatus || n.base_allocation, "block status not negotiated");
  const bool writes = is_write || cmd == Command::kTrim || cmd == Command::kWriteZeroes;
  FUZZ_CHECK(!writes || !(ef & nbd::kFlagReadOnly), "{} on a read-only export",
             nbd::CommandName(r.type));
  if (cmd == Command::kDisc || cmd == Command::kFlush) {
    FUZZ_CHECK(r.offset == 0 && r.length == 0, "{} with a range", nbd::CommandName(r.type));
    return;
  }
  FUZZ_CHECK(r.length > 0, "{} of length 0", nbd::CommandName(r.type));
  FUZZ_CHECK(Aligned(r.offset, e.min_block) && Aligned(r.length, e.min_block),
             "{} at {} length {} unaligned to {}", nbd::CommandName(r.type), r.offset, r.length,
             e.min_block);
  FUZZ_CHECK(r.offset <= e.size && r.length <= e.size - r.offset,
             "{} at {} length {} outside the export of {} bytes", nbd::CommandName(r.type),
             r.offset, r.length, e.size);
  FUZZ_CHECK((cmd != Command::kRead && !is_write) || r.length <= e.max_payload,
             "{} of {} bytes over max payload {}", nbd::CommandName(r.type), r.length,
             e.max_payload);
}

void Transmission(const nbd::ServerHandshake& hs, ByteReader& in) {
  const nbd::ExportInfo& e = hs.export_info();
  const nbd::Negotiated& n = hs.negotiated();
  std::array<std::byte, nbd::kRequestSize> raw;
  while (in.remaining() >= nbd::kRequestSize) {
    in.Fill(raw);
    auto r = nbd::DecodeRequest(raw);
    const bool magic_ok = Be(raw, 0, 4) == nbd::kRequestMagic;
    FUZZ_CHECK(r.ok() == magic_ok, "DecodeRequest {} a request with magic 0x{:08x}",
               r.ok() ? "accepted" : "refused", Be(raw, 0, 4));
    if (!r.ok()) {
      FUZZ_CHECK(!r.status().message().empty(), "DecodeRequest failed without a message");
      return;
    }
    FUZZ_CHECK(r->flags == Be(raw, 4, 2) && r->type == Be(raw, 6, 2) &&
                   r->cookie == Be(raw, 8, 8) && r->offset == Be(raw, 16, 8) &&
                   r->length == Be(raw, 24, 4),
               "DecodeRequest fields differ from the bytes");
    nbd::RequestCheck c = nbd::CheckRequest(*r, e, n);
    CheckOne(*r, c, e, n);
    if (c.fatal) return;
    if (r->type == static_cast<uint16_t>(nbd::Command::kWrite)) {
      // The payload follows, served or refused: consumed either way.
      size_t skip = std::min<size_t>(r->length, in.remaining());
      static std::array<std::byte, 4096> sink;
      while (skip > 0) {
        size_t k = std::min(skip, sink.size());
        in.Fill(std::span(sink.data(), k));
        skip -= k;
      }
    }
    if (r->type == static_cast<uint16_t>(nbd::Command::kDisc)) return;
  }
}

}  // namespace
}  // namespace blkmirror::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  blkmirror::fuzz::QuietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blkmirror;
  using namespace blkmirror::fuzz;
  ByteReader in(data, size);
  proto::nbd::ServerHandshake hs(ChooseExport(in));
  if (Handshake(hs, in)) Transmission(hs, in);
  return 0;
}
