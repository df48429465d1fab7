// Connections of the queue on PostgreSQL (PgQueue): libpq's connection string for queue.url,
// and the pool that every operation but sending and listening runs on.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <variant>
#include <vector>

#include <pqxx/connection>

namespace acmo {

// The connection string libpq gets: the URL, with a connect timeout, a name that shows in
// pg_stat_activity and keepalives, unless the URL sets them.
std::string queue_connection_string(const std::string& url);

// A pool of connections, opened as they are needed, at most k_size, each set up by `setup`
// when it is made.
class PgConnections
{
public:
  static constexpr int k_size = 16;

  using Setup = std::function<void(pqxx::connection&)>;
  // `wait_ms`: how long acquire() waits for a connection when all k_size are busy.
  PgConnections(std::string conninfo, Setup setup, int64_t wait_ms)
    : m_conninfo(std::move(conninfo)), m_setup(std::move(setup)), m_wait_ms(wait_ms)
  {
  }

  // A connection in use, given back to the pool when the lease ends (closed, if discarded).
  class Lease
  {
  public:
    Lease(PgConnections& pool, std::unique_ptr<pqxx::connection> conn)
      : m_pool(&pool), m_conn(std::move(conn))
    {
    }
    Lease(Lease&& other) noexcept
      : m_pool(other.m_pool), m_conn(std::move(other.m_conn)), m_broken(other.m_broken)
    {
    }
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease()
    {
      if (m_conn) m_pool->give_back(std::move(m_conn), m_broken);
    }
    pqxx::connection& conn() { return *m_conn; }
    void discard() { m_broken = true; }

  private:
    PgConnections* m_pool;
    std::unique_ptr<pqxx::connection> m_conn;
    bool m_broken = false;
  };

  // A connection, or the error of making one (std::exception's text) when that failed.
  std::variant<Lease, std::string> acquire();
  // Take in a connection made and set up elsewhere, as an idle one.
  void adopt(std::unique_ptr<pqxx::connection> conn);
  // An idle connection, no longer the pool's, or null when none is idle.
  std::unique_ptr<pqxx::connection> take_idle();
  // After a broken connection: the idle ones very likely went with the same server.
  void discard_idle();

private:
  void give_back(std::unique_ptr<pqxx::connection> conn, bool broken);

  const std::string m_conninfo;
  const Setup m_setup;
  const int64_t m_wait_ms;
  std::mutex m_mu;
  std::condition_variable m_cv;
  std::vector<std::unique_ptr<pqxx::connection>> m_idle;
  int m_open = 0;
};

} // namespace acmo
