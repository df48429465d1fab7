// The log of the long-running modes (run-handler, serve): one line per message on stderr,
// which --daemon points at the log file. Level and format come from [log] (docs/configuration.md §6).
#pragma once

#include <string>
#include <string_view>

#include <fmt/core.h>

namespace acmo::log {

enum class Level { error = 0, warn = 1, info = 2, debug = 3 };

// From log.level and log.format ("text" or "json"); before it is called: info, text.
void configure(std::string_view level, std::string_view format);
bool enabled(Level level);

// Write one line: "2026-11-26T03:12:00.123Z info acmo run-handler[123]: MESSAGE", or a JSON
// object {"time", "level", "pid", "message"} with log.format = "json". Thread-safe.
void write(Level level, std::string_view message);

template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args)
{
  if (enabled(Level::error)) write(Level::error, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args)
{
  if (enabled(Level::warn)) write(Level::warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args)
{
  if (enabled(Level::info)) write(Level::info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args)
{
  if (enabled(Level::debug)) write(Level::debug, fmt::format(f, std::forward<Args>(args)...));
}

} // namespace acmo::log
