// The inside of daemon/api.*, shared by its files: api.cpp (the route table and the checks
// every request passes), api_orders.cpp (the orders endpoints) and api_monitoring.cpp (queue,
// handler, cache, health and Prometheus).
#pragma once

#include <atomic>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/cache/cached_orders.hpp"
#include "daemon/api.hpp"
#include "daemon/metrics.hpp"
#include "daemon/rate_limiter.hpp"

namespace acmo::daemon {

// Who may call a route: anyone; an API or admin token; an admin token; a metrics, API or admin
// token (GET /metrics, unless server.metrics_open makes it open).
enum class Access { open, api, admin, metrics };

// One request being answered: what the route table found, and the answer being made.
struct Context {
  const Request& req;
  Response& res;
  std::string id;       // the :id of the path, if the route has one
  nlohmann::json body;  // the parsed body, for routes that take one
};

// An error answer: {"error": {"code", "message", "details"}}.
void set_error(Response& res, int status, std::string_view code, std::string_view message,
               nlohmann::json details = nullptr);
// The answer for a core error, its status by its code (invalid input 400, not found 404,
// conflict 409, busy or unavailable 503 with Retry-After).
void set_core_error(Response& res, const Error& error);
void send_json(Response& res, int status, const nlohmann::json& doc);

struct Api::Impl {
  using Handler = void (Impl::*)(Context&);

  struct Route {
    const char* method;
    const char* pattern; // segments; ":id" matches one
    Access access;
    bool takes_body;
    Handler handler;
    // The query parameters the route takes; any other, or one given twice, is refused (a typo
    // must never fall back to a default action).
    std::vector<std::string_view> params;
    // Those of `params` that may be given more than once (a list).
    std::vector<std::string_view> repeatable = {};
  };

  Impl(ApiOptions o, ApiParts p);
  // The route table, in the order routes are matched; /metrics open or not as the options say.
  static std::vector<Route> route_table(const ApiOptions& options);

  ApiOptions options;
  ApiParts parts;
  std::vector<Route> routes;
  RateLimiter limiter;
  // Failed authentications per client address: 10 at once, then one a second.
  RateLimiter auth_failures{1.0, 10.0};
  // The requests answered, in a slot per route (route i, slot i).
  HttpMetrics metrics;

  // Read stores, each used by one request at a time.
  std::vector<std::unique_ptr<OrderStore>> stores;
  std::vector<std::unique_ptr<std::mutex>> store_locks;
  std::atomic<size_t> next_store{0};
  // Keeps a cache of this process's own up with what other processes' handlers change.
  CacheFollower follower;
  CacheFollower* follower_of_cache()
  {
    return parts.cache != nullptr && parts.cache->local() ? &follower : nullptr;
  }

  // --- api.cpp -------------------------------------------------------------------------------
  // The route of a request: the route, or the answer (404, 405 with Allow, OPTIONS' 204).
  const Route* route_of(const Request& req, Response& res, std::string& id) const;
  // The metrics slot of a request: its route's, or that of its method among the unmatched.
  size_t slot_of(const Route* route, const Request& req) const;
  // The checks before any body is read: tokens, the rate limit, the admin route's
  // parameters. False with the answer set.
  bool admit(const Route& route, const Request& req, Response& res);
  bool authorize(const Route& route, const Request& req, Response& res, bool& token_valid);
  // Answer a request; `slot` is set to its metrics slot once its route is known.
  void dispatch(const Request& req, Response& res, size_t& slot);

  // Run `fn` with one of the read stores, which no other request uses meanwhile.
  template<typename Fn> auto with_store(Fn&& fn)
  {
    const size_t n = stores.size();
    const size_t start = next_store.fetch_add(1, std::memory_order_relaxed) % n;
    for (size_t i = 0; i < n; ++i) {
      const size_t k = (start + i) % n;
      std::unique_lock lock(*store_locks[k], std::try_to_lock);
      if (lock.owns_lock()) return fn(*stores[k]);
    }
    std::lock_guard lock(*store_locks[start]);
    return fn(*stores[start]);
  }

  // --- api_orders.cpp ------------------------------------------------------------------------
  void enqueue(Context& ctx, OrderEvent event);
  bool check_id(Context& ctx);
  void create_order(Context& ctx);
  void update_order(Context& ctx);
  void delete_order(Context& ctx);
  void get_order(Context& ctx);
  void list_orders(Context& ctx);
  void order_events(Context& ctx);

  // --- api_monitoring.cpp --------------------------------------------------------------------
  void sqs_stats(Context& ctx);
  void sqs_purge(Context& ctx);
  void peek(Context& ctx);
  void groups(Context& ctx);
  void dlq_list(Context& ctx);
  void dlq_redrive(Context& ctx);
  nlohmann::json in_process_handler_json();
  void handler_status(Context& ctx);
  void handler_stats(Context& ctx);
  CacheStats cache_figures();
  void cache_stats(Context& ctx);
  void cache_keys(Context& ctx);
  void cache_clear(Context& ctx);
  // The checks of /health and /health/ready: {"queue": {"ok", "error"?}, "store", "cache"}.
  nlohmann::json health_checks();
  // The backlog: whether messages wait with no live handler to apply them, or the oldest has
  // waited longer than server.backlog_max_age ({"ok", "waiting", "oldestAgeSeconds",
  // "liveHandlers", "error"}); nothing when the queue cannot say (its own check fails then).
  std::optional<nlohmann::json> backlog_check();
  // Handlers of any process whose heartbeat is current, or nothing when the registry is unread.
  std::optional<int64_t> live_handlers();
  void health(Context& ctx);
  void health_live(Context& ctx);
  void health_ready(Context& ctx);
  void prometheus(Context& ctx);
};

// An integer query parameter within [min, max], or `fallback` when absent.
Expected<int64_t> int_param(const Request& req, const char* name, int64_t fallback, int64_t min,
                            int64_t max);

} // namespace acmo::daemon
