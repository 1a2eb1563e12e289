// blkmirror: the command line (README.md lists every command and flag).
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/config.h"
#include "cli/daemon.h"
#include "cli/logging.h"
#include "cli/resource.h"
#include "cli/run.h"
#include "cli/values.h"
#include "cli/version.h"

namespace {

// --progress / --no-progress: `progress` keeps its default (-1: on a terminal) unless one is
// given. (CLI11's integer flags reset their variable to 0 at registration, so the default would
// be lost with add_flag.)
void AddProgressFlags(CLI::App* sub, int& progress) {
  auto* on = sub->add_flag_callback("--progress", [&progress] { progress = 1; },
                                    "progress line on stderr (default: when it is a terminal)");
  auto* off = sub->add_flag_callback("--no-progress", [&progress] { progress = 0; },
                                     "no progress line");
  on->excludes(off);
}

// A flag's check: one of `choices` (cli/values.h, which resource files take too).
template <size_t N>
CLI::IsMember Choices(const std::array<std::string_view, N>& choices) {
  return CLI::IsMember(std::vector<std::string>(choices.begin(), choices.end()));
}

// --transport and the DPDK port flags, as every command that talks to peers takes them.
void AddTransportFlags(CLI::App* sub, std::string& transport, blkmirror::cli::DpdkArgs& dpdk) {
  sub->add_option("--transport", transport,
                  "auto (rdma, else dpdk where --dpdk-port is given, else tcp), tcp, rdma or dpdk")
      ->check(Choices(blkmirror::cli::kTransportChoices));
  sub->add_option("--dpdk-port", dpdk.port,
                  "DPDK port: memif:SOCKET[,role=server|client], af_packet:IFACE, af_xdp:IFACE, "
                  "pci:ADDRESS or a DPDK vdev");
  sub->add_option("--dpdk-ip", dpdk.ip,
                  "this node's IPv4 address on the DPDK port (default: the interface's)");
  sub->add_option("--dpdk-mtu", dpdk.mtu, "IP MTU on the DPDK port (default: the port's)")
      ->check(CLI::Range(576u, 9000u));
  sub->add_option("--test-packet-faults", dpdk.test_faults, "TEST ONLY: DPDK packet faults")
      ->group("");
}

// --tls and the certificates, as every command that talks to peers over TCP takes them.
void AddTlsFlags(CLI::App* sub, blkmirror::cli::TlsArgs& tls) {
  sub->add_flag("--tls", tls.enabled,
                "TLS 1.3 on TCP: certificates (--cert, --cert-key, --ca) or a pre-shared key from "
                "--key-file; both sides must say it");
  sub->add_option("--cert", tls.cert, "--tls: this node's certificate chain (PEM)");
  sub->add_option("--cert-key", tls.cert_key, "--tls: the private key of --cert (PEM)");
  sub->add_option("--ca", tls.ca, "--tls: the CA that the peer's certificate must be signed by");
  sub->add_flag("--no-ktls", tls.no_ktls, "TEST ONLY: never hand TLS records to the kernel")
      ->group("");
}

// --resource and --node, on every command that a resource file can configure.
void AddResourceFlags(CLI::App* sub, blkmirror::cli::ResourceArgs& r) {
  sub->add_option("--resource", r.name,
                  "take what the flags leave unset from the resource file CONFIG_DIR/NAME.toml");
  sub->add_option("--node", r.node,
                  "this node's table in the resource file (default: this host's name)");
}

// Whether `flag` was given to `sub` on the command line.
blkmirror::cli::FlagGiven GivenIn(CLI::App* sub) {
  return [sub](std::string_view flag) { return sub->get_option(std::string(flag))->count() > 0; };
}

// Flags a command needs, from the command line or its resource: false (after saying which is
// missing) when one has no value.
bool Need(std::string_view command, std::initializer_list<std::pair<std::string_view, bool>> flags) {
  for (const auto& [flag, has] : flags) {
    if (!has) {
      blkmirror::cli::PrintErrorLine(command, fmt::format("{} is required (or --resource NAME, whose file "
                                          "gives it)", flag));
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace blkmirror::cli;
  CLI::App app{"blkmirror: mirror a volume to replicas, block by block, CRC32C-checked"};
  app.require_subcommand(1);
  app.set_version_flag("--version", blkmirror::VersionText(), "print the version and exit");
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->check(Choices(kLogLevelChoices));
  std::string log_format = "text";
  app.add_option("--log-format", log_format,
                 "text (default) or json: one object per line (time, level, msg, command, "
                 "resource, peer)")
      ->check(CLI::IsMember({"text", "json"}));
  std::string config_dir(kDefaultConfigDir);
  app.add_option("--config-dir", config_dir,
                 "where the resource files (NAME.toml) are (default /etc/blkmirror)");

  ServeArgs serve;
  auto* s = app.add_subcommand("serve", "receive blocks from primaries into a target");
  s->add_option("--listen", serve.listen, "HOST:PORT to accept primaries on");
  s->add_option("--target", serve.target, "regular file or block device to write");
  ResourceArgs serve_res;
  AddResourceFlags(s, serve_res);
  AddTransportFlags(s, serve.transport, serve.dpdk);
  AddTlsFlags(s, serve.tls);
  s->add_flag("--once", serve.once, "exit after the first write session ends");
  s->add_option("--max-block-size", serve.max_block_size, "largest block accepted (default 4M)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  s->add_option("--pool-size", serve.pool_size, "receive buffer memory (default 256M)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  s->add_option("--key-file", serve.key_file, "authenticate primaries with this key (keygen)");
  s->add_flag("--insecure", serve.insecure,
              "allow serving a non-loopback address without --key-file");
  s->add_option("--meta-dir", serve.meta_dir,
                "where the replica keeps its identity (default: beside the target)");
  s->add_option("--handshake-timeout", serve.handshake_timeout,
                "close a connection that has not completed its handshake this long after "
                "connecting (default 30s)");
  s->add_option("--max-peer-timeout", serve.max_peer_timeout,
                "the longest a primary may stay silent, whatever --peer-timeout it asks for "
                "(default 60s)");
  s->add_option("--max-connections", serve.max_connections,
                "connections open at once; more are refused (default 256)")
      ->check(CLI::Range(1u, 65536u));
  s->add_option("--metrics", serve.metrics,
                 "serve Prometheus metrics on HOST:PORT (GET /metrics; port 0 picks one)");
  s->add_option("--test-fault", serve.test_fault, "TEST ONLY: inject faults")->group("");
  s->add_option("--test-disk-fault", serve.test_disk_fault, "TEST ONLY: disk faults")->group("");

  PushArgs push;
  auto* p = app.add_subcommand("push", "mirror a source to one or more replicas");
  p->add_option("--source", push.source, "regular file or block device to read");
  p->add_option("--peer", push.peers, "replica HOST:PORT (repeat for fan-out)");
  ResourceArgs push_res;
  AddResourceFlags(p, push_res);
  p->add_option("--ack", push.ack, "sent, received or durable (default)")
      ->check(Choices(blkmirror::cli::kAckChoices));
  p->add_option("--block-size", push.block_size, "block size (default 1M)");
  p->add_option("--window", push.window, "blocks in flight per peer (default 32)");
  AddTransportFlags(p, push.transport, push.dpdk);
  AddTlsFlags(p, push.tls);
  p->add_flag("--json", push.json, "print one JSON object on stdout");
  AddProgressFlags(p, push.progress);
  p->add_option("--meta-dir", push.meta_dir,
                "metadata (dirty bitmaps) directory (default: <source>.blkmirror)");
  p->add_flag("--full", push.full, "send every block, whatever the bitmaps say");
  p->add_flag("--resume", push.resume, "send only the blocks a replica may miss (the default)");
  p->add_flag("--checksum-skip", push.checksum_skip,
              "compare per-block CRCs with each replica first; send only what differs");
  p->add_option("--checksum-block-size", push.checksum_block_size,
                "--checksum-skip compares and sends in pieces this small (default 4K; at most "
                "--block-size, which it divides)");
  p->add_option("--quorum", push.quorum, "replicas a write needs (default: all)");
  p->add_option("--peer-timeout", push.peer_timeout,
                "a replica silent this long is lost (default 6s)");
  p->add_option("--ack-timeout", push.ack_timeout,
                "a replica that acknowledges none of its outstanding writes this long is lost "
                "(default: --peer-timeout)");
  p->add_option("--key-file", push.key_file, "authenticate to the replicas with this key");
  p->add_option("--bind", push.bind, "local address to connect from");
  p->add_option("--compress", push.compress,
                "lz4, zstd, zstd:LEVEL or none (default): compress each block to the replicas, "
                "kept where it saves an eighth");
  p->add_option("--compress-mode", push.compress_mode,
                "auto (default: compress only while that is measured to be faster) or always");
  p->add_option("--test-fault", push.test_fault, "TEST ONLY: inject faults")->group("");
  p->add_option("--test-source-fault", push.test_source_fault, "TEST ONLY: source faults")
      ->group("");
  p->add_option("--test-hold-at", push.test_hold_at, "TEST ONLY: hold after BYTES until SIGUSR1")
      ->group("");
  p->add_flag("--tcp-zerocopy", push.tcp_zerocopy, "send with SENDMSG_ZC (experimental)")
      ->group("");

  VerifyArgs verify;
  auto* v = app.add_subcommand("verify", "compare a source with a replica by per-block CRC32C");
  v->add_option("--source", verify.source, "regular file or block device");
  v->add_option("--peer", verify.peer, "replica HOST:PORT");
  ResourceArgs verify_res;
  AddResourceFlags(v, verify_res);
  v->add_option("--block-size", verify.block_size, "block size (default 1M)");
  AddTransportFlags(v, verify.transport, verify.dpdk);
  AddTlsFlags(v, verify.tls);
  v->add_flag("--json", verify.json, "print one JSON object on stdout");
  AddProgressFlags(v, verify.progress);
  v->add_option("--key-file", verify.key_file, "authenticate to the replica with this key");
  v->add_flag("--repair", verify.repair, "resend the blocks that differ");
  v->add_option("--meta-dir", verify.meta_dir, "metadata directory (for --repair)");
  v->add_option("--bind", verify.bind, "local address to connect from");

  StatusArgs status;
  auto* st = app.add_subcommand(
      "status", "the running daemon's resources (NAME: one), or what the files say: a push's "
                "metadata (--source), a volume (--volume), a disk's role (--disk)");
  auto* st_name = st->add_option("NAME", status.name,
                                 "a resource of the running daemon (default: every one)");
  st->add_flag("--watch", status.watch, "ask the daemon again every second until interrupted");
  st->add_option("--admin-socket", status.admin_socket,
                 "the daemon's admin socket (default: daemon.toml's, else "
                 "/run/blkmirror/admin.sock)");
  auto* st_source = st->add_option("--source", status.source, "the source pushed from");
  auto* st_volume =
      st->add_option("--volume", status.volume, "a running volume daemon, by its name");
  auto* st_disk = st->add_option("--disk", status.disk,
                                 "a disk's role and data generations (a volume's node)");
  st_source->excludes(st_volume);
  for (auto* o : {st_source, st_volume, st_disk}) st_name->excludes(o);
  st_disk->excludes(st_source);
  st_disk->excludes(st_volume);
  st->add_option("--meta-dir", status.meta_dir, "metadata directory (default: beside the source)");
  st->add_option("--run-dir", status.run_dir,
                 "where volume daemons keep their status (default /run/blkmirror)");
  st->add_flag("--json", status.json, "print one JSON object on stdout");
  ResourceArgs status_res;
  AddResourceFlags(st, status_res);

  VolumeArgs volume;
  auto* vol = app.add_subcommand("volume", "a replicated volume that clients write through NBD");
  vol->add_option("--disk", volume.disk, "the local copy: a regular file or block device");
  vol->add_option("--peer", volume.peers, "replica HOST:PORT (`blkmirror serve`; repeat)");
  vol->add_option("--export", volume.exports,
                  "where NBD clients connect: unix:PATH or HOST:PORT (repeat)");
  ResourceArgs volume_res;
  AddResourceFlags(vol, volume_res);
  vol->add_option("--name", volume.name, "the export's name (default: the disk's file name)");
  vol->add_option("--ack", volume.ack, "sent, received or durable (default)")
      ->check(Choices(blkmirror::cli::kAckChoices));
  vol->add_option("--block-size", volume.block_size,
                  "replication block: bitmap and ordering granularity, largest frame (default "
                  "128K)");
  vol->add_option("--window", volume.window, "writes in flight per peer (default 32)");
  AddTransportFlags(vol, volume.transport, volume.dpdk);
  AddTlsFlags(vol, volume.tls);
  vol->add_option("--quorum", volume.quorum,
                  "replicas a write needs (default: all; 0: none, writes go on with no replica)");
  vol->add_option("--peer-timeout", volume.peer_timeout,
                  "a replica silent this long is lost (default 6s)");
  vol->add_option("--ack-timeout", volume.ack_timeout,
                  "a replica that acknowledges none of its outstanding writes this long is lost "
                  "(default: --peer-timeout)");
  vol->add_option("--key-file", volume.key_file, "authenticate to the replicas with this key");
  vol->add_option("--resync-rate", volume.resync_rate,
                  "bytes per second of background resync (default: no limit)");
  vol->add_option("--pool-size", volume.pool_size, "buffer memory (default 64M)");
  vol->add_option("--max-clients", volume.max_clients, "NBD clients at once (default 16)")
      ->check(CLI::Range(1u, 1024u));
  vol->add_option("--meta-dir", volume.meta_dir,
                  "metadata (bitmaps) directory (default: <disk>.blkmirror)");
  vol->add_option("--run-dir", volume.run_dir,
                  "where the status file goes (default /run/blkmirror)");
  vol->add_option("--bind", volume.bind, "local address to connect from");
  vol->add_option("--compress", volume.compress,
                  "lz4, zstd, zstd:LEVEL or none (default): compress each block to the replicas, "
                  "kept where it saves an eighth");
  vol->add_option("--compress-mode", volume.compress_mode,
                  "auto (default: compress only while that is measured to be faster) or always");
  vol->add_option("--metrics", volume.metrics,
                  "serve Prometheus metrics on HOST:PORT (GET /metrics; port 0 picks one)");

  std::string key_path;
  auto* k = app.add_subcommand("keygen", "write a new random key for --key-file (mode 0600)");
  k->add_option("PATH", key_path, "the key file to create")->required();

  RoleArgs promote;
  auto* pr = app.add_subcommand("promote", "make this node's disk the volume's primary");
  pr->add_option("--disk", promote.disk, "the replica's disk (serve's --target)");
  ResourceArgs promote_res;
  AddResourceFlags(pr, promote_res);
  pr->add_option("--meta-dir", promote.meta_dir, "metadata directory (default: beside the disk)");
  pr->add_flag("--force", promote.force,
               "even while a primary is connected, or the data is inconsistent");
  RoleArgs demote;
  auto* de = app.add_subcommand("demote", "make this node's disk a replica of the volume");
  de->add_option("--disk", demote.disk, "the primary's disk (volume's --disk)");
  ResourceArgs demote_res;
  AddResourceFlags(de, demote_res);
  de->add_option("--meta-dir", demote.meta_dir, "metadata directory (default: beside the disk)");
  de->add_flag("--discard-my-data", demote.discard,
               "give up this node's changes: the primary copies the disk in full");

  DaemonArgs daemon;
  auto* dm = app.add_subcommand("daemon",
                                "run every resource in --config-dir that gives this node a role "
                                "(SIGHUP: reload the files; status: `blkmirror status`)");
  auto* dm_log_level = app.get_option("--log-level");
  dm->add_option("--node", daemon.node,
                 "this node's table in the resource files (default: daemon.toml's, else this "
                 "host's name)");
  dm->add_option("--admin-socket", daemon.admin_socket,
                 "where `blkmirror status` asks (default: daemon.toml's, else "
                 "/run/blkmirror/admin.sock)");

  std::string check_name;
  auto* cc = app.add_subcommand("check-config",
                                "check the resource files (every one, or NAME's): each mistake "
                                "with its file, line and key; exit 2 when there is one");
  cc->add_option("NAME", check_name, "one resource (default: every file in --config-dir)");

  // --log-level, --log-format and --config-dir may come before or after the command.
  for (auto* sub : {s, p, v, st, k, vol, pr, de, cc, dm}) sub->fallthrough();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  // The command that runs, and the resource it was given, for the JSON log's fields.
  std::string command, resource;
  for (auto* sub : app.get_subcommands()) command = sub->get_name();
  for (const ResourceArgs* r :
       {&serve_res, &push_res, &verify_res, &status_res, &volume_res, &promote_res, &demote_res}) {
    if (!r->name.empty()) resource = r->name;
  }
  SetupLogging(log_level, log_format == "json" ? LogFormat::kJson : LogFormat::kText, command,
               resource);
  // A resource fills what the flags leave unset.
  auto apply = [&](CLI::App* sub, ResourceArgs& res, auto& args) {
    if (res.name.empty()) return true;
    res.config_dir = config_dir;
    return ApplyResource(res, GivenIn(sub), args);
  };
  if (*cc) return RunCheckConfig(config_dir, check_name);
  if (*dm) {
    daemon.config_dir = config_dir;
    daemon.log_level_given = dm_log_level->count() > 0;
    return RunDaemon(daemon);
  }
  if (*s) {
    if (!apply(s, serve_res, serve) ||
        !Need("serve", {{"--listen", !serve.listen.empty()}, {"--target", !serve.target.empty()}})) {
      return kExitUsage;
    }
    CommandRunner runner;
    return RunServe(serve, runner);
  }
  if (*p) {
    if (!apply(p, push_res, push) ||
        !Need("push", {{"--source", !push.source.empty()}, {"--peer", !push.peers.empty()}})) {
      return kExitUsage;
    }
    return RunPush(push);
  }
  if (*v) {
    if (!apply(v, verify_res, verify) ||
        !Need("verify", {{"--source", !verify.source.empty()}, {"--peer", !verify.peer.empty()}})) {
      return kExitUsage;
    }
    return RunVerify(verify);
  }
  if (*k) return RunKeygen(key_path);
  if (*st) {
    status.config_dir = config_dir;
    status.daemon = status_res.name.empty() && status.source.empty() && status.volume.empty() &&
                    status.disk.empty();
    if (status.daemon) return RunDaemonStatus(status);
    if (status.watch) {
      PrintErrorLine("status", "--watch asks the running daemon: give no --source, --volume, "
                               "--disk or --resource");
      return kExitUsage;
    }
    if (!apply(st, status_res, status)) return kExitUsage;
    if (!status.disk.empty()) return RunDiskStatus(status);
    return status.volume.empty() ? RunStatus(status) : RunVolumeStatus(status);
  }
  if (*pr) {
    if (!apply(pr, promote_res, promote) || !Need("promote", {{"--disk", !promote.disk.empty()}})) {
      return kExitUsage;
    }
    return RunPromote(promote);
  }
  if (*de) {
    if (!apply(de, demote_res, demote) || !Need("demote", {{"--disk", !demote.disk.empty()}})) {
      return kExitUsage;
    }
    return RunDemote(demote);
  }
  if (*vol) {
    if (!apply(vol, volume_res, volume) ||
        !Need("volume", {{"--disk", !volume.disk.empty()}, {"--peer", !volume.peers.empty()},
                         {"--export", !volume.exports.empty()}})) {
      return kExitUsage;
    }
    CommandRunner runner;
    return RunVolume(volume, runner);
  }
  return kExitUsage;
}
