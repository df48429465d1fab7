// The Queue port: the durable SQS-FIFO queue (docs/queue.md) as everything else in acmo uses
// it (send, the CLI, the HTTP API, the order handler, stats, the DLQ, purge, the demo, the
// bench), and the documents it takes and gives. The queue contract holds whatever the back-end:
// FIFO per message group with head-of-line blocking, the deduplication window, visibility
// timeouts, retry delays and max retries, the DLQ and redrive in original order, retention,
// strictly increasing sequence numbers, the limits on bodies and ids.
//
// The back-ends are its adapters, each in a folder of its own: core/queue/sqlite/ (the embedded
// queue, SqliteQueue) and core/queue/postgres/ (PgQueue). Work that must commit together with
// the settling of a batch (exactly once in effect) runs in the back-end's own transaction,
// which it sees as a QueueTransaction.
#pragma once

#include <functional>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/util/clock.hpp"
#include "core/util/error.hpp"

namespace acmo {

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

// The back-end's transaction that settles a batch (Queue::settle, Queue::consume), as the work
// that commits with it sees it. Work that writes through it (an order store in the queue's own
// database) asks the back-end's adapter for its connection; other work just runs before the
// commit.
class QueueTransaction
{
public:
  virtual ~QueueTransaction() = default;
  // The back-end: "sqlite" or "postgres" (what Queue::backend says).
  virtual std::string_view backend() const = 0;
};

// Work that must commit together with the messages it settles: it runs inside the queue's
// write transaction and returns one Disposition per receipt.
using SettleWork = std::function<Expected<std::vector<Disposition>>(QueueTransaction&)>;
// What a consumer does with the messages consume() takes: its changes, made inside the
// transaction, and one Disposition per message, in their order.
using ConsumeWork =
  std::function<Expected<std::vector<Disposition>>(QueueTransaction&, const std::vector<Message>&)>;

// A handler's row in the registry (docs/orders.md §9), which lives with the queue so that
// every process using the queue, on any host, sees every handler.
struct HandlerRecord {
  std::string id; // host:pid:random
  int64_t pid = 0;
  std::string host;
  int64_t started_at_ms = 0;
  int64_t heartbeat_at_ms = 0;
  int64_t stopped_at_ms = 0; // 0 while running
  int64_t processed = 0;
  int64_t dead_lettered = 0;
  int64_t retried = 0;
  int64_t batches = 0;
  int64_t latency_p50_us = 0; // time to apply and settle one batch
  int64_t latency_p99_us = 0;
  std::string last_error;
  std::string request; // asked by acmo handlers: "" (nothing), "stop" or "drain"

  // "running", "stopped" (ended cleanly) or "gone" (its heartbeat stopped: it died).
  std::string state(int64_t now_ms) const;
};

struct QueueStats {
  std::string name;
  std::string backend; // what holds the queue: "sqlite" or "postgres" (Queue::backend)
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
  int64_t dlq_expired = 0; // dropped from the DLQ by retention
  int64_t dlq_purged = 0;  // removed by purges of the DLQ
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

// What `acmo queue move` carries from the embedded queue to PostgreSQL (SqliteQueue::move_out,
// PgQueue::move_in): every message of the queue and of its DLQ, each in sequence order with
// its id, sequence number, attempts and errors, and the dedup history still in its window.
struct MovedDedup {
  std::string key; // the dedup id's key: the first 16 bytes of its SHA-256, in hex
  std::string message_id;
  int64_t seq = 0;
  int64_t expires_at_ms = 0;
  int64_t body_hash = 0; // 0: not known
};
// The snapshot is read a part at a time (keyset pages, in order), so that a long queue is never
// all in memory; a reader may read it more than once.
class QueueSnapshot
{
public:
  virtual ~QueueSnapshot() = default;
  // Up to `max` messages of the queue (with `dead`, of its DLQ) whose sequence numbers are
  // above `after`, in sequence order; none past the last. visible_at_ms as stored; receipts
  // are not carried.
  virtual Expected<std::vector<Message>> messages(bool dead, int64_t after, size_t max) const = 0;
  // Up to `max` entries of the dedup history whose MovedDedup::seq is above `after`, in that
  // order.
  virtual Expected<std::vector<MovedDedup>> dedup(int64_t after, size_t max) const = 0;
  // Up to `max` names of the groups of the queue's messages that sort above `after` byte by
  // byte, in that order ("" is below every name).
  virtual Expected<std::vector<std::string>> groups(const std::string& after, size_t max) const = 0;
  // Above every sequence number the source gave.
  virtual int64_t next_seq() const = 0;
  // The queue's messages received and not yet settled whose visibility timeout ends after
  // `now_ms`: how many, and when the last of those timeouts ends.
  struct Held {
    int64_t messages = 0;
    int64_t until_ms = 0;
  };
  virtual Expected<Held> held(int64_t now_ms) const = 0;

  // Every message of the queue (with `dead`, of its DLQ) in sequence order, handed to `fn`
  // `page_size` at a time: the first error of a read or of `fn`.
  Expected<void>
  each_page(bool dead, size_t page_size,
            const std::function<Expected<void>(const std::vector<Message>&)>& fn) const;
};

// A snapshot held in memory (each vector in its order above).
struct SnapshotInMemory final : QueueSnapshot {
  std::vector<Message> queued;
  std::vector<Message> dead_letters;
  std::vector<MovedDedup> history;
  int64_t next = 1;

  Expected<std::vector<Message>> messages(bool dead, int64_t after, size_t max) const override;
  Expected<std::vector<MovedDedup>> dedup(int64_t after, size_t max) const override;
  Expected<std::vector<std::string>> groups(const std::string& after, size_t max) const override;
  int64_t next_seq() const override { return next; }
  Expected<Held> held(int64_t now_ms) const override;
};
struct MoveResult {
  int64_t messages = 0; // moved into the queue
  int64_t dead = 0;     // moved into the DLQ
  int64_t dedup = 0;    // dedup entries moved
  int64_t skipped = 0;  // moved by an earlier run
};

class Queue
{
public:
  virtual ~Queue() = default;
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  const QueueOptions& options() const { return m_options; }
  // The back-end holding the queue: "sqlite" or "postgres".
  virtual std::string_view backend() const = 0;
  // The queue's time, in milliseconds since the Unix epoch: what its ready times, deadlines,
  // timestamps and handlers' heartbeats are measured by (on PostgreSQL, the server's clock,
  // which every host shares). Ages and states shown beside them are measured against it.
  virtual int64_t now_ms() const = 0;

  // Accept one message. On success it is durable (fsynced with durability "full").
  virtual Expected<SendResult> send(const SendRequest& request) = 0;
  // Accept up to 10 messages in one transaction; each entry succeeds or fails on its own.
  // More than 10 entries is an error for the whole batch.
  virtual Expected<std::vector<Expected<SendResult>>>
  send_batch(const std::vector<SendRequest>& requests) = 0;
  // Accept any number of messages for local loading, in large transactions. Entries that break
  // a limit are reported and skipped; the rest are accepted.
  virtual std::vector<Expected<SendResult>> send_bulk(const std::vector<SendRequest>& requests) = 0;

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
  virtual Expected<std::vector<Message>> receive(int max, std::optional<int64_t> visibility_ms = {},
                                                 int64_t wait_ms = 0,
                                                 bool isolate_suspects = false) = 0;

  // The consumer's step in one transaction: delete the messages whose receipt handles are in
  // `done` (what the previous receive returned and was handled), then receive as above. Each
  // deletion's outcome goes to `deleted`, in the order of `done`. Half the transactions of a
  // receive followed by a remove_batch.
  virtual Expected<std::vector<Message>>
  remove_and_receive(const std::vector<std::string>& done, std::vector<Expected<void>>& deleted,
                     int max, std::optional<int64_t> visibility_ms = {}, int64_t wait_ms = 0,
                     bool isolate_suspects = false) = 0;

  // Delete a received message by its receipt handle.
  virtual Expected<void> remove(std::string_view receipt) = 0;
  virtual std::vector<Expected<void>> remove_batch(const std::vector<std::string>& receipts) = 0;
  // Hide a received message for `timeout_ms` from now (0 makes it visible at once).
  virtual Expected<void> change_visibility(std::string_view receipt, int64_t timeout_ms) = 0;
  // The retry path: a handling attempt failed with a transient `error`. The message becomes
  // visible again after queue.retry_delays[attempt-1], or moves to the DLQ once max_retries
  // retries are spent.
  // `subject` (what the message is about, such as an order id) goes in the log line of a
  // dead-lettering.
  virtual Expected<ReleaseOutcome> release(std::string_view receipt, std::string_view error,
                                           std::string_view subject = {}) = 0;
  // Move a received message to the DLQ at once (a permanent error), with `reason`.
  virtual Expected<void> dead_letter(std::string_view receipt, std::string_view reason,
                                     std::string_view subject = {}) = 0;


  // Run `work` and settle the messages of `receipts` by its dispositions, in one transaction:
  // the work's changes and the deletions (or dead-letterings) commit together, or not at all.
  // This is how the embedded order store applies an event exactly once: a crash before the
  // commit loses both, and the message is delivered again. Every receipt must be current: if
  // one is not (its message was delivered to someone else, or is gone), nothing runs and that
  // receipt's error is returned. If `work` fails or throws a database error, its changes are
  // rolled back (not those of other requests sharing the transaction), its error is returned,
  // and the messages stay in flight for the caller to release.
  virtual Expected<void> settle(const std::vector<std::string>& receipts,
                                const SettleWork& work) = 0;

  // Take up to `max` messages (1-1000) from the fronts of their groups as receive would, run
  // `work` on them and delete them (or dead-letter those it says), all in one transaction and
  // without ever putting them in flight: for a consumer whose effects live in the queue's
  // database (the embedded order store), exactly once at half the writes of receive + settle.
  // If none is visible, wait up to `wait_ms` like receive. If `work` fails or throws a database
  // error, none of it happens and the messages stay visible where they were; the error is
  // returned (take the receive + release path then, which counts the attempt and backs off).
  // The messages returned have no receipt handle, and no dedup id where it is content-based
  // (the SHA-256 of each body is not worth computing for work that does not look at it).
  //
  // A process that dies in `work` leaves a trace of the attempt all the same: the back-end
  // counts a delivery of each message a dead consumer was handling. Suspects come alone, and
  // run out of retries, as with receive(..., isolate_suspects).
  virtual Expected<std::vector<Message>> consume(int max, int64_t wait_ms,
                                                 const ConsumeWork& work) = 0;

  // The message of this queue or its DLQ with sequence number `seq`, or nothing when it is
  // gone (deleted after it was handled, purged or expired). In the DLQ, dead_at is set.
  virtual Expected<std::optional<Message>> find(int64_t seq) = 0;

  // Messages waiting in the queue (visible, delayed or in flight; not the DLQ), oldest first
  // unless asked otherwise, without receiving them: nothing about them changes. A filter by
  // body field reads the bodies of the messages it passes over.
  virtual Expected<std::vector<Message>> peek(const PeekFilter& filter) = 0;

  // Every message group with messages waiting, in one pass over the queue's messages: the
  // figures of each, the first `filter.limit` of them in the order GroupsReport describes, and
  // the totals.
  virtual Expected<GroupsReport> groups(const GroupsFilter& filter) = 0;

  // Dead-lettered messages, oldest first.
  virtual Expected<std::vector<Message>> dlq_list(int64_t limit = 100, int64_t offset = 0) = 0;
  // A page of the DLQ's messages that match `filter`, oldest first, and how many match, read at
  // one moment (without the scan of the main queue that stats() makes). Ages are measured from
  // now.
  struct DlqPage {
    std::vector<Message> messages;
    int64_t total = 0;
  };
  virtual Expected<DlqPage> dlq_page(int64_t limit, int64_t offset,
                                     const DlqFilter& filter = {}) = 0;
  virtual Expected<Message> dlq_show(std::string_view message_id) = 0;
  // Move DLQ messages (all, or those with the given message ids) back to the queue in their
  // original order. Returns how many moved; an id not in the DLQ is an Errc::not_found error and
  // moves nothing.
  virtual Expected<int64_t> redrive(const std::vector<std::string>& message_ids = {}) = 0;

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
  virtual Expected<RedriveRun> begin_redrive(const DlqFilter& filter) = 0;
  // Move the next (at most `max`) messages of `run` back to the queue, oldest first, each to the
  // back of its group, in one transaction fsynced like a send: moved all together or not at
  // all. Returns how many moved; 0 when the run is done. Messages purged or redriven by someone
  // else meanwhile are passed over. Steps taken one after the other keep the original order
  // within each group.
  virtual Expected<int64_t> redrive_step(RedriveRun& run, int64_t max) = 0;

  // Remove every message of the queue (or of its DLQ) and its dedup history.
  virtual Expected<int64_t> purge(bool dlq = false) = 0;
  // Drop messages past retention and dedup entries past the window. Runs by itself from
  // receive at most every housekeeping interval; callable directly.
  virtual Expected<SweepResult> sweep() = 0;

  virtual Expected<QueueStats> stats() = 0;
  // How well group commit works in this process.
  virtual CommitStats commit_stats() const = 0;

  // The handler registry. Write (insert or update) a handler's row and return what an operator
  // asks of it ("", "stop" or "drain"); not fsynced: a row lost to a crash is written again a
  // second later.
  virtual Expected<std::string> save_handler(const HandlerRecord& record) = 0;
  // Ask handler `id` to "stop" or "drain" (written in its row, which it reads at its next
  // heartbeat). Errc::not_found when it has no row.
  virtual Expected<void> request_handler(std::string_view id, std::string_view request) = 0;
  // Every handler whose last heartbeat is after `since_ms`, most recently started first.
  virtual Expected<std::vector<HandlerRecord>> handlers(int64_t since_ms) = 0;

  // The health checks (/health; docs/http-api.md). Each answers at once, an error saying what
  // is wrong and what to do.
  // Whether the queue's storage is sound (not found damaged).
  virtual Expected<void> check_integrity() = 0;
  // Whether no writer of the queue is stuck holding what every other writer waits for.
  virtual Expected<void> check_write_lock() = 0;
  // Whether the queue can take writes now (for example: its disk is not full).
  virtual Expected<void> check_writable() = 0;

  // Wake every receive that is waiting in this process, e.g. to shut down. Waiting receives
  // return at once (empty) until resume() is called.
  virtual void interrupt() = 0;
  virtual void resume() = 0;

protected:
  explicit Queue(QueueOptions options) : m_options(std::move(options)) {}
  QueueOptions m_options;
};

} // namespace acmo
