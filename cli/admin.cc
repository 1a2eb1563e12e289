#include "cli/admin.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/clock.h"

namespace blkmirror::cli {
namespace {

Result<sockaddr_un> SocketAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Status::Invalid("admin socket path '{}': 1 to {} bytes", path,
                           sizeof(addr.sun_path) - 1);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Waits until `fd` is ready for `events` or `deadline_ns` passes: false on the deadline.
bool WaitFd(int fd, short events, uint64_t deadline_ns) {
  for (;;) {
    const uint64_t now = NowNs();
    if (now >= deadline_ns) return false;
    pollfd p{fd, events, 0};
    const int ms = static_cast<int>((deadline_ns - now + 999'999) / 1'000'000);
    const int n = poll(&p, 1, ms);
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

// Writes all of `text`, bounded by `deadline_ns`.
Status WriteAll(int fd, std::string_view text, uint64_t deadline_ns) {
  while (!text.empty()) {
    const ssize_t n = send(fd, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      text.remove_prefix(static_cast<size_t>(n));
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!WaitFd(fd, POLLOUT, deadline_ns)) return Status::Error(ErrorCode::kTimeout, "timed out");
    } else {
      return Status::Errno(errno, "send");
    }
  }
  return Status::Ok();
}

// Reads until the peer closes (or `stop` is found, when not 0), at most `limit` bytes, bounded
// by `deadline_ns`.
Result<std::string> ReadUntil(int fd, char stop, size_t limit, uint64_t deadline_ns) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      if (stop != 0 && out.find(stop) != std::string::npos) return out;
      if (out.size() > limit) {
        return Status::Invalid("more than {} bytes", limit);
      }
    } else if (n == 0) {
      return out;
    } else if (errno == EAGAIN || errno == EINTR) {
      if (!WaitFd(fd, POLLIN, deadline_ns)) {
        return Status::Error(ErrorCode::kTimeout, "timed out");
      }
    } else {
      return Status::Errno(errno, "recv");
    }
  }
}

uint64_t DeadlineNs() {
  return NowNs() + ToNs(kAdminIoTimeout);
}

}  // namespace

Result<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& path, Handler handler) {
  ASSIGN_OR_RETURN(sockaddr_un addr, SocketAddress(path));
  const std::string dir = Dirname(path);
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::Errno(errno, fmt::format("cannot create the admin socket's directory {}", dir));
  }
  // A socket left by a daemon that died is replaced; one where a daemon answers is not.
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::Error(ErrorCode::kBusy,
                           fmt::format("admin socket {} exists and is not a socket", path));
    }
    if (AdminQuery(path, "ping").ok()) {
      return Status::Error(ErrorCode::kBusy,
                           fmt::format("a blkmirror daemon already answers on {}", path));
    }
    unlink(path.c_str());
  }
  std::unique_ptr<AdminServer> server(new AdminServer());
  server->path_ = path;
  server->handler_ = std::move(handler);
  server->listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (server->listen_fd_ < 0) return Status::Errno(errno, "admin socket");
  // The socket is created 0600 (bind applies the umask), then made so explicitly.
  const mode_t old_mask = umask(0177);
  const int bound = bind(server->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  const int bind_errno = errno;
  umask(old_mask);
  if (bound != 0) return Status::Errno(bind_errno, "cannot bind the admin socket " + path);
  if (chmod(path.c_str(), 0600) != 0 || listen(server->listen_fd_, 16) != 0) {
    const int err = errno;
    unlink(path.c_str());
    return Status::Errno(err, "admin socket " + path);
  }
  server->stop_fd_ = eventfd(0, EFD_CLOEXEC);
  if (server->stop_fd_ < 0) return Status::Errno(errno, "eventfd");
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

AdminServer::~AdminServer() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    if (write(stop_fd_, &one, sizeof one) < 0) spdlog::warn("admin socket: cannot stop its thread");
    thread_.join();
  }
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    unlink(path_.c_str());
  }
  if (stop_fd_ >= 0) close(stop_fd_);
}

void AdminServer::Serve() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0 && errno != EINTR) {
      spdlog::error("admin socket {}: poll: {}", path_, std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) continue;
    Answer(fd);
    close(fd);
  }
}

void AdminServer::Answer(int fd) {
  const uint64_t deadline = DeadlineNs();
  // The request is read before anything is answered, a refusal included: closing a unix socket
  // with unread data resets it, and the client would lose the answer.
  auto request = ReadUntil(fd, '\n', kMaxAdminRequest, deadline);
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
      (cred.uid != 0 && cred.uid != geteuid())) {
    spdlog::warn("admin socket {}: refused uid {} (pid {}): only root and uid {} may ask", path_,
                 cred.uid, cred.pid, geteuid());
    (void)WriteAll(fd,
                   fmt::format("{{\"error\":\"refused: uid {} is not root or the daemon's user "
                               "(uid {})\"}}\n",
                               cred.uid, geteuid()),
                   deadline);
    return;
  }
  if (!request.ok()) {
    spdlog::debug("admin socket {}: pid {}: {}", path_, cred.pid, request.status().message());
    return;
  }
  std::string line = request->substr(0, request->find('\n'));
  (void)WriteAll(fd, handler_(line) + "\n", deadline);
}

Result<std::string> AdminQuery(const std::string& path, std::string_view request) {
  ASSIGN_OR_RETURN(sockaddr_un addr, SocketAddress(path));
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::Errno(errno, "socket");
  const uint64_t deadline = DeadlineNs();
  auto fail = [&](Status s) {
    close(fd);
    return s;
  };
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    return fail(Status::Errno(err, fmt::format("cannot reach the daemon's admin socket {}{}",
                                               path,
                                               err == ENOENT || err == ECONNREFUSED
                                                   ? " (is `blkmirror daemon` running?)"
                                                   : "")));
  }
  // A daemon that refuses this user answers and closes without reading: its answer is read even
  // when the request could not be sent.
  Status sent = WriteAll(fd, std::string(request) + "\n", deadline);
  auto answer = ReadUntil(fd, 0, 16 << 20, deadline);
  close(fd);
  if (answer.ok() && !answer->empty()) return std::move(*answer);
  if (!sent.ok()) return sent.Context("admin socket " + path);
  if (!answer.ok()) return answer.status().Context("admin socket " + path);
  return Status::Error(ErrorCode::kClosed,
                       fmt::format("admin socket {}: the daemon closed without answering", path));
}

}  // namespace blkmirror::cli
