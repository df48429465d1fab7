// acmo run-handler: the OrderHandler in the foreground, or once over what is queued.
#include <atomic>
#include <csignal>
#include <thread>

#include <pthread.h>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "core/backends.hpp"
#include "core/order_handler.hpp"
#include "core/paths.hpp"

namespace acmo::cli {

namespace {

struct RunHandlerOptions {
  int concurrency = 1;
  int batch_size = 10;
  bool once = false;
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

// SIGINT and SIGTERM, blocked in the calling thread and so in every thread it starts later (they
// inherit the mask). Called before the queue is opened, since the queue may start threads too:
// no thread is then ever interrupted by them, and only run_until_signal's sigwait takes them.
sigset_t block_stop_signals()
{
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  if (int rc = pthread_sigmask(SIG_BLOCK, &signals, nullptr); rc != 0) {
    throw Fatal(fmt::format("cannot block SIGINT and SIGTERM: error {}", rc));
  }
  return signals;
}

// Runs the handler (until the queue is empty with `once`) or until one of `signals` (blocked
// by block_stop_signals) arrives: a thread takes it with sigwait and asks the handler to stop,
// which finishes the batches in hand.
Expected<HandlerStats> run_until_signal(OrderHandler& handler, const sigset_t& signals, bool once)
{
  std::atomic<bool> finished{false};
  std::thread waiter([&] {
    // Every signal until run() returns asks for a stop (stop() may be asked again), so a second
    // SIGTERM during shutdown does not kill the process with the batches half settled.
    for (;;) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      // Once run() has returned, the main thread wakes us with a SIGTERM of its own.
      if (finished.load()) return;
      handler.stop();
    }
  });

  auto result = once ? handler.run_once() : handler.run();
  finished.store(true);
  pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  // The signals stay blocked: the process is about to exit, and one that arrives now must not
  // turn a clean shutdown into a kill.
  return result;
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

  const sigset_t stop_signals = block_stop_signals();
  auto queue = open_queue(global); // creates and migrates the schema, order tables included
  auto writer = open_order_writer(config(global));
  if (!writer) throw Fatal(writer.error());
  auto cache = open_cache(config(global));
  options.concurrency = opts.concurrency;
  options.batch_size = opts.batch_size;
  options.writer = writer->get();
  options.cache = cache.get();
  OrderHandler handler(*queue, database_path(data_dir(global)), options);

  if (!opts.once && !global.quiet && !global.json) {
    fmt::print(stderr,
               "acmo: handling queue {} (concurrency {}, batch size {}); SIGINT or SIGTERM "
               "stops\n",
               queue->options().name, opts.concurrency, opts.batch_size);
  }
  auto result = run_until_signal(handler, stop_signals, opts.once);
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
                 fmt::format("Messages per receive, 1-{} (default: handler.batch_size, 10)",
                             k_max_batch_size))
    ->option_text("N");
  sub.add_flag("--once", opts->once,
               "Process what is queued until no visible message is left, then exit");
  sub.footer("Without --once the handler runs in the foreground until SIGINT or SIGTERM, then\n"
             "finishes the batches in hand, prints a summary and exits 0.");
  return [opts, &global] { return run_handler(*opts, global); };
}

} // namespace acmo::cli
