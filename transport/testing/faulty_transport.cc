#include "transport/testing/faulty_transport.h"

#include <charconv>
#include <vector>

#include <spdlog/spdlog.h>

namespace blkmirror::transport {
namespace {

constexpr std::string_view kKnownFaults =
    "known: flip-rx-data:every=N[,tries=K], flip-rx-data:offset=O, drop-tx-acks";

std::optional<uint64_t> ParseNumber(std::string_view v) {
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || p != v.data() + v.size() || v.empty()) return std::nullopt;
  return n;
}

}  // namespace

Result<FaultSpec> FaultSpec::Parse(std::string_view text) {
  FaultSpec spec;
  if (text == "drop-tx-acks") {
    spec.drop_tx_acks = true;
    return spec;
  }
  constexpr std::string_view kFlip = "flip-rx-data:";
  if (text.substr(0, kFlip.size()) != kFlip) {
    return Status::Invalid("unknown fault '{}' ({})", text, kKnownFaults);
  }
  std::string_view args = text.substr(kFlip.size());
  bool tries_given = false;
  while (!args.empty()) {
    size_t comma = args.find(',');
    std::string_view arg = args.substr(0, comma);
    args = comma == std::string_view::npos ? std::string_view() : args.substr(comma + 1);
    size_t eq = arg.find('=');
    std::string_view key = arg.substr(0, eq);
    auto n = eq == std::string_view::npos ? std::nullopt : ParseNumber(arg.substr(eq + 1));
    if (!n) return Status::Invalid("bad fault argument '{}' in '{}' ({})", arg, text, kKnownFaults);
    if (key == "every" && *n >= 1 && *n <= UINT32_MAX) {
      spec.flip_every = static_cast<uint32_t>(*n);
    } else if (key == "tries" && *n >= 1 && *n <= 64) {
      spec.flip_tries = static_cast<uint32_t>(*n);
      tries_given = true;
    } else if (key == "offset") {
      spec.flip_offset = *n;
    } else {
      return Status::Invalid("bad fault argument '{}' in '{}' ({}; every >= 1, 1 <= tries <= 64)",
                             arg, text, kKnownFaults);
    }
  }
  if ((spec.flip_every > 0) == spec.flip_offset.has_value()) {
    return Status::Invalid("fault '{}': give exactly one of every=N and offset=O", text);
  }
  if (tries_given && spec.flip_every == 0) {
    return Status::Invalid("fault '{}': tries=K goes with every=N", text);
  }
  return spec;
}

Status FaultyTransport::Post(std::span<const WorkItem> items) {
  if (!spec_.drop_tx_acks) return inner_->Post(items);
  std::vector<WorkItem> kept;  // test code: a copy per Post is fine here
  for (const WorkItem& item : items) {
    auto prefix = proto::DecodePrefix(item.header);
    if (prefix.ok() && prefix->type == proto::FrameType::kAck) continue;
    kept.push_back(item);
  }
  return kept.empty() ? Status::Ok() : inner_->Post(kept);
}

bool FaultyTransport::ShouldFlip(ConnId conn, const proto::Frame& frame) {
  const auto& d = std::get<proto::Data>(frame.body);
  if (spec_.flip_offset) return *spec_.flip_offset == d.offset;
  if (d.seq % spec_.flip_every != spec_.flip_every - 1) return false;
  auto key = std::make_pair(conn, d.seq);
  if (!(frame.flags & proto::kDataResend)) {
    tries_[key] = 1;  // its first transmission
    return true;
  }
  auto it = tries_.find(key);
  if (it == tries_.end()) return false;
  if (it->second < spec_.flip_tries) {
    ++it->second;
    return true;
  }
  tries_.erase(it);  // this transmission arrives intact: the block is done with
  return false;
}

size_t FaultyTransport::Poll(std::span<Completion> out) {
  size_t n = inner_->Poll(out);
  if (spec_.drop_tx_acks) return n;
  for (size_t i = 0; i < n; ++i) {
    Completion& c = out[i];
    if (c.kind == CompletionKind::kClosed) {
      std::erase_if(tries_, [&c](const auto& e) { return e.first.first == c.conn; });
      continue;
    }
    if (c.kind != CompletionKind::kRecv || !c.data) continue;
    auto frame = proto::Decode(c.header);
    if (!frame.ok() || frame->type() != proto::FrameType::kData) continue;
    const auto& d = std::get<proto::Data>(frame->body);
    if (d.length == 0 || !ShouldFlip(c.conn, *frame)) continue;
    // A different bit each time, anywhere in the block.
    uint64_t bit = (injected_ * 2654435761u + d.seq * 40503u) % (uint64_t{d.length} * 8);
    c.data.data()[bit / 8] ^= std::byte{static_cast<uint8_t>(1u << (bit % 8))};
    ++injected_;
    spdlog::warn("TEST FAULT: flipped bit {} of the block at offset {} (seq {}) received from {}",
                 bit, d.offset, d.seq, inner_->PeerName(c.conn));
  }
  return n;
}

}  // namespace blkmirror::transport
