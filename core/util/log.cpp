#include "core/util/log.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/orders/order.hpp"

namespace acmo::log {

namespace {

std::atomic<int> g_level{static_cast<int>(Level::info)};
std::atomic<bool> g_json{false};
// Until configure() (which the long-running commands call), lines are a command's messages:
// "acmo: warning: ...", as the command line prints its errors.
std::atomic<bool> g_command_style{true};
std::mutex g_mu;

const char* level_name(Level level)
{
  switch (level) {
  case Level::error: return "error";
  case Level::warn: return "warn";
  case Level::info: return "info";
  case Level::debug: return "debug";
  }
  return "info";
}

} // namespace

void configure(std::string_view level, std::string_view format)
{
  Level l = Level::info;
  if (level == "error") l = Level::error;
  else if (level == "warn") l = Level::warn;
  else if (level == "debug") l = Level::debug;
  g_level = static_cast<int>(l);
  g_json = format == "json";
  g_command_style = false;
}

bool enabled(Level level) { return static_cast<int>(level) <= g_level.load(); }

void write(Level level, std::string_view message)
{
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
  std::string line;
  if (g_command_style) {
    line = fmt::format("acmo: {}{}", level == Level::warn ? "warning: "
                                     : level == Level::error ? "error: "
                                                             : "",
                       message);
  } else if (g_json) {
    line = nlohmann::json{{"time", format_timestamp(now)},
                          {"level", level_name(level)},
                          {"pid", ::getpid()},
                          {"message", message}}
             .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line = fmt::format("{} {} acmo[{}]: {}", format_timestamp(now), level_name(level), ::getpid(),
                       message);
  }
  line += '\n';
  std::lock_guard lock(g_mu);
  // One write per line, so lines of several processes appending to one file never interleave.
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n <= 0) break;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

} // namespace acmo::log
