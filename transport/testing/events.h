// What transport tests keep of a Completion: a copy that outlives the Poll (the payload bytes
// included), and a counter by kind. Shared by the TCP (tests/unit) and RDMA (tests/rdma) tests.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "proto/frame.h"
#include "transport/transport.h"

namespace blkmirror::transport::test_events {

struct Event {
  CompletionKind kind;
  ConnId conn;
  uint64_t tag;
  int32_t res;
  proto::RawHeader header;
  std::vector<std::byte> payload;  // a kRecv's block or control payload
  std::string status;              // "" when ok
};

inline Event Record(const Completion& c) {
  Event e{c.kind, c.conn, c.tag, c.res, c.header, {}, c.status.ok() ? "" : c.status.message()};
  if (c.kind == CompletionKind::kRecv) {
    if (c.data) {
      uint32_t len = proto::DecodePrefix(c.header)->payload_len;
      e.payload.assign(c.data.data(), c.data.data() + len);
    } else {
      e.payload.assign(c.control.begin(), c.control.end());
    }
  }
  return e;
}

inline size_t Count(const std::vector<Event>& events, CompletionKind kind) {
  return static_cast<size_t>(
      std::count_if(events.begin(), events.end(), [&](const Event& e) { return e.kind == kind; }));
}

// "recv(conn 1) sent(conn 1, res 64) closed(conn 1: why)": what a failed wait saw.
inline std::string Describe(const std::vector<Event>& events) {
  static constexpr const char* kNames[] = {"sent", "recv", "accepted", "closed"};
  std::string out;
  for (const Event& e : events) {
    if (!out.empty()) out += ' ';
    out += kNames[static_cast<size_t>(e.kind)];
    out += "(conn " + std::to_string(e.conn);
    if (e.res < 0) out += ", res " + std::to_string(e.res);
    if (!e.status.empty()) out += ": " + e.status;
    out += ')';
  }
  return out.empty() ? "nothing" : out;
}

}  // namespace blkmirror::transport::test_events
