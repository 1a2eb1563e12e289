// The input formats of session_fuzzer, replicator_fuzzer, nbd_fuzzer and dpdk_packet_fuzzer:
// how their bytes become frames and actions. make_seeds writes seeds in these formats; change
// both together (and regenerate the corpora: see fuzz/README.md).
//
// Every input is a valid program: reads past the end yield zeros, and a record cut short is
// completed with zeros.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blkmirror::fuzz {

// ---- session_fuzzer: raw clients against a ReplicaServer ---------------------------------------
//
//   input  := setup:u8 record*
//   record := ctl:u8 header:64 payload
//
// payload: for a Data frame (the type byte after fix-ups), payload_len bytes; with kCompact it
// is [n:u8][n bytes] instead, repeated to fill payload_len (zeros when n is 0). For every other
// type, payload_len bytes (none when payload_len exceeds the control limit: the send fails).
// Missing bytes are zeros. Data payloads larger than the replica's buffers are not read (the
// transport refuses them and closes the connection).
namespace session_input {
inline constexpr uint8_t kSetupKey = 0x01;           // the replica requires authentication
inline constexpr uint8_t kSetupKeepTimeouts = 0x02;  // fix-ups keep Hello.peer_timeout_ms
                                                     // (else zeroed: wall-clock timeouts make
                                                     // runs irreproducible)
inline constexpr uint8_t kSetupFailMask = 0x1C;      // N != 0: every Nth disk request fails
inline constexpr int kSetupFailShift = 2;
// ctl bits
inline constexpr uint8_t kFixMask = 0x03;  // != 0: fix magic, version and header CRC (last)
inline constexpr uint8_t kConn1 = 0x04;    // send on client connection 1 (else 0)
inline constexpr uint8_t kFixBody = 0x08;  // Data: crc := CRC32C(payload);
                                           // AuthProof: a correct MAC for the payload's nonce
inline constexpr uint8_t kCompact = 0x10;  // Data: compact payload (above)
inline constexpr uint8_t kFixLen = 0x20;   // payload_len := what the type needs (Data: length)
inline constexpr int kAfterShift = 6;      // what follows the send:
inline constexpr uint8_t kAfterStep = 0;   //   step the replica once
inline constexpr uint8_t kAfterStep4 = 1;  //   four times
inline constexpr uint8_t kAfterNone = 2;   //   not at all (frames pile up)
inline constexpr uint8_t kAfterClose = 3;  //   the client closes the connection, then one step
}  // namespace session_input

// ---- replicator_fuzzer: a Replicator against fake replicas
// ---------------------------------------
//
//   input  := setup:3 record*
//   record := ctl:u8 args
//
// setup[0]: bits 0-1 ack level (0 sent, 1 received, 2-3 durable), bits 2-4 window - 1,
//           bit 5 block size 8 KiB (else 4 KiB), bit 6 two replicas (else one),
//           bit 7 authenticate (primary and fake replicas share a key)
// setup[1]: bits 0-3 volume blocks - 1, bit 4 short last block, bits 5-7 max_retries
// setup[2]: bits 0-1 quorum (0: all peers), bit 2 attach in-memory dirty bitmaps, bit 3 the
//           primary sends its own Flush whenever one is due (flush_interval 1 us; else never)
//
// ctl: bits 0-2 action, bit 3 which fake replica, bits 4-7 `arg`.
namespace replicator_input {
inline constexpr uint8_t kActionMask = 0x07;
inline constexpr uint8_t kPeer1 = 0x08;
inline constexpr int kArgShift = 4;
enum Action : uint8_t {
  kRaw = 0,      // header:64 payload: any frame; arg & 3 != 0: fix magic, version, CRC
  kHelloOk = 1,  // version:u8 max_block:u8 capacity:u8 id:u8; arg & 1: a wrong proof
  kAck = 2,      // level:u8 cumulative:u8 sack_base:u8 sack_bits:u32
  kNack = 3,     // seq:u8 err:u8; arg & 1: I/O error (else CRC mismatch)
  kError = 4,    // code:u8 len:u8 text:len
  kSubmit = 5,   // (arg & 3) + 1 writes, each block:u8; arg >> 2: 0-1 all peers, 2 peer 0,
                 // 3 peer 1
  kStep = 6,     // arg + 1 rounds of the loop
  kControl = 7,  // arg & 7: 0 release held blocks, 1 toggle holding, 2 replica closes,
                 // 3 primary StartClose, 4 AuthChallenge (nonce:32), 5 Heartbeat,
                 // 6 a Data frame to the primary (len:u8 x 64 bytes), 7 Bye to the primary
};
}  // namespace replicator_input

// ---- nbd_fuzzer: an NBD ServerHandshake, then requests -----------------------------------------
//
//   input := setup:4 stream
//
// setup[0..1]: the export's transmission flags, little-endian (any bits)
// setup[2]:    bits 0-1 min_block (kMinBlocks), bits 2-3 max_payload (kMaxPayloads),
//              bits 4-6 size (kSizes)
// setup[3]:    bits 0-1 name (kNames), bit 2 a description
//
// stream: the client's bytes as on the wire (big-endian): client flags, options; once the
// handshake reaches the transmission phase, 28-byte requests, each WRITE followed by its
// payload. The handshake is fed the chunks its Want() asks for; the input ends where a chunk
// would be cut short.
namespace nbd_input {
inline constexpr uint32_t kMinBlocks[4] = {1, 512, 4096, 65536};
inline constexpr uint32_t kMaxPayloads[4] = {64u << 10, 1u << 20, 32u << 20, 0xFFFFFFFFu};
inline constexpr uint64_t kSizes[8] = {0,
                                       512,
                                       1ull << 20,
                                       (1ull << 30) + 512,
                                       1ull << 30,
                                       1ull << 63,
                                       ~0ull << 16,
                                       ~0ull};
inline constexpr const char* kNames[4] = {"", "disk", "vol/with:odd chars", "x"};
inline constexpr uint8_t kSetupDescription = 0x04;
}  // namespace nbd_input

// ---- dpdk_packet_fuzzer: DecodePacket, then a DPDK Channel -------------------------------------
//
//   input  := setup:u8 record*
//   record := ctl:u8 args
//
// setup: bits 0-1 the chunk (kChunkMtus: the IP MTU whose ChunkSize the channel cuts at),
//        bit 2 the channel is the connecting side (else accepting), bit 3 Trust() it at once
//
// ctl: bits 0-2 action, bits 3-7 flags of that action.
namespace dpdk_packet_input {
inline constexpr uint32_t kChunkMtus[4] = {1500, 576, 9000, 1500};
inline constexpr uint8_t kSetupChunkMask = 0x03;
inline constexpr uint8_t kSetupConnecting = 0x04;
inline constexpr uint8_t kSetupTrust = 0x08;
// The channel's address: packets are decoded for it.
inline constexpr uint32_t kLocalIp = 0x0A000002;  // 10.0.0.2
inline constexpr uint16_t kLocalPort = 7100;
inline constexpr uint8_t kActionMask = 0x07;
enum Action : uint8_t {
  kPacket = 0,    // len:u16 bytes:len, an Ethernet frame given to DecodePacket (and, when it
                  // decodes, to Channel::Receive); flags below fix it up first
  kTick = 1,      // dt:u16: the clock advances dt x 100 us, then Tick
  kTake = 2,      // TakeReceived; kTakeMove: Data buffers are moved out and held;
                  // kTakeRelease: every held buffer is given back
  kTransmit = 3,  // n:u8: Transmit into (n % 64) + 1 packets, each encoded and decoded again
  kQueue = 4,     // type:u8 len:u16: queues a frame to send (type & 1: Data of len % 64 KiB
                  // bytes, else an Error with len % 1025 bytes of text)
  kTrust = 5,     // Trust()
  kAck = 6,       // kind:u8 ack:u32 sack:u64 credit:u32: an ack or probe packet from the peer,
                  // encoded correctly (kind & 1: kProbe)
  kData = 7,      // seq:u32 frame_no:u32 frame_off:u32 frame_len:u32 len:u16 bytes:len: a data
                  // packet encoded correctly; with frame_off 0 and len >= 64, kFixFrame fixes
                  // the frame header's magic, version and CRC
};
// kPacket flags
inline constexpr uint8_t kFixIp = 0x08;   // Ethernet type, IPv4 version/protocol/addresses,
                                          // lengths (from the packet's size) and checksum,
                                          // UDP port and length
inline constexpr uint8_t kFixCrc = 0x10;  // magic, version, payload_len and the CRC
// kTake flags
inline constexpr uint8_t kTakeMove = 0x08;
inline constexpr uint8_t kTakeRelease = 0x10;
// kData flags
inline constexpr uint8_t kFixFrame = 0x08;
}  // namespace dpdk_packet_input

}  // namespace blkmirror::fuzz
