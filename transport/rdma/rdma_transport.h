// The RDMA verbs backend. (Being written: see issue 3.)
#pragma once

#include <memory>

#include "transport/transport.h"

namespace blkmirror::transport {

Result<std::unique_ptr<Transport>> CreateRdmaTransport(const TransportContext& context);

}  // namespace blkmirror::transport
