// The RDMA verbs backend (rdma-core: librdmacm for connection setup, libibverbs for the data
// path), over InfiniBand or RoCE (soft-RoCE included). Same HOST:PORT addressing as TCP; the
// ports are rdma_cm's own port space (RDMA_PS_TCP), not the kernel's TCP ports.
//
// Wire use of a connection (one RC queue pair):
//   - Data frames (proto::CarriesBlockData) go as ONE RDMA WRITE WITH IMMEDIATE each, straight
//     from the caller's pool buffer (no copy): gather list = payload, then the 64-byte header,
//     landing contiguously in a receive slot of the peer, so the header sits right behind the
//     block (what transport::kReceiveHeadroom is for). The receiving side's slots are buffers of
//     its registered BufferPool; it grants them to the sender in credit messages and re-grants
//     a slot's buffer when the engine gives it back with Release(). Only the accepting side
//     (the replica) advertises slots and registers its pool for remote write: Data frames flow
//     from the connecting side to the accepting side. It grants nothing, and tells nothing of
//     the pool's address or rkey, until the engine calls Trust() (after the handshake and the
//     key check): the first credit message with grants carries the region (rkey, base).
//   - Every other frame is a SEND (header + payload, <= 4160 bytes) into receive buffers the
//     transport posted before connecting/accepting.
//   - Credit messages (transport-internal SEND WITH IMMEDIATE) return receive-queue credits and
//     grant slots; no frame is ever sent without a receive posted for it at the peer.
// rdma_cm private data carries each side's queue sizes, path MTU and slot geometry (see
// rdma_internal.h: ConnectInfo), never the region's rkey or address. Setup errors name the peer, the device, port, GID and MTU where
// known, and what to check.
//
// Polling (adaptive): while a connection has traffic, Poll busy-polls the completion queues: the
// completion channels stay unarmed and each Poll leaves a NOP in the loop's ring, so the loop's
// next Ring::Wait returns at once and Poll comes straight back, as ib_write_lat polls. The spin
// lasts `poll_budget` after the last sign of traffic (a work completion, a frame delivered or
// posted), longer while sends are outstanding on the NIC (up to 10 ms after the last traffic);
// then the next Poll arms the CQs, drains them once more and the loop sleeps in Wait on the
// channel's fd, so an idle transport costs no CPU. Only live connections are polled for. It relies
// on the loop calling Poll after every Wait, which is the contract's loop (transport.h).
// docs/design.md says why and what it costs.
//
// Ownership: the transport owns every verbs object it creates (event channels, PDs, CQs, QPs,
// MRs, cm_ids) and frees them in its destructor; the registered BufferPool must outlive it.
// Thread safety: none; a transport belongs to the thread that runs its io::Ring. Two transports
// in two threads (each with its own ring) may talk to each other.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "transport/transport.h"

namespace blkmirror::transport {

inline constexpr std::chrono::microseconds kDefaultRdmaPollBudget{500};

struct RdmaOptions {
  // Receive slots (pool buffers) an accepted connection grants its sender (1..1024). Fewer when
  // the pool is short: a connection takes at most half of the free buffers, and tops up later.
  uint32_t slots_per_connection = 16;
  // Source address for Connect (an IP of a local RDMA device, "" = let the route decide). Needed
  // when both ends live on one host (the soft-RoCE lab): without it the route to a local
  // address goes over `lo`, which has no RDMA device.
  std::string source_address;
  // How long Poll keeps busy-polling after the last traffic (see Polling above); 0 never spins
  // (every wait sleeps on the completion channel). The default covers a round trip in the
  // soft-RoCE lab (TCG), where one takes ~0.35 ms; on a real NIC tens of microseconds do. The
  // environment variable BLKMIRROR_RDMA_POLL_US (microseconds) overrides it for the transports
  // the CLI creates.
  std::chrono::microseconds poll_budget = kDefaultRdmaPollBudget;
};

Result<std::unique_ptr<Transport>> CreateRdmaTransport(const TransportContext& context);
Result<std::unique_ptr<Transport>> CreateRdmaTransport(const TransportContext& context,
                                                       const RdmaOptions& options);

}  // namespace blkmirror::transport
