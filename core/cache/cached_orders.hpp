// Cache-aside reads of orders (docs/orders.md §11): an order by id and the lists are served from the
// cache when they are there, else read from the store and put in the cache. What is cached is
// the JSON text the API and `acmo orders` print, so a hit costs no serialisation. A cache
// failure is counted by the cache and the read goes to the store; it never fails a read.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/cache/cache.hpp"
#include "core/store/order_store.hpp"
#include "core/util/error.hpp"

namespace acmo {

class CachedOrders
{
public:
  // `cache` may be null (no cache).
  CachedOrders(OrderStore& store, Cache* cache) : m_store(store), m_cache(cache) {}

  // The order as JSON text (order_to_json), or Errc::not_found.
  Expected<std::string> get_json(std::string_view id);
  // {"orders": [...], "total": N} as JSON text.
  Expected<std::string> list_json(std::string_view status, int64_t limit, int64_t offset);
  // The audit trail is not cached: it is read rarely and grows with every event.
  Expected<std::vector<OrderEventRecord>> events(std::string_view id)
  {
    return m_store.events(id);
  }

  // After a change to these orders committed: drop their entries and every cached list.
  void invalidate(const std::vector<std::string>& order_ids);

  // The list cache key of a query: "orders:status=S&limit=L&offset=O".
  static std::string list_key(std::string_view status, int64_t limit, int64_t offset);

private:
  OrderStore& m_store;
  Cache* m_cache;
};

// Drop the cached entries of these orders and every cached list (what the handler does after
// each commit). `cache` may be null.
void invalidate_orders(Cache* cache, const std::vector<std::string>& order_ids);

} // namespace acmo
