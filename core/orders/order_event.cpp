#include "core/orders/order_event.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <utility>

#include <fmt/core.h>

#include "core/queue/limits.hpp"
#include "core/util/json_input.hpp"
#include "core/util/suggest.hpp"

namespace acmo {

namespace {

using nlohmann::json;

constexpr std::array<std::string_view, 5> k_statuses = {"pending", "processing", "shipped",
                                                        "delivered", "cancelled"};
constexpr int64_t k_max_cents = k_max_total_cents; // a unit price, as the total
constexpr size_t k_max_items = 1000;

Unexpected invalid(std::string field, std::string message)
{
  return make_error(Errc::invalid_input, fmt::format("{}: {}", field, message), field);
}

// The decimals of a number written as fmt writes a double: "12.5" 1, "1e-09" 9, "1.5e-07" 8,
// "1e+20" 0.
int decimals_of(std::string_view text)
{
  int exponent = 0;
  if (const auto e = text.find('e'); e != std::string_view::npos) {
    exponent = std::atoi(std::string(text.substr(e + 1)).c_str());
    text = text.substr(0, e);
  }
  const auto dot = text.find('.');
  const int fraction = dot == std::string_view::npos ? 0 : static_cast<int>(text.size() - dot - 1);
  return std::max(0, fraction - exponent);
}

bool valid_email(std::string_view s)
{
  if (s.size() < 3 || s.size() > 254) return false;
  auto at = s.find('@');
  if (at == std::string_view::npos || at == 0 || s.find('@', at + 1) != std::string_view::npos) {
    return false;
  }
  auto local = s.substr(0, at);
  auto domain = s.substr(at + 1);
  if (local.size() > 64 || domain.empty() || domain.front() == '.' || domain.back() == '.'
      || domain.find('.') == std::string_view::npos || domain.find("..") != std::string_view::npos) {
    return false;
  }
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '(' || c == ')' || c == ',' || c == ':' || c == ';'
        || c == '<' || c == '>' || c == '[' || c == ']' || c == '\\' || c == '"') {
      return false;
    }
  }
  return true;
}

// The length of a UTF-8 string in code points (the text was validated as UTF-8 by the parser).
size_t utf8_length(std::string_view s)
{
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xc0) != 0x80;
  return n;
}

Expected<void> check_text(const json& data, const char* key, std::string field, size_t min,
                          size_t max, bool required)
{
  auto it = data.find(key);
  if (it == data.end() || it->is_null()) {
    if (required) return invalid(field, "is required");
    return {};
  }
  if (!it->is_string()) return invalid(field, fmt::format("must be a string, not {}", it->type_name()));
  const auto& text = it->get_ref<const std::string&>();
  auto len = utf8_length(text);
  if (len < min || len > max) {
    return invalid(field, fmt::format("must be {} to {} characters long, not {}", min, max, len));
  }
  // Plain text of one line: a control character (a newline, or ESC, which a terminal showing
  // `acmo orders get` would obey) has no place in a name or an id. C0, DEL and C1 (U+0080 to
  // U+009F, "\xc2\x80" to "\xc2\x9f" in UTF-8).
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    const bool c1 = c == 0xc2 && i + 1 < text.size()
                    && static_cast<unsigned char>(text[i + 1]) >= 0x80
                    && static_cast<unsigned char>(text[i + 1]) <= 0x9f;
    if (c < 0x20 || c == 0x7f || c1) {
      const unsigned code = c1 ? static_cast<unsigned char>(text[i + 1]) : c;
      return invalid(field, fmt::format("holds the control character U+{:04X}; write it as plain "
                                        "text on one line",
                                        code));
    }
  }
  return {};
}

// The error for a field `key` that an object the sender wrote (at `where`: "data",
// "data.items[0]", or empty for the event itself) does not have. The name is quoted as JSON
// (control characters escaped) and cut short: it is the sender's.
Unexpected unknown_field(std::string_view where, const std::string& key, std::string_view of,
                         const std::vector<std::string>& fields, std::string_view has)
{
  const std::string guess = closest_name(key, fields);
  std::string name = json(key).dump();
  if (name.size() > 66) name = name.substr(0, 64) + "...\"";
  return make_error(Errc::invalid_input,
                    fmt::format("{}{}{} is not a field of {} ({}{})", where,
                                where.empty() ? "" : ": ", name, of,
                                guess.empty() ? "" : fmt::format("did you mean {}? ", guess), has),
                    where.empty() ? key : fmt::format("{}.{}", where, key));
}

// At send time, a field the object does not have is a typo that would otherwise be dropped
// unseen ("nmae" for an item's optional name).
Expected<void> only_fields(const json& object, std::string_view where, std::string_view of,
                           const std::vector<std::string>& fields, std::string_view has)
{
  for (const auto& [key, value] : object.items()) {
    if (std::find(fields.begin(), fields.end(), key) == fields.end()) {
      return unknown_field(where, key, of, fields, has);
    }
  }
  return {};
}

Expected<void> validate_create(const json& data, bool strict)
{
  if (strict) {
    static const std::vector<std::string> k_fields = {"customer_name", "customer_email", "items"};
    if (auto ok = only_fields(data, "data", "a CREATE", k_fields,
                              "its data has customer_name, customer_email and items");
        !ok) {
      return ok;
    }
  }
  if (auto ok = check_text(data, "customer_name", "data.customer_name", 1, 200, true); !ok) return ok;
  auto email = data.find("customer_email");
  if (email == data.end() || email->is_null()) return invalid("data.customer_email", "is required");
  if (!email->is_string() || !valid_email(email->get_ref<const std::string&>())) {
    return invalid("data.customer_email", "must be an email address such as name@example.com");
  }
  auto items = data.find("items");
  if (items == data.end() || items->is_null()) return invalid("data.items", "is required (use [] for none)");
  if (!items->is_array()) return invalid("data.items", "must be an array");
  if (items->size() > k_max_items) {
    return invalid("data.items", fmt::format("holds {} items; the limit is {}", items->size(), k_max_items));
  }
  int64_t total = 0;
  for (size_t i = 0; i < items->size(); ++i) {
    const auto& item = (*items)[i];
    const std::string base = fmt::format("data.items[{}]", i);
    if (!item.is_object()) return invalid(base, "must be an object");
    if (strict) {
      static const std::vector<std::string> k_fields = {"product_id", "name", "quantity",
                                                        "unit_price"};
      if (auto ok = only_fields(item, base, "an item", k_fields,
                                "an item has product_id, name, quantity and unit_price");
          !ok) {
        return ok;
      }
    }
    if (auto ok = check_text(item, "product_id", base + ".product_id", 1, 128, true); !ok) return ok;
    if (auto ok = check_text(item, "name", base + ".name", 0, 200, false); !ok) return ok;
    auto qty = item.find("quantity");
    if (qty == item.end() || qty->is_null()) return invalid(base + ".quantity", "is required");
    if (!qty->is_number_integer()) return invalid(base + ".quantity", "must be a whole number");
    // nlohmann parses every non-negative integer in JSON text as unsigned, so the lower bound
    // must be checked on that branch too, or a quantity of 0 slips through.
    if (qty->is_number_unsigned()
          ? (qty->get<uint64_t>() < 1 || qty->get<uint64_t>() > 1'000'000)
          : (qty->get<int64_t>() < 1 || qty->get<int64_t>() > 1'000'000)) {
      return invalid(base + ".quantity", "must be between 1 and 1000000");
    }
    auto price = item.find("unit_price");
    if (price == item.end() || price->is_null()) return invalid(base + ".unit_price", "is required");
    auto cents = parse_money(*price, base + ".unit_price");
    if (!cents) return Unexpected(cents.error());
    // The handler computes the same total (order_from_create) and refuses it there too, for
    // events other producers queue; refused here, a sender learns it at once.
    if (!add_line_total(total, qty->get<int64_t>(), *cents)) return total_too_large();
  }
  return {};
}

} // namespace

bool add_line_total(int64_t& total, int64_t quantity, int64_t unit_price_cents)
{
  int64_t line = 0;
  return !__builtin_mul_overflow(quantity, unit_price_cents, &line)
         && !__builtin_add_overflow(total, line, &total) && total <= k_max_total_cents;
}

Unexpected total_too_large()
{
  return make_error(Errc::invalid_input,
                    "data.items: the order's total is over 1,000,000,000; split the order",
                    "data.items");
}

const char* event_type_name(EventType type)
{
  switch (type) {
  case EventType::create: return "CREATE";
  case EventType::update: return "UPDATE";
  case EventType::remove: return "DELETE";
  }
  return "CREATE";
}

Expected<EventType> parse_event_type(std::string_view text)
{
  std::string upper;
  for (char c : text) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (upper == "CREATE") return EventType::create;
  if (upper == "UPDATE") return EventType::update;
  if (upper == "DELETE") return EventType::remove;
  return invalid("type", fmt::format("\"{}\" is not an event type; use CREATE, UPDATE or DELETE", text));
}

bool is_order_status(std::string_view status)
{
  for (auto s : k_statuses) {
    if (s == status) return true;
  }
  return false;
}

bool is_allowed_transition(std::string_view from, std::string_view to)
{
  if (from == "pending") return to == "processing" || to == "cancelled";
  if (from == "processing") return to == "shipped" || to == "cancelled";
  if (from == "shipped") return to == "delivered" || to == "cancelled";
  return false; // delivered and cancelled are final
}

Expected<int64_t> parse_money(const json& value, const std::string& field)
{
  if (!value.is_number()) return invalid(field, "must be a number such as 19.99");
  if (value.is_number_integer()) {
    if (value.is_number_unsigned()) {
      auto v = value.get<uint64_t>();
      if (v > static_cast<uint64_t>(k_max_cents / 100)) return invalid(field, "is too large");
      return static_cast<int64_t>(v) * 100;
    }
    auto v = value.get<int64_t>();
    if (v < 0) return invalid(field, "must not be negative");
    if (v > k_max_cents / 100) return invalid(field, "is too large");
    return v * 100;
  }
  double v = value.get<double>();
  if (!std::isfinite(v)) return invalid(field, "must be a finite number");
  if (v < 0) return invalid(field, "must not be negative");
  if (v > static_cast<double>(k_max_cents) / 100.0) return invalid(field, "is too large");
  // The shortest decimal text that reads back as v ("19.99", "1e-09", "12.3400000001") holds
  // the digits of the JSON text (every decimal of up to 15 significant digits reads back
  // exactly), so its decimals are the ones the sender wrote. Rounding v * 100 would take
  // 12.3400000001 for 12.34.
  if (decimals_of(fmt::format("{}", v)) > 2) {
    return invalid(field, "has more than two decimals; money is in whole cents");
  }
  return static_cast<int64_t>(std::llround(v * 100.0));
}

json money_to_json(int64_t cents)
{
  if (cents % 100 == 0) return json(cents / 100);
  // Two decimals printed exactly: parse the decimal text so the double is the nearest one.
  return json::parse(fmt::format("{}.{:02}", cents / 100, cents % 100));
}

Expected<void> check_order_id(std::string_view id, std::string_view name)
{
  const auto refused = [name](std::string_view why) {
    return make_error(Errc::invalid_input, fmt::format("{}: {}", name, why), "orderId");
  };
  if (id.empty() || id.size() > 128) return refused("must be 1 to 128 characters long");
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') {
      return refused("may hold only letters, digits, '_' and '-'");
    }
  }
  return {};
}

Expected<void> validate_event_data(EventType type, const json& data, bool strict)
{
  if (!data.is_object()) return invalid("data", "must be a JSON object");
  switch (type) {
  case EventType::create: return validate_create(data, strict);
  case EventType::update: {
    if (strict) {
      static const std::vector<std::string> k_fields = {"status"};
      if (auto ok = only_fields(data, "data", "an UPDATE", k_fields,
                                "an order's status is the only field that can change; send "
                                "{\"status\": \"...\"}");
          !ok) {
        return ok;
      }
    }
    auto status = data.find("status");
    if (status == data.end() || status->is_null()) return invalid("data.status", "is required");
    if (!status->is_string() || !is_order_status(status->get_ref<const std::string&>())) {
      return invalid("data.status",
                     "must be one of pending, processing, shipped, delivered, cancelled");
    }
    return {};
  }
  case EventType::remove:
    if (strict) return only_fields(data, "data", "a DELETE", {}, "a DELETE takes no data: send {} or none");
    return {};
  }
  return {};
}

Expected<OrderEvent> parse_event(std::string_view text, std::string_view what, bool strict)
{
  auto read = parse_json_input(text, what);
  if (!read) return Unexpected(read.error());
  json& doc = *read;
  if (!doc.is_object()) {
    return make_error(Errc::invalid_input,
                      fmt::format("{} must be a JSON object, not {}", what, doc.type_name()),
                      "body");
  }
  if (strict) {
    static const std::vector<std::string> k_fields = {"type", "orderId", "data", "groupId",
                                                      "deduplicationId"};
    if (auto ok = only_fields(doc, "", "an event", k_fields,
                              "an event has type, orderId, data, groupId and deduplicationId");
        !ok) {
      return Unexpected(ok.error());
    }
  }
  OrderEvent event;
  auto type = doc.find("type");
  if (type == doc.end() || !type->is_string()) return invalid("type", "is required: CREATE, UPDATE or DELETE");
  auto parsed = parse_event_type(type->get_ref<const std::string&>());
  if (!parsed) return Unexpected(parsed.error());
  event.type = *parsed;
  auto order_id = doc.find("orderId");
  if (order_id != doc.end() && !order_id->is_null()) {
    if (!order_id->is_string()) return invalid("orderId", "must be a string");
    event.order_id = order_id->get<std::string>();
  }
  if (event.order_id.empty() && event.type != EventType::create) {
    return invalid("orderId", fmt::format("is required for {}", event_type_name(event.type)));
  }
  if (!event.order_id.empty()) {
    if (auto ok = check_order_id(event.order_id); !ok) return Unexpected(ok.error());
  }
  auto data = doc.find("data");
  if (data != doc.end() && !data->is_null()) event.data = std::move(*data); // doc is ours
  if (auto ok = validate_event_data(event.type, event.data, strict); !ok) {
    return Unexpected(ok.error());
  }
  for (auto [key, target] : {std::pair{"groupId", &event.group_id},
                             std::pair{"deduplicationId", &event.dedup_id}}) {
    auto it = doc.find(key);
    if (it == doc.end() || it->is_null()) continue;
    if (!it->is_string()) return invalid(key, "must be a string");
    *target = it->get<std::string>();
    if (auto ok = limits::check_id(*target, key); !ok) return Unexpected(ok.error());
  }
  return event;
}

void append_json_string(std::string& out, std::string_view text)
{
  for (const char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      out += json(std::string(text)).dump(); // nlohmann checks the UTF-8
      return;
    }
  }
  out += '"';
  for (const char c : text) {
    switch (c) {
    case '"': out += "\\\""; break;
    case '\\': out += "\\\\"; break;
    case '\b': out += "\\b"; break;
    case '\f': out += "\\f"; break;
    case '\n': out += "\\n"; break;
    case '\r': out += "\\r"; break;
    case '\t': out += "\\t"; break;
    default:
      if (static_cast<unsigned char>(c) < 0x20) {
        out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
      } else {
        out += c;
      }
    }
  }
  out += '"';
}

std::string event_body(const OrderEvent& event)
{
  // Written out rather than made a json document, which would copy the event's data: the
  // same text, with the keys in the order nlohmann writes them (sorted).
  std::string out = "{\"data\":";
  out += event.data.dump();
  if (!event.dedup_id.empty()) {
    out += ",\"deduplicationId\":";
    append_json_string(out, event.dedup_id);
  }
  if (!event.group_id.empty()) {
    out += ",\"groupId\":";
    append_json_string(out, event.group_id);
  }
  out += ",\"orderId\":";
  append_json_string(out, event.order_id);
  out += ",\"type\":";
  append_json_string(out, event_type_name(event.type));
  out += '}';
  return out;
}

} // namespace acmo
