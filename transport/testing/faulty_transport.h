// FaultyTransport: a forwarding wrapper that breaks one thing on purpose, for tests.
//
// It forwards every call to the transport it wraps and corrupts received block payloads as its
// FaultSpec says (one flipped bit, as a bad NIC, cable or DIMM would), after the wire and before
// the engine sees them: exactly what a replica's CRC32C check exists to catch.
//
// Specs (the CLI's hidden --test-fault takes the same text):
//   flip-rx-data:every=N      flip a bit in every Nth Data payload received (N >= 1)
//   flip-rx-data:offset=O     flip a bit in every Data payload for volume offset O
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include "transport/transport.h"

namespace blkmirror::transport {

struct FaultSpec {
  uint32_t flip_rx_data_every = 0;
  std::optional<uint64_t> flip_rx_data_offset;

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
  Status Post(std::span<const WorkItem> items) override { return inner_->Post(items); }
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
  std::unique_ptr<Transport> inner_;
  FaultSpec spec_;
  uint64_t data_frames_ = 0;
  uint64_t injected_ = 0;
};

}  // namespace blkmirror::transport
