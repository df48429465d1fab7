// The log of the long-running modes (run-handler, serve): one line per message on stderr,
// which --daemon points at the log file. Level and format come from [log]
// (docs/configuration.md §6); the lines and their fields are in docs/operations.md §5.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <variant>

#include <fmt/core.h>

namespace acmo::log {

enum class Level { error = 0, warn = 1, info = 2, debug = 3 };

// `text` for a terminal or a text log: every control character (C0 but those in `keep`, DEL,
// and C1, U+0080 to U+009F) written as \xHH, so that text a sender wrote (a body quoted in a
// reason, a parser's "last read") cannot move the cursor, recolour or retitle the terminal
// that shows it, nor start a line of its own in a log.
std::string printable(std::string_view text, std::string_view keep = {});

// From log.level and log.format ("text" or "json"); before it is called: info, text, and lines
// in the style of the command line's messages ("acmo: warning: ...").
// `access` is log.access: acmo serve logs every HTTP request it answers.
void configure(std::string_view level, std::string_view format, bool access = false);
bool enabled(Level level);
bool access_enabled();
// A long-running process (serve, run-handler) says so: its errors are lines of its log then.
void set_long_running();
bool long_running();
// log.format is "json".
bool json();

// One field of a line: in the JSON format a key of the line's object; the text format shows
// the message alone, which says the same in words.
struct Field {
  std::string_view key;
  std::variant<std::string_view, int64_t, double> value;
};

// What a line is about: `name` is the line's "event" (a stable word such as "dead_lettered" or
// "http_request", for tools to filter on), `fields` its details (order_id, message_id, group,
// ...).
struct Event {
  std::string_view name;
  std::initializer_list<Field> fields = {};
};

// Write one line: "2026-11-26T03:12:00.123Z info acmo[123]: MESSAGE", or with log.format =
// "json" one object {"time", "level", "pid", "event", "message", ...fields, "handler"}, where
// "handler" is the calling thread's handler (HandlerScope) unless a field names it. Thread-safe;
// one write(2) per line, so lines of processes appending to one file never interleave.
void write(Level level, const Event& event, std::string_view message);

// While it lives, lines written by this thread name `handler_id` as their handler.
class HandlerScope {
public:
  explicit HandlerScope(std::string_view handler_id);
  ~HandlerScope();
  HandlerScope(const HandlerScope&) = delete;
  HandlerScope& operator=(const HandlerScope&) = delete;

private:
  std::string m_previous;
};
// The handler this thread works for ("" if none).
const std::string& current_handler();

template <typename... Args>
void error(const Event& event, fmt::format_string<Args...> f, Args&&... args)
{
  if (enabled(Level::error)) write(Level::error, event, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(const Event& event, fmt::format_string<Args...> f, Args&&... args)
{
  if (enabled(Level::warn)) write(Level::warn, event, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(const Event& event, fmt::format_string<Args...> f, Args&&... args)
{
  if (enabled(Level::info)) write(Level::info, event, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void debug(const Event& event, fmt::format_string<Args...> f, Args&&... args)
{
  if (enabled(Level::debug)) write(Level::debug, event, fmt::format(f, std::forward<Args>(args)...));
}

} // namespace acmo::log
