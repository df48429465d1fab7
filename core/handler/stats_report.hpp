// The figures document of docs/commands.md §7: what `acmo stats --json` prints and `GET /handler/stats`
// answers, built in one place so that both say the same thing in the same names.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/cache/cache.hpp"
#include "core/handler/handler_registry.hpp"
#include "core/queue/queue.hpp"
#include "core/store/order_store.hpp"
#include "core/util/error.hpp"

namespace acmo {

// {"running", "processed", "deadLettered", "retried", "handlers": [{"id", "pid", "host",
//  "state", "since", "heartbeatAgeMs", "processed", ...}]}: totals over the handlers seen in
// the last hour, running or not.
nlohmann::json handlers_json(const std::vector<HandlerRecord>& handlers, int64_t now_ms);

// {"backend", "hits", "misses", "hitRate", "keys", "errors"}
nlohmann::json cache_stats_json(const CacheStats& stats);

// Everything the document is made of, read once.
struct StatsReport {
  QueueStats queue;
  std::vector<HandlerRecord> handlers;
  std::string store_backend; // "sqlite", "postgres"
  int64_t orders = 0;
  std::string store_error; // the store did not answer (the other figures are still there)
  CacheStats cache;
  int64_t now_ms = 0;
};

// Read the figures: the queue's, the handlers registered with it, the store's order count, and
// the cache's (`cache` may be null: no cache).
Expected<StatsReport> read_stats(Queue& queue, OrderStore& store,
                                 std::string_view store_backend, Cache* cache, int64_t now_ms);
// The same when the store could not be opened (`store` null, `store_error` why): the queue's,
// handlers' and cache's figures do not depend on it. A store that fails to answer is reported
// in store_error, not as a failure of the whole.
Expected<StatsReport> read_stats(Queue& queue, OrderStore* store,
                                 const std::string& store_error, std::string_view store_backend,
                                 Cache* cache, int64_t now_ms);

// {"queue": queue_stats_json (core/queue/queue_json.hpp), "handler": {...}, "store": {"backend", "orders"}, "cache": {...}}
nlohmann::json stats_json(const StatsReport& report);

} // namespace acmo
