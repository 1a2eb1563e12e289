// Resource files and daemon.toml (cli/config.h) are outside input: any bytes go to the TOML
// parser and the checks. Properties: no crash, no leak, no UB; every problem names the file and a key
// or line; a file without problems has at least two nodes, each with a disk and an address, no
// address twice, and each node finds itself.
#include <cstdint>
#include <set>
#include <string_view>

#include "cli/config.h"
#include "fuzz/fuzz_common.h"

using namespace blkmirror;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  // The same bytes as daemon.toml: no crash, every problem named.
  for (const cli::ConfigProblem& p : cli::ParseDaemonConfig(text, "daemon.toml").problems) {
    FUZZ_CHECK(p.path == "daemon.toml" && !p.message.empty() && (p.line > 0 || !p.key.empty()),
               "a daemon.toml problem without its file, line or key: {}", p.ToString());
  }
  cli::ParsedResource r = cli::ParseResource(text, "fuzz.toml", "fuzz", cli::CheckFiles::kNo);
  for (const cli::ConfigProblem& p : r.problems) {
    FUZZ_CHECK(p.path == "fuzz.toml" && !p.message.empty(), "a problem without its file or text");
    FUZZ_CHECK(p.line > 0 || !p.key.empty(), "a problem names no line and no key: {}",
               p.ToString());
  }
  if (!r.problems.empty()) return 0;
  const cli::ResourceConfig& c = r.config;
  FUZZ_CHECK(c.nodes.size() >= 2, "a good file with {} node(s)", c.nodes.size());
  std::set<std::string> addresses;
  for (const cli::NodeConfig& n : c.nodes) {
    FUZZ_CHECK(!n.disk.empty() && !n.address.empty(), "node {} without a disk or address",
               n.name);
    FUZZ_CHECK(addresses.insert(n.address).second, "address {} twice", n.address);
    auto self = cli::ThisNode(c, n.name);
    FUZZ_CHECK(self.ok() && *self == &n, "node {} does not find itself", n.name);
    FUZZ_CHECK(c.PeersOf(n).size() == c.nodes.size() - 1, "node {}: wrong peer count",
               n.name);
  }
  return 0;
}
