// Opening the embedded queue's database file: its connections' settings, refusing a file that
// belongs to another program, creating and migrating the schema (schema.hpp), the rows of the
// queues.
#pragma once

#include <cstdint>
#include <shared_mutex>
#include <string>

#include "core/sqlite/sqlite.hpp"
#include "core/util/error.hpp"

namespace acmo::sqlite_queue {

// Every write transaction of every SqliteQueue of this process holds it shared;
// SqliteQueue::hold_writes holds it alone.
std::shared_mutex& write_gate();

// WAL mode (waiting up to `busy_timeout_ms` for a new file another process is creating),
// commits that do not sync by themselves, and the cache sizes of a queue connection.
void apply_connection_settings(sqlite::Database& db, int64_t busy_timeout_ms);

// Errc::invalid_input when the file is another program's SQLite database.
Expected<void> refuse_foreign(sqlite::Database& db);

// Create or migrate the schema; refuse files that belong to something else, or that a newer
// acmo wrote (Errc::conflict).
Expected<void> migrate(sqlite::Database& db);

// The id of queue `name`, or 0 when it has no row yet.
int64_t find_queue(sqlite::Database& db, const std::string& name);
// The id of queue `name`, its row created if it has none (inside the caller's transaction).
int64_t ensure_queue(sqlite::Database& db, const std::string& name, int64_t now);

// Make the directory entries of the file at `path` durable (best effort).
void sync_directory_of(const std::string& path);

// `read`'s result, read in one read transaction of `db` (rolled back when `read` throws).
template<typename Fn> auto in_read_transaction(sqlite::Database& db, Fn read)
{
  db.exec("BEGIN");
  try {
    auto result = read();
    db.exec("COMMIT");
    return result;
  } catch (...) {
    try {
      db.exec("ROLLBACK");
    } catch (const sqlite::SqliteError&) {
    }
    throw;
  }
}

} // namespace acmo::sqlite_queue
