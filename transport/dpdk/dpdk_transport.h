// The DPDK backend: frames over Ethernet/IPv4/UDP packets on a DPDK port (memif, af_packet,
// af_xdp, or a NIC), with its own reliability (transport/dpdk/channel.h), for nodes whose NICs
// have no RDMA.
//
// Connections are set up over TCP, on the same HOST:PORT addressing as the tcp backend: the
// connecting side offers its port's address (MAC, IPv4, UDP port, MTU, session id) in a
// TransportHello frame on the TCP connection, the accepting side answers with its own, and
// from then on every frame of the connection moves over the port; the TCP connection stays
// open as the connection's liveness (its close closes the connection). A peer that answers
// with anything else (a replica serving TCP alone) makes Connect fail with its answer. The
// accepting side serves plain TCP connections too (a first frame that is not a TransportHello):
// those stay on TCP, so `serve --transport dpdk` also serves `push --transport tcp`.
//
// One port per transport; packets are demultiplexed by the session id each side chose. Block
// data is sent by reference (Port::attaches_tx) where the driver allows, else copied into mbufs,
// and copied once out of them into the pool buffer on receive (memif and af_packet copy between
// the processes or into the kernel anyway); see docs/performance.md for what that costs.
//
// Polling: Poll() reads the port; while packets move in or out (and kSpinNs after) the
// transport keeps the loop's ring awake with a NOP, so the loop busy-polls; then it sleeps on
// the port's rx interrupt where the driver has one, else a 1 ms timer, and with no DPDK
// connection at all it does not wake for the port. Waiting for an ack alone is not traffic: on
// two cores a sender spinning for its acks starved the receiver that had to send them.
#pragma once

#include <memory>

#include "transport/transport.h"

namespace blkmirror::transport {

Result<std::unique_ptr<Transport>> CreateDpdkTransport(const TransportContext& context);

}  // namespace blkmirror::transport
