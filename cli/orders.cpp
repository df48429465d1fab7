// acmo orders get | list | events: read orders and their audit trail from the order store.
#include <algorithm>
#include <array>
#include <memory>

#include <filesystem>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/app.hpp"
#include "cli/output.hpp"
#include "core/cache/cached_orders.hpp"
#include "core/config/backends.hpp"
#include "core/store/order_store.hpp"
#include "core/util/ids.hpp"
#include "core/util/paths.hpp"

namespace acmo::cli {

namespace {

struct OrdersOptions {
  std::string id;
  std::string status;
  int64_t limit = 50;
  int64_t offset = 0;
};

constexpr int64_t k_max_limit = 1000;
constexpr const char* k_statuses = "pending, processing, shipped, delivered or cancelled";

bool postgres(const GlobalOptions& global)
{
  return config(global).settings().store.backend == "postgres";
}

// What the commands read through: the configured store behind the configured cache
// (cache-aside, as the HTTP API reads). The embedded store is the data dir's: reading creates
// nothing there, so a data dir without a database is an error (exit 3), and a typo in
// --data-dir, or a shell completion asking for order ids, leaves no empty database behind; the
// queue is opened first, since it migrates the schema of a database an older acmo wrote. A
// PostgreSQL server that does not answer is exit 75.
struct Reader {
  std::unique_ptr<OrderStore> store;
  std::unique_ptr<Cache> cache;
  std::unique_ptr<CachedOrders> orders;
};

Reader open_reader(const GlobalOptions& global)
{
  std::string db;
  if (!postgres(global)) {
    db = database_path(data_dir(global));
    open_existing_queue(global);
  }
  Reader r;
  auto store = open_order_store(config(global), db);
  if (!store) throw Fatal(store.error());
  r.store = std::move(*store);
  r.cache = open_cache(config(global));
  r.orders = std::make_unique<CachedOrders>(*r.store, r.cache.get());
  return r;
}

int no_such_order(const std::string& id, const GlobalOptions& global)
{
  const std::string where = postgres(global) ? "the PostgreSQL order store (store.url)"
                                             : "the data dir " + data_dir(global);
  print_error(fmt::format("no order {} in {}; `acmo orders list` shows the orders there (a "
                          "CREATE counts once the handler has applied it)",
                          id, where));
  return exit_code::k_not_found;
}

// The order back from the JSON the cache keeps (order_to_json), for the tables.
Order order_from_json(const nlohmann::json& j)
{
  auto cents = [](const nlohmann::json& value) {
    auto c = parse_money(value, "money");
    return c ? *c : 0;
  };
  Order o;
  o.id = j.value("id", "");
  o.customer_name = j.value("customer_name", "");
  o.customer_email = j.value("customer_email", "");
  o.total_cents = cents(j.value("total", nlohmann::json(0)));
  o.status = j.value("status", "");
  o.version = j.value("version", int64_t{0});
  for (const auto& item : j.value("items", nlohmann::json::array())) {
    o.items.push_back(OrderItem{item.value("product_id", ""), item.value("name", ""),
                                item.value("quantity", int64_t{0}),
                                cents(item.value("unit_price", nlohmann::json(0)))});
  }
  return o;
}

int check_id(const std::string& id)
{
  if (auto ok = check_order_id(id); !ok) return report(ok.error());
  return exit_code::k_ok;
}

// Columns are padded by characters, not bytes, so that names in UTF-8 line up.
size_t text_width(std::string_view text)
{
  size_t width = 0;
  for (char c : text) {
    if ((static_cast<unsigned char>(c) & 0xC0U) != 0x80U) ++width;
  }
  return width;
}

std::string pad(std::string text, size_t width)
{
  const size_t w = text_width(text);
  if (w < width) text.append(width - w, ' ');
  return text;
}

std::string pad_left(const std::string& text, size_t width)
{
  const size_t w = text_width(text);
  return w < width ? std::string(width - w, ' ') + text : text;
}

int run_get(const OrdersOptions& opts, const GlobalOptions& global)
{
  if (int rc = check_id(opts.id); rc != exit_code::k_ok) return rc;
  auto reader = open_reader(global);
  auto text = reader.orders->get_json(opts.id);
  if (!text) {
    if (text.error().code == Errc::not_found) return no_such_order(opts.id, global);
    return report(text.error());
  }
  const auto doc = nlohmann::json::parse(*text);
  if (global.json) {
    print_json(doc);
    return exit_code::k_ok;
  }
  const Order o = order_from_json(doc);
  fmt::print("order {}\n", o.id);
  print_table({
    {"  status", o.status},
    {"  customer", fmt::format("{} <{}>", o.customer_name, o.customer_email)},
    {"  total", money(o.total_cents)},
    {"  version", std::to_string(o.version)},
    {"  created", doc.value("created_at", "")},
    {"  updated", doc.value("updated_at", "")},
  });
  if (o.items.empty()) {
    fmt::print("no items\n");
    return exit_code::k_ok;
  }
  fmt::print("items\n");
  size_t product_width = 0;
  size_t name_width = 0;
  size_t quantity_width = 0;
  size_t price_width = 0;
  size_t line_width = 0;
  // quantity × unit price fits: the core refuses totals over 10^11 cents.
  auto line_total = [](const OrderItem& item) {
    return money(item.quantity * item.unit_price_cents);
  };
  for (const auto& item : o.items) {
    product_width = std::max(product_width, text_width(item.product_id));
    name_width = std::max(name_width, text_width(item.name));
    quantity_width = std::max(quantity_width, std::to_string(item.quantity).size());
    price_width = std::max(price_width, money(item.unit_price_cents).size());
    line_width = std::max(line_width, line_total(item).size());
  }
  for (const auto& item : o.items) {
    fmt::print("  {}  {}  {} x {} = {}\n", pad(item.product_id, product_width),
               pad(item.name, name_width), pad_left(std::to_string(item.quantity), quantity_width),
               pad_left(money(item.unit_price_cents), price_width),
               pad_left(line_total(item), line_width));
  }
  return exit_code::k_ok;
}

int run_list(const OrdersOptions& opts, const GlobalOptions& global)
{
  if (!opts.status.empty() && !is_order_status(opts.status)) {
    throw Fatal(fmt::format("--status must be {} (got '{}')", k_statuses, opts.status),
                exit_code::k_usage);
  }
  if (opts.limit < 1 || opts.limit > k_max_limit) {
    throw Fatal(fmt::format("--limit must be between 1 and {} (got {})", k_max_limit, opts.limit),
                exit_code::k_usage);
  }
  if (opts.offset < 0) {
    throw Fatal(fmt::format("--offset must be 0 or more (got {})", opts.offset),
                exit_code::k_usage);
  }
  auto reader = open_reader(global);
  auto text = reader.orders->list_json(opts.status, opts.limit, opts.offset);
  if (!text) return report(text.error());
  const auto doc = nlohmann::json::parse(*text);
  if (global.json) {
    print_json(doc);
    return exit_code::k_ok;
  }
  const auto total = doc.value("total", int64_t{0});
  std::vector<std::pair<Order, std::string>> orders; // with created_at as shown
  for (const auto& j : doc.value("orders", nlohmann::json::array())) {
    orders.emplace_back(order_from_json(j), j.value("created_at", ""));
  }
  const std::string what = opts.status.empty() ? "orders" : opts.status + " orders";
  if (orders.empty()) {
    if (total == 0) {
      fmt::print("no {}\n", what);
    } else {
      fmt::print("no {} past offset {} ({} in all)\n", what, opts.offset, total);
    }
    return exit_code::k_ok;
  }
  std::vector<std::array<std::string, 5>> rows;
  rows.push_back({"ID", "STATUS", "TOTAL", "CUSTOMER", "CREATED"});
  for (const auto& [o, created] : orders) {
    rows.push_back({o.id, o.status, money(o.total_cents), o.customer_name, created});
  }
  std::array<size_t, 5> widths{};
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], text_width(row[i]));
  }
  for (const auto& row : rows) {
    fmt::print("{}  {}  {}  {}  {}\n", pad(row[0], widths[0]), pad(row[1], widths[1]),
               pad_left(row[2], widths[2]), pad(row[3], widths[3]), row[4]);
  }
  const auto shown = static_cast<int64_t>(orders.size());
  if (shown == total) {
    fmt::print("{} {}\n", shown, shown == 1 ? what.substr(0, what.size() - 1) : what);
  } else {
    fmt::print("{} {}-{} of {}\n", what, opts.offset + 1, opts.offset + shown, total);
  }
  return exit_code::k_ok;
}

int run_events(const OrdersOptions& opts, const GlobalOptions& global)
{
  if (int rc = check_id(opts.id); rc != exit_code::k_ok) return rc;
  auto reader = open_reader(global);
  auto events = reader.orders->events(opts.id);
  if (!events) {
    if (events.error().code == Errc::not_found) return no_such_order(opts.id, global);
    return report(events.error());
  }
  // An order that never had an event applied is unknown; a deleted one keeps its trail.
  if (events->empty()) return no_such_order(opts.id, global);
  if (global.json) {
    print_json(order_events_json(*events));
    return exit_code::k_ok;
  }
  for (const auto& e : *events) {
    fmt::print("{}  {}  {:<6}  {}  message {}\n", format_timestamp(e.applied_at_ms),
               format_sequence(e.seq), e.type,
               e.data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
               e.message_id);
  }
  return exit_code::k_ok;
}

} // namespace

Runner setup_orders(CLI::App& sub, const GlobalOptions& global)
{
  auto opts = std::make_shared<OrdersOptions>();
  sub.require_subcommand(1);
  auto* get = sub.add_subcommand("get", "Show one order: its fields, items and total");
  get->add_option("id", opts->id, "The order id")->option_text("ID")->required();
  auto* list = sub.add_subcommand("list", "List orders, newest first, with their total count");
  list->add_option("--status", opts->status, fmt::format("Only orders that are {}", k_statuses))
    ->option_text("S");
  list->add_option("--limit", opts->limit,
                   fmt::format("Show at most N orders, 1-{} (default 50)", k_max_limit))
    ->option_text("N");
  list->add_option("--offset", opts->offset, "Skip the first N orders (default 0)")
    ->option_text("N");
  auto* events = sub.add_subcommand("events", "Show an order's audit trail: its applied events");
  events->add_option("id", opts->id, "The order id")->option_text("ID")->required();
  return [opts, get, list, events, &global] {
    if (get->parsed()) return run_get(*opts, global);
    if (list->parsed()) return run_list(*opts, global);
    if (events->parsed()) return run_events(*opts, global);
    return exit_code::k_usage;
  };
}

} // namespace acmo::cli
