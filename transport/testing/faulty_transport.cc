#include "transport/testing/faulty_transport.h"

#include <charconv>

#include <spdlog/spdlog.h>

namespace blkmirror::transport {

Result<FaultSpec> FaultSpec::Parse(std::string_view text) {
  FaultSpec spec;
  constexpr std::string_view kFlip = "flip-rx-data:";
  if (text.substr(0, kFlip.size()) != kFlip) {
    return Status::Invalid("unknown fault '{}' (known: flip-rx-data:every=N, "
                           "flip-rx-data:offset=O)",
                           text);
  }
  std::string_view arg = text.substr(kFlip.size());
  auto number = [&](std::string_view key) -> std::optional<uint64_t> {
    if (arg.substr(0, key.size()) != key) return std::nullopt;
    std::string_view v = arg.substr(key.size());
    uint64_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || p != v.data() + v.size()) return std::nullopt;
    return n;
  };
  if (auto n = number("every="); n && *n >= 1 && *n <= UINT32_MAX) {
    spec.flip_rx_data_every = static_cast<uint32_t>(*n);
  } else if (auto o = number("offset=")) {
    spec.flip_rx_data_offset = *o;
  } else {
    return Status::Invalid("bad fault argument in '{}'", text);
  }
  return spec;
}

size_t FaultyTransport::Poll(std::span<Completion> out) {
  size_t n = inner_->Poll(out);
  for (size_t i = 0; i < n; ++i) {
    Completion& c = out[i];
    if (c.kind != CompletionKind::kRecv || !c.data) continue;
    auto frame = proto::Decode(c.header);
    if (!frame.ok() || frame->type() != proto::FrameType::kData) continue;
    const auto& d = std::get<proto::Data>(frame->body);
    ++data_frames_;
    bool flip = (spec_.flip_rx_data_every > 0 && data_frames_ % spec_.flip_rx_data_every == 0) ||
                (spec_.flip_rx_data_offset && *spec_.flip_rx_data_offset == d.offset);
    if (!flip || d.length == 0) continue;
    // A different bit each time, anywhere in the block.
    uint64_t bit = (injected_ * 2654435761u + d.seq * 40503u) % (uint64_t{d.length} * 8);
    c.data.data()[bit / 8] ^= std::byte{static_cast<uint8_t>(1u << (bit % 8))};
    ++injected_;
    spdlog::warn("TEST FAULT: flipped bit {} of the block at offset {} received from {}", bit,
                 d.offset, inner_->PeerName(c.conn));
  }
  return n;
}

}  // namespace blkmirror::transport
