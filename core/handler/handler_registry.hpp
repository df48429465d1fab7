// The handler registry (docs/orders.md §9): every running OrderHandler (a run-handler process, or the
// one inside serve) registers in the data dir's database and beats every second with its
// figures, so that `acmo stats` in any process lists the live handlers, and one that died is
// shown as gone once its heartbeat stops.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/queue/queue.hpp"
#include "core/util/error.hpp"

namespace acmo {

constexpr int64_t k_heartbeat_interval_ms = 1000;
constexpr int64_t k_heartbeat_timeout_ms = 5000; // no beat for this long: gone

struct HandlerRecord {
  std::string id; // host:pid:random
  int64_t pid = 0;
  std::string host;
  int64_t started_at_ms = 0;
  int64_t heartbeat_at_ms = 0;
  int64_t stopped_at_ms = 0; // 0 while running
  int64_t processed = 0;
  int64_t dead_lettered = 0;
  int64_t retried = 0;
  int64_t batches = 0;
  int64_t latency_p50_us = 0; // time to apply and settle one batch
  int64_t latency_p99_us = 0;
  std::string last_error;
  std::string request; // asked by acmo handlers: "" (nothing), "stop" or "drain"

  // "running", "stopped" (ended cleanly) or "gone" (its heartbeat stopped: it died).
  std::string state(int64_t now_ms) const;
};

// Write (insert or update) a handler's row, through the queue's write path, and return what
// an operator asks of it ("", "stop" or "drain"; see request_handler).
Expected<std::string> save_handler(Queue& queue, const HandlerRecord& record);

// Ask the running handler `id` to "stop" (finish the batches in hand, then exit, as on
// SIGTERM) or to "drain" (go on until it finds nothing to take, then stop); it sees the request
// at its next heartbeat, within about a second, wherever it runs. Errors: not_found (no handler
// `id` seen in the last hour), conflict (it is not running).
Expected<void> request_handler(Queue& queue, const std::string& db_path, std::string_view id,
                               std::string_view request, int64_t now_ms);

// Every handler seen within the last hour, most recently started first.
Expected<std::vector<HandlerRecord>> list_handlers(const std::string& db_path, int64_t now_ms);

// A new handler id for this process: "host:pid:xxxx".
std::string new_handler_id();
std::string host_name();

} // namespace acmo
