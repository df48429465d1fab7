// The one parser of JSON from outside (core/util/json_input.*): what it refuses, and that no input
// reaches the recursion that a deep document would need.
#include <string>

#include <catch2/catch.hpp>

#include "core/orders/order_event.hpp"
#include "core/util/json_input.hpp"

using namespace acmo;
using nlohmann::json;

namespace {

std::string nested(int depth, char open = '[', char close = ']')
{
  return std::string(static_cast<size_t>(depth), open) + std::string(static_cast<size_t>(depth), close);
}

} // namespace

TEST_CASE("parse_json_input: a document within the rules is read whole", "[json_input]")
{
  auto doc = parse_json_input(R"({"a":[1,2.5,"x",null,true,{"b":{}}],"c":-3,"d":18446744073709551615})",
                              "the body");
  REQUIRE(doc);
  CHECK(doc->dump() == R"({"a":[1,2.5,"x",null,true,{"b":{}}],"c":-3,"d":18446744073709551615})");
  // Exactly as deep as the limit: taken.
  auto deep = parse_json_input(nested(k_max_json_depth), "the body");
  REQUIRE(deep);
  CHECK(deep->dump() == nested(k_max_json_depth));
}

TEST_CASE("parse_json_input: nesting past the limit is refused, however deep", "[json_input]")
{
  // 200,000 levels crashed every process that parsed and then wrote or walked such a document.
  auto depth = GENERATE(k_max_json_depth + 1, 1'000, 200'000, 2'000'000);
  INFO(depth);
  for (const auto& [open, close] : {std::pair{'[', ']'}, std::pair{'{', '}'}}) {
    std::string text = nested(depth, open, close);
    if (open == '{') {
      // {"a":{"a":...}}: an object needs keys
      text.clear();
      for (int i = 0; i < depth; ++i) text += R"({"a":)";
      text += "1";
      text += std::string(static_cast<size_t>(depth), '}');
    }
    auto doc = parse_json_input(text, "the body");
    REQUIRE_FALSE(doc);
    CHECK(doc.error().code == Errc::invalid_input);
    CHECK(doc.error().field == "body");
    CHECK(doc.error().message == "the body nests deeper than 64 levels");
  }
}

TEST_CASE("parse_json_input: a key twice in one object is refused, at any depth", "[json_input]")
{
  for (const char* text : {R"({"a":1,"a":2})", R"({"x":[{"b":1,"c":2,"b":1}]})",
                           R"({"a":{"a":{"k":1,"k":1}}})"}) {
    INFO(text);
    auto doc = parse_json_input(text, "--data", "data");
    REQUIRE_FALSE(doc);
    CHECK(doc.error().field == "data");
    CHECK_THAT(doc.error().message, Catch::StartsWith("--data holds the key \"")
                                      && Catch::EndsWith("\" twice in one object; give each "
                                                         "field once"));
  }
  // The same key in different objects is fine.
  CHECK(parse_json_input(R"({"a":{"a":1},"b":{"a":2}})", "x"));
}

TEST_CASE("parse_json_input: text that is not JSON says where", "[json_input]")
{
  for (const char* text : {"nonsense", R"({"a":1)", R"({"a":1} x)", "{\"a\":\"\xff\"}", "[1,]"}) {
    INFO(text);
    auto doc = parse_json_input(text, "the line");
    REQUIRE_FALSE(doc);
    CHECK_THAT(doc.error().message, Catch::StartsWith("the line is not valid JSON: parse error at"));
  }
  auto empty = parse_json_input(" \r\n", "the body");
  REQUIRE_FALSE(empty);
  CHECK(empty.error().message == "the body is empty; send a JSON object");
}

TEST_CASE("parse_event: a queued body nested past the limit is a rejected event, not a crash",
          "[json_input][order_event]")
{
  std::string data;
  for (int i = 0; i < 200'000; ++i) data += R"({"x":)";
  data += "1" + std::string(200'000, '}');
  auto event = parse_event(R"({"type":"CREATE","orderId":"ord_1","data":{"customer_name":"A",)"
                           R"("customer_email":"a@example.com","items":[],"extra":)"
                           + data + "}}");
  REQUIRE_FALSE(event);
  CHECK(event.error().message == "body nests deeper than 64 levels");
}

TEST_CASE("parse_json_input: a number a double cannot hold exactly is refused, not rounded",
          "[json_input]")
{
  // What a JSON writer prints for a double reads back as itself, however many digits.
  for (const char* taken : {"0.30000000000000004", "19.99", "1.50", "1e1", "1.5e-300", "-0.0",
                            "1.7976931348623157e308", "123456789012345.6", "1E+2", "0.000001"}) {
    INFO(taken);
    auto doc = parse_json_input(std::string("[") + taken + "]", "the body");
    CHECK(doc);
  }
  for (const char* refused : {"1.4999999999999999999999", "1.00000000000000000001",
                              "1.0000000000000001", "1e-400", "123456789012345678901234",
                              "0.1000000000000000000000000000000000000000000001"}) {
    INFO(refused);
    auto doc = parse_json_input(std::string("{\"unit_price\":") + refused + "}", "the body");
    REQUIRE_FALSE(doc);
    CHECK(doc.error().code == Errc::invalid_input);
    CHECK_THAT(doc.error().message,
               Catch::StartsWith(std::string("the body holds the number ") + refused +
                                 ", which a double cannot hold exactly (it would read as "));
  }
  auto price = parse_json_input(R"({"unit_price":1.4999999999999999999999})", "line 3");
  REQUIRE_FALSE(price);
  CHECK(price.error().message ==
        "line 3 holds the number 1.4999999999999999999999, which a double cannot hold exactly "
        "(it would read as 1.5); write at most 15 significant digits");
}
