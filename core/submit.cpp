#include "core/submit.hpp"

#include "core/ids.hpp"

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

} // namespace acmo
