#include "cli/app.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/output.hpp"
#include "core/paths.hpp"

namespace acmo::cli {

namespace {

constexpr std::array k_subcommands = {
  Subcommand{"send", "Put order events on the queue: one from flags, or many from JSON Lines",
             &setup_send},
  Subcommand{"stats", "Show queue figures (a table on a TTY, --json for scripts)", &setup_stats},
  Subcommand{"purge", "Remove every message of the queue (or its DLQ) and its dedup history",
             &setup_purge},
};

size_t edit_distance(std::string_view a, std::string_view b)
{
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1U : 0U)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// "acmo sned" → "did you mean 'send'?"
std::string suggestion_for(std::string_view word)
{
  std::string best;
  size_t best_distance = 3;
  for (const auto& sub : k_subcommands) {
    size_t d = edit_distance(word, sub.name);
    if (d < best_distance) {
      best_distance = d;
      best = sub.name;
    }
  }
  return best;
}

std::string env(const char* name)
{
  const char* value = std::getenv(name);
  return value ? value : "";
}

} // namespace

QueueOptions queue_options(const GlobalOptions& /*global*/)
{
  QueueOptions options;
  if (auto v = env("ACMO_QUEUE_NAME"); !v.empty()) {
    options.name = v;
    options.dlq_name = v + "-dlq";
  }
  if (auto v = env("ACMO_QUEUE_DURABILITY"); !v.empty()) {
    if (v != "full" && v != "normal") {
      throw Fatal(fmt::format("ACMO_QUEUE_DURABILITY is \"{}\"; use \"full\" or \"normal\"", v),
                  exit_code::k_usage);
    }
    options.durability_full = v == "full";
  }
  return options;
}

std::unique_ptr<Queue> open_queue(const GlobalOptions& global)
{
  const std::string dir = resolve_data_dir(global.data_dir);
  if (auto ok = ensure_directory(dir); !ok) throw Fatal(ok.error());
  auto queue = Queue::open(database_path(dir), queue_options(global));
  if (!queue) throw Fatal(queue.error());
  return std::move(*queue);
}

int run(int argc, char** argv)
{
  CLI::App app{"acmo: an SQS-FIFO-style order event queue with its OrderHandler", "acmo"};
  app.fallthrough(true);
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("acmo ") + ACMO_VERSION);
  GlobalOptions global;
  app.add_option("--config", global.config_file, "Read configuration from FILE")
    ->option_text("FILE");
  app.add_option("--data-dir", global.data_dir,
                 "Keep the queue database in DIR (default $ACMO_DATA_DIR, else "
                 "$XDG_STATE_HOME/acmo, else ~/.local/state/acmo)")
    ->option_text("DIR");
  app.add_flag("--json", global.json, "Print machine-readable JSON");
  app.add_flag("-q,--quiet", global.quiet, "Print only errors");
  app.add_flag("-v,--verbose", global.verbose, "Print more about what happens (repeatable)");

  std::vector<std::pair<CLI::App*, Runner>> runners;
  for (const auto& sub : k_subcommands) {
    CLI::App* cmd = app.add_subcommand(sub.name, sub.summary);
    runners.emplace_back(cmd, sub.setup(*cmd, global));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string message = e.what();
    if (argc > 1 && argv[1][0] != '-' && app.get_subcommands().empty()) {
      std::string guess = suggestion_for(argv[1]);
      message = fmt::format("'{}' is not an acmo command", argv[1]);
      if (!guess.empty()) message += fmt::format("; did you mean '{}'?", guess);
    }
    print_error(message);
    fmt::print(stderr, "Run 'acmo --help' for the commands and options.\n");
    return exit_code::k_usage;
  }

  try {
    for (auto& [cmd, runner] : runners) {
      if (cmd->parsed()) return runner();
    }
    return exit_code::k_usage;
  } catch (const Fatal& e) {
    print_error(e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    print_error(fmt::format("unexpected failure: {}", e.what()));
    return exit_code::k_failure;
  }
}

} // namespace acmo::cli
