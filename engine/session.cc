#include "engine/session.h"

#include <algorithm>
#include <cstring>

namespace blkmirror::engine {

transport::WorkItem ControlItem(transport::ConnId conn, const proto::Frame& frame,
                                std::span<const std::byte> payload) {
  transport::WorkItem item;
  item.conn = conn;
  proto::Frame f = frame;
  f.payload_len = static_cast<uint32_t>(payload.size());
  item.header = proto::Encode(f);
  item.control = payload;
  return item;
}

Status StatusFromError(const proto::Error& error, std::span<const std::byte> text,
                       const std::string& peer) {
  std::string msg(reinterpret_cast<const char*>(text.data()), text.size());
  // Keep only printable text: the peer is not trusted to send clean strings.
  std::replace_if(msg.begin(), msg.end(), [](char c) { return c < 0x20 || c == 0x7f; }, '?');
  auto code = static_cast<ErrorCode>(error.code);
  if (error.code == 0) code = ErrorCode::kRefused;
  return Status::Error(code, fmt::format("{} reported: {}", peer, msg));
}

Status CheckHelloOk(const proto::HelloOk& ok, const proto::Hello& hello,
                    const std::string& peer) {
  if (ok.version < hello.min_version || ok.version > hello.max_version) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("{} chose protocol version {}, outside our {}..{}", peer,
                                     ok.version, hello.min_version, hello.max_version));
  }
  if (hello.kind == proto::SessionKind::kWrite && ok.max_block_size < hello.block_size) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("{} accepts blocks up to {} bytes; block size {} is too big",
                                     peer, ok.max_block_size, hello.block_size));
  }
  if (hello.kind == proto::SessionKind::kWrite && ok.capacity < hello.volume_size) {
    return Status::Error(ErrorCode::kRefused,
                         fmt::format("{} can hold {} bytes; the volume has {}", peer, ok.capacity,
                                     hello.volume_size));
  }
  return Status::Ok();
}

ClientHandshake::ClientHandshake(const proto::Hello& hello, std::optional<Key> key,
                                 std::string peer, const Generations* generations)
    : hello_(hello), key_(std::move(key)), peer_(std::move(peer)), generations_(generations) {
  proto::Frame f;
  f.body = hello_;
  hello_raw_ = proto::Encode(f);
}

Status ClientHandshake::Start(transport::Transport& t, transport::ConnId conn) {
  transport::WorkItem item;
  item.conn = conn;
  item.header = hello_raw_;
  return t.Post(std::span(&item, 1));
}

Result<bool> ClientHandshake::OnFrame(transport::Transport& t, transport::ConnId conn,
                                      const proto::Frame& frame, const proto::RawHeader& raw,
                                      std::span<const std::byte> payload) {
  switch (frame.type()) {
    case proto::FrameType::kAuthChallenge: {
      if (!key_) {
        (void)PostError(t, conn,
                        Status::Error(ErrorCode::kRefused,
                                      "this primary has no key (--key-file) to authenticate with"),
                        0);
        return Status::Error(ErrorCode::kRefused,
                             fmt::format("{} requires authentication: give --key-file with the "
                                         "replica's key",
                                         peer_));
      }
      if (challenged_) return Status::Protocol("{} sent a second AuthChallenge", peer_);
      challenged_ = true;
      std::memcpy(nonce_r_.data(), payload.data(), nonce_r_.size());
      nonce_p_ = RandomNonce();
      Mac mac = PrimaryProof(*key_, hello_raw_, nonce_r_, nonce_p_);
      std::array<std::byte, proto::kAuthNonceSize + proto::kAuthMacSize> proof;
      std::memcpy(proof.data(), nonce_p_.data(), nonce_p_.size());
      std::memcpy(proof.data() + nonce_p_.size(), mac.data(), mac.size());
      proto::Frame f;
      f.body = proto::AuthProof{};
      auto item = ControlItem(conn, f, proof);
      RETURN_IF_ERROR(t.Post(std::span(&item, 1)));
      return false;
    }
    case proto::FrameType::kHelloOk: {
      ok_ = std::get<proto::HelloOk>(frame.body);
      ok_flags_ = frame.flags;
      RETURN_IF_ERROR(CheckHelloOk(ok_, hello_, peer_));
      if (key_) {
        Mac want = ReplicaProof(*key_, hello_raw_, raw, nonce_p_, nonce_r_);
        auto got = std::span(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
        if (!challenged_ || !SameMac(got, want)) {
          return Status::Error(ErrorCode::kRefused,
                               fmt::format("{} did not prove it holds our key ({}); refusing to "
                                           "replicate to it",
                                           peer_,
                                           challenged_ ? "wrong key" : "it runs without --key-file"));
        }
      }
      if (ok_.version < proto::kGenerationsVersion || hello_.kind != proto::SessionKind::kWrite) {
        return true;
      }
      if (generations_ == nullptr) {
        return Status::Protocol("{} chose protocol {} but this primary has no generations", peer_,
                                ok_.version);
      }
      proto::Frame f;
      f.flags = generations_->consistent ? proto::kGenConsistent : 0;
      f.body = generations_->ToWire();
      auto item = ControlItem(conn, f);
      RETURN_IF_ERROR(t.Post(std::span(&item, 1)));
      waiting_generation_ = true;
      return false;
    }
    case proto::FrameType::kGeneration: {
      if (!waiting_generation_) {
        return Status::Protocol("{} sent a Generation out of turn", peer_);
      }
      if (frame.flags & (proto::kGenSyncStart | proto::kGenInSync)) {
        return Status::Protocol("{} sent a Generation with primary-only flags", peer_);
      }
      peer_generations_ = Generations::FromWire(std::get<proto::Generation>(frame.body),
                                                frame.flags & proto::kGenConsistent);
      waiting_generation_ = false;
      return true;
    }
    case proto::FrameType::kError: {
      return StatusFromError(std::get<proto::Error>(frame.body), payload, peer_);
    }
    default:
      return Status::Protocol("{} sent {} before the session was open", peer_,
                              proto::FrameTypeName(frame.type()));
  }
}

std::string IdHex(const proto::VolumeId& id) {
  std::string out;
  for (uint8_t b : id.bytes) out += fmt::format("{:02x}", b);
  return out;
}

bool PostError(transport::Transport& t, transport::ConnId conn, const Status& status,
               uint64_t tag) {
  std::string text = status.message().substr(0, proto::kMaxErrorText);
  proto::Frame f;
  f.body = proto::Error{static_cast<uint32_t>(status.code())};
  auto item = ControlItem(conn, f, std::as_bytes(std::span(text.data(), text.size())));
  item.signal = true;
  item.tag = tag;
  return t.Post(std::span(&item, 1)).ok();
}

}  // namespace blkmirror::engine
