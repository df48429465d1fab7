#include "cli/progress.hpp"

#include <cstdio>

#include <fmt/core.h>
#include <unistd.h>

namespace acmo::cli {

bool progress_wanted(bool json, bool quiet)
{
  return !json && !quiet && ::isatty(STDERR_FILENO) == 1;
}

Progress::Progress(std::string what, int64_t total, bool enabled)
  : m_what(std::move(what)), m_total(total), m_enabled(enabled),
    m_started(std::chrono::steady_clock::now()), m_last(m_started)
{
}

Progress::~Progress() { finish(); }

void Progress::update(int64_t done, int64_t items)
{
  if (!m_enabled) return;
  const auto now = std::chrono::steady_clock::now();
  if (m_drawn && now - m_last < std::chrono::milliseconds(100)) return;
  m_last = now;
  draw(done, items);
}

void Progress::draw(int64_t done, int64_t items)
{
  const double seconds =
    std::chrono::duration<double>(std::chrono::steady_clock::now() - m_started).count();
  const double rate = seconds > 0 ? static_cast<double>(items) / seconds : 0.0;
  std::string line;
  if (m_total > 0) {
    constexpr int k_width = 30;
    const double fraction = std::min(1.0, static_cast<double>(done) / static_cast<double>(m_total));
    const int filled = static_cast<int>(fraction * k_width);
    line = fmt::format("[{}{}] {:3.0f}%  {} {}  {:.0f}/s", std::string(static_cast<size_t>(filled), '#'),
                       std::string(static_cast<size_t>(k_width - filled), ' '), fraction * 100.0, items, m_what, rate);
  } else {
    line = fmt::format("{} {}  {:.0f}/s", items, m_what, rate);
  }
  fmt::print(stderr, "\r\033[K{}", line);
  std::fflush(stderr);
  m_drawn = true;
}

void Progress::finish()
{
  if (!m_enabled || !m_drawn) return;
  fmt::print(stderr, "\r\033[K");
  std::fflush(stderr);
  m_drawn = false;
}

} // namespace acmo::cli
