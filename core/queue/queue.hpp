// The durable SQS-FIFO queue engine (docs/queue.md) on SQLite in WAL mode.
//
// One SQLite file holds every queue of a data dir: messages, message groups, the dedup history,
// counters and the dead-letter queue. Any number of Queue objects, in any number of processes,
// may use the same file at once; SQLite's write lock serialises them and a short busy handler
// keeps waits small. Inside one process, concurrent writers share transactions (group commit):
// the first caller to find the writer idle commits every request queued so far, so N threads
// sending at once pay for about one fsync, not N.
#pragma once

#include <condition_variable>
#include <functional>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "core/util/clock.hpp"
#include "core/util/error.hpp"

namespace acmo {

namespace sqlite {
class Database;
}

struct QueueOptions {
  std::string name = "orders";
  std::string dlq_name = "orders-dlq";
  // "full": an accepted send is fsynced before the answer (survives power loss).
  // "normal": it survives a crash of any process, but not a power cut.
  bool durability_full = true;
  int64_t visibility_timeout_ms = 30'000;
  int64_t dedup_window_ms = 5 * 60'000;
  bool content_based_dedup = true;
  std::vector<int64_t> retry_delays_ms = {1'000, 5'000, 15'000};
  int max_retries = 3;
  int64_t retention_ms = 4 * 24 * 3'600'000LL;
  // How long to wait for another process's write lock before giving up with Errc::busy.
  int64_t busy_timeout_ms = 30'000;
  // How often an idle long-poll looks for messages sent by other processes.
  int64_t poll_interval_ms = 5;
  // How often housekeeping (retention and dedup-window sweeps) runs at most.
  int64_t housekeeping_interval_ms = 1'000;
};

// Check options before opening: names, and every timeout within its limits. The error names
// the offending key ("queue.visibility_timeout").
Expected<void> check_queue_options(const QueueOptions& options);

struct SendRequest {
  std::string body;
  std::string group_id = "orders";
  std::string dedup_id; // empty: SHA-256 of the body if content-based dedup is on
  // A duplicate must carry the same body as the message accepted first with its dedup id;
  // another body is an Errc::conflict, not a duplicate (what an HTTP Idempotency-Key asks for).
  // false: SQS's rule, where a dedup id seen in the window is a duplicate whatever the body.
  bool same_body = false;
  // Set: a send that is not a duplicate is refused with this error and nothing is queued (a
  // check the caller made before, which a retry of an accepted request must not fail).
  std::optional<Error> unless_duplicate = std::nullopt;
};

// Which waiting messages Queue::peek shows.
struct PeekFilter {
  std::string group_id;        // empty: every group
  std::string field, value;    // field set: messages whose body is a JSON object whose string
                               // field `field` is `value`
  int64_t limit = 100;
  bool newest_first = false;
};

// Which dead-lettered messages a DLQ read or redrive takes (docs/commands.md §12). The defaults
// match every message; check_dlq_filter says whether the values make sense.
struct DlqFilter {
  std::string reason;         // a substring of the dead-letter reason, in any ASCII letter case
  int64_t older_than_ms = -1; // dead-lettered at least this long ago; -1: any time
  int64_t newer_than_ms = -1; // dead-lettered less than this long ago; -1: any time

  bool matches_all() const { return reason.empty() && older_than_ms < 0 && newer_than_ms < 0; }
};

// A filter whose ages can match something: neither is negative, and "newer than" is more than
// 0 and more than "older than". The error (Errc::invalid_input) names the field, "olderThan" or
// "newerThan".
Expected<void> check_dlq_filter(const DlqFilter& filter);

// What Queue::groups shows: at most `limit` groups, with `blocked_only` only the blocked ones.
struct GroupsFilter {
  int64_t limit = 50;
  bool blocked_only = false;
};

// Why a group delivers nothing now (docs/queue.md §2, §5): its head is in flight (head-of-line
// blocking), or its head waits out a retry delay.
enum class GroupBlock { none, in_flight, retry_delay };

// One message group with messages waiting (visible, delayed or in flight).
struct GroupView {
  std::string group_id;
  int64_t depth = 0;     // its messages
  int64_t in_flight = 0; // of them, received and not yet deleted, released or timed out
  GroupBlock blocked = GroupBlock::none;
  // Its head, the message it delivers next: the oldest.
  std::string head_message_id;
  int64_t head_seq = 0;
  int64_t head_first_sent_at_ms = 0; // when first sent, kept through a redrive
  int64_t head_visible_at_ms = 0;    // when a blocked head is visible again
};

// The groups of the queue at one moment, those an operator worries about first: blocked, then
// the oldest head, then by group id.
struct GroupsReport {
  std::vector<GroupView> groups;
  int64_t matched = 0; // groups that pass the filter: matched - groups.size() were left out
  int64_t now_ms = 0;  // the moment read: states and ages are as of then
  // Over every group of the queue, whatever the filter and the limit.
  int64_t total_groups = 0;
  int64_t total_messages = 0;
  int64_t total_in_flight = 0;
  int64_t total_blocked = 0;
};

struct SendResult {
  std::string message_id;
  int64_t seq = 0;
  std::string dedup_id;
  bool duplicate = false; // true: acknowledged, but an equal message was accepted in the window
};

// A message as a receiver, or a reader of the DLQ, sees it.
struct Message {
  std::string message_id;
  int64_t seq = 0;
  std::string group_id;
  std::string dedup_id;
  std::string body;
  std::string receipt; // empty outside a receive
  int64_t receive_count = 0;
  int64_t failures = 0; // handling attempts that failed (released for retry)
  int64_t sent_at_ms = 0;
  int64_t first_sent_at_ms = 0;     // when first sent: sent_at_ms unless it was redriven since
  int64_t first_received_at_ms = 0; // 0: never received
  std::string last_error;
  std::string dead_reason; // DLQ only
  int64_t dead_at_ms = 0;  // DLQ only
  int64_t visible_at_ms = 0; // read back by peek and the DLQ reads only
  bool in_flight = false;    // received, and its receipt not yet used (peek)
};

// What became of a message released after a failed attempt.
struct ReleaseOutcome {
  bool dead_lettered = false;
  int64_t retry_in_ms = 0; // delay before it is visible again (when not dead-lettered)
  int64_t attempt = 0;     // the attempt that failed, 1-based
};

// What settle() does with one message once the work that handled it has run.
struct Disposition {
  bool dead_letter = false; // false: the message was handled; delete it
  std::string reason;       // why it can never succeed (with dead_letter)
  std::string subject;      // what the message is about (an order id), for the log; may be empty
};

// Work that must commit together with the messages it settles: it runs inside the queue's
// write transaction, on the queue's own connection, and returns one Disposition per receipt.
using SettleWork = std::function<Expected<std::vector<Disposition>>(sqlite::Database&)>;
// What a consumer does with the messages consume() takes: its changes, made on the queue's own
// connection inside the transaction, and one Disposition per message, in their order.
using ConsumeWork =
  std::function<Expected<std::vector<Disposition>>(sqlite::Database&, const std::vector<Message>&)>;

struct QueueStats {
  std::string name;
  int64_t visible = 0;
  int64_t in_flight = 0;
  int64_t delayed = 0; // waiting out a retry delay
  int64_t dead_lettered = 0; // messages now in the DLQ
  int64_t dedup_entries = 0;
  int64_t sent = 0;
  int64_t duplicates = 0;
  int64_t received = 0;
  int64_t deleted = 0;
  int64_t retried = 0;
  int64_t expired = 0; // dropped by retention
  int64_t dead_lettered_total = 0;
  int64_t redriven = 0;
  int64_t purged = 0;
  int64_t oldest_age_ms = 0; // 0 when empty
  std::string dlq_name;
};

// How well group commit works in this process: requests per transaction.
struct CommitStats {
  int64_t transactions = 0;
  int64_t requests = 0;
};

struct SweepResult {
  int64_t expired = 0;
  int64_t dedup_removed = 0;
};

class Queue
{
public:
  // Open the queue `options.name` in the SQLite file `db_path`, creating or migrating the schema.
  // Fails with a clear error if the file is not an acmo database.
  static Expected<std::unique_ptr<Queue>> open(const std::string& db_path, QueueOptions options,
                                               const Clock& clock = SystemClock::instance());
  ~Queue();
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  const QueueOptions& options() const { return m_options; }

  // Accept one message. On success it is on disk (fsynced with durability "full").
  Expected<SendResult> send(const SendRequest& request);
  // Accept up to 10 messages in one transaction; each entry succeeds or fails on its own.
  // More than 10 entries is an error for the whole batch.
  Expected<std::vector<Expected<SendResult>>> send_batch(const std::vector<SendRequest>& requests);
  // Accept any number of messages for local loading, in large transactions. Entries that break
  // a limit are reported and skipped; the rest are accepted.
  std::vector<Expected<SendResult>> send_bulk(const std::vector<SendRequest>& requests);

  // Receive up to `max` messages (1-1000), hiding them for `visibility_ms` (default: the queue's
  // visibility timeout). If none is visible, wait up to `wait_ms` (≤ 20 s) for one to arrive,
  // from this process or another. A group delivers its visible messages from the front and stops
  // at its first message in flight; other groups are not blocked.
  //
  // A message already delivered queue.max_retries + 1 times (its receivers died, hung or let
  // the visibility timeout run out each time) moves to the DLQ instead. With
  // `isolate_suspects` (the order handler's receives), a message one of whose deliveries ended
  // in neither a deletion nor a release comes alone, never in a batch: should it be what kills
  // its receiver, it costs only itself an attempt.
  Expected<std::vector<Message>> receive(int max, std::optional<int64_t> visibility_ms = {},
                                         int64_t wait_ms = 0, bool isolate_suspects = false);

  // The consumer's step in one transaction: delete the messages whose receipt handles are in
  // `done` (what the previous receive returned and was handled), then receive as above. Each
  // deletion's outcome goes to `deleted`, in the order of `done`. Half the transactions of a
  // receive followed by a remove_batch.
  Expected<std::vector<Message>> remove_and_receive(const std::vector<std::string>& done,
                                                    std::vector<Expected<void>>& deleted, int max,
                                                    std::optional<int64_t> visibility_ms = {},
                                                    int64_t wait_ms = 0,
                                                    bool isolate_suspects = false);

  // Delete a received message by its receipt handle.
  Expected<void> remove(std::string_view receipt);
  std::vector<Expected<void>> remove_batch(const std::vector<std::string>& receipts);
  // Hide a received message for `timeout_ms` from now (0 makes it visible at once).
  Expected<void> change_visibility(std::string_view receipt, int64_t timeout_ms);
  // The retry path: a handling attempt failed with a transient `error`. The message becomes
  // visible again after queue.retry_delays[attempt-1], or moves to the DLQ once max_retries
  // retries are spent.
  // `subject` (what the message is about, such as an order id) goes in the log line of a
  // dead-lettering.
  Expected<ReleaseOutcome> release(std::string_view receipt, std::string_view error,
                                   std::string_view subject = {});
  // Move a received message to the DLQ at once (a permanent error), with `reason`.
  Expected<void> dead_letter(std::string_view receipt, std::string_view reason,
                             std::string_view subject = {});

  // Run `work` in a write transaction of the queue's database, with the queue's own connection
  // (not fsynced: for bookkeeping such as the handler registry). A thrown SQLite error or a
  // returned error rolls back the work.
  Expected<void> run_write(const std::function<Expected<void>(sqlite::Database&)>& work);

  // Run `work` and settle the messages of `receipts` by its dispositions, in one transaction:
  // the work's changes and the deletions (or dead-letterings) commit together, or not at all.
  // This is how the embedded order store applies an event exactly once: a crash before the
  // commit loses both, and the message is delivered again. Every receipt must be current: if
  // one is not (its message was delivered to someone else, or is gone), nothing runs and that
  // receipt's error is returned. If `work` fails or throws a SQLite error, its changes are
  // rolled back (not those of other requests sharing the transaction), its error is returned,
  // and the messages stay in flight for the caller to release.
  Expected<void> settle(const std::vector<std::string>& receipts, const SettleWork& work);

  // Take up to `max` messages (1-1000) from the fronts of their groups as receive would, run
  // `work` on them and delete them (or dead-letter those it says), all in one transaction and
  // without ever putting them in flight: for a consumer whose effects live in the queue's
  // database (the embedded order store), exactly once at half the writes of receive + settle.
  // If none is visible, wait up to `wait_ms` like receive. If `work` fails or throws a SQLite
  // error, none of it happens and the messages stay visible where they were; the error is
  // returned (take the receive + release path then, which counts the attempt and backs off).
  // The messages returned have no receipt handle, and no dedup id where it is content-based
  // (the SHA-256 of each body is not worth computing for work that does not look at it).
  //
  // Since the messages never go in flight, a process that dies in `work` would leave no trace
  // of the attempt: before the work runs, the batch is written to the queue's work journal
  // (core/queue/work_journal.hpp), and the housekeeping of any process counts a delivery of each
  // message a dead consumer was handling. Suspects come alone, and run out of retries, as with
  // receive(..., isolate_suspects).
  Expected<std::vector<Message>> consume(int max, int64_t wait_ms, const ConsumeWork& work);

  // The message of this queue or its DLQ with sequence number `seq`, or nothing when it is
  // gone (deleted after it was handled, purged or expired). In the DLQ, dead_at is set.
  Expected<std::optional<Message>> find(int64_t seq);

  // Messages waiting in the queue (visible, delayed or in flight; not the DLQ), oldest first
  // unless asked otherwise, without receiving them: nothing about them changes. A filter by
  // body field reads the bodies of the messages it passes over.
  Expected<std::vector<Message>> peek(const PeekFilter& filter);

  // Every message group with messages waiting, in one pass over the queue's messages: the
  // figures of each, the first `filter.limit` of them in the order GroupsReport describes, and
  // the totals.
  Expected<GroupsReport> groups(const GroupsFilter& filter);

  // Dead-lettered messages, oldest first.
  Expected<std::vector<Message>> dlq_list(int64_t limit = 100, int64_t offset = 0);
  // A page of the DLQ's messages that match `filter`, oldest first, and how many match, read at
  // one moment (without the scan of the main queue that stats() makes). Ages are measured from
  // now.
  struct DlqPage {
    std::vector<Message> messages;
    int64_t total = 0;
  };
  Expected<DlqPage> dlq_page(int64_t limit, int64_t offset, const DlqFilter& filter = {});
  Expected<Message> dlq_show(std::string_view message_id);
  // Move DLQ messages (all, or those with the given message ids) back to the queue in their
  // original order. Returns how many moved; an id not in the DLQ is an Errc::not_found error and
  // moves nothing.
  Expected<int64_t> redrive(const std::vector<std::string>& message_ids = {});

  // A redrive in steps of the messages that match a filter: those in the DLQ that match when
  // begin_redrive is called (ages measured from then), and no message dead-lettered after, so
  // that a message that fails again is not redriven twice by one run.
  struct RedriveRun {
    DlqFilter filter;
    int64_t begun_ms = 0;  // the ages of the filter are measured from here
    int64_t until_seq = 0; // the last sequence number handed out when it began
    int64_t after_seq = 0; // the messages up to here are done
    int64_t total = 0;     // the messages that matched when it began
  };
  Expected<RedriveRun> begin_redrive(const DlqFilter& filter);
  // Move the next (at most `max`) messages of `run` back to the queue, oldest first, each to the
  // back of its group, in one transaction fsynced like a send: moved all together or not at
  // all. Returns how many moved; 0 when the run is done. Messages purged or redriven by someone
  // else meanwhile are passed over. Steps taken one after the other keep the original order
  // within each group.
  Expected<int64_t> redrive_step(RedriveRun& run, int64_t max);

  // Remove every message of the queue (or of its DLQ) and its dedup history.
  Expected<int64_t> purge(bool dlq = false);
  // Drop messages past retention and dedup entries past the window. Runs by itself from
  // receive at most every housekeeping interval; callable directly.
  Expected<SweepResult> sweep();

  Expected<QueueStats> stats();
  CommitStats commit_stats() const;

  // Whether the database is sound: an error when it is marked damaged (SQLite found damage in
  // it, in this process or another: core/sqlite/sqlite.hpp), else SQLite's quick_check of the whole
  // file, run again after a hundred times as long as it took (between a second and ten
  // minutes), the last result in between. A damaged database takes no writes (every write
  // fails with the reason) until it is restored; opening it clears the mark once the check
  // passes again. For health checks.
  Expected<void> check_integrity();

  // Whether the database's write lock comes free: an error naming the process that holds it
  // when that process is stopped (Ctrl-Z, SIGSTOP, a debugger) or keeps it for over a second,
  // or when this process's own transaction has been open for over 10 s. For health checks:
  // a process that holds the lock and does not let go keeps every writer waiting.
  Expected<void> check_write_lock();

  // Wait until no write transaction of any Queue of this process is open, and keep new ones
  // from beginning while the returned lock is held: what a process does before it lets itself
  // be stopped (SIGTSTP), so that it never stops holding the database's write lock.
  static std::unique_lock<std::shared_mutex> hold_writes();

  // Whether the queue can take writes now: with plenty of free space on the disk holding it,
  // yes without touching it; with little (under 16 MiB), a small write transaction decides, so
  // that a full disk is reported as the error a send would get. For health checks.
  Expected<void> check_writable();

  // Wake every receive that is waiting in this process, e.g. to shut down. Waiting receives
  // return at once (empty) until resume() is called.
  void interrupt();
  void resume();

private:
  // The long poll of every receive: `attempt(first_try)` tries once and says whether it got
  // anything; between tries it waits (up to `wait_ms` in all) for a local wake-up or the poll
  // interval, and probes cheaply before trying again.
  Expected<void> poll(int64_t wait_ms, const std::function<Expected<bool>(bool)>& attempt);

  struct Impl;
  explicit Queue(std::unique_ptr<Impl> impl, QueueOptions options);
  std::unique_ptr<Impl> m_impl;
  QueueOptions m_options;
};

} // namespace acmo
