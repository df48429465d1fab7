// acmo serve's HTTP server (docs/http-api.md): the API (daemon/api.*: routes, checks, handlers)
// behind the connection layer (daemon/http_connections.*: sockets, framing, timeouts). It holds
// no state of its own worth keeping: every accepted write is a durable Queue::send before the
// 202 goes out, so stopping the server, or killing it, loses nothing that was acknowledged.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/cache/cache.hpp"
#include "core/handler/order_handler.hpp"
#include "core/queue/queue.hpp"
#include "core/store/order_store.hpp"
#include "core/util/error.hpp"

namespace acmo::daemon {

// The [server] keys (docs/configuration.md), and what the server needs to know of the others.
struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 3000;                     // 0: any free port (tests); see HttpServer::port()
  int threads = 8;                     // requests answered at once
  int64_t max_body = 1'048'576;        // bytes; 413 above
  int64_t read_timeout_ms = 5'000;     // for a whole request to arrive, from its first byte
  int64_t write_timeout_ms = 5'000;
  int64_t keep_alive_timeout_ms = 5'000;
  int64_t keep_alive_max = 1'000;      // requests on one connection
  int64_t max_connections_per_client = 1'024;
  int64_t backlog_max_age_ms = 300'000; // /health fails once the oldest message is older; 0: off
  // Bearer tokens. With api_tokens set, every endpoint but /health needs one of them (or an
  // admin token); with admin_tokens set, the admin endpoints (purge, cache clear, DLQ) need
  // one of those. Empty lists: no check. A metrics token reads /metrics and nothing else;
  // with metrics_tokens or api_tokens set, /metrics needs a metrics, API or admin token,
  // unless metrics_open makes it open.
  std::vector<std::string> api_tokens;
  std::vector<std::string> admin_tokens;
  std::vector<std::string> metrics_tokens;
  bool metrics_open = false;
  int64_t rate_limit = 0;              // requests per second per client; 0: off
  int64_t rate_burst = 0;              // bucket size; 0: rate_limit
  std::string group_by = "single";     // queue.group_by
  std::string store_backend = "sqlite";
};

// What the server serves from. The queue, stores and cache must outlive the server.
struct HttpServerParts {
  Queue* queue = nullptr;
  std::string db_path; // the queue's database (the handler registry lives there)
  // Reads go through a few stores used one request at a time each; this opens one.
  std::function<Expected<std::unique_ptr<OrderStore>>()> open_store;
  Cache* cache = nullptr;           // null: no cache
  OrderHandler* handler = nullptr;  // the in-process handler, or null (--no-handler)
  int64_t handler_started_ms = 0;
};

class HttpServer
{
public:
  HttpServer(HttpServerOptions options, HttpServerParts parts);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Open the read stores and bind the listening socket. Errc::unavailable when the address is
  // taken or cannot be bound, naming it.
  Expected<void> bind();
  // The port bound (the one chosen, with port 0).
  int port() const;
  // Answer requests until stop(); then every request in flight is finished before it returns.
  void run();
  // Stop accepting connections and make run() return once the requests in flight are
  // answered. Safe from any thread, and more than once.
  void stop();

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

} // namespace acmo::daemon
