// The read cache (docs/orders.md §11): the Cache port and its in-process adapter, an LRU with a TTL.
// Reads are cache-aside; after a change commits, the handler invalidates the order's entry
// and the cached lists. A cache failure never fails a read or an event: it is counted, and
// the caller reads the store.
#pragma once

#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/util/clock.hpp"

namespace acmo {

struct CacheStats {
  std::string backend; // "memory", "redis"
  int64_t hits = 0;
  int64_t misses = 0;
  int64_t errors = 0;
  int64_t keys = 0;
  double hit_rate() const
  {
    const int64_t total = hits + misses;
    return total == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(total);
  }
};

// The keys acmo caches: one order, and every list query under one prefix.
std::string order_cache_key(std::string_view order_id);        // "order:ID"
constexpr std::string_view k_order_list_prefix = "orders:";     // "orders:status=&limit=&offset="

class Cache
{
public:
  virtual ~Cache() = default;
  // The value, or nothing on a miss, an expired entry, or a failure (counted, never thrown).
  virtual std::optional<std::string> get(std::string_view key) = 0;
  virtual void put(std::string_view key, std::string_view value) = 0;
  virtual void invalidate(std::string_view key) = 0;
  virtual void invalidate_prefix(std::string_view prefix) = 0;
  // Drop these keys and every key under `prefix` (what the handler does after each commit). An
  // adapter with a network round trip per call does it in fewer.
  virtual void invalidate_batch(const std::vector<std::string>& keys, std::string_view prefix)
  {
    for (const auto& key : keys) invalidate(key);
    invalidate_prefix(prefix);
  }
  virtual std::vector<std::string> keys() = 0;
  // True for a cache that lives in this process, where no other process's handler can drop
  // what it changed: readers make it follow the store's change feed (CacheFollower).
  virtual bool local() const { return false; }
  // Remove every key of acmo's (for Redis: only under its prefix); how many were removed.
  virtual int64_t clear() = 0;
  virtual CacheStats stats() = 0;
};

// Least recently used entries go first once `capacity` entries or `max_bytes` bytes (keys and
// values, with what each entry costs besides) are reached; a value larger than that is not
// kept. Entries older than `ttl_ms` are misses. Thread-safe.
class MemoryCache final : public Cache
{
public:
  static constexpr size_t k_default_max_bytes = 64 << 20;
  MemoryCache(size_t capacity, int64_t ttl_ms, const Clock& clock = SystemClock::instance(),
              size_t max_bytes = k_default_max_bytes);
  // What an entry costs beside its key and value (the list node, the index entry).
  static constexpr size_t k_entry_overhead = 160;

  std::optional<std::string> get(std::string_view key) override;
  void put(std::string_view key, std::string_view value) override;
  void invalidate(std::string_view key) override;
  void invalidate_prefix(std::string_view prefix) override;
  std::vector<std::string> keys() override;
  bool local() const override { return true; }
  int64_t clear() override;
  CacheStats stats() override;

private:
  struct Entry {
    std::string key;
    std::string value;
    int64_t expires_at = 0;
  };
  using Lru = std::list<Entry>; // most recently used first

  void erase(Lru::iterator it);
  static size_t cost(const Entry& e) { return e.key.size() + e.value.size() + k_entry_overhead; }

  size_t m_capacity;
  size_t m_max_bytes;
  size_t m_bytes = 0;
  int64_t m_ttl_ms;
  const Clock& m_clock;
  std::mutex m_mu;
  Lru m_lru;
  std::unordered_map<std::string, Lru::iterator> m_index;
  CacheStats m_stats;
};

// cache.backend = "none": holds nothing, every get is a miss.
class NullCache final : public Cache
{
public:
  std::optional<std::string> get(std::string_view) override;
  void put(std::string_view, std::string_view) override {}
  void invalidate(std::string_view) override {}
  void invalidate_prefix(std::string_view) override {}
  std::vector<std::string> keys() override { return {}; }
  int64_t clear() override { return 0; }
  CacheStats stats() override;

private:
  std::mutex m_mu;
  int64_t m_misses = 0;
};

} // namespace acmo
