// The orders endpoints (docs/http-api.md §2): POST, PUT, PATCH and DELETE queue an event and
// answer 202 once it is on disk; GET reads through the cache.
#include <cstring>

#include <fmt/core.h>

#include "core/cache/cached_orders.hpp"
#include "core/orders/order.hpp"
#include "core/orders/order_event.hpp"
#include "core/orders/submit.hpp"
#include "core/queue/limits.hpp"
#include "core/util/ids.hpp"
#include "core/util/log.hpp"
#include "daemon/api_impl.hpp"

namespace acmo::daemon {

namespace {

using nlohmann::json;

constexpr int64_t k_max_list_limit = 1000;

// The body of an order request is the event's data, so its fields are named as in the body:
// "customer_name", not "data.customer_name".
Error as_body_error(Error error)
{
  // The body is the event's data: "data.items[0]..." is "items[0]...", "data: ..." is "...".
  auto strip = [](std::string& text) {
    if (text.rfind("data.", 0) == 0) text.erase(0, 5);
    if (text.rfind("data: ", 0) == 0) text.erase(0, 6);
  };
  strip(error.field);
  strip(error.message);
  return error;
}

} // namespace

// Queue `event` (its data already valid) and answer 202.
void Api::Impl::enqueue(Context& ctx, OrderEvent event)
{
  const std::string key(ctx.req.headers.get("Idempotency-Key"));
  // Given empty, or twice, the key would be taken as none or as one of two: the retry the client
  // counts on would queue a second order.
  if (const size_t given = ctx.req.headers.count("Idempotency-Key"); given > 1) {
    return set_core_error(ctx.res, Error(Errc::invalid_input,
                                         fmt::format("Idempotency-Key is given {} times; give "
                                                     "it once",
                                                     given),
                                         "Idempotency-Key"));
  } else if (given == 1 && key.empty()) {
    return set_core_error(ctx.res, Error(Errc::invalid_input,
                                         "Idempotency-Key is empty; give the request's key (1 "
                                         "to 128 characters), or leave the header out",
                                         "Idempotency-Key"));
  }
  if (!key.empty()) {
    if (auto ok = limits::check_id(key, "Idempotency-Key"); !ok) {
      return set_core_error(ctx.res, ok.error());
    }
    event.dedup_id = key;
  }
  complete_event(event, options.group_by);
  SendRequest request = to_send_request(event);
  // An Idempotency-Key belongs to the request it was first sent with: a retry of that request
  // is a duplicate, another request with the key is refused (as payment APIs do), never
  // answered as a duplicate of a message it is not.
  request.same_body = !key.empty();
  if (event.type != EventType::create) {
    with_store([&](OrderStore& store) {
      refuse_unknown_order(request, event, *parts.queue, store);
      return 0;
    });
  }
  auto result = parts.queue->send(request);
  if (!result && !key.empty() && result.error().code == Errc::conflict) {
    std::string message = result.error().message;
    for (auto [from, to] : {std::pair{"the deduplication id", "the Idempotency-Key"},
                            std::pair{"a new id", "a new key"}, std::pair{"message (message", "request (message"}}) {
      if (auto at = message.find(from); at != std::string::npos) message.replace(at, strlen(from), to);
    }
    return set_error(ctx.res, 422, "idempotency_key_reused", message,
                     json{{"field", "Idempotency-Key"}});
  }
  if (!result) {
    if (result.error().code != Errc::invalid_input && result.error().code != Errc::not_found) {
      log::warn({"send_refused"}, "{} {}: the queue refused an event: {}", ctx.req.method, ctx.req.path,
                result.error().message);
    }
    return set_core_error(ctx.res, as_body_error(result.error()));
  }
  ctx.res.set_header("Location", "/api/orders/" + event.order_id);
  ctx.res.status = 202;
  ctx.res.content_type = "application/json";
  ctx.res.body = accepted_json(*result, event);
}

void Api::Impl::create_order(Context& ctx)
{
  if (auto ok = validate_event_data(EventType::create, ctx.body, true); !ok) {
    return set_core_error(ctx.res, as_body_error(ok.error()));
  }
  OrderEvent event;
  event.type = EventType::create;
  event.data = std::move(ctx.body);
  enqueue(ctx, std::move(event));
}

bool Api::Impl::check_id(Context& ctx)
{
  if (auto ok = check_order_id(ctx.id, "the order id in the path"); !ok) {
    set_core_error(ctx.res, ok.error());
    return false;
  }
  return true;
}

void Api::Impl::update_order(Context& ctx)
{
  if (!check_id(ctx)) return;
  // PUT takes {"status"}; any other field is not something an UPDATE can change.
  if (auto ok = validate_event_data(EventType::update, ctx.body, true); !ok) {
    return set_core_error(ctx.res, as_body_error(ok.error()));
  }
  OrderEvent event;
  event.type = EventType::update;
  event.order_id = ctx.id;
  event.data = std::move(ctx.body);
  enqueue(ctx, std::move(event));
}

void Api::Impl::delete_order(Context& ctx)
{
  if (!check_id(ctx)) return;
  OrderEvent event;
  event.type = EventType::remove;
  event.order_id = ctx.id;
  enqueue(ctx, std::move(event));
}

void Api::Impl::get_order(Context& ctx)
{
  if (!check_id(ctx)) return;
  auto text = with_store([&](OrderStore& store) {
    return CachedOrders(store, parts.cache, follower_of_cache()).get_json(ctx.id);
  });
  if (!text) {
    if (text.error().code == Errc::not_found) {
      return set_error(ctx.res, 404, "not_found",
                       fmt::format("no order {} (a new order shows once the handler has applied "
                                   "its CREATE)",
                                   ctx.id),
                       json{{"orderId", ctx.id}});
    }
    return set_core_error(ctx.res, text.error());
  }
  ctx.res.status = 200;
  ctx.res.content_type = "application/json";
  ctx.res.body = std::move(*text);
}

void Api::Impl::list_orders(Context& ctx)
{
  const std::string status = ctx.req.param("status");
  if (!status.empty() && !is_order_status(status)) {
    return set_error(ctx.res, 400, "invalid_input",
                     fmt::format("status \"{}\" is not an order status; use pending, processing, "
                                 "shipped, delivered or cancelled",
                                 status),
                     json{{"field", "status"}});
  }
  auto limit = int_param(ctx.req, "limit", 50, 1, k_max_list_limit);
  if (!limit) return set_core_error(ctx.res, limit.error());
  auto offset = int_param(ctx.req, "offset", 0, 0, INT64_MAX / 2);
  if (!offset) return set_core_error(ctx.res, offset.error());
  auto text = with_store([&](OrderStore& store) {
    return CachedOrders(store, parts.cache, follower_of_cache()).list_json(status, *limit, *offset);
  });
  if (!text) return set_core_error(ctx.res, text.error());
  ctx.res.status = 200;
  ctx.res.content_type = "application/json";
  ctx.res.body = std::move(*text);
}

void Api::Impl::order_events(Context& ctx)
{
  if (!check_id(ctx)) return;
  auto events = with_store([&](OrderStore& store) { return store.events(ctx.id); });
  if (!events && events.error().code != Errc::not_found) {
    return set_core_error(ctx.res, events.error());
  }
  if (!events || events->empty()) {
    return set_error(ctx.res, 404, "not_found",
                     fmt::format("no order {}: no event of it was applied", ctx.id),
                     json{{"orderId", ctx.id}});
  }
  send_json(ctx.res, 200, order_events_json(*events));
}

} // namespace acmo::daemon
