#include "transport/tls/tls.h"

#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string_view>

#include <spdlog/spdlog.h>

#include "proto/frame.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

namespace blkmirror::transport::tls {
namespace {

constexpr std::string_view kPskLabel = "blkmirror tls psk v1";
// TLS_AES_128_GCM_SHA256: the suite every AES-NI machine does fastest, and the one kTLS takes.
constexpr unsigned char kSuiteId[2] = {0x13, 0x01};

// The OpenSSL error queue as one line (emptied).
std::string TakeErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    const char* reason = ERR_reason_error_string(e);
    if (!out.empty()) out += "; ";
    out += reason != nullptr ? reason : fmt::format("error {:#x}", e);
  }
  return out;
}

bool HasReason(unsigned long e, int reason) { return ERR_GET_REASON(e) == reason; }

int SessionIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

Session* SessionOf(const SSL* ssl) {
  return static_cast<Session*>(SSL_get_ex_data(ssl, SessionIndex()));
}

SSL_SESSION* PskSession(SSL* ssl, const std::array<uint8_t, 32>& psk) {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kSuiteId);
  if (cipher == nullptr) return nullptr;
  SSL_SESSION* s = SSL_SESSION_new();
  if (s == nullptr) return nullptr;
  if (!SSL_SESSION_set1_master_key(s, psk.data(), psk.size()) ||
      !SSL_SESSION_set_cipher(s, cipher) || !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)) {
    SSL_SESSION_free(s);
    return nullptr;
  }
  return s;
}

const Context* ContextOf(SSL* ssl) {
  return static_cast<const Context*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
}

int UsePsk(SSL* ssl, const EVP_MD* /*md*/, const unsigned char** id, size_t* idlen,
           SSL_SESSION** sess) {
  *sess = PskSession(ssl, ContextOf(ssl)->psk());
  if (*sess == nullptr) return 0;
  *id = reinterpret_cast<const unsigned char*>(kPskIdentity.data());
  *idlen = kPskIdentity.size();
  return 1;
}

int FindPsk(SSL* ssl, const unsigned char* id, size_t idlen, SSL_SESSION** sess) {
  *sess = nullptr;
  if (std::string_view(reinterpret_cast<const char*>(id), idlen) != kPskIdentity) {
    return 1;  // not ours: the handshake goes on without a key, and fails for want of one
  }
  *sess = PskSession(ssl, ContextOf(ssl)->psk());
  return *sess != nullptr ? 1 : 0;
}

void InfoCallback(const SSL* ssl, int where, int ret) {
  if (!(where & SSL_CB_ALERT)) return;
  Session* s = SessionOf(ssl);
  if (s == nullptr) return;
  // TLS 1.3's certificate_required (116) is "unknown" to OpenSSL 3.0's names.
  std::string text = (ret & 0xff) == 116 ? "certificate required" : SSL_alert_desc_string_long(ret);
  if (where & SSL_CB_READ) {
    s->alert_received = text;
  } else {
    s->alert_sent = text;
  }
}

void KeyLog(const SSL* ssl, const char* line) {
  if (Session* s = SessionOf(ssl)) s->OnKeyLog(line);
}

// "notAfter" of the certificate as text.
std::string TimeText(const ASN1_TIME* t) {
  BIO* b = BIO_new(BIO_s_mem());
  ASN1_TIME_print(b, t);
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(b);
  return out;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// HKDF-Expand-Label(secret, label, "", length) of TLS 1.3, through OpenSSL's TLS13-KDF.
bool ExpandLabel(std::span<const uint8_t> secret, const char* label, uint8_t* out, size_t len) {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_TLS1_3_KDF, nullptr);
  if (kdf == nullptr) return false;
  EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (kctx == nullptr) return false;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  char digest[] = "SHA256";
  char prefix[] = "tls13 ";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(secret.data()),
                                        secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, prefix, 6),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, const_cast<char*>(label),
                                        std::strlen(label)),
      OSSL_PARAM_construct_end()};
  bool ok = EVP_KDF_derive(kctx, out, len, params) > 0;
  EVP_KDF_CTX_free(kctx);
  return ok;
}

}  // namespace

Result<std::array<uint8_t, 32>> DerivePsk(const std::array<uint8_t, 32>& key) {
  std::array<uint8_t, 32> out{};
  EVP_PKEY_CTX* pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr);
  size_t len = out.size();
  bool ok = pctx != nullptr && EVP_PKEY_derive_init(pctx) > 0 &&
            EVP_PKEY_CTX_set_hkdf_md(pctx, EVP_sha256()) > 0 &&
            EVP_PKEY_CTX_set1_hkdf_key(pctx, key.data(), static_cast<int>(key.size())) > 0 &&
            EVP_PKEY_CTX_add1_hkdf_info(pctx, reinterpret_cast<const unsigned char*>(kPskLabel.data()),
                                        static_cast<int>(kPskLabel.size())) > 0 &&
            EVP_PKEY_derive(pctx, out.data(), &len) > 0 && len == out.size();
  EVP_PKEY_CTX_free(pctx);
  if (!ok) {
    return Status::Error(ErrorCode::kUnavailable,
                         "tls: cannot derive the pre-shared key (HKDF): " + TakeErrors());
  }
  return out;
}

Result<std::unique_ptr<Context>> Context::Create(const TlsOptions& options) {
  auto c = std::unique_ptr<Context>(new Context(options));
  const bool certs = options.certificates() || !options.cert_key.empty() || !options.ca.empty();
  if (certs && (options.cert.empty() || options.cert_key.empty() || options.ca.empty())) {
    return Status::Invalid("--tls with certificates needs all three of --cert, --cert-key and "
                           "--ca (given: {}{}{})",
                           options.cert.empty() ? "" : "--cert ",
                           options.cert_key.empty() ? "" : "--cert-key ",
                           options.ca.empty() ? "" : "--ca");
  }
  if (!certs && !options.has_psk_key) {
    return Status::Invalid("--tls needs certificates (--cert, --cert-key, --ca) or a key file "
                           "(--key-file) to derive a pre-shared key from");
  }
  ERR_clear_error();
  c->ctx_ = SSL_CTX_new(TLS_method());
  if (c->ctx_ == nullptr) {
    return Status::Error(ErrorCode::kUnavailable, "tls: SSL_CTX_new: " + TakeErrors());
  }
  SSL_CTX* ctx = c->ctx_;
  SSL_CTX_set_app_data(ctx, c.get());
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  if (SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256") != 1) {
    return Status::Error(ErrorCode::kUnavailable, "tls: TLS_AES_128_GCM_SHA256: " + TakeErrors());
  }
  // No tickets (nothing is resumed, and nothing follows the peer's Finished), no middlebox
  // pretence, and whole records where the pair has room for fewer bytes than asked.
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Read ahead: one BIO read takes whatever the pair holds (up to OpenSSL's buffer), not a
  // record header and then its body. During the handshake the pair never holds more than the
  // current record (Session::RxSpace), so nothing past the handshake is read for kTLS's sake.
  SSL_CTX_set_read_ahead(ctx, 1);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_info_callback(ctx, InfoCallback);
  SSL_CTX_set_keylog_callback(ctx, KeyLog);
  if (options.certificates()) {
    for (auto [flag, path] : {std::pair{"--cert", &options.cert},
                              std::pair{"--cert-key", &options.cert_key},
                              std::pair{"--ca", &options.ca}}) {
      if (access(path->c_str(), R_OK) != 0) {
        return Status::Invalid("{} {}: {}", flag, *path, std::strerror(errno));
      }
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, options.cert.c_str()) != 1) {
      return Status::Invalid("--cert {}: cannot load a PEM certificate from it: {}", options.cert,
                             TakeErrors());
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, options.cert_key.c_str(), SSL_FILETYPE_PEM) != 1) {
      if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
        ERR_clear_error();
        return Status::Invalid("--cert-key {} is not the key of --cert {}", options.cert_key,
                               options.cert);
      }
      return Status::Invalid("--cert-key {}: cannot load a PEM private key from it: {}",
                             options.cert_key, TakeErrors());
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      return Status::Invalid("--cert-key {} is not the key of --cert {}: {}", options.cert_key,
                             options.cert, TakeErrors());
    }
    if (SSL_CTX_load_verify_locations(ctx, options.ca.c_str(), nullptr) != 1) {
      return Status::Invalid("--ca {}: cannot load PEM CA certificates from it: {}", options.ca,
                             TakeErrors());
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    X509* mine = SSL_CTX_get0_certificate(ctx);
    if (X509_cmp_current_time(X509_get0_notAfter(mine)) < 0) {
      spdlog::warn("tls: --cert {} expired on {}: peers will refuse it", options.cert,
                   TimeText(X509_get0_notAfter(mine)));
    } else if (X509_cmp_current_time(X509_get0_notBefore(mine)) > 0) {
      spdlog::warn("tls: --cert {} is not valid before {}: peers will refuse it", options.cert,
                   TimeText(X509_get0_notBefore(mine)));
    }
  } else {
    ASSIGN_OR_RETURN(c->psk_, DerivePsk(options.psk_key));
    SSL_CTX_set_psk_use_session_callback(ctx, UsePsk);
    SSL_CTX_set_psk_find_session_callback(ctx, FindPsk);
  }
  return c;
}

Context::~Context() {
  SSL_CTX_free(ctx_);
  OPENSSL_cleanse(psk_.data(), psk_.size());
}

Result<std::unique_ptr<Session>> Session::Create(Context& context, Role role, std::string peer) {
  auto s = std::unique_ptr<Session>(new Session(context, role, std::move(peer)));
  ERR_clear_error();
  s->ssl_ = SSL_new(context.ssl_ctx());
  BIO* inner = nullptr;
  if (s->ssl_ == nullptr || BIO_new_bio_pair(&inner, kPairBytes, &s->net_, kPairBytes) != 1) {
    return Status::Error(ErrorCode::kUnavailable, "tls: cannot make a session: " + TakeErrors());
  }
  SSL_set_bio(s->ssl_, inner, inner);
  SSL_set_ex_data(s->ssl_, SessionIndex(), s.get());
  if (role == Role::kServer) {
    SSL_set_accept_state(s->ssl_);
  } else {
    SSL_set_connect_state(s->ssl_);
  }
  return s;
}

Session::~Session() {
  SSL_free(ssl_);  // frees its half of the pair
  BIO_free(net_);
  OPENSSL_cleanse(client_secret_.data(), client_secret_.size());
  OPENSSL_cleanse(server_secret_.data(), server_secret_.size());
}

std::span<std::byte> Session::RxSpace() {
  char* p = nullptr;
  ossl_ssize_t n = BIO_nwrite0(net_, &p);
  if (n <= 0) return {};
  size_t room = static_cast<size_t>(n);
  if (!done_) {
    // The handshake reads record by record: the 5-byte header, then its body; never beyond.
    size_t limit = rec_hdr_got_ < rec_hdr_.size() ? rec_hdr_.size() - rec_hdr_got_
                                                  : rec_body_left_;
    room = std::min(room, limit);
  }
  return {reinterpret_cast<std::byte*>(p), room};
}

void Session::RxCommit(size_t n) {
  char* p = nullptr;
  BIO_nwrite0(net_, &p);
  const auto* bytes = reinterpret_cast<const std::byte*>(p);
  if (head_len_ < head_.size()) {
    size_t k = std::min(n, head_.size() - head_len_);
    std::memcpy(head_.data() + head_len_, bytes, k);
    head_len_ += k;
  }
  if (!done_) {
    for (size_t i = 0; i < n;) {
      if (rec_hdr_got_ < rec_hdr_.size()) {
        rec_hdr_[rec_hdr_got_++] = static_cast<uint8_t>(bytes[i++]);
        if (rec_hdr_got_ == rec_hdr_.size()) {
          rec_body_left_ = (size_t{rec_hdr_[3]} << 8) | rec_hdr_[4];
          if (rec_body_left_ == 0) rec_hdr_got_ = 0;
        }
      } else {
        size_t k = std::min(n - i, rec_body_left_);
        i += k;
        rec_body_left_ -= k;
        if (rec_body_left_ == 0) rec_hdr_got_ = 0;
      }
    }
  }
  BIO_nwrite(net_, &p, static_cast<int>(n));
}

std::span<const std::byte> Session::TxPending() {
  char* p = nullptr;
  ossl_ssize_t n = BIO_nread0(net_, &p);
  if (n <= 0) return {};
  return {reinterpret_cast<const std::byte*>(p), static_cast<size_t>(n)};
}

void Session::TxConsume(size_t n) {
  char* p = nullptr;
  BIO_nread(net_, &p, static_cast<int>(n));
}

Status Session::PeerSpeaksPlain() const {
  // A blkmirror frame header starts with the magic; an Error frame's text follows it.
  std::string text;
  if (head_len_ >= proto::kHeaderSize) {
    auto frame = proto::Decode(std::span<const std::byte, proto::kHeaderSize>(
        head_.data(), proto::kHeaderSize));
    if (frame.ok() && frame->type() == proto::FrameType::kError) {
      size_t len = std::min<size_t>(frame->payload_len, head_len_ - proto::kHeaderSize);
      text.assign(reinterpret_cast<const char*>(head_.data() + proto::kHeaderSize), len);
    }
  }
  if (role_ == Role::kServer) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("{} speaks plain blkmirror, without TLS: this side requires "
                                     "TLS (--tls); give the primary --tls too",
                                     peer_));
  }
  return Status::Error(
      ErrorCode::kRefused,
      fmt::format("{} answered in plain blkmirror, not TLS: it runs without --tls (give both "
                  "sides --tls, or neither){}",
                  peer_, text.empty() ? "" : fmt::format("; it said: {}", text)));
}

bool LooksLikeBlkmirror(std::span<const std::byte> head) {
  if (head.size() < 4) return false;
  uint32_t magic = 0;
  std::memcpy(&magic, head.data(), 4);
  return magic == proto::kMagic;
}

bool Session::peer_speaks_plain() const { return LooksLikeBlkmirror({head_.data(), head_len_}); }

Status Session::ClosedDuringHandshake() const {
  if (LooksLikeBlkmirror({head_.data(), head_len_})) return PeerSpeaksPlain();
  if (!alert_received.empty()) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("{} refused the TLS handshake (alert: {})", peer_,
                                     alert_received));
  }
  return Status::Error(
      ErrorCode::kClosed,
      fmt::format("{} closed the connection during the TLS handshake ({}): a peer without --tls "
                  "does so; its log says why",
                  peer_, role_ == Role::kClient ? "after our ClientHello" : "before its Finished"));
}

Result<bool> Session::Handshake() {
  if (done_) return true;
  if (LooksLikeBlkmirror({head_.data(), head_len_})) return PeerSpeaksPlain();
  ERR_clear_error();
  int ret = SSL_do_handshake(ssl_);
  if (ret == 1) {
    done_ = true;
    return true;
  }
  int err = SSL_get_error(ssl_, ret);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    ERR_clear_error();
    return false;
  }
  return Failure(ret);
}

Status Session::Failure(int ret) {
  const int err = SSL_get_error(ssl_, ret);
  const unsigned long first = ERR_peek_error();
  const bool psk = !context_.options().certificates();
  const long verify = SSL_get_verify_result(ssl_);
  std::string detail = TakeErrors();
  if (err == SSL_ERROR_ZERO_RETURN) {
    return Status::Error(ErrorCode::kClosed, fmt::format("{} closed the TLS session", peer_));
  }
  // The peer's verdict on us.
  const std::string& alert = alert_received;
  if (!alert.empty()) {
    std::string why;
    if (alert == "certificate expired") {
      why = "our certificate (--cert) has expired";
    } else if (alert == "unknown CA" || alert == "bad certificate" ||
               alert == "certificate unknown") {
      why = "it does not trust our certificate: not signed by its --ca (a wrong CA?)";
    } else if (alert == "certificate required") {
      why = "it wants a certificate and we have none (--cert, --cert-key, --ca on both sides, "
            "or on neither)";
    } else if (psk && (alert == "decrypt error" || alert == "illegal parameter")) {
      why = "our pre-shared keys differ: the two sides have different --key-file keys";
    } else if (alert == "handshake failure") {
      why = psk ? "it has no pre-shared key for us: it uses certificates, or another key file"
                : "no common ground: it uses a pre-shared key (--key-file) and we certificates?";
    } else {
      why = detail;
    }
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("{} refused us in the TLS handshake (alert \"{}\"): {}", peer_,
                                     alert, why));
  }
  // Our verdict on the peer.
  if (verify != X509_V_OK && ERR_GET_REASON(first) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
    std::string why;
    switch (verify) {
      case X509_V_ERR_CERT_HAS_EXPIRED:
        why = "its certificate has expired";
        break;
      case X509_V_ERR_CERT_NOT_YET_VALID:
        why = "its certificate is not valid yet";
        break;
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
      case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
      case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
      case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        why = "its certificate is not signed by our --ca (a wrong CA?)";
        break;
      default:
        why = "its certificate is not accepted";
    }
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("refused {} in the TLS handshake: {} ({})", peer_, why,
                                     X509_verify_cert_error_string(verify)));
  }
  if (HasReason(first, SSL_R_BINDER_DOES_NOT_VERIFY)) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("refused {} in the TLS handshake: its pre-shared key differs "
                                     "from ours (the two sides have different --key-file keys)",
                                     peer_));
  }
  if (HasReason(first, SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("refused {} in the TLS handshake: it sent no certificate (it "
                                     "uses a pre-shared key? --cert, --cert-key, --ca on both "
                                     "sides, or on neither)",
                                     peer_));
  }
  if (psk && role_ == Role::kServer &&
      (HasReason(first, SSL_R_NO_SHARED_CIPHER) || HasReason(first, SSL_R_NO_SUITABLE_KEY_SHARE) ||
       HasReason(first, SSL_R_NO_CERTIFICATE_SET) ||
       HasReason(first, SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM) ||
       HasReason(first, SSL_R_MISSING_SIGALGS_EXTENSION))) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("refused {} in the TLS handshake: it offered no pre-shared key "
                                     "of ours (it uses certificates? the same --key-file on both "
                                     "sides, or certificates on both)",
                                     peer_));
  }
  if (!done_ && (HasReason(first, SSL_R_WRONG_VERSION_NUMBER) ||
                 HasReason(first, SSL_R_PACKET_LENGTH_TOO_LONG) ||
                 HasReason(first, SSL_R_UNEXPECTED_RECORD))) {
    return Status::Protocol("{} does not speak TLS (its first bytes are no TLS record: {})",
                            peer_, detail);
  }
  if (err == SSL_ERROR_SYSCALL && detail.empty()) {
    return Status::Error(ErrorCode::kClosed,
                         fmt::format("{}: the TLS session ended without a close_notify", peer_));
  }
  return Status::Error(ErrorCode::kProtocol,
                       fmt::format("TLS with {} failed{}: {}", peer_,
                                   done_ ? "" : " in the handshake",
                                   detail.empty() ? fmt::format("SSL error {}", err) : detail));
}

Result<size_t> Session::Read(std::byte* dst, size_t len) {
  // No ERR_clear_error here (it costs on every record): every failure empties the queue.
  size_t got = 0;
  int ret = SSL_read_ex(ssl_, dst, len, &got);
  if (ret == 1) return got;
  int err = SSL_get_error(ssl_, ret);
  if (err == SSL_ERROR_WANT_READ) {
    ERR_clear_error();
    return size_t{0};
  }
  return Failure(ret);
}

Result<size_t> Session::Write(const std::byte* src, size_t len) {
  // No ERR_clear_error here (it costs on every record): every failure empties the queue.
  size_t put = 0;
  int ret = SSL_write_ex(ssl_, src, len, &put);
  if (ret == 1) return put;
  int err = SSL_get_error(ssl_, ret);
  if (err == SSL_ERROR_WANT_WRITE) {
    ERR_clear_error();
    return size_t{0};
  }
  return Failure(ret);
}

void Session::OnKeyLog(const char* line) {
  // "LABEL <client_random hex> <secret hex>"
  std::string_view l(line);
  bool client = l.starts_with("CLIENT_TRAFFIC_SECRET_0 ");
  bool server = l.starts_with("SERVER_TRAFFIC_SECRET_0 ");
  if (!client && !server) return;
  size_t sp = l.rfind(' ');
  if (sp == std::string_view::npos) return;
  std::string_view hex = l.substr(sp + 1);
  auto& dst = client ? client_secret_ : server_secret_;
  if (hex.size() % 2 != 0 || hex.size() / 2 > dst.size()) return;
  for (size_t i = 0; i < hex.size() / 2; ++i) {
    int hi = HexValue(hex[2 * i]), lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return;
    dst[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  secret_len_ = hex.size() / 2;
  (client ? have_client_secret_ : have_server_secret_) = true;
}

Status Session::TakeKernelTls(int fd) {
  if (!done_ || !have_client_secret_ || !have_server_secret_ || secret_len_ != 32) {
    return Status::Error(ErrorCode::kUnavailable, "kTLS: the traffic secrets are not known");
  }
  if (BIO_ctrl_pending(net_) != 0 || BIO_ctrl_wpending(net_) != 0 || SSL_pending(ssl_) != 0) {
    return Status::Error(ErrorCode::kUnavailable,
                         "kTLS: records are buffered in user space already");
  }
  if (setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0) {
    return Status::Errno(errno, "kTLS: setsockopt(TCP_ULP, \"tls\") (is the tls module loaded?)");
  }
  auto install = [&](int direction, const std::array<uint8_t, 48>& secret) -> Status {
    uint8_t key[16], iv[12];
    if (!ExpandLabel({secret.data(), secret_len_}, "key", key, sizeof(key)) ||
        !ExpandLabel({secret.data(), secret_len_}, "iv", iv, sizeof(iv))) {
      return Status::Error(ErrorCode::kUnavailable, "kTLS: key derivation failed: " + TakeErrors());
    }
    tls12_crypto_info_aes_gcm_128 info{};
    info.info.version = TLS_1_3_VERSION;
    info.info.cipher_type = TLS_CIPHER_AES_GCM_128;
    std::memcpy(info.key, key, sizeof(info.key));
    std::memcpy(info.salt, iv, sizeof(info.salt));
    std::memcpy(info.iv, iv + sizeof(info.salt), sizeof(info.iv));
    // Sequence 0: no application record has gone either way (no tickets, nothing sent yet).
    int rc = setsockopt(fd, SOL_TLS, direction, &info, sizeof(info));
    int e = errno;
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(iv, sizeof(iv));
    OPENSSL_cleanse(&info, sizeof(info));
    if (rc != 0) {
      return Status::Errno(e, fmt::format("kTLS: setsockopt({}){}",
                                          direction == TLS_TX ? "TLS_TX" : "TLS_RX",
                                          e == ENOENT ? " (no gcm(aes) in the kernel: modprobe "
                                                        "aesni_intel gcm)"
                                                      : ""));
    }
    return Status::Ok();
  };
  const bool client = role_ == Role::kClient;
  RETURN_IF_ERROR(install(TLS_TX, client ? client_secret_ : server_secret_));
  // TX is in: from here, a failure leaves the socket unusable for user-space TLS.
  Status rx = install(TLS_RX, client ? server_secret_ : client_secret_);
  if (!rx.ok()) {
    return Status::Error(ErrorCode::kProtocol,
                         rx.message() + " after TLS_TX was installed: the connection is unusable");
  }
  return Status::Ok();
}

std::string Session::Describe() const {
  const SSL_CIPHER* c = SSL_get_current_cipher(ssl_);
  return fmt::format("{} {} ({})", SSL_get_version(ssl_), c != nullptr ? SSL_CIPHER_get_name(c) : "?",
                     context_.mode());
}

}  // namespace blkmirror::transport::tls
