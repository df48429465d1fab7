// acmo stats: queue, handler, store and cache figures (the document is core/stats_report).
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "core/backends.hpp"
#include "core/paths.hpp"
#include "core/stats_report.hpp"

namespace acmo::cli {

namespace {

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
  const std::string db = database_path(data_dir(global));
  auto store = open_order_store(config(global), db);
  if (!store) return report(store.error());
  auto cache = open_cache(config(global));
  const int64_t now = SystemClock::instance().now_ms();
  auto figures = read_stats(*queue, db, **store, config(global).get_string("store.backend"),
                            cache.get(), now);
  if (!figures) return report(figures.error());
  if (global.json) {
    print_json(stats_json(*figures));
    return exit_code::k_ok;
  }
  const QueueStats& s = figures->queue;
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
  fmt::print("store {}\n", figures->store_backend);
  print_table({{"  orders", std::to_string(figures->orders)}});
  const CacheStats& c = figures->cache;
  fmt::print("cache {}\n", c.backend);
  print_table({{"  hits", std::to_string(c.hits)},
               {"  misses", std::to_string(c.misses)},
               {"  hit rate", fmt::format("{:.1f}%", c.hit_rate() * 100.0)},
               {"  keys", std::to_string(c.keys)},
               {"  errors", std::to_string(c.errors)}});
  fmt::print("handlers (last hour)\n");
  if (figures->handlers.empty()) fmt::print("  none\n");
  for (const auto& h : figures->handlers) {
    fmt::print("  {}  {:<8} processed {}, dead-lettered {}, retried {}, batch p50 {:.1f} ms, "
               "p99 {:.1f} ms{}\n",
               h.id, h.state(now), h.processed, h.dead_lettered, h.retried,
               static_cast<double>(h.latency_p50_us) / 1000.0,
               static_cast<double>(h.latency_p99_us) / 1000.0,
               h.last_error.empty() ? "" : ", last error: " + h.last_error);
  }
  return exit_code::k_ok;
}

} // namespace

Runner setup_stats(CLI::App& sub, const GlobalOptions& global)
{
  (void)sub;
  return [&global] { return run_stats(global); };
}

} // namespace acmo::cli
