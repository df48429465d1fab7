// acmo groups [--limit N] [--blocked]: the message groups with messages waiting, those an
// operator worries about first (docs/commands.md §17).
#include <algorithm>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "core/queue/queue_json.hpp"

namespace acmo::cli {

namespace {

struct GroupsOptions {
  int64_t limit = 50;
  bool blocked = false;
};

std::string plural(int64_t n, const char* word)
{
  return fmt::format("{} {}{}", n, word, n == 1 ? "" : "s");
}

// Why the group delivers nothing now, and for how long at most.
std::string blocked_text(const GroupView& g, int64_t now)
{
  const std::string left = age_text(std::max<int64_t>(0, g.head_visible_at_ms - now));
  switch (g.blocked) {
  case GroupBlock::in_flight: return fmt::format("head in flight, visible again in {}", left);
  case GroupBlock::retry_delay: return fmt::format("head waits out a retry delay, {} left", left);
  case GroupBlock::none: break;
  }
  return "-";
}

int run_groups(const GroupsOptions& opts, const GlobalOptions& global)
{
  if (opts.limit < 1 || opts.limit > 1000) {
    throw Fatal("--limit must be 1 to 1000", exit_code::k_usage);
  }
  auto queue = open_existing_queue(global);
  auto seen = queue->groups(GroupsFilter{opts.limit, opts.blocked});
  if (!seen) return report(seen.error());
  if (global.json) {
    print_json(groups_json(*seen));
    return exit_code::k_ok;
  }
  const std::string totals =
    fmt::format("{}, {}, {} in flight, {} blocked", plural(seen->total_groups, "group"),
                plural(seen->total_messages, "message"), seen->total_in_flight,
                seen->total_blocked);
  if (seen->groups.empty()) {
    if (!global.quiet) {
      fmt::print("{} ({})\n", opts.blocked ? "no group is blocked" : "no message waits", totals);
    }
    return exit_code::k_ok;
  }
  size_t width = 5; // "GROUP"
  for (const auto& g : seen->groups) width = std::max(width, g.group_id.size());
  if (!global.quiet) {
    fmt::print("{:<{}}  {:>7}  {:>9}  {:>9}  {}\n", "GROUP", width, "DEPTH", "IN FLIGHT",
               "HEAD AGE", "BLOCKED");
  }
  for (const auto& g : seen->groups) {
    fmt::print("{:<{}}  {:>7}  {:>9}  {:>9}  {}\n", g.group_id, width, g.depth, g.in_flight,
               age_text(std::max<int64_t>(0, seen->now_ms - g.head_first_sent_at_ms)),
               blocked_text(g, seen->now_ms));
  }
  if (!global.quiet) {
    fmt::print("{}\n", totals);
    if (const int64_t omitted = seen->matched - static_cast<int64_t>(seen->groups.size());
        omitted > 0) {
      fmt::print("{} more {} not shown; --limit shows up to 1000\n", omitted,
                 omitted == 1 ? "group" : "groups");
    }
  }
  return exit_code::k_ok;
}

} // namespace

Runner setup_groups(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<GroupsOptions>();
  sub.add_option("--limit", opts->limit,
                 "At most N groups, blocked first, then the oldest head (default 50)")
    ->option_text("N");
  sub.add_flag("--blocked", opts->blocked,
               "Only the blocked groups: head in flight, or waiting out a retry delay");
  return [=, &global] { return run_groups(*opts, global); };
}

} // namespace acmo::cli
