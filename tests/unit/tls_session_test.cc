// tls::Session in memory: a client and a server with the pre-shared key of one key file shake
// hands and carry bytes both ways through the BIO pairs; another key is refused, named on both
// sides; a plain blkmirror frame where a ClientHello should be is recognised; during the
// handshake RxSpace never reaches past a record's end (what kTLS relies on).
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "proto/frame.h"
#include "transport/tls/tls.h"

namespace blkmirror::transport::tls {
namespace {

std::unique_ptr<Context> PskContext(uint8_t seed) {
  TlsOptions o;
  o.enabled = true;
  o.has_psk_key = true;
  for (size_t i = 0; i < o.psk_key.size(); ++i) o.psk_key[i] = static_cast<uint8_t>(seed + i);
  auto c = Context::Create(o);
  EXPECT_TRUE(c.ok()) << c.status().message();
  return std::move(*c);
}

void Pump(Session& from, Session& to) {
  for (auto out = from.TxPending(); !out.empty(); out = from.TxPending()) {
    auto space = to.RxSpace();
    ASSERT_FALSE(space.empty());
    size_t n = std::min(space.size(), out.size());
    std::memcpy(space.data(), out.data(), n);
    to.RxCommit(n);
    from.TxConsume(n);
  }
}

// Runs both handshakes to the end or the first error; returns the errors ("" = none).
std::pair<std::string, std::string> Shake(Session& client, Session& server) {
  std::string ce, se;
  for (int i = 0; i < 10 && ce.empty() && se.empty(); ++i) {
    auto c = client.Handshake();
    if (!c.ok()) ce = c.status().message();
    Pump(client, server);
    auto s = server.Handshake();
    if (!s.ok()) se = s.status().message();
    Pump(server, client);
    if (client.handshake_done() && server.handshake_done()) break;
  }
  if (ce.empty() && !client.handshake_done()) {
    Pump(server, client);  // the server's alert
    auto c = client.Handshake();
    if (!c.ok()) ce = c.status().message();
  }
  return {ce, se};
}

TEST(TlsSession, SameKeyShakesHandsAndCarriesBytesBothWays) {
  auto ctx = PskContext(1);
  auto client = Session::Create(*ctx, Role::kClient, "server-peer").value();
  auto server = Session::Create(*ctx, Role::kServer, "client-peer").value();
  auto [ce, se] = Shake(*client, *server);
  ASSERT_EQ(ce, "");
  ASSERT_EQ(se, "");
  ASSERT_TRUE(client->handshake_done() && server->handshake_done());
  EXPECT_NE(client->Describe().find("TLS_AES_128_GCM_SHA256"), std::string::npos);
  std::string block(100000, 'x');
  for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 31);
  size_t off = 0;
  std::string got(block.size(), '\0');
  size_t read = 0;
  while (read < block.size()) {
    if (off < block.size()) {
      auto put = client->Write(reinterpret_cast<const std::byte*>(block.data()) + off,
                               block.size() - off);
      ASSERT_TRUE(put.ok());
      off += *put;
    }
    Pump(*client, *server);
    for (;;) {
      auto n = server->Read(reinterpret_cast<std::byte*>(got.data()) + read, got.size() - read);
      ASSERT_TRUE(n.ok()) << n.status().message();
      if (*n == 0) break;
      EXPECT_LE(*n, size_t{16384});  // one record at most
      read += *n;
    }
  }
  EXPECT_EQ(got, block);
}

TEST(TlsSession, AnotherKeyIsRefusedAndBothSidesSaySo) {
  auto a = PskContext(1);
  auto b = PskContext(2);
  auto client = Session::Create(*a, Role::kClient, "the-replica").value();
  auto server = Session::Create(*b, Role::kServer, "the-primary").value();
  auto [ce, se] = Shake(*client, *server);
  EXPECT_NE(se.find("its pre-shared key differs from ours"), std::string::npos) << se;
  EXPECT_NE(ce.find("our pre-shared keys differ"), std::string::npos) << ce;
}

TEST(TlsSession, APlainBlkmirrorFrameIsRecognised) {
  auto ctx = PskContext(1);
  auto server = Session::Create(*ctx, Role::kServer, "10.0.0.9:5000").value();
  proto::Frame f;
  f.body = proto::Hello{};
  proto::RawHeader h = proto::Encode(f);
  auto space = server->RxSpace();
  ASSERT_GE(space.size(), size_t{5});
  std::memcpy(space.data(), h.data(), 5);
  server->RxCommit(5);
  auto done = server->Handshake();
  ASSERT_FALSE(done.ok());
  EXPECT_TRUE(server->peer_speaks_plain());
  EXPECT_NE(done.status().message().find("10.0.0.9:5000 speaks plain blkmirror, without TLS"),
            std::string::npos)
      << done.status().message();
}

TEST(TlsSession, HandshakeReadsStopAtRecordEnds) {
  auto ctx = PskContext(1);
  auto server = Session::Create(*ctx, Role::kServer, "p").value();
  EXPECT_EQ(server->RxSpace().size(), size_t{5});  // a record header first
  const std::byte hdr[5] = {std::byte{0x16}, std::byte{3}, std::byte{1}, std::byte{0},
                            std::byte{40}};
  std::memcpy(server->RxSpace().data(), hdr, 5);
  server->RxCommit(5);
  EXPECT_EQ(server->RxSpace().size(), size_t{40});  // then exactly its body
}

TEST(TlsContext, CertificatesNeedAllThreeAndSomethingToAuthenticateWith) {
  TlsOptions o;
  o.enabled = true;
  auto none = Context::Create(o);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("--tls needs certificates"), std::string::npos);
  o.cert = "/nonexistent.pem";
  auto partial = Context::Create(o);
  ASSERT_FALSE(partial.ok());
  EXPECT_NE(partial.status().message().find("all three of --cert, --cert-key and --ca"),
            std::string::npos);
}

TEST(TlsContext, ThePskDependsOnTheKeyAndIsNotTheKey) {
  std::array<uint8_t, 32> k1{}, k2{};
  k2[0] = 1;
  auto p1 = DerivePsk(k1).value();
  EXPECT_EQ(p1, DerivePsk(k1).value());
  EXPECT_NE(p1, DerivePsk(k2).value());
  EXPECT_NE(p1, k1);
}

}  // namespace
}  // namespace blkmirror::transport::tls
