#include "core/config/backends.hpp"

#include "core/cache/redis_cache.hpp"
#include "core/config/config.hpp"
#include "core/store/pg_order_store.hpp"

namespace acmo {

namespace {

Expected<std::unique_ptr<PgOrderStore>> open_pg(const Config& config)
{
  PgOptions o;
  o.url = config.get_string("store.url");
  o.pool_size = static_cast<int>(config.get_int("store.pool_size"));
  o.connect_timeout_ms = config.get_int("store.connect_timeout");
  return PgOrderStore::open(o);
}

} // namespace

Expected<std::unique_ptr<OrderStore>> open_order_store(const Config& config,
                                                       const std::string& db_path)
{
  if (config.get_string("store.backend") == "postgres") {
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
  if (config.get_string("store.backend") == "postgres") {
    auto store = open_pg(config);
    if (!store) return Unexpected(store.error());
    return std::unique_ptr<OrderWriter>(std::move(*store));
  }
  return std::unique_ptr<OrderWriter>();
}

std::unique_ptr<Cache> open_cache(const Config& config)
{
  const std::string& backend = config.get_string("cache.backend");
  if (backend == "none") return std::make_unique<NullCache>();
  if (backend == "redis") {
    RedisCacheOptions o;
    o.url = config.get_string("cache.url");
    o.prefix = config.get_string("cache.prefix");
    o.ttl_ms = config.get_int("cache.ttl");
    o.timeout_ms = config.get_int("cache.timeout");
    // Connections open as they are needed: at most one per thread that may ask at once.
    o.max_connections = static_cast<int>(config.get_int("server.threads") +
                                         config.get_int("handler.concurrency"));
    return std::make_unique<RedisCache>(std::move(o));
  }
  return std::make_unique<MemoryCache>(static_cast<size_t>(config.get_int("cache.capacity")),
                                       config.get_int("cache.ttl"), SystemClock::instance(),
                                       static_cast<size_t>(config.get_int("cache.max_bytes")));
}

HandlerOptions handler_options_from(const Config& config)
{
  HandlerOptions o;
  o.concurrency = static_cast<int>(config.get_int("handler.concurrency"));
  o.batch_size = static_cast<int>(config.get_int("handler.batch_size"));
  o.wait_ms = config.get_int("handler.wait");
  return o;
}

} // namespace acmo
