// Shared by `push` and `verify --repair`: a replication run over a plan.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/status.h"
#include "engine/verifier.h"

namespace blkmirror::cli {

struct ReplicationPlan {
  PushArgs args;
  std::string command;                        // "push" or "verify" (messages)
  std::vector<engine::DiffRange> extra_dirty;  // blocks to send whatever the bitmaps say
  // verify --repair: a replica without a bitmap gets only extra_dirty, not a full copy.
  bool repair = false;
  // When set, the summary goes here instead of stdout.
  nlohmann::json* result = nullptr;
};

// Replicates per the plan; returns the exit code (errors printed).
int RunReplication(const ReplicationPlan& plan);

}  // namespace blkmirror::cli
