// acmo purge: remove every message of a queue.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"

namespace acmo::cli {

namespace {

struct PurgeOptions {
  bool dlq = false;
  bool yes = false;
};

} // namespace

int purge_queue(bool dlq, bool yes, const GlobalOptions& global)
{
  auto queue = open_existing_queue(global);
  const std::string& name = dlq ? queue->options().dlq_name : queue->options().name;
  if (!yes) {
    if (!stdin_is_tty()) {
      throw Fatal(fmt::format("purge removes every message of {}; pass --yes to confirm when "
                              "not at a terminal",
                              name),
                  exit_code::k_usage);
    }
    auto stats = queue->stats();
    if (!stats) return report(stats.error());
    const int64_t count = dlq ? stats->dead_lettered
                                   : stats->visible + stats->in_flight + stats->delayed;
    // A purge of the DLQ leaves the queue's dedup history alone.
    if (!confirm(fmt::format("Remove all {} messages of {}{}?", count, name,
                             dlq ? "" : " and its dedup history"))) {
      fmt::print(stderr, "nothing removed\n");
      return exit_code::k_failure;
    }
  }
  auto purged = queue->purge(dlq);
  if (!purged) return report(purged.error());
  if (global.json) {
    print_json({{"purged", *purged}});
  } else if (!global.quiet) {
    fmt::print("purged {} message{} from {}\n", *purged, *purged == 1 ? "" : "s", name);
  }
  return exit_code::k_ok;
}

Runner setup_purge(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<PurgeOptions>();
  sub.add_flag("--dlq", opts->dlq, "Purge the dead-letter queue instead");
  sub.add_flag("-y,--yes", opts->yes, "Do not ask for confirmation (needed when not on a TTY)");
  return [opts, &global] { return purge_queue(opts->dlq, opts->yes, global); };
}

} // namespace acmo::cli
