// Where a push starts with one replica: how that replica's dirty bitmap is set before anything
// is sent to it, from what the primary knows of it (a checksum comparison of this run, a bitmap
// from an earlier push and whether the source changed since, what the command asked for).
//
// Thread safety: none (plain functions over one bitmap).
#pragma once

#include <span>

#include "engine/dirty_bitmap.h"
#include "engine/verifier.h"

namespace blkmirror::engine {

enum class ResyncStart {
  kCompared,       // this run compared checksums with it: dirty exactly where they differ
  kRepairOnly,     // verify --repair and no bitmap yet: only what verify found (added after)
  kFull,           // --full: every block
  kFirst,          // no bitmap from an earlier push: every block
  kSourceChanged,  // the source changed since its bitmap was kept (outside blkmirror): the
                   // bitmap cannot say what changed, so every block
  kResume,         // its bitmap stands: what it says is dirty
};

// What the primary knows of one replica when a push starts.
struct ReplicaHistory {
  bool compared = false;          // --checksum-skip compared this very replica in this run
  bool bitmap_existed = false;    // a bitmap kept by an earlier push was found
  bool source_unchanged = false;  // the source's stamp is the one that bitmap was kept for
};

// What the command asked for beyond a plain push.
struct PushIntent {
  bool full = false;    // --full
  bool repair = false;  // verify --repair
};

ResyncStart ChooseResyncStart(const ReplicaHistory& history, const PushIntent& intent);

// Sets `bitmap` as `start` says; `differing` is what the comparison found (kCompared).
void ApplyResyncStart(ResyncStart start, std::span<const DiffRange> differing, DirtyBitmap& bitmap);

// The push goes on from what the replica holds rather than copying everything to it (push
// --json "resumed").
inline bool Resumes(ResyncStart start) {
  return start == ResyncStart::kCompared || start == ResyncStart::kResume;
}

}  // namespace blkmirror::engine
