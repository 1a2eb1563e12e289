// Acceptor: a listening stream socket (TCP, or a unix socket path) whose connections the loop's
// io_uring accepts, one ACCEPT in flight at a time.
//
// Accept failures a retry may cure (the process out of descriptors or memory) are retried with a
// backoff, 100 ms doubling to 2 s, said once in the log and once more when accepting works again;
// other failures are logged and the accept is re-armed. New connections queue until Take.
//
// Ownership: the accepted descriptors are the caller's once taken. A unix socket path is removed
// at construction (a stale one) and at destruction.
// Thread safety: none; the acceptor belongs to its ring's thread.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <linux/time_types.h>
#include <memory>
#include <span>
#include <string>

#include "common/status.h"
#include "io/ring.h"

namespace blkmirror::io {

inline constexpr std::chrono::milliseconds kAcceptRetryFirst{100};
inline constexpr std::chrono::milliseconds kAcceptRetryMax{2000};

struct AcceptedSocket {
  int fd = -1;
  std::string peer;  // "10.0.0.2:51234", "unix"
};

class Acceptor final : public RingHandler {
 public:
  // Listens on host:port (port 0: any free one).
  static Result<std::unique_ptr<Acceptor>> ListenTcp(Ring& ring, const std::string& host,
                                                     uint16_t port);
  // Listens on a unix socket at `path` (mode 0660).
  static Result<std::unique_ptr<Acceptor>> ListenUnix(Ring& ring, const std::string& path);
  ~Acceptor();
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;

  // "127.0.0.1:10809", "[::1]:10809" or "unix:/run/blkmirror/vol0.sock".
  const std::string& local() const { return local_; }
  bool is_unix() const { return !unix_path_.empty(); }
  // Moves connections accepted since the last call into `out`; returns how many.
  size_t Take(std::span<AcceptedSocket> out);

  void OnCqe(RingOp* op, int32_t res, uint32_t flags) override;

 private:
  Acceptor(Ring& ring, int fd, std::string local, std::string unix_path);
  void Arm();
  void RetryLater(int32_t res);

  struct Op : RingOp {
    bool retry = false;  // the backoff timer, not the accept
  };
  Ring& ring_;
  int fd_ = -1;
  std::string local_;
  std::string unix_path_;
  Op accept_op_;
  Op retry_op_;
  bool accept_inflight_ = false;
  bool retry_inflight_ = false;
  bool stopping_ = false;
  uint32_t failures_ = 0;
  __kernel_timespec retry_ts_{};
  sockaddr_storage addr_{};
  socklen_t addr_len_ = sizeof(sockaddr_storage);
  std::deque<AcceptedSocket> accepted_;
};

// "HOST:PORT" of a socket address ("unix" for AF_UNIX).
std::string SockaddrName(const sockaddr* sa);

}  // namespace blkmirror::io
