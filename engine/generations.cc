#include "engine/generations.h"

#include <algorithm>

#include <fmt/format.h>
#include <sodium.h>

namespace blkmirror::engine {

void Generations::StartNew(uint64_t id) {
  if (current != 0) history.insert(history.begin(), current);
  if (history.size() > proto::kMaxHistory) history.resize(proto::kMaxHistory);
  current = id;
}

void Generations::Adopt(const Generations& other) {
  current = other.current;
  history = other.history;
  consistent = true;
}

bool Generations::Knows(uint64_t g) const {
  return g != 0 && (g == current || std::find(history.begin(), history.end(), g) != history.end());
}

proto::Generation Generations::ToWire() const {
  proto::Generation g;
  g.current = current;
  g.count = static_cast<uint8_t>(std::min(history.size(), proto::kMaxHistory));
  for (size_t i = 0; i < g.count; ++i) g.history[i] = history[i];
  return g;
}

Generations Generations::FromWire(const proto::Generation& g, bool consistent) {
  Generations out;
  out.current = g.current;
  out.history.assign(g.history.begin(), g.history.begin() + g.count);
  out.consistent = consistent;
  return out;
}

std::string_view LineageName(Lineage lineage) {
  switch (lineage) {
    case Lineage::kSame: return "same";
    case Lineage::kPeerBehind: return "peer behind";
    case Lineage::kPeerAhead: return "peer ahead";
    case Lineage::kSplitBrain: return "split brain";
    case Lineage::kUnrelated: return "unrelated";
  }
  return "unknown";
}

Lineage Compare(const Generations& mine, const Generations& peer) {
  if (peer.current == 0) return mine.current == 0 ? Lineage::kSame : Lineage::kPeerBehind;
  if (mine.current == 0) return Lineage::kPeerAhead;
  if (mine.current == peer.current) return Lineage::kSame;
  if (mine.Knows(peer.current)) return Lineage::kPeerBehind;
  if (peer.Knows(mine.current)) return Lineage::kPeerAhead;
  for (uint64_t g : mine.history) {
    if (peer.Knows(g)) return Lineage::kSplitBrain;
  }
  return Lineage::kUnrelated;
}

uint64_t NewGenerationId() {
  uint64_t g = 0;
  while (g == 0) randombytes_buf(&g, sizeof g);
  return g;
}

std::string GenerationHex(uint64_t g) { return g == 0 ? "none" : fmt::format("{:016x}", g); }

std::string Describe(const Generations& g) {
  std::string s = GenerationHex(g.current);
  if (!g.history.empty()) {
    s += " (history";
    for (size_t i = 0; i < g.history.size(); ++i) s += (i ? ", " : " ") + GenerationHex(g.history[i]);
    s += ")";
  }
  return s;
}

}  // namespace blkmirror::engine
