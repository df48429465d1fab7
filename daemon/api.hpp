// acmo serve's API (docs/http-api.md): the route table, the checks every request passes
// (tokens, rate limits, the body's size, type and JSON), and the handlers of the orders and
// monitoring endpoints. A Request goes in, a Response comes out: no socket, so that all of it
// is tested without a server (tests/unit/test_api.cpp). The connection layer that feeds it is
// daemon/http_connections.*.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/cache/cache.hpp"
#include "core/handler/order_handler.hpp"
#include "core/queue/queue.hpp"
#include "core/store/order_store.hpp"
#include "core/util/error.hpp"
#include "daemon/http_connections.hpp"

namespace acmo::daemon {

// The [server] keys the API keeps to, and what it needs to know of the others.
struct ApiOptions {
  int64_t max_body = 1'048'576;
  // Bearer tokens. With api_tokens set, every endpoint but /health needs one of them (or an
  // admin token); with admin_tokens set, the admin endpoints (purge, cache clear, DLQ) need
  // one of those. Empty lists: no check. A metrics token reads /metrics and nothing else;
  // with metrics_tokens or api_tokens set, /metrics needs a metrics, API or admin token,
  // unless metrics_open makes it open.
  std::vector<std::string> api_tokens;
  std::vector<std::string> admin_tokens;
  std::vector<std::string> metrics_tokens;
  bool metrics_open = false;
  int64_t rate_limit = 0; // requests per second per client (a valid token, else the address)
  int64_t rate_burst = 0; // bucket size; 0: rate_limit
  std::string group_by = "single";   // queue.group_by
  std::string store_backend = "sqlite";
  int64_t backlog_max_age_ms = 300'000; // server.backlog_max_age; 0: no age check
  int read_stores = 2;    // stores that serve the reads missing the cache, each one at a time
};

// What the API serves from. The queue, stores and cache must outlive it.
struct ApiParts {
  Queue* queue = nullptr;
  std::string db_path; // the queue's database (the handler registry lives there)
  std::function<Expected<std::unique_ptr<OrderStore>>()> open_store;
  std::vector<std::unique_ptr<OrderStore>> stores; // opened already; open() opens the rest
  Cache* cache = nullptr;           // null: no cache
  OrderHandler* handler = nullptr;  // the in-process handler, or null (--no-handler)
  int64_t handler_started_ms = 0;
};

class Api final : public RequestHandler
{
public:
  Api(ApiOptions options, ApiParts parts);
  ~Api() override;
  Api(const Api&) = delete;
  Api& operator=(const Api&) = delete;

  // Open the read stores.
  Expected<void> open();

  std::optional<Response> refuse_early(const Request& head) override;
  Response handle(Request& request) override;
  void answered_by_connections(const Response& response) override;

  struct Impl;

private:
  std::unique_ptr<Impl> m_impl;
};

} // namespace acmo::daemon
