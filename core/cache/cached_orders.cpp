#include "core/cache/cached_orders.hpp"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "core/orders/order.hpp"

namespace acmo {

std::string CachedOrders::list_key(std::string_view status, int64_t limit, int64_t offset)
{
  return fmt::format("{}status={}&limit={}&offset={}", k_order_list_prefix, status, limit, offset);
}

Expected<std::string> CachedOrders::get_json(std::string_view id)
{
  const std::string key = order_cache_key(id);
  if (m_cache != nullptr) {
    if (auto hit = m_cache->get(key)) return std::move(*hit);
  }
  auto order = m_store.get(id);
  if (!order) return Unexpected(order.error());
  std::string text = order_to_json(*order).dump();
  if (m_cache != nullptr) m_cache->put(key, text);
  return text;
}

Expected<std::string> CachedOrders::list_json(std::string_view status, int64_t limit,
                                              int64_t offset)
{
  const std::string key = list_key(status, limit, offset);
  if (m_cache != nullptr) {
    if (auto hit = m_cache->get(key)) return std::move(*hit);
  }
  auto list = m_store.list(status, limit, offset);
  if (!list) return Unexpected(list.error());
  nlohmann::json orders = nlohmann::json::array();
  for (const auto& o : list->orders) orders.push_back(order_to_json(o));
  std::string text = nlohmann::json{{"orders", std::move(orders)}, {"total", list->total}}.dump();
  if (m_cache != nullptr) m_cache->put(key, text);
  return text;
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
