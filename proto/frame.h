// The blkmirror wire format (docs/protocol.md is the prose version of this file).
//
// Every frame is a fixed 64-byte little-endian header followed by `payload_len` bytes:
//
//   off  size  field
//   0    4     magic        'BKMR' (0x524D4B42)
//   4    1     version      frame format version (kFrameVersion)
//   5    1     type         FrameType
//   6    2     flags        per type; unknown bits are rejected
//   8    4     payload_len  bytes that follow the header
//   12   4     header_crc   CRC32C of the 64 header bytes with this field zeroed
//   16   48    body         per type (Hello, Data, Ack, ...); reserved bytes must be zero
//
// Decode() checks everything that can be checked without context (magic, version, CRC, type,
// flags, reserved bytes, per-type bounds and payload sizes). Checks that need the session
// (offset within the volume, alignment to the block size, sequence window) are the engine's.
//
// Thread safety: pure functions, no state.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <variant>

#include "common/status.h"

namespace blkmirror::proto {

inline constexpr uint32_t kMagic = 0x524D4B42;  // "BKMR" in little-endian byte order
inline constexpr uint8_t kFrameVersion = 1;
// Protocol versions this build speaks (negotiated in Hello/HelloOk):
//   1  Data frames are whole blocks of the volume (push, verify)
//   2  Data frames are extents (any sector-aligned range within one block's length), and the
//      Zero and Flush frames exist (a volume that clients write through)
//   3  a write session exchanges data generations (Generation frames) before any Data: the
//      roles and failover of a volume
inline constexpr uint16_t kMinProtocolVersion = 1;
inline constexpr uint16_t kMaxProtocolVersion = 3;
inline constexpr uint16_t kExtentsVersion = 2;
inline constexpr uint16_t kGenerationsVersion = 3;

inline constexpr size_t kHeaderSize = 64;
inline constexpr size_t kBodySize = 48;
// Largest payload of any frame that is not Data (error text, verify CRC lists).
inline constexpr uint32_t kMaxControlPayload = 4096;
// Largest block the protocol carries; a replica may accept less (HelloOk::max_block_size).
inline constexpr uint32_t kMaxBlockSize = 64u << 20;
// Block sizes are multiples of this (the O_DIRECT granularity every device supports).
inline constexpr uint32_t kBlockAlign = 4096;
// A block size the protocol carries: a multiple of kBlockAlign, at most kMaxBlockSize.
constexpr bool ValidBlockSize(uint64_t bs) {
  return bs >= kBlockAlign && bs <= kMaxBlockSize && bs % kBlockAlign == 0;
}
// Extents (protocol 2) start and end on multiples of this.
inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint32_t kMaxErrorText = 1024;
inline constexpr uint32_t kMaxVerifyBlocks = kMaxControlPayload / 4;
// The most writes a primary keeps in flight per replica (Hello::window).
inline constexpr uint32_t kMaxWindow = 65536;

using RawHeader = std::array<std::byte, kHeaderSize>;

enum class FrameType : uint8_t {
  kHello = 1,       // primary -> replica: open a session
  kHelloOk = 2,     // replica -> primary: session accepted
  kError = 3,       // either way: fatal error, text in payload; the sender closes
  kData = 4,        // primary -> replica: one block
  kAck = 5,         // replica -> primary: blocks reached an ack level
  kNack = 6,        // replica -> primary: a block was rejected (CRC, I/O error)
  kHeartbeat = 7,   // either way: liveness
  kVerifyReq = 8,   // primary -> replica: CRCs of a range, please
  kVerifyResp = 9,  // replica -> primary: CRCs, payload = count x u32
  kBye = 10,        // primary -> replica: clean end of session
  kAuthChallenge = 11,  // replica -> primary: prove you hold the key (payload: nonce)
  kAuthProof = 12,      // primary -> replica: the proof (payload: nonce + HMAC)
  kZero = 13,           // primary -> replica (protocol 2): a range reads as zeros from now on
  kFlush = 14,          // primary -> replica (protocol 2): make every earlier write durable
  kGeneration = 15,     // either way (protocol 3): the sender's data generations
  kTransportHello = 16,  // transport-internal, first on a connection: a data path's address
};
std::string_view FrameTypeName(FrameType type);

enum class SessionKind : uint8_t { kWrite = 1, kVerify = 2 };

// Ack levels, in increasing strength. kSent is never on the wire (the primary's transport
// reports it); Data frames carry the level the replica must ack.
enum class AckLevel : uint8_t { kSent = 0, kReceived = 1, kDurable = 2 };
std::string_view AckLevelName(AckLevel level);

struct VolumeId {
  std::array<uint8_t, 16> bytes{};
  bool operator==(const VolumeId&) const = default;
};

struct Hello {
  uint16_t min_version = kMinProtocolVersion;
  uint16_t max_version = kMaxProtocolVersion;
  SessionKind kind = SessionKind::kWrite;
  uint32_t block_size = 0;
  uint32_t window = 0;
  uint64_t volume_size = 0;
  VolumeId volume_id;
  uint32_t peer_timeout_ms = 0;  // a side silent this long is lost; 0: no timeout
};

// The replica's data identity: changes whenever the target's contents may no longer be what
// earlier sessions left (a new target file, another volume). A primary's dirty bitmap for a
// replica is valid only for the identity it was kept against.
using ReplicaId = VolumeId;

inline constexpr uint32_t kAuthNonceSize = 32;
inline constexpr uint32_t kAuthMacSize = 32;

// HelloOk flags: what the replica takes beyond its protocol version.
// kHelloOkCompressed: Data payloads compressed with lz4 or zstd (kDataCodecMask).
inline constexpr uint16_t kHelloOkCompressed = 0x1;
struct HelloOk {
  uint16_t version = 0;
  uint32_t max_block_size = 0;
  uint64_t capacity = 0;  // bytes the replica's target can hold
  ReplicaId replica_id;
  // Payload: empty, or (after an authenticated handshake) the replica's kAuthMacSize proof.
};

// Payload: kAuthNonceSize bytes of the replica's nonce.
struct AuthChallenge {};
// Payload: the primary's nonce (kAuthNonceSize) then its proof (kAuthMacSize).
struct AuthProof {};

struct Error {
  uint32_t code = 0;  // ErrorCode value; text in the payload
};

// Data flags: bits 0-1 the ack level wanted, bit 2 set on a resend, bits 3-4 the payload's
// codec (to a replica whose HelloOk had kHelloOkCompressed only).
inline constexpr uint16_t kDataAckMask = 0x3;
inline constexpr uint16_t kDataResend = 0x4;
inline constexpr uint16_t kDataCodecMask = 0x18;
inline constexpr int kDataCodecShift = 3;
enum class Codec : uint8_t { kNone = 0, kLz4 = 1, kZstd = 2 };
inline Codec DataCodec(uint16_t flags) {
  return static_cast<Codec>((flags & kDataCodecMask) >> kDataCodecShift);
}
inline uint16_t DataCodecFlags(Codec codec) {
  return static_cast<uint16_t>(static_cast<uint16_t>(codec) << kDataCodecShift);
}
struct Data {
  uint64_t seq = 0;     // per-session sequence, dense from 0; a resend keeps its seq
  uint64_t offset = 0;  // byte offset in the volume
  uint32_t length = 0;  // == payload_len; compressed: the length once decompressed (> payload_len)
  uint32_t crc = 0;     // CRC32C of the data (compressed: of the data once decompressed)
};

struct Ack {
  AckLevel level = AckLevel::kReceived;
  uint64_t cumulative = 0;  // every seq < cumulative reached `level`
  uint64_t sack_base = 0;   // bit i of sack_bits: seq sack_base + i reached `level`
  uint64_t sack_bits = 0;
};

// kBadPayload: a compressed payload that does not decompress to exactly `length` bytes.
enum class NackReason : uint32_t { kCrcMismatch = 1, kIoError = 2, kBadPayload = 3 };
struct Nack {
  uint64_t seq = 0;
  uint64_t offset = 0;
  NackReason reason = NackReason::kCrcMismatch;
  uint32_t expected_crc = 0;
  uint32_t actual_crc = 0;
  int32_t err = 0;  // errno for kIoError
};

inline constexpr uint16_t kHeartbeatReply = 0x1;  // flag: this heartbeat answers one
struct Heartbeat {
  uint64_t sent_ns = 0;  // sender's monotonic clock
  uint64_t echo_ns = 0;  // on a reply: the sent_ns being answered
};

struct VerifyReq {
  uint64_t offset = 0;
  uint64_t length = 0;  // at most kMaxVerifyBlocks blocks
  uint32_t block_size = 0;
  uint32_t request_id = 0;
};

struct VerifyResp {
  uint64_t offset = 0;
  uint32_t count = 0;  // CRCs in the payload (u32 little-endian each)
  uint32_t request_id = 0;
  int32_t err = 0;  // errno when the replica could not read the range; count is then 0
};

struct Bye {};

// Zero flags: bits 0-1 the ack level wanted (as Data); kZeroUnmap: the replica may deallocate
// the range (punch a hole, discard) as long as it reads back as zeros.
inline constexpr uint16_t kZeroUnmap = 0x8;
struct Zero {
  uint64_t seq = 0;     // in the session's sequence, as Data
  uint64_t offset = 0;  // a multiple of kSectorSize
  uint64_t length = 0;  // a multiple of kSectorSize, > 0; offset + length within the volume
};
// What a Zero frame's range must be, whatever the volume: whole sectors, not empty. (A short
// tail at the end of a volume whose size is no multiple of the sector goes as Data.)
inline bool IsWholeSectors(uint64_t offset, uint64_t length) {
  return length > 0 && offset % kSectorSize == 0 && length % kSectorSize == 0;
}

// The replica acks a Flush's seq once every write with a lower seq in the session is durable.
struct Flush {
  uint64_t seq = 0;
};

// Data generations (engine/generations.h): `current` names the history the sender's data
// belongs to, `history` the generations before it, newest first (at most kMaxHistory, the rest
// zero). Flags: kGenConsistent, the sender's data is a whole image of `current`; from the primary
// only, kGenSyncStart, a resync to the replica starts (it is inconsistent until kGenInSync), and
// kGenInSync, the replica holds `current` now (it takes `current` and `history` as its own).
inline constexpr size_t kMaxHistory = 4;
inline constexpr uint16_t kGenConsistent = 0x1;
inline constexpr uint16_t kGenSyncStart = 0x2;
inline constexpr uint16_t kGenInSync = 0x4;
struct Generation {
  uint64_t current = 0;  // 0: no generation (data of unknown history)
  std::array<uint64_t, kMaxHistory> history{};
  uint8_t count = 0;  // entries of `history` in use
  bool operator==(const Generation&) const = default;
};

// A transport that moves frames over another data path than the connection it sets up on (the
// DPDK backend: a TCP control connection, then Ethernet/UDP packets) sends this first on the
// control connection; the accepting side answers with its own (kTransportAnswer set) or with an
// Error. It never reaches the engine on such a transport; an engine that gets one (a peer that
// serves TCP alone) refuses it as an unexpected frame, and the connecting side reports that.
inline constexpr uint16_t kTransportAnswer = 0x1;
inline constexpr uint8_t kTransportDpdk = 1;
struct TransportHello {
  uint8_t kind = kTransportDpdk;   // which data path
  uint8_t version = 1;             // of that data path's packet format
  std::array<uint8_t, 6> mac{};    // the sender's port
  uint32_t ipv4 = 0;               // host byte order
  uint16_t udp_port = 0;
  uint16_t mtu = 0;                // the sender's IP MTU; both use the smaller
  uint64_t session = 0;            // put this in every packet sent to the sender (non-zero)
  uint32_t window = 0;             // packets the sender keeps in flight at most
};

using Body = std::variant<Hello, HelloOk, Error, Data, Ack, Nack, Heartbeat, VerifyReq, VerifyResp,
                          Bye, AuthChallenge, AuthProof, Zero, Flush, Generation, TransportHello>;

struct Frame {
  uint16_t flags = 0;
  uint32_t payload_len = 0;
  Body body;
  FrameType type() const;
};

// Encodes `frame` into a 64-byte header (payload_len and CRC included).
RawHeader Encode(const Frame& frame);

// Decodes and validates a header. The error names the field and the bad value.
Result<Frame> Decode(std::span<const std::byte, kHeaderSize> raw);

// The parts a transport needs to delimit frames, after checking magic, version, CRC and the
// payload bound for the type. Used by stream transports before the full Decode.
struct Prefix {
  FrameType type;
  uint32_t payload_len;
};
Result<Prefix> DecodePrefix(std::span<const std::byte, kHeaderSize> raw);

// True for frames whose payload is block data (lands in a pool buffer on receipt); every other
// payload is at most kMaxControlPayload bytes.
inline bool CarriesBlockData(FrameType type) { return type == FrameType::kData; }

// Helpers for the little-endian u32 arrays in VerifyResp payloads.
inline void StoreLe32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
inline uint32_t LoadLe32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace blkmirror::proto
