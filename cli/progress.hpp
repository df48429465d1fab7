// A progress bar for long work (send --file, dlq redrive) on a terminal (docs/commands.md §2): drawn on
// stderr, only when stderr is a TTY and the output is not --json or --quiet, at most ten times
// a second, and cleared at the end.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace acmo::cli {

class Progress
{
public:
  // `total` 0: unknown (a pipe); then the count and rate are shown without a bar.
  Progress(std::string what, int64_t total, bool enabled);
  ~Progress();
  // `done` of `total` (in the units of total, e.g. bytes read), and `items` handled so far.
  void update(int64_t done, int64_t items);
  void finish();

private:
  void draw(int64_t done, int64_t items);
  std::string m_what;
  int64_t m_total;
  bool m_enabled;
  bool m_drawn = false;
  std::chrono::steady_clock::time_point m_started;
  std::chrono::steady_clock::time_point m_last;
};

// Whether a progress bar should be drawn: stderr is a terminal, and neither --json nor --quiet.
bool progress_wanted(bool json, bool quiet);

} // namespace acmo::cli
