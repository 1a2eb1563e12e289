#include "proto/nbd.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <optional>
#include <utility>

// ServerHandshake is a parser over the client's byte stream with one state per thing it reads
// next (Expect):
//
//   kClientFlags   4 bytes: the client flags        -> kOptionHeader, or kDone (unknown bits)
//   kOptionHeader  16 bytes: IHAVEOPT, option, length
//                    length 0                       -> the option is handled at once
//                    1..kMaxOptionData              -> kOptionData
//                    larger                         -> kSkipData (EXPORT_NAME, ABORT: kDone)
//                    a wrong magic                  -> kDone
//   kOptionData    `length` bytes: the option's data -> handled: kOptionHeader, or kDone
//   kSkipData      up to kMaxOptionData bytes at a time of an oversized option's data; after the
//                  last chunk: NBD_REP_ERR_TOO_BIG  -> kOptionHeader
//   kDone          the handshake ended (kTransmission or kClose); Want() is 0
//
// Every step that ends the handshake moves to kDone, in Feed and nowhere else.

namespace blkmirror::proto::nbd {
namespace {

constexpr size_t kClientFlagsSize = 4;
constexpr uint32_t kKnownClientFlags = kClientFixedNewstyle | kClientNoZeroes;
constexpr uint16_t kKnownCommandFlags =
    kCmdFlagFua | kCmdFlagNoHole | kCmdFlagDf | kCmdFlagReqOne | kCmdFlagFastZero;
constexpr size_t kExportNameZeroes = 124;

// ---- Big-endian access ------------------------------------------------------------------------

void StoreBe(std::byte* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<std::byte>(v >> (8 * (n - 1 - i)));
}

uint64_t LoadBe(const std::byte* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = v << 8 | static_cast<uint64_t>(p[i]);
  return v;
}

// Appends big-endian integers and text to a byte vector.
class Bytes {
 public:
  Bytes& U16(uint16_t v) { return Be(v, 2); }
  Bytes& U32(uint32_t v) { return Be(v, 4); }
  Bytes& U64(uint64_t v) { return Be(v, 8); }
  Bytes& Text(std::string_view s) {
    auto p = reinterpret_cast<const std::byte*>(s.data());
    bytes_.insert(bytes_.end(), p, p + s.size());
    return *this;
  }
  Bytes& Raw(std::span<const std::byte> b) {
    bytes_.insert(bytes_.end(), b.begin(), b.end());
    return *this;
  }
  Bytes& Zeroes(size_t n) {
    bytes_.insert(bytes_.end(), n, std::byte{0});
    return *this;
  }
  std::vector<std::byte> Take() { return std::move(bytes_); }

 private:
  Bytes& Be(uint64_t v, int n) {
    size_t at = bytes_.size();
    bytes_.resize(at + n);
    StoreBe(bytes_.data() + at, v, n);
    return *this;
  }
  std::vector<std::byte> bytes_;
};

// Reads big-endian integers and text from an option's data; every read says whether the data
// held it.
class Cursor {
 public:
  explicit Cursor(std::span<const std::byte> data) : data_(data) {}
  size_t left() const { return data_.size(); }
  std::optional<uint16_t> U16() {
    if (data_.size() < 2) return std::nullopt;
    return static_cast<uint16_t>(Take(2));
  }
  std::optional<uint32_t> U32() {
    if (data_.size() < 4) return std::nullopt;
    return static_cast<uint32_t>(Take(4));
  }
  std::optional<std::string_view> Text(size_t n) {
    if (data_.size() < n) return std::nullopt;
    std::string_view s(reinterpret_cast<const char*>(data_.data()), n);
    data_ = data_.subspan(n);
    return s;
  }

 private:
  uint64_t Take(int n) {
    uint64_t v = LoadBe(data_.data(), n);
    data_ = data_.subspan(n);
    return v;
  }
  std::span<const std::byte> data_;
};

std::string_view AsText(std::span<const std::byte> data) {
  return {reinterpret_cast<const char*>(data.data()), data.size()};
}

// A client's string made safe for a log line and an error message (which must be UTF-8):
// printable ASCII kept, every other byte as \xNN, at most 64 bytes of it shown.
std::string Printable(std::string_view s) {
  constexpr size_t kShown = 64;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kShown; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (s.size() > kShown) out += fmt::format("... ({} bytes)", s.size());
  return out;
}

// The longest prefix of `s` of at most `max` bytes that does not split a UTF-8 sequence.
std::string_view CutUtf8(std::string_view s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

std::string OptionName(uint32_t option) {
  switch (static_cast<Option>(option)) {
    case Option::kExportName:
      return "NBD_OPT_EXPORT_NAME";
    case Option::kAbort:
      return "NBD_OPT_ABORT";
    case Option::kList:
      return "NBD_OPT_LIST";
    case Option::kStartTls:
      return "NBD_OPT_STARTTLS";
    case Option::kInfo:
      return "NBD_OPT_INFO";
    case Option::kGo:
      return "NBD_OPT_GO";
    case Option::kStructuredReply:
      return "NBD_OPT_STRUCTURED_REPLY";
    case Option::kListMetaContext:
      return "NBD_OPT_LIST_META_CONTEXT";
    case Option::kSetMetaContext:
      return "NBD_OPT_SET_META_CONTEXT";
  }
  return fmt::format("option {}", option);
}

// "" is the default export; the one export is also reachable by its name.
bool NamesExport(const ExportInfo& e, std::string_view name) {
  return name.empty() || name == e.name;
}

// The transmission flags sent to the client: the export's, HAS_FLAGS always, SEND_DF exactly when
// structured replies were negotiated, SEND_FAST_ZERO only beside SEND_WRITE_ZEROES (the document
// requires both).
uint16_t ServedFlags(const ExportInfo& e, bool structured_replies) {
  uint16_t flags = e.transmission_flags | kFlagHasFlags;
  if (structured_replies) {
    flags |= kFlagSendDf;
  } else {
    flags &= static_cast<uint16_t>(~kFlagSendDf);
  }
  if ((flags & kFlagSendWriteZeroes) == 0) flags &= static_cast<uint16_t>(~kFlagSendFastZero);
  return flags;
}

// The replies to one option, in order.
class Replies {
 public:
  explicit Replies(uint32_t option) : option_(option) {}
  void Add(uint32_t type, std::span<const std::byte> data) {
    out_.U64(kRepMagic).U32(option_).U32(type).U32(static_cast<uint32_t>(data.size())).Raw(data);
  }
  void Add(uint32_t type, Bytes data) {
    std::vector<std::byte> bytes = data.Take();
    Add(type, bytes);
  }
  void Ack() { Add(kRepAck, std::span<const std::byte>()); }
  // An error reply; its data is the message (UTF-8, at most kMaxString bytes).
  void Error(uint32_t type, std::string_view message) {
    Add(type, Bytes().Text(CutUtf8(message, kMaxString)));
  }
  std::vector<std::byte> Take() { return out_.Take(); }

 private:
  uint32_t option_;
  Bytes out_;
};

HandshakeStep More(std::vector<std::byte> reply) {
  return {HandshakeState::kMore, std::move(reply), {}};
}
HandshakeStep Close(std::vector<std::byte> reply, std::string reason) {
  return {HandshakeState::kClose, std::move(reply), std::move(reason)};
}

// NBD_OPT_INFO and NBD_OPT_GO data: u32 name length, name, u16 count, count x u16.
struct InfoRequest {
  std::string_view name;
  bool want_name = false;
  bool want_description = false;
};

Result<InfoRequest> ParseInfoRequest(std::span<const std::byte> data) {
  Cursor in(data);
  std::optional<uint32_t> name_len = in.U32();
  if (!name_len) {
    return Status::Protocol("{} bytes of data cannot hold the 4-byte name length", data.size());
  }
  if (*name_len > kMaxString) {
    return Status::Protocol("export name length {} exceeds the limit of {} bytes", *name_len,
                            kMaxString);
  }
  std::optional<std::string_view> name = in.Text(*name_len);
  if (!name) {
    return Status::Protocol("export name length {} exceeds the {} bytes of data after it",
                            *name_len, in.left());
  }
  std::optional<uint16_t> count = in.U16();
  if (!count) {
    return Status::Protocol("no 2-byte information request count after the {}-byte name",
                            *name_len);
  }
  if (in.left() != size_t{*count} * 2) {
    return Status::Protocol("{} information requests need {} bytes, the data has {}", *count,
                            size_t{*count} * 2, in.left());
  }
  InfoRequest req;
  req.name = *name;
  for (uint16_t i = 0; i < *count; ++i) {
    uint16_t type = *in.U16();
    // Other types (NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE are always sent, unknown ones are
    // ignored as the document asks).
    if (type == kInfoName) req.want_name = true;
    if (type == kInfoDescription) req.want_description = true;
  }
  return req;
}

// NBD_OPT_{LIST,SET}_META_CONTEXT data: u32 name length, name, u32 count, count x (u32 length,
// query).
struct MetaRequest {
  std::string_view name;
  std::vector<std::string_view> queries;
};

Result<MetaRequest> ParseMetaRequest(std::span<const std::byte> data) {
  Cursor in(data);
  std::optional<uint32_t> name_len = in.U32();
  if (!name_len) {
    return Status::Protocol("{} bytes of data cannot hold the 4-byte name length", data.size());
  }
  if (*name_len > kMaxString) {
    return Status::Protocol("export name length {} exceeds the limit of {} bytes", *name_len,
                            kMaxString);
  }
  std::optional<std::string_view> name = in.Text(*name_len);
  if (!name) {
    return Status::Protocol("export name length {} exceeds the {} bytes of data after it",
                            *name_len, in.left());
  }
  std::optional<uint32_t> count = in.U32();
  if (!count) {
    return Status::Protocol("no 4-byte query count after the {}-byte name", *name_len);
  }
  MetaRequest req;
  req.name = *name;
  // Each query takes at least 4 bytes, so a count larger than the data fails within the data.
  for (uint32_t i = 0; i < *count; ++i) {
    std::optional<uint32_t> len = in.U32();
    if (!len) {
      return Status::Protocol("query {} of {}: the data ends before its 4-byte length", i + 1,
                              *count);
    }
    if (*len > kMaxString) {
      return Status::Protocol("query {} of {}: length {} exceeds the limit of {} bytes", i + 1,
                              *count, *len, kMaxString);
    }
    std::optional<std::string_view> query = in.Text(*len);
    if (!query) {
      return Status::Protocol("query {} of {}: length {} exceeds the {} bytes of data after it",
                              i + 1, *count, *len, in.left());
    }
    req.queries.push_back(*query);
  }
  if (in.left() != 0) {
    return Status::Protocol("{} bytes of data after the last of {} queries", in.left(), *count);
  }
  return req;
}

// NBD_OPT_LIST_META_CONTEXT: the queries that list base:allocation ("base:" is the namespace's
// wildcard).
bool ListsBaseAllocation(std::string_view query) {
  return query == kBaseAllocation || query == "base:";
}

}  // namespace

// ---- Names and errno -------------------------------------------------------------------------

std::string_view CommandName(uint16_t type) {
  switch (static_cast<Command>(type)) {
    case Command::kRead:
      return "NBD_CMD_READ";
    case Command::kWrite:
      return "NBD_CMD_WRITE";
    case Command::kDisc:
      return "NBD_CMD_DISC";
    case Command::kFlush:
      return "NBD_CMD_FLUSH";
    case Command::kTrim:
      return "NBD_CMD_TRIM";
    case Command::kCache:
      return "NBD_CMD_CACHE";
    case Command::kWriteZeroes:
      return "NBD_CMD_WRITE_ZEROES";
    case Command::kBlockStatus:
      return "NBD_CMD_BLOCK_STATUS";
  }
  return "unknown NBD command";
}

uint32_t ErrnoToNbd(int err) {
  // Either sign: a positive errno, or a negated one as io_uring reports it.
  if (err < 0 && err != INT_MIN) err = -err;
  switch (err) {
    case EPERM:
      return kEperm;
    case EIO:
      return kEio;
    case ENOMEM:
      return kEnomem;
    case EINVAL:
      return kEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kEnospc;
    case EOVERFLOW:
      return kEoverflow;
    case ENOTSUP:
      return kEnotsup;
#if EOPNOTSUPP != ENOTSUP
    case EOPNOTSUPP:
      return kEnotsup;
#endif
    case ESHUTDOWN:
      return kEshutdown;
    default:
      return kEio;
  }
}

// ---- Handshake -------------------------------------------------------------------------------

ServerHandshake::ServerHandshake(ExportInfo export_info) : export_(std::move(export_info)) {}

std::array<std::byte, kGreetingSize> ServerHandshake::Greeting() const {
  std::array<std::byte, kGreetingSize> g{};
  StoreBe(g.data(), kMagic, 8);
  StoreBe(g.data() + 8, kOptsMagic, 8);
  StoreBe(g.data() + 16, kFlagFixedNewstyle | kFlagNoZeroes, 2);
  return g;
}

size_t ServerHandshake::Want() const {
  switch (expect_) {
    case Expect::kClientFlags:
      return kClientFlagsSize;
    case Expect::kOptionHeader:
      return kOptionHeaderSize;
    case Expect::kOptionData:
      return option_len_;
    case Expect::kSkipData:
      return std::min<size_t>(skip_left_, kMaxOptionData);
    case Expect::kDone:
      return 0;
  }
  return 0;
}

HandshakeStep ServerHandshake::Feed(std::span<const std::byte> bytes) {
  if (expect_ == Expect::kDone) {
    return Close({}, "NBD handshake: Feed called after the handshake ended (a caller bug)");
  }
  if (size_t want = Want(); bytes.size() != want) {
    expect_ = Expect::kDone;
    return Close({}, fmt::format("NBD handshake: fed {} bytes where {} were wanted (a caller bug)",
                                 bytes.size(), want));
  }
  HandshakeStep step;
  switch (expect_) {
    case Expect::kClientFlags: {
      auto flags = static_cast<uint32_t>(LoadBe(bytes.data(), 4));
      if ((flags & ~kKnownClientFlags) != 0) {
        step = Close({}, fmt::format("NBD handshake: client flags 0x{:08x} carry unknown bits "
                                     "0x{:08x} (only FIXED_NEWSTYLE and NO_ZEROES exist)",
                                     flags, flags & ~kKnownClientFlags));
        break;
      }
      no_zeroes_ = (flags & kClientNoZeroes) != 0;
      expect_ = Expect::kOptionHeader;
      break;
    }
    case Expect::kOptionHeader: {
      uint64_t magic = LoadBe(bytes.data(), 8);
      option_ = static_cast<uint32_t>(LoadBe(bytes.data() + 8, 4));
      option_len_ = static_cast<uint32_t>(LoadBe(bytes.data() + 12, 4));
      if (magic != kOptsMagic) {
        step = Close({}, fmt::format("NBD handshake: option magic 0x{:016x} is not IHAVEOPT "
                                     "(0x{:016x}): not an NBD client, or the stream is out of step",
                                     magic, kOptsMagic));
        break;
      }
      if (option_len_ == 0) {
        step = OnOption(option_, {});
        break;
      }
      if (option_len_ <= kMaxOptionData) {
        expect_ = Expect::kOptionData;
        break;
      }
      if (option_ == static_cast<uint32_t>(Option::kExportName)) {
        step = Close({}, fmt::format("NBD handshake: NBD_OPT_EXPORT_NAME with a {}-byte name, "
                                     "longer than any export name; it cannot be refused with a "
                                     "reply, closing",
                                     option_len_));
        break;
      }
      if (option_ == static_cast<uint32_t>(Option::kAbort)) {
        step = OnOption(option_, {});  // its data is ignored, and the connection closes
        break;
      }
      skip_left_ = option_len_;
      expect_ = Expect::kSkipData;
      break;
    }
    case Expect::kOptionData:
      expect_ = Expect::kOptionHeader;
      step = OnOption(option_, bytes);
      break;
    case Expect::kSkipData: {
      skip_left_ -= static_cast<uint32_t>(bytes.size());
      if (skip_left_ > 0) break;
      expect_ = Expect::kOptionHeader;
      Replies out(option_);
      out.Error(kRepErrTooBig, fmt::format("{} data of {} bytes exceeds this server's limit of {}",
                                           OptionName(option_), option_len_, kMaxOptionData));
      step = More(out.Take());
      break;
    }
    case Expect::kDone:
      break;  // handled above
  }
  if (step.state != HandshakeState::kMore) expect_ = Expect::kDone;
  return step;
}

HandshakeStep ServerHandshake::OnOption(uint32_t option, std::span<const std::byte> data) {
  Replies out(option);
  const std::string name = OptionName(option);
  switch (static_cast<Option>(option)) {
    case Option::kExportName: {
      std::string_view wanted = AsText(data);
      if (!NamesExport(export_, wanted)) {
        return Close({}, fmt::format("NBD handshake: NBD_OPT_EXPORT_NAME asks for export '{}', "
                                     "this server exports '{}' (or \"\"); it cannot be refused "
                                     "with a reply, closing",
                                     Printable(wanted), Printable(export_.name)));
      }
      negotiated_.transmission_flags = ServedFlags(export_, negotiated_.structured_replies);
      Bytes reply;
      reply.U64(export_.size).U16(negotiated_.transmission_flags);
      if (!no_zeroes_) reply.Zeroes(kExportNameZeroes);
      return {HandshakeState::kTransmission, reply.Take(), {}};
    }
    case Option::kAbort:
      // The document asks the server to ignore any data an ABORT carries.
      out.Ack();
      return Close(out.Take(), "client sent NBD_OPT_ABORT: it ended the handshake");
    case Option::kList:
      if (!data.empty()) {
        out.Error(kRepErrInvalid,
                  fmt::format("{} takes no data, {} bytes were sent", name, data.size()));
        break;
      }
      out.Add(kRepServer,
              Bytes().U32(static_cast<uint32_t>(export_.name.size())).Text(export_.name));
      out.Ack();
      break;
    case Option::kStartTls:
      out.Error(kRepErrPolicy, "TLS is not offered by this server; go on without it");
      break;
    case Option::kInfo:
    case Option::kGo: {
      Result<InfoRequest> req = ParseInfoRequest(data);
      if (!req.ok()) {
        out.Error(kRepErrInvalid, fmt::format("{}: {}", name, req.status().message()));
        break;
      }
      if (!NamesExport(export_, req->name)) {
        out.Error(kRepErrUnknown, fmt::format("{}: no export named '{}' (this server exports '{}')",
                                              name, Printable(req->name), Printable(export_.name)));
        break;
      }
      uint16_t flags = ServedFlags(export_, negotiated_.structured_replies);
      out.Add(kRepInfo, Bytes().U16(kInfoExport).U64(export_.size).U16(flags));
      out.Add(kRepInfo, Bytes()
                            .U16(kInfoBlockSize)
                            .U32(export_.min_block)
                            .U32(export_.preferred_block)
                            .U32(export_.max_payload));
      if (req->want_name) out.Add(kRepInfo, Bytes().U16(kInfoName).Text(export_.name));
      if (req->want_description && !export_.description.empty()) {
        out.Add(kRepInfo, Bytes().U16(kInfoDescription).Text(export_.description));
      }
      out.Ack();
      if (static_cast<Option>(option) == Option::kGo) {
        negotiated_.transmission_flags = flags;
        return {HandshakeState::kTransmission, out.Take(), {}};
      }
      break;
    }
    case Option::kStructuredReply:
      if (!data.empty()) {
        out.Error(kRepErrInvalid,
                  fmt::format("{} takes no data, {} bytes were sent", name, data.size()));
        break;
      }
      negotiated_.structured_replies = true;
      out.Ack();
      break;
    case Option::kListMetaContext:
    case Option::kSetMetaContext: {
      const bool set = static_cast<Option>(option) == Option::kSetMetaContext;
      // SET replaces the selection, also when it fails.
      if (set) negotiated_.base_allocation = false;
      if (!negotiated_.structured_replies) {
        out.Error(kRepErrInvalid, fmt::format("{} needs NBD_OPT_STRUCTURED_REPLY first", name));
        break;
      }
      Result<MetaRequest> req = ParseMetaRequest(data);
      if (!req.ok()) {
        out.Error(kRepErrInvalid, fmt::format("{}: {}", name, req.status().message()));
        break;
      }
      if (!NamesExport(export_, req->name)) {
        out.Error(kRepErrUnknown, fmt::format("{}: no export named '{}' (this server exports '{}')",
                                              name, Printable(req->name), Printable(export_.name)));
        break;
      }
      const auto& q = req->queries;
      if (set) {
        negotiated_.base_allocation = std::find(q.begin(), q.end(), kBaseAllocation) != q.end();
        if (negotiated_.base_allocation) {
          out.Add(kRepMetaContext, Bytes().U32(kBaseAllocationId).Text(kBaseAllocation));
        }
      } else if (q.empty() || std::any_of(q.begin(), q.end(), ListsBaseAllocation)) {
        // The document reserves the id in list replies: 0.
        out.Add(kRepMetaContext, Bytes().U32(0).Text(kBaseAllocation));
      }
      out.Ack();
      break;
    }
    default:
      out.Error(kRepErrUnsup, fmt::format("{} is not supported by this server", name));
      break;
  }
  return More(out.Take());
}

// ---- Transmission ----------------------------------------------------------------------------

Result<Request> DecodeRequest(std::span<const std::byte, kRequestSize> raw) {
  auto magic = static_cast<uint32_t>(LoadBe(raw.data(), 4));
  if (magic != kRequestMagic) {
    return Status::Protocol(
        "NBD request magic 0x{:08x} is not 0x{:08x}: the stream is out of step (a write payload "
        "not consumed?) or the peer is not an NBD client",
        magic, kRequestMagic);
  }
  Request r;
  r.flags = static_cast<uint16_t>(LoadBe(raw.data() + 4, 2));
  r.type = static_cast<uint16_t>(LoadBe(raw.data() + 6, 2));
  r.cookie = LoadBe(raw.data() + 8, 8);
  r.offset = LoadBe(raw.data() + 16, 8);
  r.length = static_cast<uint32_t>(LoadBe(raw.data() + 24, 4));
  return r;
}

RequestCheck CheckRequest(const Request& r, const ExportInfo& e, const Negotiated& n) {
  auto refuse = [&r](uint32_t error, std::string_view rule) {
    RequestCheck c;
    c.error = error;
    c.message =
        fmt::format("{} at offset {} length {}: {}", CommandName(r.type), r.offset, r.length, rule);
    return c;
  };
  if (r.type > static_cast<uint16_t>(Command::kBlockStatus)) {
    RequestCheck c;
    c.error = kEinval;
    c.message = fmt::format("NBD command type {} at offset {} length {}: unknown command", r.type,
                            r.offset, r.length);
    return c;
  }
  const auto cmd = static_cast<Command>(r.type);
  const uint16_t ef = e.transmission_flags;
  // A WRITE whose payload is larger than max_payload is not read: the stream cannot go on.
  if (cmd == Command::kWrite && r.length > e.max_payload) {
    RequestCheck c = refuse(kEoverflow, fmt::format("payload exceeds the maximum payload size {}; "
                                                    "it is not read, the connection closes",
                                                    e.max_payload));
    c.fatal = true;
    return c;
  }

  // Flags: known, valid for the command, allowed by the export and the handshake.
  if (uint16_t unknown = r.flags & static_cast<uint16_t>(~kKnownCommandFlags); unknown != 0) {
    return refuse(kEinval, fmt::format("unknown command flag bits 0x{:04x}", unknown));
  }
  if ((r.flags & kCmdFlagFua) && !(ef & kFlagSendFua)) {
    return refuse(kEinval, "NBD_CMD_FLAG_FUA set, but the export does not offer FUA");
  }
  if ((r.flags & kCmdFlagNoHole) && cmd != Command::kWriteZeroes) {
    return refuse(kEinval, "NBD_CMD_FLAG_NO_HOLE is valid only on NBD_CMD_WRITE_ZEROES");
  }
  if ((r.flags & kCmdFlagFastZero) && cmd != Command::kWriteZeroes) {
    return refuse(kEinval, "NBD_CMD_FLAG_FAST_ZERO is valid only on NBD_CMD_WRITE_ZEROES");
  }
  if ((r.flags & kCmdFlagFastZero) && !(ef & kFlagSendFastZero)) {
    return refuse(kEinval, "NBD_CMD_FLAG_FAST_ZERO set, but the export does not offer fast zero");
  }
  if ((r.flags & kCmdFlagDf) && cmd != Command::kRead) {
    return refuse(kEinval, "NBD_CMD_FLAG_DF is valid only on NBD_CMD_READ");
  }
  if ((r.flags & kCmdFlagDf) && !n.structured_replies) {
    return refuse(kEinval, "NBD_CMD_FLAG_DF set without structured replies (no NBD_FLAG_SEND_DF)");
  }
  if ((r.flags & kCmdFlagReqOne) && cmd != Command::kBlockStatus) {
    return refuse(kEinval, "NBD_CMD_FLAG_REQ_ONE is valid only on NBD_CMD_BLOCK_STATUS");
  }

  // The command: offered by the export (and the handshake), allowed on it.
  if (cmd == Command::kFlush && !(ef & kFlagSendFlush)) {
    return refuse(kEinval, "the export does not offer flush");
  }
  if (cmd == Command::kTrim && !(ef & kFlagSendTrim)) {
    return refuse(kEinval, "the export does not offer trim");
  }
  if (cmd == Command::kWriteZeroes && !(ef & kFlagSendWriteZeroes)) {
    return refuse(kEinval, "the export does not offer write zeroes");
  }
  if (cmd == Command::kBlockStatus && !n.base_allocation) {
    return refuse(kEinval, "base:allocation was not selected with NBD_OPT_SET_META_CONTEXT");
  }
  const bool writes =
      cmd == Command::kWrite || cmd == Command::kTrim || cmd == Command::kWriteZeroes;
  if (writes && (ef & kFlagReadOnly)) return refuse(kEperm, "the export is read-only");

  // Offset and length.
  if (cmd == Command::kDisc || cmd == Command::kFlush) {
    if (r.offset != 0 || r.length != 0) return refuse(kEinval, "offset and length must be 0");
    return {};
  }
  if (r.length == 0) return refuse(kEinval, "length 0 is refused");
  const uint32_t align = std::max<uint32_t>(e.min_block, 1);
  if (r.offset % align != 0 || r.length % align != 0) {
    return refuse(kEinval, fmt::format("offset and length must be multiples of the minimum block "
                                       "size {}",
                                       align));
  }
  if (r.offset > e.size || r.length > e.size - r.offset) {
    const bool adds_data = cmd == Command::kWrite || cmd == Command::kWriteZeroes;
    return refuse(adds_data ? kEnospc : kEinval,
                  fmt::format("the range ends past the end of the export ({} bytes)", e.size));
  }
  if (cmd == Command::kRead && r.length > e.max_payload) {
    return refuse(kEinval,
                  fmt::format("length exceeds the maximum payload size {}", e.max_payload));
  }
  return {};
}

std::array<std::byte, kSimpleReplySize> EncodeSimpleReply(uint32_t error, uint64_t cookie) {
  std::array<std::byte, kSimpleReplySize> out{};
  StoreBe(out.data(), kSimpleReplyMagic, 4);
  StoreBe(out.data() + 4, error, 4);
  StoreBe(out.data() + 8, cookie, 8);
  return out;
}

std::array<std::byte, kStructuredHeaderSize> EncodeStructuredHeader(uint16_t flags, uint16_t type,
                                                                    uint64_t cookie,
                                                                    uint32_t length) {
  std::array<std::byte, kStructuredHeaderSize> out{};
  StoreBe(out.data(), kStructuredReplyMagic, 4);
  StoreBe(out.data() + 4, flags, 2);
  StoreBe(out.data() + 6, type, 2);
  StoreBe(out.data() + 8, cookie, 8);
  StoreBe(out.data() + 16, length, 4);
  return out;
}

std::array<std::byte, kStructuredHeaderSize + 8> EncodeOffsetDataHeader(uint16_t flags,
                                                                        uint64_t cookie,
                                                                        uint64_t offset,
                                                                        uint32_t data_length) {
  std::array<std::byte, kStructuredHeaderSize + 8> out{};
  auto header = EncodeStructuredHeader(flags, kReplyTypeOffsetData, cookie, 8 + data_length);
  std::copy(header.begin(), header.end(), out.begin());
  StoreBe(out.data() + kStructuredHeaderSize, offset, 8);
  return out;
}

std::vector<std::byte> EncodeErrorChunk(uint64_t cookie, uint32_t error, std::string_view message) {
  std::string_view text = CutUtf8(message, kMaxString);
  auto header = EncodeStructuredHeader(kReplyFlagDone, kReplyTypeError, cookie,
                                       static_cast<uint32_t>(6 + text.size()));
  Bytes out;
  out.Raw(header).U32(error).U16(static_cast<uint16_t>(text.size())).Text(text);
  return out.Take();
}

std::vector<std::byte> EncodeBlockStatus(uint64_t cookie, std::span<const Extent> extents) {
  auto header = EncodeStructuredHeader(kReplyFlagDone, kReplyTypeBlockStatus, cookie,
                                       static_cast<uint32_t>(4 + 8 * extents.size()));
  Bytes out;
  out.Raw(header).U32(kBaseAllocationId);
  for (const Extent& x : extents) out.U32(x.length).U32(x.flags);
  return out.Take();
}

}  // namespace blkmirror::proto::nbd
