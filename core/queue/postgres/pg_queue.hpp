// The queue on PostgreSQL: the Queue port's adapter for a queue that many processes, on many
// hosts, share (docs/queue.md). acmo creates and migrates its schema (queue.schema) and needs no
// extension.
//
// Every rule of the contract holds as in the embedded queue. One receiver per message group at
// a time, across every process: a group's row is locked (FOR UPDATE SKIP LOCKED, so receivers
// never wait for each other) by whoever changes its messages, and a receive leaves the group
// blocked (its ready time in the future) until its head is deleted, released or times out.
// Concurrent sends of one process share a transaction (group commit): the first sender to
// find the sending connection idle sends every request queued so far in one statement. A send
// notifies (NOTIFY in its transaction) the queue's channel, which each PgQueue listens to on a
// connection of its own, so an idle long poll wakes within milliseconds of a send from any
// process; without notifications it polls every queue.poll_interval.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "core/queue/queue.hpp"
#include "core/util/clock.hpp"

namespace pqxx {
class transaction_base;
}

namespace acmo {

// A PostgreSQL queue's transaction: work that settles with it (Queue::settle, Queue::consume)
// runs its statements in it, so that they commit together with the deletions of the messages.
class PgTransaction final : public QueueTransaction
{
public:
  explicit PgTransaction(pqxx::transaction_base& tx) : m_tx(tx) {}
  std::string_view backend() const override { return "postgres"; }
  pqxx::transaction_base& tx() const { return m_tx; }

private:
  pqxx::transaction_base& m_tx;
};

// The PostgreSQL transaction of a QueueTransaction, or Errc::internal naming the back-end when
// the queue is not on PostgreSQL.
Expected<pqxx::transaction_base*> pg_transaction(QueueTransaction& txn);

// Whether `name` is a schema name acmo takes for queue.schema: a plain lower-case SQL
// identifier (1 to 63 letters, digits and _, not starting with a digit).
bool valid_queue_schema(std::string_view name);

class PgQueue final : public Queue
{
public:
  // Connect to `url` (a libpq URI or key=value string), create or migrate the queue's schema
  // `schema` (created if missing), and open the queue `options.name` and its DLQ. Several
  // processes may open at once: migrations take an advisory lock. PostgreSQL down is
  // Errc::unavailable; a bad URL or schema name is Errc::invalid_input naming queue.url or
  // queue.schema.
  static Expected<std::unique_ptr<PgQueue>> open(const std::string& url,
                                                 const std::string& schema, QueueOptions options,
                                                 const Clock& clock = SystemClock::instance());
  ~PgQueue() override;

  std::string_view backend() const override { return "postgres"; }
  // The server's clock (ServerTime), or the Clock given when it does not run by itself.
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
  // The work runs in the transaction that locks and deletes (or dead-letters) the messages;
  // pg_transaction gives it. A thrown database error rolls it back like a returned error.
  Expected<void> settle(const std::vector<std::string>& receipts, const SettleWork& work) override;
  // The batch's groups stay locked while the work runs, so no other receiver takes them; the
  // messages are never in flight. A process that dies in the work loses its transaction; the
  // journal row written before the work (consume_journal) outlives its backend, and the
  // sweep of any process counts a delivery of each message it was handling.
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

  // The schema's version is the one this acmo writes, and its tables answer a read.
  Expected<void> check_integrity() override;
  // An error naming the backend (its pid, application and client) whose transaction has held
  // rows of the queue for over 10 s, which every writer of those rows waits for.
  Expected<void> check_write_lock() override;
  // The server answers a write within 2 s and is not a read-only standby.
  Expected<void> check_writable() override;

  // acmo queue move: take in, in one transaction, what SqliteQueue::move_out hands over: the
  // messages with their sequence numbers, ids, attempts and errors, the DLQ's with their
  // reasons, the dedup entries still in their window; the sequence goes on above the source's.
  // A message moved by an earlier run (moved_messages) is skipped. Fails, moving nothing, when
  // the queue holds another message under one of the sequence numbers.
  Expected<MoveResult> move_in(const QueueSnapshot& snapshot);

  void interrupt() override;
  void resume() override;

  // Whether this queue's listening connection is up (long polls wake on notifications rather
  // than poll).
  bool listening() const;

private:
  // The long poll of every receive: `attempt(first_try)` tries once and says whether it got
  // anything; between tries it waits (up to `wait_ms` in all) for a notification, a local
  // commit or the time the first group is ready, and probes cheaply before trying again.
  Expected<void> poll(int64_t wait_ms, const std::function<Expected<bool>(bool)>& attempt);

  struct Impl;
  PgQueue(std::unique_ptr<Impl> impl, QueueOptions options);
  std::unique_ptr<Impl> m_impl;
};

} // namespace acmo
