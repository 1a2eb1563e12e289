#include <algorithm>
#include <charconv>

#include <spdlog/spdlog.h>

#include "transport/transport.h"

namespace blkmirror::transport {

Result<Endpoint> Endpoint::Parse(std::string_view text) {
  std::string_view host;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return Status::Invalid("bad address '{}': expected [IPv6]:PORT", text);
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return Status::Invalid("bad address '{}': expected HOST:PORT", text);
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  if (host.empty()) return Status::Invalid("bad address '{}': empty host", text);
  unsigned value = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || ptr != port.data() + port.size() || value > 65535) {
    return Status::Invalid("bad address '{}': port '{}' is not a number in 0..65535", text, port);
  }
  return Endpoint{std::string(host), static_cast<uint16_t>(value)};
}

Result<proto::Prefix> CheckWorkItem(const WorkItem& item) {
  ASSIGN_OR_RETURN(proto::Prefix prefix, proto::DecodePrefix(item.header));
  bool block = proto::CarriesBlockData(prefix.type);
  if (block && prefix.payload_len > 0 && item.data == nullptr) {
    return Status::Invalid("a Data frame of {} bytes without its payload buffer",
                           prefix.payload_len);
  }
  if (!block && prefix.payload_len != item.control.size()) {
    return Status::Invalid("{} frame says {} payload bytes, {} given",
                           proto::FrameTypeName(prefix.type), prefix.payload_len,
                           item.control.size());
  }
  return prefix;
}

Status UnexpectedData(const std::string& peer, bool accepting_side) {
  if (accepting_side) {
    return Status::Protocol("{}: Data frame before its session was admitted (no block buffer is "
                            "given before the handshake and key check)",
                            peer);
  }
  return Status::Protocol("{}: unexpected Data frame (Data goes from the primary, which "
                          "connects, to the replica only)",
                          peer);
}

Result<FallbackConnection> ConnectWithFallback(Transport& preferred, Transport* fallback,
                                               const Endpoint& peer,
                                               std::chrono::milliseconds timeout) {
  const auto first_timeout =
      fallback != nullptr ? std::min(timeout, kPreferredConnectTimeout) : timeout;
  auto conn = preferred.Connect(peer, first_timeout);
  if (conn.ok()) return FallbackConnection{&preferred, *conn, ""};
  if (fallback == nullptr) return conn.status();
  std::string reason = fmt::format("{}: {}", preferred.name(), conn.status().message());
  spdlog::info("{}: falling back to {} ({})", peer.ToString(), fallback->name(), reason);
  auto second = fallback->Connect(peer, timeout);
  if (!second.ok()) {
    return Status::Error(second.status().code(),
                         fmt::format("{} (and {})", second.status().message(), reason));
  }
  return FallbackConnection{fallback, *second, std::move(reason)};
}

std::string Endpoint::ToString() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

}  // namespace blkmirror::transport
