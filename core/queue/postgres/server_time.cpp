#include "core/queue/postgres/server_time.hpp"

#include <chrono>

namespace acmo {

namespace {

int64_t wall_us()
{
  using namespace std::chrono;
  return duration_cast<microseconds>(system_clock::now().time_since_epoch()).count();
}

} // namespace

int64_t ServerTime::monotonic_us()
{
  using namespace std::chrono;
  return duration_cast<microseconds>(steady_clock::now().time_since_epoch()).count();
}

ServerTime::ServerTime()
  : m_offset_us(wall_us() - monotonic_us()), m_asked_us(monotonic_us() - k_interval_us),
    m_kept_at_us(0)
{
}

int64_t ServerTime::now_ms() const
{
  return (monotonic_us() + m_offset_us.load(std::memory_order_relaxed)) / 1000;
}

bool ServerTime::claim()
{
  const int64_t now = monotonic_us();
  int64_t asked = m_asked_us.load(std::memory_order_relaxed);
  if (now - asked < k_interval_us) return false;
  return m_asked_us.compare_exchange_strong(asked, now);
}

void ServerTime::add(int64_t server_us, int64_t sent_us, int64_t received_us)
{
  const int64_t rtt = received_us - sent_us;
  if (rtt < 0) return;
  m_asked_us.store(received_us, std::memory_order_relaxed);
  std::lock_guard lock(m_mu);
  const bool none = m_kept_at_us == 0;
  if (!none && rtt > 2 * m_kept_rtt_us + k_slack_us && received_us - m_kept_at_us < k_stale_us) {
    return;
  }
  m_offset_us.store(server_us - (sent_us + rtt / 2), std::memory_order_relaxed);
  m_kept_at_us = received_us;
  m_kept_rtt_us = rtt;
}

} // namespace acmo
