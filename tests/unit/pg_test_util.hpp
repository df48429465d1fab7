// Helpers for the tests that run against the real PostgreSQL server of the tests
// (scripts/test-services.sh, ACMO_TEST_PG_URL): each test gets a schema of its own, so tests
// never see each other's tables, and the schema is dropped at the end.
#pragma once

#include <cstdlib>
#include <optional>
#include <random>
#include <string>

#include <catch2/catch.hpp>
#include <fmt/core.h>
#include <pqxx/pqxx>
#include <unistd.h>

#include "unit/service_url.hpp"

namespace acmo::test {

// The test server's URL (ACMO_TEST_PG_URL).
inline std::optional<std::string> pg_url() { return service_url("ACMO_TEST_PG_URL"); }

// The test server through PgBouncer: in session mode (ACMO_TEST_PGBOUNCER_URL), and in
// transaction mode with one server connection for every client (ACMO_TEST_PGBOUNCER_TX_URL).
inline std::optional<std::string> pgbouncer_url() { return service_url("ACMO_TEST_PGBOUNCER_URL"); }
inline std::optional<std::string> pgbouncer_tx_url()
{
  return service_url("ACMO_TEST_PGBOUNCER_TX_URL");
}

// Skip the rest of the test (with a warning) when there is no test server.
#define ACMO_NEED_PG(url)                                                                          \
  const auto url##_opt = ::acmo::test::pg_url();                                                   \
  if (!url##_opt) return;                                                                          \
  const std::string& url = *url##_opt

// A schema of its own in the test database, dropped with everything in it at the end.
// url() points the store at it (search_path) and names the connections after it
// (application_name), so a test can find and terminate its own backends.
class PgSchema
{
public:
  explicit PgSchema(std::string base_url)
    : m_base(std::move(base_url)), m_name(fresh_name()), m_admin(m_base)
  {
    exec("CREATE SCHEMA " + m_name);
  }
  ~PgSchema()
  {
    try {
      exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '"
           + m_name + "'");
      exec("DROP SCHEMA " + m_name + " CASCADE");
    } catch (const std::exception&) {
      // A destructor must not throw; a leftover schema in the test database is the lesser harm.
    }
  }
  PgSchema(const PgSchema&) = delete;
  PgSchema& operator=(const PgSchema&) = delete;

  const std::string& name() const { return m_name; }

  // The URL of the schema, for connections named `application_name` (by default the schema's
  // name, which backends() and terminate_backends() look for).
  std::string url(const std::string& application_name = {}) const
  {
    const char sep = m_base.find('?') == std::string::npos ? '?' : '&';
    return fmt::format("{}{}options=-csearch_path%3D{}&application_name={}", m_base, sep, m_name,
                       application_name.empty() ? m_name : application_name);
  }

  // Run SQL on the test's own admin connection, outside any transaction, in the test's schema.
  pqxx::result exec(const std::string& sql)
  {
    pqxx::nontransaction tx(m_admin);
    tx.exec0("SET search_path = " + m_name);
    return tx.exec(sql);
  }

  // How many connections the store under test has open on the server now.
  int backends()
  {
    return exec("SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + m_name
                + "'")[0][0]
      .as<int>();
  }

  // Terminate every connection of the store under test (what a server restart does to it).
  int terminate_backends()
  {
    return exec("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                "application_name = '"
                + m_name + "'")[0][0]
      .as<int>();
  }

private:
  static std::string fresh_name()
  {
    std::random_device random;
    return fmt::format("acmo_t_{}_{:08x}", ::getpid(), random());
  }

  std::string m_base;
  std::string m_name;
  pqxx::connection m_admin;
};

// A login role of its own for a test, named after the schema, with the rights to the schema's
// tables and sequences (grant() again after the schema is made) and no membership of
// pg_read_all_stats: it sees other roles' backends without their start times. Dropped at the
// end with its backends and rights.
class PgRole
{
public:
  PgRole(PgSchema& schema, const std::string& suffix)
    : m_schema(schema), m_name(schema.name() + "_" + suffix)
  {
    m_schema.exec("CREATE ROLE " + m_name + " LOGIN NOSUPERUSER");
  }
  ~PgRole()
  {
    try {
      m_schema.exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '"
                    + m_name + "'");
      m_schema.exec("DROP OWNED BY " + m_name);
      m_schema.exec("DROP ROLE " + m_name);
    } catch (const std::exception&) {
      // A leftover role in the test server is the lesser harm than a throwing destructor.
    }
  }
  PgRole(const PgRole&) = delete;
  PgRole& operator=(const PgRole&) = delete;

  const std::string& name() const { return m_name; }

  // The rights to every table and sequence the schema has now.
  void grant()
  {
    m_schema.exec(fmt::format("GRANT USAGE ON SCHEMA {0} TO {1}; GRANT ALL ON ALL TABLES IN "
                              "SCHEMA {0} TO {1}; GRANT ALL ON ALL SEQUENCES IN SCHEMA {0} TO {1}",
                              m_schema.name(), m_name));
  }

  // The schema's URL, connecting as this role.
  std::string url(const std::string& application_name = {}) const
  {
    return m_schema.url(application_name) + "&user=" + m_name;
  }

private:
  PgSchema& m_schema;
  std::string m_name;
};

} // namespace acmo::test
