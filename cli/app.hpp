// The acmo command line: one CLI11 app, one file per subcommand, registered in one table.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "core/queue.hpp"

namespace CLI {
class App;
}

namespace acmo::cli {

// Options every subcommand takes (SPEC §3a).
struct GlobalOptions {
  std::string config_file;
  std::string data_dir;
  bool json = false;
  bool quiet = false;
  int verbose = 0;
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

// Open the queue of the data dir named by the global options (creating the directory).
// Throws Fatal with a clear message if it cannot.
std::unique_ptr<Queue> open_queue(const GlobalOptions& global);

// The queue options in force: defaults overridden by the environment (ACMO_QUEUE_*).
QueueOptions queue_options(const GlobalOptions& global);

int run(int argc, char** argv);

} // namespace acmo::cli
