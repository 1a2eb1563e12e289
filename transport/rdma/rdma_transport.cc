// Placeholder while the backend is written (issue 3): refuses, clearly.
#include "transport/rdma/rdma_transport.h"

namespace blkmirror::transport {

Result<std::unique_ptr<Transport>> CreateRdmaTransport(const TransportContext&) {
  return Status::Error(ErrorCode::kUnavailable, "the RDMA transport is not implemented yet");
}

}  // namespace blkmirror::transport
