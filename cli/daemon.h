// `blkmirror daemon`: every resource in the config directory that gives this node a role, in one
// process: a replica's target (`serve`) or a primary's volume (`volume`), each on a thread of its
// own with its own ring and buffer pool (cli/run.h drives their loops).
//
// - A resource that fails is started again with a backoff (1 s doubling to 60 s); its error is
//   in the log and in `blkmirror status`.
// - systemd: READY=1 once every resource listens (or has failed its first start), STATUS= with the
//   count, WATCHDOG=1 only while every running resource's loop turns, STOPPING=1.
// - SIGHUP re-reads the files. A broken file changes nothing (every mistake is logged). Otherwise
//   resources added are started, resources removed (or this node's table or role gone) stopped,
//   and of a changed resource: the log level and a volume's resync rate change live; a volume's
//   peers (nodes added or removed) restart that volume inside the daemon (writes in flight finish
//   first; its NBD clients reconnect); anything else is logged as needing a restart, and the
//   resource runs on with what it had.
// - SIGTERM or SIGINT stops every resource (a volume finishes its writes in flight) and exits.
// - The admin socket (cli/admin.h) answers `blkmirror status [NAME]`.
#pragma once

#include <string>

namespace blkmirror::cli {

struct DaemonArgs {
  std::string config_dir;
  std::string node;          // --node; else daemon.toml's; else the host name
  std::string admin_socket;  // --admin-socket; else daemon.toml's; else kDefaultAdminSocket
  bool log_level_given = false;  // --log-level given: daemon.toml's is not applied
};

int RunDaemon(const DaemonArgs& args);

}  // namespace blkmirror::cli
