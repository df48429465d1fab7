// Order events, the message bodies of the orders queue (docs/orders.md §1), and their validation.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/util/error.hpp"

namespace acmo {

enum class EventType { create, update, remove };

const char* event_type_name(EventType type); // "CREATE", "UPDATE", "DELETE"
// Accepts the names in any letter case.
Expected<EventType> parse_event_type(std::string_view text);

// Order statuses and the changes allowed between them:
// pending → processing → shipped → delivered, and any non-final status → cancelled.
bool is_order_status(std::string_view status);
bool is_allowed_transition(std::string_view from, std::string_view to);

// Money is kept in integer cents. Parse a JSON number with at most two decimals, ≥ 0 and at
// most k_max_total_cents.
Expected<int64_t> parse_money(const nlohmann::json& value, const std::string& field);

// An order's total, like a unit price, is at most 1,000,000,000.00.
constexpr int64_t k_max_total_cents = 100'000'000'000;
// Add quantity × unit price to `total`; false when that overflows or passes k_max_total_cents.
bool add_line_total(int64_t& total, int64_t quantity, int64_t unit_price_cents);
// The error of an order whose total is over the limit.
Unexpected total_too_large();
// Format cents as a JSON number with exactly the decimals needed ("12.5" → 12.5, "3" → 3).
nlohmann::json money_to_json(int64_t cents);

struct OrderEvent {
  EventType type = EventType::create;
  std::string order_id;
  nlohmann::json data = nlohmann::json::object();
  std::string group_id;        // empty: decided by queue.group_by when sent
  std::string dedup_id;        // empty: content-based
};

// Check `data` for an event of `type`; errors name the field, e.g. "data.items[2].quantity".
// `strict` (an event coming in, not one taken from the queue) also refuses a field that the
// data or an item does not have.
Expected<void> validate_event_data(EventType type, const nlohmann::json& data,
                                   bool strict = false);

// Parse and validate an event from its JSON text (a message body or a JSON Lines line), with
// the rules of parse_json_input; `what` names the text in a JSON error ("the body"). `strict`
// (an event coming in, not one taken from the queue) refuses a field an event does not have
// ("orderid" for orderId would otherwise give a CREATE a new order id).
Expected<OrderEvent> parse_event(std::string_view text, std::string_view what = "body",
                                 bool strict = false);

// Check an order id: 1-128 characters of letters, digits, '_' and '-'. The error's message
// names the id as `name` ("--order-id: must be ..."); its field is orderId.
Expected<void> check_order_id(std::string_view id, std::string_view name = "orderId");

// The message body for an event, in the seed's field names.
std::string event_body(const OrderEvent& event);

// Append `text` to `out` as a JSON string, exactly as nlohmann's dump() writes it (which
// throws on invalid UTF-8).
void append_json_string(std::string& out, std::string_view text);

} // namespace acmo
