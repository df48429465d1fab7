#include "daemon/http_server.hpp"

#include <algorithm>

#include "daemon/api.hpp"
#include "daemon/http_connections.hpp"

namespace acmo::daemon {

// A few stores serve the reads that miss the cache; more would only wait on the database.
int read_store_count(const HttpServerOptions& options)
{
  return std::clamp(options.threads / 4, 1, 8);
}

namespace {

ApiOptions api_options(const HttpServerOptions& o)
{
  ApiOptions a;
  a.max_body = o.max_body;
  a.api_tokens = o.api_tokens;
  a.admin_tokens = o.admin_tokens;
  a.metrics_tokens = o.metrics_tokens;
  a.metrics_open = o.metrics_open;
  a.rate_limit = o.rate_limit;
  a.rate_burst = o.rate_burst;
  a.group_by = o.group_by;
  a.store_backend = o.store_backend;
  a.backlog_max_age_ms = o.backlog_max_age_ms;
  a.read_stores = read_store_count(o);
  return a;
}

ConnectionOptions connection_options(const HttpServerOptions& o)
{
  ConnectionOptions c;
  c.host = o.host;
  c.port = o.port;
  c.threads = o.threads;
  c.max_body = o.max_body;
  c.read_timeout_ms = o.read_timeout_ms;
  c.write_timeout_ms = o.write_timeout_ms;
  c.keep_alive_timeout_ms = o.keep_alive_timeout_ms;
  c.keep_alive_max = o.keep_alive_max;
  c.max_connections_per_client = o.max_connections_per_client;
  return c;
}

ApiParts api_parts(HttpServerParts p)
{
  ApiParts a;
  a.queue = p.queue;
  a.db_path = std::move(p.db_path);
  a.open_store = std::move(p.open_store);
  a.stores = std::move(p.stores);
  a.cache = p.cache;
  a.handler = p.handler;
  a.handler_started_ms = p.handler_started_ms;
  return a;
}

} // namespace

struct HttpServer::Impl {
  Impl(const HttpServerOptions& o, HttpServerParts p)
    : api(api_options(o), api_parts(std::move(p))), connections(connection_options(o), api)
  {
  }
  Api api;
  Connections connections;
};

HttpServer::HttpServer(HttpServerOptions options, HttpServerParts parts)
  : m_impl(std::make_unique<Impl>(options, std::move(parts)))
{
}

HttpServer::~HttpServer() { stop(); }

Expected<void> HttpServer::bind()
{
  if (auto ok = m_impl->api.open(); !ok) return ok;
  return m_impl->connections.bind();
}

int HttpServer::port() const { return m_impl->connections.port(); }

void HttpServer::run() { m_impl->connections.run(); }

void HttpServer::stop() { m_impl->connections.stop(); }

} // namespace acmo::daemon
