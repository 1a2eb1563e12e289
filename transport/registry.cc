#include "transport/registry.h"

#include <fmt/ranges.h>

#include "transport/tcp/tcp_transport.h"
#ifdef BLKMIRROR_HAVE_RDMA
#include "transport/rdma/rdma_transport.h"
#endif
#ifdef BLKMIRROR_HAVE_DPDK
#include "transport/dpdk/dpdk_transport.h"
#endif

namespace blkmirror::transport {
namespace {

struct Backend {
  std::string_view name;
  Result<std::unique_ptr<Transport>> (*create)(const TransportContext&);
};

// Every backend of this build. `auto` tries them in this order, per peer.
constexpr Backend kBackends[] = {
#ifdef BLKMIRROR_HAVE_RDMA
    {"rdma", &CreateRdmaTransport},
#endif
#ifdef BLKMIRROR_HAVE_DPDK
    {"dpdk", &CreateDpdkTransport},
#endif
    {"tcp", &CreateTcpTransport},
};

}  // namespace

Result<std::unique_ptr<Transport>> CreateTransport(std::string_view name,
                                                   const TransportContext& context) {
  for (const Backend& b : kBackends) {
    if (b.name == name) return b.create(context);
  }
  return Status::Invalid("unknown transport '{}' (this build has: {})", name,
                         fmt::join(TransportNames(), ", "));
}

std::vector<std::string_view> TransportNames() {
  std::vector<std::string_view> names;
  for (const Backend& b : kBackends) names.push_back(b.name);
  return names;
}

}  // namespace blkmirror::transport
