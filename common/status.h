// Status and Result<T>: errors are values, success is free.
//
// A Status is either OK (no allocation) or carries an error code (a positive errno value, or
// kProtocolError / kCrcMismatch etc. for project-specific failures) and a message that names
// what failed and where. Result<T> is a value or a non-OK Status.
//
// Completions on the data path carry `int32_t res` as io_uring does (bytes, or negated errno);
// `Status::FromRes` is the one place where such a value becomes a Status.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace blkmirror {

enum class ErrorCode : int32_t {
  kOk = 0,
  // Values 1..4095 are errno values (EIO, ENOSPC, ECONNREFUSED, ...).
  kProtocol = 10000,  // malformed or unexpected frame
  kCrcMismatch,       // data failed its CRC32C check
  kRefused,           // peer refused the handshake
  kInvalidArgument,   // bad user input
  kNotFound,
  kBusy,              // resource already owned by someone else
  kClosed,            // connection closed by the peer
  kTimeout,
  kMismatch,          // verify found differences
  kUnavailable,       // a backend cannot be used here (no device, no module)
  kDiverged,          // two copies' data histories do not allow a sync (split brain, behind)
};

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK

  static Status Ok() { return Status(); }
  static Status Error(ErrorCode code, std::string message) {
    return Status(code, std::move(message));
  }
  static Status Errno(int err, std::string_view what) {
    return Status(static_cast<ErrorCode>(err),
                  fmt::format("{}: {}", what, std::strerror(err)));
  }
  // `res` as io_uring reports it: >= 0 is success, < 0 is a negated errno.
  static Status FromRes(int32_t res, std::string_view what) {
    return res >= 0 ? Status() : Errno(-res, what);
  }
  template <typename... Args>
  static Status Invalid(fmt::format_string<Args...> f, Args&&... args) {
    return Error(ErrorCode::kInvalidArgument, fmt::format(f, std::forward<Args>(args)...));
  }
  template <typename... Args>
  static Status Protocol(fmt::format_string<Args...> f, Args&&... args) {
    return Error(ErrorCode::kProtocol, fmt::format(f, std::forward<Args>(args)...));
  }

  bool ok() const { return state_ == nullptr; }
  ErrorCode code() const { return state_ ? state_->code : ErrorCode::kOk; }
  // The errno value, or 0 when the code is not an errno.
  int err() const {
    auto c = static_cast<int32_t>(code());
    return (c > 0 && c < 4096) ? c : 0;
  }
  const std::string& message() const {
    static const std::string kOkText = "OK";
    return state_ ? state_->message : kOkText;
  }
  // Prefixes the message with context: "replica 10.0.0.2:7000: <message>".
  Status Context(std::string_view where) const {
    if (ok()) return *this;
    return Status(code(), fmt::format("{}: {}", where, message()));
  }

 private:
  struct State {
    ErrorCode code;
    std::string message;
  };
  Status(ErrorCode code, std::string message)
      : state_(std::make_shared<State>(State{code, std::move(message)})) {}
  std::shared_ptr<const State> state_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

#define BLKMIRROR_CONCAT_INNER(a, b) a##b
#define BLKMIRROR_CONCAT(a, b) BLKMIRROR_CONCAT_INNER(a, b)

// Returns from the enclosing function when `expr` (a Status) is not OK.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::blkmirror::Status status_macro_ = (expr);    \
    if (!status_macro_.ok()) return status_macro_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());`
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(BLKMIRROR_CONCAT(result_macro_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()

}  // namespace blkmirror
