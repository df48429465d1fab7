// The error vocabulary of acmo's core: expected failures are values.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include <tl/expected.hpp>

namespace acmo {

// What kind of failure an Error is; each maps to one exit code and HTTP status.
enum class Errc {
  invalid_input, // the caller's data breaks a rule (exit 4, HTTP 400)
  not_found,     // the thing asked for does not exist (exit 3, HTTP 404)
  stale,         // a receipt handle that was replaced by a later receive (exit 4)
  busy,          // the database stayed locked longer than the busy timeout (exit 75)
  unavailable,   // a dependency is down or the disk is full (exit 75, HTTP 503)
  conflict,      // the request contradicts the current state (exit 1, HTTP 409)
  internal,      // a bug or a corrupt file (exit 1, HTTP 500)
};

struct Error {
  Errc code = Errc::internal;
  std::string message; // a full sentence that says what is wrong and what to do
  std::string field;   // the input field at fault, if any
  // The operation may or may not have taken effect (the answer to a commit was lost).
  bool in_doubt = false;

  Error() = default;
  Error(Errc c, std::string msg, std::string f = {})
    : code(c), message(std::move(msg)), field(std::move(f))
  {
  }
};

template<typename T> using Expected = tl::expected<T, Error>;
using Unexpected = tl::unexpected<Error>;

inline Unexpected make_error(Errc code, std::string message, std::string field = {})
{
  return Unexpected(Error(code, std::move(message), std::move(field)));
}

// Name of an error code as shown in JSON ("invalid_input", ...).
const char* errc_name(Errc code);

// The process exit code for an error code (docs/commands.md §3).
int exit_code_for(Errc code);
// The exit code of an error: by its code, but 2 (a configuration error) for a data dir this
// user cannot use (field "data_dir"), whichever command meets it first.
int exit_code_for(const Error& error);

// An unrecoverable failure; caught once at the top of main and of each daemon loop.
class Fatal : public std::runtime_error
{
public:
  explicit Fatal(const std::string& what, int exit_code = 1)
    : std::runtime_error(what), m_exit_code(exit_code)
  {
  }
  explicit Fatal(const Error& error)
    : std::runtime_error(error.message), m_exit_code(exit_code_for(error))
  {
  }
  int exit_code() const { return m_exit_code; }

private:
  int m_exit_code;
};

namespace exit_code {
constexpr int k_ok = 0;
constexpr int k_failure = 1;
constexpr int k_usage = 2;
constexpr int k_not_found = 3;
constexpr int k_rejected = 4;
constexpr int k_temporary = 75;
} // namespace exit_code

} // namespace acmo
