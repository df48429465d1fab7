// What a configuration sets, typed: every key's value in the options of the layer it
// configures. Each row of config_keys() (core/config/config.cpp) names the field its key fills
// here; a loaded Config keeps them filled (Config::settings), so that no command reads a value
// back by its key's name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/cache/redis_cache.hpp"
#include "core/handler/order_handler.hpp"
#include "core/queue/queue.hpp"
#include "core/store/pg_order_store.hpp"

namespace acmo {

// The [server] keys acmo serve's HTTP server keeps to (daemon::HttpServerOptions adds the
// address and what it needs of the other tables). The defaults are config_keys()'s, which a
// unit test checks.
struct ServerOptions {
  int threads = 64;                    // requests answered at once
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
};

// Where the queue lives (queue.backend, queue.url, queue.schema; docs/queue.md §11).
struct QueueBackendSettings {
  std::string backend; // "sqlite" (the data dir's file) or "postgres"
  std::string url;     // queue.url; empty: store.url (see queue_url)
  std::string schema;  // queue.schema: the PostgreSQL schema of the queue's tables
};

struct StoreSettings {
  std::string backend; // "sqlite" or "postgres"
  PgOptions postgres;  // store.url, store.pool_size, store.connect_timeout
};

struct CacheSettings {
  std::string backend;     // "memory", "redis" or "none"
  int64_t ttl_ms = 0;      // of either cache
  size_t capacity = 0;     // of the memory cache: entries
  size_t max_bytes = 0;    // and bytes
  RedisCacheOptions redis; // cache.url, cache.prefix, cache.timeout
};

struct LogSettings {
  std::string level;  // "error", "warn", "info" or "debug"
  std::string file;   // of --daemon; empty: the data dir's acmo-COMMAND.log
  std::string format; // "text" or "json"
  bool access = false;
};

struct Settings {
  std::string data_dir; // empty: the default (core/util/paths.hpp)
  QueueOptions queue;   // the [queue] keys but group_by; see queue_options_from for dlq_name
  std::string group_by; // queue.group_by: "single" or "order"
  QueueBackendSettings queue_backend;
  HandlerOptions handler;
  StoreSettings store;
  CacheSettings cache;
  std::string listen;          // server.listen, HOST:PORT
  bool serve_handler = false;  // server.handler
  ServerOptions server;
  LogSettings log;
};

} // namespace acmo
