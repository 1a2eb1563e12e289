#include "cli/daemon.h"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/admin.h"
#include "cli/commands.h"
#include "cli/config.h"
#include "cli/logging.h"
#include "cli/resource.h"
#include "cli/run.h"
#include "cli/service.h"
#include "common/clock.h"
#include "common/units.h"

namespace blkmirror::cli {
namespace {

constexpr uint64_t kRetryMinNs = 1'000'000'000;
constexpr uint64_t kRetryMaxNs = 60'000'000'000;
// A running resource whose loop has not turned for this long holds back the watchdog's ping.
constexpr uint64_t kStuckNs = 10'000'000'000;

// What this node runs for one resource, as the command's arguments.
struct Plan {
  std::string name;
  bool volume = false;  // else a replica target (serve)
  ServeArgs serve;
  VolumeArgs vol;

  // Every setting the resource file can make, as the arguments end with it, and the role: what
  // a reload compares (ApplyResource records them, so a new setting needs no list here).
  ResourceSettings settings;
};

// Reads the plans of every resource that gives `node` a role (volumes write their status files
// in `run_dir`); false after logging the files' mistakes (nothing is run from a broken
// configuration).
bool ReadPlans(const std::string& dir, const std::string& node, const std::string& run_dir,
               std::vector<Plan>& plans) {
  std::vector<ConfigProblem> problems;
  const std::vector<std::string> names = ResourceNames(dir, problems);
  if (!names.empty()) {
    std::vector<ConfigProblem> more = CheckConfigDir(dir, "");
    problems.insert(problems.end(), more.begin(), more.end());
  }
  for (const ConfigProblem& p : problems) spdlog::error("{}", p.ToString());
  if (!problems.empty()) return false;
  const FlagGiven none = [](std::string_view) { return false; };
  for (const std::string& name : names) {
    ParsedResource r = LoadResource(dir, name, CheckFiles::kNo);
    auto self = ThisNode(r.config, node);
    if (!self.ok()) {
      spdlog::info("resource {}: not run on this node ({})", name, self.status().message());
      continue;
    }
    Plan plan;
    plan.name = name;
    const ResourceArgs where{name, node, dir};
    if ((*self)->role == "primary") {
      plan.volume = true;
      plan.vol.run_dir = run_dir;
      if (!ApplyResource(where, none, plan.vol, &plan.settings)) return false;
    } else if ((*self)->role == "replica") {
      if (!ApplyResource(where, none, plan.serve, &plan.settings)) return false;
    } else {
      spdlog::info("resource {}: node {} has no role: not run here", name, (*self)->name);
      continue;
    }
    plan.settings["role"] = (*self)->role;
    plans.push_back(std::move(plan));
  }
  return true;
}

// One resource's thread, and the Runner its loop reports to.
class Resource final : public Runner {
 public:
  enum class State { kStarting, kRunning, kFailed, kStopped };

  // `starts`: how often it was started before (a resource restarted in the daemon keeps its
  // count).
  explicit Resource(Plan plan, uint64_t starts = 0) : plan_(std::move(plan)), starts_(starts) {}
  ~Resource() override { Stop("the daemon stops"); }

  const Plan& plan() const { return plan_; }
  const std::string& name() const { return plan_.name; }

  void Start() {
    Join();
    stop_.store(false);
    {
      std::lock_guard lock(mu_);
      state_ = State::kStarting;
      ++starts_;
    }
    last_tick_ns_.store(NowNs());
    thread_ = std::thread([this] { Main(); });
  }
  void Stop(std::string reason) {
    {
      std::lock_guard lock(mu_);
      if (stop_reason_.empty() || !stop_.load()) stop_reason_ = std::move(reason);
    }
    stop_.store(true);
    Join();
  }
  // Applies `plan`'s resync rate live (a volume; the rest of it is not taken).
  void SetResyncRate(const std::string& text, uint64_t rate) {
    std::lock_guard lock(mu_);
    plan_.vol.resync_rate = text;
    plan_.settings["resync-rate"] = text;
    pending_rate_ = rate;
  }
  void SetRestartNeeded(std::vector<std::string> keys) {
    std::lock_guard lock(mu_);
    restart_needed_ = std::move(keys);
  }

  State state() const {
    std::lock_guard lock(mu_);
    return state_;
  }
  uint64_t starts() const {
    std::lock_guard lock(mu_);
    return starts_;
  }
  // Failed and due for another start.
  bool RetryDue(uint64_t now) const {
    std::lock_guard lock(mu_);
    return state_ == State::kFailed && now >= retry_at_ns_;
  }
  // Running but its loop has not turned lately.
  bool Stuck(uint64_t now) const {
    return state() == State::kRunning && now - last_tick_ns_.load() > kStuckNs;
  }

  nlohmann::json Describe() const {
    std::lock_guard lock(mu_);
    static constexpr const char* kStates[] = {"starting", "running", "failed", "stopped"};
    nlohmann::json j = {{"name", plan_.name},
                        {"role", plan_.volume ? "primary" : "replica"},
                        {"state", kStates[static_cast<int>(state_)]},
                        {"starts", starts_}};
    if (!error_.empty()) j["error"] = error_;
    if (!restart_needed_.empty()) j["restart_needed"] = restart_needed_;
    if (!status_.is_null()) j["status"] = status_;
    return j;
  }

  // Runner:
  bool stop_requested() const override { return stop_.load(); }
  std::string stop_reason() const override {
    std::lock_guard lock(mu_);
    return stop_reason_;
  }
  void Ready(std::string_view status) override {
    std::lock_guard lock(mu_);
    state_ = State::kRunning;
    line_ = status;
    error_.clear();
    retry_ns_ = 0;
  }
  void Status(std::string_view status) override {
    std::lock_guard lock(mu_);
    line_ = status;
  }
  void Tick() override { last_tick_ns_.store(NowNs()); }
  void Stopping(std::string_view) override {}
  void Announce(std::string_view line) override {
    std::printf("%s %.*s\n", plan_.name.c_str(), static_cast<int>(line.size()), line.data());
    std::fflush(stdout);
  }
  void Publish(nlohmann::json status) override {
    std::lock_guard lock(mu_);
    status_ = std::move(status);
  }
  std::optional<uint64_t> TakeResyncRate() override {
    std::lock_guard lock(mu_);
    return std::exchange(pending_rate_, std::nullopt);
  }

 private:
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  void Main() {
    // The loop reads its own copy: a reload may change plan_ (SetResyncRate) meanwhile.
    Plan plan;
    {
      std::lock_guard lock(mu_);
      plan = plan_;
    }
    SetThreadResource(plan.name);
    const int rc = plan.volume ? RunVolume(plan.vol, *this) : RunServe(plan.serve, *this);
    std::lock_guard lock(mu_);
    status_ = nullptr;
    if (stop_.load() && rc == kExitOk) {
      state_ = State::kStopped;
      return;
    }
    state_ = State::kFailed;
    error_ = rc == kExitOk ? "ended" : LastErrorLine();
    retry_ns_ = std::clamp(retry_ns_ * 2, kRetryMinNs, kRetryMaxNs);
    retry_at_ns_ = NowNs() + retry_ns_;
    spdlog::warn("resource {} failed ({}); starting it again in {} s", plan_.name, error_,
                 retry_ns_ / 1'000'000'000);
  }

  Plan plan_;  // written by the daemon's thread only (under mu_); the loop runs a copy
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> last_tick_ns_{0};
  mutable std::mutex mu_;
  State state_ = State::kStarting;
  std::string stop_reason_;
  std::string line_;
  std::string error_;
  std::vector<std::string> restart_needed_;
  nlohmann::json status_;
  std::optional<uint64_t> pending_rate_;
  uint64_t starts_ = 0;
  uint64_t retry_ns_ = 0;
  uint64_t retry_at_ns_ = 0;
};

class Daemon {
 public:
  explicit Daemon(const DaemonArgs& args) : args_(args) {}

  int Run() {
    sigset_t signals;
    sigemptyset(&signals);
    for (int s : {SIGHUP, SIGTERM, SIGINT}) sigaddset(&signals, s);
    // Blocked before any thread starts, so every thread inherits the mask and only the
    // signalfd sees them.
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    signal(SIGPIPE, SIG_IGN);
    const int sfd = signalfd(-1, &signals, SFD_CLOEXEC);
    if (sfd < 0) return Fail(Status::Errno(errno, "signalfd"), kExitFailed);

    ParsedDaemonConfig settings = LoadDaemonConfig(args_.config_dir);
    for (const ConfigProblem& p : settings.problems) PrintErrorLine("daemon", p.ToString());
    if (!settings.problems.empty()) return kExitUsage;
    node_ = !args_.node.empty() ? args_.node : settings.config.node;
    admin_path_ = !args_.admin_socket.empty()            ? args_.admin_socket
                  : !settings.config.admin_socket.empty() ? settings.config.admin_socket
                                                          : std::string(kDefaultAdminSocket);
    ApplyLogLevel(settings.config.log_level);
    std::vector<Plan> plans;
    if (!ReadPlans(args_.config_dir, node_, RunDir(), plans)) {
      PrintErrorLine("daemon", fmt::format("the configuration in {} has mistakes (above); "
                                           "`blkmirror check-config` lists them",
                                           args_.config_dir));
      return kExitUsage;
    }
    auto admin = AdminServer::Start(admin_path_, [this](std::string_view r) { return Answer(r); });
    if (!admin.ok()) return Fail(admin.status(), kExitFailed);
    spdlog::info("daemon: {} resource(s) for node {} from {}; admin socket {}", plans.size(),
                 node_.empty() ? "(this host)" : node_, args_.config_dir, admin_path_);
    if (plans.empty()) spdlog::warn("daemon: nothing to run yet: add a resource file and reload");
    for (Plan& p : plans) Add(std::move(p));

    ServiceNotifier service;
    bool ready = false;
    uint64_t last_status = 0;
    for (;;) {
      pollfd p{sfd, POLLIN, 0};
      if (poll(&p, 1, 200) > 0) {
        signalfd_siginfo info{};
        if (read(sfd, &info, sizeof info) == sizeof info) {
          if (info.ssi_signo == SIGHUP) {
            Reload();
          } else {
            break;
          }
        }
      }
      const uint64_t now = NowNs();
      bool settled = true, stuck = false;
      {
        std::lock_guard lock(mu_);
        for (auto& r : resources_) {
          if (r->RetryDue(now)) {
            spdlog::info("resource {}: starting it again", r->name());
            r->Start();
          }
          settled = settled && r->state() != Resource::State::kStarting;
          stuck = stuck || r->Stuck(now);
        }
      }
      if (!ready && settled) {
        ready = true;
        service.Ready(Summary());
        spdlog::info("daemon: ready: {}", Summary());
      }
      if (!stuck) service.Tick();
      if (ready && now - last_status >= kStatusIntervalNs) {
        last_status = now;
        service.Status(Summary());
      }
    }
    service.Stopping("signal received; stopping every resource");
    spdlog::info("daemon: signal received; stopping every resource");
    std::vector<std::unique_ptr<Resource>> resources;
    {
      std::lock_guard lock(mu_);
      resources.swap(resources_);
    }
    // Every resource is told at once, then each is waited for.
    for (auto& r : resources) r->Stop("signal received");
    resources.clear();
    close(sfd);
    return kExitOk;
  }

 private:
  // Where the volumes write their status files: beside the admin socket.
  std::string RunDir() const {
    const size_t slash = admin_path_.rfind('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : admin_path_.substr(0, slash);
  }

  int Fail(const Status& s, int code) {
    PrintErrorLine("daemon", s.message());
    return code;
  }

  void ApplyLogLevel(const std::string& level) {
    if (level.empty() || args_.log_level_given) return;
    if (spdlog::get_level() == spdlog::level::from_str(level)) return;
    spdlog::set_level(spdlog::level::from_str(level));
    spdlog::info("daemon: log level {}", level);
  }

  void Add(Plan plan) {
    auto r = std::make_unique<Resource>(std::move(plan));
    spdlog::info("resource {}: starting ({})", r->name(), r->plan().volume ? "volume" : "replica");
    r->Start();
    std::lock_guard lock(mu_);
    resources_.push_back(std::move(r));
  }

  // "3 resource(s): 2 running, 1 failed (vol2)".
  std::string Summary() {
    std::lock_guard lock(mu_);
    size_t running = 0;
    std::vector<std::string> failed;
    for (const auto& r : resources_) {
      if (r->state() == Resource::State::kRunning) ++running;
      if (r->state() == Resource::State::kFailed) failed.push_back(r->name());
    }
    std::string line = fmt::format("{} resource(s): {} running", resources_.size(), running);
    if (!failed.empty()) line += fmt::format(", {} failed ({})", failed.size(), fmt::join(failed, ", "));
    return line;
  }

  void Reload() {
    spdlog::info("daemon: SIGHUP: reading {} again", args_.config_dir);
    ParsedDaemonConfig settings = LoadDaemonConfig(args_.config_dir);
    std::vector<Plan> plans;
    if (!settings.problems.empty() || !ReadPlans(args_.config_dir, node_, RunDir(), plans)) {
      for (const ConfigProblem& p : settings.problems) spdlog::error("{}", p.ToString());
      spdlog::error("daemon: reload refused: the files have mistakes (above); every resource "
                    "runs on as it was");
      return;
    }
    ApplyLogLevel(settings.config.log_level);
    if (!args_.node.empty() || settings.config.node == node_) {
      // The node is fixed for the daemon's life.
    } else {
      spdlog::warn("daemon: daemon.toml's node changed to '{}': needs a restart (still node '{}')",
                   settings.config.node, node_);
    }
    std::map<std::string, Plan*> wanted;
    for (Plan& p : plans) wanted[p.name] = &p;
    std::vector<std::unique_ptr<Resource>> removed;
    std::vector<std::pair<Resource*, const Plan*>> restarts;
    {
      std::lock_guard lock(mu_);
      for (auto it = resources_.begin(); it != resources_.end();) {
        auto w = wanted.find((*it)->name());
        if (w == wanted.end()) {
          removed.push_back(std::move(*it));
          it = resources_.erase(it);
          continue;
        }
        if (NeedsRestartHere(**it, *w->second)) restarts.emplace_back(it->get(), w->second);
        wanted.erase(w);
        ++it;
      }
    }
    // Stopping takes a while (a volume finishes its writes): the lock is not held meanwhile.
    for (auto& r : removed) {
      spdlog::info("resource {}: no longer in the configuration for this node: stopping it",
                   r->name());
      r->Stop("removed from the configuration");
    }
    for (auto [r, next] : restarts) {
      r->Stop("restarted with new settings");
      auto fresh = std::make_unique<Resource>(*next, r->starts());
      fresh->Start();
      std::lock_guard lock(mu_);
      for (auto& slot : resources_) {
        if (slot.get() == r) slot = std::move(fresh);
      }
    }
    for (auto& [name, plan] : wanted) Add(std::move(*plan));
    spdlog::info("daemon: reload done: {}", Summary());
  }

  // Applies what can change live in a running resource's plan and logs what needs a restart of
  // the daemon; true when the resource is to be started again in the daemon with `next` (a failed
  // one with new settings, or a volume whose peers changed).
  bool NeedsRestartHere(Resource& r, const Plan& next) {
    const ResourceSettings& before = r.plan().settings;
    const ResourceSettings& after = next.settings;
    std::vector<std::string> changed;
    for (const auto& [key, value] : after) {
      auto it = before.find(key);
      if (it == before.end() || it->second != value) changed.push_back(key);
    }
    if (changed.empty()) return false;
    if (r.state() == Resource::State::kFailed) {
      spdlog::info("resource {}: {} changed; starting it with them", r.name(),
                   fmt::join(changed, ", "));
      return true;
    }
    const bool volume = next.volume && r.plan().volume;
    if (volume && std::find(changed.begin(), changed.end(), "peer") != changed.end()) {
      spdlog::info("resource {}: peers '{}' → '{}': restarting the volume in the daemon (writes "
                   "in flight finish first; its NBD clients reconnect)",
                   r.name(), before.at("peer"), after.at("peer"));
      return true;
    }
    std::vector<std::string> restart;
    for (const std::string& key : changed) {
      const std::string was = before.count(key) ? before.at(key) : "";
      const std::string now = after.at(key);
      if (volume && key == "resync-rate") {
        auto rate = now.empty() ? Result<uint64_t>(0) : ParseSize(now);
        if (rate.ok()) {
          r.SetResyncRate(now, *rate);
          spdlog::info("resource {}: resync-rate '{}' → '{}' (live)", r.name(), was, now);
          continue;
        }
      }
      spdlog::warn("resource {}: {} changed ('{}' → '{}'): needs a restart of the daemon; it "
                   "runs on with '{}'",
                   r.name(), key, was, now, was);
      restart.push_back(key);
    }
    r.SetRestartNeeded(std::move(restart));
    return false;
  }

  // The admin socket's answer: "status" (every resource) or "status NAME"; "ping".
  std::string Answer(std::string_view request) {
    if (request == "ping") return R"({"pong":true})";
    std::string name;
    if (request.rfind("status", 0) != 0 || (request.size() > 6 && request[6] != ' ')) {
      return nlohmann::json{{"error", "unknown request (known: status [NAME], ping)"}}.dump();
    }
    if (request.size() > 7) name = std::string(request.substr(7));
    nlohmann::json resources = nlohmann::json::array();
    std::vector<std::string> names;
    {
      std::lock_guard lock(mu_);
      for (const auto& r : resources_) {
        names.push_back(r->name());
        if (name.empty() || r->name() == name) resources.push_back(r->Describe());
      }
    }
    if (!name.empty() && resources.empty()) {
      return nlohmann::json{{"error", fmt::format("no resource '{}' in the daemon (it runs: {})",
                                                  name, names.empty() ? "none"
                                                                      : fmt::format("{}", fmt::join(names, ", ")))}}
          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    return nlohmann::json{{"daemon",
                           {{"pid", getpid()},
                            {"node", node_},
                            {"config_dir", args_.config_dir},
                            {"uptime_seconds", (NowNs() - started_ns_) / 1'000'000'000}}},
                          {"resources", resources}}
        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }

  DaemonArgs args_;
  std::string node_;
  std::string admin_path_;
  const uint64_t started_ns_ = NowNs();
  std::mutex mu_;  // resources_: the admin thread reads it
  std::vector<std::unique_ptr<Resource>> resources_;
};

}  // namespace

int RunDaemon(const DaemonArgs& args) {
  Daemon daemon(args);
  return daemon.Run();
}

}  // namespace blkmirror::cli
