// acmo peek [--group G] [--order-id ID] [--limit N]: browse the waiting messages without
// receiving them (docs/commands.md §16).
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "core/orders/order.hpp"
#include "core/orders/order_event.hpp"
#include "core/queue/queue_json.hpp"
#include "core/util/ids.hpp"
#include "core/util/log.hpp"

namespace acmo::cli {

namespace {

struct PeekOptions {
  std::string group;
  std::string order_id;
  int64_t limit = 50;
};

// "CREATE ord_1" for an order event, else the start of the body.
std::string summary(const std::string& body)
{
  if (auto event = parse_event(body)) {
    return fmt::format("{} {}", event_type_name(event->type), event->order_id);
  }
  std::string text = body.substr(0, 60);
  for (char& c : text) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  text = log::printable(text);
  return body.size() > 60 ? text + "..." : text;
}

int run_peek(const PeekOptions& opts, const GlobalOptions& global)
{
  if (opts.limit < 1 || opts.limit > 1000) {
    throw Fatal("--limit must be 1 to 1000", exit_code::k_usage);
  }
  if (!opts.order_id.empty()) {
    if (auto ok = check_order_id(opts.order_id, "--order-id"); !ok) {
      throw Fatal(ok.error().message, exit_code::k_usage);
    }
  }
  auto queue = open_existing_queue(global);
  PeekFilter filter;
  filter.group_id = opts.group;
  if (!opts.order_id.empty()) {
    filter.field = "orderId";
    filter.value = opts.order_id;
  }
  filter.limit = opts.limit;
  auto messages = queue->peek(filter);
  if (!messages) return report(messages.error());
  const int64_t now = queue->now_ms();
  if (global.json) {
    print_json(waiting_messages_json(*messages, now));
    return exit_code::k_ok;
  }
  if (messages->empty()) {
    const bool filtered = !opts.group.empty() || !opts.order_id.empty();
    if (!global.quiet) fmt::print("no message waits{}\n", filtered ? " that matches" : "");
    return exit_code::k_ok;
  }
  for (const auto& m : *messages) {
    fmt::print("{}  {}  {}  {:<8}  {}\n", format_sequence(m.seq), m.message_id, m.group_id,
               waiting_state(m, now), summary(m.body));
  }
  return exit_code::k_ok;
}

} // namespace

Runner setup_peek(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<PeekOptions>();
  sub.add_option("--group", opts->group, "Only the messages of this message group")
    ->option_text("G");
  sub.add_option("--order-id", opts->order_id, "Only the events of this order")->option_text("ID");
  sub.add_option("--limit", opts->limit, "At most N messages, oldest first (default 50)")
    ->option_text("N");
  return [=, &global] { return run_peek(*opts, global); };
}

} // namespace acmo::cli
