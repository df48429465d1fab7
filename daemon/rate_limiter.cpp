#include "daemon/rate_limiter.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>

namespace acmo::daemon {

RateLimiter::Bucket& RateLimiter::refill(const std::string& key, int64_t now_us)
{
  // Bounded: past k_max_clients keys, the buckets that have filled up again (which lose
  // nothing by going) are forgotten.
  if (m_buckets.size() >= k_max_clients) prune(now_us);
  auto [it, inserted] = m_buckets.try_emplace(key, Bucket{m_burst, now_us});
  Bucket& b = it->second;
  if (!inserted) {
    b.tokens = std::min(m_burst, b.tokens + static_cast<double>(now_us - b.at_us) * m_rate / 1e6);
    b.at_us = now_us;
  }
  return b;
}

int64_t RateLimiter::take(const std::string& key, int64_t now_us)
{
  std::lock_guard lock(m_mu);
  Bucket& b = refill(key, now_us);
  if (b.tokens >= 1.0) {
    b.tokens -= 1.0;
    return 0;
  }
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil((1.0 - b.tokens) / m_rate)));
}

bool RateLimiter::has_token(const std::string& key, int64_t now_us)
{
  std::lock_guard lock(m_mu);
  return refill(key, now_us).tokens >= 1.0;
}

void RateLimiter::prune(int64_t now_us)
{
  for (auto it = m_buckets.begin(); it != m_buckets.end();) {
    const double tokens =
      it->second.tokens + static_cast<double>(now_us - it->second.at_us) * m_rate / 1e6;
    it = tokens >= m_burst ? m_buckets.erase(it) : std::next(it);
  }
  // Still full (every client is in debt): forget half of them rather than grow.
  if (m_buckets.size() >= k_max_clients) {
    size_t drop = m_buckets.size() / 2;
    for (auto it = m_buckets.begin(); it != m_buckets.end() && drop > 0; --drop) {
      it = m_buckets.erase(it);
    }
  }
}

} // namespace acmo::daemon
