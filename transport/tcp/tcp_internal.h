// Private to the TCP backend: the transport object shared by its setup (tcp_transport.cc) and
// data-path (tcp_datapath.cc) halves.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "io/ring.h"
#include "transport/send_queue.h"
#include "transport/tls/tls.h"
#include "transport/transport.h"

namespace blkmirror::transport::tcp {

inline constexpr size_t kMaxBatchFrames = 32;  // frames per SENDMSG
inline constexpr size_t kReadyCap = 16;        // received frames held for Poll per connection
inline constexpr size_t kCtrlRingBytes = 128 << 10;  // queued control payloads per connection

struct Conn;
struct Listener;

// Whether kTLS took the records, said at info level once per process (tcp_tls.cc).
void SayKtlsOnce(const std::string& text);

struct Op : io::RingOp {
  enum class Kind : uint8_t { kSend, kRecv, kAccept, kAcceptRetry };
  Kind kind = Kind::kSend;
  Conn* conn = nullptr;
  Listener* listener = nullptr;
};

struct ReadyFrame {
  proto::RawHeader header{};
  io::BufferRef data;
  alignas(8) std::array<std::byte, proto::kMaxControlPayload> ctrl{};
};

struct Conn {
  ConnId id = kNoConn;
  int fd = -1;
  std::string peer;
  bool accepted = false;  // we accepted it (else we connected it)
  bool trusted = false;   // Trust() was called: Data frames may arrive (accepted side only)

  // Lifecycle: once `closing`, no new operation starts; when none is in flight the connection
  // reports its remaining completions and kClosed, and is destroyed.
  bool closing = false;
  bool local_close = false;
  Status close_reason;
  // A send failed (the peer closed or reset): nothing more is sent, but receiving goes on until
  // the peer's end is reached, so the frames it sent before closing (an Error saying why) are
  // delivered before the kClosed, which then carries this reason.
  bool send_broken = false;
  Status send_error;

  // Send queue (transport/send_queue.h), with this backend's cursors between its done and tail:
  //   [head, done)            sent and their buffers free, not yet reported by Poll
  //   [done, sq_sent)         sent, buffers still referenced by the kernel (zero-copy only)
  //   [sq_sent, sq_batch_end) in the SENDMSG in flight
  //   [sq_batch_end, tail)    queued
  SendQueue sq;
  uint64_t sq_sent = 0, sq_batch_end = 0;
  Op send_op;
  bool send_inflight = false;
  // Zero-copy sends: each SENDMSG_ZC result that announces a notification (CQE_F_MORE) leaves
  // the sq_sent it reached here; its notification (CQE_F_NOTIF, in order) releases up to it.
  std::array<uint64_t, 8> zc_marks{};
  size_t zc_head = 0, zc_count = 0;
  msghdr msg{};
  std::array<iovec, 2 * kMaxBatchFrames> iov{};
  std::array<bool, 2 * kMaxBatchFrames> iov_ends_entry{};
  size_t iov_count = 0;
  size_t iov_pos = 0;  // first iovec not fully sent

  // Receive: one RECV in flight, into ready[(ready_head + ready_count) % kReadyCap].
  Op recv_op;
  bool recv_inflight = false;
  bool rx_in_payload = false;
  bool rx_wait_buffer = false;  // payload needs a pool buffer; retried at Poll
  uint32_t rx_got = 0;
  proto::Prefix rx_prefix{};
  std::array<ReadyFrame, kReadyCap> ready;
  size_t ready_head = 0, ready_count = 0;
  size_t ready_lent = 0;  // delivered at the last Poll; their control spans live until the next

  // TLS in user space (--tls; null on plain TCP, and once kTLS has the socket). The send queue
  // is encrypted into the session in order: sq_sent counts the frames wholly encrypted (their
  // buffers are free then), tls_tx_off the bytes of the next one (header, then payload); the
  // one SEND in flight carries tls_tx_len bytes of ciphertext. A RECV brings ciphertext into
  // the session, and frames are decrypted from it into the same places as on plain TCP.
  std::unique_ptr<tls::Session> tls;
  uint32_t tls_tx_off = 0;
  size_t tls_tx_len = 0;
  bool ktls_pending = false;  // the handshake is over: hand the keys to the kernel when idle
  bool ktls = false;          // the kernel does the records
  // The handshake failed: the alert for the peer goes out first, then the connection fails.
  bool tls_failing = false;
  Status tls_fail;

  bool busy() const { return send_inflight || recv_inflight || zc_count > 0; }
};

// Accept retries after the process ran out of descriptors (or memory): the first after
// kAcceptRetryFirst, doubling up to kAcceptRetryMax, until an accept succeeds again.
inline constexpr std::chrono::milliseconds kAcceptRetryFirst{100};
inline constexpr std::chrono::milliseconds kAcceptRetryMax{2000};

struct Listener {
  int fd = -1;
  Endpoint local;
  Op op;
  bool inflight = false;
  sockaddr_storage addr{};
  socklen_t addr_len = sizeof(sockaddr_storage);
  // A timer (IORING_OP_TIMEOUT) that re-arms the accept after a failure that a retry may cure.
  Op retry_op;
  bool retry_inflight = false;
  __kernel_timespec retry_ts{};
  uint32_t failures = 0;  // accepts failed in a row
};

class TcpTransport final : public Transport, public io::RingHandler {
 public:
  // `tls`: the TLS context (--tls), or null for plain TCP.
  TcpTransport(const TransportContext& context, std::unique_ptr<tls::Context> tls);
  ~TcpTransport() override;

  std::string_view name() const override { return "tcp"; }
  Status Register(io::BufferPool& pool) override;
  Result<Endpoint> Listen(const Endpoint& local) override;
  Result<ConnId> Connect(const Endpoint& peer, std::chrono::milliseconds timeout) override;
  Status Post(std::span<const WorkItem> items) override;
  size_t SendSpace(ConnId conn) const override;
  size_t Poll(std::span<Completion> out) override;
  void Release(ConnId conn, io::BufferRef buffer) override;
  void Trust(ConnId conn) override;
  void Close(ConnId conn) override;
  std::string PeerName(ConnId conn) const override;

  void OnCqe(io::RingOp* op, int32_t res, uint32_t flags) override;

 private:
  // Setup (tcp_transport.cc).
  Conn* AddConn(int fd, std::string peer, std::unique_ptr<tls::Session> tls = nullptr);
  void Destroy(Conn* conn);
  void ArmAccept(Listener& listener);
  void OnAccept(Listener& listener, int32_t res);
  void RetryAcceptLater(Listener& listener, int32_t res);

  // Data path (tcp_datapath.cc).
  Conn* Find(ConnId id) const;
  void Fail(Conn& conn, Status reason);
  // Why a connection's RECV ended with `res` <= 0: a send that broke first, the receive's error,
  // the peer's close between frames, or its close in the middle of one (truncated).
  Status ReceiveEnded(const Conn& conn, int32_t res) const;
  void StartSend(Conn& conn);
  void OnSend(Conn& conn, int32_t res, uint32_t flags);
  void StartRecv(Conn& conn);
  void OnRecv(Conn& conn, int32_t res);
  void FrameReceived(Conn& conn);
  size_t Drain(Conn& conn, std::span<Completion> out);

  void PrepSend(Conn& conn);
  // Where the frame being received goes next (header, control payload, or its pool buffer):
  // false while it waits for a buffer.
  bool RecvTarget(Conn& conn, std::byte*& dst, uint32_t& want);
  // `n` more bytes of the frame being received have landed: false when the connection failed.
  bool Received(Conn& conn, uint32_t n);

  // TLS (tcp_tls.cc).
  void TlsStartSend(Conn& conn);
  void TlsOnSend(Conn& conn, int32_t res);
  void TlsStartRecv(Conn& conn);
  void TlsOnRecv(Conn& conn, int32_t res);
  bool TlsDeliver(Conn& conn);
  void TlsFail(Conn& conn, Status reason);
  void TryKernelTls(Conn& conn);
  Status ClientHandshake(int fd, tls::Session& session, const std::string& peer,
                         std::chrono::milliseconds timeout);
  void TellPlainPeer(Conn& conn, const std::string& text);

  io::Ring& ring_;
  TransportOptions options_;
  std::unique_ptr<tls::Context> tls_;
  io::BufferPool* pool_ = nullptr;
  ConnId next_id_ = 1;
  uint64_t posts_ = 0;  // Posts so far: the batch number of SendQueue::Reserve
  std::vector<std::unique_ptr<Conn>> conns_;
  // Connections whose kClosed went out at the last Poll: freed at the next one, because the
  // control payloads handed out with that kClosed point into them.
  std::vector<std::unique_ptr<Conn>> closed_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<ConnId> accepted_;  // new connections not yet reported
  bool shutting_down_ = false;
};

}  // namespace blkmirror::transport::tcp
