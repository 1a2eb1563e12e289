// Resource files: one replicated volume per TOML file in the config directory (/etc/blkmirror
// by default, --config-dir moves it), named NAME.toml for resource NAME, the same file on every
// node, as drbd.conf. docs/config.md describes the format; in short:
//
//   [resource]                  # settings every node shares (all optional)
//   ack = "durable"             # transport, ack, block-size, window, quorum, resync-rate,
//   key-file = "/etc/blkmirror/vol0.key"   # key-file, peer-timeout, ack-timeout, compress,
//                               # compress-mode, tls, cert, cert-key, ca
//
//   [node.alpha]                # one table per node, by host name (or --node)
//   role = "primary"            # what `blkmirror daemon` runs here: primary or replica
//   disk = "/dev/nvme1n1"       # this node's copy: the volume's disk, or the replica's target
//   address = "10.0.0.1:7100"   # where this node serves as a replica (HOST:PORT)
//   export = ["unix:/run/blkmirror/vol0.nbd"]   # a primary's NBD exports
//   metrics = "0.0.0.0:9400"    # Prometheus endpoint of serve or volume on this node
//
// A command given --resource NAME takes its settings from this node's table (disk, address,
// export, bind, meta-dir, dpdk-*) and from [resource]; its peers are every other node's address.
// Flags given beside --resource override the file.
//
// Parsing never stops at the first mistake: every one is reported with its file, line and key.
// The files are outside input, so the parser is fuzzed (fuzz/config_fuzzer.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace blkmirror::cli {

inline constexpr std::string_view kDefaultConfigDir = "/etc/blkmirror";
// CONFIG_DIR/daemon.toml holds `blkmirror daemon`'s own settings: it names no resource.
inline constexpr std::string_view kDaemonConfigName = "daemon";
inline constexpr std::string_view kDefaultAdminSocket = "/run/blkmirror/admin.sock";

struct NodeConfig {
  std::string name;  // [node.NAME]
  int line = 0;      // where its table starts
  std::string role;  // "", "primary" or "replica"
  std::string disk;
  std::string address;
  int address_line = 0;
  std::vector<std::string> exports;
  std::string bind;
  std::string meta_dir;
  std::string metrics;  // HOST:PORT of this node's Prometheus endpoint
  std::string dpdk_port;
  std::string dpdk_ip;
  uint32_t dpdk_mtu = 0;
};

// [resource]: "" (or nullopt) where the file says nothing, so the command's default stands.
struct ResourceConfig {
  std::string name;  // the file's name without .toml
  std::string path;
  std::string transport;
  std::string ack;
  std::string block_size;
  std::optional<uint32_t> window;
  std::optional<uint32_t> quorum;
  std::string resync_rate;
  std::string compress;  // lz4, zstd[:LEVEL] or none (engine/compress.h)
  std::string compress_mode;  // auto or always (engine/compress.h)
  std::string key_file;
  std::string peer_timeout;
  std::string ack_timeout;
  std::optional<bool> tls;  // tls, cert, cert-key, ca: TLS on TCP (--tls ...)
  std::string cert;
  std::string cert_key;
  std::string ca;
  std::vector<NodeConfig> nodes;

  const NodeConfig* FindNode(std::string_view node) const;
  // Every node but `self`: the peers a primary on `self` replicates to.
  std::vector<const NodeConfig*> PeersOf(const NodeConfig& self) const;
};

// One mistake in a file: "PATH:LINE: KEY: MESSAGE" (KEY like "node.alpha.address").
struct ConfigProblem {
  std::string path;
  int line = 0;  // 0: the file as a whole
  std::string key;
  std::string message;
  std::string ToString() const;
};

struct ParsedResource {
  ResourceConfig config;
  std::vector<ConfigProblem> problems;  // empty: the file is good
};

// daemon.toml (optional; every key too):
//   node = "alpha"                        # this node's table in the resources (default: host name)
//   log-level = "info"                    # changed live by SIGHUP
//   admin-socket = "/run/blkmirror/admin.sock"
struct DaemonConfig {
  std::string node;
  std::string log_level;
  std::string admin_socket;
};
struct ParsedDaemonConfig {
  DaemonConfig config;
  std::vector<ConfigProblem> problems;
};
ParsedDaemonConfig ParseDaemonConfig(std::string_view text, const std::string& path);
// Reads DIR/daemon.toml; no file is no problem (every setting at its default).
ParsedDaemonConfig LoadDaemonConfig(const std::string& dir);

// What a check looks at beyond the text: the key file (readable, a key).
enum class CheckFiles : bool { kNo, kYes };

// Parses the text of resource `name`'s file at `path`.
ParsedResource ParseResource(std::string_view text, const std::string& path,
                             const std::string& name, CheckFiles files);
// Reads DIR/NAME.toml; a missing or unreadable file is a problem of its own.
ParsedResource LoadResource(const std::string& dir, const std::string& name, CheckFiles files);
// Every resource in `dir` (only `name` when not empty), and across them: one node address used
// by two resources; daemon.toml too when it exists. For `blkmirror check-config` and the daemon.
std::vector<ConfigProblem> CheckConfigDir(const std::string& dir, const std::string& name);
// The resources in `dir` (NAME.toml, daemon.toml aside), sorted; empty with a problem when the
// directory cannot be listed.
std::vector<std::string> ResourceNames(const std::string& dir, std::vector<ConfigProblem>& problems);

// This node's table: `node` when given (--node), else the one named as this host.
Result<const NodeConfig*> ThisNode(const ResourceConfig& config, const std::string& node);

}  // namespace blkmirror::cli
