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

std::string SettingText(const std::string& v) { return v; }
std::string SettingText(bool v) { return v ? "true" : "false"; }
std::string SettingText(uint32_t v) { return std::to_string(v); }
std::string SettingText(const std::optional<uint32_t>& v) { return v ? std::to_string(*v) : ""; }
std::string SettingText(const std::vector<std::string>& v) {
  return fmt::format("{}", fmt::join(v, ", "));
}

// Sets `field` from the file's `value` unless the flag was given or the file says nothing, and
// records the setting the field ends with (ResourceSettings), under the flag's name.
class Filler {
 public:
  Filler(const FlagGiven& given, ResourceSettings* settings)
      : given_(given), settings_(settings) {}

  template <typename T, typename V>
  void operator()(std::string_view flag, T& field, const V& value) {
    if (!given_(flag)) {
      if constexpr (std::is_same_v<V, std::string>) {
        if (!value.empty()) field = value;
      } else {
        field = value;
      }
    }
    Record(flag, field);
  }
  template <typename T, typename V>
  void operator()(std::string_view flag, T& field, const std::optional<V>& value) {
    if (!given_(flag) && value) field = *value;
    Record(flag, field);
  }

 private:
  template <typename T>
  void Record(std::string_view flag, const T& field) {
    if (settings_ != nullptr) (*settings_)[std::string(flag.substr(2))] = SettingText(field);
  }

  const FlagGiven& given_;
  ResourceSettings* settings_;
};

void FillTls(Filler& fill, const ResourceConfig& c, TlsArgs& tls) {
  fill("--tls", tls.enabled, c.tls);
  fill("--cert", tls.cert, c.cert);
  fill("--cert-key", tls.cert_key, c.cert_key);
  fill("--ca", tls.ca, c.ca);
}

void FillTransport(Filler& fill, const ResourceConfig& c, const NodeConfig& n,
                   std::string& transport, DpdkArgs& dpdk) {
  fill("--transport", transport, c.transport);
  fill("--dpdk-port", dpdk.port, n.dpdk_port);
  fill("--dpdk-ip", dpdk.ip, n.dpdk_ip);
  fill("--dpdk-mtu", dpdk.mtu, n.dpdk_mtu != 0 ? std::optional(n.dpdk_mtu) : std::nullopt);
}

std::vector<std::string> PeerAddresses(const ResourceConfig& c, const NodeConfig& self) {
  std::vector<std::string> peers;
  for (const NodeConfig* p : c.PeersOf(self)) peers.push_back(p->address);
  return peers;
}

// What push and volume, the primary's commands, take alike.
template <typename Args>
void FillPrimary(Filler& fill, const ResourceConfig& c, const NodeConfig& n,
                 Args& args) {
  fill("--peer", args.peers, PeerAddresses(c, n));
  fill("--ack", args.ack, c.ack);
  fill("--block-size", args.block_size, c.block_size);
  fill("--window", args.window, c.window);
  FillTransport(fill, c, n, args.transport, args.dpdk);
  FillTls(fill, c, args.tls);
  fill("--quorum", args.quorum, c.quorum);
  fill("--peer-timeout", args.peer_timeout, c.peer_timeout);
  fill("--ack-timeout", args.ack_timeout, c.ack_timeout);
  fill("--key-file", args.key_file, c.key_file);
  fill("--meta-dir", args.meta_dir, n.meta_dir);
  fill("--bind", args.bind, n.bind);
  fill("--compress", args.compress, c.compress);
  fill("--compress-mode", args.compress_mode, c.compress_mode);
}

}  // namespace

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, ServeArgs& args,
                   ResourceSettings* settings) {
  Filler fill(given, settings);
  Loaded l;
  if (!Load("serve", r, l)) return false;
  const ResourceConfig& c = l.parsed.config;
  const NodeConfig& n = *l.self;
  fill("--listen", args.listen, n.address);
  fill("--target", args.target, n.disk);
  FillTransport(fill, c, n, args.transport, args.dpdk);
  FillTls(fill, c, args.tls);
  fill("--key-file", args.key_file, c.key_file);
  fill("--meta-dir", args.meta_dir, n.meta_dir);
  fill("--metrics", args.metrics, n.metrics);
  return true;
}

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, PushArgs& args) {
  Filler fill(given, nullptr);
  Loaded l;
  if (!Load("push", r, l)) return false;
  const ResourceConfig& c = l.parsed.config;
  const NodeConfig& n = *l.self;
  fill("--source", args.source, n.disk);
  FillPrimary(fill, c, n, args);
  return true;
}

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, VolumeArgs& args,
                   ResourceSettings* settings) {
  Filler fill(given, settings);
  Loaded l;
  if (!Load("volume", r, l)) return false;
  const ResourceConfig& c = l.parsed.config;
  const NodeConfig& n = *l.self;
  fill("--disk", args.disk, n.disk);
  fill("--export", args.exports, n.exports.empty() ? std::nullopt : std::optional(n.exports));
  fill("--name", args.name, c.name);
  fill("--resync-rate", args.resync_rate, c.resync_rate);
  fill("--metrics", args.metrics, n.metrics);
  FillPrimary(fill, c, n, args);
  return true;
}

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, VerifyArgs& args) {
  Filler fill(given, nullptr);
  Loaded l;
  if (!Load("verify", r, l)) return false;
  const ResourceConfig& c = l.parsed.config;
  const NodeConfig& n = *l.self;
  fill("--source", args.source, n.disk);
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
  fill("--block-size", args.block_size, c.block_size);
  FillTransport(fill, c, n, args.transport, args.dpdk);
  FillTls(fill, c, args.tls);
  fill("--key-file", args.key_file, c.key_file);
  fill("--meta-dir", args.meta_dir, n.meta_dir);
  fill("--bind", args.bind, n.bind);
  return true;
}

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, StatusArgs& args) {
  Filler fill(given, nullptr);
  Loaded l;
  if (!Load("status", r, l, /*need_node=*/false)) return false;
  if (!given("--source") && !given("--disk")) fill("--volume", args.volume, l.parsed.config.name);
  return true;
}

bool ApplyResource(const ResourceArgs& r, const FlagGiven& given, RoleArgs& args) {
  Filler fill(given, nullptr);
  Loaded l;
  if (!Load("promote/demote", r, l)) return false;
  fill("--disk", args.disk, l.self->disk);
  fill("--meta-dir", args.meta_dir, l.self->meta_dir);
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
