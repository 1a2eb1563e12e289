// Setup shared by the commands: the ring and pool of the loop, transports by name, the
// volume id. Setup code only: nothing here runs per block.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "cli/commands.h"
#include "cli/values.h"
#include "common/status.h"
#include "engine/auth.h"
#include "engine/compress.h"
#include "io/buffer_pool.h"
#include "io/ring.h"
#include "proto/frame.h"
#include "transport/transport.h"

namespace blkmirror::cli {

struct Loop {
  std::unique_ptr<io::Ring> ring;
  std::unique_ptr<io::BufferPool> pool;
};

// A ring with `entries` SQEs and a pool of `count` buffers of `buffer_size`, registered with it.
Result<Loop> MakeLoop(size_t buffer_size, size_t count, unsigned entries);

// The transports for `--transport NAME`, registered with the loop's pool and wrapped in a
// FaultyTransport when `test_fault` is not empty:
//   tcp, rdma, dpdk  that backend alone (`preferred`)
//   auto             rdma as `preferred`; then dpdk when options.dpdk_port is set (which also
//                    serves plain TCP peers), else tcp, as `fallback`; when rdma cannot be used
//                    on this host at all, the next one as `preferred` (and tcp as `fallback`
//                    after dpdk), with the reason in `unavailable`
// With options.tls.enabled, only tcp: auto means tcp, and rdma or dpdk are refused (they would
// carry the data in the clear).
struct Transports {
  std::unique_ptr<transport::Transport> preferred;
  std::unique_ptr<transport::Transport> fallback;
  std::string unavailable;  // auto: why rdma is not even tried ("" when it is)
};
Result<Transports> MakeTransports(const Loop& loop, std::string_view name,
                                  const std::string& test_fault,
                                  const transport::TransportOptions& options = {});

// The transport options --tls and its certificates give; `key` (--key-file) gives the pre-shared
// key when there are no certificates.
void ApplyTlsArgs(const TlsArgs& args, const std::optional<engine::Key>& key,
                  transport::TransportOptions& options);

// --compress and --compress-mode; the error names the flag.
Result<engine::CompressSpec> ParseCompressArgs(const std::string& compress,
                                               const std::string& mode);

// The transport options the --dpdk-* flags give.
void ApplyDpdkArgs(const DpdkArgs& args, transport::TransportOptions& options);

// A stable id for the volume at `path` (BLAKE2b-128 of its canonical path).
Result<proto::VolumeId> VolumeIdFor(const std::string& path);

// --window, the --peer list and --quorum (0 allowed: for a volume, no replica needed): what the
// replication takes.
Status CheckReplicaSet(uint32_t window, size_t peers, uint32_t quorum);

// Puts this process in the block I/O path (prctl PR_SET_IO_FLUSHER): its allocations do not
// recurse into I/O, and it is throttled only on its own dirty pages. A kernel client of this
// host's export (nbd0 on the volume) flushes its dirty pages through the volume, and through a
// replica on the same host; without this, under memory pressure, that writeback waits on them
// while they wait in reclaim on that writeback. Needs CAP_SYS_RESOURCE; the error says what
// is at risk without it, for the caller to log at the level its role deserves.
Status EnterBlockIoPath();

// Prints "blkmirror <command>: error: <message>" on stderr.
void PrintError(std::string_view command, const Status& status);

}  // namespace blkmirror::cli
