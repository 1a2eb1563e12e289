// Transport: the one contract every network backend implements (tcp, rdma, dpdk, loopback).
//
// A transport moves frames (proto/frame.h): a 64-byte header plus a payload. Block payloads
// (Data frames) are sent from, and received into, buffers of the registered BufferPool, so no
// layer above the wire copies block data; other payloads are small (<= kMaxControlPayload) and
// are copied at Post.
//
// The contract is batched and polled:
//   - Post(items) queues a batch of frames, in order, on their connections. What a backend must
//     hand to the kernel or NIC goes with the loop's next Ring::Submit/Wait (one syscall a batch).
//   - Poll(out) returns what happened since the last Poll (frames sent, frames received, peers
//     accepted, connections closed) and never blocks.
//   - The loop blocks only in Ring::Wait; a backend with its own event source (an RDMA
//     completion channel) attaches it to the ring so that Wait wakes for it.
// Connect() is setup, not data path, and may block up to its timeout.
//
// Ordering: frames posted on one connection are delivered in order, exactly once, or the
// connection closes (a kClosed completion with the reason). A backend over an unreliable medium
// (DPDK) provides this itself.
//
// Direction and trust: Data frames flow from the connecting side to the accepting side only,
// and only once the accepting side's engine has called Trust(conn) (after the handshake and the
// key check). A backend gives a Data frame a receive buffer (or a receive slot) under that rule
// alone: a Data frame on a connection it does not trust, or arriving at the connecting side, is
// a protocol error, and the connection closes (kClosed with UnexpectedData's reason) before any
// buffer is taken, so a stranger can never hold the receiver's pool.
//
// Buffer ownership:
//   - Sending: the block payload (WorkItem::data) stays owned by the caller and must not change
//     until its kSent completion (or the kClosed of its connection, which cancels every pending
//     send with res = -ECANCELED first).
//   - Receiving: a kRecv of a Data frame hands the caller a BufferRef holding the payload. The
//     caller gives it back with Release() when done (after the disk write): a backend with
//     receive credits (RDMA slots) re-advertises the buffer to the peer then.
//
// Thread safety: none; a transport belongs to its loop's thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"
#include "io/buffer_pool.h"
#include "proto/frame.h"
#include "transport/tls/tls_options.h"

namespace blkmirror::io {
class Ring;
}

namespace blkmirror::transport {

struct Endpoint {
  std::string host;
  uint16_t port = 0;
  // "HOST:PORT", "[v6addr]:PORT".
  static Result<Endpoint> Parse(std::string_view text);
  std::string ToString() const;
};

// Identifies a connection within one transport; never reused during the transport's life.
using ConnId = uint64_t;
inline constexpr ConnId kNoConn = 0;

struct WorkItem {
  ConnId conn = kNoConn;
  uint64_t tag = 0;      // returned in the kSent completion
  bool signal = false;   // report a kSent completion for this frame
  proto::RawHeader header{};
  // Block payload (Data frames only): header.payload_len bytes in the registered pool.
  const std::byte* data = nullptr;
  // Control payload (every other frame): header.payload_len bytes, copied by Post.
  std::span<const std::byte> control;
};

enum class CompletionKind : uint8_t {
  kSent,      // a signaled WorkItem left: its data buffer is the caller's again
  kRecv,      // a frame arrived
  kAccepted,  // a peer connected to our listener
  kClosed,    // the connection is gone (status says why); its ConnId is dead now
};

struct Completion {
  CompletionKind kind = CompletionKind::kSent;
  ConnId conn = kNoConn;
  uint64_t tag = 0;   // kSent
  int32_t res = 0;    // kSent: bytes handed over, or -errno (-ECANCELED when closed before)
  proto::RawHeader header{};  // kRecv: the frame header, prefix already checked
  io::BufferRef data;         // kRecv of a Data frame: the payload; give it back with Release
  std::span<const std::byte> control;  // kRecv of another frame: payload, valid until next Poll
  Status status;      // kClosed: the reason (OK for a local Close)

  // Completion slots are reused from Poll to Poll: a backend clears what the last use left
  // before it fills one (a BufferRef the caller did not take goes back to its pool).
  Completion& Reset() {
    data.Reset();
    control = {};
    status = Status();
    tag = 0;
    res = 0;
    return *this;
  }
};

// The checks every backend makes on a WorkItem before queuing it: a valid frame prefix, a Data
// frame with its buffer, another frame with exactly the control payload its header announces.
// Returns the prefix; the error names the frame type and sizes.
Result<proto::Prefix> CheckWorkItem(const WorkItem& item);

// The reason a backend closes a connection on which a Data frame arrived against the rule above:
// at the accepting side before Trust, or at the connecting side at all.
Status UnexpectedData(const std::string& peer, bool accepting_side);

// A backend may use the last kReceiveHeadroom bytes of a receive buffer for itself (RDMA writes
// the frame header there, behind the block). A receiver whose pool buffers are B bytes accepts
// blocks of at most B - kReceiveHeadroom bytes on every transport.
inline constexpr size_t kReceiveHeadroom = 4096;

struct TransportOptions {
  uint32_t send_queue_depth = 1024;  // frames a connection queues before Post refuses
  // tcp: send with IORING_OP_SENDMSG_ZC (pages pinned, not copied, where the NIC allows;
  // loopback copies anyway). Off by default: see docs/performance.md for the measurement.
  bool tcp_zerocopy = false;
  // Local address Connect binds to ("" = the route decides). With both ends on one host (the
  // soft-RoCE lab), it is what makes RDMA traffic cross the wire instead of looping back.
  std::string source_address;
  // dpdk: the port (`--dpdk-port`, transport/dpdk/port.h), this node's IPv4 address on it
  // ("" = the kernel interface's own), its IP MTU (0 = the port's).
  std::string dpdk_port;
  std::string dpdk_ip;
  uint32_t dpdk_mtu = 0;
  // tcp: TLS 1.3 on every connection (--tls; transport/tls/tls.h).
  TlsOptions tls;
  // dpdk, tests only: received packets dropped, duplicated, reordered, corrupted at these
  // rates ("drop=0.01,dup=0.001,reorder=0.01,corrupt=0.001").
  std::string dpdk_test_faults;
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual std::string_view name() const = 0;

  // The pool block payloads are sent from and received into; called once, before Listen or
  // Connect. The pool must outlive the transport.
  virtual Status Register(io::BufferPool& pool) = 0;

  // Accepts connections on `local` (port 0: any free port); returns the bound endpoint. New
  // connections arrive as kAccepted completions.
  virtual Result<Endpoint> Listen(const Endpoint& local) = 0;

  // Connects to a listening peer; blocks at most `timeout`. The error names the peer and what
  // to check.
  virtual Result<ConnId> Connect(const Endpoint& peer, std::chrono::milliseconds timeout) = 0;

  // Queues frames. All or nothing: fails without queuing any when a connection is closed or
  // lacks SendSpace.
  virtual Status Post(std::span<const WorkItem> items) = 0;

  // How many more frames `conn` can queue now.
  virtual size_t SendSpace(ConnId conn) const = 0;

  // Moves up to out.size() completions into `out`; returns how many. Never blocks.
  virtual size_t Poll(std::span<Completion> out) = 0;

  // Gives back a received block buffer.
  virtual void Release(ConnId conn, io::BufferRef buffer) = 0;

  // Lets the peer of an accepted connection send block data (Data frames) into this side's
  // buffers. The engine calls it once the peer has passed the handshake (and the key check,
  // where there is one). Before it, no backend gives that connection a buffer: TCP and loopback
  // close it on a Data frame; RDMA, whose peers write one-sided into slots of the registered
  // pool, grants it no slot and no key to the pool's memory, so a stranger never gets to write a
  // byte there. Unknown or closed connections are ignored.
  virtual void Trust(ConnId conn) = 0;

  // Closes the connection: queued sends are cancelled, a kClosed completion follows.
  virtual void Close(ConnId conn) = 0;

  // "10.0.0.2:7000" style name of the peer, for messages.
  virtual std::string PeerName(ConnId conn) const = 0;
};

// A connection to a peer through a preferred transport or, failing that, its fallback (transport
// auto: RDMA, then TCP): the transport it is on, and why the preferred one is not ("" when it is).
struct FallbackConnection {
  Transport* transport = nullptr;
  ConnId conn = kNoConn;
  std::string fallback_reason;
};

// With a fallback, the preferred transport gets at most this long to connect.
inline constexpr std::chrono::milliseconds kPreferredConnectTimeout{5000};

// Connects to `peer` with `preferred` and, if that fails and `fallback` is not null, with
// `fallback` (logged, with the reason). Each blocks at most `timeout`. When both fail, the error
// is the fallback's, naming the preferred one's too.
Result<FallbackConnection> ConnectWithFallback(Transport& preferred, Transport* fallback,
                                               const Endpoint& peer,
                                               std::chrono::milliseconds timeout);

// Everything a backend may need from its loop.
struct TransportContext {
  io::Ring* ring = nullptr;
  TransportOptions options;
};

}  // namespace blkmirror::transport
