#include "core/handler/stats_report.hpp"

#include "core/orders/order.hpp"
#include "core/queue/queue_json.hpp"

namespace acmo {

nlohmann::json handlers_json(const std::vector<HandlerRecord>& handlers, int64_t now)
{
  nlohmann::json list = nlohmann::json::array();
  int64_t running = 0, processed = 0, dead = 0, retried = 0;
  for (const auto& h : handlers) {
    const std::string state = h.state(now);
    running += state == "running";
    processed += h.processed;
    dead += h.dead_lettered;
    retried += h.retried;
    list.push_back({{"id", h.id},
                    {"pid", h.pid},
                    {"host", h.host},
                    {"state", state},
                    {"since", format_timestamp(h.started_at_ms)},
                    {"heartbeatAgeMs", now - h.heartbeat_at_ms},
                    {"processed", h.processed},
                    {"deadLettered", h.dead_lettered},
                    {"retried", h.retried},
                    {"batches", h.batches},
                    {"latencyP50Ms", static_cast<double>(h.latency_p50_us) / 1000.0},
                    {"latencyP99Ms", static_cast<double>(h.latency_p99_us) / 1000.0},
                    {"lastError", h.last_error},
                    {"request", h.request.empty() ? nlohmann::json() : nlohmann::json(h.request)}});
  }
  return {{"running", running},
          {"processed", processed},
          {"deadLettered", dead},
          {"retried", retried},
          {"handlers", std::move(list)}};
}

nlohmann::json cache_stats_json(const CacheStats& s)
{
  return {{"backend", s.backend}, {"hits", s.hits},   {"misses", s.misses},
          {"hitRate", s.hit_rate()}, {"keys", s.keys}, {"errors", s.errors}};
}

Expected<StatsReport> read_stats(Queue& queue, OrderStore& store,
                                 std::string_view store_backend, Cache* cache, int64_t now_ms)
{
  return read_stats(queue, &store, "", store_backend, cache, now_ms);
}

Expected<StatsReport> read_stats(Queue& queue, OrderStore* store,
                                 const std::string& store_error, std::string_view store_backend,
                                 Cache* cache, int64_t now_ms)
{
  StatsReport r;
  r.now_ms = now_ms;
  auto q = queue.stats();
  if (!q) return Unexpected(q.error());
  r.queue = std::move(*q);
  auto handlers = list_handlers(queue, now_ms);
  if (!handlers) return Unexpected(handlers.error());
  r.handlers = std::move(*handlers);
  r.store_error = store_error;
  if (store != nullptr) {
    auto orders = store->list("", 0, 0);
    if (orders) {
      r.orders = orders->total;
    } else {
      r.store_error = orders.error().message;
    }
  }
  r.store_backend = store_backend;
  if (cache != nullptr) {
    r.cache = cache->stats();
  } else {
    r.cache.backend = "none";
  }
  return r;
}

nlohmann::json stats_json(const StatsReport& r)
{
  return {{"queue", queue_stats_json(r.queue)},
          {"handler", handlers_json(r.handlers, r.now_ms)},
          {"store", r.store_error.empty()
                      ? nlohmann::json{{"backend", r.store_backend}, {"orders", r.orders}}
                      : nlohmann::json{{"backend", r.store_backend}, {"error", r.store_error}}},
          {"cache", cache_stats_json(r.cache)}};
}

} // namespace acmo
