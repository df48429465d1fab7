// The acmo command line: one CLI11 app, one file per subcommand, registered in one table.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "core/config/config.hpp"
#include "core/queue/queue.hpp"

namespace CLI {
class App;
}

namespace acmo::cli {

// Options every subcommand takes (docs/commands.md §1).
struct GlobalOptions {
  std::string config_file;
  std::string data_dir;
  bool json = false;
  bool quiet = false;
  int verbose = 0;
  // acmo demo: the embedded queue and store and the in-process cache, whatever the
  // configuration names, so that the demo never touches a queue, store or cache in use.
  bool embedded = false;
};

// What a subcommand's setup returns: the code that runs it once the command line is parsed,
// returning the process exit code.
using Runner = std::function<int()>;

// A subcommand's setup adds its options to `sub` and returns its runner. `global` is filled in
// by the time the runner is called.
using Setup = Runner (*)(CLI::App& sub, const GlobalOptions& global);

struct Subcommand {
  const char* name;
  const char* summary;
  Setup setup;
};

// The table of subcommands, in the order `acmo --help` lists them.
Runner setup_send(CLI::App& sub, const GlobalOptions& global);
Runner setup_stats(CLI::App& sub, const GlobalOptions& global);
Runner setup_purge(CLI::App& sub, const GlobalOptions& global);
Runner setup_run_handler(CLI::App& sub, const GlobalOptions& global);
Runner setup_serve(CLI::App& sub, const GlobalOptions& global);
Runner setup_orders(CLI::App& sub, const GlobalOptions& global);
Runner setup_config(CLI::App& sub, const GlobalOptions& global);
Runner setup_dlq(CLI::App& sub, const GlobalOptions& global);
Runner setup_peek(CLI::App& sub, const GlobalOptions& global);
Runner setup_groups(CLI::App& sub, const GlobalOptions& global);
Runner setup_handlers(CLI::App& sub, const GlobalOptions& global);
Runner setup_tail(CLI::App& sub, const GlobalOptions& global);
Runner setup_demo(CLI::App& sub, const GlobalOptions& global);
Runner setup_queue(CLI::App& sub, const GlobalOptions& global);
Runner setup_version(CLI::App& sub, const GlobalOptions& global);

// The configuration in force (docs/configuration.md), loaded once: --config or $ACMO_CONFIG, else the first
// of ./acmo.toml, $XDG_CONFIG_HOME/acmo/acmo.toml, /etc/acmo/acmo.toml; then ACMO_*
// variables; flags are applied by the subcommands. Throws Fatal (exit 2) on a bad file or value.
const Config& config(const GlobalOptions& global);

// The data dir in force: --data-dir, $ACMO_DATA_DIR, the config's data_dir, the XDG default.
std::string data_dir(const GlobalOptions& global);

// A data dir acmo cannot use (a file in the way, no right to create or write it) is a
// configuration error, exit 2: no retry helps. Other errors keep their exit code.
Fatal data_dir_fatal(const Error& error);

// Open the queue of the data dir, creating the directory and the database when they are not
// there (-v says so): for the commands that write, send, run-handler, serve and demo. Throws
// Fatal with a clear message if it cannot.
std::unique_ptr<Queue> open_queue(const GlobalOptions& global);
// The same, with the error returned (a PostgreSQL queue that does not answer is
// Errc::unavailable); data_dir_fatal makes it what open_queue throws.
Expected<std::unique_ptr<Queue>> try_open_queue(const GlobalOptions& global);

// Open the queue of a data dir that already holds acmo's data: for the commands that read or
// act on what is there (stats, orders, dlq, purge). A data dir without it is exit 3, "no acmo
// data in DIR", and nothing is created: a mistyped --data-dir must not read as an empty queue.
std::unique_ptr<Queue> open_existing_queue(const GlobalOptions& global);

// Purge the queue (or its DLQ), asking first on a TTY and refusing without `yes` otherwise;
// shared by `acmo purge` and `acmo dlq purge`.
int purge_queue(bool dlq, bool yes, const GlobalOptions& global);

int run(int argc, char** argv);

} // namespace acmo::cli
