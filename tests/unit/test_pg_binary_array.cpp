// PgBinaryArray: array parameters in PostgreSQL's binary format, checked byte by byte and
// against the real server of the tests (what it reads back must be what was sent).
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <pqxx/pqxx>

#include "core/queue/postgres/pg_pipeline.hpp"
#include "core/store/pg_binary.hpp"
#include "pg_test_util.hpp"

using acmo::PgBinaryArray;
using acmo::PgPipeline;
using Type = acmo::PgBinaryArray::Type;

namespace {

std::string bytes(std::initializer_list<int> values)
{
  std::string out;
  for (int v : values) out += static_cast<char>(v);
  return out;
}

} // namespace

TEST_CASE("PgBinaryArray writes array_send's format", "[pg_binary]")
{
  SECTION("an empty array has no dimension")
  {
    PgBinaryArray a(Type::text);
    CHECK(a.take() == bytes({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25}));
  }
  SECTION("one dimension: its length and lower bound 1, then each element's length and bytes")
  {
    PgBinaryArray a(Type::bigint);
    a.add(int64_t{-2});
    a.add(int64_t{258});
    CHECK(a.take()
          == bytes({0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 2, 0, 0, 0, 1,    // header
                    0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,  // -2
                    0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 1, 2}));                        // 258
  }
  SECTION("take() leaves the array empty, ready for more")
  {
    PgBinaryArray a(Type::boolean);
    a.add_bool(true);
    CHECK(a.take().size() == 20 + 4 + 1);
    a.add_bool(false);
    CHECK(a.take() == bytes({0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0, 1,
                             0, 0, 0, 1, 0}));
  }
  SECTION("a uuid is its 16 bytes, as parse_message_id reads them; anything else is refused")
  {
    PgBinaryArray a(Type::uuid);
    const auto id = acmo::parse_message_id("00010203-0405-0607-0809-0A0B0C0D0e0f");
    REQUIRE(id);
    a.add_uuid(*id);
    CHECK(a.take().substr(20) == bytes({0, 0, 0, 16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                        13, 14, 15}));
    CHECK_FALSE(acmo::parse_message_id("0001-0203"));
    CHECK_FALSE(acmo::parse_message_id("00010203-0405-0607-0809-0a0b0c0d0e0f00"));
    CHECK_FALSE(acmo::parse_message_id("00010203-0405-0607-0809-0a0b0c0d0e0g"));
    CHECK(a.take().size() == 12); // nothing was added
  }
  SECTION("a jsonb element is version 1, then the JSON text")
  {
    PgBinaryArray a(Type::jsonb);
    a.add_jsonb("[1]");
    CHECK(a.take() == bytes({0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x0e, 0xda, 0, 0, 0, 1, 0, 0, 0, 1,
                             0, 0, 0, 4, 1, '[', '1', ']'}));
  }
}

TEST_CASE("PostgreSQL reads back PgBinaryArray's jsonb and text through libpqxx",
          "[pg][pg_binary]")
{
  ACMO_NEED_PG(url);
  pqxx::connection conn(url);
  pqxx::nontransaction tx(conn);
  conn.prepare("echo_jsonb", "SELECT j::text, t FROM unnest($1::jsonb[], $2::text[]) AS x(j, t)");
  PgBinaryArray j(Type::jsonb), t(Type::text);
  j.add_jsonb(R"({"b": [1, 2.5, "café"], "a": null})");
  t.add(std::string_view("quote \" comma , brace }"));
  j.add_jsonb("{}");
  t.add(std::string_view(""));
  auto rows = tx.exec_prepared("echo_jsonb", pqxx::binarystring(j.take()),
                               pqxx::binarystring(t.take()));
  REQUIRE(rows.size() == 2);
  CHECK(rows[0][0].as<std::string>() == R"({"a": null, "b": [1, 2.5, "café"]})");
  CHECK(rows[0][1].as<std::string>() == "quote \" comma , brace }");
  CHECK(rows[1][0].as<std::string>() == "{}");
  CHECK(rows[1][1].as<std::string>().empty());
  // JSON the server cannot read is refused, as in text format.
  PgBinaryArray bad(Type::jsonb), one(Type::text);
  bad.add_jsonb("{not json");
  one.add(std::string_view("x"));
  CHECK_THROWS_WITH(tx.exec_prepared("echo_jsonb", pqxx::binarystring(bad.take()),
                                     pqxx::binarystring(one.take())),
                    Catch::Contains("invalid input syntax for type json"));
}

TEST_CASE("PostgreSQL reads back what PgBinaryArray sends", "[pg][pg_binary]")
{
  ACMO_NEED_PG(url);
  const std::vector<std::string> texts = {
    "", "NULL", "{\"a\":[1,2]}", "quote \" backslash \\ comma , brace } {",
    "caf\xc3\xa9 \xe2\x82\xac",
    std::string(100'000, 'x')};
  PgPipeline conn(url, "SET application_name = 'acmo_test_binary'");
  conn.prepare("echo", "SELECT t, n, b, u::text FROM unnest($1::text[], $2::bigint[],"
                       " $3::boolean[], $4::uuid[]) AS x(t, n, b, u)");
  conn.start();
  PgBinaryArray t(Type::text), n(Type::bigint), b(Type::boolean), u(Type::uuid);
  for (size_t i = 0; i < texts.size(); ++i) {
    t.add(texts[i]);
    n.add(static_cast<int64_t>(i) * -1'000'000'007);
    b.add_bool(i % 2 == 0);
    u.add_uuid(*acmo::parse_message_id("6ba7b810-9dad-11d1-80b4-00c04fd430c" + std::to_string(i)));
  }
  conn.send("echo", {std::move(t), std::move(n), std::move(b), std::move(u)});
  auto rows = conn.take();
  REQUIRE(rows.size() == static_cast<int>(texts.size()));
  for (int i = 0; i < rows.size(); ++i) {
    CHECK(rows.get(i, 0) == texts[static_cast<size_t>(i)]);
    CHECK(rows.get_int(i, 1) == int64_t{i} * -1'000'000'007);
    CHECK(rows.get(i, 2) == (i % 2 == 0 ? "t" : "f"));
    CHECK(rows.get(i, 3) == "6ba7b810-9dad-11d1-80b4-00c04fd430c" + std::to_string(i));
  }

  SECTION("an empty array is an empty array, and a body that is not UTF-8 is refused")
  {
    conn.send("echo", {PgBinaryArray(Type::text), PgBinaryArray(Type::bigint),
                       PgBinaryArray(Type::boolean), PgBinaryArray(Type::uuid)});
    CHECK(conn.take().size() == 0);
    PgBinaryArray bad(Type::text), one(Type::bigint), yes(Type::boolean), id(Type::uuid);
    bad.add(std::string("\xff\xfe"));
    one.add(int64_t{1});
    yes.add_bool(true);
    id.add_uuid(*acmo::parse_message_id("6ba7b810-9dad-11d1-80b4-00c04fd430c8"));
    conn.send("echo", {std::move(bad), std::move(one), std::move(yes), std::move(id)});
    CHECK_THROWS_WITH(conn.take(), Catch::Contains("invalid byte sequence"));
  }
}
