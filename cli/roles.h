// Roles of a node for a volume (DRBD's primary and secondary): what `promote` and `demote` do to
// the node's kept state (cli/meta.h NodeState), apart from the processes, so it can be tested.
//
// Promote: a replica becomes the primary; a new generation starts (its current goes into the
// history), so that the old primary, when it comes back, is known to be behind this one, or to
// have diverged if it wrote too. Refused (kDiverged) while a primary is connected to it or while
// its data is inconsistent (a resync to it was in progress), unless forced. Demote: a primary
// becomes a replica again, keeping its generations (the new primary resyncs it); with
// `discard`, its generations are dropped too, so the next primary copies it in full whatever it
// wrote: how a split brain is resolved on the side whose changes are given up.
//
// The one write of NodeState (WriteKeyValues: temporary, fsync, rename, directory fsync) is
// the commit point: a crash before the rename leaves the old role, after it the new one, and a
// promote run again after a crash that happened once it was committed changes nothing.
#pragma once

#include <string>

#include "cli/meta.h"
#include "common/status.h"

namespace blkmirror::cli {

// `connected_primary`: the peer of the write session open on the replica now ("" when none).
Result<NodeState> Promoted(const NodeState& now, bool force, const std::string& connected_primary);
Result<NodeState> Demoted(const NodeState& now, bool discard);

// Read, check, write: the state after the change (already so: returned as it is).
Result<NodeState> PromoteDisk(const std::string& meta_dir, bool force,
                              const std::string& connected_primary);
Result<NodeState> DemoteDisk(const std::string& meta_dir, bool discard);

}  // namespace blkmirror::cli
