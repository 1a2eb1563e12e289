// Pieces of the session protocol that both sides' engines (Replicator, Verifier, ReplicaServer)
// share: building frames, reading a peer's Error frame; and the primary's check of a HelloOk.
#pragma once

#include <optional>
#include <span>
#include <string>

#include "common/status.h"
#include "engine/auth.h"
#include "engine/generations.h"
#include "proto/frame.h"
#include "transport/transport.h"

namespace blkmirror::engine {

// A WorkItem carrying `frame` with a control payload (may be empty).
transport::WorkItem ControlItem(transport::ConnId conn, const proto::Frame& frame,
                                std::span<const std::byte> payload = {});

// The Status a peer's Error frame stands for: "replica 1.2.3.4:7000 refused: <text>".
Status StatusFromError(const proto::Error& error, std::span<const std::byte> text,
                       const std::string& peer);

// Checks a HelloOk against what we asked for (version range, block size, capacity).
Status CheckHelloOk(const proto::HelloOk& ok, const proto::Hello& hello, const std::string& peer);

// Queues an Error frame carrying `status` (signaled with `tag`, so the caller can close the
// connection once it has left: a Close cancels what is still queued). False when it could not
// be queued (the connection is gone or full): close right away then.
bool PostError(transport::Transport& t, transport::ConnId conn, const Status& status,
               uint64_t tag);

// The primary's side of a session handshake: Hello, then (when the replica has a key) the
// challenge-response, then HelloOk, whose proof is checked when we have a key; then, for a
// protocol-3 write session, our Generation and the replica's.
class ClientHandshake {
 public:
  ClientHandshake() = default;
  // `generations` (a volume's; null for push) must outlive the handshake.
  ClientHandshake(const proto::Hello& hello, std::optional<Key> key, std::string peer,
                  const Generations* generations = nullptr);

  // Posts the Hello.
  Status Start(transport::Transport& t, transport::ConnId conn);
  // Takes a frame received before the session is open: true when it is (hello_ok() is valid),
  // false when more frames are due, an error when the session cannot open.
  Result<bool> OnFrame(transport::Transport& t, transport::ConnId conn, const proto::Frame& frame,
                       const proto::RawHeader& raw, std::span<const std::byte> payload);
  const proto::HelloOk& hello_ok() const { return ok_; }
  // The HelloOk frame's flags: what the replica takes beyond its version (kHelloOkCompressed).
  uint16_t hello_ok_flags() const { return ok_flags_; }
  // The replica's generations (protocol 3).
  const Generations& peer_generations() const { return peer_generations_; }
  const proto::Hello& hello() const { return hello_; }

 private:
  proto::Hello hello_;
  proto::RawHeader hello_raw_{};
  std::optional<Key> key_;
  std::string peer_;
  Nonce nonce_p_{};
  Nonce nonce_r_{};
  bool challenged_ = false;
  proto::HelloOk ok_;
  uint16_t ok_flags_ = 0;
  const Generations* generations_ = nullptr;
  bool waiting_generation_ = false;
  Generations peer_generations_;
};

// The replica identity as text (32 hex digits), for file names and messages.
std::string IdHex(const proto::VolumeId& id);

}  // namespace blkmirror::engine
