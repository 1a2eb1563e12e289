// Pieces of the session protocol that the primary-side engines (Replicator, Verifier) share:
// building frames, reading a peer's Error frame, checking its HelloOk.
#pragma once

#include <span>
#include <string>

#include "common/status.h"
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

}  // namespace blkmirror::engine
