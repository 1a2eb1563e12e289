// TLS 1.3 for the TCP transport, through OpenSSL 3, on memory: the io_uring loop keeps owning
// the socket, and a Session only turns ciphertext into plaintext and back.
//
//   socket --RECV--> RxSpace()/RxCommit() --[BIO pair]--> SSL --Read()--> header / pool buffer
//   frames --Write()--> SSL --[BIO pair]--> TxPending()/TxConsume() --SEND--> socket
//
// The BIO pair's network half is read and written in place (BIO_nwrite0/BIO_nread0): the
// kernel receives ciphertext straight into the pair, and sends it from there. Read() decrypts
// into the caller's memory (a Data frame's payload: its pool buffer, at the offset reached).
//
// Authentication is mutual, by certificates (both sides present one signed by the CA the other
// trusts) or, without certificates, by a TLS 1.3 external pre-shared key derived from the key
// file (HKDF-SHA256, label "blkmirror tls psk v1"): TLS_AES_128_GCM_SHA256, (EC)DHE key
// exchange, no session tickets, no renegotiation. Every failure is a Status whose message says
// which side refused what (a peer without TLS, a wrong CA, an expired certificate, another
// pre-shared key), with the peer's name.
//
// kTLS: after the handshake, TakeKernelTls() installs the negotiated traffic keys in the
// socket (setsockopt SOL_TLS TLS_TX/TLS_RX) where the kernel has the tls module; from then on
// the socket carries plaintext for us and the Session is done. For that, the handshake reads
// the socket record by record (RxSpace() never spans the end of a record), so nothing the peer
// sent after its last handshake record is ever read by user space. docs/design.md says why not
// SSL_OP_ENABLE_KTLS (OpenSSL turns kTLS on only with its socket BIOs).
//
// Thread safety: none; a Session belongs to its transport's loop. A Context may be shared by
// the sessions of one thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "common/status.h"
#include "transport/tls/tls_options.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;
typedef struct bio_st BIO;

namespace blkmirror::transport::tls {

enum class Role : bool { kClient, kServer };

// Ciphertext each direction of a session buffers (the BIO pair's two halves).
inline constexpr size_t kPairBytes = 256 << 10;

// The OpenSSL context of one transport: certificates or the pre-shared key, TLS 1.3 only.
class Context {
 public:
  // Loads and checks the certificate, key and CA (errors name the file and what is wrong with
  // it). A certificate outside its validity dates is only warned about: peers refuse it, and
  // say so.
  static Result<std::unique_ptr<Context>> Create(const TlsOptions& options);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const TlsOptions& options() const { return options_; }
  SSL_CTX* ssl_ctx() const { return ctx_; }
  // "certificates" or "pre-shared key".
  const char* mode() const { return options_.certificates() ? "certificates" : "pre-shared key"; }

  // The pre-shared key (PSK mode).
  const std::array<uint8_t, 32>& psk() const { return psk_; }

 private:
  explicit Context(const TlsOptions& options) : options_(options) {}
  TlsOptions options_;
  SSL_CTX* ctx_ = nullptr;
  std::array<uint8_t, 32> psk_{};
};

// The PSK identity both sides use: one key per key file, so one identity.
inline constexpr std::string_view kPskIdentity = "blkmirror-psk-v1";

// The pre-shared key a key file gives: HKDF-SHA256(key, salt "", info "blkmirror tls psk v1").
Result<std::array<uint8_t, 32>> DerivePsk(const std::array<uint8_t, 32>& key);

class Session {
 public:
  static Result<std::unique_ptr<Session>> Create(Context& context, Role role, std::string peer);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Ciphertext from the socket: where the next bytes go (empty when the pair is full: Read
  // first), then how many came.
  std::span<std::byte> RxSpace();
  void RxCommit(size_t n);
  // Ciphertext for the socket: what is waiting (contiguous; more may follow once consumed),
  // then how much left.
  std::span<const std::byte> TxPending();
  void TxConsume(size_t n);

  // Advances the handshake with what has arrived: true once it is complete; false while it
  // waits for the peer (send TxPending first). The error says why it failed; an alert for the
  // peer may then be waiting in TxPending.
  Result<bool> Handshake();
  bool handshake_done() const { return done_; }

  // Decrypts up to `len` bytes into `dst`: how many (at most one record's), 0 when more
  // ciphertext is needed. A close_notify from the peer, or any error, is a Status.
  Result<size_t> Read(std::byte* dst, size_t len);
  // Encrypts from `src`: how many bytes were taken (whole records; fewer than `len` when the
  // pair filled up), 0 when it is full (send TxPending first). Nothing of `src` is referenced
  // once this returns.
  Result<size_t> Write(const std::byte* src, size_t len);

  // The peer's first bytes are a blkmirror frame: it runs without TLS.
  bool peer_speaks_plain() const;

  // The peer closed the connection before the handshake completed: what to tell the user (a
  // peer that answered in plain blkmirror is recognised, and its Error text quoted).
  Status ClosedDuringHandshake() const;

  // After the handshake, with nothing buffered either way: installs the traffic keys in `fd`'s
  // kernel TLS. OK: the socket now encrypts and decrypts by itself, drop the Session. An error
  // (kUnavailable: no tls module, say) leaves the Session in charge, unchanged.
  Status TakeKernelTls(int fd);

  // "TLS 1.3 TLS_AES_128_GCM_SHA256 (certificates)".
  std::string Describe() const;

  // For the keylog callback.
  void OnKeyLog(const char* line);

 private:
  Session(Context& context, Role role, std::string peer)
      : context_(context), role_(role), peer_(std::move(peer)) {}
  Status Failure(int ret);  // after an SSL call returned `ret`: a Status naming what failed
  Status PeerSpeaksPlain() const;

  Context& context_;
  Role role_;
  std::string peer_;
  SSL* ssl_ = nullptr;
  BIO* net_ = nullptr;  // our half of the pair; SSL owns the other
  bool done_ = false;
  // What the peer sent first (up to one small frame), to recognise a peer without TLS.
  std::array<std::byte, 512> head_{};
  size_t head_len_ = 0;
  // Record framing of the raw stream during the handshake, so that reads stop at a record's end.
  std::array<uint8_t, 5> rec_hdr_{};
  size_t rec_hdr_got_ = 0;
  size_t rec_body_left_ = 0;
  // The TLS 1.3 application traffic secrets (from the keylog callback), for kTLS.
  std::array<uint8_t, 48> client_secret_{};
  std::array<uint8_t, 48> server_secret_{};
  size_t secret_len_ = 0;
  bool have_client_secret_ = false, have_server_secret_ = false;

 public:
  // Set by the info callback: the last alert sent and received ("" none).
  std::string alert_sent, alert_received;
};

}  // namespace blkmirror::transport::tls
