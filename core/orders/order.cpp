#include "core/orders/order.hpp"

#include <algorithm>
#include <ctime>

#include <fmt/core.h>

namespace acmo {

Expected<Order> order_from_create(const OrderEvent& event, int64_t now_ms)
{
  if (event.type != EventType::create) {
    return make_error(Errc::internal, "order_from_create needs a CREATE event");
  }
  const auto& data = event.data;
  Order order;
  order.id = event.order_id;
  order.customer_name = data.at("customer_name").get<std::string>();
  order.customer_email = data.at("customer_email").get<std::string>();
  order.created_at_ms = now_ms;
  order.updated_at_ms = now_ms;
  const auto& items = data.at("items");
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& in = items[i];
    OrderItem item;
    item.product_id = in.at("product_id").get<std::string>();
    if (auto name = in.find("name"); name != in.end() && name->is_string()) {
      item.name = name->get<std::string>();
    }
    item.quantity = in.at("quantity").get<int64_t>();
    auto cents = parse_money(in.at("unit_price"), fmt::format("data.items[{}].unit_price", i));
    if (!cents) return Unexpected(cents.error());
    item.unit_price_cents = *cents;
    if (!add_line_total(order.total_cents, item.quantity, item.unit_price_cents)) {
      return total_too_large();
    }
    order.items.push_back(std::move(item));
  }
  return order;
}

Expected<void> apply_status_change(Order& order, std::string_view new_status, int64_t now_ms)
{
  if (!is_order_status(new_status)) {
    return make_error(Errc::invalid_input,
                      fmt::format("data.status: \"{}\" is not an order status", new_status),
                      "data.status");
  }
  if (!is_allowed_transition(order.status, new_status)) {
    return make_error(Errc::conflict,
                      fmt::format("order {} is {}; it cannot become {}", order.id, order.status,
                                  new_status),
                      "data.status");
  }
  order.status = std::string(new_status);
  order.version += 1;
  // A change accepted before the one that last changed the order (a redriven event) does not
  // move its time back.
  order.updated_at_ms = std::max(order.updated_at_ms, now_ms);
  return {};
}

Expected<void> apply_event(std::optional<Order>& order, const OrderEvent& event, int64_t now_ms)
{
  switch (event.type) {
  case EventType::create: {
    if (order) {
      return make_error(Errc::conflict,
                        fmt::format("CREATE for order {}, which already exists", event.order_id),
                        "orderId");
    }
    auto created = order_from_create(event, now_ms);
    if (!created) return Unexpected(created.error());
    order = std::move(*created);
    return {};
  }
  case EventType::update: {
    if (!order) break;
    auto status = event.data.find("status");
    if (status == event.data.end() || !status->is_string()) {
      return make_error(Errc::invalid_input, "data.status: is required", "data.status");
    }
    Order changed = *order;
    if (auto ok = apply_status_change(changed, status->get<std::string>(), now_ms); !ok) return ok;
    order = std::move(changed);
    return {};
  }
  case EventType::remove:
    if (!order) break;
    order.reset();
    return {};
  }
  return make_error(Errc::not_found,
                    fmt::format("{} for order {}, which does not exist (never created, or deleted)",
                                event_type_name(event.type), event.order_id),
                    "orderId");
}

std::string format_timestamp(int64_t ms_since_epoch)
{
  const auto seconds = static_cast<std::time_t>(ms_since_epoch / 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", utc.tm_year + 1900,
                     utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                     ms_since_epoch % 1000);
}

nlohmann::json order_to_json(const Order& order)
{
  nlohmann::json items = nlohmann::json::array();
  for (const auto& item : order.items) {
    nlohmann::json j = {{"product_id", item.product_id},
                        {"quantity", item.quantity},
                        {"unit_price", money_to_json(item.unit_price_cents)}};
    if (!item.name.empty()) j["name"] = item.name;
    items.push_back(std::move(j));
  }
  return {{"id", order.id},
          {"customer_name", order.customer_name},
          {"customer_email", order.customer_email},
          {"items", std::move(items)},
          {"total", money_to_json(order.total_cents)},
          {"status", order.status},
          {"version", order.version},
          {"created_at", format_timestamp(order.created_at_ms)},
          {"updated_at", format_timestamp(order.updated_at_ms)}};
}

} // namespace acmo
