#include "core/cache/cached_orders.hpp"

#include <algorithm>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "core/orders/order.hpp"

namespace acmo {

std::string CachedOrders::list_key(std::string_view status, int64_t limit, int64_t offset)
{
  return fmt::format("{}status={}&limit={}&offset={}", k_order_list_prefix, status, limit, offset);
}

Expected<int64_t> CacheFollower::catch_up(OrderStore& store, Cache& cache)
{
  // The store is asked outside the lock, so readers do not wait on each other's question; an
  // answer is from a mark no later than the one now held, so it names at least what changed
  // since then, and only an answer that reaches further moves the mark.
  int64_t from = 0;
  int64_t begun = -1;
  int64_t ended = -1;
  if (m_signal != nullptr) {
    begun = m_signal->begun();
    ended = m_signal->ended(); // read after begun: equal, every ticket up to begun has ended
    // Nothing began since every change up to `begun` was dropped: the cache is current. The
    // epoch is read first: a later one only makes a put refused.
    const int64_t epoch = m_epoch.load();
    if (begun == m_verified.load()) return epoch;
  }
  {
    std::lock_guard lock(m_mu);
    from = m_mark;
  }
  auto changes = store.changes_since(from, m_max_named);
  if (!changes) return Unexpected(changes.error());
  std::lock_guard lock(m_mu);
  if (changes->all) {
    cache.invalidate_prefix(order_cache_key(""));
    cache.invalidate_prefix(k_order_list_prefix);
    ++m_epoch;
  } else if (!changes->order_ids.empty() && changes->mark >= m_mark) {
    invalidate_orders(&cache, changes->order_ids);
    ++m_epoch;
  }
  m_mark = std::max(m_mark, changes->mark);
  // Set once what it covers is dropped, for the fast path's reads without the lock.
  if (ended >= begun && begun > m_verified.load()) m_verified.store(begun);
  return m_epoch.load();
}

void CacheFollower::put(Cache& cache, int64_t mark, std::string_view key, std::string_view value)
{
  std::lock_guard lock(m_mu);
  if (mark == m_epoch) cache.put(key, value);
}

template<typename Read>
Expected<std::string> CachedOrders::cached(const std::string& key, Read&& read)
{
  if (m_cache == nullptr) return read();
  int64_t mark = 0;
  if (m_follower != nullptr) {
    auto caught_up = m_follower->catch_up(m_store, *m_cache);
    if (!caught_up) return read(); // the cache cannot be trusted now; the store decides
    mark = *caught_up;
  }
  if (auto hit = m_cache->get(key)) return std::move(*hit);
  auto text = read();
  if (!text) return text;
  if (m_follower != nullptr) {
    m_follower->put(*m_cache, mark, key, *text);
  } else {
    m_cache->put(key, *text);
  }
  return text;
}

Expected<std::string> CachedOrders::get_json(std::string_view id)
{
  return cached(order_cache_key(id), [&]() -> Expected<std::string> {
    auto order = m_store.get(id);
    if (!order) return Unexpected(order.error());
    return order_to_json(*order).dump();
  });
}

Expected<std::string> CachedOrders::list_json(std::string_view status, int64_t limit,
                                              int64_t offset)
{
  return cached(list_key(status, limit, offset), [&]() -> Expected<std::string> {
    auto list = m_store.list(status, limit, offset);
    if (!list) return Unexpected(list.error());
    nlohmann::json orders = nlohmann::json::array();
    for (const auto& o : list->orders) orders.push_back(order_to_json(o));
    return nlohmann::json{{"orders", std::move(orders)}, {"total", list->total}}.dump();
  });
}

void CachedOrders::invalidate(const std::vector<std::string>& order_ids)
{
  invalidate_orders(m_cache, order_ids);
}

void invalidate_orders(Cache* cache, const std::vector<std::string>& order_ids)
{
  if (cache == nullptr || order_ids.empty()) return;
  std::vector<std::string> keys;
  keys.reserve(order_ids.size());
  for (const auto& id : order_ids) keys.push_back(order_cache_key(id));
  cache->invalidate_batch(keys, k_order_list_prefix);
}

} // namespace acmo
