// A thin RAII layer over the SQLite C API: a connection with a statement cache, statements with
// typed bind and column access, and SQLite result codes turned into acmo errors.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>

#include "core/util/error.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace acmo::sqlite {

// A database in which SQLite found damage (SQLITE_CORRUPT) is marked by a file beside it,
// "<db>-damaged", holding the time and what was found, so that every process using it refuses
// to write to it until it is restored (core/queue/sqlite/sqlite_queue.cpp). The first finding is kept.
std::string damage_marker_path(const std::string& db_path);
void mark_damaged(const std::string& db_path, std::string_view what);

// The SQLite library's version, e.g. "3.40.1".
const char* library_version();

// Thrown by this layer; the queue catches it at the transaction boundary and turns it into an
// Error with to_error().
class SqliteError : public std::runtime_error
{
public:
  // sys_errno: the errno of the system call that failed under SQLite (sqlite3_system_errno),
  // so that an I/O error caused by a full disk is reported as a full disk.
  SqliteError(int code, const std::string& what, int sys_errno = 0)
    : std::runtime_error(what), m_code(code), m_sys_errno(sys_errno)
  {
  }
  int code() const { return m_code; }
  int sys_errno() const { return m_sys_errno; }
  Error to_error() const;

private:
  int m_code;
  int m_sys_errno;
};

class Statement
{
public:
  Statement(sqlite3* db, sqlite3_stmt* stmt) : m_db(db), m_stmt(stmt) {}
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  // Binding is 1-based as in SQLite. Text is copied only if `transient` is set.
  Statement& bind(int index, int64_t value);
  Statement& bind(int index, std::string_view text, bool transient = true);
  Statement& bind_blob(int index, std::string_view bytes, bool transient = true);
  Statement& bind_null(int index);

  // Step once; returns true when a row is available.
  bool step();
  // Step until done, for statements that return no rows.
  void run();
  // Clear bindings and rewind so the statement can be run again.
  void reset();

  int64_t column_int(int col) const;
  std::string column_text(int col) const;
  std::string_view column_view(int col) const; // valid until the next step/reset
  bool column_is_null(int col) const;

private:
  sqlite3* m_db;
  sqlite3_stmt* m_stmt;
};

// A statement borrowed from the connection's cache; reset when it goes out of scope.
class StatementRef
{
public:
  explicit StatementRef(Statement& stmt) : m_stmt(&stmt) {}
  StatementRef(const StatementRef&) = delete;
  StatementRef& operator=(const StatementRef&) = delete;
  ~StatementRef() { m_stmt->reset(); }
  Statement* operator->() { return m_stmt; }
  Statement& operator*() { return *m_stmt; }

private:
  Statement* m_stmt;
};

class Database
{
public:
  // Open (and create) the file at `path`. `busy_timeout_ms` bounds how long a statement waits
  // for another process's lock before failing with Errc::busy.
  Database(const std::string& path, int64_t busy_timeout_ms);
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  ~Database();

  // Execute one or more statements that return no rows.
  void exec(const std::string& sql);
  // A cached prepared statement for `sql`, reset and cleared when the ref is dropped.
  StatementRef prepare(const std::string& sql);
  // Run a single-value query (e.g. a pragma) and return its first column as integer.
  int64_t query_int(const std::string& sql);

  int changes() const;
  int64_t last_insert_rowid() const;
  sqlite3* handle() { return m_db; }
  const std::string& path() const { return m_path; }

  // How long a statement waits for another process's lock from now on.
  void set_busy_timeout(int64_t ms) { m_busy_timeout_ms = ms; }
  int64_t busy_timeout() const { return m_busy_timeout_ms; }
  // Called once in a wait for another process's lock that has lasted `after_ms`, from the
  // waiting thread: to say who holds the lock while the wait goes on.
  void on_long_wait(int64_t after_ms, std::function<void()> hook)
  {
    m_long_wait_ms = after_ms;
    m_long_wait_hook = std::move(hook);
  }

private:
  sqlite3* m_db = nullptr;
  std::string m_path;
  int64_t m_busy_timeout_ms;
  int64_t m_long_wait_ms = 0;
  std::function<void()> m_long_wait_hook;
  std::unordered_map<std::string, std::unique_ptr<Statement>> m_cache;

  static int busy_handler(void* self, int count);
};

} // namespace acmo::sqlite
