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

TEST_CASE("check_pg_url: what libpq cannot read, or would refuse only when connecting, names the "
          "setting", "[pg_conninfo]")
{
  CHECK(check_pg_url("postgresql://acmo@db/acmo?sslmode=verify-full", "queue.url"));
  CHECK(check_pg_url("host=db target_session_attrs=read-write", "store.url"));
  auto refused = [](std::string_view url, std::string_view key) {
    auto ok = check_pg_url(url, key);
    REQUIRE_FALSE(ok);
    CHECK(ok.error().code == Errc::invalid_input);
    CHECK(ok.error().field == key);
    return ok.error().message;
  };
  CHECK(refused("not a url", "queue.url") ==
        "queue.url is neither a PostgreSQL URL (postgresql://USER@HOST:PORT/DB) nor key=value "
        "pairs: missing \"=\" after \"not\" in connection info string");
  CHECK(refused("postgresql://acmo@db/acmo?sslmode=bogus", "store.url") ==
        "store.url sets sslmode to \"bogus\", which libpq does not know; use disable, allow, "
        "prefer, require, verify-ca or verify-full");
  CHECK_THAT(refused("host=db gssencmode=always", "--to"),
             Catch::StartsWith("--to sets gssencmode to \"always\""));
  CHECK_THAT(refused("host=db channel_binding=yes", "store.url"),
             Catch::Contains("channel_binding"));
  CHECK_THAT(refused("host=db target_session_attrs=primaryy", "store.url"),
             Catch::Contains("prefer-standby"));
  // Whatever the scheme, a URL libpq cannot read is not echoed: it may hold a password.
  CHECK_THAT(refused("http://acmo:s3cret@db/acmo", "store.url"), !Catch::Contains("s3cret"));
  CHECK_THAT(refused("postgresql://acmo:s3cret@[::1/acmo", "store.url"), !Catch::Contains("s3cret"));
}

TEST_CASE("pg_scrubbed and pg_unavailable_message: no password of the URL reaches a message",
          "[pg_conninfo]")
{
  // libpq quotes a URI it cannot parse, with what acmo appended to it.
  const std::string broken = "postgresql://acmo:S3cretPW@[::1/advcli";
  const std::string what = "end of string reached when looking for matching \"]\" in IPv6 host "
                           "address in URI: \"" + broken + "?connect_timeout=5\"";
  CHECK(pg_scrubbed(broken, what) == "end of string reached when looking for matching \"]\" in "
                                     "IPv6 host address in URI: \"***\"");
  CHECK_THAT(pg_unavailable_message(broken, what, "queue.url"), !Catch::Contains("S3cretPW"));
  // A password libpq can read is blanked wherever a message repeats it.
  CHECK(pg_scrubbed("host=db password=hunter22", "server said hunter22 twice: hunter22") ==
        "server said *** twice: ***");
  CHECK(pg_scrubbed("postgresql://acmo@db/acmo", "nothing secret here") == "nothing secret here");
}

TEST_CASE("pg_unavailable_message: a server that refuses the role, password or database is told "
          "apart from one that does not answer", "[pg_conninfo]")
{
  const std::string url = "postgresql://nouser:pw@127.0.0.1:5432/acmo";
  CHECK(pg_unavailable_message(url,
                               "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  "
                               "role \"nouser\" does not exist\n",
                               "store.url") ==
        "PostgreSQL at postgresql://nouser:***@127.0.0.1:5432/acmo refused the connection "
        "(connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  role \"nouser\" does "
        "not exist); check the user, the password and the database in store.url, and the "
        "server's pg_hba.conf");
  CHECK_THAT(pg_unavailable_message(url, "FATAL:  password authentication failed for user", "k"),
             Catch::Contains("refused the connection"));
  // Starting up or shutting down: not answering yet, as before.
  CHECK_THAT(pg_unavailable_message(url, "FATAL:  the database system is starting up", "k"),
             Catch::Contains("is not answering"));
  CHECK_THAT(pg_unavailable_message(url, "Connection refused", "k"),
             Catch::Contains("is not answering"));
}
