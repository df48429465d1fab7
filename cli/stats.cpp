// acmo stats: queue figures.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"

namespace acmo::cli {

namespace {

nlohmann::json queue_json(const QueueStats& s)
{
  return {{"name", s.name},
          {"visible", s.visible},
          {"inFlight", s.in_flight},
          {"delayed", s.delayed},
          {"deadLettered", s.dead_lettered},
          {"dedupEntries", s.dedup_entries},
          {"sent", s.sent},
          {"duplicates", s.duplicates},
          {"received", s.received},
          {"deleted", s.deleted},
          {"retried", s.retried},
          {"expired", s.expired},
          {"oldestAgeMs", s.oldest_age_ms}};
}

std::string age(int64_t ms)
{
  if (ms == 0) return "-";
  if (ms < 1000) return fmt::format("{} ms", ms);
  if (ms < 60'000) return fmt::format("{:.1f} s", static_cast<double>(ms) / 1000.0);
  if (ms < 3'600'000) return fmt::format("{:.1f} min", static_cast<double>(ms) / 60'000.0);
  return fmt::format("{:.1f} h", static_cast<double>(ms) / 3'600'000.0);
}

int run_stats(const GlobalOptions& global)
{
  auto queue = open_queue(global);
  auto stats = queue->stats();
  if (!stats) return report(stats.error());
  const auto& s = *stats;
  if (global.json) {
    print_json({{"queue", queue_json(s)}});
    return exit_code::k_ok;
  }
  fmt::print("queue {}\n", s.name);
  print_table({
    {"  visible", std::to_string(s.visible)},
    {"  in flight", std::to_string(s.in_flight)},
    {"  delayed (retry backoff)", std::to_string(s.delayed)},
    {fmt::format("  dead-lettered ({})", s.dlq_name), std::to_string(s.dead_lettered)},
    {"  dedup entries", std::to_string(s.dedup_entries)},
    {"  oldest message age", age(s.oldest_age_ms)},
    {"  sent", std::to_string(s.sent)},
    {"  duplicates", std::to_string(s.duplicates)},
    {"  received", std::to_string(s.received)},
    {"  deleted", std::to_string(s.deleted)},
    {"  retried", std::to_string(s.retried)},
    {"  expired (retention)", std::to_string(s.expired)},
  });
  return exit_code::k_ok;
}

} // namespace

Runner setup_stats(CLI::App& sub, const GlobalOptions& global)
{
  (void)sub;
  return [&global] { return run_stats(global); };
}

} // namespace acmo::cli
