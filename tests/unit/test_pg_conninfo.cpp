// store.url as libpq reads it: the string acmo connects with, and the URL in messages. No
// server needed.
#include <catch2/catch.hpp>

#include "core/store/pg_conninfo.hpp"

using namespace acmo;

namespace {

const std::vector<std::pair<std::string, std::string>> k_defaults = {
  {"connect_timeout", "5"}, {"fallback_application_name", "acmo"}, {"keepalives", "1"}};

std::string with_defaults(std::string_view url)
{
  auto out = pg_conninfo_with_defaults(url, k_defaults);
  REQUIRE(out);
  return *out;
}

} // namespace

TEST_CASE("pg_conninfo_with_defaults: a URI and key=value pairs, with acmo's defaults",
          "[pg_conninfo]")
{
  CHECK(with_defaults("postgresql://acmo@127.0.0.1:5432/acmo")
        == "user=acmo dbname=acmo host=127.0.0.1 port=5432 connect_timeout=5 "
           "fallback_application_name=acmo keepalives=1");
  CHECK(with_defaults("postgres://acmo:p%40ss%20word@db/acmo?sslmode=require")
        == "user=acmo password='p@ss word' dbname=acmo host=db sslmode=require "
           "connect_timeout=5 fallback_application_name=acmo keepalives=1");
  CHECK(with_defaults("host=db user=acmo password='a b\\' c'")
        == "user=acmo password='a b\\' c' host=db connect_timeout=5 "
           "fallback_application_name=acmo keepalives=1");
  CHECK(with_defaults("") == "connect_timeout=5 fallback_application_name=acmo keepalives=1");
}

TEST_CASE("pg_conninfo_with_defaults: the user's own values are kept", "[pg_conninfo]")
{
  CHECK(with_defaults("postgresql://db/acmo?connect_timeout=30&keepalives=0")
        == "connect_timeout=30 dbname=acmo host=db keepalives=0 "
           "fallback_application_name=acmo");
  CHECK(with_defaults("host=db fallback_application_name=mine connect_timeout=2")
        == "connect_timeout=2 host=db fallback_application_name=mine keepalives=1");
  // application_name wins over the fallback in libpq; both are passed on.
  CHECK(with_defaults("host=db application_name=mine")
        == "host=db application_name=mine connect_timeout=5 fallback_application_name=acmo "
           "keepalives=1");
  // A key's name inside another value is not that key.
  CHECK(with_defaults("host=db password=connect_timeout=9")
        == "password=connect_timeout=9 host=db connect_timeout=5 "
           "fallback_application_name=acmo keepalives=1");
}

TEST_CASE("pg_conninfo_with_defaults: what libpq cannot parse is invalid input, with why",
          "[pg_conninfo]")
{
  auto check = [](std::string_view url, std::string_view why) {
    auto out = pg_conninfo_with_defaults(url, k_defaults);
    REQUIRE_FALSE(out);
    CHECK(out.error().code == Errc::invalid_input);
    CHECK(out.error().field == "store.url");
    CHECK_THAT(out.error().message, Catch::Contains("store.url") && Catch::Contains(std::string(why)));
  };
  check("localhost", "missing \"=\" after \"localhost\"");
  check("postgresql://acmo@db/acmo?x=1", "invalid URI query parameter: \"x\"");
  check("host=db colour=blue", "invalid connection option \"colour\"");
  // libpq's message quotes the whole URL, password and all: that copy is left out.
  auto out = pg_conninfo_with_defaults("postgresql://acmo:s3cret@[::1/acmo", k_defaults);
  REQUIRE_FALSE(out);
  CHECK_THAT(out.error().message, Catch::Contains("IPv6") && !Catch::Contains("s3cret"));
}

TEST_CASE("redact_pg_url: a password is ***, in the form the URL was written", "[pg_conninfo]")
{
  // Nothing secret: the URL as written.
  CHECK(redact_pg_url("postgresql://acmo@127.0.0.1:5432/acmo") == "postgresql://acmo@127.0.0.1:5432/acmo");
  CHECK(redact_pg_url("host=db  user=acmo") == "host=db  user=acmo");
  // URIs.
  CHECK(redact_pg_url("postgresql://acmo:s3cret@127.0.0.1:1/acmo")
        == "postgresql://acmo:***@127.0.0.1:1/acmo");
  CHECK(redact_pg_url("postgres://acmo@db/acmo?password=s3cret&sslmode=require")
        == "postgres://acmo:***@db/acmo?sslmode=require");
  CHECK(redact_pg_url("postgresql://:s3cret@[::1]:5432,db2:5433/my%20db?sslpassword=k3y")
        == "postgresql://:***@[::1]:5432,db2:5433/my%20db?sslpassword=***");
  CHECK(redact_pg_url("postgresql://u:s3cret@%2Fvar%2Frun%2Fpostgresql/acmo")
        == "postgresql://u:***@%2Fvar%2Frun%2Fpostgresql/acmo");
  // key=value pairs, a quoted password with a space and a quote in it too.
  CHECK(redact_pg_url("host=db password='a b\\' c' user=x") == "user=x password=*** host=db");
  CHECK(redact_pg_url("host=db,db2 port=5432 password=s3cret")
        == "password=*** host=db,db2 port=5432");
  // What libpq cannot parse cannot be redacted with certainty.
  CHECK(redact_pg_url("postgresql://acmo:s3cret@db/acmo?x=1") == "***");
}

TEST_CASE("pg_refused_message: a session that lost acmo's prepared statements names the pooler",
          "[pg_conninfo]")
{
  // Missing from the session (26000), or already there from another client (42P05): a pooler
  // in transaction mode. The URL is redacted; the setting to change is named.
  for (const char* state : {"26000", "42P05"}) {
    const auto message = pg_refused_message("postgresql://acmo:s3cret@pool:6432/acmo", state,
                                            "ERROR:  prepared statement \"acmo_send\"\nLINE 1",
                                            "store.url");
    INFO(message);
    CHECK(message.find(std::string("(") + state + ": ERROR:  prepared statement \"acmo_send\")")
          != std::string::npos);
    CHECK(message.find("postgresql://acmo:***@pool:6432/acmo") != std::string::npos);
    CHECK(message.find("s3cret") == std::string::npos);
    CHECK(message.find("a pooler in transaction mode") != std::string::npos);
    CHECK(message.find("point store.url at PostgreSQL itself or at a pooler in session mode")
          != std::string::npos);
  }
  // Anything else acmo's own statements are refused for: a bug, or a schema changed by hand.
  const auto other = pg_refused_message("postgresql://acmo@db/acmo", "42703",
                                        "ERROR:  column \"x\" does not exist", "queue.url");
  CHECK(other
        == "PostgreSQL refused acmo's statement (42703: ERROR:  column \"x\" does not exist); "
           "this is a bug or a schema acmo did not make");
}
