// acmo tail: a live feed of the events applied and dead-lettered by any handler, in any process
// (docs/commands.md §19).
#include <set>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/long_running.hpp"
#include "cli/output.hpp"
#include "core/config/backends.hpp"
#include "core/orders/order.hpp"
#include "core/orders/order_event.hpp"
#include "core/queue/queue_json.hpp"
#include "core/store/order_store.hpp"
#include "core/util/clock.hpp"
#include "core/util/ids.hpp"
#include "core/util/paths.hpp"
#include "core/util/log.hpp"

namespace acmo::cli {

namespace {

constexpr int64_t k_poll_ms = 200;
constexpr int64_t k_page = 1000;
// A dead-letter's time is its transaction's, taken before it commits: look this far back.
constexpr int64_t k_dead_margin_ms = 10'000;

struct TailOptions {
  bool applied_only = false;
  bool dead_only = false;
  std::string order_id;
  int64_t count = 0; // 0: until SIGINT or SIGTERM
};

class Feed
{
public:
  Feed(const TailOptions& opts, const GlobalOptions& global) : m_opts(opts), m_global(global) {}

  // Print one line; false once --count lines are out.
  bool print(const nlohmann::json& doc, const std::string& text)
  {
    if (m_global.json) {
      print_json(doc);
    } else {
      fmt::print("{}\n", text);
    }
    std::fflush(stdout);
    return m_opts.count == 0 || ++m_printed < m_opts.count;
  }

private:
  const TailOptions& m_opts;
  const GlobalOptions& m_global;
  int64_t m_printed = 0;
};

// The order id and type of a dead-lettered body, when it is an order event.
std::pair<std::string, std::string> order_of(const std::string& body)
{
  auto doc = nlohmann::json::parse(body, nullptr, false);
  if (!doc.is_object()) return {};
  auto text = [&](const char* key) {
    auto it = doc.find(key);
    return it != doc.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  return {text("orderId"), text("type")};
}

int run_tail(const TailOptions& opts, const GlobalOptions& global)
{
  if (opts.applied_only && opts.dead_only) {
    throw Fatal("--applied and --dead-lettered exclude each other; give neither for both",
                exit_code::k_usage);
  }
  if (opts.count < 0) throw Fatal("--count takes 1 or more events", exit_code::k_usage);
  if (!opts.order_id.empty()) {
    if (auto ok = check_order_id(opts.order_id, "--order-id"); !ok) {
      throw Fatal(ok.error().message, exit_code::k_usage);
    }
  }
  const sigset_t signals = block_signals();
  auto queue = open_existing_queue(global);
  const bool postgres = config(global).settings().store.backend == "postgres";
  auto store = open_order_store(config(global), postgres ? "" : database_path(data_dir(global)));
  if (!store) throw Fatal(store.error());
  const Clock& clock = SystemClock::instance();

  // Where the feeds start: now. Rows the trail gives with its first mark are taken as seen.
  std::set<int64_t> seen_rows;
  int64_t mark = -1;
  if (!opts.dead_only) {
    auto first = (*store)->trail_since(-1, k_page);
    if (!first) return report(first.error());
    mark = first->mark;
    for (const auto& e : first->entries) seen_rows.insert(e.id);
  }
  const int64_t started = clock.now_ms();
  int64_t last_poll = started;
  std::set<std::string> seen_dead;
  Feed feed(opts, global);

  for (;;) {
    if (!opts.dead_only) {
      for (;;) {
        auto page = (*store)->trail_since(mark, k_page);
        if (!page) return report(page.error());
        mark = page->mark;
        for (const auto& e : page->entries) {
          if (!seen_rows.insert(e.id).second) continue;
          if (!opts.order_id.empty() && e.order_id != opts.order_id) continue;
          const std::string sequence = format_sequence(e.event.seq);
          nlohmann::json doc{{"event", "applied"},
                             {"at", format_timestamp(e.event.applied_at_ms)},
                             {"orderId", e.order_id},
                             {"type", e.event.type},
                             {"messageId", e.event.message_id},
                             {"sequenceNumber", sequence},
                             {"acceptedAt", e.event.accepted_at_ms == 0
                                              ? nlohmann::json()
                                              : nlohmann::json(format_timestamp(e.event.accepted_at_ms))}};
          if (!feed.print(doc, fmt::format("{} applied        {:<6} {}  message {}, sequence {}",
                                           format_timestamp(e.event.applied_at_ms), e.event.type,
                                           e.order_id, e.event.message_id, sequence))) {
            return exit_code::k_ok;
          }
        }
        if (static_cast<int64_t>(page->entries.size()) < k_page) break;
      }
    }
    if (!opts.applied_only) {
      const int64_t now = clock.now_ms();
      const int64_t window_start = std::max(started, last_poll - k_dead_margin_ms);
      DlqFilter filter;
      filter.newer_than_ms = std::max<int64_t>(1, now - window_start);
      last_poll = now;
      for (int64_t offset = 0;; offset += k_page) {
        auto page = queue->dlq_page(k_page, offset, filter);
        if (!page) return report(page.error());
        for (const auto& m : page->messages) {
          if (m.dead_at_ms < started || !seen_dead.insert(m.message_id).second) continue;
          const auto [order_id, type] = order_of(m.body);
          if (!opts.order_id.empty() && order_id != opts.order_id) continue;
          const std::string sequence = format_sequence(m.seq);
          nlohmann::json doc{{"event", "deadLettered"},
                             {"at", format_timestamp(m.dead_at_ms)},
                             {"orderId", order_id.empty() ? nlohmann::json() : nlohmann::json(order_id)},
                             {"type", type.empty() ? nlohmann::json() : nlohmann::json(type)},
                             {"messageId", m.message_id},
                             {"sequenceNumber", sequence},
                             {"groupId", m.group_id},
                             {"reason", m.dead_reason}};
          if (!feed.print(doc, fmt::format("{} dead-lettered  {:<6} {}  message {}, sequence {}: {}",
                                           format_timestamp(m.dead_at_ms),
                                           type.empty() ? "-" : type,
                                           order_id.empty() ? "-" : order_id, m.message_id,
                                           sequence, log::printable(m.dead_reason)))) {
            return exit_code::k_ok;
          }
        }
        if (static_cast<int64_t>(page->messages.size()) < k_page) break;
      }
    }
    if (stop_signal_within(signals, k_poll_ms)) return exit_code::k_ok;
  }
}

} // namespace

Runner setup_tail(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<TailOptions>();
  sub.add_flag("--applied", opts->applied_only, "Only the events applied");
  sub.add_flag("--dead-lettered", opts->dead_only, "Only the events dead-lettered");
  sub.add_option("--order-id", opts->order_id, "Only the events of this order")->option_text("ID");
  sub.add_option_function<int64_t>(
       "--count",
       [opts](const int64_t& n) { opts->count = n < 1 ? -1 : n; }, // 0 would mean never
       "Exit after N events (default: on SIGINT or SIGTERM)")
    ->option_text("N");
  return [opts, &global] { return run_tail(*opts, global); };
}

} // namespace acmo::cli
