// acmo stats: queue figures.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "core/handler_registry.hpp"
#include "core/order.hpp"
#include "core/order_store.hpp"
#include "core/paths.hpp"

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

nlohmann::json handler_json(const std::vector<HandlerRecord>& handlers, int64_t now)
{
  nlohmann::json list = nlohmann::json::array();
  int64_t running = 0, processed = 0, dead = 0, retried = 0;
  for (const auto& h : handlers) {
    const std::string state = h.state(now);
    running += state == "running";
    processed += h.processed;
    dead += h.dead_lettered;
    retried += h.retried;
    list.push_back({{"id", h.id},
                    {"pid", h.pid},
                    {"host", h.host},
                    {"state", state},
                    {"since", format_timestamp(h.started_at_ms)},
                    {"heartbeatAgeMs", now - h.heartbeat_at_ms},
                    {"processed", h.processed},
                    {"deadLettered", h.dead_lettered},
                    {"retried", h.retried},
                    {"batches", h.batches},
                    {"latencyP50Ms", static_cast<double>(h.latency_p50_us) / 1000.0},
                    {"latencyP99Ms", static_cast<double>(h.latency_p99_us) / 1000.0},
                    {"lastError", h.last_error}});
  }
  // Totals over the handlers seen in the last hour, running or not.
  return {{"running", running},
          {"processed", processed},
          {"deadLettered", dead},
          {"retried", retried},
          {"handlers", std::move(list)}};
}

int run_stats(const GlobalOptions& global)
{
  auto queue = open_queue(global);
  auto stats = queue->stats();
  if (!stats) return report(stats.error());
  const auto& s = *stats;
  const std::string db = database_path(data_dir(global));
  const int64_t now = SystemClock::instance().now_ms();
  auto handlers = list_handlers(db, now);
  if (!handlers) return report(handlers.error());
  auto store = SqliteOrderStore::open(db);
  if (!store) return report(store.error());
  auto orders = (*store)->list("", 0, 0);
  if (!orders) return report(orders.error());
  if (global.json) {
    print_json({{"queue", queue_json(s)},
                {"handler", handler_json(*handlers, now)},
                {"store", {{"backend", "sqlite"}, {"orders", orders->total}}}});
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
  fmt::print("store sqlite\n");
  print_table({{"  orders", std::to_string(orders->total)}});
  fmt::print("handlers (last hour)\n");
  if (handlers->empty()) fmt::print("  none\n");
  for (const auto& h : *handlers) {
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
