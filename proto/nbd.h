// The Network Block Device protocol, server side: the fixed newstyle handshake and the
// transmission-phase messages, as pure functions and a byte-driven state machine (no I/O).
//
// Written here rather than taken from a library: the one server library (nbdkit) hands every
// request to a worker thread with a buffer of its own, which would put a copy and a thread hop on
// every write; blkmirror receives a write's payload straight into a pool buffer from its io_uring
// loop (docs/design.md). The codec is small; it follows the NBD protocol document
// (github.com/NetworkBlockDevice/nbd, doc/proto.md). Every integer on the wire is big-endian.
//
// Handshake (ServerHandshake): the server sends Greeting(); then the client's bytes are fed in
// exactly the chunks Want() asks for (client flags, then per option a 16-byte header and its data),
// and each Feed says what to send back and whether the handshake goes on, is done (the client
// chose the export and the transmission phase begins) or ends (the client aborted, or broke a
// MUST: close after sending what the step says). Options: EXPORT_NAME, ABORT, LIST, INFO, GO,
// STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT (base:allocation only); STARTTLS and
// everything else get NBD_REP_ERR_UNSUP (or _POLICY), as the document asks.
//
// Transmission: DecodeRequest parses the 28-byte request header; CheckRequest says whether a
// request may be served against the export (its NBD errno and a message for the log, when not);
// the Encode* functions build replies (simple, or structured chunks when negotiated).
//
// Thread safety: pure functions; a ServerHandshake belongs to one connection.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace blkmirror::proto::nbd {

// ---- Constants (doc/proto.md) ----------------------------------------------------------------

inline constexpr uint64_t kMagic = 0x4e42444d41474943;         // "NBDMAGIC"
inline constexpr uint64_t kOptsMagic = 0x49484156454F5054;     // "IHAVEOPT"
inline constexpr uint64_t kRepMagic = 0x0003e889045565a9;      // option replies
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

// Handshake flags (server) and client flags.
inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientNoZeroes = 1 << 1;

// Transmission flags.
inline constexpr uint16_t kFlagHasFlags = 1 << 0;
inline constexpr uint16_t kFlagReadOnly = 1 << 1;
inline constexpr uint16_t kFlagSendFlush = 1 << 2;
inline constexpr uint16_t kFlagSendFua = 1 << 3;
inline constexpr uint16_t kFlagRotational = 1 << 4;
inline constexpr uint16_t kFlagSendTrim = 1 << 5;
inline constexpr uint16_t kFlagSendWriteZeroes = 1 << 6;
inline constexpr uint16_t kFlagSendDf = 1 << 7;
inline constexpr uint16_t kFlagCanMultiConn = 1 << 8;
inline constexpr uint16_t kFlagSendFastZero = 1 << 11;

// Options.
enum class Option : uint32_t {
  kExportName = 1,
  kAbort = 2,
  kList = 3,
  kStartTls = 5,
  kInfo = 6,
  kGo = 7,
  kStructuredReply = 8,
  kListMetaContext = 9,
  kSetMetaContext = 10,
};

// Option reply types (errors have bit 31 set).
inline constexpr uint32_t kRepAck = 1;
inline constexpr uint32_t kRepServer = 2;
inline constexpr uint32_t kRepInfo = 3;
inline constexpr uint32_t kRepMetaContext = 4;
inline constexpr uint32_t kRepErrUnsup = (1u << 31) + 1;
inline constexpr uint32_t kRepErrPolicy = (1u << 31) + 2;
inline constexpr uint32_t kRepErrInvalid = (1u << 31) + 3;
inline constexpr uint32_t kRepErrUnknown = (1u << 31) + 6;
inline constexpr uint32_t kRepErrShutdown = (1u << 31) + 7;
inline constexpr uint32_t kRepErrTooBig = (1u << 31) + 9;

// NBD_REP_INFO types.
inline constexpr uint16_t kInfoExport = 0;
inline constexpr uint16_t kInfoName = 1;
inline constexpr uint16_t kInfoDescription = 2;
inline constexpr uint16_t kInfoBlockSize = 3;

// Commands and command flags.
enum class Command : uint16_t {
  kRead = 0,
  kWrite = 1,
  kDisc = 2,
  kFlush = 3,
  kTrim = 4,
  kCache = 5,
  kWriteZeroes = 6,
  kBlockStatus = 7,
};
std::string_view CommandName(uint16_t type);
inline constexpr uint16_t kCmdFlagFua = 1 << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1 << 1;
inline constexpr uint16_t kCmdFlagDf = 1 << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1 << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1 << 4;

// Structured reply chunks.
inline constexpr uint16_t kReplyFlagDone = 1 << 0;
inline constexpr uint16_t kReplyTypeNone = 0;
inline constexpr uint16_t kReplyTypeOffsetData = 1;
inline constexpr uint16_t kReplyTypeBlockStatus = 5;
inline constexpr uint16_t kReplyTypeError = (1u << 15) + 1;

// base:allocation, the one metadata context served; its id in NBD_REP_META_CONTEXT.
inline constexpr std::string_view kBaseAllocation = "base:allocation";
inline constexpr uint32_t kBaseAllocationId = 1;
inline constexpr uint32_t kStateHole = 1 << 0;
inline constexpr uint32_t kStateZero = 1 << 1;

// NBD errno values (the protocol's own numbering, which is Linux's for these).
inline constexpr uint32_t kEperm = 1;
inline constexpr uint32_t kEio = 5;
inline constexpr uint32_t kEnomem = 12;
inline constexpr uint32_t kEinval = 22;
inline constexpr uint32_t kEnospc = 28;
inline constexpr uint32_t kEoverflow = 75;
inline constexpr uint32_t kEnotsup = 95;
inline constexpr uint32_t kEshutdown = 108;
// The NBD errno for a local errno, positive or negated as io_uring reports it (unknown ones,
// and 0, become EIO).
uint32_t ErrnoToNbd(int err);

// Sizes.
inline constexpr size_t kGreetingSize = 18;     // NBDMAGIC, IHAVEOPT, 16-bit flags
inline constexpr size_t kOptionHeaderSize = 16;  // IHAVEOPT, option, length
inline constexpr size_t kRequestSize = 28;
inline constexpr size_t kSimpleReplySize = 16;
inline constexpr size_t kStructuredHeaderSize = 20;
// The longest option data accepted: a longer option is refused with NBD_REP_ERR_TOO_BIG and
// its data skipped, one bounded chunk at a time (Want() never asks for more than this).
inline constexpr uint32_t kMaxOptionData = 4096 + 64;
// Strings (export names, queries) are at most this long (doc/proto.md).
inline constexpr uint32_t kMaxString = 4096;

// ---- The export ------------------------------------------------------------------------------

struct ExportInfo {
  std::string name;         // what NBD_OPT_LIST shows; NBD_OPT_GO/EXPORT_NAME accept it or ""
  std::string description;  // NBD_INFO_DESCRIPTION, when asked for ("" = not sent)
  uint64_t size = 0;
  // What the server supports (kFlagHasFlags is always added). kFlagSendDf is added when the
  // client negotiated structured replies and dropped otherwise, as the document requires.
  uint16_t transmission_flags = 0;
  uint32_t min_block = 512;        // every offset and length is a multiple of it
  uint32_t preferred_block = 4096;
  uint32_t max_payload = 32 << 20;  // the largest WRITE payload or READ length served
};

// ---- Handshake -------------------------------------------------------------------------------

enum class HandshakeState : uint8_t {
  kMore,          // send `reply`, then feed Want() more bytes
  kTransmission,  // send `reply`, then the transmission phase starts (Negotiated() holds)
  kClose,         // send `reply` (may be empty), then close the connection; `reason` says why
};

struct HandshakeStep {
  HandshakeState state = HandshakeState::kMore;
  std::vector<std::byte> reply;  // bytes for the client, in order
  std::string reason;            // kClose: for the log ("client sent NBD_OPT_ABORT", ...)
};

// What the handshake settled, for the transmission phase.
struct Negotiated {
  bool structured_replies = false;
  bool base_allocation = false;  // base:allocation selected (NBD_CMD_BLOCK_STATUS allowed)
  uint16_t transmission_flags = 0;  // as sent to the client
};

class ServerHandshake {
 public:
  explicit ServerHandshake(ExportInfo export_info);

  // What the server sends as soon as the connection is accepted.
  std::array<std::byte, kGreetingSize> Greeting() const;
  // How many bytes to feed next (always > 0 and <= kMaxOptionData while kMore). Once a step
  // said kTransmission or kClose, 0: Feed must not be called again.
  size_t Want() const;
  // Feeds exactly Want() bytes. Never fails: every problem is a step to kClose (after an error
  // reply where the document asks for one).
  HandshakeStep Feed(std::span<const std::byte> bytes);
  const Negotiated& negotiated() const { return negotiated_; }
  const ExportInfo& export_info() const { return export_; }

 private:
  // Private state of the parser (see nbd.cc).
  enum class Expect : uint8_t { kClientFlags, kOptionHeader, kOptionData, kSkipData, kDone };
  HandshakeStep OnOption(uint32_t option, std::span<const std::byte> data);

  ExportInfo export_;
  Negotiated negotiated_;
  Expect expect_ = Expect::kClientFlags;
  bool no_zeroes_ = false;
  uint32_t option_ = 0;
  uint32_t option_len_ = 0;   // data length of the option being read
  uint32_t skip_left_ = 0;    // bytes of an oversized option still to skip
};

// ---- Transmission ----------------------------------------------------------------------------

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;  // Command
  uint64_t cookie = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// Parses a request header; the error (a bad magic) means the stream is lost: close.
Result<Request> DecodeRequest(std::span<const std::byte, kRequestSize> raw);

struct RequestCheck {
  uint32_t error = 0;   // 0: serve it; else the NBD errno to reply with
  std::string message;  // why, for the log and a structured error chunk
  bool fatal = false;   // the stream cannot go on (e.g. a WRITE whose payload cannot be
                        // skipped safely): reply if possible, then close
};

// Whether `r` may be served on this export: a known command the export supports, only flags
// that command takes and the handshake allowed, offset and length multiples of min_block,
// within the export, a READ or WRITE of at most max_payload (a WRITE larger than that is fatal:
// its payload is not read), BLOCK_STATUS only with base:allocation selected.
// A refused WRITE is fatal exactly when its length exceeds max_payload (NBD_EOVERFLOW); for any
// other refused WRITE the caller must read and discard its `length` bytes of payload before the
// next request header.
RequestCheck CheckRequest(const Request& r, const ExportInfo& export_info,
                          const Negotiated& negotiated);

// Replies. A simple reply is a 16-byte header (then, for a successful READ, the data).
std::array<std::byte, kSimpleReplySize> EncodeSimpleReply(uint32_t error, uint64_t cookie);
// A structured reply chunk header; its payload (`length` bytes) follows.
std::array<std::byte, kStructuredHeaderSize> EncodeStructuredHeader(uint16_t flags, uint16_t type,
                                                                    uint64_t cookie,
                                                                    uint32_t length);
// NBD_REPLY_TYPE_OFFSET_DATA: the header and the 8-byte offset; the `data_length` bytes of data
// follow (from the caller's buffer).
std::array<std::byte, kStructuredHeaderSize + 8> EncodeOffsetDataHeader(uint16_t flags,
                                                                        uint64_t cookie,
                                                                        uint64_t offset,
                                                                        uint32_t data_length);
// NBD_REPLY_TYPE_ERROR chunk (flagged DONE), with the message (cut to kMaxString).
std::vector<std::byte> EncodeErrorChunk(uint64_t cookie, uint32_t error, std::string_view message);
// NBD_REPLY_TYPE_BLOCK_STATUS chunk (flagged DONE) for base:allocation: extents as (length,
// flags) pairs.
struct Extent {
  uint32_t length = 0;
  uint32_t flags = 0;
};
std::vector<std::byte> EncodeBlockStatus(uint64_t cookie, std::span<const Extent> extents);

}  // namespace blkmirror::proto::nbd
