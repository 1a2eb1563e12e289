#include "cli/resource.h"

#include <fmt/format.h>

#include "cli/config.h"
#include "cli/logging.h"

namespace blkmirror::cli {
namespace {

// The resource and this node's table in it, or false after printing why not.
struct Loaded {
  ParsedResource parsed;
  const NodeConfig* self = nullptr;
};

bool Load(std::string_view command, const ResourceArgs& r, Loaded& out, bool need_node = true) {
  out.parsed = LoadResource(r.config_dir, r.name, CheckFiles::kYes);
  for (const ConfigProblem& p : out.parsed.problems) {
    PrintErrorLine(command, p.ToString());
  }
  if (!out.parsed.problems.empty()) return false;
  if (!need_node) return true;
  auto self = ThisNode(out.parsed.config, r.node);
  if (!self.ok()) {
    PrintErrorLine(command, self.status().message());
    return false;
  }
  out.self = *self;
  return true;
}

// Sets `field` from the file's `value` unless the flag was given or the file says nothing.
template <typename T, typename V>
void Fill(const FlagGiven& given, std::string_view flag, T& field, const V& value) {
  if (given(flag)) return;
  if constexpr (std::is_same_v<V, std::string>) {
    if (value.empty()) return;
  }
  field = value;
}
template <typename T, typename V>
void Fill(const FlagGiven& given, std::string_view flag, T& field, const std::optional<V>& value) {
  if (!given(flag) && value) field = *value;
}

void FillTls(const FlagGiven& given, const ResourceConfig& c, TlsArgs& tls) {
  Fill(given, "--tls", tls.enabled, c.tls);
  Fill(given, "--cert", tls.cert, c.cert);
  Fill(given, "--cert-key", tls.cert_key, c.cert_key);
  Fill(given, "--ca", tls.ca, c.ca);
}

void FillTransport(const FlagGiven& given, const ResourceConfig& c, const NodeConfig& n,
                   std::string& transport, DpdkArgs& dpdk) {
  Fill(given, "--transport", transport, c.transport);
  Fill(given, "--dpdk-port", dpdk.port, n.dpdk_port);
  Fill(given, "--dpdk-ip", dpdk.ip, n.dpdk_ip);
  if (n.dpdk_mtu != 0) Fill(given, "--dpdk-mtu", dpdk.mtu, n.dpdk_mtu);
}

std::vector<std::string> PeerAddresses(const ResourceConfig& c, const NodeConfig& self) {
  std::vector<std::string> peers;
  for (const NodeConfig* p : c.PeersOf(self)) peers.push_back(p->address);
  return peers;
}

// What push and volume, the primary's commands, take alike.
template <typename Args>
void FillPrimary(const FlagGiven& given, const ResourceConfig& c, const NodeConfig& n,
                 Args& args) {
  Fill(given, "--peer", args.peers, PeerAddresses(c, n));
  Fill(given, "--ack", args.ack, c.ack);
  Fill(given, "--block-size", args.block_size, c.block_size);
  Fill(given, "--window", args.window, c.window);
  FillTransport(given, c, n, args.transport, args.dpdk);
  FillTls(given, c, args.tls);
  Fill(given, "--quorum", args.quorum, c.quorum);
  Fill(given, "--peer-timeout", args.peer_timeout, c.peer_timeout);
  Fill(given, "--ack-timeout", args.ack_timeout, c.ack_timeout);
  Fill(given, "--key-file", args.key_file, c.key_file);
  Fill(given, "--meta-dir", args.meta_dir, n.meta_dir);
  Fill(given, "--bind", args.bind, n.bind);
  Fill(given, "--compress", args.compress, c.compress);
  Fill(given, "--compress-mode", args.compress_mode, c.compress_mode);
}

}  // namespace

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, ServeArgs& args) {
  Loaded l;
  if (!Load("serve", r, l)) return false;
  const ResourceConfig& c = l.parsed.config;
  const NodeConfig& n = *l.self;
  Fill(given, "--listen", args.listen, n.address);
  Fill(given, "--target", args.target, n.disk);
  FillTransport(given, c, n, args.transport, args.dpdk);
  FillTls(given, c, args.tls);
  Fill(given, "--key-file", args.key_file, c.key_file);
  Fill(given, "--meta-dir", args.meta_dir, n.meta_dir);
  Fill(given, "--metrics", args.metrics, n.metrics);
  return true;
}

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, PushArgs& args) {
  Loaded l;
  if (!Load("push", r, l)) return false;
  const ResourceConfig& c = l.parsed.config;
  const NodeConfig& n = *l.self;
  Fill(given, "--source", args.source, n.disk);
  FillPrimary(given, c, n, args);
  return true;
}

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, VolumeArgs& args) {
  Loaded l;
  if (!Load("volume", r, l)) return false;
  const ResourceConfig& c = l.parsed.config;
  const NodeConfig& n = *l.self;
  Fill(given, "--disk", args.disk, n.disk);
  if (!n.exports.empty()) Fill(given, "--export", args.exports, n.exports);
  Fill(given, "--name", args.name, c.name);
  Fill(given, "--resync-rate", args.resync_rate, c.resync_rate);
  Fill(given, "--metrics", args.metrics, n.metrics);
  FillPrimary(given, c, n, args);
  return true;
}

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, VerifyArgs& args) {
  Loaded l;
  if (!Load("verify", r, l)) return false;
  const ResourceConfig& c = l.parsed.config;
  const NodeConfig& n = *l.self;
  Fill(given, "--source", args.source, n.disk);
  if (!given("--peer")) {
    auto peers = PeerAddresses(c, n);
    if (peers.size() != 1) {
      PrintErrorLine("verify", fmt::format("resource {} gives node {} {} peers: name the one "
                                           "to compare with, --peer HOST:PORT",
                                           c.name, n.name, peers.size()));
      return false;
    }
    args.peer = peers[0];
  }
  Fill(given, "--block-size", args.block_size, c.block_size);
  FillTransport(given, c, n, args.transport, args.dpdk);
  FillTls(given, c, args.tls);
  Fill(given, "--key-file", args.key_file, c.key_file);
  Fill(given, "--meta-dir", args.meta_dir, n.meta_dir);
  Fill(given, "--bind", args.bind, n.bind);
  return true;
}

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, StatusArgs& args) {
  Loaded l;
  if (!Load("status", r, l, /*need_node=*/false)) return false;
  if (!given("--source") && !given("--disk")) Fill(given, "--volume", args.volume, l.parsed.config.name);
  return true;
}

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, RoleArgs& args) {
  Loaded l;
  if (!Load("promote/demote", r, l)) return false;
  Fill(given, "--disk", args.disk, l.self->disk);
  Fill(given, "--meta-dir", args.meta_dir, l.self->meta_dir);
  return true;
}

int RunCheckConfig(const std::string& config_dir, const std::string& name) {
  auto problems = CheckConfigDir(config_dir, name);
  for (const ConfigProblem& p : problems) {
    fmt::print(stderr, "blkmirror check-config: {}\n", p.ToString());
  }
  if (!problems.empty()) {
    fmt::print(stderr, "blkmirror check-config: {} mistake(s)\n", problems.size());
    return kExitUsage;
  }
  fmt::print("{}: {} good\n", config_dir, name.empty() ? "every resource file is" : name + " is");
  return kExitOk;
}

}  // namespace blkmirror::cli
