#include "cli/logging.h"

#include <time.h>

#include <cctype>
#include <chrono>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace blkmirror::cli {
namespace {

LogFormat g_format = LogFormat::kText;
std::string g_command;
std::string g_resource;
thread_local std::string t_resource;
thread_local std::string t_last_error;

const std::string& Resource() { return t_resource.empty() ? g_resource : t_resource; }

// "%*" in the text pattern: "[NAME] " on a daemon resource's thread.
class ResourceFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&, spdlog::memory_buf_t& dest) override {
    if (t_resource.empty()) return;
    dest.push_back('[');
    dest.append(t_resource.data(), t_resource.data() + t_resource.size());
    dest.append(std::string_view("] "));
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<ResourceFlag>();
  }
};

std::string Rfc3339(std::chrono::system_clock::time_point t) {
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  const time_t secs = static_cast<time_t>(ms / 1000);
  tm utc{};
  gmtime_r(&secs, &utc);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", utc.tm_year + 1900,
                     utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, ms % 1000);
}

std::string Line(std::chrono::system_clock::time_point t, std::string_view level,
                 std::string_view message) {
  nlohmann::ordered_json j = {{"time", Rfc3339(t)},
                      {"level", std::string(level)},
                      {"msg", std::string(message)},
                      {"command", g_command}};
  if (!Resource().empty()) j["resource"] = Resource();
  if (std::string peer = PeerOfMessage(message); !peer.empty()) j["peer"] = peer;
  if (level == "warning" || level == "error" || level == "critical") {
    if (std::string reason = ReasonOfMessage(message); !reason.empty()) j["reason"] = reason;
  }
  // Invalid UTF-8 (a path's bytes) is replaced, not thrown on: a log line is never lost.
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const auto level = spdlog::level::to_string_view(msg.level);
    std::string line = Line(msg.time, std::string_view(level.data(), level.size()),
                            std::string_view(msg.payload.data(), msg.payload.size()));
    line += '\n';
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

// HOST:PORT at `text`'s start (a dotted name or address, or a bracketed IPv6 address), followed
// by ':' or ' ' or the end; its length, or 0.
size_t EndpointLength(std::string_view text) {
  size_t i = 0;
  if (!text.empty() && text[0] == '[') {
    i = text.find(']');
    if (i == std::string_view::npos) return 0;
    ++i;
  } else {
    while (i < text.size() &&
           (std::isalnum(static_cast<unsigned char>(text[i])) || text[i] == '.' || text[i] == '-')) {
      ++i;
    }
    if (i == 0) return 0;
  }
  if (i >= text.size() || text[i] != ':') return 0;
  size_t digits = i + 1;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  if (digits == i + 1 || digits - i - 1 > 5) return 0;
  if (digits < text.size() && text[digits] != ':' && text[digits] != ' ') return 0;
  return digits;
}

}  // namespace

std::string ReasonOfMessage(std::string_view message) {
  // The text after the last ": " outside parentheses: messages say what, then where, then why,
  // each cause after the one it explains ("cannot connect to H:P over tcp: connect: Connection
  // refused (is ... listening there?)").
  int depth = 0;
  size_t last = std::string_view::npos;
  for (size_t i = 0; i + 1 < message.size(); ++i) {
    if (message[i] == '(') ++depth;
    if (message[i] == ')' && depth > 0) --depth;
    if (depth == 0 && message[i] == ':' && message[i + 1] == ' ') last = i;
  }
  if (last == std::string_view::npos || last + 2 >= message.size()) return "";
  return std::string(message.substr(last + 2));
}

std::string PeerOfMessage(std::string_view message) {
  for (int skip = 0; skip < 2; ++skip) {
    if (size_t n = EndpointLength(message); n > 0) return std::string(message.substr(0, n));
    // A leading phrase, then the endpoint and ": " or " (" ("lost replica H:P: why").
    size_t words = 0;
    while (words < message.size() &&
           (std::islower(static_cast<unsigned char>(message[words])) || message[words] == ' ')) {
      ++words;
    }
    if (words > 0 && message[words - 1] == ' ') {
      const std::string_view rest = message.substr(words);
      if (size_t n = EndpointLength(rest);
          n > 0 && (rest.substr(n, 2) == ": " || rest.substr(n, 2) == " (")) {
        return std::string(rest.substr(0, n));
      }
    }
    // An optional leading "word: " (the subsystem: "volume: ", "dpdk: ").
    const size_t colon = message.find(": ");
    if (colon == std::string_view::npos || colon == 0) return "";
    for (size_t i = 0; i < colon; ++i) {
      if (!std::isalpha(static_cast<unsigned char>(message[i]))) return "";
    }
    message.remove_prefix(colon + 2);
  }
  return "";
}

void SetupLogging(const std::string& level, LogFormat format, std::string command,
                  std::string resource) {
  g_format = format;
  g_command = std::move(command);
  g_resource = std::move(resource);
  auto logger = spdlog::stderr_logger_mt("blkmirror");
  if (format == LogFormat::kJson) {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<ResourceFlag>('*').set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %*%v");
    logger->set_formatter(std::move(formatter));
  }
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
}

LogFormat CurrentLogFormat() { return g_format; }

void PrintErrorLine(std::string_view command, std::string_view message) {
  t_last_error = message;
  if (g_format == LogFormat::kJson) {
    fmt::print(stderr, "{}\n", JsonLogLine("error", message));
  } else if (!t_resource.empty()) {
    fmt::print(stderr, "blkmirror {}: [{}] error: {}\n", command, t_resource, message);
  } else {
    fmt::print(stderr, "blkmirror {}: error: {}\n", command, message);
  }
}

void SetThreadResource(std::string resource) { t_resource = std::move(resource); }

const std::string& LastErrorLine() { return t_last_error; }

std::string JsonLogLine(std::string_view level, std::string_view message) {
  return Line(std::chrono::system_clock::now(), level, message);
}

}  // namespace blkmirror::cli
