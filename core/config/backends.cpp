#include "core/config/backends.hpp"

#include "core/cache/redis_cache.hpp"
#include "core/config/config.hpp"
#include "core/store/pg_order_store.hpp"

namespace acmo {

namespace {

Expected<std::unique_ptr<PgOrderStore>> open_pg(const Config& config)
{
  return PgOrderStore::open(config.settings().store.postgres);
}

} // namespace

Expected<std::unique_ptr<OrderStore>> open_order_store(const Config& config,
                                                       const std::string& db_path)
{
  if (config.settings().store.backend == "postgres") {
    auto store = open_pg(config);
    if (!store) return Unexpected(store.error());
    return std::unique_ptr<OrderStore>(std::move(*store));
  }
  auto store = SqliteOrderStore::open(db_path);
  if (!store) return Unexpected(store.error());
  return std::unique_ptr<OrderStore>(std::move(*store));
}

Expected<std::unique_ptr<OrderWriter>> open_order_writer(const Config& config)
{
  if (config.settings().store.backend == "postgres") {
    auto store = open_pg(config);
    if (!store) return Unexpected(store.error());
    return std::unique_ptr<OrderWriter>(std::move(*store));
  }
  return std::unique_ptr<OrderWriter>();
}

std::unique_ptr<Cache> open_cache(const Config& config)
{
  const Settings& s = config.settings();
  if (s.cache.backend == "none") return std::make_unique<NullCache>();
  if (s.cache.backend == "redis") {
    RedisCacheOptions o = s.cache.redis;
    o.ttl_ms = s.cache.ttl_ms;
    // Connections open as they are needed: at most one per thread that may ask at once.
    o.max_connections = s.server.threads + s.handler.concurrency;
    return std::make_unique<RedisCache>(std::move(o));
  }
  return std::make_unique<MemoryCache>(s.cache.capacity, s.cache.ttl_ms, SystemClock::instance(),
                                       s.cache.max_bytes);
}

HandlerOptions handler_options_from(const Config& config)
{
  HandlerOptions o = config.settings().handler;
  o.writer_in_queue = queue_shares_store_database(config.settings());
  return o;
}

} // namespace acmo
