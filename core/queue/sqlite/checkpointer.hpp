// The embedded queue's checkpoints: when the writer connection's WAL is copied back into the
// database file, and by whom.
//
// SQLite copies the WAL back into the database (a checkpoint, with an fsync of each file) from
// the commit that finds the WAL past wal_autocheckpoint pages, 1,000 by default, and the
// writer waits for it. Transactions of single and batched sends (and redrives) keep that: with
// many concurrent senders on two cores, a thread checkpointing beside them made them slower.
// Transactions that only consume (receive, delete, the handler's consume), and a bulk load's
// (thousands of messages a transaction, one sender), do not wait for it: each time the WAL
// passes another 1,000 pages they wake a thread of the queue's own (on a connection of its own)
// to checkpoint while they go on, and only at 8,000 pages (a WAL of up to 32 MB) does the
// writer checkpoint itself. By then the thread has copied nearly all of the WAL, so the
// writer's checkpoint is short; and it is the one that lets the WAL start over, since a
// checkpoint that runs beside the writer never catches up with it. A consumer draining a
// backlog had spent about a quarter of its time waiting for checkpoints of 8,000 pages (about
// 65 ms each).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

struct sqlite3;

namespace acmo::sqlite_queue {

class WalCheckpointer
{
public:
  WalCheckpointer(std::string db_path, int64_t busy_timeout_ms);
  ~WalCheckpointer();
  WalCheckpointer(const WalCheckpointer&) = delete;
  WalCheckpointer& operator=(const WalCheckpointer&) = delete;

  // Take over the checkpoints of the writer connection `writer` (in place of
  // wal_autocheckpoint). This object must outlive the connection's commits.
  void attach(sqlite3* writer);
  // Whether the transactions the writer commits from now on only consume (or bulk-load): they
  // leave checkpoints to the thread up to 8,000 pages. Set by the writer's thread only.
  void set_consuming(bool consuming);
  // Stop the thread (waiting for a checkpoint it is making); it is not started again.
  void stop();

private:
  static constexpr int k_pages = 1000;
  static constexpr int k_pages_consuming = 8000;

  // Runs on the writer's thread after each commit.
  static int on_wal_commit(void* arg, sqlite3* db, const char* name, int pages);
  // Called from SQLite's hook, which must not throw.
  void checkpoint_in_background() noexcept;
  // Whether the thread was checkpointing (now done).
  bool wait_for_thread() noexcept;
  void run() noexcept;

  const std::string m_db_path;
  const int64_t m_busy_timeout_ms;
  int m_threshold = k_pages; // for the transaction being committed
  int m_asked_at = 0;        // the WAL's size in thousands of pages when the thread was asked
  std::thread m_thread;
  std::mutex m_mu;
  std::condition_variable m_cv;
  bool m_wanted = false;
  bool m_running = false;
  bool m_stop = false;
};

} // namespace acmo::sqlite_queue
