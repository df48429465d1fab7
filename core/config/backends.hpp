// Opening the order store and the cache a configuration names (docs/orders.md §10, §11): store.backend
// "sqlite" (the queue's database) or "postgres" (store.url), and cache.backend "memory",
// "redis" (cache.url) or "none".
#pragma once

#include <memory>
#include <string>

#include "core/cache/cache.hpp"
#include "core/handler/order_handler.hpp"
#include "core/store/order_store.hpp"
#include "core/util/error.hpp"

namespace acmo {

class Config;

// The store for reading orders. `db_path` is the queue's database, where the embedded store
// lives; open the Queue first (it creates and migrates the schema). A PostgreSQL server that
// does not answer is Errc::unavailable (exit 75).
Expected<std::unique_ptr<OrderStore>> open_order_store(const Config& config,
                                                       const std::string& db_path);

// The store the handler writes to when it is not the queue's own database (PostgreSQL), or
// null for the embedded SQLite store, which the handler applies inside Queue::settle.
Expected<std::unique_ptr<OrderWriter>> open_order_writer(const Config& config);

// The cache; never fails: a Redis server that is down is counted in the stats and reads go
// to the store until it is back. "none" gives a cache that holds nothing.
std::unique_ptr<Cache> open_cache(const Config& config);

// handler.concurrency, handler.batch_size and handler.wait, and whether the writer shares the
// queue's transaction (queue_shares_store_database); writer and cache are left null.
HandlerOptions handler_options_from(const Config& config);

} // namespace acmo
