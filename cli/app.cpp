#include "cli/app.hpp"

#include "core/queue/postgres/pg_queue.hpp"
#include "core/queue/sqlite/sqlite_queue.hpp"
#include "core/store/pg_conninfo.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include <pthread.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/output.hpp"
#include "cli/usage_error.hpp"
#include "core/util/paths.hpp"
#include "daemon/daemon.hpp"

namespace acmo::cli {

namespace {

constexpr std::array k_subcommands = {
  Subcommand{"send", "Put order events on the queue: one from flags, or many from JSON Lines",
             &setup_send},
  Subcommand{"stats", "Show queue figures (a table on a TTY, --json for scripts)", &setup_stats},
  Subcommand{"purge", "Remove every message of the queue (or its DLQ) and its dedup history",
             &setup_purge},
  Subcommand{"run-handler",
             "Run the OrderHandler: apply queued events to the orders (--once: until none is left)",
             &setup_run_handler},
  Subcommand{"serve",
             "Serve the HTTP API and monitoring endpoints, with the OrderHandler unless "
             "--no-handler",
             &setup_serve},
  Subcommand{"orders", "Read orders and their audit trail (get ID | list | events ID)",
             &setup_orders},
  Subcommand{"peek", "Browse the waiting messages without receiving them (by group or order)",
             &setup_peek},
  Subcommand{"groups",
             "Show the message groups: depth, head age, in flight, blocked (blocked first)",
             &setup_groups},
  Subcommand{"handlers", "List the handlers; stop or drain one wherever it runs (list | stop | drain)",
             &setup_handlers},
  Subcommand{"tail", "Follow the events applied and dead-lettered, by any handler, as they happen",
             &setup_tail},
  Subcommand{"dlq", "Inspect and replay dead-lettered messages (list | show ID | redrive | purge)",
             &setup_dlq},
  Subcommand{"queue", "Move the embedded queue into PostgreSQL (move --to URL)", &setup_queue},
  Subcommand{"config", "Show or check the configuration (show | check)", &setup_config},
  Subcommand{"demo",
             "Walk through the whole pipeline in a temporary data dir, narrated",
             &setup_demo},
  Subcommand{"version", "Print acmo's version and what it was built with", &setup_version},
};

} // namespace

const Config& config(const GlobalOptions& global)
{
  static std::optional<Config> loaded;
  if (!loaded) {
    ConfigSources sources;
    sources.explicit_file = global.config_file;
    sources.search_path = default_config_search_path();
    auto result = load_config(sources);
    if (!result) throw Fatal(result.error().message, exit_code::k_usage);
    loaded = std::move(*result);
    if (!global.data_dir.empty()) {
      loaded->set("data_dir", ConfigEntry{global.data_dir, "flag --data-dir"});
    }
    if (global.embedded) {
      loaded->set("queue.backend", ConfigEntry{std::string("sqlite"), "acmo demo"});
      loaded->set("store.backend", ConfigEntry{std::string("sqlite"), "acmo demo"});
      loaded->set("cache.backend", ConfigEntry{std::string("memory"), "acmo demo"});
    }
    // Values the queue would refuse are configuration errors too: say where they were set.
    if (auto ok = check_queue_options(queue_options_from(*loaded)); !ok) {
      const Error& e = ok.error();
      const std::string source =
        loaded->entry(e.field == "queue.dlq_name" ? "queue.name" : e.field).source;
      throw Fatal(fmt::format("{} (set by {})", e.message, source), exit_code::k_usage);
    }
    if (auto ok = check_config(*loaded); !ok) {
      const Error& e = ok.error();
      // After the first line when there are several: each further line names its own key.
      std::string message = e.message;
      const auto newline = std::min(message.find('\n'), message.size());
      message.insert(newline, fmt::format(" (set by {})", loaded->entry(e.field).source));
      throw Fatal(message, exit_code::k_usage);
    }
    if (global.verbose > 0) {
      fmt::print(stderr, "acmo: configuration: {}\n",
                 loaded->file().empty() ? "no file, defaults and environment" : loaded->file());
    }
  }
  return *loaded;
}

std::string data_dir(const GlobalOptions& global)
{
  return resolve_data_dir(global.data_dir, config(global).settings().data_dir);
}

Fatal data_dir_fatal(const Error& error)
{
  if (error.field == "data_dir") return Fatal(error.message, exit_code::k_usage);
  return Fatal(error);
}

namespace {

// Ctrl-Z (SIGTSTP) stops a process only once its write transaction has committed, never in
// the middle of one, where it would keep every other process's writes waiting until it is
// resumed. run() blocks SIGTSTP in every thread; this thread takes it, waits for the queue's
// writes to be between transactions (SqliteQueue::hold_writes), and stops the process with SIGSTOP,
// which cannot be caught. Once the process is continued it lets the writes go on. Started with
// the first queue a process opens (after a --daemon fork, in the daemon).
void start_stop_guard()
{
  static pid_t started_in = 0;
  if (started_in == ::getpid()) return;
  started_in = ::getpid();
  std::thread([] {
    sigset_t tstp;
    sigemptyset(&tstp);
    sigaddset(&tstp, SIGTSTP);
    for (;;) {
      int sig = 0;
      if (sigwait(&tstp, &sig) != 0) continue;
      auto held = SqliteQueue::hold_writes();
      ::kill(::getpid(), SIGSTOP);
    }
  }).detach();
}

// The words of the command line, with `--watch 5` and `--wait 5` joined into `--watch=5`:
// CLI11 gives a flag a value only after '='. A number is never otherwise the word after them
// (send's positional is CREATE, UPDATE or DELETE), so joining changes no other meaning.
std::vector<std::string> join_flag_values(int argc, char** argv)
{
  std::vector<std::string> words(argv, argv + argc);
  std::vector<std::string> out;
  for (size_t i = 0; i < words.size(); ++i) {
    if (words[i] == "--") {
      out.insert(out.end(), words.begin() + static_cast<std::ptrdiff_t>(i), words.end());
      break;
    }
    const bool takes_seconds = words[i] == "--watch" || words[i] == "--wait";
    if (takes_seconds && i + 1 < words.size() && !words[i + 1].empty() &&
        words[i + 1].find_first_not_of("0123456789") == std::string::npos) {
      out.push_back(words[i] + "=" + words[i + 1]);
      ++i;
    } else {
      out.push_back(words[i]);
    }
  }
  return out;
}

// "10", "-3", "0": a whole number as a person writes it, with no sign but '-', no leading
// zero, no space, no base prefix.
bool is_decimal(std::string_view text)
{
  if (!text.empty() && text.front() == '-') text.remove_prefix(1);
  if (text.empty() || (text.size() > 1 && text.front() == '0')) return false;
  return text.find_first_not_of("0123456789") == std::string_view::npos;
}

// Whether the decimal `text` fits the 64-bit integer CLI11 reads it into (it would clamp it).
bool fits(std::string_view text, bool is_unsigned)
{
  const char* end = text.data() + text.size();
  if (is_unsigned) {
    uint64_t value = 0;
    return std::from_chars(text.data(), end, value).ec == std::errc();
  }
  int64_t value = 0;
  return std::from_chars(text.data(), end, value).ec == std::errc();
}

} // namespace

Expected<std::unique_ptr<Queue>> try_open_queue(const GlobalOptions& global)
{
  start_stop_guard();
  const Settings& settings = config(global).settings();
  if (settings.queue_backend.backend == "postgres") {
    if (global.verbose > 0) {
      fmt::print(stderr, "acmo: queue in PostgreSQL at {}, schema {}\n",
                 redact_pg_url(queue_url(settings)), settings.queue_backend.schema);
    }
    auto queue = PgQueue::open(queue_url(settings), settings.queue_backend.schema,
                               queue_options_from(config(global)));
    if (!queue) return Unexpected(queue.error());
    return std::unique_ptr<Queue>(std::move(*queue));
  }
  const std::string dir = data_dir(global);
  const std::string path = database_path(dir);
  std::error_code ec;
  if (global.verbose > 0 && !std::filesystem::exists(path, ec)) {
    fmt::print(stderr, "acmo: no acmo data in {} yet: creating it\n", dir);
  }
  if (auto ok = ensure_directory(dir); !ok) return Unexpected(ok.error());
  if (global.verbose > 0) fmt::print(stderr, "acmo: queue database: {}\n", path);
  auto queue = SqliteQueue::open(path, queue_options_from(config(global)));
  if (!queue) return Unexpected(queue.error());
  // A queue acmo queue move has moved is empty for good: a command that would use it runs with
  // a configuration that has not followed the move.
  auto moved = (*queue)->moved_to();
  if (!moved) return Unexpected(moved.error());
  if (!moved->empty()) {
    throw Fatal(fmt::format("the queue in {} was moved to {} (acmo queue move): set "
                            "queue.backend = \"postgres\" (and queue.url, queue.schema) in the "
                            "configuration",
                            path, *moved),
                exit_code::k_usage);
  }
  return std::unique_ptr<Queue>(std::move(*queue));
}

std::unique_ptr<Queue> open_queue(const GlobalOptions& global)
{
  auto queue = try_open_queue(global);
  if (!queue) throw data_dir_fatal(queue.error());
  return std::move(*queue);
}

std::unique_ptr<Queue> open_existing_queue(const GlobalOptions& global)
{
  // A PostgreSQL queue is one every host shares: opening it creates its schema if need be.
  if (config(global).settings().queue_backend.backend == "postgres") return open_queue(global);
  const std::string dir = data_dir(global);
  std::error_code ec;
  if (!std::filesystem::exists(database_path(dir), ec)) {
    throw Fatal(fmt::format("no acmo data in {}: nothing was sent there yet; check --data-dir "
                            "or $ACMO_DATA_DIR",
                            dir),
                exit_code::k_not_found);
  }
  return open_queue(global);
}

// `rc`, or a failure when what the command printed could not all be written (a full disk, a
// closed descriptor): a script must not take output it never got for a success. A reader that
// went away (EPIPE, as `acmo orders list | head` does) is not one: that is what it asked for.
int output_written(int rc)
{
  errno = 0;
  if (std::fflush(stdout) == 0 && std::ferror(stdout) == 0) return rc;
  if (errno == EPIPE) return rc;
  print_error(fmt::format("cannot write the output: {}", std::strerror(errno != 0 ? errno : EIO)));
  return rc == exit_code::k_ok ? exit_code::k_failure : rc;
}

int run(int argc, char** argv)
{
  // Taken by the stop guard (start_stop_guard), in every thread made from here on.
  sigset_t tstp;
  sigemptyset(&tstp);
  sigaddset(&tstp, SIGTSTP);
  pthread_sigmask(SIG_BLOCK, &tstp, nullptr);
  CLI::App app{"acmo: an SQS-FIFO-style order event queue with its OrderHandler", "acmo"};
  app.fallthrough(true);
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("acmo ") + ACMO_VERSION);
  GlobalOptions global;
  app.add_option("--config", global.config_file,
                 "Read configuration from FILE (default: $ACMO_CONFIG, else ./acmo.toml, "
                 "$XDG_CONFIG_HOME/acmo/acmo.toml, /etc/acmo/acmo.toml)")
    ->option_text("FILE");
  app.add_option("--data-dir", global.data_dir,
                 "Keep the queue database in DIR (default $ACMO_DATA_DIR, else data_dir from "
                 "the config, else $XDG_STATE_HOME/acmo, else ~/.local/state/acmo)")
    ->option_text("DIR");
  app.add_flag("--json", global.json, "Print machine-readable JSON");
  app.add_flag("-q,--quiet", global.quiet, "Print only errors");
  app.footer("Exit codes: 0 success, 1 failure, 2 usage or configuration error, 3 not found,\n"
             "4 rejected input, 75 temporary failure (retry later). 'acmo SUBCOMMAND --help'\n"
             "shows a subcommand; acmo(1) and acmo.toml(5) have the rest.");
  app.add_flag("-v,--verbose", global.verbose,
               "Say on stderr which configuration file and database are used");

  std::vector<std::pair<CLI::App*, Runner>> runners;
  for (const auto& sub : k_subcommands) {
    CLI::App* cmd = app.add_subcommand(sub.name, sub.summary);
    runners.emplace_back(cmd, sub.setup(*cmd, global));
  }
  // A subcommand's --help lists its own options; say where the global ones are.
  std::function<void(CLI::App*)> add_global_note = [&](CLI::App* cmd) {
    const std::string footer = cmd->get_footer();
    cmd->footer((footer.empty() ? "" : footer + "\n\n") +
                "Global options (--config FILE, --data-dir DIR, --json, -q, -v) go before or\n"
                "after the subcommand; 'acmo --help' describes them.");
    for (CLI::App* inner : cmd->get_subcommands([](CLI::App*) { return true; })) {
      add_global_note(inner);
    }
  };
  for (auto& [cmd, runner] : runners) add_global_note(cmd);

  std::vector<std::string> words = join_flag_values(argc, argv);
  std::vector<char*> word_ptrs;
  for (auto& w : words) word_ptrs.push_back(w.data());
  word_ptrs.push_back(nullptr);
  argc = static_cast<int>(words.size());
  argv = word_ptrs.data();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    if (argc > 2) {
      print_error("--version takes nothing else; run 'acmo --version' alone");
      return exit_code::k_usage;
    }
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    const UsageError usage = explain_parse_error(app, e, argc, argv);
    print_error(usage.message);
    if (usage.help == "acmo") {
      fmt::print(stderr, "Run 'acmo --help' for the commands and options.\n");
    } else {
      fmt::print(stderr, "Run '{} --help' for its arguments and options.\n", usage.help);
    }
    return exit_code::k_usage;
  }

  // An option given an empty value (--group '') is a mistake, never a request for the
  // default; a whole number is read in decimal digits only (the parser would read 010 as 8,
  // 0x10 as 16, and take " 5"): say so rather than go on with a value that was not meant.
  std::function<std::string(const CLI::App*)> bad_value = [&](const CLI::App* cmd) {
    for (const CLI::Option* opt : cmd->get_options()) {
      if (opt->get_expected_min() < 1) continue; // a flag, or --wait [=SECS]
      std::string name = opt->get_name(false, false);
      if (name.empty()) name = opt->get_name(true, false);
      const std::string type = opt->get_type_name();
      const bool whole = type == "INT" || type == "UINT";
      for (const auto& r : opt->results()) {
        if (r.empty()) return fmt::format("{} was given an empty value; give it one, or leave it out", name);
        if (whole && !is_decimal(r)) {
          return fmt::format("{}: \"{}\" is not a whole number written in decimal digits "
                             "(such as 10)",
                             name, r);
        }
        if (whole && !fits(r, type == "UINT")) {
          return fmt::format("{}: {} is out of range", name, r);
        }
      }
    }
    for (const CLI::App* inner : cmd->get_subcommands()) {
      if (std::string message = bad_value(inner); !message.empty()) return message;
    }
    return std::string();
  };
  if (const std::string message = bad_value(&app); !message.empty()) {
    print_error(message);
    return exit_code::k_usage;
  }

  try {
    for (auto& [cmd, runner] : runners) {
      if (cmd->parsed()) return output_written(runner());
    }
    return exit_code::k_usage;
  } catch (const Fatal& e) {
    print_error(e.what());
    daemon::failed(e.what()); // a daemon that cannot start tells the waiting parent why
    return e.exit_code();
  } catch (const std::exception& e) {
    print_error(fmt::format("unexpected failure: {}", e.what()));
    daemon::failed(fmt::format("unexpected failure: {}", e.what()));
    return exit_code::k_failure;
  }
}

} // namespace acmo::cli
