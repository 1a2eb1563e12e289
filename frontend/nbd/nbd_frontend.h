// The NBD server frontend: serves one export to NBD clients (the kernel's nbd driver through
// nbd-client, qemu, libnbd's nbdsh/nbdcopy/nbdinfo, fio's nbd engine) over unix sockets and TCP,
// from the loop's io_uring.
//
// Fixed newstyle handshake (proto/nbd.h: GO, INFO, LIST, ABORT, EXPORT_NAME, structured replies,
// base:allocation), then requests: READ, WRITE, FLUSH, TRIM, WRITE_ZEROES (with FUA where they
// take it) go to the volume as segments of at most `segment_size` bytes, cut at multiples of it
// (one replication block each); DISC ends a client once its replies are out; BLOCK_STATUS is
// answered here (every extent reported allocated: correct, if not informative). A WRITE's payload
// is received straight into a pool buffer; a READ reply is sent from the pool buffers the volume
// read into (no copy either way).
//
// Limits: at most `max_clients` connections (one more is closed at accept, logged; one that has
// not finished its handshake 10 s after connecting is closed), at most
// `max_requests` requests in progress per client (reading pauses until one is answered), a
// fixed reply queue per client (reading pauses until replies leave: a client that never reads
// cannot make it grow), and requests wait for pool buffers (reading pauses) rather than fail.
// Nothing is allocated per request but an error reply's text. A client that breaks the
// protocol is told why when the protocol allows it (an error reply) and closed, with a log line
// naming it; the others go on.
//
// Thread safety: none (the loop's thread).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "frontend/frontend.h"
#include "io/buffer_pool.h"
#include "io/ring.h"
#include "proto/nbd.h"

namespace blkmirror::frontend {

struct NbdFrontendOptions {
  proto::nbd::ExportInfo export_info;
  // Where to listen: "unix:/run/blkmirror/vol0.sock", or "HOST:PORT" ("127.0.0.1:10809"; port 0
  // picks a free one).
  std::vector<std::string> listen;
  uint32_t segment_size = 128 << 10;  // at most the pool's buffer size
  uint32_t max_clients = 16;
  uint32_t max_requests = 128;  // in progress per client
};

// The largest payload (export_info.max_payload) whose READ reply, a chunk header per segment of
// `segment_size`, fits one SENDMSG: at most `limit`.
uint32_t MaxPayloadFor(uint32_t segment_size, uint32_t limit);

class NbdFrontend : public Frontend {
 public:
  // Listens at once; the error names the address that failed.
  static Result<std::unique_ptr<NbdFrontend>> Create(io::Ring& ring, io::BufferPool& pool,
                                                     NbdFrontendOptions options);
  // Where it listens, as bound ("unix:/path", "127.0.0.1:39123").
  virtual std::vector<std::string> listening() const = 0;
};

}  // namespace blkmirror::frontend
