#include "core/handler/handler_registry.hpp"

#include <unistd.h>

#include <fmt/core.h>

#include "core/sqlite/sqlite.hpp"
#include "core/util/ids.hpp"

namespace acmo {

std::string HandlerRecord::state(int64_t now_ms) const
{
  if (stopped_at_ms != 0) return "stopped";
  return now_ms - heartbeat_at_ms > k_heartbeat_timeout_ms ? "gone" : "running";
}

std::string host_name()
{
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

std::string new_handler_id()
{
  return fmt::format("{}:{}:{:04x}", host_name(), ::getpid(), random_u64() & 0xffff);
}

Expected<std::string> save_handler(Queue& queue, const HandlerRecord& r)
{
  static const std::string k_sql =
    "INSERT INTO handlers(id, pid, host, started_at, heartbeat_at, stopped_at, processed,"
    " dead_lettered, retried, batches, latency_p50_us, latency_p99_us, last_error)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    " ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,"
    " stopped_at = excluded.stopped_at, processed = excluded.processed,"
    " dead_lettered = excluded.dead_lettered, retried = excluded.retried,"
    " batches = excluded.batches, latency_p50_us = excluded.latency_p50_us,"
    " latency_p99_us = excluded.latency_p99_us, last_error = excluded.last_error"
    " RETURNING request";
  std::string request;
  auto ok = queue.run_write([&](sqlite::Database& db) -> Expected<void> {
    auto stmt = db.prepare(k_sql);
    stmt->bind(1, r.id).bind(2, r.pid).bind(3, r.host).bind(4, r.started_at_ms);
    stmt->bind(5, r.heartbeat_at_ms).bind(6, r.stopped_at_ms).bind(7, r.processed);
    stmt->bind(8, r.dead_lettered).bind(9, r.retried).bind(10, r.batches);
    stmt->bind(11, r.latency_p50_us).bind(12, r.latency_p99_us).bind(13, r.last_error);
    request = stmt->step() ? stmt->column_text(0) : std::string();
    while (stmt->step()) {
    }
    return {};
  });
  if (!ok) return Unexpected(ok.error());
  return request;
}

Expected<void> request_handler(Queue& queue, const std::string& db_path, std::string_view id,
                               std::string_view request, int64_t now_ms)
{
  auto handlers = list_handlers(db_path, now_ms);
  if (!handlers) return Unexpected(handlers.error());
  const HandlerRecord* found = nullptr;
  for (const auto& h : *handlers) {
    if (h.id == id) found = &h;
  }
  if (found == nullptr) {
    return make_error(Errc::not_found,
                      fmt::format("no handler {} was seen in the last hour; acmo handlers lists "
                                  "them",
                                  id));
  }
  if (const std::string state = found->state(now_ms); state != "running") {
    return make_error(Errc::conflict, fmt::format("handler {} is not running: it is {}", id,
                                                  state));
  }
  static const std::string k_sql = "UPDATE handlers SET request = ?2 WHERE id = ?1";
  return queue.run_write([&](sqlite::Database& db) -> Expected<void> {
    db.prepare(k_sql)->bind(1, id).bind(2, request).run();
    return {};
  });
}

Expected<std::vector<HandlerRecord>> list_handlers(const std::string& db_path, int64_t now_ms)
{
  static const std::string k_sql =
    "SELECT id, pid, host, started_at, heartbeat_at, stopped_at, processed, dead_lettered,"
    " retried, batches, latency_p50_us, latency_p99_us, last_error, request FROM handlers"
    " WHERE heartbeat_at > ?1 ORDER BY started_at DESC, id";
  try {
    sqlite::Database db(db_path, 30'000);
    db.exec("PRAGMA query_only=ON");
    std::vector<HandlerRecord> out;
    auto stmt = db.prepare(k_sql);
    stmt->bind(1, now_ms - 3'600'000);
    while (stmt->step()) {
      HandlerRecord r;
      r.id = stmt->column_text(0);
      r.pid = stmt->column_int(1);
      r.host = stmt->column_text(2);
      r.started_at_ms = stmt->column_int(3);
      r.heartbeat_at_ms = stmt->column_int(4);
      r.stopped_at_ms = stmt->column_int(5);
      r.processed = stmt->column_int(6);
      r.dead_lettered = stmt->column_int(7);
      r.retried = stmt->column_int(8);
      r.batches = stmt->column_int(9);
      r.latency_p50_us = stmt->column_int(10);
      r.latency_p99_us = stmt->column_int(11);
      r.last_error = stmt->column_text(12);
      r.request = stmt->column_text(13);
      out.push_back(std::move(r));
    }
    return out;
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

} // namespace acmo
