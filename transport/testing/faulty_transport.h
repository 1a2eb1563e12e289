// FaultyTransport: a forwarding wrapper that breaks one thing on purpose, for tests.
//
// It forwards every call to the transport it wraps and corrupts received block payloads as its
// FaultSpec says (one flipped bit, as a bad NIC, cable or DIMM would), after the wire and before
// the engine sees them: exactly what a replica's CRC32C check exists to catch.
//
// What a spec corrupts depends only on the Data frames' sequence numbers and on how many times
// each has arrived, never on timing, so a test knows the exact number of faults in advance:
//   flip-rx-data:every=N[,tries=K]  the first K transmissions (default 1) of every Nth block of a
//                                   session (seqs N-1, 2N-1, ...): each such block is rejected K
//                                   times and then arrives intact, so with K <= the primary's
//                                   max_retries the push succeeds, with exactly
//                                   K * floor(blocks / N) faults per session
//   flip-rx-data:offset=O           every transmission of the block at volume offset O: the
//                                   primary exhausts its retries on it
//   drop-tx-acks                    never send an Ack (a replica alive, heartbeating, and stuck)
// (The CLI's hidden --test-fault takes the same text.)
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>

#include "transport/transport.h"

namespace blkmirror::transport {

struct FaultSpec {
  uint32_t flip_every = 0;  // 0: no every-Nth rule
  uint32_t flip_tries = 1;  // transmissions corrupted per chosen block
  std::optional<uint64_t> flip_offset;
  bool drop_tx_acks = false;

  static Result<FaultSpec> Parse(std::string_view text);
};

class FaultyTransport final : public Transport {
 public:
  FaultyTransport(std::unique_ptr<Transport> inner, FaultSpec spec)
      : inner_(std::move(inner)), spec_(spec) {}

  std::string_view name() const override { return inner_->name(); }
  Status Register(io::BufferPool& pool) override { return inner_->Register(pool); }
  Result<Endpoint> Listen(const Endpoint& local) override { return inner_->Listen(local); }
  Result<ConnId> Connect(const Endpoint& peer, std::chrono::milliseconds timeout) override {
    return inner_->Connect(peer, timeout);
  }
  Status Post(std::span<const WorkItem> items) override;
  size_t SendSpace(ConnId conn) const override { return inner_->SendSpace(conn); }
  size_t Poll(std::span<Completion> out) override;
  void Release(ConnId conn, io::BufferRef buffer) override {
    inner_->Release(conn, std::move(buffer));
  }
  void Trust(ConnId conn) override { inner_->Trust(conn); }
  void Close(ConnId conn) override { inner_->Close(conn); }
  std::string PeerName(ConnId conn) const override { return inner_->PeerName(conn); }

  uint64_t faults_injected() const { return injected_; }

 private:
  // Whether this transmission of a Data frame is to be corrupted; counts it.
  bool ShouldFlip(ConnId conn, const proto::Frame& frame);

  std::unique_ptr<Transport> inner_;
  FaultSpec spec_;
  // Corrupted transmissions of each chosen block in flight (test code: a map is fine here); an
  // entry goes when the block's intact transmission arrives, or with its connection.
  std::map<std::pair<ConnId, uint64_t>, uint32_t> tries_;
  uint64_t injected_ = 0;
};

}  // namespace blkmirror::transport
