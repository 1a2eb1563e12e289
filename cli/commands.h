// The blkmirror commands: what the CLI parses, and the functions that run them. Each returns
// the process exit code (kExit*) after printing its errors (one line each, naming what and where).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace blkmirror::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitDiffers = 1;  // verify: the copies differ
inline constexpr int kExitUsage = 2;    // bad arguments
inline constexpr int kExitFailed = 3;   // the operation failed (peer, disk, protocol)
// Refused by the volume's roles and generations: a primary connected, data inconsistent, a
// split brain, a node behind its peer, a replica's disk not promoted.
inline constexpr int kExitRefused = 4;

// The DPDK port of a command that talks to peers (--dpdk-*; transport/dpdk/port.h).
struct DpdkArgs {
  std::string port;         // --dpdk-port
  std::string ip;           // --dpdk-ip
  uint32_t mtu = 0;         // --dpdk-mtu
  std::string test_faults;  // --test-packet-faults (hidden)
};

// TLS on TCP (--tls, --cert, --cert-key, --ca; transport/tls/tls.h): certificates when --cert
// is given, else a pre-shared key from --key-file.
struct TlsArgs {
  bool enabled = false;
  std::string cert;
  std::string cert_key;
  std::string ca;
  bool no_ktls = false;  // --no-ktls (hidden): TLS in user space even where kTLS works
};

struct ServeArgs {
  std::string listen;
  std::string target;
  std::string transport = "auto";
  DpdkArgs dpdk;
  TlsArgs tls;
  bool once = false;
  std::string max_block_size = "4M";
  std::string pool_size = "256M";
  std::string key_file;
  bool insecure = false;  // serve a non-loopback address without a key
  std::string meta_dir;
  std::string handshake_timeout = "30s";  // from connect to the end of the handshake
  std::string max_peer_timeout = "60s";   // the longest a primary may stay silent
  uint32_t max_connections = 256;         // open at once; more are refused at accept
  std::string metrics;                    // HOST:PORT of the Prometheus endpoint ("" = none)
  std::string test_fault;
  std::string test_disk_fault;
};

struct PushArgs {
  std::string source;
  std::vector<std::string> peers;
  std::string ack = "durable";
  std::string block_size = "1M";
  uint32_t window = 32;
  std::string transport = "auto";
  DpdkArgs dpdk;
  TlsArgs tls;
  bool json = false;
  int progress = -1;  // -1: on a terminal; 0: never; 1: always
  std::string meta_dir;
  // What to send; at most one of the three (none: --resume, the default).
  bool full = false;           // ignore the bitmaps: send every block
  bool resume = false;         // send what the bitmaps say a replica may miss
  bool checksum_skip = false;  // compare per-block CRCs first, send only the differing blocks
  std::string checksum_block_size = "4K";  // --checksum-skip's granularity (at most the block)
  uint32_t quorum = 0;         // 0: every peer
  std::string peer_timeout = "6s";
  std::string ack_timeout;  // "": --peer-timeout
  std::string key_file;
  std::string test_fault;
  std::string test_source_fault;
  std::string test_hold_at;  // hold the push once this many bytes are acked, until SIGUSR1
  bool tcp_zerocopy = false;
  std::string bind;  // local address to connect from
  std::string compress = "none";  // lz4, zstd[:LEVEL] or none (engine/compress.h)
  std::string compress_mode = "auto";  // auto or always (engine/compress.h)
};

struct VolumeArgs {
  std::string disk;
  std::vector<std::string> peers;
  std::vector<std::string> exports;  // unix:PATH or HOST:PORT
  std::string name;                  // the export's name (default: the disk's file name)
  std::string ack = "durable";
  std::string block_size = "128K";
  uint32_t window = 32;
  std::string transport = "auto";
  DpdkArgs dpdk;
  TlsArgs tls;
  // Replicas a write needs: unset, every peer; 0, none (writes go on with no replica reachable).
  std::optional<uint32_t> quorum;
  std::string peer_timeout = "6s";
  std::string ack_timeout;
  std::string key_file;
  std::string resync_rate;  // bytes per second ("" = no limit)
  std::string pool_size = "64M";
  uint32_t max_clients = 16;
  std::string meta_dir;
  std::string run_dir = "/run/blkmirror";
  std::string bind;
  std::string metrics;  // HOST:PORT of the Prometheus endpoint ("" = none)
  std::string compress = "none";  // lz4, zstd[:LEVEL] or none (engine/compress.h)
  std::string compress_mode = "auto";  // auto or always (engine/compress.h)
};

struct VerifyArgs {
  std::string source;
  std::string peer;
  std::string block_size = "1M";
  std::string transport = "auto";
  DpdkArgs dpdk;
  TlsArgs tls;
  bool json = false;
  int progress = -1;
  std::string key_file;
  bool repair = false;  // resend the differing blocks
  std::string meta_dir;
  std::string bind;
};

class Runner;  // cli/run.h: a command of its own, or a resource of the daemon
int RunServe(const ServeArgs& args, Runner& runner);
int RunPush(const PushArgs& args);
int RunVolume(const VolumeArgs& args, Runner& runner);
struct StatusArgs {
  std::string name;    // a resource of the running daemon (all of them: daemon = true, name "")
  bool daemon = false;
  std::string admin_socket;  // "": daemon.toml's, else kDefaultAdminSocket
  std::string config_dir;
  bool watch = false;  // print again every second, until interrupted
  std::string source;  // what a push's metadata says
  std::string volume;  // or what a running volume daemon says
  std::string disk;    // or a node's role and generations for its disk
  std::string meta_dir;
  std::string run_dir = "/run/blkmirror";
  bool json = false;
};
int RunVolumeStatus(const StatusArgs& args);
int RunDaemonStatus(const StatusArgs& args);
int RunDiskStatus(const StatusArgs& args);

// promote / demote: a node's role for a volume (cli/roles.h).
struct RoleArgs {
  std::string disk;
  std::string meta_dir;
  bool force = false;    // promote: while a primary is connected, or the data is inconsistent
  bool discard = false;  // demote: drop this node's generations (a full copy from the primary)
};
int RunPromote(const RoleArgs& args);
int RunDemote(const RoleArgs& args);

int RunVerify(const VerifyArgs& args);
int RunStatus(const StatusArgs& args);
int RunKeygen(const std::string& path);

}  // namespace blkmirror::cli
