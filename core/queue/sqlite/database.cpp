#include "core/queue/sqlite/database.hpp"

#include <chrono>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

#include <fmt/core.h>

#include "core/queue/sqlite/schema.hpp"

namespace acmo::sqlite_queue {

namespace {

constexpr int k_sqlite_busy = 5; // SQLITE_BUSY, without including sqlite3.h here

// Whether the file belongs to another program: someone else's application id, or tables in a
// file acmo never stamped.
bool is_foreign(sqlite::Database& db)
{
  int64_t version = db.query_int("PRAGMA user_version");
  int64_t app_id = db.query_int("PRAGMA application_id");
  int64_t tables = db.query_int("SELECT COUNT(*) FROM sqlite_master");
  return (app_id != 0 && app_id != schema::k_application_id)
         || (app_id == 0 && version == 0 && tables > 0);
}

Unexpected foreign_file_error(sqlite::Database& db)
{
  return make_error(Errc::invalid_input,
                    fmt::format("{} is an SQLite database of another program, not an acmo "
                                "database; point --data-dir at a directory of acmo's own",
                                db.path()));
}

} // namespace

std::shared_mutex& write_gate()
{
  static std::shared_mutex gate;
  return gate;
}

void apply_connection_settings(sqlite::Database& db, int64_t busy_timeout_ms)
{
  auto switch_to_wal = [&]() -> std::string {
    try {
      auto stmt = db.prepare("PRAGMA journal_mode=WAL");
      return stmt->step() ? stmt->column_text(0) : std::string();
    } catch (const sqlite::SqliteError& e) {
      if ((e.code() & 0xff) != k_sqlite_busy) throw;
      return "busy";
    }
  };
  // Switching a new file to WAL needs it to itself for a moment. While another process that
  // is opening the same new file holds a lock, the pragma fails at once with "database is
  // locked" (no busy handler runs for it) or answers with the old mode. Try again until the
  // busy timeout.
  std::string mode = switch_to_wal();
  const auto deadline =
    std::chrono::steady_clock::now() + std::chrono::milliseconds(busy_timeout_ms);
  while (mode != "wal" && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    mode = switch_to_wal();
  }
  if (mode != "wal") {
    throw sqlite::SqliteError(1, fmt::format("cannot switch {} to WAL mode (got \"{}\"); is it on "
                                             "a network file system?",
                                             db.path(), mode));
  }
  // Commits never fsync by themselves: the write path syncs the WAL for the requests that need
  // it (see group_commit.hpp). Checkpoints still sync the WAL before copying it.
  db.exec("PRAGMA synchronous=NORMAL");
  db.exec("PRAGMA temp_store=MEMORY");
  db.exec("PRAGMA cache_size=-16000");
}

// Refuse another program's file before anything is written to it: even the switch to WAL
// rewrites the file's header. One read transaction, so that an acmo process creating the schema
// at this moment is seen either before or after, never half-way.
Expected<void> refuse_foreign(sqlite::Database& db)
{
  if (in_read_transaction(db, [&] { return is_foreign(db); })) return foreign_file_error(db);
  return {};
}

void sync_directory_of(const std::string& path)
{
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return; // best effort: the files themselves are synced either way
  ::fsync(fd);
  ::close(fd);
}

Expected<void> migrate(sqlite::Database& db)
{
  // Up to date, as nearly always: a read tells, so that opening the queue never waits for
  // another process's write lock (a handler stopped in its transaction must not keep `acmo
  // stats` from reading).
  const bool current = in_read_transaction(db, [&] {
    return !is_foreign(db) && db.query_int("PRAGMA user_version")
                                == static_cast<int64_t>(schema::migrations().size());
  });
  if (current) return {};
  std::shared_lock gate(write_gate());
  db.exec("BEGIN IMMEDIATE");
  try {
    int64_t version = db.query_int("PRAGMA user_version");
    const auto& steps = schema::migrations();
    if (is_foreign(db)) {
      db.exec("ROLLBACK");
      return foreign_file_error(db);
    }
    if (version > static_cast<int64_t>(steps.size())) {
      db.exec("ROLLBACK");
      return make_error(Errc::conflict,
                        fmt::format("{} was written by a newer acmo (schema {}, this acmo knows "
                                    "up to {}); upgrade acmo",
                                    db.path(), version, steps.size()));
    }
    for (auto i = static_cast<size_t>(version); i < steps.size(); ++i) db.exec(steps[i]);
    if (version < static_cast<int64_t>(steps.size())) {
      db.exec(fmt::format("PRAGMA application_id={}", schema::k_application_id));
      db.exec(fmt::format("PRAGMA user_version={}", steps.size()));
    }
    db.exec("COMMIT");
  } catch (...) {
    try {
      db.exec("ROLLBACK");
    } catch (const sqlite::SqliteError&) {
    }
    throw;
  }
  return {};
}

int64_t find_queue(sqlite::Database& db, const std::string& name)
{
  auto stmt = db.prepare("SELECT id FROM queues WHERE name = ?1");
  stmt->bind(1, name);
  return stmt->step() ? stmt->column_int(0) : 0;
}

int64_t ensure_queue(sqlite::Database& db, const std::string& name, int64_t now)
{
  db.prepare("INSERT OR IGNORE INTO queues(name, created_at) VALUES (?1, ?2)")
    ->bind(1, name)
    .bind(2, now)
    .run();
  auto stmt = db.prepare("SELECT id FROM queues WHERE name = ?1");
  stmt->bind(1, name);
  if (!stmt->step()) throw sqlite::SqliteError(1, "queue row vanished after insert");
  return stmt->column_int(0);
}

} // namespace acmo::sqlite_queue
