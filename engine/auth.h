// Peer authentication: a shared key and a mutual HMAC-SHA256 challenge-response in the session
// handshake (libsodium's crypto_auth_hmacsha256; no hand-written crypto).
//
//   primary                                   replica (has a key)
//     Hello ─────────────────────────────────▶
//                                        ◀──── AuthChallenge(nonce_r)
//     AuthProof(nonce_p, HMAC(key, "blkmirror-auth-v1 primary" | Hello header | nonce_r | nonce_p))
//            ────────────────────────────────▶   checks it; a wrong or missing proof: refused,
//                                                before the primary can send a single block
//                                        ◀──── HelloOk + HMAC(key, "blkmirror-auth-v1 replica" |
//                                                      Hello header | HelloOk header | nonce_p | nonce_r)
//     checks the replica's proof (mutual: a primary with a key never talks to an impostor)
//
// The Hello header carries the volume id, so a proof is bound to the volume (and to the block
// size, window and sizes the session was opened with).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "common/status.h"
#include "proto/frame.h"

namespace blkmirror::engine {

struct Key {
  std::array<uint8_t, 32> bytes{};  // the HMAC key (a key file's bytes, hashed to 32 if longer)
};

// Reads a key file: 32 or more bytes written by `blkmirror keygen` (64 hex characters and a
// newline) or raw. Refuses a file that others can read (mode & 077), naming it.
Result<Key> LoadKeyFile(const std::string& path);
// Writes a new random key (32 bytes, as 64 hex characters) to `path` with mode 0600; refuses to
// overwrite an existing file.
Status WriteKeyFile(const std::string& path);

using Nonce = std::array<uint8_t, proto::kAuthNonceSize>;
using Mac = std::array<uint8_t, proto::kAuthMacSize>;

Nonce RandomNonce();
Mac PrimaryProof(const Key& key, const proto::RawHeader& hello, const Nonce& nonce_r,
                 const Nonce& nonce_p);
Mac ReplicaProof(const Key& key, const proto::RawHeader& hello, const proto::RawHeader& hello_ok,
                 const Nonce& nonce_p, const Nonce& nonce_r);
// Constant-time comparison.
bool SameMac(std::span<const uint8_t> a, std::span<const uint8_t> b);

}  // namespace blkmirror::engine
