#include "core/orders/submit.hpp"

#include "core/util/ids.hpp"

namespace acmo {

void complete_event(OrderEvent& event, std::string_view group_by)
{
  if (event.order_id.empty()) {
    event.order_id = event.dedup_id.empty() ? new_order_id() : order_id_for(event.dedup_id);
  }
  if (event.group_id.empty()) event.group_id = group_by == "order" ? event.order_id : "orders";
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
