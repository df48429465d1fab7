// acmo dlq list | show ID | redrive [ID...] | purge: inspect and replay dead-lettered messages
// (docs/commands.md §12).
#include <algorithm>
#include <chrono>
#include <csignal>
#include <optional>

#include <pthread.h>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/long_running.hpp"
#include "cli/output.hpp"
#include "cli/progress.hpp"
#include "core/config/config.hpp"
#include "core/orders/order.hpp"
#include "core/queue/queue_json.hpp"
#include "core/util/ids.hpp"
#include "core/util/log.hpp"

namespace acmo::cli {

namespace {

struct DlqOptions {
  int64_t limit = 50;
  int64_t offset = 0;
  std::string id;
  std::vector<std::string> ids;
  bool yes = false;
  // The filters of list and redrive, as given.
  std::string reason;
  std::string older_than;
  std::string newer_than;
  std::optional<int64_t> rate; // redrive --rate: messages a second; none unpaced
};

constexpr int64_t k_max_rate = 100'000;

// The filter of the command line; a bad value is a usage error that names the flag.
DlqFilter filter_of(const DlqOptions& opts)
{
  DlqFilter filter;
  filter.reason = opts.reason; // never "" when given: the command line refuses empty values
  const auto age = [](const char* flag, const std::string& text) -> int64_t {
    if (text.empty()) return -1;
    auto ms = parse_duration(text);
    if (!ms) throw Fatal(fmt::format("{}: {}", flag, ms.error().message), exit_code::k_usage);
    return *ms;
  };
  filter.older_than_ms = age("--older-than", opts.older_than);
  filter.newer_than_ms = age("--newer-than", opts.newer_than);
  if (auto ok = check_dlq_filter(filter); !ok) throw Fatal(ok.error().message, exit_code::k_usage);
  return filter;
}

int run_list(const DlqOptions& opts, const GlobalOptions& global)
{
  if (opts.limit < 1 || opts.limit > 1000 || opts.offset < 0) {
    throw Fatal("--limit must be 1 to 1000 and --offset not negative", exit_code::k_usage);
  }
  const DlqFilter filter = filter_of(opts);
  auto queue = open_existing_queue(global);
  auto page = queue->dlq_page(opts.limit, opts.offset, filter);
  if (!page) return report(page.error());
  if (global.json) {
    print_json(dead_letters_json(*page));
    return exit_code::k_ok;
  }
  if (page->messages.empty()) {
    if (!global.quiet) {
      if (filter.matches_all()) {
        fmt::print("the DLQ {} is empty\n", queue->options().dlq_name);
      } else {
        fmt::print("no message of the DLQ {} matches{}\n", queue->options().dlq_name,
                   page->total > 0 ? fmt::format(" past offset {}", opts.offset) : "");
      }
    }
    return exit_code::k_ok;
  }
  for (const auto& m : page->messages) {
    fmt::print("{}  {}  {}  {}\n", m.message_id, format_sequence(m.seq), m.group_id,
               log::printable(m.dead_reason));
  }
  if (!global.quiet) {
    fmt::print("{} of {} {}dead-lettered message{}\n", page->messages.size(), page->total,
               filter.matches_all() ? "" : "matching ", page->total == 1 ? "" : "s");
  }
  return exit_code::k_ok;
}

int run_show(const DlqOptions& opts, const GlobalOptions& global)
{
  auto queue = open_existing_queue(global);
  auto m = queue->dlq_show(opts.id);
  if (!m) return report(m.error());
  if (global.json) {
    print_json(dead_letter_json(*m));
    return exit_code::k_ok;
  }
  print_table({{"message", m->message_id},
               {"sequence", format_sequence(m->seq)},
               {"group", m->group_id},
               {"dedup id", m->dedup_id},
               {"reason", m->dead_reason},
               {"failures", std::to_string(m->failures)},
               {"sent", format_timestamp(m->sent_at_ms)},
               {"dead-lettered", format_timestamp(m->dead_at_ms)},
               {"body", m->body}});
  return exit_code::k_ok;
}

// A redrive of the messages that match goes in steps, oldest first, each step one
// transaction: the order is kept across steps, other processes are not held off the write
// lock for long, and a terminal shows a progress bar. With --rate the steps are small (a tenth
// of the rate) and each starts when the messages moved before it are due at that pace; SIGINT
// or SIGTERM then stops the run between two steps.
constexpr int64_t k_redrive_chunk = 1000;

struct RedriveOutcome {
  int64_t moved = 0;
  bool interrupted = false;
};

Expected<RedriveOutcome> redrive_matching(Queue& queue, const DlqFilter& filter, int64_t rate,
                                          const sigset_t& signals, const GlobalOptions& global)
{
  auto run = queue.begin_redrive(filter);
  if (!run) return Unexpected(run.error());
  const int64_t step = rate > 0 ? std::clamp<int64_t>(rate / 10, 1, k_redrive_chunk)
                                : k_redrive_chunk;
  Progress progress("messages redriven", run->total, progress_wanted(global.json, global.quiet));
  auto due = std::chrono::steady_clock::now();
  RedriveOutcome outcome;
  // Messages only leave a run: once `total` have moved, none is left.
  while (outcome.moved < run->total) {
    if (rate > 0) {
      const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(
        due - std::chrono::steady_clock::now());
      // At least a millisecond, so that a signal that came during the last step is seen.
      if (stop_signal_within(signals, std::max<int64_t>(1, wait.count()))) {
        outcome.interrupted = true;
        break;
      }
    }
    // The next step is due when this one's messages are at the rate, counted from now when
    // this one is late: time lost to a stall (a stopped process, a wait for the write lock) is
    // never made up with a burst, which is what the rate keeps from the handlers.
    const auto begun = std::max(due, std::chrono::steady_clock::now());
    auto n = queue.redrive_step(*run, step);
    if (!n) {
      progress.finish();
      if (outcome.moved > 0 && !global.quiet) {
        fmt::print(stderr, "acmo: {} moved back before the error; the rest stay in the DLQ\n",
                   outcome.moved);
      }
      return Unexpected(n.error());
    }
    if (*n == 0) break; // the rest were purged or redriven by someone else
    outcome.moved += *n;
    if (rate > 0) due = begun + std::chrono::microseconds(*n * 1'000'000 / rate);
    progress.update(outcome.moved, outcome.moved);
  }
  progress.finish();
  return outcome;
}

int run_redrive(const DlqOptions& opts, const GlobalOptions& global)
{
  const DlqFilter filter = filter_of(opts);
  const bool paced = opts.rate.has_value();
  if (!opts.ids.empty() && (!filter.matches_all() || paced)) {
    throw Fatal("message ids go without --reason, --older-than, --newer-than and --rate: give "
                "either the ids or the filters",
                exit_code::k_usage);
  }
  if (paced && (*opts.rate < 1 || *opts.rate > k_max_rate)) {
    throw Fatal(fmt::format("--rate must be 1 to {} messages a second", k_max_rate),
                exit_code::k_usage);
  }
  // A paced run takes SIGINT and SIGTERM itself, between steps: blocked before the queue is
  // opened, so that no thread it starts takes them instead.
  sigset_t signals;
  sigemptyset(&signals);
  if (paced) {
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    if (int rc = pthread_sigmask(SIG_BLOCK, &signals, nullptr); rc != 0) {
      throw Fatal(fmt::format("cannot block SIGINT and SIGTERM: error {}", rc));
    }
  }
  auto queue = open_existing_queue(global);
  RedriveOutcome outcome;
  if (opts.ids.empty()) {
    auto done = redrive_matching(*queue, filter, paced ? *opts.rate : 0, signals, global);
    if (!done) return report(done.error());
    outcome = *done;
  } else {
    auto moved = queue->redrive(opts.ids);
    if (!moved) return report(moved.error());
    outcome.moved = *moved;
  }
  const int64_t moved = outcome.moved;
  if (global.json) {
    nlohmann::json doc{{"redriven", moved}};
    if (outcome.interrupted) doc["interrupted"] = true;
    print_json(doc);
  } else if (!global.quiet) {
    fmt::print("{}moved {} message{} back to {}, in their original order{}\n",
               outcome.interrupted ? "stopped: " : "", moved, moved == 1 ? "" : "s",
               queue->options().name,
               outcome.interrupted ? "; the rest stay in the DLQ" : "");
  }
  return outcome.interrupted ? exit_code::k_failure : exit_code::k_ok;
}

} // namespace

Runner setup_dlq(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<DlqOptions>();
  sub.require_subcommand(1);
  // The filters list and redrive share.
  const auto add_filters = [opts](CLI::App* cmd) {
    cmd
      ->add_option("--reason", opts->reason,
                   "Only messages whose reason contains TEXT, in any letter case")
      ->option_text("TEXT");
    cmd
      ->add_option("--older-than", opts->older_than,
                   "Only messages dead-lettered at least DURATION ago (30s, 5m, 2h, 1d)")
      ->option_text("DURATION");
    cmd
      ->add_option("--newer-than", opts->newer_than,
                   "Only messages dead-lettered less than DURATION ago")
      ->option_text("DURATION");
  };
  auto* list = sub.add_subcommand("list", "List dead-lettered messages, oldest first, with why");
  list->add_option("--limit", opts->limit, "At most N messages (default 50)")->option_text("N");
  list->add_option("--offset", opts->offset, "Skip the first N messages")->option_text("N");
  add_filters(list);
  auto* show = sub.add_subcommand("show", "Show one dead-lettered message in full");
  show->add_option("id", opts->id, "The message id")->required()->option_text("ID");
  auto* redrive = sub.add_subcommand(
    "redrive",
    "Move messages (all, the given ids, or those that match) back to the queue in their "
    "original order");
  redrive->add_option("ids", opts->ids, "Message ids (default: every message)")
    ->option_text("ID...");
  add_filters(redrive);
  redrive
    ->add_option_function<int64_t>(
      "--rate", [opts](const int64_t& n) { opts->rate = n; },
                 "At most N messages a second, in small steps; Ctrl-C stops between two")
    ->option_text("N");
  auto* purge = sub.add_subcommand("purge", "Remove every dead-lettered message");
  purge->add_flag("-y,--yes", opts->yes, "Do not ask for confirmation (needed when not on a TTY)");
  return [=, &global] {
    if (list->parsed()) return run_list(*opts, global);
    if (show->parsed()) return run_show(*opts, global);
    if (redrive->parsed()) return run_redrive(*opts, global);
    if (purge->parsed()) return purge_queue(true, opts->yes, global);
    return exit_code::k_usage;
  };
}

} // namespace acmo::cli
