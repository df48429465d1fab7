// Cache-aside reads of orders (docs/orders.md §11): an order by id and the lists are served from the
// cache when they are there, else read from the store and put in the cache. What is cached is
// the JSON text the API and `acmo orders` print, so a hit costs no serialisation. A cache
// failure is counted by the cache and the read goes to the store; it never fails a read.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "core/cache/cache.hpp"
#include "core/store/change_signal.hpp"
#include "core/store/order_store.hpp"
#include "core/util/error.hpp"

namespace acmo {

// How far a process's own cache (cache.backend = "memory") has followed the store's change
// feed. Before every read the cache catches up: it drops the orders that any process changed
// since, so it never answers with an order older than what was committed before the read began.
// An entry read from the store is kept only if no catch-up came in between, since that one may
// already have dropped it. One per cache, shared by every reader of it.
class CacheFollower
{
public:
  // `max_named`: orders named by one catch-up beyond which it drops every order instead.
  explicit CacheFollower(int64_t max_named = 1'000) : m_max_named(max_named) {}
  // The embedded store's change signal: while no order change has begun since the last
  // catch-up that saw every begun one ended, a catch-up asks the store nothing.
  void use_signal(std::unique_ptr<ChangeSignal> signal) { m_signal = std::move(signal); }

  // Drop what changed since the last catch-up; the mark to give put() after reading the store.
  // A store that cannot say (PostgreSQL away) is the error, and the cache is not to be used.
  Expected<int64_t> catch_up(OrderStore& store, Cache& cache);
  // Keep the entry, unless a catch-up since `mark` may have dropped it already.
  void put(Cache& cache, int64_t mark, std::string_view key, std::string_view value);

private:
  const int64_t m_max_named;
  std::unique_ptr<ChangeSignal> m_signal;
  std::mutex m_mu;
  // Changed under m_mu; read without it on the fast path.
  std::atomic<int64_t> m_verified{-1}; // every change with a ticket up to this one is dropped
  int64_t m_mark = -1; // the store's mark; -1 before the first catch-up
  std::atomic<int64_t> m_epoch{0}; // catch-ups that dropped something
};

class CachedOrders
{
public:
  // `cache` may be null (no cache). `follower`: for a cache that only this process's handler
  // would invalidate; null for a shared one (Redis) or none.
  CachedOrders(OrderStore& store, Cache* cache, CacheFollower* follower = nullptr)
    : m_store(store), m_cache(cache), m_follower(cache != nullptr ? follower : nullptr)
  {
  }

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
  // Through the cache: the cached text under `key`, else read() put there.
  template<typename Read> Expected<std::string> cached(const std::string& key, Read&& read);

  OrderStore& m_store;
  Cache* m_cache;
  CacheFollower* m_follower;
};

// Drop the cached entries of these orders and every cached list (what the handler does after
// each commit). `cache` may be null.
void invalidate_orders(Cache* cache, const std::vector<std::string>& order_ids);

} // namespace acmo
