// The order model (docs/orders.md §2): what a CREATE makes, what an UPDATE may change, and the JSON the
// API and `acmo orders get` show. Money is integer cents throughout.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/orders/order_event.hpp"
#include "core/util/error.hpp"

namespace acmo {

struct OrderItem {
  std::string product_id;
  std::string name;
  int64_t quantity = 0;
  int64_t unit_price_cents = 0;
};

struct Order {
  std::string id;
  std::string customer_name;
  std::string customer_email;
  std::vector<OrderItem> items;
  int64_t total_cents = 0;
  std::string status = "pending";
  int64_t version = 1; // 1 when created, one more for every applied change
  int64_t created_at_ms = 0;
  int64_t updated_at_ms = 0;
};

// The order a CREATE event makes: status pending, version 1, the total computed exactly.
// The event's data must already be valid (validate_event_data); a total beyond the largest
// amount acmo keeps (10^9 in money, 10^11 cents) is Errc::invalid_input, a permanent error.
Expected<Order> order_from_create(const OrderEvent& event, int64_t now_ms);

// Apply an UPDATE's status change. A change the status rules forbid (docs/orders.md §2: pending →
// processing → shipped → delivered, any non-final status → cancelled) is Errc::conflict, a
// permanent error that names both statuses.
Expected<void> apply_status_change(Order& order, std::string_view new_status, int64_t now_ms);

// Apply an event to the order it names, by the rules every order store shares (docs/orders.md §2).
// `order` is the order as it stands, or nullopt when there is none (an UPDATE or DELETE needs
// only its id, status, version and times, not its items); on success it becomes what the event
// makes of it: the new order for a CREATE, nullopt after a DELETE. The event's data must be
// valid (parse_event). Permanent failures leave `order` as it was: a CREATE of an order that
// exists and a forbidden status change are Errc::conflict, an UPDATE or DELETE of an unknown
// order Errc::not_found, an UPDATE without a status or a total too large Errc::invalid_input.
// `at_ms` dates the change: when the event was accepted (a CREATE's is the order's created_at,
// a change's its updated_at, which never moves back).
Expected<void> apply_event(std::optional<Order>& order, const OrderEvent& event, int64_t at_ms);

// The order as the HTTP API and `acmo orders get` show it: money as JSON numbers with at most
// two decimals, times in ISO 8601 UTC with milliseconds.
nlohmann::json order_to_json(const Order& order);

// "2026-11-26T01:56:36.123Z"
std::string format_timestamp(int64_t ms_since_epoch);

} // namespace acmo
