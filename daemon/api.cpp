#include "daemon/api.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>

#include <fmt/core.h>

#include "core/util/json_input.hpp"
#include "core/util/log.hpp"
#include "core/util/sha256.hpp"
#include "daemon/api_impl.hpp"

namespace acmo::daemon {

namespace {

using nlohmann::json;

int64_t now_us()
{
  return std::chrono::duration_cast<std::chrono::microseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

// "application/json; charset=utf-8" → true.
bool is_json_media_type(std::string_view type)
{
  type = type.substr(0, type.find(';'));
  while (!type.empty() && type.back() == ' ') type.remove_suffix(1);
  while (!type.empty() && type.front() == ' ') type.remove_prefix(1);
  std::string lower;
  for (char c : type) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return lower == "application/json"
         || (lower.rfind("application/", 0) == 0 && lower.size() > 17
             && lower.compare(lower.size() - 5, 5, "+json") == 0);
}

bool same_token(std::string_view a, std::string_view b)
{
  // Compare digests, in time independent of where they differ and of either's length.
  const auto x = sha256_bytes(a);
  const auto y = sha256_bytes(b);
  unsigned char diff = 0;
  for (size_t i = 0; i < x.size(); ++i) diff |= static_cast<unsigned char>(x[i] ^ y[i]);
  return diff == 0;
}

bool token_in(std::string_view token, const std::vector<std::string>& tokens)
{
  bool found = false;
  for (const auto& t : tokens) found |= same_token(token, t);
  return found;
}

// The token of "Authorization: Bearer TOKEN" (the scheme in any letter case), or "".
std::string bearer_token(const Request& req)
{
  std::string_view header = req.headers.get("Authorization");
  if (header.size() < 7 || !equals_ignoring_case(header.substr(0, 6), "Bearer")
      || header[6] != ' ') {
    return {};
  }
  header.remove_prefix(7);
  while (!header.empty() && header.front() == ' ') header.remove_prefix(1);
  return std::string(header);
}

bool match(std::string_view pattern, std::string_view path, std::string& id)
{
  for (;;) {
    if (pattern.empty() || path.empty()) return pattern.empty() && path.empty();
    if (pattern[0] != '/' || path[0] != '/') return false;
    pattern.remove_prefix(1);
    path.remove_prefix(1);
    const size_t pe = pattern.find('/');
    const size_t se = path.find('/');
    std::string_view pseg = pattern.substr(0, pe);
    std::string_view sseg = path.substr(0, se);
    if (pseg == ":id") {
      if (sseg.empty()) return false;
      id = sseg;
    } else if (pseg != sseg) {
      return false;
    }
    pattern = pe == std::string_view::npos ? std::string_view() : pattern.substr(pe);
    path = se == std::string_view::npos ? std::string_view() : path.substr(se);
  }
}

void unauthorized(Response& res, bool missing, std::string_view what)
{
  set_error(res, 401, "unauthorized",
            missing ? fmt::format("send {} as Authorization: Bearer TOKEN", what)
                    : fmt::format("the bearer token is not {}", what));
  res.set_header("WWW-Authenticate", "Bearer");
}

} // namespace

void set_error(Response& res, int status, std::string_view code, std::string_view message,
               json details)
{
  res.status = status;
  json doc = {{"error", {{"code", code}, {"message", message}, {"details", std::move(details)}}}};
  res.content_type = "application/json";
  res.body = doc.dump(-1, ' ', false, json::error_handler_t::replace);
}

void set_core_error(Response& res, const Error& error)
{
  int status = 500;
  switch (error.code) {
  case Errc::invalid_input: status = 400; break;
  case Errc::not_found: status = 404; break;
  case Errc::stale: status = 409; break;
  case Errc::conflict: status = 409; break;
  case Errc::busy: status = 503; break;
  case Errc::unavailable: status = 503; break;
  case Errc::internal: status = 500; break;
  }
  json details = error.field.empty() ? json(nullptr) : json{{"field", error.field}};
  set_error(res, status, errc_name(error.code), error.message, std::move(details));
  if (status == 503) res.set_header("Retry-After", "1");
}

void send_json(Response& res, int status, const json& doc)
{
  res.status = status;
  res.content_type = "application/json";
  res.body = doc.dump(-1, ' ', false, json::error_handler_t::replace);
}

Expected<int64_t> int_param(const Request& req, const char* name, int64_t fallback, int64_t min,
                            int64_t max)
{
  if (!req.has_param(name)) return fallback;
  const std::string text = req.param(name);
  int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || value < min || value > max) {
    return make_error(Errc::invalid_input,
                      fmt::format("{} must be a whole number from {} to {}, not \"{}\"", name, min,
                                  max, text),
                      name);
  }
  return value;
}

namespace {

// The metrics labels of the routes, {method, pattern}, in their order.
std::vector<std::pair<std::string_view, std::string_view>> labels_of(
  const std::vector<Api::Impl::Route>& routes)
{
  std::vector<std::pair<std::string_view, std::string_view>> labels;
  for (const auto& r : routes) labels.emplace_back(r.method, r.pattern);
  return labels;
}

} // namespace

Api::Impl::Impl(ApiOptions o, ApiParts p)
  : options(std::move(o)), parts(std::move(p)), routes(route_table(options)),
    limiter(static_cast<double>(options.rate_limit), static_cast<double>(options.rate_burst)),
    metrics(labels_of(routes))
{
}

std::vector<Api::Impl::Route> Api::Impl::route_table(const ApiOptions& options)
{
  // A scraper on a private network may read /metrics with no token (server.metrics_open).
  const Access metrics_access = options.metrics_open ? Access::open : Access::metrics;
  return {
    {"GET", "/api/orders", Access::api, false, &Impl::list_orders, {"status", "limit", "offset"}},
    {"POST", "/api/orders", Access::api, true, &Impl::create_order, {}},
    {"GET", "/api/orders/:id", Access::api, false, &Impl::get_order, {}},
    {"PUT", "/api/orders/:id", Access::api, true, &Impl::update_order, {}},
    {"DELETE", "/api/orders/:id", Access::api, false, &Impl::delete_order, {}},
    {"PATCH", "/api/orders/:id/status", Access::api, true, &Impl::update_order, {}},
    {"GET", "/api/orders/:id/events", Access::api, false, &Impl::order_events, {}},
    {"GET", "/sqs/stats", Access::api, false, &Impl::sqs_stats, {}},
    {"DELETE", "/sqs/purge", Access::admin, false, &Impl::sqs_purge, {"queue"}},
    {"GET", "/sqs/peek", Access::api, false, &Impl::peek, {"group", "orderId", "limit"}},
    {"GET", "/sqs/groups", Access::api, false, &Impl::groups, {"limit", "blocked"}},
    {"GET", "/sqs/dlq", Access::admin, false, &Impl::dlq_list,
     {"limit", "offset", "reason", "olderThan", "newerThan"}},
    {"POST", "/sqs/dlq/redrive", Access::admin, false, &Impl::dlq_redrive,
     {"id", "reason", "olderThan", "newerThan"}, {"id"}},
    {"GET", "/handler/status", Access::api, false, &Impl::handler_status, {}},
    {"GET", "/handler/stats", Access::api, false, &Impl::handler_stats, {}},
    {"GET", "/cache/stats", Access::api, false, &Impl::cache_stats, {}},
    {"GET", "/cache/keys", Access::api, false, &Impl::cache_keys, {}},
    {"DELETE", "/cache/clear", Access::admin, false, &Impl::cache_clear, {}},
    {"GET", "/health", Access::open, false, &Impl::health, {}},
    {"GET", "/health/live", Access::open, false, &Impl::health_live, {}},
    {"GET", "/health/ready", Access::open, false, &Impl::health_ready, {}},
    {"GET", "/metrics", metrics_access, false, &Impl::prometheus, {}},
  };
}

const Api::Impl::Route* Api::Impl::route_of(const Request& req, Response& res, std::string& id) const
{
  const std::string_view method = req.method == "HEAD" ? std::string_view("GET") : req.method;
  const Route* found = nullptr;
  std::string allow;
  for (const auto& r : routes) {
    std::string rid;
    if (!match(r.pattern, req.path, rid)) continue;
    if (!allow.empty()) allow += ", ";
    allow += r.method;
    if (method == r.method) {
      found = &r;
      id = std::move(rid);
    }
  }
  if (found != nullptr) return found;
  if (allow.empty()) {
    set_error(res, 404, "not_found",
              fmt::format("no endpoint {}; see `man acmo` for the API's endpoints", req.path));
  } else if (method == "OPTIONS") {
    res.status = 204;
    res.set_header("Allow", allow + ", OPTIONS");
  } else {
    set_error(res, 405, "method_not_allowed",
              fmt::format("{} does not take {}; it takes {}", req.path, req.method, allow));
    res.set_header("Allow", allow);
  }
  return nullptr;
}

size_t Api::Impl::slot_of(const Route* route, const Request& req) const
{
  if (route != nullptr) return static_cast<size_t>(route - routes.data());
  return metrics.unmatched(req.method);
}

bool Api::Impl::authorize(const Route& route, const Request& req, Response& res, bool& token_valid)
{
  const std::string token = bearer_token(req);
  const bool is_admin = !token.empty() && token_in(token, options.admin_tokens);
  const bool is_api = !token.empty() && token_in(token, options.api_tokens);
  const bool is_metrics = !token.empty() && token_in(token, options.metrics_tokens);
  token_valid = is_admin || is_api || is_metrics;
  if (route.access == Access::open) return true;
  const bool admin_checked = route.access == Access::admin && !options.admin_tokens.empty();
  const bool metrics_checked =
    route.access == Access::metrics && !(options.api_tokens.empty() && options.metrics_tokens.empty());
  if (admin_checked && is_admin) return true;
  if (metrics_checked && token_valid) return true;
  // A metrics token reads /metrics and nothing else, even where API tokens suffice.
  if (!admin_checked && !metrics_checked && (options.api_tokens.empty() || is_admin || is_api)) {
    return true;
  }
  // A valid token of a role the route does not take: the client is who it says, so this is no
  // guess and costs nothing of its address's allowance.
  if (is_metrics || (admin_checked && is_api)) {
    set_error(res, 403, "forbidden",
              fmt::format("{} {} needs {}; this token is {}", req.method, req.path,
                          admin_checked ? "an admin token (server.admin_tokens)"
                                : "an API token (server.api_tokens)",
                          is_api ? "an API token"
                                 : "a metrics token (server.metrics_tokens), which reads only "
                                   "GET /metrics"));
    return false;
  }
  // A failed authentication. Guessing tokens costs a client its address's allowance.
  if (const int64_t wait = auth_failures.take(req.client, now_us()); wait > 0) {
    set_error(res, 429, "rate_limited",
              fmt::format("too many failed authentications from {}; retry in {} s with a valid "
                          "token",
                          req.client, wait));
    res.set_header("Retry-After", std::to_string(wait));
    return false;
  }
  if (metrics_checked) {
    unauthorized(res, token.empty(), "a token of server.metrics_tokens or server.api_tokens");
    return false;
  }
  unauthorized(res, token.empty(),
               admin_checked ? "an admin token (server.admin_tokens)" : "a token (server.api_tokens)");
  return false;
}

bool Api::Impl::admit(const Route& route, const Request& req, Response& res)
{
  bool token_valid = false;
  if (!authorize(route, req, res, token_valid)) return false;
  if (route.access != Access::open && limiter.enabled()) {
    // Keyed on what a client cannot make up: a valid token, else its address.
    const std::string key = token_valid ? "token:" + bearer_token(req) : req.client;
    if (const int64_t wait = limiter.take(key, now_us()); wait > 0) {
      set_error(res, 429, "rate_limited",
                fmt::format("too many requests: the limit is {} a second (server.rate_limit); "
                            "retry in {} s",
                            options.rate_limit, wait));
      res.set_header("Retry-After", std::to_string(wait));
      return false;
    }
  }
  // Every parameter is one the route takes, once (but those it takes a list of): a typo or a
  // second value must never fall back to a default action or be dropped unseen.
  std::vector<std::string> seen;
  for (const auto& [name, value] : req.params()) {
    const auto& takes = route.params;
    if (std::find(takes.begin(), takes.end(), name) == takes.end()) {
      std::string known;
      for (const auto& p : takes) known += (known.empty() ? "" : ", ") + std::string(p);
      set_error(res, 400, "invalid_input",
                fmt::format("{} takes no query parameter \"{}\"{}", req.path, name,
                            known.empty() ? "" : fmt::format(" (it takes {})", known)),
                json{{"field", name}});
      return false;
    }
    const auto& lists = route.repeatable;
    if (std::find(lists.begin(), lists.end(), name) == lists.end()
        && std::find(seen.begin(), seen.end(), name) != seen.end()) {
      set_error(res, 400, "invalid_input",
                fmt::format("the query parameter \"{}\" is given more than once; give it once",
                            name),
                json{{"field", name}});
      return false;
    }
    seen.push_back(name);
  }
  return true;
}

void Api::Impl::dispatch(const Request& req, Response& res, size_t& slot)
{
  std::string id;
  const Route* route = route_of(req, res, id);
  slot = slot_of(route, req);
  if (route == nullptr || !admit(*route, req, res)) return;
  Context ctx{req, res, std::move(id), nullptr};
  if (!route->takes_body && !req.body.empty()) {
    return set_error(res, 400, "invalid_input",
                     fmt::format("{} {} takes no body; send the request without one",
                                 req.method, req.path));
  }
  if (route->takes_body) {
    if (req.body.size() > static_cast<size_t>(options.max_body)) {
      return set_error(res, 413, "payload_too_large",
                       fmt::format("the body is larger than server.max_body ({} bytes)",
                                   options.max_body));
    }
    const std::string_view type = req.headers.get("Content-Type");
    if (!is_json_media_type(type)) {
      return set_error(res, 415, "unsupported_media_type",
                       type.empty() ? "send the body as JSON with Content-Type: application/json"
                                    : fmt::format("the body must be JSON (Content-Type: "
                                                  "application/json), not {}",
                                                  type));
    }
    auto parsed = parse_json_input(req.body, "the body");
    if (!parsed) return set_core_error(res, parsed.error());
    if (!parsed->is_object()) {
      return set_error(res, 400, "invalid_input",
                       fmt::format("the body must be a JSON object, not {}", parsed->type_name()),
                       json{{"field", "body"}});
    }
    ctx.body = std::move(*parsed);
  }
  (this->*(route->handler))(ctx);
}

Api::Api(ApiOptions options, ApiParts parts)
  : m_impl(std::make_unique<Impl>(std::move(options), std::move(parts)))
{
}

Api::~Api() = default;

Expected<void> Api::open()
{
  auto& impl = *m_impl;
  auto& opened = impl.parts.stores;
  for (int i = 0; i < std::max(1, impl.options.read_stores); ++i) {
    std::unique_ptr<OrderStore> store;
    if (static_cast<size_t>(i) < opened.size()) {
      store = std::move(opened[static_cast<size_t>(i)]);
    } else {
      auto another = impl.parts.open_store();
      if (!another) return Unexpected(another.error());
      store = std::move(*another);
    }
    impl.stores.push_back(std::move(store));
    impl.store_locks.push_back(std::make_unique<std::mutex>());
  }
  opened.clear();
  // The embedded store's handlers signal their changes: a cached read then asks the store only
  // when one began. Without the signal (it could not be opened) every read asks.
  if (impl.options.store_backend == "sqlite" && impl.follower_of_cache() != nullptr) {
    if (auto signal = ChangeSignal::open(impl.parts.db_path)) impl.follower.use_signal(std::move(*signal));
  }
  return {};
}

static void log_access(const Request& request, const Response& response, int64_t took_us)
{
  const double ms = static_cast<double>(took_us) / 1000.0;
  const auto bytes = static_cast<int64_t>(response.body.size());
  log::info({"http_request",
             {{"method", request.method},
              {"path", request.path},
              {"status", static_cast<int64_t>(response.status)},
              {"bytes", bytes},
              {"duration_ms", ms},
              {"client", request.client}}},
            "{} {} {} {} B {:.3f} ms {}", request.method, request.path, response.status, bytes,
            ms, request.client.empty() ? "-" : request.client);
}

std::optional<Response> Api::refuse_early(const Request& head)
{
  auto& impl = *m_impl;
  Response res;
  std::string id;
  const Impl::Route* route = impl.route_of(head, res, id);
  auto refused = [&]() -> std::optional<Response> {
    impl.metrics.count(impl.slot_of(route, head), res.status);
    if (log::access_enabled()) log_access(head, res, 0);
    return res;
  };
  if (route == nullptr) return refused();
  bool token_valid = false;
  if (!impl.authorize(*route, head, res, token_valid)) return refused();
  if (route->takes_body && !is_json_media_type(head.headers.get("Content-Type"))) {
    set_error(res, 415, "unsupported_media_type",
              "send the body as JSON with Content-Type: application/json");
    return refused();
  }
  return std::nullopt;
}

Response Api::handle(Request& request)
{
  auto& impl = *m_impl;
  const int64_t started = now_us();
  Response res;
  size_t slot = SIZE_MAX;
  try {
    impl.dispatch(request, res, slot);
  } catch (const std::exception& e) {
    log::error({"http_handler_error"}, "{} {}: {}", request.method, request.path, e.what());
    res = Response{};
    set_error(res, 500, "internal", fmt::format("the server failed: {}", e.what()));
  }
  if (slot == SIZE_MAX) slot = impl.metrics.unmatched(request.method);
  impl.metrics.count(slot, res.status);
  const int64_t took_us = now_us() - started;
  impl.metrics.observe(slot, took_us);
  if (log::access_enabled()) log_access(request, res, took_us);
  return res;
}

void Api::answered_by_connections(const Response& response)
{
  // No route was looked up, and the method may not have been read.
  m_impl->metrics.count(m_impl->metrics.unmatched("other"), response.status);
}

} // namespace acmo::daemon
