// tcp_pingpong: the floor for a synchronous 4 KiB replication round trip over TCP. The client
// sends N bytes, the server echoes a 64-byte reply (the size of a blkmirror Ack frame), one at a
// time; prints p50/p99 of the round trip in microseconds, as key=value lines.
//
//   tcp_pingpong server PORT SIZE COUNT [BIND_IPV4]     (default 127.0.0.1)
//   tcp_pingpong client HOST PORT SIZE COUNT [SAMPLES]
//
// SAMPLES: a file the client writes every round trip to, in microseconds, one a line, sorted
// (what bench/report draws the ping-pong's CDF from).
//
// Plain blocking sockets with TCP_NODELAY: nothing in the way, so what it measures is the
// kernel's TCP round trip for this message size (loopback, or the lab's wire between two guests).
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"

namespace {

bool ReadAll(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t r = write(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

void NoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int Server(int port, size_t size, long count, const char* bind_ip) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, bind_ip, &sa.sin_addr) != 1) {
    std::fprintf(stderr, "tcp_pingpong: not an IPv4 address: %s\n", bind_ip);
    return 2;
  }
  if (bind(l, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || listen(l, 1) != 0) {
    std::perror("tcp_pingpong: bind/listen");
    return 1;
  }
  std::printf("listening\n");
  std::fflush(stdout);
  int fd = accept(l, nullptr, nullptr);
  NoDelay(fd);
  std::vector<char> buf(size), reply(64, 'a');
  for (long i = 0; i < count; ++i) {
    if (!ReadAll(fd, buf.data(), size) || !WriteAll(fd, reply.data(), reply.size())) return 1;
  }
  close(fd);
  close(l);
  return 0;
}

int Client(const char* host, int port, size_t size, long count, const char* samples) {
  addrinfo hints{}, *ai = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, std::to_string(port).c_str(), &hints, &ai) != 0) return 1;
  int fd = socket(ai->ai_family, SOCK_STREAM, 0);
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
    std::perror("tcp_pingpong: connect");
    return 1;
  }
  freeaddrinfo(ai);
  NoDelay(fd);
  std::vector<char> buf(size, 'x'), reply(64);
  std::vector<double> us;
  us.reserve(static_cast<size_t>(count));
  for (long i = 0; i < count; ++i) {
    uint64_t t0 = blkmirror::NowNs();
    if (!WriteAll(fd, buf.data(), size) || !ReadAll(fd, reply.data(), reply.size())) return 1;
    us.push_back(static_cast<double>(blkmirror::NowNs() - t0) / 1e3);
  }
  std::sort(us.begin(), us.end());
  auto q = [&](double p) { return us[static_cast<size_t>(p * static_cast<double>(us.size() - 1))]; };
  std::printf("pingpong_us_p50=%.1f\npingpong_us_p99=%.1f\n", q(0.50), q(0.99));
  if (samples != nullptr) {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(samples, "w"), &std::fclose);
    if (f == nullptr) {
      std::perror(samples);
      return 1;
    }
    for (double v : us) std::fprintf(f.get(), "%.1f\n", v);
  }
  close(fd);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "server" && (argc == 5 || argc == 6)) {
    return Server(std::atoi(argv[2]), std::strtoul(argv[3], nullptr, 10), std::atol(argv[4]),
                  argc == 6 ? argv[5] : "127.0.0.1");
  }
  if (mode == "client" && (argc == 6 || argc == 7)) {
    return Client(argv[2], std::atoi(argv[3]), std::strtoul(argv[4], nullptr, 10),
                  std::atol(argv[5]), argc == 7 ? argv[6] : nullptr);
  }
  std::fprintf(stderr,
               "usage: tcp_pingpong server PORT SIZE COUNT [BIND_IPV4] | "
               "client HOST PORT SIZE COUNT [SAMPLES]\n");
  return 2;
}
