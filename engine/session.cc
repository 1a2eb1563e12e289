#include "engine/session.h"

#include <algorithm>

namespace blkmirror::engine {

transport::WorkItem ControlItem(transport::ConnId conn, const proto::Frame& frame,
                                std::span<const std::byte> payload) {
  transport::WorkItem item;
  item.conn = conn;
  proto::Frame f = frame;
  f.payload_len = static_cast<uint32_t>(payload.size());
  item.header = proto::Encode(f);
  item.control = payload;
  return item;
}

Status StatusFromError(const proto::Error& error, std::span<const std::byte> text,
                       const std::string& peer) {
  std::string msg(reinterpret_cast<const char*>(text.data()), text.size());
  // Keep only printable text: the peer is not trusted to send clean strings.
  std::replace_if(msg.begin(), msg.end(), [](char c) { return c < 0x20 || c == 0x7f; }, '?');
  auto code = static_cast<ErrorCode>(error.code);
  if (error.code == 0) code = ErrorCode::kRefused;
  return Status::Error(code, fmt::format("{} reported: {}", peer, msg));
}

Status CheckHelloOk(const proto::HelloOk& ok, const proto::Hello& hello,
                    const std::string& peer) {
  if (ok.version < hello.min_version || ok.version > hello.max_version) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("{} chose protocol version {}, outside our {}..{}", peer,
                                     ok.version, hello.min_version, hello.max_version));
  }
  if (hello.kind == proto::SessionKind::kWrite && ok.max_block_size < hello.block_size) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("{} accepts blocks up to {} bytes; block size {} is too big",
                                     peer, ok.max_block_size, hello.block_size));
  }
  if (hello.kind == proto::SessionKind::kWrite && ok.capacity < hello.volume_size) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("{} can hold {} bytes; the volume has {}", peer, ok.capacity,
                                     hello.volume_size));
  }
  return Status::Ok();
}

bool PostError(transport::Transport& t, transport::ConnId conn, const Status& status,
               uint64_t tag) {
  std::string text = status.message().substr(0, proto::kMaxErrorText);
  proto::Frame f;
  f.body = proto::Error{static_cast<uint32_t>(status.code())};
  auto item = ControlItem(conn, f, std::as_bytes(std::span(text.data(), text.size())));
  item.signal = true;
  item.tag = tag;
  return t.Post(std::span(&item, 1)).ok();
}

}  // namespace blkmirror::engine
