// acmo serve: the HTTP API and the monitoring endpoints (docs/http-api.md), with the OrderHandler in
// the same process unless --no-handler or server.handler = false.
#include <atomic>
#include <csignal>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/long_running.hpp"
#include "cli/output.hpp"
#include "core/config/backends.hpp"
#include "core/handler/order_handler.hpp"
#include "core/util/log.hpp"
#include "core/util/paths.hpp"
#include "daemon/http_server.hpp"

namespace acmo::cli {

namespace {

struct ServeOptions {
  std::string listen;
  bool no_handler = false;
  DaemonFlags daemon;
};

daemon::HttpServerOptions server_options(const Config& config, const ServeOptions& opts)
{
  const Settings& s = config.settings();
  auto listen = parse_listen(opts.listen.empty() ? s.listen : opts.listen);
  if (!listen) {
    throw Fatal(opts.listen.empty()
                  ? fmt::format("{} (set by {})", listen.error().message,
                                config.entry("server.listen").source)
                  : fmt::format("--listen: {}", listen.error().message),
                exit_code::k_usage);
  }
  daemon::HttpServerOptions o{s.server};
  o.host = listen->host;
  o.port = listen->port;
  o.group_by = s.group_by;
  o.store_backend = s.store.backend;
  return o;
}

int run_serve(const ServeOptions& opts, const GlobalOptions& global)
{
  const Config& cfg = config(global);
  daemon::HttpServerOptions options = server_options(cfg, opts);
  const bool with_handler = !opts.no_handler && cfg.settings().serve_handler;

  const sigset_t signals = block_signals();
  start_long_running(opts.daemon, global, "serve");
  std::signal(SIGPIPE, SIG_IGN); // a client that hangs up is its own problem, not a crash

  // The queue and the orders (which the API reads and the handler of this process writes) may
  // be in PostgreSQL, which may not answer yet (a host cut off, everything started at boot):
  // wait for them, as run-handler does, instead of exiting.
  const std::string db = database_path(data_dir(global));
  std::unique_ptr<Queue> queue;
  std::unique_ptr<OrderWriter> writer;
  std::vector<std::unique_ptr<OrderStore>> read_stores;
  auto waited = open_waiting(signals, [&]() -> Expected<void> {
    if (!queue) {
      auto q = try_open_queue(global); // creates and migrates the schema
      if (!q) return Unexpected(q.error());
      queue = std::move(*q);
    }
    if (with_handler && !writer) {
      auto w = open_order_writer(cfg);
      if (!w) return Unexpected(w.error());
      writer = std::move(*w);
    }
    // The API's read stores, opened here so that a store cut off after this wait cannot end
    // the server when it binds.
    while (read_stores.size() < static_cast<size_t>(daemon::read_store_count(options))) {
      auto reader = open_order_store(cfg, db);
      if (!reader) return Unexpected(reader.error());
      read_stores.push_back(std::move(*reader));
    }
    return {};
  });
  if (!waited) return exit_code::k_ok; // stopped while it waited
  if (!*waited) throw data_dir_fatal(waited->error());
  auto cache = open_cache(cfg);
  std::unique_ptr<OrderHandler> handler;
  if (with_handler) {
    HandlerOptions ho = handler_options_from(cfg);
    ho.writer = writer.get();
    // A cache of this process follows the store before every read (CacheFollower), which
    // drops what the handler changed: only a shared one (Redis) needs the handler to drop it.
    ho.cache = cache != nullptr && !cache->local() ? cache.get() : nullptr;
    handler = std::make_unique<OrderHandler>(*queue, db, ho);
  }

  daemon::HttpServerParts parts;
  parts.queue = queue.get();
  parts.db_path = db;
  parts.open_store = [&cfg, db] { return open_order_store(cfg, db); };
  parts.stores = std::move(read_stores);
  parts.cache = cache.get();
  parts.handler = handler.get();
  parts.handler_started_ms = queue->now_ms();
  daemon::HttpServer server(options, std::move(parts));
  if (auto ok = server.bind(); !ok) {
    // An address that is not this machine's is a configuration error, like a malformed one.
    if (ok.error().code == Errc::invalid_input) throw Fatal(ok.error().message, exit_code::k_usage);
    throw Fatal(ok.error());
  }

  // The handler runs beside the server; a failure of its own is logged and ends serve too,
  // since the API would otherwise queue events that nothing applies.
  std::atomic<bool> handler_failed{false};
  std::atomic<bool> shutting_down{false};
  std::thread handler_thread;
  if (handler) {
    handler_thread = std::thread([&] {
      auto result = handler->run();
      if (!result) {
        log::error({"handler_failed"}, "the order handler stopped: {}", result.error().message);
        handler_failed.store(true);
        server.stop();
      } else if (!shutting_down.load()) {
        // Asked by acmo handlers stop or drain: the API goes on accepting events.
        log::warn({"handler_stopped"},
                  "the order handler stopped as asked; the API goes on accepting events, which "
                  "wait for a handler (acmo run-handler)");
      }
    });
  }

  // An IPv6 address goes in brackets in a URL ("http://[::1]:3000").
  const bool ipv6 = options.host.find(':') != std::string::npos;
  log::info({"started"}, "serving http://{}{}{}:{} (queue {}, {} threads, handler {}); SIGINT or SIGTERM stops",
            ipv6 ? "[" : "", options.host, ipv6 ? "]" : "", server.port(), queue->options().name, options.threads,
            handler ? "in this process" : "not here: run acmo run-handler");
  announce_ready();
  run_until_signal(
    signals, [&] { server.stop(); },
    [&] {
      server.run(); // returns once stopped and every request in flight is answered
      if (handler) {
        shutting_down.store(true);
        handler->stop(); // finishes the batches in hand
        handler_thread.join();
      }
    });
  if (handler) {
    const HandlerStats s = handler->stats();
    log::info({"stopped"}, "stopped; the handler applied {}, dead-lettered {}, retried {}", s.processed,
              s.dead_lettered, s.retried);
  } else {
    log::info({"stopped"}, "stopped");
  }
  return handler_failed.load() ? exit_code::k_failure : exit_code::k_ok;
}

} // namespace

Runner setup_serve(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<ServeOptions>();
  sub.add_option("--listen", opts->listen,
                 "Listen on HOST:PORT (default: server.listen, 127.0.0.1:3000)")
    ->option_text("HOST:PORT");
  sub.add_flag("--no-handler", opts->no_handler,
               "Only queue events; separate acmo run-handler processes apply them");
  add_daemon_flags(sub, opts->daemon);
  sub.footer("Endpoints: POST/GET /api/orders, GET/PUT/DELETE /api/orders/ID, PATCH\n"
             "/api/orders/ID/status, GET /api/orders/ID/events, /sqs/stats, /sqs/peek,\n"
             "/sqs/purge, /sqs/dlq, /sqs/dlq/redrive, /handler/status, /handler/stats,\n"
             "/cache/stats, /cache/keys, /cache/clear, /health, /health/live,\n"
             "/health/ready, /metrics.\n"
             "SIGINT or SIGTERM stops: no new connections, the requests in flight are\n"
             "answered, the handler finishes its batch, exit 0.");
  return [opts, &global] { return run_serve(*opts, global); };
}

} // namespace acmo::cli
