#include <catch2/catch.hpp>

#include "core/orders/order.hpp"

using namespace acmo;

namespace {

OrderEvent create_event(const std::string& data_json)
{
  auto event = parse_event(R"({"type":"CREATE","orderId":"ord_1","data":)" + data_json + "}");
  REQUIRE(event);
  return *event;
}

constexpr int64_t k_now = 1'764'120'996'123; // 2025-11-26T01:36:36.123Z

} // namespace

TEST_CASE("Order: a CREATE makes a pending order with an exact total", "[order]")
{
  auto order = order_from_create(
    create_event(R"({"customer_name":"Ada","customer_email":"ada@example.com","items":[
      {"product_id":"p1","name":"Pen","quantity":3,"unit_price":19.99},
      {"product_id":"p2","quantity":10,"unit_price":0.1},
      {"product_id":"p3","quantity":1,"unit_price":0.2}]})"),
    k_now);
  REQUIRE(order);
  CHECK(order->id == "ord_1");
  CHECK(order->status == "pending");
  CHECK(order->version == 1);
  CHECK(order->items.size() == 3);
  CHECK(order->items[0].unit_price_cents == 1999);
  // 3 x 19.99 + 10 x 0.10 + 0.20 = 61.17, with no binary rounding on the way.
  CHECK(order->total_cents == 6117);
  auto json = order_to_json(*order);
  CHECK(json["total"].dump() == "61.17");
  CHECK(json["items"][0]["unit_price"].dump() == "19.99");
  CHECK(json["items"][1]["unit_price"].dump() == "0.1");
  CHECK(json["items"][0]["name"] == "Pen");
  CHECK_FALSE(json["items"][1].contains("name"));
  CHECK(json["created_at"] == "2025-11-26T01:36:36.123Z");
  CHECK(json["status"] == "pending");
}

TEST_CASE("Order: the seed's CREATE with no items totals 0", "[order]")
{
  auto order = order_from_create(
    create_event(R"({"customer_name":"Test","customer_email":"test@example.com","items":[]})"),
    k_now);
  REQUIRE(order);
  CHECK(order->total_cents == 0);
  CHECK(order_to_json(*order)["total"].dump() == "0");
}

TEST_CASE("Order: a total beyond the largest amount is refused, not wrapped", "[order]")
{
  std::string items = "[";
  for (int i = 0; i < 1000; ++i) {
    items += std::string(i ? "," : "") + R"({"product_id":"p","quantity":1000000,"unit_price":999999999.99})";
  }
  items += "]";
  const std::string data =
    R"({"customer_name":"Big","customer_email":"big@example.com","items":)" + items + "}";
  // Refused when it is sent (the rules of the CLI and the API)...
  auto parsed = parse_event(R"({"type":"CREATE","orderId":"ord_1","data":)" + data + "}");
  REQUIRE_FALSE(parsed);
  CHECK(parsed.error().field == "data.items");
  CHECK_THAT(parsed.error().message, Catch::Contains("total is over 1,000,000,000"));
  // ...and when it is applied, for an event another producer put on the queue.
  OrderEvent event;
  event.type = EventType::create;
  event.order_id = "ord_1";
  event.data = nlohmann::json::parse(data);
  auto order = order_from_create(event, k_now);
  REQUIRE_FALSE(order);
  CHECK(order.error().code == Errc::invalid_input);
  CHECK(order.error().field == "data.items");
}

TEST_CASE("Order: status changes follow the rules of docs/orders.md §2", "[order]")
{
  auto [from, to, allowed] = GENERATE(table<std::string, std::string, bool>({
    {"pending", "processing", true},    {"processing", "shipped", true},
    {"shipped", "delivered", true},     {"pending", "cancelled", true},
    {"processing", "cancelled", true},  {"shipped", "cancelled", true},
    {"pending", "shipped", false},      {"pending", "delivered", false},
    {"processing", "pending", false},   {"shipped", "processing", false},
    {"delivered", "cancelled", false},  {"cancelled", "pending", false},
    {"delivered", "shipped", false},    {"pending", "pending", false},
  }));
  Order order;
  order.id = "ord_9";
  order.status = from;
  auto changed = apply_status_change(order, to, k_now + 5);
  INFO(from << " -> " << to);
  CHECK(bool(changed) == allowed);
  if (allowed) {
    CHECK(order.status == to);
    CHECK(order.version == 2);
    CHECK(order.updated_at_ms == k_now + 5);
  } else {
    CHECK(changed.error().code == Errc::conflict);
    CHECK(changed.error().message.find(from) != std::string::npos);
    CHECK(order.status == from);
    CHECK(order.version == 1);
  }
}

TEST_CASE("Order: an unknown status is invalid input naming the field", "[order]")
{
  Order order;
  auto changed = apply_status_change(order, "lost", k_now);
  REQUIRE_FALSE(changed);
  CHECK(changed.error().code == Errc::invalid_input);
  CHECK(changed.error().field == "data.status");
}

TEST_CASE("Order: timestamps are ISO 8601 UTC with milliseconds", "[order]")
{
  CHECK(format_timestamp(0) == "1970-01-01T00:00:00.000Z");
  CHECK(format_timestamp(1'700'000'000'007) == "2023-11-14T22:13:20.007Z");
}
