// acmo dlq list | show ID | redrive [ID...] | purge: inspect and replay dead-lettered messages.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "cli/progress.hpp"
#include "core/orders/order.hpp"
#include "core/queue/queue_json.hpp"
#include "core/util/ids.hpp"

namespace acmo::cli {

namespace {

struct DlqOptions {
  int64_t limit = 50;
  int64_t offset = 0;
  std::string id;
  std::vector<std::string> ids;
  bool yes = false;
};

int run_list(const DlqOptions& opts, const GlobalOptions& global)
{
  if (opts.limit < 1 || opts.limit > 1000 || opts.offset < 0) {
    throw Fatal("--limit must be 1 to 1000 and --offset not negative", exit_code::k_usage);
  }
  auto queue = open_existing_queue(global);
  auto page = queue->dlq_page(opts.limit, opts.offset);
  if (!page) return report(page.error());
  if (global.json) {
    print_json(dead_letters_json(*page));
    return exit_code::k_ok;
  }
  if (page->messages.empty()) {
    if (!global.quiet) fmt::print("the DLQ {} is empty\n", queue->options().dlq_name);
    return exit_code::k_ok;
  }
  for (const auto& m : page->messages) {
    fmt::print("{}  {}  {}  {}\n", m.message_id, format_sequence(m.seq), m.group_id, m.dead_reason);
  }
  if (!global.quiet) {
    fmt::print("{} of {} dead-lettered message{}\n", page->messages.size(), page->total,
               page->total == 1 ? "" : "s");
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

// Redriving every message goes in chunks, oldest first, each chunk one transaction: the order is
// kept across chunks, other processes are not held off the write lock for long, and a terminal
// shows a progress bar.
constexpr int64_t k_redrive_chunk = 1000;

Expected<int64_t> redrive_all(Queue& queue, const GlobalOptions& global)
{
  auto stats = queue.stats();
  if (!stats) return Unexpected(stats.error());
  Progress progress("messages redriven", stats->dead_lettered,
                    progress_wanted(global.json, global.quiet));
  int64_t moved = 0;
  for (;;) {
    auto chunk = queue.dlq_list(k_redrive_chunk, 0);
    if (!chunk) return Unexpected(chunk.error());
    if (chunk->empty()) break;
    std::vector<std::string> ids;
    ids.reserve(chunk->size());
    for (const auto& m : *chunk) ids.push_back(m.message_id);
    auto n = queue.redrive(ids);
    if (!n) {
      // Another process redrove or purged some of them meanwhile: take the DLQ as it is now.
      if (n.error().code == Errc::not_found) continue;
      return Unexpected(n.error());
    }
    moved += *n;
    progress.update(moved, moved);
    if (static_cast<int64_t>(chunk->size()) < k_redrive_chunk) break;
  }
  progress.finish();
  return moved;
}

int run_redrive(const DlqOptions& opts, const GlobalOptions& global)
{
  auto queue = open_existing_queue(global);
  auto moved = opts.ids.empty() ? redrive_all(*queue, global) : queue->redrive(opts.ids);
  if (!moved) return report(moved.error());
  if (global.json) {
    print_json({{"redriven", *moved}});
  } else if (!global.quiet) {
    fmt::print("moved {} message{} back to {}, in their original order\n", *moved,
               *moved == 1 ? "" : "s", queue->options().name);
  }
  return exit_code::k_ok;
}

} // namespace

Runner setup_dlq(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<DlqOptions>();
  sub.require_subcommand(1);
  auto* list = sub.add_subcommand("list", "List dead-lettered messages, oldest first, with why");
  list->add_option("--limit", opts->limit, "At most N messages (default 50)")->option_text("N");
  list->add_option("--offset", opts->offset, "Skip the first N messages")->option_text("N");
  auto* show = sub.add_subcommand("show", "Show one dead-lettered message in full");
  show->add_option("id", opts->id, "The message id")->required()->option_text("ID");
  auto* redrive = sub.add_subcommand(
    "redrive", "Move messages (all, or the given ids) back to the queue in their original order");
  redrive->add_option("ids", opts->ids, "Message ids (default: every message)")
    ->option_text("ID...");
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
