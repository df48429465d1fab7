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
thread_local std::string t_handler;

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

std::atomic<bool> g_access{false};

void configure(std::string_view level, std::string_view format, bool access)
{
  g_access = access;
  Level l = Level::info;
  if (level == "error") l = Level::error;
  else if (level == "warn") l = Level::warn;
  else if (level == "debug") l = Level::debug;
  g_level = static_cast<int>(l);
  g_json = format == "json";
  g_command_style = false;
}

bool enabled(Level level) { return static_cast<int>(level) <= g_level.load(); }

bool access_enabled() { return g_access.load(); }

std::atomic<bool> g_long_running{false};

void set_long_running() { g_long_running = true; }

bool long_running() { return g_long_running.load(); }

bool json() { return g_json.load(); }

HandlerScope::HandlerScope(std::string_view handler_id) : m_previous(std::move(t_handler))
{
  t_handler = handler_id;
}

HandlerScope::~HandlerScope() { t_handler = std::move(m_previous); }

const std::string& current_handler() { return t_handler; }

std::string printable(std::string_view text, std::string_view keep)
{
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    const bool c1 = c == 0xc2 && i + 1 < text.size()
                    && static_cast<unsigned char>(text[i + 1]) >= 0x80
                    && static_cast<unsigned char>(text[i + 1]) <= 0x9f;
    if ((c < 0x20 || c == 0x7f) && keep.find(static_cast<char>(c)) == std::string_view::npos) {
      out += fmt::format("\\x{:02x}", c);
    } else if (c1) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned char>(text[++i]));
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

void write(Level level, const Event& event, std::string_view message)
{
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
  std::string line;
  if (g_command_style) {
    line = fmt::format("acmo: {}{}", level == Level::warn ? "warning: "
                                     : level == Level::error ? "error: "
                                                             : "",
                       printable(message));
  } else if (g_json) {
    nlohmann::ordered_json doc{{"time", format_timestamp(now)},
                               {"level", level_name(level)},
                               {"pid", ::getpid()},
                               {"event", event.name.empty() ? "log" : event.name},
                               {"message", message}};
    bool handler_named = false;
    for (const Field& f : event.fields) {
      handler_named = handler_named || f.key == "handler";
      // An empty text is a field the line does not have (an order id the writer does not know).
      const auto* text = std::get_if<std::string_view>(&f.value);
      if (text != nullptr && text->empty()) continue;
      std::visit([&](const auto& v) { doc[std::string(f.key)] = v; }, f.value);
    }
    if (!handler_named && !t_handler.empty()) doc["handler"] = t_handler;
    line = doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line = fmt::format("{} {} acmo[{}]: {}", format_timestamp(now), level_name(level), ::getpid(),
                       printable(message));
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
