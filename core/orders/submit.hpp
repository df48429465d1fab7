// Putting order events on the queue, as `acmo send` and `POST /api/orders` both do: fill in
// what the sender may leave out, turn the event into a send request, and describe the result
// in the names of docs/commands.md §6.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/orders/order_event.hpp"
#include "core/queue/queue.hpp"
#include "core/store/order_store.hpp"

namespace acmo {

// A CREATE's order id when it has none, and the group (queue.group_by: "single" → "orders",
// "order" → the order id) when none is given. A CREATE with a deduplication id but no order
// id gets an order id derived from the dedup id, so that sending it again is the same event:
// caught as a duplicate, with the same order id.
void complete_event(OrderEvent& event, std::string_view group_by);

SendRequest to_send_request(const OrderEvent& event);

// The early refusal of an UPDATE or DELETE (docs/orders.md §3): its order must be in the
// store, or have a message waiting in the queue (its CREATE, not applied yet). When it has
// neither, `request` is set to be refused with Errc::not_found unless it is a duplicate, so
// that the retry of a request accepted before is still answered as one. A store that cannot
// say (PostgreSQL away) lets the event through: the queue takes events through a store outage.
// A CREATE is not checked.
void refuse_unknown_order(SendRequest& request, const OrderEvent& event, Queue& queue,
                          OrderStore& store);

// {"messageId", "sequenceNumber", "orderId", "groupId", "deduplicationId", "duplicate"}
nlohmann::json send_result_json(const SendResult& result, const OrderEvent& event);

// The text of send_result_json with "status": "queued" and the event's "type": the body of
// POST /api/orders' 202, written out without a json document (the same text as its dump()).
std::string accepted_json(const SendResult& result, const OrderEvent& event);

} // namespace acmo
