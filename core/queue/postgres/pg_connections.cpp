#include "core/queue/postgres/pg_connections.hpp"

#include <chrono>
#include <exception>

#include <fmt/core.h>

namespace acmo {

namespace {

constexpr int k_connect_timeout_s = 5;

} // namespace

std::string queue_connection_string(const std::string& url)
{
  std::string out = url;
  const bool uri = out.rfind("postgresql://", 0) == 0 || out.rfind("postgres://", 0) == 0;
  auto add = [&](const std::string& key, const std::string& value) {
    if (out.find(key + "=") != std::string::npos) return;
    if (uri) {
      out += out.find('?') == std::string::npos ? '?' : '&';
    } else if (!out.empty()) {
      out += ' ';
    }
    out += key + "=" + value;
  };
  add("connect_timeout", std::to_string(k_connect_timeout_s));
  add("fallback_application_name", "acmo");
  add("keepalives", "1");
  add("keepalives_idle", "10");
  add("keepalives_interval", "5");
  add("keepalives_count", "3");
  return out;
}

std::variant<PgConnections::Lease, std::string> PgConnections::acquire()
{
  const auto deadline =
    std::chrono::steady_clock::now() + std::chrono::milliseconds(m_wait_ms);
  std::unique_lock lock(m_mu);
  for (;;) {
    if (!m_idle.empty()) {
      auto conn = std::move(m_idle.back());
      m_idle.pop_back();
      return Lease(*this, std::move(conn));
    }
    if (m_open < k_size) {
      ++m_open;
      lock.unlock();
      try {
        auto conn = std::make_unique<pqxx::connection>(m_conninfo);
        m_setup(*conn);
        return Lease(*this, std::move(conn));
      } catch (const std::exception& e) {
        lock.lock();
        --m_open;
        m_cv.notify_one();
        return std::string(e.what());
      }
    }
    if (m_cv.wait_until(lock, deadline) == std::cv_status::timeout && m_idle.empty()
        && m_open >= k_size) {
      return fmt::format("all {} connections of the queue stayed busy for {} ms", k_size,
                         m_wait_ms);
    }
  }
}

void PgConnections::adopt(std::unique_ptr<pqxx::connection> conn)
{
  {
    std::lock_guard lock(m_mu);
    ++m_open;
    m_idle.push_back(std::move(conn));
  }
  m_cv.notify_one();
}

std::unique_ptr<pqxx::connection> PgConnections::take_idle()
{
  std::unique_ptr<pqxx::connection> conn;
  {
    std::lock_guard lock(m_mu);
    if (m_idle.empty()) return conn;
    conn = std::move(m_idle.back());
    m_idle.pop_back();
    --m_open;
  }
  m_cv.notify_one();
  return conn;
}

void PgConnections::discard_idle()
{
  std::vector<std::unique_ptr<pqxx::connection>> closing;
  {
    std::lock_guard lock(m_mu);
    closing.swap(m_idle);
    m_open -= static_cast<int>(closing.size());
  }
  m_cv.notify_all();
}

void PgConnections::give_back(std::unique_ptr<pqxx::connection> conn, bool broken)
{
  if (broken || !conn->is_open()) {
    conn.reset();
    std::lock_guard lock(m_mu);
    --m_open;
  } else {
    std::lock_guard lock(m_mu);
    m_idle.push_back(std::move(conn));
  }
  m_cv.notify_one();
}

} // namespace acmo
