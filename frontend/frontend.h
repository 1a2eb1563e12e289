// Frontend: where a volume's client requests come from, and where their replies go. The NBD
// server (frontend/nbd) is one; a ublk one would be another. A frontend owns the client
// connections and the protocol; the volume (engine/volume.h) serves the requests it hands out.
//
// Requests come as segments: a client request larger than a pool buffer (a 32 MiB kernel write)
// is cut into segments of at most one buffer each, handed out in offset order and completed one
// by one; the frontend replies to the client once every segment of its request is complete (the
// first error wins). A WRITE segment's payload was received straight into a pool buffer, which
// the segment carries (no copy); a READ segment is completed with a pool buffer holding the
// bytes read, which the frontend sends from and then gives back to the pool.
//
// Ordering: segments of one request are handed out in offset order; requests in the order their
// headers arrived on a connection. Replies may go out in any order (the protocols allow it).
//
// Ownership: a BufferRef handed out (WRITE) or handed in (READ) moves with the call. A segment
// whose client is gone by the time it completes is dropped quietly (its buffer goes back to the
// pool).
//
// Thread safety: none; a frontend belongs to its loop's thread, like the transports.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"
#include "io/buffer_pool.h"

namespace blkmirror::frontend {

enum class RequestOp : uint8_t {
  kRead,
  kWrite,
  kFlush,  // every write completed before it is durable (locally and on the replicas)
  kZero,   // [offset, offset + length) reads as zeros (TRIM, WRITE_ZEROES)
};

struct Request {
  uint64_t id = 0;  // for Complete
  RequestOp op = RequestOp::kRead;
  uint64_t offset = 0;
  uint32_t length = 0;  // of this segment (kFlush: 0)
  bool fua = false;     // kWrite, kZero: durable before it completes
  bool unmap = false;   // kZero: the range may be deallocated
  io::BufferRef data;   // kWrite: `length` bytes of payload
};

class Frontend {
 public:
  virtual ~Frontend() = default;

  virtual std::string_view name() const = 0;

  // Moves up to out.size() new request segments into `out`; returns how many. Never blocks.
  virtual size_t Poll(std::span<Request> out) = 0;

  // Completes a segment: `res` is 0 or a negated errno. A READ segment's bytes come in `data`
  // (a pool buffer holding `length` bytes); other segments pass an empty BufferRef.
  virtual void Complete(uint64_t id, int32_t res, io::BufferRef data = {}) = 0;

  // Clients connected now (handshake or transmission).
  virtual size_t clients() const = 0;

  // Stops accepting; requests still arriving get ESHUTDOWN; connections close once their
  // replies have left (bounded). Call, then keep polling until closed().
  virtual void Shutdown() = 0;
  virtual bool closed() const = 0;
};

}  // namespace blkmirror::frontend
