// tls_fuzzer: the TLS record path of the TCP transport (transport/tls/tls.h), server side, fed a
// peer's ciphertext through the BIO pair exactly as the io_uring loop feeds it (RxSpace, which
// stops at each record's end during the handshake, then RxCommit, Handshake, Read).
//
// Input: a setup byte, then records.
//   setup bit 0: first shake hands with a genuine in-memory client holding the same pre-shared
//                key, so that what follows reaches the record layer of an established session;
//                else the input is the client's handshake itself.
//   record: ctl byte, length byte, then that many bytes:
//     ctl bit 0 clear: the bytes arrive as raw ciphertext from the peer
//     ctl bit 0 set:   (after a genuine handshake) the client encrypts them as application data
//                      and its records arrive, so real records mix with forged ones
//     ctl bits 1-7:    how many bytes the server's Read asks for at most (1 + value * 64)
//
// Properties: no crash, leak or sanitizer report; a handshake fed only the input never
// completes (no one gets in without the key); Read never returns more than it was asked; after a
// genuine handshake, the plaintext the server reads is a prefix of what the client wrote, until
// forged bytes break the session (an error, never wrong plaintext).
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "transport/tls/tls.h"

using namespace blkmirror;
using namespace blkmirror::transport;

namespace {

tls::Context& PskContext() {
  static std::unique_ptr<tls::Context> context = [] {
    TlsOptions o;
    o.enabled = true;
    o.has_psk_key = true;
    for (size_t i = 0; i < o.psk_key.size(); ++i) o.psk_key[i] = static_cast<uint8_t>(i * 7 + 1);
    auto c = tls::Context::Create(o);
    if (!c.ok()) {
      std::fprintf(stderr, "tls context: %s\n", c.status().message().c_str());
      std::abort();
    }
    return std::move(*c);
  }();
  return *context;
}

// Moves what `from` has for the wire into `to`, as the socket would; false when `to` is full.
bool Pump(tls::Session& from, tls::Session& to) {
  for (auto out = from.TxPending(); !out.empty(); out = from.TxPending()) {
    auto space = to.RxSpace();
    if (space.empty()) return false;
    size_t n = std::min(space.size(), out.size());
    std::memcpy(space.data(), out.data(), n);
    to.RxCommit(n);
    from.TxConsume(n);
  }
  return true;
}

// Feeds raw bytes to the server as ciphertext, as RxSpace lets them in.
void Feed(tls::Session& server, const uint8_t* p, size_t n) {
  while (n > 0) {
    auto space = server.RxSpace();
    if (space.empty()) return;
    size_t k = std::min(space.size(), n);
    std::memcpy(space.data(), p, k);
    server.RxCommit(k);
    p += k;
    n -= k;
    if (!server.handshake_done()) {
      auto done = server.Handshake();
      if (!done.ok()) return;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = (fuzz::QuietLogs(), true);
  (void)quiet;
  fuzz::ByteReader in(data, size);
  const uint8_t setup = in.U8();
  const bool genuine = setup & 1;
  auto server = tls::Session::Create(PskContext(), tls::Role::kServer, "fuzz-peer");
  FUZZ_CHECK(server.ok(), "server session: {}", server.status().message());
  std::unique_ptr<tls::Session> client;
  std::string written;  // plaintext the genuine client wrote
  std::string read;     // plaintext the server read
  bool broken = false;  // forged bytes reached the server after the handshake
  bool failed = false;
  if (genuine) {
    auto c = tls::Session::Create(PskContext(), tls::Role::kClient, "fuzz-server");
    FUZZ_CHECK(c.ok(), "client session: {}", c.status().message());
    client = std::move(*c);
    for (int round = 0; round < 16 && !((*server)->handshake_done() && client->handshake_done());
         ++round) {
      auto cd = client->Handshake();
      FUZZ_CHECK(cd.ok(), "genuine client handshake: {}", cd.status().message());
      Pump(*client, **server);
      auto sd = (*server)->Handshake();
      FUZZ_CHECK(sd.ok(), "genuine server handshake: {}", sd.status().message());
      Pump(**server, *client);
    }
    FUZZ_CHECK((*server)->handshake_done() && client->handshake_done(),
               "a genuine handshake did not complete");
  }
  std::vector<std::byte> buf(1 + 127 * 64);
  while (!in.empty() && !failed) {
    const uint8_t ctl = in.U8();
    const size_t len = in.U8();
    std::vector<uint8_t> bytes(len);
    in.Fill(std::as_writable_bytes(std::span(bytes)));
    if ((ctl & 1) && client) {
      size_t off = 0;
      while (off < len) {
        auto put = client->Write(reinterpret_cast<const std::byte*>(bytes.data()) + off, len - off);
        FUZZ_CHECK(put.ok(), "client write: {}", put.status().message());
        if (*put == 0) break;  // the pair is full: the rest is dropped, as never written
        written.append(reinterpret_cast<const char*>(bytes.data()) + off, *put);
        off += *put;
      }
      if (!Pump(*client, **server)) broken = true;  // a record cut short is a forged one
    } else {
      if (len > 0 && (*server)->handshake_done()) broken = true;
      Feed(**server, bytes.data(), len);
    }
    if (!(*server)->handshake_done()) {
      auto done = (*server)->Handshake();
      if (!done.ok()) break;
      FUZZ_CHECK(!*done || genuine, "a handshake from the input alone completed");
      continue;
    }
    const size_t want = 1 + (ctl >> 1) * 64;
    for (;;) {
      auto got = (*server)->Read(buf.data(), want);
      if (!got.ok()) {
        failed = true;
        break;
      }
      FUZZ_CHECK(*got <= want, "Read returned {} bytes for {}", *got, want);
      if (*got == 0) break;
      read.append(reinterpret_cast<const char*>(buf.data()), *got);
    }
  }
  if (genuine) {
    FUZZ_CHECK(read.size() <= written.size() && written.compare(0, read.size(), read) == 0,
               "the server read plaintext the client never wrote ({} read, {} written)",
               read.size(), written.size());
    FUZZ_CHECK(broken || failed || read.size() <= written.size(), "lost plaintext");
  }
  return 0;
}
