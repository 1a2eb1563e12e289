// The process's log: stderr, at --log-level, as text or as JSON lines (--log-format), so that
// journald and log shippers can filter by field. Errors a command ends with (PrintError) follow
// the same format.
#pragma once

#include <string>
#include <string_view>

namespace blkmirror::cli {

enum class LogFormat : bool { kText, kJson };

// JSON: one object per line, {"time" (UTC, RFC 3339, ms), "level", "msg", "command", and
// "resource" when one was given, "peer" when the message starts with a peer's HOST:PORT (as the
// engine's messages about one peer do, after an optional "word: " prefix), "reason" on warnings
// and errors: the innermost cause (ReasonOfMessage)}.
void SetupLogging(const std::string& level, LogFormat format, std::string command,
                  std::string resource);
LogFormat CurrentLogFormat();
// A JSON log line (without its newline) for a message at `level` now: what the JSON format
// writes, for lines that do not go through the logger.
std::string JsonLogLine(std::string_view level, std::string_view message);
// A command's final error, in the log's format: "blkmirror COMMAND: error: MESSAGE", or a JSON
// line at level error. Printed whatever --log-level says.
void PrintErrorLine(std::string_view command, std::string_view message);
// In `blkmirror daemon`, each resource's thread names its resource: the JSON field, and a
// "[NAME] " before the text of the lines it logs.
void SetThreadResource(std::string resource);
// The last line PrintErrorLine printed on this thread ("" if none): a resource's reason for
// ending, for the daemon's status.
const std::string& LastErrorLine();

// A warning's or error's innermost cause: the text after its last ": " outside parentheses ("" if
// none).
std::string ReasonOfMessage(std::string_view message);
// The peer a message is about ("" when it names none): its leading HOST:PORT, after an optional
// "subsystem: ", or the HOST:PORT after a leading phrase ("lost replica H:P: why", "lost
// replica H:P (why)").
std::string PeerOfMessage(std::string_view message);

}  // namespace blkmirror::cli
