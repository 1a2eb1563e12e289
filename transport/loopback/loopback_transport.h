// The loopback backend: transports in one process, connected through a LoopbackNetwork.
//
// For unit tests of the engine: a primary and a replica run in one thread, each with its own
// LoopbackTransport and BufferPool, and frames move between them at Post/Poll. Data payloads are
// copied into a buffer of the receiver's pool (the copy stands in for the wire). Frames stay in
// order; a frame whose receiver has no free buffer waits in the sender until one is released.
//
// Thread safety: none; every transport of a network must be used from one thread.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "transport/transport.h"

namespace blkmirror::transport {

class LoopbackTransport;

class LoopbackNetwork {
 public:
  // Creates a transport attached to this network; `name` is how its peers see it. The network
  // must outlive it.
  std::unique_ptr<Transport> CreateTransport(std::string name);

 private:
  friend class LoopbackTransport;
  std::map<std::string, LoopbackTransport*> listeners_;
};

}  // namespace blkmirror::transport
