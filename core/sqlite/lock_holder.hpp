// Who holds an SQLite database's write lock, as the kernel knows it: so that a command waiting
// for the lock, and /health, can name the process that keeps everyone waiting (a handler
// stopped with Ctrl-Z or SIGSTOP, hung, or paused by a debugger) instead of saying "database is
// locked".
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace acmo {

struct LockHolder {
  int64_t pid = 0;
  std::string command; // its command line, shortened ("acmo run-handler --concurrency 2")
  char state = '?';    // from /proc/PID/stat: 'R', 'S', 'D', 'T' (stopped), 't' (traced), 'Z'
  int64_t held_ms = -1; // how long it has held the lock, when known

  // Stopped, traced or dead: it will not let go of the lock by itself.
  bool frozen() const { return state == 'T' || state == 't' || state == 'Z'; }
};

// The process of another than this one that holds the write lock of the database at
// `db_path` (WAL mode: the POSIX lock on the WAL index's write byte, which SQLite holds from
// BEGIN IMMEDIATE to COMMIT), or nothing when no other process holds it.
std::optional<LockHolder> wal_write_lock_holder(const std::string& db_path);

// The process of another than this one that holds one of the other locks of the database's
// WAL index exclusively (the checkpoint and recovery locks, the read marks, the lock of the
// first open), or nothing. Each is held for a moment only; a process stopped while it holds
// one keeps every other connection from reading the database: SQLite retries for about 10 s,
// then fails with "locking protocol" (SQLITE_PROTOCOL).
std::optional<LockHolder> wal_index_lock_holder(const std::string& db_path);

// "pid 1234 (acmo run-handler), stopped (Ctrl-Z or SIGSTOP: `kill -CONT 1234` resumes it), for
// at least 3 s": for messages.
std::string describe(const LockHolder& holder);

} // namespace acmo
