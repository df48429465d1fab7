// Small helpers shared by the queue tests.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "core/orders/order_event.hpp"
#include "core/queue/sqlite/sqlite_queue.hpp"
#include "core/sqlite/sqlite.hpp"
#include "core/util/error.hpp"

namespace acmo::test {

// The value of an Expected that the test needs to succeed; a failure stops the test case with
// the error's own message, which says far more than "REQUIRE(result) failed".
template<typename T> T must(Expected<T> result)
{
  if (!result) FAIL("unexpected error (" << errc_name(result.error().code) << "): "
                                         << result.error().message);
  return std::move(*result);
}

inline void must(const Expected<void>& result)
{
  if (!result) FAIL("unexpected error (" << errc_name(result.error().code) << "): "
                                         << result.error().message);
}

// The error of an Expected that the test needs to fail.
template<typename T> Error must_fail(const Expected<T>& result)
{
  if (result) FAIL("expected an error, got success");
  return result.error();
}

// The error message of `result`, or "" when it succeeded: a check that it is "" shows what
// failed.
template<typename T> std::string failure_of(const Expected<T>& result)
{
  return result ? std::string() : result.error().message;
}

inline std::unique_ptr<Queue> open_queue(const std::string& path, QueueOptions options = {},
                                         const Clock& clock = SystemClock::instance())
{
  return must(SqliteQueue::open(path, std::move(options), clock));
}

// The SQLite connection of an embedded queue's transaction, for work that writes in it.
inline sqlite::Database& db_of(QueueTransaction& txn)
{
  return *must(sqlite_connection(txn));
}

// The receipt handles of received messages, in their order.
inline std::vector<std::string> receipts_of(const std::vector<Message>& messages)
{
  std::vector<std::string> out;
  out.reserve(messages.size());
  for (const auto& m : messages) out.push_back(m.receipt);
  return out;
}

// Queue the order event written as JSON, in the group "orders", as `acmo send` would.
inline void send_event(Queue& q, const std::string& json)
{
  auto event = parse_event(json);
  REQUIRE(event);
  must(q.send(SendRequest{event_body(*event), "orders", ""}));
}

} // namespace acmo::test
