// The embedded queue: the Queue port's adapter on SQLite in WAL mode (docs/queue.md).
//
// One SQLite file holds every queue of a data dir: messages, message groups, the dedup history,
// counters, the dead-letter queue and the handler registry. Any number of SqliteQueue objects,
// in any number of processes, may use the same file at once; SQLite's write lock serialises
// them and a short busy handler keeps waits small. Inside one process, concurrent writers share
// transactions (group commit): the first caller to find the writer idle commits every request
// queued so far, so N threads sending at once pay for about one fsync, not N.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "core/queue/queue.hpp"
#include "core/util/clock.hpp"

namespace acmo {

namespace sqlite {
class Database;
}

// An SQLite queue's transaction: work that settles with it writes on its connection (the
// embedded order store, in the same database file).
class SqliteTransaction final : public QueueTransaction
{
public:
  explicit SqliteTransaction(sqlite::Database& db) : m_db(db) {}
  std::string_view backend() const override { return "sqlite"; }
  sqlite::Database& db() const { return m_db; }

private:
  sqlite::Database& m_db;
};

// The SQLite connection of a QueueTransaction, or Errc::internal naming the back-end when the
// queue is not on SQLite (work that needs the embedded queue's database was given another).
Expected<sqlite::Database*> sqlite_connection(QueueTransaction& txn);

class SqliteQueue final : public Queue
{
public:
  // Open the queue `options.name` in the SQLite file `db_path`, creating or migrating the schema.
  // Fails with a clear error if the file is not an acmo database.
  static Expected<std::unique_ptr<SqliteQueue>> open(const std::string& db_path,
                                                     QueueOptions options,
                                                     const Clock& clock = SystemClock::instance());
  ~SqliteQueue() override;

  std::string_view backend() const override { return "sqlite"; }
  int64_t now_ms() const override;

  Expected<SendResult> send(const SendRequest& request) override;
  Expected<std::vector<Expected<SendResult>>>
  send_batch(const std::vector<SendRequest>& requests) override;
  std::vector<Expected<SendResult>> send_bulk(const std::vector<SendRequest>& requests) override;
  Expected<std::vector<Message>> receive(int max, std::optional<int64_t> visibility_ms = {},
                                         int64_t wait_ms = 0,
                                         bool isolate_suspects = false) override;
  Expected<std::vector<Message>>
  remove_and_receive(const std::vector<std::string>& done, std::vector<Expected<void>>& deleted,
                     int max, std::optional<int64_t> visibility_ms = {}, int64_t wait_ms = 0,
                     bool isolate_suspects = false) override;
  Expected<void> remove(std::string_view receipt) override;
  std::vector<Expected<void>> remove_batch(const std::vector<std::string>& receipts) override;
  Expected<void> change_visibility(std::string_view receipt, int64_t timeout_ms) override;
  Expected<ReleaseOutcome> release(std::string_view receipt, std::string_view error,
                                   std::string_view subject = {}) override;
  Expected<void> dead_letter(std::string_view receipt, std::string_view reason,
                             std::string_view subject = {}) override;
  // The work runs in the queue's write transaction, on the queue's own connection
  // (sqlite_connection gives it); a thrown SQLite error rolls it back like a returned error.
  Expected<void> settle(const std::vector<std::string>& receipts, const SettleWork& work) override;
  // Since the messages never go in flight, a process that dies in `work` would leave no trace
  // of the attempt: before the work runs, the batch is written to the queue's work journal
  // (core/queue/sqlite/work_journal.hpp), and the housekeeping of any process counts a delivery
  // of each message a dead consumer was handling.
  Expected<std::vector<Message>> consume(int max, int64_t wait_ms,
                                         const ConsumeWork& work) override;
  Expected<std::optional<Message>> find(int64_t seq) override;
  Expected<std::vector<Message>> peek(const PeekFilter& filter) override;
  Expected<GroupsReport> groups(const GroupsFilter& filter) override;
  Expected<std::vector<Message>> dlq_list(int64_t limit = 100, int64_t offset = 0) override;
  Expected<DlqPage> dlq_page(int64_t limit, int64_t offset,
                             const DlqFilter& filter = {}) override;
  Expected<Message> dlq_show(std::string_view message_id) override;
  Expected<int64_t> redrive(const std::vector<std::string>& message_ids = {}) override;
  Expected<RedriveRun> begin_redrive(const DlqFilter& filter) override;
  Expected<int64_t> redrive_step(RedriveRun& run, int64_t max) override;
  Expected<int64_t> purge(bool dlq = false) override;
  Expected<SweepResult> sweep() override;
  Expected<QueueStats> stats() override;
  CommitStats commit_stats() const override;

  Expected<std::string> save_handler(const HandlerRecord& record) override;
  Expected<void> request_handler(std::string_view id, std::string_view request) override;
  Expected<std::vector<HandlerRecord>> handlers(int64_t since_ms) override;

  // An error when the database is marked damaged (SQLite found damage in it, in this process
  // or another: core/sqlite/sqlite.hpp), else SQLite's quick_check of the whole file, run again
  // after a hundred times as long as it took (between a second and ten minutes), the last
  // result in between. A damaged database takes no writes (every write fails with the reason)
  // until it is restored; opening it clears the mark once the check passes again.
  Expected<void> check_integrity() override;
  // An error naming the process that holds the database's write lock when that process is
  // stopped (Ctrl-Z, SIGSTOP, a debugger) or keeps it for over a second, or when this process's
  // own transaction has been open for over 10 s.
  Expected<void> check_write_lock() override;
  // With plenty of free space on the disk holding it, yes without touching it; with little
  // (under 16 MiB), a small write transaction decides, so that a full disk is reported as the
  // error a send would get.
  Expected<void> check_writable() override;

  void interrupt() override;
  void resume() override;

  // acmo queue move: in one write transaction, hand every message of the queue and of its DLQ,
  // in sequence order, and the dedup history still in its window to `move_in`, which commits
  // them elsewhere; once it has, delete them here and mark the queue moved to `destination`
  // (shown in the error every later send gets). When `move_in` fails nothing changes here.
  // The database's write lock is held throughout: every send of another process waits.
  Expected<MoveResult>
  move_out(const std::string& destination,
           const std::function<Expected<MoveResult>(const QueueSnapshot&)>& move_in);
  // Where move_out moved the queue; empty while it has not been moved.
  Expected<std::string> moved_to();

  // Wait until no write transaction of any SqliteQueue of this process is open, and keep new
  // ones from beginning while the returned lock is held: what a process does before it lets
  // itself be stopped (SIGTSTP), so that it never stops holding the database's write lock.
  static std::unique_lock<std::shared_mutex> hold_writes();

private:
  // Run `work` in a write transaction of the queue's database, with the queue's own connection
  // (not fsynced: for bookkeeping such as the handler registry). A thrown SQLite error or a
  // returned error rolls back the work.
  Expected<void> run_write(const std::function<Expected<void>(sqlite::Database&)>& work);

  // The long poll of every receive: `attempt(first_try)` tries once and says whether it got
  // anything; between tries it waits (up to `wait_ms` in all) for a local wake-up or the poll
  // interval, and probes cheaply before trying again.
  Expected<void> poll(int64_t wait_ms, const std::function<Expected<bool>(bool)>& attempt);

  struct Impl;
  SqliteQueue(std::unique_ptr<Impl> impl, QueueOptions options);
  std::unique_ptr<Impl> m_impl;
};

} // namespace acmo
