// What `--tls` asks of the TCP transport (transport/tls/tls.h does the work). No OpenSSL here:
// the transport contract includes it.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace blkmirror::transport {

struct TlsOptions {
  bool enabled = false;
  // Certificates (all three, or none): this node's certificate chain and key (PEM), and the CA
  // that the peer's certificate must be signed by. Both sides present one and check the other's.
  std::string cert;
  std::string cert_key;
  std::string ca;
  // Without certificates: a TLS 1.3 external pre-shared key derived from the key file
  // (--key-file), so both sides prove they hold it before a byte of blkmirror is exchanged.
  bool has_psk_key = false;
  std::array<uint8_t, 32> psk_key{};
  // Hand the record layer to the kernel (kTLS) after the handshake where the tls module is
  // loaded; off only for tests and measurements.
  bool ktls = true;

  bool certificates() const { return !cert.empty(); }
};

}  // namespace blkmirror::transport
