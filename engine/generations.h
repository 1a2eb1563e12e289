// Generations: the history of a volume's data on one node, as DRBD's data generation UUIDs.
//
// A generation is a random 64-bit id naming one stretch of a volume's history. A node's disk
// carries its `current` generation, the ones before it (`history`, newest first) and whether it
// holds a whole image of `current` (`consistent`: false while it is the target of a resync). A
// new generation starts when a primary writes while a peer is not in sync with it, and at every
// promotion; a replica brought in sync takes its primary's current generation and history.
//
// So when two nodes meet, their generations say which one has the other's data:
//   same          the same current generation: at most what the dirty bitmap says differs
//   peer behind   the peer's current is in my history: I have everything it has, and more
//   peer ahead    my current is in the peer's history
//   split brain   neither, but they share a generation: both wrote since they last agreed
//   unrelated     no generation in common (two different volumes' data)
// A node with no generation (0: a new replica, data of unknown history) is behind any other.
//
// Thread safety: values and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "proto/frame.h"

namespace blkmirror::engine {

struct Generations {
  uint64_t current = 0;
  std::vector<uint64_t> history;  // newest first, at most proto::kMaxHistory
  bool consistent = false;

  // `id` becomes current; the old current (if any) goes first in the history, the oldest leaves.
  void StartNew(uint64_t id);
  // Takes `other`'s current and history as its own, consistent (a replica brought in sync).
  void Adopt(const Generations& other);
  // `g` is current or in the history.
  bool Knows(uint64_t g) const;

  proto::Generation ToWire() const;
  static Generations FromWire(const proto::Generation& g, bool consistent);
  bool operator==(const Generations&) const = default;
};

enum class Lineage : uint8_t { kSame, kPeerBehind, kPeerAhead, kSplitBrain, kUnrelated };
std::string_view LineageName(Lineage lineage);

Lineage Compare(const Generations& mine, const Generations& peer);

// A new random generation id (never 0).
uint64_t NewGenerationId();
// 16 hex digits; "none" for 0.
std::string GenerationHex(uint64_t g);
// "<current> (history a, b)"
std::string Describe(const Generations& g);

}  // namespace blkmirror::engine
