#include "cli/setup.h"

#include "cli/logging.h"

#include <sodium.h>
#include <sys/prctl.h>

#include <climits>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/units.h"
#include "engine/replicator.h"
#include "transport/registry.h"
#include "transport/testing/faulty_transport.h"

namespace blkmirror::cli {

Result<engine::CompressSpec> ParseCompressArgs(const std::string& compress,
                                               const std::string& mode) {
  auto spec = engine::CompressSpec::Parse(compress);
  if (!spec.ok()) return spec.status().Context("--compress");
  auto parsed_mode = engine::ParseCompressMode(mode);
  if (!parsed_mode.ok()) return parsed_mode.status().Context("--compress-mode");
  spec->mode = *parsed_mode;
  return spec;
}

Result<Loop> MakeLoop(size_t buffer_size, size_t count, unsigned entries) {
  Loop loop;
  ASSIGN_OR_RETURN(loop.ring, io::Ring::Create(entries));
  ASSIGN_OR_RETURN(loop.pool, io::BufferPool::Create(buffer_size, count));
  Status registered = loop.ring->RegisterBuffers(*loop.pool);
  if (!registered.ok()) {
    // Fixed buffers save a page-table walk per I/O; without them I/O still works. Say so.
    spdlog::warn("{}; continuing without fixed buffers", registered.message());
  }
  if (!loop.pool->on_hugetlb()) {
    spdlog::info("buffer pool: no 2 MiB hugepages reserved for {} MiB (vm.nr_hugepages); using "
                 "transparent-hugepage-advised memory",
                 loop.pool->region_bytes() >> 20);
  }
  return loop;
}

namespace {

Result<std::unique_ptr<transport::Transport>> MakeOne(const Loop& loop, std::string_view name,
                                                      const std::string& test_fault,
                                                      const transport::TransportOptions& options) {
  transport::TransportContext context;
  context.ring = loop.ring.get();
  context.options = options;
  ASSIGN_OR_RETURN(auto t, transport::CreateTransport(name, context));
  if (!test_fault.empty()) {
    ASSIGN_OR_RETURN(auto spec, transport::FaultSpec::Parse(test_fault));
    spdlog::warn("TEST FAULT INJECTION ACTIVE on {}: {} (never use this in production)", name,
                 test_fault);
    t = std::make_unique<transport::FaultyTransport>(std::move(t), spec);
  }
  RETURN_IF_ERROR(t->Register(*loop.pool));
  return t;
}

}  // namespace

Result<Transports> MakeTransports(const Loop& loop, std::string_view name,
                                  const std::string& test_fault,
                                  const transport::TransportOptions& options) {
  Transports out;
  if (options.tls.enabled) {
    if (name != "auto" && name != "tcp") {
      return Status::Invalid("--tls is TLS on TCP: --transport {} would carry the data in the "
                             "clear (docs/failure-model.md); use --transport tcp (or auto)",
                             name);
    }
    if (name == "auto") spdlog::info("--tls: TCP only (RDMA and DPDK carry no TLS)");
    ASSIGN_OR_RETURN(out.preferred, MakeOne(loop, "tcp", test_fault, options));
    return out;
  }
  if (name != "auto") {
    ASSIGN_OR_RETURN(out.preferred, MakeOne(loop, name, test_fault, options));
    return out;
  }
  auto rdma = MakeOne(loop, "rdma", test_fault, options);
  // After rdma: dpdk where a port is given (it serves plain TCP peers too), else tcp.
  const std::string_view next = options.dpdk_port.empty() ? "tcp" : "dpdk";
  ASSIGN_OR_RETURN(auto second, MakeOne(loop, next, test_fault, options));
  if (rdma.ok()) {
    out.preferred = std::move(rdma).value();
    out.fallback = std::move(second);
    return out;
  }
  out.preferred = std::move(second);
  out.unavailable = "rdma: " + rdma.status().message();
  spdlog::info("--transport auto: RDMA cannot be used here ({}); using {}",
               rdma.status().message(), next);
  if (next == "dpdk") {
    ASSIGN_OR_RETURN(out.fallback, MakeOne(loop, "tcp", test_fault, options));
  }
  return out;
}

void ApplyTlsArgs(const TlsArgs& args, const std::optional<engine::Key>& key,
                  transport::TransportOptions& options) {
  options.tls.enabled = args.enabled;
  options.tls.cert = args.cert;
  options.tls.cert_key = args.cert_key;
  options.tls.ca = args.ca;
  options.tls.ktls = !args.no_ktls;
  options.tls.has_psk_key = key.has_value();
  if (key) options.tls.psk_key = key->bytes;
}

void ApplyDpdkArgs(const DpdkArgs& args, transport::TransportOptions& options) {
  options.dpdk_port = args.port;
  options.dpdk_ip = args.ip;
  options.dpdk_mtu = args.mtu;
  options.dpdk_test_faults = args.test_faults;
}

Result<proto::VolumeId> VolumeIdFor(const std::string& path) {
  char real[PATH_MAX];
  if (realpath(path.c_str(), real) == nullptr) return Status::Errno(errno, path);
  if (sodium_init() < 0) return Status::Error(ErrorCode::kUnavailable, "libsodium init failed");
  proto::VolumeId id;
  crypto_generichash(id.bytes.data(), id.bytes.size(), reinterpret_cast<const unsigned char*>(real),
                     std::strlen(real), nullptr, 0);
  return id;
}

Status CheckReplicaSet(uint32_t window, size_t peers, uint32_t quorum) {
  if (window == 0 || window > proto::kMaxWindow) {
    return Status::Invalid("--window {}: must be between 1 and {}", window, proto::kMaxWindow);
  }
  if (peers == 0) return Status::Invalid("at least one --peer is needed");
  if (peers > engine::kMaxPeers) {
    return Status::Invalid("{} peers: at most {}", peers, engine::kMaxPeers);
  }
  if (quorum > peers) {
    return Status::Invalid("--quorum {} is more than the {} peer(s) given", quorum, peers);
  }
  return Status::Ok();
}

Status EnterBlockIoPath() {
  if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0) return Status();
  const int err = errno;
  return Status::Error(static_cast<ErrorCode>(err),
                       fmt::format("prctl(PR_SET_IO_FLUSHER): {} (it needs CAP_SYS_RESOURCE): a "
                                   "kernel NBD client on this host whose writes go through this "
                                   "process may deadlock with it under memory pressure",
                                   std::strerror(err)));
}

void PrintError(std::string_view command, const Status& status) {
  PrintErrorLine(command, status.message());
}

}  // namespace blkmirror::cli
