// The table of transport backends, chosen by name (`--transport`). No static registration: the
// table in registry.cc is the whole list.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "transport/transport.h"

namespace blkmirror::transport {

// Creates the backend called `name` ("tcp"). The error lists the names this build has.
Result<std::unique_ptr<Transport>> CreateTransport(std::string_view name,
                                                   const TransportContext& context);

// The backends this build has, in the order `auto` tries them.
std::vector<std::string_view> TransportNames();

}  // namespace blkmirror::transport
