#include "cli/roles.h"

#include <fmt/format.h>

namespace blkmirror::cli {

Result<NodeState> Promoted(const NodeState& now, bool force, const std::string& connected_primary) {
  if (now.role == Role::kNone) {
    return Status::Error(ErrorCode::kNotFound,
                         "nothing is kept for this disk: it has never been a volume's replica or "
                         "primary");
  }
  if (now.role == Role::kPrimary) return now;
  if (!connected_primary.empty() && !force) {
    return Status::Error(ErrorCode::kDiverged,
                         fmt::format("refused: primary {} is connected to this replica; promote "
                                     "with --force only once it is dead or cut off",
                                     connected_primary));
  }
  if (!now.generations.consistent && !force) {
    return Status::Error(
        ErrorCode::kDiverged,
        fmt::format("refused: the data is inconsistent (a resync to it at generation {} was in "
                    "progress): it is not a whole image; --force to promote it anyway",
                    engine::GenerationHex(now.generations.current)));
  }
  NodeState next = now;
  next.role = Role::kPrimary;
  next.generations.StartNew(engine::NewGenerationId());
  next.generations.consistent = true;
  return next;
}

Result<NodeState> Demoted(const NodeState& now, bool discard) {
  if (now.role == Role::kNone) {
    return Status::Error(ErrorCode::kNotFound,
                         "nothing is kept for this disk: it has never been a volume's replica or "
                         "primary");
  }
  NodeState next = now;
  next.role = Role::kReplica;
  if (discard) next.generations = engine::Generations{};
  return next;
}

Result<NodeState> PromoteDisk(const std::string& meta_dir, bool force,
                              const std::string& connected_primary) {
  ASSIGN_OR_RETURN(NodeState now, ReadNodeState(meta_dir));
  ASSIGN_OR_RETURN(NodeState next, Promoted(now, force, connected_primary));
  if (now.role != Role::kPrimary) RETURN_IF_ERROR(WriteNodeState(meta_dir, next));
  return next;
}

Result<NodeState> DemoteDisk(const std::string& meta_dir, bool discard) {
  ASSIGN_OR_RETURN(NodeState now, ReadNodeState(meta_dir));
  ASSIGN_OR_RETURN(NodeState next, Demoted(now, discard));
  RETURN_IF_ERROR(WriteNodeState(meta_dir, next));
  return next;
}

}  // namespace blkmirror::cli
