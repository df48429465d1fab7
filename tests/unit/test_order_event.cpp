#include <cstdint>
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/orders/order_event.hpp"
#include "core/orders/submit.hpp"

using namespace acmo;
using nlohmann::json;

namespace {

json valid_create_data()
{
  return json::parse(R"({
    "customer_name": "Ada Lovelace",
    "customer_email": "ada@example.com",
    "items": [
      {"product_id": "p-1", "name": "Widget", "quantity": 2, "unit_price": 19.99},
      {"product_id": "p-2", "quantity": 1, "unit_price": 5}
    ]
  })");
}

std::string create_event(const json& data)
{
  return json{{"type", "CREATE"}, {"orderId", "ord_1"}, {"data", data}}.dump();
}

// The field an event's validation blames, or "" when it is valid.
std::string failing_field(const std::string& text)
{
  auto result = parse_event(text);
  if (result) return "";
  CHECK(result.error().code == Errc::invalid_input);
  // The message leads with the field so that a user sees at once what to fix.
  CHECK_THAT(result.error().message, Catch::StartsWith(result.error().field));
  return result.error().field;
}

} // namespace

TEST_CASE("order events: a valid CREATE is parsed with its data", "[order_event]")
{
  auto event = parse_event(create_event(valid_create_data()));
  REQUIRE(event);
  CHECK(event->type == EventType::create);
  CHECK(event->order_id == "ord_1");
  CHECK(event->data == valid_create_data());
  CHECK(event->group_id.empty());
  CHECK(event->dedup_id.empty());
}

TEST_CASE("order events: CREATE may leave out orderId and may have no items", "[order_event]")
{
  auto data = valid_create_data();
  data["items"] = json::array();
  auto event = parse_event(json{{"type", "create"}, {"data", data}}.dump());
  REQUIRE(event);
  CHECK(event->type == EventType::create);
  CHECK(event->order_id.empty());
}

TEST_CASE("order events: groupId and deduplicationId are read and checked", "[order_event]")
{
  json doc = {{"type", "UPDATE"},
              {"orderId", "ord_9"},
              {"data", {{"status", "shipped"}}},
              {"groupId", "ord_9"},
              {"deduplicationId", "upd-9-1"}};
  auto event = parse_event(doc.dump());
  REQUIRE(event);
  CHECK(event->group_id == "ord_9");
  CHECK(event->dedup_id == "upd-9-1");

  doc["groupId"] = "has space";
  CHECK(failing_field(doc.dump()) == "groupId");
  doc["groupId"] = "ok";
  doc["deduplicationId"] = std::string(129, 'd');
  CHECK(failing_field(doc.dump()) == "deduplicationId");
}

TEST_CASE("order events: invalid CREATE data is rejected naming the field", "[order_event]")
{
  auto data = valid_create_data();
  std::string expected;

  SECTION("customer_name missing")
  {
    data.erase("customer_name");
    expected = "data.customer_name";
  }
  SECTION("customer_name empty")
  {
    data["customer_name"] = "";
    expected = "data.customer_name";
  }
  SECTION("customer_name over 200 characters")
  {
    data["customer_name"] = std::string(201, 'n');
    expected = "data.customer_name";
  }
  SECTION("customer_email missing")
  {
    data.erase("customer_email");
    expected = "data.customer_email";
  }
  SECTION("customer_email not an address")
  {
    data["customer_email"] = GENERATE("ada", "ada@", "@example.com", "ada@example",
                                      "ada@@example.com", "a da@example.com", "ada@.example.com",
                                      "ada@example..com");
    expected = "data.customer_email";
  }
  SECTION("items missing")
  {
    data.erase("items");
    expected = "data.items";
  }
  SECTION("items not an array")
  {
    data["items"] = json::object();
    expected = "data.items";
  }
  SECTION("an item not an object")
  {
    data["items"][1] = "p-2";
    expected = "data.items[1]";
  }
  SECTION("an item without product_id")
  {
    data["items"][0].erase("product_id");
    expected = "data.items[0].product_id";
  }
  SECTION("quantity 0")
  {
    data["items"][0]["quantity"] = 0;
    expected = "data.items[0].quantity";
  }
  SECTION("quantity negative in the second item")
  {
    data["items"][1]["quantity"] = -3;
    expected = "data.items[1].quantity";
  }
  SECTION("quantity not whole")
  {
    data["items"][0]["quantity"] = 1.5;
    expected = "data.items[0].quantity";
  }
  SECTION("unit_price with three decimals")
  {
    data["items"][0]["unit_price"] = json::parse("19.999");
    expected = "data.items[0].unit_price";
  }
  SECTION("unit_price negative")
  {
    data["items"][1]["unit_price"] = json::parse("-0.01");
    expected = "data.items[1].unit_price";
  }
  SECTION("unit_price a string")
  {
    data["items"][0]["unit_price"] = "19.99";
    expected = "data.items[0].unit_price";
  }
  SECTION("unit_price missing")
  {
    data["items"][0].erase("unit_price");
    expected = "data.items[0].unit_price";
  }
  SECTION("data not an object")
  {
    data = json::array();
    expected = "data";
  }
  SECTION("customer_name with ESC, which a terminal would obey")
  {
    data["customer_name"] = "X\x1b]0;pwned\x07\x1b[2J";
    expected = "data.customer_name";
  }
  SECTION("customer_name on two lines")
  {
    data["customer_name"] = "Ada\nLovelace";
    expected = "data.customer_name";
  }
  SECTION("product_id with a C1 control character")
  {
    data["items"][0]["product_id"] = "p\xc2\x9b" "1";
    expected = "data.items[0].product_id";
  }
  SECTION("item name with DEL")
  {
    data["items"][1]["name"] = "Widget\x7f";
    expected = "data.items[1].name";
  }
  CHECK(failing_field(create_event(data)) == expected);
}

TEST_CASE("order events: names hold any printable text, control characters are named",
          "[order_event]")
{
  auto data = valid_create_data();
  // An em dash, an emoji and U+00A0 (after the C1 range).
  data["customer_name"] = "Zoë Ångström \u2014 \U0001F600 \u00a0";
  CHECK(parse_event(create_event(data)));
  data["customer_name"] = "tab\there";
  auto refused = parse_event(create_event(data));
  REQUIRE_FALSE(refused);
  CHECK_THAT(refused.error().message,
             Catch::Contains("holds the control character U+0009; write it as plain text on one "
                             "line"));
}

TEST_CASE("order events: money is parsed into exact integer cents", "[order_event]")
{
  auto [text, cents] = GENERATE(table<std::string, int64_t>({
    {"19.99", 1999},
    {"12.340", 1234},
    {"1.2e1", 1200},
    {"1234e-2", 1234},
    {"0.1", 10},
    {"0.29", 29}, // 0.29 * 100 is 28.999999999999996 in binary floating point
    {"1.15", 115},
    {"0", 0},
    {"0.0", 0},
    {"7", 700},
    {"12.5", 1250},
    {"999999999.99", 99'999'999'999},
    {"1000000000", 100'000'000'000},
  }));
  INFO(text);
  auto parsed = parse_money(json::parse(text), "price");
  REQUIRE(parsed);
  CHECK(*parsed == cents);
}

TEST_CASE("order events: money with more than two decimals or below zero is rejected",
          "[order_event]")
{
  auto text = GENERATE(as<std::string>{}, "19.999", "1.005", "0.001", "-1", "-0.5", "1e-3",
                       "1e-9", "12.3400000001", "0.000000001", "999999999.999", "1000000000.01",
                       "\"5\"", "null", "true");
  INFO(text);
  auto parsed = parse_money(json::parse(text), "data.items[0].unit_price");
  REQUIRE_FALSE(parsed);
  CHECK(parsed.error().code == Errc::invalid_input);
  CHECK(parsed.error().field == "data.items[0].unit_price");
}

TEST_CASE("order events: money is written back with only the decimals it needs",
          "[order_event]")
{
  CHECK(money_to_json(1999).dump() == "19.99");
  CHECK(money_to_json(1250).dump() == "12.5");
  CHECK(money_to_json(300).dump() == "3");
  CHECK(money_to_json(5).dump() == "0.05");
  CHECK(money_to_json(0).dump() == "0");
  // What is written parses back to the same cents.
  for (int64_t cents : {int64_t{1}, int64_t{29}, int64_t{1999}, int64_t{99'999'999'999}}) {
    CHECK(*parse_money(money_to_json(cents), "x") == cents);
  }
}

TEST_CASE("order events: UPDATE needs a known status", "[order_event]")
{
  auto update = [](const json& data) {
    return json{{"type", "UPDATE"}, {"orderId", "ord_1"}, {"data", data}}.dump();
  };
  CHECK(failing_field(update({{"status", "shipped"}})).empty());
  CHECK(failing_field(update({{"status", "teleported"}})) == "data.status");
  CHECK(failing_field(update({{"status", "SHIPPED"}})) == "data.status");
  CHECK(failing_field(update({{"status", 3}})) == "data.status");
  CHECK(failing_field(update(json::object())) == "data.status");
}

TEST_CASE("order events: UPDATE and DELETE need an orderId", "[order_event]")
{
  CHECK(failing_field(R"({"type":"DELETE","data":{}})") == "orderId");
  CHECK(failing_field(R"({"type":"DELETE","orderId":"","data":{}})") == "orderId");
  CHECK(failing_field(R"({"type":"UPDATE","data":{"status":"shipped"}})") == "orderId");
  CHECK(failing_field(R"({"type":"DELETE","orderId":"has space"})") == "orderId");
  CHECK(failing_field(R"({"type":"DELETE","orderId":42})") == "orderId");

  auto event = parse_event(R"({"type":"delete","orderId":"ord_7"})");
  REQUIRE(event);
  CHECK(event->type == EventType::remove);
  CHECK(event->order_id == "ord_7");
  CHECK(event->data == json::object());
}

TEST_CASE("order events: bodies that are not events are rejected", "[order_event]")
{
  CHECK(failing_field("not json") == "body");
  CHECK(failing_field("[1,2]") == "body");
  CHECK(failing_field(R"({"orderId":"ord_1"})") == "type");
  CHECK(failing_field(R"({"type":"REFUND","orderId":"ord_1"})") == "type");
}

TEST_CASE("order events: event_body writes what parse_event reads", "[order_event]")
{
  OrderEvent event;
  event.type = EventType::create;
  event.order_id = "ord_abc";
  event.data = valid_create_data();
  event.group_id = "orders";
  event.dedup_id = "create-abc";
  auto back = parse_event(event_body(event));
  REQUIRE(back);
  CHECK(back->type == event.type);
  CHECK(back->order_id == event.order_id);
  CHECK(back->data == event.data);
  CHECK(back->group_id == event.group_id);
  CHECK(back->dedup_id == event.dedup_id);
}

TEST_CASE("order events: event_body is the text a json document of the event dumps",
          "[order_event]")
{
  // What event_body wrote before it was written out by hand, and what readers may compare.
  auto as_document = [](const OrderEvent& e) {
    nlohmann::json doc = {{"type", event_type_name(e.type)}, {"orderId", e.order_id},
                          {"data", e.data}};
    if (!e.group_id.empty()) doc["groupId"] = e.group_id;
    if (!e.dedup_id.empty()) doc["deduplicationId"] = e.dedup_id;
    return doc.dump();
  };
  OrderEvent event;
  event.type = EventType::create;
  event.order_id = "ord_abc";
  event.data = valid_create_data();
  CHECK(event_body(event) == as_document(event));
  event.group_id = "orders";
  CHECK(event_body(event) == as_document(event));
  // Every character an id may hold, and the ones only JSON escapes make safe.
  std::string printable;
  for (char c = 0x21; c <= 0x7e; ++c) printable += c;
  event.dedup_id = printable;
  event.group_id = "tab\there \"quoted\" back\\slash \x01\x1f\x7f\b\f\n\r";
  event.type = EventType::remove;
  event.data = nlohmann::json::object();
  CHECK(event_body(event) == as_document(event));
  event.order_id = "ördér_ü€"; // UTF-8 goes through nlohmann
  event.type = EventType::update;
  CHECK(event_body(event) == as_document(event));
  event.order_id = "bad\xff";
  CHECK_THROWS(event_body(event));
  CHECK_THROWS(as_document(event));
}

TEST_CASE("order events: accepted_json is send_result_json with status and type, as text",
          "[order_event]")
{
  OrderEvent event;
  event.type = EventType::update;
  event.order_id = "ord_\"x\"";
  event.group_id = "orders";
  for (const bool duplicate : {false, true}) {
    SendResult result;
    result.message_id = "4bba26b9-3d37-42ed-9b9d-c3d2486a7664";
    result.seq = 1234567;
    result.dedup_id = "key\\with\"quotes";
    result.duplicate = duplicate;
    nlohmann::json doc = send_result_json(result, event);
    doc["status"] = "queued";
    doc["type"] = "UPDATE";
    CHECK(accepted_json(result, event) == doc.dump());
  }
}

TEST_CASE("order events: event type names", "[order_event]")
{
  CHECK(std::string(event_type_name(EventType::create)) == "CREATE");
  CHECK(std::string(event_type_name(EventType::update)) == "UPDATE");
  CHECK(std::string(event_type_name(EventType::remove)) == "DELETE");
  CHECK(*parse_event_type("Update") == EventType::update);
  CHECK_FALSE(parse_event_type("REMOVE"));
}

TEST_CASE("order events: the allowed status changes", "[order_event]")
{
  auto [from, to, allowed] = GENERATE(table<std::string, std::string, bool>({
    {"pending", "processing", true},
    {"pending", "cancelled", true},
    {"pending", "shipped", false},
    {"pending", "delivered", false},
    {"pending", "pending", false},
    {"processing", "shipped", true},
    {"processing", "cancelled", true},
    {"processing", "pending", false},
    {"processing", "delivered", false},
    {"processing", "processing", false},
    {"shipped", "delivered", true},
    {"shipped", "cancelled", true},
    {"shipped", "processing", false},
    {"shipped", "pending", false},
    {"shipped", "shipped", false},
    {"delivered", "cancelled", false},
    {"delivered", "pending", false},
    {"delivered", "shipped", false},
    {"delivered", "delivered", false},
    {"cancelled", "pending", false},
    {"cancelled", "processing", false},
    {"cancelled", "cancelled", false},
    {"cancelled", "delivered", false},
    {"pending", "teleported", false},
    {"teleported", "cancelled", false},
  }));
  INFO(from << " -> " << to);
  CHECK(is_allowed_transition(from, to) == allowed);
}

TEST_CASE("order events: the order statuses", "[order_event]")
{
  for (const char* s : {"pending", "processing", "shipped", "delivered", "cancelled"}) {
    CHECK(is_order_status(s));
  }
  CHECK_FALSE(is_order_status(""));
  CHECK_FALSE(is_order_status("Pending"));
  CHECK_FALSE(is_order_status("refunded"));
}

// Regression: JSON text's non-negative integers are unsigned in nlohmann::json, and the unsigned
// branch of the quantity check had no lower bound, so {"quantity": 0} from a message was accepted.
TEST_CASE("order events: quantity 0 in JSON text is rejected", "[order_event]")
{
  auto data = json::parse(R"({"customer_name": "A", "customer_email": "a@example.com",
                              "items": [{"product_id": "p", "quantity": 0, "unit_price": 1}]})");
  REQUIRE(data["items"][0]["quantity"].is_number_unsigned());
  auto result = validate_event_data(EventType::create, data);
  REQUIRE_FALSE(result);
  CHECK(result.error().field == "data.items[0].quantity");
}

TEST_CASE("order events: quantity bounds", "[order_event]")
{
  auto [quantity, ok] = GENERATE(table<std::string, bool>({
    {"1", true},
    {"1000000", true},
    {"0", false},
    {"-1", false},
    {"1000001", false},
    {"18446744073709551615", false},
    {"2.0", false},
  }));
  INFO("quantity " << quantity);
  auto data = json::parse(R"({"customer_name": "A", "customer_email": "a@example.com", "items":
                              [{"product_id": "p", "quantity": )" + quantity
                          + R"(, "unit_price": 1}]})");
  auto result = validate_event_data(EventType::create, data);
  CHECK(result.has_value() == ok);
  if (!result) CHECK(result.error().field == "data.items[0].quantity");
}

TEST_CASE("order events: an event coming in has only the fields of an event; one taken from the "
          "queue is read as it is", "[order_event]")
{
  const std::string typo = R"({"type":"CREATE","orderid":"ord_7","data":)"
                           + valid_create_data().dump() + "}";
  // From the queue (what an older acmo may have queued): read, the unknown field left aside.
  CHECK(parse_event(typo));
  // Coming in: refused, with the field it was probably meant to be.
  auto refused = parse_event(typo, "the line", true);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::invalid_input);
  CHECK(refused.error().field == "orderid");
  CHECK(refused.error().message ==
        "\"orderid\" is not a field of an event (did you mean orderId? an event has type, "
        "orderId, data, groupId and deduplicationId)");
  // Every field an event has is taken.
  CHECK(parse_event(R"({"type":"DELETE","orderId":"ord_1","data":{},"groupId":"g",)"
                    R"("deduplicationId":"d"})", "the line", true));
  // A long or odd name is quoted as JSON and cut short.
  auto odd = parse_event("{\"type\":\"DELETE\",\"orderId\":\"o\",\"" + std::string(200, 'x') +
                           "\\u001b\":1}", "the line", true);
  REQUIRE_FALSE(odd);
  CHECK_THAT(odd.error().message, Catch::StartsWith("\"" + std::string(63, 'x') + "...\" is not"));
}

TEST_CASE("order events: the data coming in has only the fields of its type, and an item only "
          "those of an item", "[order_event]")
{
  auto with = [](json data, const char* key, json value) {
    data[key] = std::move(value);
    return data;
  };
  const json create = valid_create_data();
  // Taken from the queue, leniently: a field the order does not have is left aside.
  CHECK(validate_event_data(EventType::create, with(create, "notes", "x")));
  // Coming in: refused, naming where the field is and what the object has.
  auto notes = validate_event_data(EventType::create, with(create, "notes", "x"), true);
  REQUIRE_FALSE(notes);
  CHECK(notes.error().field == "data.notes");
  CHECK(notes.error().message == "data: \"notes\" is not a field of a CREATE (its data has "
                                 "customer_name, customer_email and items)");
  // A misspelt optional field would otherwise vanish: the item's name.
  json items = create;
  items["items"][0]["nmae"] = "Pen";
  auto nmae = validate_event_data(EventType::create, items, true);
  REQUIRE_FALSE(nmae);
  CHECK(nmae.error().field == "data.items[0].nmae");
  CHECK_THAT(nmae.error().message,
             Catch::StartsWith("data.items[0]: \"nmae\" is not a field of an item (did you mean "
                               "name?"));
  auto update = validate_event_data(EventType::update, json{{"status", "shipped"}, {"total", 0}},
                                    true);
  REQUIRE_FALSE(update);
  CHECK_THAT(update.error().message, Catch::Contains("the only field that can change"));
  CHECK_FALSE(validate_event_data(EventType::remove, json{{"why", 1}}, true));
  // What each type has is taken.
  CHECK(validate_event_data(EventType::create, create, true));
  CHECK(validate_event_data(EventType::update, json{{"status", "shipped"}}, true));
  CHECK(validate_event_data(EventType::remove, json::object(), true));
  // A line of send --file is checked the same way.
  auto line = parse_event(R"({"type":"CREATE","data":)" + with(create, "note", 1).dump() + "}",
                          "the line", true);
  REQUIRE_FALSE(line);
  CHECK(line.error().field == "data.note");
}
