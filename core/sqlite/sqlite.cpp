#include "core/sqlite/sqlite.hpp"
#include "core/sqlite/lock_holder.hpp"
#include "core/sqlite/wal_vfs.hpp"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>

#include <thread>

#include <fcntl.h>
#include <unistd.h>

#include <fmt/core.h>
#include <sqlite3.h>

namespace acmo::sqlite {

const char* library_version() { return sqlite3_libversion(); }

std::string damage_marker_path(const std::string& db_path) { return db_path + "-damaged"; }

void mark_damaged(const std::string& db_path, std::string_view what)
{
  // O_EXCL: the first finding stays, with its time; a marker that cannot be written changes
  // nothing for this process, whose own error says it all the same.
  const int fd = ::open(damage_marker_path(db_path).c_str(),
                        O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char when[32] = {};
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  const std::string text = fmt::format("{} pid {}: {}\n", when, ::getpid(), what);
  [[maybe_unused]] const ssize_t n = ::write(fd, text.data(), text.size());
  ::fsync(fd);
  ::close(fd);
}

namespace {

// A database found damaged is marked so, for every process that uses it (damage_marker_path).
void note_damage(sqlite3* db, int rc, std::string_view what)
{
  if (db == nullptr || (rc & 0xff) != SQLITE_CORRUPT) return;
  const char* file = sqlite3_db_filename(db, "main");
  if (file == nullptr || *file == '\0') return;
  mark_damaged(file, what);
}

// SQLite gives up reading after about 10 s while another process holds a lock of the WAL
// index exclusively ("locking protocol"): a process stopped in the moment it holds one. The
// message names that process.
std::string with_wal_index_holder(sqlite3* db, int rc, std::string message)
{
  if (db == nullptr || (rc & 0xff) != SQLITE_PROTOCOL) return message;
  const char* file = sqlite3_db_filename(db, "main");
  if (file == nullptr || *file == '\0') return message;
  if (auto holder = wal_index_lock_holder(file)) {
    message += fmt::format("; the database's WAL index is locked by {}", describe(*holder));
  }
  return message;
}

[[noreturn]] void fail(sqlite3* db, int rc, std::string_view context)
{
  const char* detail = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  std::string message = with_wal_index_holder(db, rc, fmt::format("{}: {}", context, detail));
  note_damage(db, rc, message);
  throw SqliteError(rc, std::move(message), db ? sqlite3_system_errno(db) : 0);
}

} // namespace

Error SqliteError::to_error() const
{
  // An I/O error whose system call failed for want of space is a full disk too (SQLite says
  // "disk I/O error" when it cannot even create the WAL's files).
  const int primary = m_code & 0xff;
  const bool no_space = (primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN) &&
                        (m_sys_errno == ENOSPC || m_sys_errno == EDQUOT);
  if (primary == SQLITE_FULL || no_space) {
    return Error(Errc::unavailable,
                 fmt::format("the disk holding the queue is full ({}); free some space and retry",
                             what()));
  }
  if ((primary == SQLITE_CANTOPEN || primary == SQLITE_IOERR) &&
      (m_sys_errno == EMFILE || m_sys_errno == ENFILE)) {
    return Error(Errc::unavailable,
                 fmt::format("acmo is out of file descriptors and cannot open the database ({}); "
                             "raise the open files limit (ulimit -n, or LimitNOFILE= in a "
                             "systemd unit), or lower server.keep_alive_timeout",
                             std::strerror(m_sys_errno)));
  }
  // Not allowed to write there: no retry will help, the data dir is misconfigured.
  const bool denied = primary == SQLITE_READONLY || primary == SQLITE_PERM ||
                      ((primary == SQLITE_CANTOPEN || primary == SQLITE_IOERR) &&
                       (m_sys_errno == EACCES || m_sys_errno == EPERM || m_sys_errno == EROFS));
  if (denied) {
    return Error(Errc::unavailable,
                 fmt::format("this user may not write the queue database ({}); run acmo as "
                             "the user that owns the data directory and its files, or pass "
                             "--data-dir with a directory this user can write",
                             m_sys_errno != 0 ? std::strerror(m_sys_errno) : "it is read-only"),
                 "data_dir");
  }
  // Nothing there to open: the database's path is a directory, or passes through a file, or a
  // directory that is not there or takes no files (/proc). No retry will help either.
  const bool misplaced = primary == SQLITE_CANTOPEN &&
                         (m_sys_errno == EISDIR || m_sys_errno == ENOTDIR || m_sys_errno == ENOENT);
  if (misplaced) {
    return Error(Errc::unavailable,
                 fmt::format("cannot open the queue database ({}: {}); pass --data-dir (or set "
                             "data_dir) to a directory acmo may create files in",
                             what(), std::strerror(m_sys_errno)),
                 "data_dir");
  }
  switch (primary) {
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
  case SQLITE_PROTOCOL:
    return Error(Errc::busy,
                 fmt::format("the queue database stayed locked by another process ({}); retry later",
                             what()));
  case SQLITE_IOERR:
  case SQLITE_CANTOPEN:
    return Error(Errc::unavailable,
                 fmt::format("cannot write the queue database ({}); check the data directory",
                             what()));
  case SQLITE_CORRUPT:
  case SQLITE_NOTADB:
    return Error(Errc::internal,
                 fmt::format("the queue database is damaged or not an SQLite file ({}); restore it "
                             "from a backup or point --data-dir elsewhere",
                             what()));
  default: return Error(Errc::internal, what());
  }
}

Statement::~Statement() { sqlite3_finalize(m_stmt); }

Statement& Statement::bind(int index, int64_t value)
{
  int rc = sqlite3_bind_int64(m_stmt, index, value);
  if (rc != SQLITE_OK) fail(m_db, rc, "bind");
  return *this;
}

Statement& Statement::bind(int index, std::string_view text, bool transient)
{
  int rc = sqlite3_bind_text64(m_stmt, index, text.data(), text.size(),
                               transient ? SQLITE_TRANSIENT : SQLITE_STATIC, SQLITE_UTF8);
  if (rc != SQLITE_OK) fail(m_db, rc, "bind");
  return *this;
}

Statement& Statement::bind_blob(int index, std::string_view bytes, bool transient)
{
  int rc = sqlite3_bind_blob64(m_stmt, index, bytes.data(), bytes.size(),
                               transient ? SQLITE_TRANSIENT : SQLITE_STATIC);
  if (rc != SQLITE_OK) fail(m_db, rc, "bind");
  return *this;
}

Statement& Statement::bind_null(int index)
{
  int rc = sqlite3_bind_null(m_stmt, index);
  if (rc != SQLITE_OK) fail(m_db, rc, "bind");
  return *this;
}

bool Statement::step()
{
  int rc = sqlite3_step(m_stmt);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  fail(m_db, rc, sqlite3_sql(m_stmt));
}

void Statement::run()
{
  while (step()) {
  }
}

void Statement::reset()
{
  sqlite3_reset(m_stmt);
  sqlite3_clear_bindings(m_stmt);
}

int64_t Statement::column_int(int col) const { return sqlite3_column_int64(m_stmt, col); }

std::string Statement::column_text(int col) const { return std::string(column_view(col)); }

std::string_view Statement::column_view(int col) const
{
  const void* data = sqlite3_column_blob(m_stmt, col);
  auto size = static_cast<size_t>(sqlite3_column_bytes(m_stmt, col));
  return data ? std::string_view(static_cast<const char*>(data), size) : std::string_view();
}

bool Statement::column_is_null(int col) const
{
  return sqlite3_column_type(m_stmt, col) == SQLITE_NULL;
}

Database::Database(const std::string& path, int64_t busy_timeout_ms)
  : m_path(path), m_busy_timeout_ms(busy_timeout_ms)
{
  int rc = sqlite3_open_v2(path.c_str(), &m_db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                           gathering_vfs_name());
  if (rc != SQLITE_OK) {
    std::string msg = m_db ? sqlite3_errmsg(m_db) : sqlite3_errstr(rc);
    const int sys_errno = m_db ? sqlite3_system_errno(m_db) : 0;
    sqlite3_close(m_db);
    m_db = nullptr;
    throw SqliteError(rc, fmt::format("cannot open {}: {}", path, msg), sys_errno);
  }
  sqlite3_extended_result_codes(m_db, 1);
  sqlite3_busy_handler(m_db, &Database::busy_handler, this);
}

Database::~Database()
{
  m_cache.clear(); // statements must be finalized before the connection closes
  sqlite3_close(m_db);
}

// SQLite's default handler sleeps up to 100 ms between tries, which would put whole tenths of
// a second on the latency of a process that meets another's write lock. Writers here hold the
// lock for well under a millisecond, so we spin briefly first, then back off to 1 ms naps.
int Database::busy_handler(void* self, int count)
{
  auto* db = static_cast<Database*>(self);
  using namespace std::chrono;
  static thread_local steady_clock::time_point started;
  static thread_local bool noted = false;
  if (count == 0) {
    started = steady_clock::now();
    noted = false;
  }
  const int64_t waited = duration_cast<milliseconds>(steady_clock::now() - started).count();
  if (waited >= db->m_busy_timeout_ms) return 0;
  if (!noted && db->m_long_wait_hook && db->m_long_wait_ms > 0 && waited >= db->m_long_wait_ms) {
    noted = true;
    db->m_long_wait_hook();
  }
  if (count < 16) {
    std::this_thread::yield();
  } else if (count < 64) {
    std::this_thread::sleep_for(microseconds(100));
  } else {
    std::this_thread::sleep_for(milliseconds(1));
  }
  return 1;
}

void Database::exec(const std::string& sql)
{
  char* err = nullptr;
  int rc = sqlite3_exec(m_db, sql.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    std::string message =
      with_wal_index_holder(m_db, rc, fmt::format("{}: {}", sql.substr(0, 60), msg));
    note_damage(m_db, rc, message);
    throw SqliteError(rc, std::move(message), sqlite3_system_errno(m_db));
  }
}

StatementRef Database::prepare(const std::string& sql)
{
  auto it = m_cache.find(sql);
  if (it == m_cache.end()) {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v3(m_db, sql.c_str(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    if (rc != SQLITE_OK) fail(m_db, rc, sql);
    it = m_cache.emplace(sql, std::make_unique<Statement>(m_db, stmt)).first;
  }
  return StatementRef(*it->second);
}

int64_t Database::query_int(const std::string& sql)
{
  auto stmt = prepare(sql);
  return stmt->step() ? stmt->column_int(0) : 0;
}

int Database::changes() const { return sqlite3_changes(m_db); }

int64_t Database::last_insert_rowid() const { return sqlite3_last_insert_rowid(m_db); }

} // namespace acmo::sqlite
