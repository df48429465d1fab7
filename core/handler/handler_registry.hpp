// The handler registry (docs/orders.md §9): every running OrderHandler (a run-handler process,
// or the one inside serve) registers with the queue and beats every second with its figures,
// so that `acmo stats` in any process lists the live handlers, and one that died is shown as
// gone once its heartbeat stops.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/queue/queue.hpp"
#include "core/util/error.hpp"

namespace acmo {

constexpr int64_t k_heartbeat_interval_ms = 1000;
constexpr int64_t k_heartbeat_timeout_ms = 5000; // no beat for this long: gone

// The registry's rows live with the queue (Queue::save_handler, Queue::handlers); HandlerRecord
// is in core/queue/queue.hpp.

// Ask the running handler `id` to "stop" (finish the batches in hand, then exit, as on
// SIGTERM) or to "drain" (go on until it finds nothing to take, then stop); it sees the request
// at its next heartbeat, within about a second, wherever it runs. Errors: not_found (no handler
// `id` seen in the last hour), conflict (it is not running).
Expected<void> request_handler(Queue& queue, std::string_view id, std::string_view request,
                               int64_t now_ms);

// Every handler seen within the last hour, most recently started first.
Expected<std::vector<HandlerRecord>> list_handlers(Queue& queue, int64_t now_ms);

// A new handler id for this process: "host:pid:xxxx".
std::string new_handler_id();
std::string host_name();

} // namespace acmo
