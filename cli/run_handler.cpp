// acmo run-handler: the OrderHandler in the foreground, or once over what is queued.


#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/long_running.hpp"
#include "cli/output.hpp"
#include "core/config/backends.hpp"
#include "core/handler/order_handler.hpp"
#include "core/util/log.hpp"
#include "core/util/paths.hpp"
#include "daemon/daemon.hpp"

namespace acmo::cli {

namespace {

struct RunHandlerOptions {
  int concurrency = 1;
  int batch_size = 100;
  bool once = false;
  DaemonFlags daemon;
  // The flags given; those not given come from the configuration ([handler]).
  CLI::Option* concurrency_flag = nullptr;
  CLI::Option* batch_size_flag = nullptr;
};

constexpr int k_max_concurrency = 64;
constexpr int k_max_batch_size = 1000;

void print_summary(const GlobalOptions& global, const HandlerStats& stats)
{
  if (global.json) {
    print_json({{"processed", stats.processed},
                {"deadLettered", stats.dead_lettered},
                {"retried", stats.retried},
                {"batches", stats.batches}});
  } else if (!global.quiet) {
    fmt::print("applied {}, dead-lettered {}, retried {}\n", stats.processed,
               stats.dead_lettered, stats.retried);
  }
}

int run_handler(RunHandlerOptions opts, const GlobalOptions& global)
{
  HandlerOptions options = handler_options_from(config(global));
  if (opts.concurrency_flag->count() == 0) opts.concurrency = options.concurrency;
  if (opts.batch_size_flag->count() == 0) opts.batch_size = options.batch_size;
  if (opts.concurrency < 1 || opts.concurrency > k_max_concurrency) {
    throw Fatal(fmt::format("--concurrency must be between 1 and {} worker threads (got {})",
                            k_max_concurrency, opts.concurrency),
                exit_code::k_usage);
  }
  if (opts.batch_size < 1 || opts.batch_size > k_max_batch_size) {
    throw Fatal(fmt::format("--batch-size must be between 1 and {} messages (got {})",
                            k_max_batch_size, opts.batch_size),
                exit_code::k_usage);
  }

  if (opts.once && opts.daemon.daemon) {
    throw Fatal("--once and --daemon do not go together: --once runs in the foreground until "
                "the queue is empty",
                exit_code::k_usage);
  }
  const sigset_t signals = block_signals();
  start_long_running(opts.daemon, global, "run-handler");
  // The queue and the store may be in PostgreSQL, which may not answer yet (all started at
  // boot): wait for it, as a running handler does through an outage, instead of exiting.
  std::unique_ptr<Queue> queue;
  Expected<std::unique_ptr<OrderWriter>> writer = Unexpected(Error{});
  auto open_both = [&]() -> Expected<void> {
    if (!queue) {
      auto q = try_open_queue(global); // creates and migrates the schema, order tables included
      if (!q) return Unexpected(q.error());
      queue = std::move(*q);
    }
    writer = open_order_writer(config(global));
    if (!writer) return Unexpected(writer.error());
    return {};
  };
  auto waited = opts.once ? std::optional<Expected<void>>(open_both()) : open_waiting(signals, open_both);
  if (!waited) return exit_code::k_ok; // stopped while it waited
  if (!*waited) throw data_dir_fatal(waited->error());
  auto cache = open_cache(config(global));
  options.concurrency = opts.concurrency;
  options.batch_size = opts.batch_size;
  options.writer = writer->get();
  // Only a shared cache (Redis) is read by anyone else; this process reads no orders.
  options.cache = cache != nullptr && !cache->local() ? cache.get() : nullptr;
  OrderHandler handler(*queue, database_path(data_dir(global)), options);

  if (!opts.once) {
    log::info({"started"}, "handling queue {} of {} (concurrency {}, batch size {}, store {}, cache {}); "
              "SIGINT or SIGTERM stops",
              queue->options().name, data_dir(global), opts.concurrency, opts.batch_size,
              config(global).settings().store.backend, config(global).settings().cache.backend);
  }
  announce_ready();
  Expected<HandlerStats> result = HandlerStats{};
  run_until_signal(
    signals, [&] { handler.stop(); },
    [&] { result = opts.once ? handler.run_once() : handler.run(); });
  if (!opts.once) {
    const HandlerStats s = result ? *result : handler.stats();
    log::info({"stopped"}, "stopped: applied {}, dead-lettered {}, retried {}", s.processed, s.dead_lettered,
              s.retried);
  }
  if (!result) {
    const HandlerStats stats = handler.stats();
    print_summary(global, stats);
    return report(result.error());
  }
  print_summary(global, *result);
  return exit_code::k_ok;
}

} // namespace

Runner setup_run_handler(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<RunHandlerOptions>();
  opts->concurrency_flag = sub.add_option("--concurrency", opts->concurrency,
                 fmt::format("Worker threads, 1-{} (default: handler.concurrency, 1)",
                             k_max_concurrency))
    ->option_text("N");
  opts->batch_size_flag = sub.add_option("--batch-size", opts->batch_size,
                 fmt::format("Messages per receive, 1-{} (default: handler.batch_size, 100)",
                             k_max_batch_size))
    ->option_text("N");
  sub.add_flag("--once", opts->once,
               "Process what is queued until no visible message is left, then exit");
  add_daemon_flags(sub, opts->daemon);
  sub.footer("Without --once the handler runs in the foreground until SIGINT or SIGTERM, then\n"
             "finishes the batches in hand, prints a summary and exits 0.");
  return [opts, &global] { return run_handler(*opts, global); };
}

} // namespace acmo::cli
