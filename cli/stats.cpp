// acmo stats: queue, handler, store and cache figures (the document is core/stats_report).
#include <csignal>
#include <optional>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "core/config/backends.hpp"
#include "core/handler/stats_report.hpp"
#include "core/orders/order.hpp"
#include "core/util/paths.hpp"
#include "core/util/log.hpp"

namespace acmo::cli {

namespace {

std::string age(int64_t ms) { return ms == 0 ? "-" : age_text(ms); }

struct StatsOptions {
  std::string watch; // --watch[=SECS]: "true" without a value, empty without the flag
};

constexpr int64_t k_default_watch_s = 2;

void print_figures(const StatsReport& f, int64_t now);

int run_stats(const StatsOptions& flags, const GlobalOptions& global)
{
  struct {
    int64_t watch_s;
  } opts{parse_seconds_flag("--watch", flags.watch, k_default_watch_s, 3600)};
  // With --watch, SIGINT and SIGTERM end the watch (exit 0); they are taken by sigtimedwait,
  // which is also the wait between two refreshes.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  if (opts.watch_s > 0) pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  auto queue = open_existing_queue(global);
  const std::string db = database_path(data_dir(global));
  // A store that is down does not hide the queue's figures: it is reported in its section.
  auto store = open_order_store(config(global), db);
  auto cache = open_cache(config(global));
  const bool tty = stdout_is_tty();
  std::optional<QueueStats> previous;
  for (;;) {
    const int64_t now = queue->now_ms();
    auto figures = read_stats(*queue, store ? store->get() : nullptr,
                              store ? std::string() : store.error().message,
                              config(global).settings().store.backend, cache.get(), now);
    if (!figures) return report(figures.error());
    if (global.json) {
      print_json(stats_json(*figures)); // with --watch: JSON Lines, one document per refresh
    } else {
      if (opts.watch_s > 0 && tty) fmt::print("\033[H\033[2J"); // redraw in place
      if (opts.watch_s > 0) {
        std::string rates;
        if (previous) {
          const double dt = static_cast<double>(opts.watch_s);
          rates = fmt::format(" — sent {:.0f}/s, deleted {:.0f}/s",
                              static_cast<double>(figures->queue.sent - previous->sent) / dt,
                              static_cast<double>(figures->queue.deleted - previous->deleted) / dt);
        }
        fmt::print("{} (every {} s; Ctrl-C stops){}\n", format_timestamp(now), opts.watch_s,
                   rates);
      }
      print_figures(*figures, now);
      if (opts.watch_s > 0 && !tty) fmt::print("\n");
    }
    std::fflush(stdout);
    if (opts.watch_s == 0) return exit_code::k_ok;
    previous = figures->queue;
    timespec wait{static_cast<time_t>(opts.watch_s), 0};
    siginfo_t info;
    if (sigtimedwait(&stop, &info, &wait) > 0) return exit_code::k_ok;
  }
}

void print_figures(const StatsReport& f, int64_t now)
{
  const StatsReport* figures = &f;
  const QueueStats& s = figures->queue;
  fmt::print("queue {} ({})\n", s.name, s.backend);
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
    {"  purged", std::to_string(s.purged)},
  });
  fmt::print("dlq {}\n", s.dlq_name);
  print_table({
    {"  messages", std::to_string(s.dead_lettered)},
    {"  dead-lettered", std::to_string(s.dead_lettered_total)},
    {"  redriven", std::to_string(s.redriven)},
    {"  purged", std::to_string(s.dlq_purged)},
    {"  expired (retention)", std::to_string(s.dlq_expired)},
  });
  fmt::print("store {}\n", figures->store_backend);
  if (figures->store_error.empty()) {
    print_table({{"  orders", std::to_string(figures->orders)}});
  } else {
    print_table({{"  unavailable", figures->store_error}});
  }
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
               h.last_error.empty() ? "" : ", last error: " + log::printable(h.last_error));
  }
}

} // namespace

Runner setup_stats(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<StatsOptions>();
  sub.add_flag("--watch", opts->watch,
                 fmt::format("Refresh every SECS seconds (default {}) until Ctrl-C; with --json, "
                             "one document per line",
                             k_default_watch_s))
      ->option_text("[=SECS]");
  return [opts, &global] { return run_stats(*opts, global); };
}

} // namespace acmo::cli
