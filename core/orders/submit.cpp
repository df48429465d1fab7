#include "core/orders/submit.hpp"

#include <fmt/core.h>

#include "core/util/ids.hpp"

namespace acmo {

void complete_event(OrderEvent& event, std::string_view group_by)
{
  if (event.order_id.empty()) {
    event.order_id = event.dedup_id.empty() ? new_order_id() : order_id_for(event.dedup_id);
  }
  if (event.group_id.empty()) event.group_id = group_by == "order" ? event.order_id : "orders";
}

void refuse_unknown_order(SendRequest& request, const OrderEvent& event, Queue& queue,
                          OrderStore& store)
{
  if (event.type == EventType::create) return;
  auto order = store.get(event.order_id);
  if (order || order.error().code != Errc::not_found) return;
  PeekFilter filter;
  filter.field = "orderId";
  filter.value = event.order_id;
  filter.limit = 1;
  filter.newest_first = true; // an order not applied yet was created lately
  auto waiting = queue.peek(filter);
  if (!waiting || !waiting->empty()) return;
  // Its CREATE may have been applied between the two reads: a handler applies an event before
  // (or in the same transaction as) deleting its message, so once the queue no longer holds it
  // the store does. Ask the store again before refusing.
  order = store.get(event.order_id);
  if (order || order.error().code != Errc::not_found) return;
  request.unless_duplicate = Error{
    Errc::not_found,
    fmt::format("no order {}: it is neither in the store nor waiting in the queue; send its "
                "CREATE first",
                event.order_id),
    "orderId"};
}

SendRequest to_send_request(const OrderEvent& event)
{
  SendRequest req;
  req.body = event_body(event);
  req.group_id = event.group_id;
  req.dedup_id = event.dedup_id;
  return req;
}

nlohmann::json send_result_json(const SendResult& result, const OrderEvent& event)
{
  return {{"messageId", result.message_id},     {"sequenceNumber", format_sequence(result.seq)},
          {"orderId", event.order_id},          {"groupId", event.group_id},
          {"deduplicationId", result.dedup_id}, {"duplicate", result.duplicate}};
}

std::string accepted_json(const SendResult& result, const OrderEvent& event)
{
  std::string out = "{\"deduplicationId\":";
  append_json_string(out, result.dedup_id);
  out += result.duplicate ? ",\"duplicate\":true,\"groupId\":" : ",\"duplicate\":false,\"groupId\":";
  append_json_string(out, event.group_id);
  out += ",\"messageId\":";
  append_json_string(out, result.message_id);
  out += ",\"orderId\":";
  append_json_string(out, event.order_id);
  out += ",\"sequenceNumber\":";
  append_json_string(out, format_sequence(result.seq));
  out += ",\"status\":\"queued\",\"type\":";
  append_json_string(out, event_type_name(event.type));
  out += '}';
  return out;
}

} // namespace acmo
