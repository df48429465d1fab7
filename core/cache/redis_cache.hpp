// The Redis adapter of the Cache port (cache.backend = "redis", docs/orders.md §11), over hiredis.
//
// Keys live under a prefix (default "acmo:"): "acmo:order:ID" holds an order's JSON and
// "acmo:orders:status=…" a list's. Every entry is written with SET … PX cache.ttl. acmo's own
// bookkeeping lives under "PREFIX~" ("~stats", "~index:orders:"), which keys() does not list.
//
// Lists are invalidated after every committed batch, so that has to be cheap: each list key is
// written in a MULTI with an SADD to an index set ("PREFIX~index:orders:"), and invalidating
// the lists takes the set's members and deletes the set atomically (MULTI SMEMBERS DEL EXEC),
// then deletes those members: two round trips, whatever the size of the keyspace. A prefix
// that is not indexed falls back to SCAN (never KEYS).
//
// Failures never throw: they are counted, a get is a miss, and the caller reads the store.
// After a failure the cache answers at once (miss, error counted) for `retry_after_ms` before
// it tries to connect again, so an outage does not make every read wait a timeout.
// Invalidations that could not be sent are kept (up to 10,000 keys; beyond that, everything
// under the prefix is cleared) and sent before anything else once Redis answers again.
//
// Hits, misses and errors are counted in a hash, "PREFIX~stats", shared by every process
// that uses the prefix, so `acmo stats` shows the figures of the handler and the servers. A
// process adds its counts there at most once a second, in the same round trip as a get or a
// put (after an invalidation, in one of its own), and when it is destroyed; stats() sends its
// counts first, then reads the hash. Counts made while Redis is down are kept and sent when
// it is back, except by a process that ends during the outage.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/cache/cache.hpp"
#include "core/util/error.hpp"
#include "core/util/pool.hpp"

struct redisContext;
struct redisReply;

namespace acmo {

// Where a Redis server is: redis://[:PASSWORD@]HOST[:PORT][/DB] or unix://PATH[?db=DB].
struct RedisAddress {
  std::string host;      // empty for a Unix socket
  int port = 6379;
  std::string unix_path; // empty for TCP
  int db = 0;
  std::string password;
};

// Errc::invalid_input, with field "cache.url", naming what is wrong with the URL.
Expected<RedisAddress> parse_redis_url(std::string_view url);

struct RedisCacheOptions {
  std::string url = "redis://127.0.0.1:6379";
  std::string prefix = "acmo:";
  int64_t ttl_ms = 60'000;
  int64_t timeout_ms = 100; // connect and each command's round trip
  int max_connections = 8;  // the pool grows up to this many; more callers wait for one
  int64_t retry_after_ms = 500;
  // Prefixes whose keys are tracked in an index set, so that invalidate_prefix is cheap.
  std::vector<std::string> indexed_prefixes{std::string(k_order_list_prefix)};
};

// Thread-safe: callers share a small pool of connections, one per round trip in flight.
class RedisCache final : public Cache
{
public:
  // Does not connect; the first command does. A bad URL makes every command fail (counted).
  explicit RedisCache(RedisCacheOptions options);
  ~RedisCache() override;
  RedisCache(const RedisCache&) = delete;
  RedisCache& operator=(const RedisCache&) = delete;

  std::optional<std::string> get(std::string_view key) override;
  void put(std::string_view key, std::string_view value) override;
  void invalidate(std::string_view key) override;
  void invalidate_prefix(std::string_view prefix) override;
  void invalidate_batch(const std::vector<std::string>& keys, std::string_view prefix) override;
  std::vector<std::string> keys() override;
  int64_t clear() override;
  // The shared figures (see above); when Redis cannot be reached, this process's own.
  CacheStats stats() override;

  // The last failure's message, or empty.
  std::string last_error() const;

private:
  struct ReplyFree {
    void operator()(redisReply* r) const;
  };
  using Reply = std::unique_ptr<redisReply, ReplyFree>;
  using Command = std::vector<std::string>;
  struct ContextFree {
    void operator()(redisContext* c) const;
  };
  using Context = std::unique_ptr<redisContext, ContextFree>;

  // Send `commands` in one round trip and read their replies: fails fast while Redis is
  // marked down, sends pending invalidations first, retries once on a fresh connection when
  // a pooled one turns out to be dead. A failure here is a connection failure; an error reply
  // is a reply.
  Expected<std::vector<Reply>> exec(const std::vector<Command>& commands);
  Expected<std::vector<Reply>> round_trip(const std::vector<Command>& commands);
  Expected<Context> connect();
  void mark_down(const std::string& message);
  void record_error(const std::string& message);
  // Count a failure of a Cache method (the caller goes on as on a miss).
  void fail(const Error& error);

  std::string full_key(std::string_view key) const;
  std::string index_key(std::string_view indexed_prefix) const;
  bool is_internal(std::string_view full_key) const; // "PREFIX~..."
  const std::string* indexed_prefix_of(std::string_view key) const;
  bool is_indexed(std::string_view prefix) const;
  // SCAN the keys under PREFIX + `sub_prefix`; `each` gets every batch of full keys.
  template<typename Each> Expected<void> scan(std::string_view sub_prefix, Each&& each);
  // DEL, pipelined in chunks; how many were deleted.
  Expected<int64_t> delete_keys(const std::vector<std::string>& full_keys);
  // Delete `keys` and the keys under an indexed prefix: two round trips.
  Expected<void> drop_indexed(const std::vector<std::string>& keys, std::string_view prefix);
  Expected<void> try_invalidate(const std::vector<std::string>& keys,
                                std::optional<std::string_view> prefix);
  void invalidate_impl(const std::vector<std::string>& keys,
                       std::optional<std::string_view> prefix);
  // Every key under the prefix but the figures; how many cache entries went.
  Expected<int64_t> clear_all();

  // Invalidations that failed, sent once Redis answers again.
  void remember_invalidation(const std::vector<std::string>& keys,
                             std::optional<std::string_view> prefix);
  Expected<void> send_pending_invalidations();

  // The counts not yet added to the shared hash, as HINCRBY commands (and taken from the
  // pending counters); without `force`, only when the last flush is a second old.
  std::vector<Command> take_counts(bool force);
  void restore_counts(const std::vector<Command>& commands);
  void count(std::atomic<int64_t>& pending, std::atomic<int64_t>& local);

  RedisCacheOptions m_options;
  std::optional<RedisAddress> m_address;
  std::string m_bad_url; // why the URL was refused
  std::string m_stats_key;

  // After a failure, the connections open then are closed rather than reused.
  Pool<Context> m_pool;
  std::atomic<int64_t> m_down_until_ms{0}; // steady clock; 0: up

  std::mutex m_pending_mu; // guards m_pending_*; held while they are sent
  std::atomic<bool> m_has_pending{false};
  std::set<std::string> m_pending_keys;
  std::set<std::string> m_pending_prefixes;
  bool m_pending_clear = false;

  std::atomic<int64_t> m_pending_hits{0}, m_pending_misses{0}, m_pending_errors{0};
  std::atomic<int64_t> m_local_hits{0}, m_local_misses{0}, m_local_errors{0};
  std::atomic<int64_t> m_last_flush_ms{0};

  mutable std::mutex m_error_mu;
  std::string m_last_error;
};

} // namespace acmo
