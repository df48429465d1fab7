#include "core/cache/cache.hpp"

namespace acmo {

std::string order_cache_key(std::string_view order_id)
{
  return "order:" + std::string(order_id);
}

MemoryCache::MemoryCache(size_t capacity, int64_t ttl_ms, const Clock& clock, size_t max_bytes)
  : m_capacity(capacity == 0 ? 1 : capacity), m_max_bytes(max_bytes), m_ttl_ms(ttl_ms),
    m_clock(clock)
{
  m_stats.backend = "memory";
}

void MemoryCache::erase(Lru::iterator it)
{
  m_bytes -= cost(*it);
  m_index.erase(it->key);
  m_lru.erase(it);
}

std::optional<std::string> MemoryCache::get(std::string_view key)
{
  std::lock_guard lock(m_mu);
  auto found = m_index.find(std::string(key));
  if (found == m_index.end()) {
    ++m_stats.misses;
    return std::nullopt;
  }
  if (found->second->expires_at <= m_clock.now_ms()) {
    erase(found->second);
    ++m_stats.misses;
    return std::nullopt;
  }
  m_lru.splice(m_lru.begin(), m_lru, found->second);
  ++m_stats.hits;
  return m_lru.front().value;
}

void MemoryCache::put(std::string_view key, std::string_view value)
{
  std::lock_guard lock(m_mu);
  const int64_t expires_at = m_clock.now_ms() + m_ttl_ms;
  if (auto found = m_index.find(std::string(key)); found != m_index.end()) erase(found->second);
  if (key.size() + value.size() + k_entry_overhead > m_max_bytes) return; // never fits
  m_lru.push_front(Entry{std::string(key), std::string(value), expires_at});
  m_index.emplace(m_lru.front().key, m_lru.begin());
  m_bytes += cost(m_lru.front());
  while (m_lru.size() > m_capacity || m_bytes > m_max_bytes) erase(std::prev(m_lru.end()));
}

void MemoryCache::invalidate(std::string_view key)
{
  std::lock_guard lock(m_mu);
  if (auto found = m_index.find(std::string(key)); found != m_index.end()) erase(found->second);
}

void MemoryCache::invalidate_prefix(std::string_view prefix)
{
  std::lock_guard lock(m_mu);
  for (auto it = m_lru.begin(); it != m_lru.end();) {
    auto next = std::next(it);
    if (std::string_view(it->key).substr(0, prefix.size()) == prefix) erase(it);
    it = next;
  }
}

std::vector<std::string> MemoryCache::keys()
{
  std::lock_guard lock(m_mu);
  std::vector<std::string> out;
  const int64_t now = m_clock.now_ms();
  for (const auto& e : m_lru) {
    if (e.expires_at > now) out.push_back(e.key);
  }
  return out;
}

int64_t MemoryCache::clear()
{
  std::lock_guard lock(m_mu);
  const auto n = static_cast<int64_t>(m_lru.size());
  m_lru.clear();
  m_index.clear();
  m_bytes = 0;
  return n;
}

CacheStats MemoryCache::stats()
{
  std::lock_guard lock(m_mu);
  CacheStats s = m_stats;
  s.keys = static_cast<int64_t>(m_lru.size());
  return s;
}

std::optional<std::string> NullCache::get(std::string_view)
{
  std::lock_guard lock(m_mu);
  ++m_misses;
  return std::nullopt;
}

CacheStats NullCache::stats()
{
  std::lock_guard lock(m_mu);
  CacheStats s;
  s.backend = "none";
  s.misses = m_misses;
  return s;
}

} // namespace acmo
