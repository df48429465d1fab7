// acmo queue move --to URL: move the embedded queue (its messages, its DLQ and its dedup
// history) into PostgreSQL (docs/operations.md §9).
#include <csignal>
#include <filesystem>
#include <fstream>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "core/config/config.hpp"
#include "core/handler/handler_registry.hpp"
#include "core/queue/postgres/pg_queue.hpp"
#include "core/queue/sqlite/sqlite_queue.hpp"
#include "core/store/pg_conninfo.hpp"
#include "core/util/clock.hpp"
#include "core/util/paths.hpp"

namespace acmo::cli {

namespace {

struct MoveOptions {
  std::string to;
  std::string schema;
  bool yes = false;
};

// Whole messages and dead letters are told apart from the dedup entries in what is printed.
std::string plural(int64_t n, std::string_view one, std::string_view many)
{
  return fmt::format("{} {}", n, n == 1 ? one : many);
}

// Whether process `pid` of this host exists and is an acmo (not a later process that reuses
// the number).
bool acmo_process_alive(int64_t pid)
{
  if (pid <= 0 || ::kill(static_cast<pid_t>(pid), 0) != 0) return false;
  std::ifstream comm(fmt::format("/proc/{}/comm", pid));
  std::string name;
  std::getline(comm, name);
  return name == "acmo";
}

int move_queue(const MoveOptions& opts, const GlobalOptions& global)
{
  if (opts.to.empty()) {
    throw Fatal("--to needs the PostgreSQL URL to move the queue to, e.g. "
                "postgresql://acmo@db.internal:5432/shop",
                exit_code::k_usage);
  }
  if (!pg_conninfo_with_defaults(opts.to, {})) {
    // Not echoed: what cannot be read may hold a password.
    throw Fatal("--to is neither a PostgreSQL URL nor key=value pairs libpq can read; e.g. "
                "postgresql://acmo@db.internal:5432/shop",
                exit_code::k_usage);
  }
  if (auto ok = check_pg_url(opts.to, "--to"); !ok) throw Fatal(ok.error().message, exit_code::k_usage);
  const Settings& settings = config(global).settings();
  const std::string schema = opts.schema.empty() ? settings.queue_backend.schema : opts.schema;
  if (!valid_queue_schema(schema)) {
    throw Fatal(fmt::format("--schema \"{}\" is not a schema name acmo takes: 1 to 63 lower-case "
                            "letters, digits and _, not starting with a digit",
                            schema),
                exit_code::k_usage);
  }
  if (settings.store.backend != "postgres") {
    throw Fatal("acmo queue move needs the orders in PostgreSQL (store.backend = \"postgres\"): "
                "with the embedded store, the orders live in the SQLite file beside the queue, "
                "and a queue in PostgreSQL needs a store in PostgreSQL",
                exit_code::k_usage);
  }
  const std::string dir = data_dir(global);
  const std::string path = database_path(dir);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    throw Fatal(fmt::format("no acmo data in {}: there is no embedded queue to move; check "
                            "--data-dir or $ACMO_DATA_DIR",
                            dir),
                exit_code::k_not_found);
  }
  const QueueOptions options = queue_options_from(config(global));
  auto source = SqliteQueue::open(path, options);
  if (!source) throw data_dir_fatal(source.error());
  const int64_t now = SystemClock::instance().now_ms();
  auto seen = (*source)->handlers(now - 3'600'000);
  if (!seen) return report(seen.error());
  const std::string here = host_name();
  for (const auto& h : *seen) {
    const std::string state = h.state(now);
    if (state == "running") {
      return report(Error(Errc::busy,
                          fmt::format("handler {} (pid {} on {}) is running on the embedded "
                                      "queue: stop every handler first (acmo handlers stop "
                                      "--all, or stop the services), then move the queue",
                                      h.id, h.pid, h.host)));
    }
    // A handler whose heartbeat stopped while its process lives on (stopped with SIGSTOP, or
    // hung) could wake after the move and apply a batch it held a second time.
    if (state == "gone" && h.host == here && acmo_process_alive(h.pid)) {
      return report(Error(Errc::busy,
                          fmt::format("handler {} has stopped beating but its process {} is "
                                      "still there (stopped or hung): end it (kill -CONT {} "
                                      "then kill -TERM {}), then move the queue",
                                      h.id, h.pid, h.pid, h.pid)));
    }
  }
  if (!opts.yes) {
    if (!stdin_is_tty()) {
      throw Fatal("queue move takes the embedded queue's messages into PostgreSQL, after which "
                  "it takes no more sends; pass --yes to confirm when not at a terminal",
                  exit_code::k_usage);
    }
    auto stats = (*source)->stats();
    if (!stats) return report(stats.error());
    if (!confirm(fmt::format("Move {} and {} of {} to {} (schema {})? The embedded queue then "
                             "takes no more sends.",
                             plural(stats->visible + stats->in_flight + stats->delayed,
                                    "message", "messages"),
                             plural(stats->dead_lettered, "dead letter", "dead letters"),
                             options.name, redact_pg_url(opts.to), schema))) {
      fmt::print(stderr, "nothing moved\n");
      return exit_code::k_failure;
    }
  }
  const std::string destination = fmt::format("{} (schema {})", redact_pg_url(opts.to), schema);
  // Moved, or being moved, somewhere else: its messages are there (move_out refuses it too;
  // asked here first, so that nothing is made in the wrong PostgreSQL schema).
  auto marked = (*source)->moved_to();
  if (!marked) return report(marked.error());
  if (!marked->empty() && *marked != destination) {
    return report(Error(Errc::conflict,
                        fmt::format("the queue {} was moved to {}, or a move there did not "
                                    "finish; its messages are there: run acmo queue move again "
                                    "with that --to and --schema to finish it",
                                    options.name, *marked),
                        "to"));
  }
  auto target = PgQueue::open(opts.to, schema, options);
  if (!target) return report(target.error());
  auto moved = (*source)->move_out(destination, [&](const QueueSnapshot& snapshot)
                                                   -> Expected<MoveResult> {
    // A message received and not yet settled is in a handler's hands (one that died, or
    // stopped without giving it back): wait for its visibility timeout.
    const int64_t at = SystemClock::instance().now_ms();
    auto held = snapshot.held(at);
    if (!held) return Unexpected(held.error());
    if (held->messages > 0) {
      return make_error(Errc::busy,
                        fmt::format("{} of {} in a handler's hands until its visibility "
                                    "timeout ends in {} s; run acmo queue move again then",
                                    plural(held->messages, "message is", "messages are"),
                                    options.name, (held->until_ms - at + 999) / 1000));
    }
    return (*target)->move_in(snapshot);
  });
  if (!moved) return report(moved.error());
  if (global.json) {
    print_json({{"moved", moved->messages},
                {"deadLettered", moved->dead},
                {"deduplicationEntries", moved->dedup},
                {"movedBefore", moved->skipped},
                {"to", redact_pg_url(opts.to)},
                {"schema", schema}});
    return exit_code::k_ok;
  }
  if (!global.quiet) {
    fmt::print("moved {}, {} and {} to {}\n", plural(moved->messages, "message", "messages"),
               plural(moved->dead, "dead letter", "dead letters"),
               plural(moved->dedup, "deduplication entry", "deduplication entries"), destination);
    if (moved->skipped > 0) {
      fmt::print("{} had been moved by an earlier run\n",
                 plural(moved->skipped, "message", "messages"));
    }
    fmt::print("the embedded queue takes no more sends: set queue.backend = \"postgres\"{}{} in "
               "every host's configuration and restart acmo there\n",
               opts.to == settings.store.postgres.url ? "" : " and queue.url",
               schema == settings.queue_backend.schema ? "" : " and queue.schema");
  }
  return exit_code::k_ok;
}

} // namespace

Runner setup_queue(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<MoveOptions>();
  sub.require_subcommand(1);
  auto* move = sub.add_subcommand(
    "move", "Move the embedded queue, its DLQ and its dedup history into PostgreSQL");
  move->add_option("--to", opts->to, "The PostgreSQL URL to move the queue to")
    ->required()
    ->type_name("URL");
  move->add_option("--schema", opts->schema, "The schema to move it into (default: queue.schema)")
    ->type_name("NAME");
  move->add_flag("-y,--yes", opts->yes, "Do not ask for confirmation (needed when not on a TTY)");
  return [opts, move, &global] {
    if (move->parsed()) return move_queue(*opts, global);
    return exit_code::k_usage;
  };
}

} // namespace acmo::cli
