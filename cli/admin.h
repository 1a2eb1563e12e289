// The daemon's admin socket: a unix stream socket (mode 0600; its directory, if missing, made 0700) where
// `blkmirror status` asks the running daemon. A client sends one request line ("status" or
// "status NAME", at most kMaxAdminRequest bytes) and reads one JSON object back; the daemon then
// closes. Connections from a user other than the daemon's and root are refused (SO_PEERCRED),
// whatever the socket's mode; each connection has kAdminIoTimeout to send its line and read.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "common/status.h"

namespace blkmirror::cli {

inline constexpr size_t kMaxAdminRequest = 256;
inline constexpr std::chrono::milliseconds kAdminIoTimeout{2000};

class AdminServer {
 public:
  // Answers a request line (without its newline) with a JSON text; called on the server's thread.
  using Handler = std::function<std::string(std::string_view request)>;

  // Binds `path` (replacing a stale socket, refusing when a daemon answers there) and serves it
  // on a thread of its own.
  static Result<std::unique_ptr<AdminServer>> Start(const std::string& path, Handler handler);
  ~AdminServer();  // stops the thread, removes the socket
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

 private:
  AdminServer() = default;
  void Serve();
  void Answer(int fd);
  std::string path_;
  Handler handler_;
  int listen_fd_ = -1;
  int stop_fd_ = -1;  // eventfd: the thread ends when it is signalled
  std::thread thread_;
};

// Sends `request` to the daemon at `path` and returns its answer (bounded by kAdminIoTimeout).
Result<std::string> AdminQuery(const std::string& path, std::string_view request);

}  // namespace blkmirror::cli
