// --resource NAME: a command's settings from its resource file (cli/config.h), under the flags
// given beside it.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "cli/commands.h"

namespace blkmirror::cli {

struct ResourceArgs {
  std::string name;        // --resource
  std::string node;        // --node (default: this host's name)
  std::string config_dir;  // --config-dir
};

// True when the flag was given on the command line (it then wins over the file).
using FlagGiven = std::function<bool(std::string_view flag)>;

// Each fills what the command line left unset from the resource; on a broken file it prints every
// problem (file, line, key) and returns false: the command exits with kExitUsage.
// `settings`, when given, gets every setting a resource file can make for the command, as the
// arguments end with it (from the file, the flags or the default), keyed by the flag's name
// without "--" ("window", "peer", "resync-rate"): what the daemon compares on a reload.
using ResourceSettings = std::map<std::string, std::string>;
bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, ServeArgs& args,
                   ResourceSettings* settings = nullptr);
bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, PushArgs& args);
bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, VolumeArgs& args,
                   ResourceSettings* settings = nullptr);
bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, VerifyArgs& args);
bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, StatusArgs& args);
bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, RoleArgs& args);

// blkmirror check-config [NAME]: every mistake in the resource files, one per line; kExitUsage
// when there is one.
int RunCheckConfig(const std::string& config_dir, const std::string& name);

}  // namespace blkmirror::cli
