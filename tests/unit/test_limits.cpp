#include <string>

#include <catch2/catch.hpp>

#include "core/queue/limits.hpp"

using namespace acmo;
using namespace std::string_literals;

TEST_CASE("limits: a body of valid UTF-8 up to 1 MiB is accepted", "[limits]")
{
  auto body = GENERATE(values<std::string>({
    "x",
    "{\"type\":\"CREATE\"}",
    "tab\there, LF\nhere, CR\rhere",
    "caf\xc3\xa9 \xe2\x82\xac 100",      // é and € (2- and 3-byte forms)
    "\xf0\x9f\x98\x80",                  // U+1F600, a 4-byte form
    "\xed\x9f\xbf",                      // U+D7FF, just below the surrogates
    "\xee\x80\x80",                      // U+E000, just above them
    "\xef\xbf\xbd",                      // U+FFFD, the last allowed BMP character
    "\xf4\x8f\xbf\xbf",                  // U+10FFFF, the last code point
    "\x7f",                              // DEL is inside SQS's #x20-#xD7FF
  }));
  INFO("body: " << body);
  CHECK(limits::check_body(body).has_value());

  CHECK(limits::check_body(std::string(limits::k_max_body_bytes, 'a')).has_value());
}

TEST_CASE("limits: a body over 1 MiB is rejected naming the field and the limit", "[limits]")
{
  auto result = limits::check_body(std::string(limits::k_max_body_bytes + 1, 'a'));
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::invalid_input);
  CHECK(result.error().field == "body");
  CHECK_THAT(result.error().message, Catch::Contains("1048576"));
  CHECK_THAT(result.error().message, Catch::Contains("1048577"));
}

TEST_CASE("limits: an empty body is rejected", "[limits]")
{
  auto result = limits::check_body("");
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::invalid_input);
  CHECK(result.error().field == "body");
}

TEST_CASE("limits: a body that is not valid UTF-8 is rejected", "[limits]")
{
  auto body = GENERATE(values<std::string>({
    "\xff",                   // never a UTF-8 byte
    "abc\x80",                // a stray continuation byte
    "\xc3",                   // a truncated 2-byte form
    "\xe2\x82",               // a truncated 3-byte form
    "\xc3(",                  // a lead byte without its continuation
    "\xc0\xaf",               // an overlong '/'
    "\xe0\x80\xaf",           // an overlong '/' in three bytes
    "\xed\xa0\x80",           // U+D800, a surrogate
    "\xf4\x90\x80\x80",       // U+110000, past the last code point
    "\xf8\x88\x80\x80\x80",   // a 5-byte form
  }));
  INFO("body bytes: " << body.size());
  auto result = limits::check_body(body);
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::invalid_input);
  CHECK(result.error().field == "body");
  CHECK_THAT(result.error().message, Catch::Contains("UTF-8"));
}

TEST_CASE("limits: control characters SQS does not allow are rejected", "[limits]")
{
  auto [body, code_point] = GENERATE(table<std::string, std::string>({
    {"a\0b"s, "U+0000"},
    {"a\x01"s, "U+0001"},
    {"\x08"s, "U+0008"},
    {"\x0b"s, "U+000B"},
    {"\x0c"s, "U+000C"},
    {"\x1f"s, "U+001F"},
    {"\xef\xbf\xbe"s, "U+FFFE"},
    {"\xef\xbf\xbf"s, "U+FFFF"},
    // Runs of eight or more bytes go through the word-at-a-time ASCII path: a control
    // character anywhere in such a run must still be found.
    {"\x01\x01\x01\x01\x01\x01\x01\x01"s, "U+0001"},
    {"abcdefg\x02hijklmnop"s, "U+0002"},
    {"abcdefghijklmnop\x1f"s, "U+001F"},
    {"0123456789abcdef\x7f\x7f\x00xyz0123456789"s, "U+0000"},
  }));
  INFO("expected " << code_point);
  auto result = limits::check_body(body);
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::invalid_input);
  CHECK(result.error().field == "body");
  CHECK_THAT(result.error().message, Catch::Contains(code_point));
}

TEST_CASE("limits: ids of 1 to 128 letters, digits and punctuation are accepted", "[limits]")
{
  auto id = GENERATE(values<std::string>({
    "a",
    "orders",
    "ord_123-abc",
    std::string(128, 'x'),
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
  }));
  INFO("id: " << id);
  CHECK(limits::check_id(id, "groupId").has_value());
}

TEST_CASE("limits: bad ids are rejected naming the field", "[limits]")
{
  auto field = GENERATE(as<std::string>{}, "groupId", "deduplicationId");
  auto [id, what] = GENERATE(table<std::string, std::string>({
    {"", "128"},
    {std::string(129, 'x'), "128"},
    {"has space", "character 4"},
    {"tab\there", "character 4"},
    {"caf\xc3\xa9", "character 4"},
    {"del\x7f", "character 4"},
    {"nul\0"s, "character 4"},
  }));
  INFO(field << " = \"" << id << "\"");
  auto result = limits::check_id(id, field);
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::invalid_input);
  CHECK(result.error().field == field);
  CHECK_THAT(result.error().message, Catch::Contains(field));
  CHECK_THAT(result.error().message, Catch::Contains(what));
}
