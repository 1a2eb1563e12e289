#include "cli/config.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

#include "cli/values.h"
#include "common/units.h"
#include "engine/auth.h"
#include "engine/compress.h"
#include "engine/replicator.h"
#include "transport/transport.h"

namespace blkmirror::cli {
namespace {

constexpr uint32_t kMinDpdkMtu = 576;
constexpr uint32_t kMaxDpdkMtu = 9000;

// Reads one file's tables into a ResourceConfig, collecting every mistake.
class Reader {
 public:
  Reader(const std::string& path, CheckFiles files, std::vector<ConfigProblem>& problems)
      : path_(path), files_(files), problems_(problems) {}

  const std::string& path() const { return path_; }
  void Problem(int line, std::string key, std::string message) {
    problems_.push_back({path_, line, std::move(key), std::move(message)});
  }

  static int Line(const toml::node& n) { return static_cast<int>(n.source().begin.line); }
  static int Line(const toml::key& k) { return static_cast<int>(k.source().begin.line); }

  // The value of `key` (at `where`) as a string, or nullopt after a problem.
  std::optional<std::string> String(const toml::node& v, const std::string& where) {
    if (auto s = v.value<std::string>(); s && v.is_string()) return *s;
    Problem(Line(v), where, fmt::format("expected a string, not {}", TypeName(v)));
    return std::nullopt;
  }
  std::optional<int64_t> Integer(const toml::node& v, const std::string& where, int64_t lo,
                                 int64_t hi) {
    if (!v.is_integer()) {
      Problem(Line(v), where, fmt::format("expected an integer, not {}", TypeName(v)));
      return std::nullopt;
    }
    const int64_t n = *v.value<int64_t>();
    if (n < lo || n > hi) {
      Problem(Line(v), where, fmt::format("{} is out of range ({} to {})", n, lo, hi));
      return std::nullopt;
    }
    return n;
  }
  // A string from `choices`.
  std::string Choice(const toml::node& v, const std::string& where,
                     std::span<const std::string_view> choices) {
    auto s = String(v, where);
    if (!s) return "";
    if (std::find(choices.begin(), choices.end(), *s) == choices.end()) {
      Problem(Line(v), where, fmt::format("'{}': expected {}", *s, fmt::join(choices, ", ")));
      return "";
    }
    return *s;
  }
  // A size ("128K", or a number of bytes) or a duration ("6s", "500ms", or a number of seconds)
  // as the flag would take it, if `check` accepts it ("" after a problem).
  template <typename Check>
  std::string Quantity(const toml::node& v, const std::string& where, Check check) {
    std::string text;
    if (v.is_integer()) {
      text = std::to_string(*v.value<int64_t>());
    } else if (auto s = String(v, where)) {
      text = *s;
    } else {
      return "";
    }
    if (Status st = check(text); !st.ok()) {
      Problem(Line(v), where, st.message());
      return "";
    }
    return text;
  }
  std::string Duration(const toml::node& v, const std::string& where) {
    return Quantity(v, where, [](const std::string& text) { return ParseDuration(text).status(); });
  }
  // HOST:PORT (port 0 allowed).
  std::string Endpoint(const toml::node& v, const std::string& where) {
    auto s = String(v, where);
    if (!s) return "";
    if (auto ep = transport::Endpoint::Parse(*s); !ep.ok()) {
      Problem(Line(v), where, ep.status().message());
      return "";
    }
    return *s;
  }
  // A node's address: HOST:PORT with a port.
  std::string Address(const toml::node& v, const std::string& where) {
    auto s = String(v, where);
    if (!s) return "";
    auto ep = transport::Endpoint::Parse(*s);
    if (!ep.ok()) {
      Problem(Line(v), where, ep.status().message());
      return "";
    }
    if (ep->port == 0) {
      Problem(Line(v), where, fmt::format("'{}': a node's address needs a port other than 0", *s));
      return "";
    }
    return *s;
  }
  std::string Path(const toml::node& v, const std::string& where) {
    auto s = String(v, where);
    if (!s) return "";
    if (s->empty()) Problem(Line(v), where, "an empty path");
    return *s;
  }

  // One key of a table: its name and how its value is read into `Config`. Each table's list of
  // keys is what it reads and what an unknown key's message names.
  template <typename Config>
  struct Field {
    std::string_view key;
    void (*read)(Reader&, const toml::node& value, const std::string& where, Config&);
  };

  template <typename Config, size_t N>
  void ReadFields(const toml::table& t, const std::string& prefix,
                  const Field<Config> (&fields)[N], Config& config) {
    for (auto&& [k, v] : t) {
      const std::string key(k.str());
      const std::string where = prefix + key;
      auto field = std::find_if(std::begin(fields), std::end(fields),
                                [&](const Field<Config>& f) { return f.key == key; });
      if (field != std::end(fields)) {
        field->read(*this, v, where, config);
        continue;
      }
      std::vector<std::string_view> known;
      for (const Field<Config>& f : fields) known.push_back(f.key);
      Problem(Line(k), where, fmt::format("unknown key (known here: {})", fmt::join(known, ", ")));
    }
  }

  // A path to a file the process must be able to read (checked when files are).
  std::string ReadablePath(const toml::node& v, const std::string& where) {
    std::string path = Path(v, where);
    if (!path.empty() && files_ == CheckFiles::kYes && access(path.c_str(), R_OK) != 0) {
      Problem(Line(v), where, fmt::format("cannot read {}: {}", path, std::strerror(errno)));
    }
    return path;
  }

  void ReadResource(const toml::table& t, ResourceConfig& r) {
    using F = Field<ResourceConfig>;
    static constexpr F kFields[] = {
        {"transport",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           c.transport = in.Choice(v, where, kTransportChoices);
         }},
        {"ack",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           c.ack = in.Choice(v, where, kAckChoices);
         }},
        {"block-size",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           c.block_size = in.Quantity(v, where, [](const std::string& text) {
             return ParseBlockSize(text, "block-size").status();
           });
         }},
        {"window",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           if (auto n = in.Integer(v, where, 1, proto::kMaxWindow)) {
             c.window = static_cast<uint32_t>(*n);
           }
         }},
        {"quorum",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           if (auto n = in.Integer(v, where, 0, engine::kMaxPeers)) {
             c.quorum = static_cast<uint32_t>(*n);
           }
         }},
        {"resync-rate",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           c.resync_rate = in.Quantity(v, where, [](const std::string& text) {
             auto n = ParseSize(text);
             if (!n.ok()) return n.status();
             return *n == 0 ? Status::Invalid("0 bytes per second would never resync")
                            : Status::Ok();
           });
         }},
        {"key-file",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           c.key_file = in.Path(v, where);
           if (!c.key_file.empty() && in.files_ == CheckFiles::kYes) {
             if (auto loaded = engine::LoadKeyFile(c.key_file); !loaded.ok()) {
               in.Problem(Line(v), where, loaded.status().message());
             }
           }
         }},
        {"peer-timeout",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           c.peer_timeout = in.Duration(v, where);
         }},
        {"ack-timeout",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           c.ack_timeout = in.Duration(v, where);
         }},
        {"compress",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           if (auto text = in.String(v, where)) {
             if (auto spec = engine::CompressSpec::Parse(*text); spec.ok()) {
               c.compress = *text;
             } else {
               in.Problem(Line(v), where, spec.status().message());
             }
           }
         }},
        {"compress-mode",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           if (auto text = in.String(v, where)) {
             if (auto mode = engine::ParseCompressMode(*text); mode.ok()) {
               c.compress_mode = *text;
             } else {
               in.Problem(Line(v), where, mode.status().message());
             }
           }
         }},
        {"tls",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           if (auto b = v.value<bool>()) {
             c.tls = *b;
           } else {
             in.Problem(Line(v), where, "expected true or false");
           }
         }},
        {"cert",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           c.cert = in.ReadablePath(v, where);
         }},
        {"cert-key",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           c.cert_key = in.ReadablePath(v, where);
         }},
        {"ca",
         [](Reader& in, const toml::node& v, const std::string& where, ResourceConfig& c) {
           c.ca = in.ReadablePath(v, where);
         }},
    };
    ReadFields(t, "resource.", kFields, r);
  }

  void ReadNode(const toml::table& t, NodeConfig& n) {
    const std::string prefix = "node." + n.name + ".";
    using F = Field<NodeConfig>;
    static constexpr F kFields[] = {
        {"role",
         [](Reader& in, const toml::node& v, const std::string& where, NodeConfig& c) {
           static constexpr std::string_view kRoles[] = {"primary", "replica"};
           c.role = in.Choice(v, where, kRoles);
         }},
        {"disk",
         [](Reader& in, const toml::node& v, const std::string& where, NodeConfig& c) {
           c.disk = in.Path(v, where);
         }},
        {"address",
         [](Reader& in, const toml::node& v, const std::string& where, NodeConfig& c) {
           c.address = in.Address(v, where);
           c.address_line = Line(v);
         }},
        {"export",
         [](Reader& in, const toml::node& v, const std::string& where, NodeConfig& c) {
           in.ReadExports(v, where, c);
         }},
        {"bind",
         [](Reader& in, const toml::node& v, const std::string& where, NodeConfig& c) {
           if (auto s = in.String(v, where)) c.bind = *s;
         }},
        {"meta-dir",
         [](Reader& in, const toml::node& v, const std::string& where, NodeConfig& c) {
           c.meta_dir = in.Path(v, where);
         }},
        {"metrics",
         [](Reader& in, const toml::node& v, const std::string& where, NodeConfig& c) {
           c.metrics = in.Endpoint(v, where);
         }},
        {"dpdk-port",
         [](Reader& in, const toml::node& v, const std::string& where, NodeConfig& c) {
           if (auto s = in.String(v, where)) c.dpdk_port = *s;
         }},
        {"dpdk-ip",
         [](Reader& in, const toml::node& v, const std::string& where, NodeConfig& c) {
           if (auto s = in.String(v, where)) {
             in_addr a{};
             if (inet_pton(AF_INET, s->c_str(), &a) != 1) {
               in.Problem(Line(v), where, fmt::format("'{}' is not an IPv4 address", *s));
             } else {
               c.dpdk_ip = *s;
             }
           }
         }},
        {"dpdk-mtu",
         [](Reader& in, const toml::node& v, const std::string& where, NodeConfig& c) {
           if (auto m = in.Integer(v, where, kMinDpdkMtu, kMaxDpdkMtu)) {
             c.dpdk_mtu = static_cast<uint32_t>(*m);
           }
         }},
    };
    ReadFields(t, prefix, kFields, n);
    if (n.disk.empty() && !t.contains("disk")) {
      Problem(n.line, prefix + "disk", "missing: the node's copy of the volume (a file or device)");
    }
    if (n.address.empty() && !t.contains("address")) {
      Problem(n.line, prefix + "address", "missing: HOST:PORT the node serves on as a replica");
    }
  }

  void ReadExports(const toml::node& v, const std::string& where, NodeConfig& n) {
    auto one = [&](const toml::node& e) {
      auto s = String(e, where);
      if (!s) return;
      if (s->starts_with("unix:")) {
        if (s->size() == 5) Problem(Line(e), where, "'unix:' needs a socket path");
      } else if (auto ep = transport::Endpoint::Parse(*s); !ep.ok()) {
        Problem(Line(e), where,
                fmt::format("'{}': expected unix:PATH or HOST:PORT ({})", *s, ep.status().message()));
        return;
      }
      n.exports.push_back(*s);
    };
    if (const toml::array* a = v.as_array()) {
      for (const toml::node& e : *a) one(e);
    } else {
      one(v);
    }
  }

  static std::string_view TypeName(const toml::node& v) {
    switch (v.type()) {
      case toml::node_type::string: return "a string";
      case toml::node_type::integer: return "an integer";
      case toml::node_type::floating_point: return "a float";
      case toml::node_type::boolean: return "a boolean";
      case toml::node_type::array: return "an array";
      case toml::node_type::table: return "a table";
      default: return "a date or time";
    }
  }

 private:
  const std::string& path_;
  CheckFiles files_;
  std::vector<ConfigProblem>& problems_;
};

// What the nodes say together: a peer to replicate to, one primary at most, no address twice,
// a quorum the peers can give.
void CheckNodes(const ResourceConfig& r, int file_line, Reader& reader) {
  if (r.nodes.size() < 2) {
    reader.Problem(r.nodes.empty() ? file_line : r.nodes[0].line, "node",
                   fmt::format("{} node(s): a resource needs at least two, this node and a peer "
                               "([node.NAME] tables)",
                               r.nodes.size()));
  }
  const NodeConfig* primary = nullptr;
  std::map<std::string, const NodeConfig*> by_address;
  for (const NodeConfig& n : r.nodes) {
    if (n.role == "primary") {
      if (primary != nullptr) {
        reader.Problem(n.line, "node." + n.name + ".role",
                       fmt::format("a second primary (node {} is one): a volume has one", primary->name));
      }
      primary = &n;
    }
    if (n.address.empty()) continue;
    auto [it, fresh] = by_address.emplace(n.address, &n);
    if (!fresh) {
      reader.Problem(n.address_line, "node." + n.name + ".address",
                     fmt::format("{} is node {}'s address too: the same port twice", n.address,
                                 it->second->name));
    }
  }
  if (r.quorum && r.nodes.size() >= 2 && *r.quorum > r.nodes.size() - 1) {
    reader.Problem(file_line, "resource.quorum",
                   fmt::format("{} is more than the {} peer(s) a node has", *r.quorum,
                               r.nodes.size() - 1));
  }
}

int TableLine(const toml::table& t) { return static_cast<int>(t.source().begin.line); }

// toml++ walks a table by key, not by line: the problems are told in the file's order.
void SortByLine(std::vector<ConfigProblem>& problems) {
  std::stable_sort(problems.begin(), problems.end(),
                   [](const ConfigProblem& a, const ConfigProblem& b) { return a.line < b.line; });
}

// The file's TOML document, or nullopt after a problem. ASCII only: toml++ 3.3 (Debian 12's)
// reaches __builtin_unreachable, undefined behaviour, on many non-ASCII characters where it looks
// for whitespace (is_non_ascii_horizontal_whitespace: U+00A1 to U+0499 among others;
// fuzz/config_fuzzer found it), so none reaches it.
std::optional<toml::table> ParseToml(std::string_view text, Reader& reader) {
  int line = 1, column = 1;
  for (const char ch : text) {
    const auto byte = static_cast<unsigned char>(ch);
    if (byte >= 0x80) {
      reader.Problem(line, "",
                     fmt::format("a non-ASCII byte (0x{:02x}) at column {}: configuration files "
                                 "are ASCII, comments and strings included",
                                 byte, column));
      return std::nullopt;
    }
    if (ch == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  try {
    return toml::parse(text, reader.path());
  } catch (const toml::parse_error& e) {
    reader.Problem(static_cast<int>(e.source().begin.line), "",
                   fmt::format("not TOML: {} (column {})", e.description(),
                               e.source().begin.column));
    return std::nullopt;
  }
}

}  // namespace

std::string ConfigProblem::ToString() const {
  std::string where = line > 0 ? fmt::format("{}:{}", path, line) : path;
  return key.empty() ? fmt::format("{}: {}", where, message)
                     : fmt::format("{}: {}: {}", where, key, message);
}

const NodeConfig* ResourceConfig::FindNode(std::string_view node) const {
  for (const NodeConfig& n : nodes) {
    if (n.name == node) return &n;
  }
  return nullptr;
}

std::vector<const NodeConfig*> ResourceConfig::PeersOf(const NodeConfig& self) const {
  std::vector<const NodeConfig*> peers;
  for (const NodeConfig& n : nodes) {
    if (&n != &self) peers.push_back(&n);
  }
  return peers;
}

ParsedResource ParseResource(std::string_view text, const std::string& path,
                             const std::string& name, CheckFiles files) {
  ParsedResource out;
  out.config.name = name;
  out.config.path = path;
  Reader reader(path, files, out.problems);
  std::optional<toml::table> doc = ParseToml(text, reader);
  if (!doc) return out;
  for (auto&& [k, v] : *doc) {
    const std::string key(k.str());
    if (key == "resource") {
      if (const toml::table* t = v.as_table()) {
        reader.ReadResource(*t, out.config);
      } else {
        reader.Problem(Reader::Line(v), key, "expected a table ([resource])");
      }
    } else if (key == "node") {
      const toml::table* nodes = v.as_table();
      if (nodes == nullptr) {
        reader.Problem(Reader::Line(v), key, "expected tables ([node.NAME])");
        continue;
      }
      for (auto&& [nk, nv] : *nodes) {
        NodeConfig n;
        n.name = std::string(nk.str());
        const toml::table* t = nv.as_table();
        if (t == nullptr) {
          reader.Problem(Reader::Line(nv), "node." + n.name,
                         "expected a table ([node." + n.name + "])");
          continue;
        }
        n.line = TableLine(*t);
        reader.ReadNode(*t, n);
        out.config.nodes.push_back(std::move(n));
      }
    } else {
      reader.Problem(Reader::Line(k), key, "unknown key (known: [resource], [node.NAME])");
    }
  }
  CheckNodes(out.config, 1, reader);
  SortByLine(out.problems);
  return out;
}

ParsedDaemonConfig ParseDaemonConfig(std::string_view text, const std::string& path) {
  ParsedDaemonConfig out;
  Reader reader(path, CheckFiles::kNo, out.problems);
  std::optional<toml::table> doc = ParseToml(text, reader);
  if (!doc) return out;
  DaemonConfig& c = out.config;
  for (auto&& [k, v] : *doc) {
    const std::string key(k.str());
    if (key == "node") {
      if (auto s = reader.String(v, key)) {
        if (s->empty()) reader.Problem(Reader::Line(v), key, "an empty node name");
        c.node = *s;
      }
    } else if (key == "log-level") {
      c.log_level = reader.Choice(v, key, kLogLevelChoices);
    } else if (key == "admin-socket") {
      c.admin_socket = reader.Path(v, key);
    } else {
      reader.Problem(Reader::Line(k), key, "unknown key (known: node, log-level, admin-socket)");
    }
  }
  SortByLine(out.problems);
  return out;
}

ParsedDaemonConfig LoadDaemonConfig(const std::string& dir) {
  const std::string path = dir + "/" + std::string(kDaemonConfigName) + ".toml";
  std::ifstream in(path);
  if (!in) {
    ParsedDaemonConfig out;
    if (errno != ENOENT) {
      out.problems.push_back({path, 0, "", fmt::format("cannot read it: {}", std::strerror(errno))});
    }
    return out;
  }
  std::stringstream text;
  text << in.rdbuf();
  return ParseDaemonConfig(text.str(), path);
}

ParsedResource LoadResource(const std::string& dir, const std::string& name, CheckFiles files) {
  const std::string path = dir + "/" + name + ".toml";
  if (name == kDaemonConfigName) {
    ParsedResource out;
    out.config.name = name;
    out.config.path = path;
    out.problems.push_back({path, 0, "",
                            "daemon.toml holds the daemon's settings, not a resource: name the "
                            "resource otherwise"});
    return out;
  }
  std::ifstream in(path);
  if (!in) {
    ParsedResource out;
    out.config.name = name;
    out.config.path = path;
    const int err = errno;
    out.problems.push_back(
        {path, 0, "",
         err == ENOENT ? fmt::format("no resource '{}': the file does not exist", name)
                       : fmt::format("cannot read it: {}", std::strerror(err))});
    return out;
  }
  std::stringstream text;
  text << in.rdbuf();
  return ParseResource(text.str(), path, name, files);
}

std::vector<std::string> ResourceNames(const std::string& dir,
                                       std::vector<ConfigProblem>& problems) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".toml" && e.path().stem() != kDaemonConfigName) {
      names.push_back(e.path().stem().string());
    }
  }
  if (ec) {
    problems.push_back({dir, 0, "", fmt::format("cannot list it: {}", ec.message())});
    return {};
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<ConfigProblem> CheckConfigDir(const std::string& dir, const std::string& name) {
  std::vector<ConfigProblem> problems;
  std::vector<std::string> names;
  if (!name.empty()) {
    names.push_back(name);
  } else {
    names = ResourceNames(dir, problems);
    if (!problems.empty()) return problems;
    if (names.empty()) {
      problems.push_back({dir, 0, "", "no resource files (NAME.toml) in it"});
      return problems;
    }
    ParsedDaemonConfig daemon = LoadDaemonConfig(dir);
    problems.insert(problems.end(), daemon.problems.begin(), daemon.problems.end());
  }
  // Across resources: one address (a listening port) for one resource only.
  std::map<std::string, std::string> address_owner;
  for (const std::string& n : names) {
    ParsedResource r = LoadResource(dir, n, CheckFiles::kYes);
    problems.insert(problems.end(), r.problems.begin(), r.problems.end());
    for (const NodeConfig& node : r.config.nodes) {
      if (node.address.empty()) continue;
      auto [it, fresh] = address_owner.emplace(node.address, n);
      if (!fresh && it->second != n) {
        problems.push_back({r.config.path, node.address_line, "node." + node.name + ".address",
                            fmt::format("{} is resource {}'s too: the same port twice",
                                        node.address, it->second)});
      }
    }
  }
  return problems;
}

Result<const NodeConfig*> ThisNode(const ResourceConfig& config, const std::string& node) {
  std::vector<std::string> names;
  for (const NodeConfig& n : config.nodes) names.push_back(n.name);
  if (!node.empty()) {
    if (const NodeConfig* n = config.FindNode(node)) return n;
    return Status::Invalid("--node {}: resource {} ({}) has no [node.{}] table (its nodes: {})",
                           node, config.name, config.path, node, fmt::join(names, ", "));
  }
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) {
    return Status::Errno(errno, "gethostname");
  }
  const std::string full(host);
  const std::string shorter = full.substr(0, full.find('.'));
  for (const std::string& h : {full, shorter}) {
    if (const NodeConfig* n = config.FindNode(h)) return n;
  }
  return Status::Invalid("resource {} ({}) has no [node.{}] table for this host (its nodes: {}): "
                         "name this node with --node",
                         config.name, config.path, shorter, fmt::join(names, ", "));
}

}  // namespace blkmirror::cli
