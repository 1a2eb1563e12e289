#include "engine/resync_start.h"

namespace blkmirror::engine {

ResyncStart ChooseResyncStart(const ReplicaHistory& history, const PushIntent& intent) {
  // A comparison is authoritative for what it saw, whatever the bitmap says.
  if (history.compared) return ResyncStart::kCompared;
  if (intent.repair && !history.bitmap_existed) return ResyncStart::kRepairOnly;
  if (intent.full) return ResyncStart::kFull;
  if (!history.bitmap_existed) return ResyncStart::kFirst;
  if (!history.source_unchanged) return ResyncStart::kSourceChanged;
  return ResyncStart::kResume;
}

void ApplyResyncStart(ResyncStart start, std::span<const DiffRange> differing,
                      DirtyBitmap& bitmap) {
  switch (start) {
    case ResyncStart::kCompared:
      bitmap.ClearAll();
      for (const DiffRange& d : differing) bitmap.SetRange(d.offset, d.length);
      return;
    case ResyncStart::kRepairOnly:
      bitmap.ClearAll();
      return;
    case ResyncStart::kFull:
    case ResyncStart::kFirst:
    case ResyncStart::kSourceChanged:
      bitmap.SetAll();
      return;
    case ResyncStart::kResume:
      return;
  }
}

}  // namespace blkmirror::engine
