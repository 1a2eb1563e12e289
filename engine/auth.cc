#include "engine/auth.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string_view>
#include <vector>

namespace blkmirror::engine {
namespace {

void InitSodium() {
  static const bool ok = sodium_init() >= 0;
  (void)ok;
}

Mac Hmac(const Key& key, std::string_view label, std::initializer_list<std::span<const uint8_t>> parts) {
  InitSodium();
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, key.bytes.data(), key.bytes.size());
  crypto_auth_hmacsha256_update(&st, reinterpret_cast<const unsigned char*>(label.data()),
                                label.size());
  for (auto part : parts) crypto_auth_hmacsha256_update(&st, part.data(), part.size());
  Mac mac;
  crypto_auth_hmacsha256_final(&st, mac.data());
  return mac;
}

std::span<const uint8_t> Bytes(const proto::RawHeader& h) {
  return {reinterpret_cast<const uint8_t*>(h.data()), h.size()};
}

}  // namespace

Result<Key> LoadKeyFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Errno(errno, fmt::format("cannot read the key file {}", path));
  struct stat st {};
  fstat(fd, &st);
  if (st.st_mode & 077) {
    close(fd);
    return Status::Invalid("key file {} is readable by others (mode {:o}); chmod 600 it", path,
                           st.st_mode & 0777);
  }
  std::vector<uint8_t> raw(4096);
  ssize_t n = read(fd, raw.data(), raw.size());
  close(fd);
  if (n < 0) return Status::Errno(errno, fmt::format("cannot read the key file {}", path));
  raw.resize(static_cast<size_t>(n));
  // A keygen file: hex, maybe with a trailing newline.
  std::vector<uint8_t> bytes;
  size_t end = raw.size();
  while (end > 0 && (raw[end - 1] == '\n' || raw[end - 1] == '\r')) --end;
  bytes.resize(end / 2);
  size_t decoded = 0;
  InitSodium();
  if (end >= 64 && sodium_hex2bin(bytes.data(), bytes.size(), reinterpret_cast<const char*>(raw.data()),
                                  end, nullptr, &decoded, nullptr) == 0 &&
      decoded == end / 2) {
    bytes.resize(decoded);
  } else {
    bytes = raw;  // a raw key
  }
  if (bytes.size() < 32) {
    return Status::Invalid("key file {} holds {} bytes; a key needs at least 32 (make one with "
                           "`blkmirror keygen {}`)",
                           path, bytes.size(), path);
  }
  Key key;
  if (bytes.size() == 32) {
    std::memcpy(key.bytes.data(), bytes.data(), 32);
  } else {
    crypto_generichash(key.bytes.data(), key.bytes.size(), bytes.data(), bytes.size(), nullptr, 0);
  }
  sodium_memzero(raw.data(), raw.size());
  sodium_memzero(bytes.data(), bytes.size());
  return key;
}

Status WriteKeyFile(const std::string& path) {
  InitSodium();
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Status::Errno(errno, fmt::format("cannot create the key file {}", path));
  uint8_t key[32];
  randombytes_buf(key, sizeof(key));
  char hex[65];
  sodium_bin2hex(hex, sizeof(hex), key, sizeof(key));
  sodium_memzero(key, sizeof(key));
  std::string text = std::string(hex) + "\n";
  sodium_memzero(hex, sizeof(hex));
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            fsync(fd) == 0;
  int err = errno;
  close(fd);
  if (!ok) return Status::Errno(err, fmt::format("cannot write the key file {}", path));
  return Status::Ok();
}

Nonce RandomNonce() {
  InitSodium();
  Nonce n;
  randombytes_buf(n.data(), n.size());
  return n;
}

Mac PrimaryProof(const Key& key, const proto::RawHeader& hello, const Nonce& nonce_r,
                 const Nonce& nonce_p) {
  return Hmac(key, "blkmirror-auth-v1 primary", {Bytes(hello), nonce_r, nonce_p});
}

Mac ReplicaProof(const Key& key, const proto::RawHeader& hello, const proto::RawHeader& hello_ok,
                 const Nonce& nonce_p, const Nonce& nonce_r) {
  return Hmac(key, "blkmirror-auth-v1 replica", {Bytes(hello), Bytes(hello_ok), nonce_p, nonce_r});
}

bool SameMac(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && sodium_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace blkmirror::engine
