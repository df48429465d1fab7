// The monitoring and admin endpoints (docs/http-api.md §3): the queue and its DLQ, the
// handlers, the cache, /health and /metrics.
#include <algorithm>

#include <fmt/core.h>

#include "core/config/config.hpp"
#include "core/handler/handler_registry.hpp"
#include "core/handler/stats_report.hpp"
#include "core/orders/order_event.hpp"
#include "core/queue/queue_json.hpp"
#include "core/util/build_info.hpp"
#include "core/util/ids.hpp"
#include "core/util/log.hpp"
#include "daemon/api_impl.hpp"

namespace acmo::daemon {

namespace {

using nlohmann::json;

constexpr int64_t k_max_list_limit = 1000;

} // namespace

void Api::Impl::sqs_stats(Context& ctx)
{
  auto stats = parts.queue->stats();
  if (!stats) return set_core_error(ctx.res, stats.error());
  send_json(ctx.res, 200, queue_stats_json(*stats));
}

void Api::Impl::sqs_purge(Context& ctx)
{
  // ?queue= names the queue to empty: the main one when absent, "dlq" or the DLQ's name for
  // the DLQ. Anything else is refused: a typo must not empty the main queue.
  const QueueOptions& q = parts.queue->options();
  const std::string which = ctx.req.param("queue");
  const bool dlq = which == "dlq" || which == q.dlq_name;
  if (ctx.req.has_param("queue") && !dlq && which != q.name) {
    return set_error(ctx.res, 400, "invalid_input",
                     fmt::format("queue \"{}\" is not a queue here; use {} (the default) or dlq "
                                 "({})",
                                 which, q.name, q.dlq_name),
                     json{{"field", "queue"}});
  }
  auto purged = parts.queue->purge(dlq);
  if (!purged) return set_core_error(ctx.res, purged.error());
  log::info({"purged"}, "purged {} messages of the queue at the request of {}", *purged,
            ctx.req.client);
  send_json(ctx.res, 200, {{"purged", *purged}});
}

void Api::Impl::peek(Context& ctx)
{
  PeekFilter filter;
  filter.group_id = ctx.req.param("group");
  filter.value = ctx.req.param("orderId");
  if (!filter.value.empty()) {
    if (auto ok = check_order_id(filter.value); !ok) return set_core_error(ctx.res, ok.error());
    filter.field = "orderId";
  }
  auto limit = int_param(ctx.req, "limit", 50, 1, k_max_list_limit);
  if (!limit) return set_core_error(ctx.res, limit.error());
  filter.limit = *limit;
  auto messages = parts.queue->peek(filter);
  if (!messages) return set_core_error(ctx.res, messages.error());
  send_json(ctx.res, 200, waiting_messages_json(*messages, parts.queue->now_ms()));
}

void Api::Impl::groups(Context& ctx)
{
  auto limit = int_param(ctx.req, "limit", 50, 1, k_max_list_limit);
  if (!limit) return set_core_error(ctx.res, limit.error());
  const std::string blocked = ctx.req.param("blocked");
  if (ctx.req.has_param("blocked") && blocked != "true" && blocked != "false") {
    return set_error(ctx.res, 400, "invalid_input",
                     fmt::format("blocked must be true or false, not \"{}\"", blocked),
                     json{{"field", "blocked"}});
  }
  auto report = parts.queue->groups(GroupsFilter{*limit, blocked == "true"});
  if (!report) return set_core_error(ctx.res, report.error());
  send_json(ctx.res, 200, groups_json(*report));
}

// The DLQ filter of ?reason=TEXT&olderThan=DURATION&newerThan=DURATION (durations as the
// configuration writes them: "30s", "5m", "2h"); an error names the parameter.
static Expected<DlqFilter> dlq_filter_of(const Request& req)
{
  DlqFilter filter;
  filter.reason = req.param("reason");
  if (req.has_param("reason") && filter.reason.empty()) {
    return make_error(Errc::invalid_input,
                      "reason needs some text of the reason to match; leave it out to take "
                      "every reason",
                      "reason");
  }
  for (const char* name : {"olderThan", "newerThan"}) {
    if (!req.has_param(name)) continue;
    auto ms = parse_duration(req.param(name));
    if (!ms) return make_error(Errc::invalid_input, fmt::format("{}: {}", name, ms.error().message), name);
    (std::string_view(name) == "olderThan" ? filter.older_than_ms : filter.newer_than_ms) = *ms;
  }
  if (auto ok = check_dlq_filter(filter); !ok) return Unexpected(ok.error());
  return filter;
}

void Api::Impl::dlq_list(Context& ctx)
{
  auto limit = int_param(ctx.req, "limit", 100, 1, k_max_list_limit);
  if (!limit) return set_core_error(ctx.res, limit.error());
  auto offset = int_param(ctx.req, "offset", 0, 0, INT64_MAX / 2);
  if (!offset) return set_core_error(ctx.res, offset.error());
  auto filter = dlq_filter_of(ctx.req);
  if (!filter) return set_core_error(ctx.res, filter.error());
  auto page = parts.queue->dlq_page(*limit, *offset, *filter);
  if (!page) return set_core_error(ctx.res, page.error());
  send_json(ctx.res, 200, dead_letters_json(*page));
}

void Api::Impl::dlq_redrive(Context& ctx)
{
  // ?id=MESSAGE_ID (repeatable) names the messages to move; the filters choose them instead;
  // neither moves them all.
  const std::vector<std::string> ids = ctx.req.param_values("id");
  auto filter = dlq_filter_of(ctx.req);
  if (!filter) return set_core_error(ctx.res, filter.error());
  if (!ids.empty() && !filter->matches_all()) {
    return set_error(ctx.res, 400, "invalid_input",
                     "id goes without reason, olderThan and newerThan: give either the ids or "
                     "the filters",
                     json{{"field", "id"}});
  }
  Expected<int64_t> moved = 0;
  if (filter->matches_all()) {
    moved = parts.queue->redrive(ids);
  } else {
    // One step of everything that matches: one transaction, as a redrive of all is.
    auto run = parts.queue->begin_redrive(*filter);
    moved = run ? parts.queue->redrive_step(*run, INT64_MAX) : Unexpected(run.error());
  }
  if (!moved) return set_core_error(ctx.res, moved.error());
  send_json(ctx.res, 200, {{"redriven", *moved}});
}

json Api::Impl::in_process_handler_json()
{
  if (parts.handler == nullptr) return nullptr;
  const HandlerStats s = parts.handler->stats();
  return {{"running", true},
          {"since", format_timestamp(parts.handler_started_ms)},
          {"processed", s.processed},
          {"deadLettered", s.dead_lettered},
          {"retried", s.retried},
          {"batches", s.batches},
          {"latencyP50Ms", static_cast<double>(s.latency_p50_us) / 1000.0},
          {"latencyP99Ms", static_cast<double>(s.latency_p99_us) / 1000.0},
          {"lastError", s.last_error}};
}

void Api::Impl::handler_status(Context& ctx)
{
  const int64_t now = parts.queue->now_ms();
  auto handlers = list_handlers(*parts.queue, now);
  if (!handlers) return set_core_error(ctx.res, handlers.error());
  json doc = handlers_json(*handlers, now);
  doc["inProcess"] = in_process_handler_json();
  send_json(ctx.res, 200, doc);
}

void Api::Impl::handler_stats(Context& ctx)
{
  const int64_t now = parts.queue->now_ms();
  auto report = with_store([&](OrderStore& store) {
    return read_stats(*parts.queue, store, options.store_backend, parts.cache, now);
  });
  if (!report) return set_core_error(ctx.res, report.error());
  send_json(ctx.res, 200, stats_json(*report));
}

CacheStats Api::Impl::cache_figures()
{
  if (parts.cache != nullptr) return parts.cache->stats();
  CacheStats none;
  none.backend = "none";
  return none;
}

void Api::Impl::cache_stats(Context& ctx) { send_json(ctx.res, 200, cache_stats_json(cache_figures())); }

void Api::Impl::cache_keys(Context& ctx)
{
  std::vector<std::string> keys;
  if (parts.cache != nullptr) keys = parts.cache->keys();
  std::sort(keys.begin(), keys.end());
  send_json(ctx.res, 200, {{"keys", keys}, {"count", keys.size()}});
}

void Api::Impl::cache_clear(Context& ctx)
{
  const int64_t cleared = parts.cache != nullptr ? parts.cache->clear() : 0;
  send_json(ctx.res, 200, {{"cleared", cleared}});
}

json Api::Impl::health_checks()
{
  json checks = json::object();
  auto record = [&](const char* what, const Expected<void>& ok) {
    checks[what] = ok ? json{{"ok", true}} : json{{"ok", false}, {"error", ok.error().message}};
  };
  // The queue: a read of its database (the DLQ's head, an index lookup),
  // and whether it takes writes (a full disk fails every send while reads still work).
  auto dlq = parts.queue->dlq_list(1, 0);
  Expected<void> queue_ok = dlq ? parts.queue->check_writable() : Unexpected(dlq.error());
  // A process that holds the write lock and does not let go (stopped, hung) keeps every POST
  // waiting: not ready, whoever it is.
  if (queue_ok) queue_ok = parts.queue->check_write_lock();
  // A damaged database (found by any process, or by an integrity check at most once a minute)
  // takes no writes: not ready.
  if (queue_ok) queue_ok = parts.queue->check_integrity();
  record("queue", queue_ok);
  checks["queue"]["backend"] = parts.queue->backend();
  // The store: an order that cannot exist is not found when the store answers.
  auto probe = with_store([](OrderStore& store) { return store.get("health-probe"); });
  record("store", probe || probe.error().code == Errc::not_found
                    ? Expected<void>()
                    : Expected<void>(Unexpected(probe.error())));
  checks["store"]["backend"] = options.store_backend;
  // The cache counts its failures rather than reporting them: one more after a read is one.
  if (parts.cache != nullptr) {
    const int64_t before = parts.cache->stats().errors;
    parts.cache->get("health-probe");
    record("cache", parts.cache->stats().errors == before
                      ? Expected<void>()
                      : Expected<void>(make_error(Errc::unavailable,
                                                  "the cache did not answer a read")));
  } else {
    checks["cache"] = {{"ok", true}, {"backend", "none"}};
  }
  return checks;
}

namespace {

std::vector<std::string> not_ok(const json& checks)
{
  std::vector<std::string> names;
  for (const auto& [name, check] : checks.items()) {
    if (!check.at("ok").get<bool>()) names.push_back(name);
  }
  return names;
}

std::string joined(const std::vector<std::string>& names)
{
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

} // namespace

std::optional<int64_t> Api::Impl::live_handlers()
{
  const int64_t now = parts.queue->now_ms();
  auto handlers = list_handlers(*parts.queue, now);
  if (!handlers) return std::nullopt;
  return std::count_if(handlers->begin(), handlers->end(),
                       [now](const HandlerRecord& h) { return h.state(now) == "running"; });
}

std::optional<json> Api::Impl::backlog_check()
{
  auto s = parts.queue->stats();
  if (!s) return std::nullopt;
  const int64_t waiting = s->visible + s->in_flight + s->delayed;
  const std::optional<int64_t> live = live_handlers();
  json check = {{"waiting", waiting},
                {"oldestAgeSeconds", static_cast<double>(s->oldest_age_ms) / 1000.0},
                {"liveHandlers", live ? json(*live) : json(nullptr)}};
  std::string error;
  if (waiting > 0 && live && *live == 0) {
    error = fmt::format("{} message(s) wait and no handler is running: start `acmo run-handler`, "
                        "or `acmo serve` without --no-handler",
                        waiting);
  } else if (options.backlog_max_age_ms > 0 && s->oldest_age_ms > options.backlog_max_age_ms) {
    error = fmt::format("the oldest message has waited {:.1f} s, more than "
                        "server.backlog_max_age ({:g} s): the handlers do not keep up, or a group "
                        "is blocked (`acmo stats`)",
                        static_cast<double>(s->oldest_age_ms) / 1000.0,
                        static_cast<double>(options.backlog_max_age_ms) / 1000.0);
  }
  check["ok"] = error.empty();
  if (!error.empty()) check["error"] = error;
  return check;
}

void Api::Impl::health(Context& ctx)
{
  json checks = health_checks();
  // Whether events are applied, not only accepted: what monitoring alerts on. Not part of
  // /health/ready, since the API still takes events with no handler running.
  if (auto backlog = backlog_check()) checks["backlog"] = std::move(*backlog);
  const std::vector<std::string> failing = not_ok(checks);
  std::vector<std::string> down = failing;
  const bool stalled = std::erase(down, std::string("backlog")) > 0;
  std::string message = down.empty() ? "" : fmt::format("not answering: {}", joined(down));
  if (stalled) {
    message += (message.empty() ? "" : "; ") + checks["backlog"]["error"].get<std::string>();
  }
  json doc = {{"status", !down.empty() ? "unavailable" : stalled ? "stalled" : "ok"},
              {"checks", std::move(checks)}};
  if (!failing.empty()) {
    doc["failing"] = failing;
    doc["message"] = message;
    ctx.res.set_header("Retry-After", "1");
  }
  send_json(ctx.res, failing.empty() ? 200 : 503, doc);
}

void Api::Impl::health_live(Context& ctx)
{
  // The process serves: it parsed this request and answers it. Nothing else is checked, so a
  // restart is never asked for because of a dependency.
  send_json(ctx.res, 200, {{"status", "ok"}});
}

void Api::Impl::health_ready(Context& ctx)
{
  // Ready to take events: the queue takes writes. The store and the cache only serve reads,
  // which fall back or fail on their own; their outage is reported as degraded, not unready,
  // since POSTs are still queued then, the very outage the queue absorbs.
  json checks = health_checks();
  const bool ready = checks.at("queue").at("ok").get<bool>();
  std::vector<std::string> degraded = not_ok(checks);
  std::erase(degraded, std::string("queue"));
  json doc = {{"status", !ready ? "unavailable" : degraded.empty() ? "ready" : "degraded"},
              {"checks", std::move(checks)}};
  if (!ready) {
    doc["message"] = "the queue takes no events";
    ctx.res.set_header("Retry-After", "1");
  }
  if (!degraded.empty()) {
    doc["degraded"] = degraded;
    if (ready) doc["message"] = fmt::format("events are queued; reads degraded: {}", joined(degraded));
  }
  send_json(ctx.res, ready ? 200 : 503, doc);
}

void Api::Impl::prometheus(Context& ctx)
{
  std::string out;
  out.reserve(16384);
  auto metric = [&out](std::string_view name, std::string_view type, std::string_view help,
                       auto value, std::string_view labels = {}) {
    if (!help.empty()) write_family(out, name, type, help);
    out += fmt::format("{}{} {}\n", name, labels, value);
  };
  metric("acmo_build_info", "gauge", "The acmo that serves: always 1, its labels tell.", 1,
         fmt::format("{{version=\"{}\",compiler=\"{}\"}}", label_value(ACMO_VERSION),
                     label_value(compiler_name())));
  if (auto s = parts.queue->stats()) {
    write_family(out, "acmo_queue_messages", "gauge", "Messages in the queue, by state.");
    const std::string q = label_value(s->name);
    out += fmt::format("acmo_queue_messages{{queue=\"{}\",state=\"visible\"}} {}\n", q, s->visible);
    out += fmt::format("acmo_queue_messages{{queue=\"{}\",state=\"in_flight\"}} {}\n", q, s->in_flight);
    out += fmt::format("acmo_queue_messages{{queue=\"{}\",state=\"delayed\"}} {}\n", q, s->delayed);
    out += fmt::format("acmo_queue_messages{{queue=\"{}\",state=\"dead_lettered\"}} {}\n", q,
                       s->dead_lettered);
    metric("acmo_queue_dedup_entries", "gauge", "Deduplication ids remembered.", s->dedup_entries);
    metric("acmo_queue_oldest_message_age_seconds", "gauge", "Age of the oldest message.",
           static_cast<double>(s->oldest_age_ms) / 1000.0);
    metric("acmo_queue_sent_total", "counter", "Messages accepted.", s->sent);
    metric("acmo_queue_duplicates_total", "counter", "Sends caught as duplicates.", s->duplicates);
    metric("acmo_queue_received_total", "counter", "Messages delivered to receivers.", s->received);
    metric("acmo_queue_deleted_total", "counter", "Messages deleted after handling.", s->deleted);
    metric("acmo_queue_retried_total", "counter", "Messages released for a retry.", s->retried);
    metric("acmo_queue_expired_total", "counter", "Messages dropped by retention.", s->expired);
    metric("acmo_queue_dead_lettered_total", "counter", "Messages moved to the DLQ.",
           s->dead_lettered_total);
    metric("acmo_queue_dlq_expired_total", "counter", "Messages dropped from the DLQ by retention.",
           s->dlq_expired);
    metric("acmo_queue_up", "gauge", "Whether the queue's database answered.", 1);
  } else {
    metric("acmo_queue_up", "gauge", "Whether the queue's database answered.", 0);
  }
  const CommitStats commits = parts.queue->commit_stats();
  metric("acmo_queue_transactions_total", "counter",
         "Write transactions of this process (group commit).", commits.transactions);
  metric("acmo_queue_requests_total", "counter", "Write requests carried by them.",
         commits.requests);
  if (parts.handler != nullptr) {
    const HandlerStats h = parts.handler->stats();
    metric("acmo_handler_processed_total", "counter", "Events applied by the in-process handler.",
           h.processed);
    metric("acmo_handler_dead_lettered_total", "counter", "Events it dead-lettered.",
           h.dead_lettered);
    metric("acmo_handler_retried_total", "counter", "Events it released for a retry.", h.retried);
    metric("acmo_handler_batches_total", "counter", "Batches it settled.", h.batches);
    write_family(out, "acmo_handler_batch_duration_seconds", "histogram",
                 "Time to apply and settle a batch, for the in-process handler.");
    write_histogram(out, "acmo_handler_batch_duration_seconds", "", k_batch_bounds_us,
                    h.batch_buckets, h.batch_sum_us);
  }
  metric("acmo_handler_in_process", "gauge", "Whether this server runs a handler.",
         parts.handler != nullptr ? 1 : 0);
  if (auto live = live_handlers()) {
    metric("acmo_handlers_live", "gauge",
           "Handlers of any process on this queue whose heartbeat is current.", *live);
  }
  const CacheStats c = cache_figures();
  const std::string backend = fmt::format("{{backend=\"{}\"}}", label_value(c.backend));
  metric("acmo_cache_hits_total", "counter", "Cache reads that hit.", c.hits, backend);
  metric("acmo_cache_misses_total", "counter", "Cache reads that missed.", c.misses, backend);
  metric("acmo_cache_errors_total", "counter", "Cache operations that failed.", c.errors, backend);
  metric("acmo_cache_keys", "gauge", "Keys in the cache.", c.keys, backend);
  metrics.write(out);
  write_process_metrics(out);
  ctx.res.status = 200;
  ctx.res.content_type = "text/plain; version=0.0.4; charset=utf-8";
  ctx.res.body = std::move(out);
}

} // namespace acmo::daemon
