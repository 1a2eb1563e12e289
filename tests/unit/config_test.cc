// Resource files (cli/config.h): a good file read right, and a table of broken files and wrong
// values, each with the exact message (file, line, key) an operator gets.
#include "cli/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/auth.h"

namespace blkmirror::cli {
namespace {

constexpr char kGood[] = R"(# vol0: alpha writes, beta keeps a copy
[resource]
ack = "received"
block-size = "256K"
window = 16
quorum = 1
resync-rate = "100M"
peer-timeout = "3s"
transport = "tcp"

[node.alpha]
role = "primary"
disk = "/dev/a"
address = "10.0.0.1:7100"
export = ["unix:/run/blkmirror/vol0.nbd", "127.0.0.1:10809"]
bind = "10.0.0.1"
metrics = "10.0.0.1:0"

[node.beta]
role = "replica"
disk = "/srv/b.img"
address = "10.0.0.2:7100"
dpdk-port = "af_xdp:eth1"
dpdk-ip = "10.1.0.2"
dpdk-mtu = 9000
)";

// Two nodes that are fine, to append after a [resource] table under test.
constexpr char kNodes[] = R"(
[node.alpha]
disk = "/dev/a"
address = "10.0.0.1:7100"

[node.beta]
disk = "/dev/b"
address = "10.0.0.2:7100"
)";

std::string Problems(const ParsedResource& r) {
  std::string out;
  for (const ConfigProblem& p : r.problems) out += p.ToString() + "\n";
  return out;
}

ParsedResource Parse(const std::string& text) {
  return ParseResource(text, "/etc/blkmirror/vol0.toml", "vol0", CheckFiles::kNo);
}

TEST(ConfigTest, GoodFileIsReadWhole) {
  ParsedResource r = Parse(kGood);
  ASSERT_EQ(Problems(r), "");
  const ResourceConfig& c = r.config;
  EXPECT_EQ(c.name, "vol0");
  EXPECT_EQ(c.ack, "received");
  EXPECT_EQ(c.block_size, "256K");
  EXPECT_EQ(c.window, 16u);
  EXPECT_EQ(c.quorum, 1u);
  EXPECT_EQ(c.resync_rate, "100M");
  EXPECT_EQ(c.peer_timeout, "3s");
  EXPECT_EQ(c.ack_timeout, "");
  EXPECT_EQ(c.transport, "tcp");
  ASSERT_EQ(c.nodes.size(), 2u);
  const NodeConfig* a = c.FindNode("alpha");
  const NodeConfig* b = c.FindNode("beta");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->line, 11);
  EXPECT_EQ(a->role, "primary");
  EXPECT_EQ(a->disk, "/dev/a");
  EXPECT_EQ(a->exports, (std::vector<std::string>{"unix:/run/blkmirror/vol0.nbd",
                                                  "127.0.0.1:10809"}));
  EXPECT_EQ(a->bind, "10.0.0.1");
  EXPECT_EQ(a->metrics, "10.0.0.1:0");
  EXPECT_EQ(b->dpdk_port, "af_xdp:eth1");
  EXPECT_EQ(b->dpdk_ip, "10.1.0.2");
  EXPECT_EQ(b->dpdk_mtu, 9000u);
  auto peers = c.PeersOf(*a);
  ASSERT_EQ(peers.size(), 1u);
  EXPECT_EQ(peers[0]->address, "10.0.0.2:7100");
  auto self = ThisNode(c, "beta");
  ASSERT_TRUE(self.ok());
  EXPECT_EQ(*self, b);
  auto none = ThisNode(c, "gamma");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().message(),
            "--node gamma: resource vol0 (/etc/blkmirror/vol0.toml) has no [node.gamma] table "
            "(its nodes: alpha, beta)");
}

TEST(ConfigTest, SizesAndDurationsMayBeNumbers) {
  ParsedResource r = Parse(std::string("[resource]\nblock-size = 65536\nresync-rate = 1000000\n"
                                       "ack-timeout = 9\n") + kNodes);
  ASSERT_EQ(Problems(r), "");
  EXPECT_EQ(r.config.block_size, "65536");
  EXPECT_EQ(r.config.resync_rate, "1000000");
  EXPECT_EQ(r.config.ack_timeout, "9");
}

struct Broken {
  const char* what;
  std::string text;
  std::string want;  // every problem, one per line
};

class ConfigBrokenTest : public ::testing::TestWithParam<Broken> {};

TEST_P(ConfigBrokenTest, NamesFileLineAndKey) {
  EXPECT_EQ(Problems(Parse(GetParam().text)), GetParam().want) << GetParam().what;
}

const std::string P = "/etc/blkmirror/vol0.toml";

INSTANTIATE_TEST_SUITE_P(
    Table, ConfigBrokenTest,
    ::testing::Values(
        Broken{"unknown key", std::string("[resource]\nwindw = 3\n") + kNodes,
               P + ":2: resource.windw: unknown key (known here: transport, ack, block-size, "
                   "window, quorum, resync-rate, key-file, peer-timeout, ack-timeout, compress, compress-mode, tls, cert, cert-key, ca)\n"},
        Broken{"wrong type", std::string("[resource]\nwindow = \"32\"\n") + kNodes,
               P + ":2: resource.window: expected an integer, not a string\n"},
        Broken{"out of range", std::string("[resource]\nwindow = 0\n") + kNodes,
               P + ":2: resource.window: 0 is out of range (1 to 65536)\n"},
        Broken{"float", std::string("[resource]\nquorum = 1.5\n") + kNodes,
               P + ":2: resource.quorum: expected an integer, not a float\n"},
        Broken{"bad codec", std::string("[resource]\ncompress = \"zstd:40\"\n") + kNodes,
               P + ":2: resource.compress: 'zstd:40': a zstd level is 1 to 19\n"},
        Broken{"bad compress mode", std::string("[resource]\ncompress-mode = \"often\"\n") + kNodes,
               P + ":2: resource.compress-mode: 'often': expected auto or always\n"},
        Broken{"bad choice", std::string("[resource]\nack = \"maybe\"\n") + kNodes,
               P + ":2: resource.ack: 'maybe': expected sent, received, durable\n"},
        Broken{"bad transport", std::string("[resource]\ntransport = \"pigeon\"\n") + kNodes,
               P + ":2: resource.transport: 'pigeon': expected auto, tcp, rdma, dpdk\n"},
        Broken{"bad block size", std::string("[resource]\nblock-size = \"3K\"\n") + kNodes,
               P + ":2: resource.block-size: block-size 3K: must be a multiple of 4K between 4K "
                   "and 64M\n"},
        Broken{"bad size text", std::string("[resource]\nresync-rate = \"fast\"\n") + kNodes,
               P + ":2: resource.resync-rate: 'fast' is not a size (examples: 4096, 4K, 1M, 2G)\n"},
        Broken{"zero rate", std::string("[resource]\nresync-rate = 0\n") + kNodes,
               P + ":2: resource.resync-rate: 0 bytes per second would never resync\n"},
        Broken{"bad duration", std::string("[resource]\npeer-timeout = \"soon\"\n") + kNodes,
               P + ":2: resource.peer-timeout: 'soon' is not a duration (examples: 6, 6s, 500ms)\n"},
        Broken{"quorum above the peers", std::string("[resource]\nquorum = 2\n") + kNodes,
               P + ":1: resource.quorum: 2 is more than the 1 peer(s) a node has\n"},
        Broken{"unknown top-level key", std::string("nodes = 2\n") + kNodes,
               P + ":1: nodes: unknown key (known: [resource], [node.NAME])\n"},
        Broken{"resource not a table", std::string("resource = 3\n") + kNodes,
               P + ":1: resource: expected a table ([resource])\n"},
        Broken{"node not a table", "node = 3\n",
               P + ":1: node: expected tables ([node.NAME])\n" + P +
                   ":1: node: 0 node(s): a resource needs at least two, this node and a peer "
                   "([node.NAME] tables)\n"},
        Broken{"one node only", "[node.alpha]\ndisk = \"/a\"\naddress = \"10.0.0.1:7100\"\n",
               P + ":1: node: 1 node(s): a resource needs at least two, this node and a peer "
                   "([node.NAME] tables)\n"},
        Broken{"missing disk and address",
               std::string("[node.gamma]\nrole = \"replica\"\n") + kNodes,
               P + ":1: node.gamma.disk: missing: the node's copy of the volume (a file or "
                   "device)\n" +
                   P + ":1: node.gamma.address: missing: HOST:PORT the node serves on as a "
                       "replica\n"},
        Broken{"same port twice",
               "[node.a]\ndisk = \"/a\"\naddress = \"10.0.0.1:7100\"\n"
               "[node.b]\ndisk = \"/b\"\naddress = \"10.0.0.1:7100\"\n",
               P + ":6: node.b.address: 10.0.0.1:7100 is node a's address too: the same port "
                   "twice\n"},
        Broken{"address without a port",
               "[node.a]\ndisk = \"/a\"\naddress = \"10.0.0.1\"\n"
               "[node.b]\ndisk = \"/b\"\naddress = \"10.0.0.2:7100\"\n",
               P + ":3: node.a.address: bad address '10.0.0.1': expected HOST:PORT\n"},
        Broken{"port 0",
               "[node.a]\ndisk = \"/a\"\naddress = \"10.0.0.1:0\"\n"
               "[node.b]\ndisk = \"/b\"\naddress = \"10.0.0.2:7100\"\n",
               P + ":3: node.a.address: '10.0.0.1:0': a node's address needs a port other than "
                   "0\n"},
        Broken{"two primaries",
               "[node.a]\nrole = \"primary\"\ndisk = \"/a\"\naddress = \"10.0.0.1:7100\"\n"
               "[node.b]\nrole = \"primary\"\ndisk = \"/b\"\naddress = \"10.0.0.2:7100\"\n",
               P + ":5: node.b.role: a second primary (node a is one): a volume has one\n"},
        Broken{"bad role",
               std::string("[node.gamma]\nrole = \"boss\"\ndisk = \"/c\"\naddress = "
                           "\"10.0.0.3:7100\"\n") +
                   kNodes,
               P + ":2: node.gamma.role: 'boss': expected primary, replica\n"},
        Broken{"bad dpdk values",
               std::string("[node.gamma]\ndisk = \"/c\"\naddress = \"10.0.0.3:7100\"\n"
                           "dpdk-ip = \"10.0.0\"\ndpdk-mtu = 100000\n") +
                   kNodes,
               P + ":4: node.gamma.dpdk-ip: '10.0.0' is not an IPv4 address\n" + P +
                   ":5: node.gamma.dpdk-mtu: 100000 is out of range (576 to 9000)\n"},
        Broken{"bad export",
               std::string("[node.gamma]\ndisk = \"/c\"\naddress = \"10.0.0.3:7100\"\n"
                           "export = [\"unix:\", \"nbd://x\"]\n") +
                   kNodes,
               P + ":4: node.gamma.export: 'unix:' needs a socket path\n" + P +
                   ":4: node.gamma.export: 'nbd://x': expected unix:PATH or HOST:PORT (bad "
                   "address 'nbd://x': port '//x' is not a number in 0..65535)\n"},
        Broken{"bad metrics address",
               std::string("[node.gamma]\ndisk = \"/c\"\naddress = \"10.0.0.3:7100\"\nmetrics = \"x\"\n") +
                   kNodes,
               P + ":4: node.gamma.metrics: bad address 'x': expected HOST:PORT\n"},
        Broken{"empty path", std::string("[node.gamma]\ndisk = \"\"\naddress = \"10.0.0.3:7100\"\n") + kNodes,
               P + ":2: node.gamma.disk: an empty path\n"},
        Broken{"unknown node key",
               std::string("[node.gamma]\ndisk = \"/c\"\naddress = \"10.0.0.3:7100\"\nlisten = 1\n") +
                   kNodes,
               P + ":4: node.gamma.listen: unknown key (known here: role, disk, address, export, "
                   "bind, meta-dir, metrics, dpdk-port, dpdk-ip, dpdk-mtu)\n"},
        Broken{"several mistakes at once",
               std::string("[resource]\nwindow = -1\nack = 3\nfoo = 1\n") + kNodes,
               P + ":2: resource.window: -1 is out of range (1 to 65536)\n" + P +
                   ":3: resource.ack: expected a string, not an integer\n" + P +
                   ":4: resource.foo: unknown key (known here: transport, ack, block-size, "
                   "window, quorum, resync-rate, key-file, peer-timeout, ack-timeout, compress, compress-mode, tls, cert, cert-key, ca)\n"}),
    [](const auto& info) { return "Case" + std::to_string(info.index); });

TEST(ConfigTest, NonAsciiIsRefusedBeforeTheTomlParserSeesIt) {
  // "c" then U+FE7F: toml++ 3.3 reached __builtin_unreachable on it (fuzz/config_fuzzer).
  for (const std::string& text :
       {std::string("[resource]\nc\xef\xb9\xbf = 1\n"), std::string("[resource]\nc\xc3\xa9 = 1\n"),
        std::string("[resource]\n# caf\xc3\xa9\n")}) {
    ParsedResource r = Parse(text);
    ASSERT_EQ(r.problems.size(), 1u);
    const std::string byte = text.find("\xef") != std::string::npos ? "0xef" : "0xc3";
    const std::string column = text.find('#') != std::string::npos ? "6" : "2";
    EXPECT_EQ(r.problems[0].ToString(), P + ":2: a non-ASCII byte (" + byte + ") at column " +
                                            column +
                                            ": configuration files are ASCII, comments and strings "
                                            "included");
  }
}

TEST(ConfigTest, NotTomlNamesTheLine) {
  ParsedResource r = Parse("[resource]\nwindow = 3\n[node.a\n");
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(r.problems[0].line, 3);
  EXPECT_TRUE(r.problems[0].ToString().starts_with(P + ":3: not TOML: "))
      << r.problems[0].ToString();
}

// Files on disk: a real directory, a real key file, check-config's view across resources.
class ConfigDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("bm-config-test-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
  }
  std::string Check(const std::string& name = "") {
    std::string out;
    for (const ConfigProblem& p : CheckConfigDir(dir_.string(), name)) out += p.ToString() + "\n";
    return out;
  }
  std::filesystem::path dir_;
};

TEST_F(ConfigDirTest, KeyFileIsReadAndCheckedOnlyWhenAsked) {
  const std::string key = (dir_ / "vol0.key").string();
  Write("vol0.toml", "[resource]\nkey-file = \"" + key + "\"\n" + kNodes);
  const std::string file = (dir_ / "vol0.toml").string();
  EXPECT_EQ(Check(), file + ":2: resource.key-file: " +
                         engine::LoadKeyFile(key).status().message() + "\n");
  EXPECT_EQ(Problems(LoadResource(dir_.string(), "vol0", CheckFiles::kNo)), "");
  ASSERT_TRUE(engine::WriteKeyFile(key).ok());
  EXPECT_EQ(Check(), "");
  EXPECT_EQ(Check("vol0"), "");
}

TEST_F(ConfigDirTest, SamePortInTwoResourcesAndMissingFiles) {
  Write("a.toml", kNodes);
  Write("b.toml", "[node.alpha]\ndisk = \"/x\"\naddress = \"10.0.0.1:7100\"\n"
                  "[node.gamma]\ndisk = \"/y\"\naddress = \"10.0.0.3:7100\"\n");
  const std::string b = (dir_ / "b.toml").string();
  EXPECT_EQ(Check(), b + ":3: node.alpha.address: 10.0.0.1:7100 is resource a's too: the same "
                         "port twice\n");
  EXPECT_EQ(Check("zzz"), (dir_ / "zzz.toml").string() +
                              ": no resource 'zzz': the file does not exist\n");
  std::filesystem::remove(dir_ / "a.toml");
  std::filesystem::remove(dir_ / "b.toml");
  EXPECT_EQ(Check(), dir_.string() + ": no resource files (NAME.toml) in it\n");
}

// daemon.toml: the daemon's own settings, checked with the resources, never read as one.
TEST_F(ConfigDirTest, DaemonFileIsCheckedAndIsNoResource) {
  Write("a.toml", kNodes);
  Write("daemon.toml", "node = \"alpha\"\nlog-level = \"loud\"\nadmin-socket = 3\nport = 1\n");
  const std::string d = (dir_ / "daemon.toml").string();
  EXPECT_EQ(Check(), d + ":2: log-level: 'loud': expected trace, debug, info, warn, error, off\n" +
                         d + ":3: admin-socket: expected a string, not an integer\n" + d +
                         ":4: port: unknown key (known: node, log-level, admin-socket)\n");
  std::vector<ConfigProblem> problems;
  EXPECT_EQ(ResourceNames(dir_.string(), problems), std::vector<std::string>{"a"});
  EXPECT_EQ(Check("daemon"), d + ": daemon.toml holds the daemon's settings, not a resource: name "
                                 "the resource otherwise\n");
  Write("daemon.toml", "node = \"alpha\"\nlog-level = \"debug\"\n");
  EXPECT_EQ(Check(), "");
  ParsedDaemonConfig c = LoadDaemonConfig(dir_.string());
  EXPECT_EQ(c.config.node, "alpha");
  EXPECT_EQ(c.config.log_level, "debug");
  std::filesystem::remove(dir_ / "daemon.toml");
  EXPECT_TRUE(LoadDaemonConfig(dir_.string()).problems.empty());
}

}  // namespace
}  // namespace blkmirror::cli
