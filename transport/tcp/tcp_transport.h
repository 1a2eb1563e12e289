// The TCP backend: frames over stream sockets, driven by the loop's io_uring.
//
// Per connection, one SENDMSG is in flight at a time (a batch of up to 32 frames as a gather
// list: header, payload, header, payload...), so frames never interleave on the stream; one
// RECV is in flight at a time: the 64-byte header, then the payload straight into a pool buffer
// (the kernel's socket copy is the only copy). TCP_NODELAY is set on every socket.
#pragma once

#include <memory>

#include "transport/transport.h"

namespace blkmirror::transport {

Result<std::unique_ptr<Transport>> CreateTcpTransport(const TransportContext& context);

}  // namespace blkmirror::transport
