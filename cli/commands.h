// The blkmirror commands: what the CLI parses, and the functions that run them. Each returns
// the process exit code (kExit*) after printing its errors (one line each, naming what and where).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace blkmirror::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitDiffers = 1;  // verify: the copies differ
inline constexpr int kExitUsage = 2;    // bad arguments
inline constexpr int kExitFailed = 3;   // the operation failed (peer, disk, protocol)

struct ServeArgs {
  std::string listen;
  std::string target;
  std::string transport = "auto";
  bool once = false;
  std::string max_block_size = "4M";
  std::string pool_size = "256M";
  std::string test_fault;
};

struct PushArgs {
  std::string source;
  std::vector<std::string> peers;
  std::string ack = "durable";
  std::string block_size = "1M";
  uint32_t window = 32;
  std::string transport = "auto";
  bool json = false;
  int progress = -1;  // -1: on a terminal; 0: never; 1: always
  std::string test_fault;
  bool tcp_zerocopy = false;
};

struct VerifyArgs {
  std::string source;
  std::string peer;
  std::string block_size = "1M";
  std::string transport = "auto";
  bool json = false;
  int progress = -1;
};

int RunServe(const ServeArgs& args);
int RunPush(const PushArgs& args);
int RunVerify(const VerifyArgs& args);

}  // namespace blkmirror::cli
