// LoopbackReplica: a ReplicaServer on the loopback network, writing to an in-memory device the
// test keeps, for engine tests that run a primary and its replicas in one thread.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <gtest/gtest.h>

#include "engine/replica.h"
#include "engine/testing/kept_target.h"
#include "io/mem/mem_block_device.h"
#include "io/testing/faulty_block_device.h"
#include "io/ring.h"
#include "transport/loopback/loopback_transport.h"
#include "transport/testing/faulty_transport.h"

namespace blkmirror::engine::testing {

struct LoopbackReplicaOptions {
  uint64_t capacity = 0;
  size_t max_block = 64 << 10;  // receive buffers
  std::string fault;            // a FaultSpec, "" for none
  std::optional<Key> key;
  uint16_t max_version = proto::kMaxProtocolVersion;
  std::optional<io::DiskFaultSpec> disk_fault;  // on the target each session opens
};

struct LoopbackReplica {
  LoopbackReplicaOptions options;
  std::string name;  // its address: "<name>:7000"
  transport::Endpoint endpoint;
  std::unique_ptr<io::MemBlockDevice> device;  // kept across Stop/Start
  std::unique_ptr<io::BufferPool> pool;
  std::unique_ptr<transport::Transport> transport;
  transport::FaultyTransport* faulty = nullptr;
  std::unique_ptr<ReplicaServer> server;
  // The target's generations, kept across Stop/Start as a real target's metadata is.
  proto::VolumeId kept_volume;
  TargetGenerations kept;
  uint64_t generation_saves = 0;

  // Listens (again) on its address, with a new transport and server over the same device.
  void Start(transport::LoopbackNetwork& net, io::Ring& ring) {
    pool = std::move(io::BufferPool::Create(options.max_block + transport::kReceiveHeadroom, 16,
                                            io::HugePages::kNever)
                         .value());
    transport = net.CreateTransport(name);
    faulty = nullptr;
    if (!options.fault.empty()) {
      auto f = std::make_unique<transport::FaultyTransport>(
          std::move(transport), transport::FaultSpec::Parse(options.fault).value());
      faulty = f.get();
      transport = std::move(f);
    }
    EXPECT_TRUE(transport->Register(*pool).ok());
    EXPECT_TRUE(transport->Listen(endpoint).ok());
    ReplicaOptions o;
    o.target_name = device->name();
    o.key = options.key;
    o.max_version = options.max_version;
    o.open_target = KeptTarget(*device);
    if (options.disk_fault) {
      o.open_target = [kept = o.open_target, spec = *options.disk_fault](
                          uint64_t volume_size,
                          TargetUse use) -> Result<std::unique_ptr<io::BlockDevice>> {
        ASSIGN_OR_RETURN(auto target, kept(volume_size, use));
        return std::unique_ptr<io::BlockDevice>(
            std::make_unique<io::FaultyBlockDevice>(std::move(target), spec));
      };
    }
    o.generations.load = [this](const proto::VolumeId& v) -> Result<TargetGenerations> {
      return v == kept_volume ? kept : TargetGenerations{};
    };
    o.generations.save = [this](const proto::VolumeId& v, const Generations& g) {
      kept_volume = v;
      kept.generations = g;
      ++generation_saves;
      return Status::Ok();
    };
    server = std::move(ReplicaServer::Create(ring, *pool, std::move(o)).value());
    server->AddTransport(transport.get());
  }

  // Gone: its connections close, its address stops listening; the device stays.
  void Stop() {
    server.reset();
    transport.reset();
    faulty = nullptr;
  }
};

inline std::unique_ptr<LoopbackReplica> MakeLoopbackReplica(transport::LoopbackNetwork& net,
                                                            io::Ring& ring, std::string name,
                                                            LoopbackReplicaOptions options) {
  auto r = std::make_unique<LoopbackReplica>();
  r->options = std::move(options);
  r->name = std::move(name);
  r->endpoint = {r->name, 7000};
  r->device = std::make_unique<io::MemBlockDevice>("mem-" + r->name, r->options.capacity);
  r->Start(net, ring);
  return r;
}

}  // namespace blkmirror::engine::testing
