#include "cli/values.h"

#include "common/units.h"

namespace blkmirror::cli {

Result<proto::AckLevel> ParseAck(std::string_view text) {
  if (text == "sent") return proto::AckLevel::kSent;
  if (text == "received") return proto::AckLevel::kReceived;
  if (text == "durable") return proto::AckLevel::kDurable;
  return Status::Invalid("'{}': expected sent, received or durable", text);
}

Result<uint32_t> ParseBlockSize(std::string_view text, std::string_view flag) {
  auto bytes = ParseSize(text);
  if (!bytes.ok()) return bytes.status().Context(flag);
  if (!proto::ValidBlockSize(*bytes)) {
    return Status::Invalid("{} {}: must be a multiple of 4K between 4K and 64M", flag, text);
  }
  return static_cast<uint32_t>(*bytes);
}

}  // namespace blkmirror::cli
