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
#include "core/config/settings.hpp"
#include "core/handler/order_handler.hpp"
#include "core/queue/queue.hpp"
#include "core/store/order_store.hpp"
#include "core/util/error.hpp"

namespace acmo::daemon {

// The [server] keys (docs/configuration.md), and what the server needs to know of the others.
struct HttpServerOptions : ServerOptions {
  std::string host = "127.0.0.1";
  int port = 3000;                     // 0: any free port (tests); see HttpServer::port()
  std::string group_by = "single";     // queue.group_by
  std::string store_backend = "sqlite";
};

// What the server serves from. The queue, stores and cache must outlive the server.
struct HttpServerParts {
  Queue* queue = nullptr;
  std::string db_path; // the queue's database (the handler registry lives there)
  // Reads go through a few stores used one request at a time each; this opens one.
  std::function<Expected<std::unique_ptr<OrderStore>>()> open_store;
  // Read stores opened already (acmo serve opens them while it waits for the database);
  // bind() opens the rest with open_store.
  std::vector<std::unique_ptr<OrderStore>> stores;
  Cache* cache = nullptr;           // null: no cache
  OrderHandler* handler = nullptr;  // the in-process handler, or null (--no-handler)
  int64_t handler_started_ms = 0;
};

// How many read stores a server with these options uses.
int read_store_count(const HttpServerOptions& options);

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
