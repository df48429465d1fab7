#include "core/queue/sqlite/sqlite_queue.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <fmt/core.h>
#include <sqlite3.h>

#include "core/queue/limits.hpp"
#include "core/queue/sqlite/checkpointer.hpp"
#include "core/queue/sqlite/database.hpp"
#include "core/queue/sqlite/dedup_index.hpp"
#include "core/queue/sqlite/group_commit.hpp"
#include "core/queue/sqlite/schema.hpp"
#include "core/queue/sqlite/work_journal.hpp"
#include "core/sqlite/lock_holder.hpp"
#include "core/sqlite/sqlite.hpp"
#include "core/util/ids.hpp"
#include "core/util/log.hpp"
#include "core/util/sha256.hpp"

namespace acmo {

using sqlite_queue::apply_connection_settings;
using sqlite_queue::DedupEntry;
using sqlite_queue::ensure_queue;
using sqlite_queue::find_queue;
using sqlite_queue::GroupCommit;
using sqlite_queue::in_read_transaction;
using sqlite_queue::Txn;
using sqlite_queue::write_gate;
using sqlite_queue::WriteOp;
using sqlite_queue::DedupIndex;
using sqlite_queue::DedupKey;
using sqlite_queue::dedup_key;
using sqlite_queue::key_blob;
using sqlite_queue::key_from_blob;
using sqlite_queue::migrate;
using sqlite_queue::refuse_foreign;
using sqlite_queue::sync_directory_of;

namespace {

constexpr int64_t k_max_visibility_ms = 12 * 3'600'000; // as SQS: 12 hours
constexpr int64_t k_max_wait_ms = 20'000;               // as SQS: 20 s long poll
constexpr int k_max_receive = 1000;
constexpr size_t k_bulk_chunk = 20'000;

// Per-queue counter deltas gathered during one transaction and added once at its end.
struct Counters {
  int64_t sent = 0, duplicates = 0, received = 0, deleted = 0, retried = 0, expired = 0,
          dead_lettered = 0, redriven = 0, purged = 0;
};

std::string_view id_blob(const MessageIdBytes& id)
{
  return {reinterpret_cast<const char*>(id.data()), id.size()};
}

MessageIdBytes id_from_blob(std::string_view blob)
{
  MessageIdBytes id{};
  std::copy_n(blob.begin(), std::min(blob.size(), id.size()), id.begin());
  return id;
}

// A send request, checked, with what can be computed before taking the write lock. It points
// at the caller's request (which outlives it) rather than copy a body of up to 1 MiB.
struct PreparedSend : limits::SendDedup {
  const SendRequest* request = nullptr;
  DedupKey key;
};

// What a locate() of a receipt handle found.
struct Located {
  int64_t seq = 0;
  std::string group_id;
  int64_t failures = 0;
};

} // namespace

namespace sqlite_queue {

// The state of one write transaction, shared by every request committed in it.
struct Txn {
  int64_t now = 0;
  int64_t next_seq = 0; // 0: not read yet
  bool seq_dirty = false;
  bool dedup_synced = false;
  std::string moved_to; // read with the dedup epoch: where acmo queue move moves the queue
  std::map<int64_t, Counters> counters;
  std::set<std::pair<int64_t, std::string>> touched_groups;
  // One line per message moved to the DLQ, logged once the transaction has committed.
  struct DeadLetterNote {
    std::string message_id;
    int64_t seq = 0;
    std::string group;
    std::string subject;
    std::string handler;
    int64_t failures = 0;
    std::string reason;
  };
  std::vector<DeadLetterNote> dead_letter_log;
  // The handler of the op being applied (the thread that asked for it), for those lines.
  std::string_view handler;
};

} // namespace sqlite_queue

static int64_t steady_us()
{
  return std::chrono::duration_cast<std::chrono::microseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

// Move a dead-lettered message (?1) back to the queue (?3) under a new sequence number (?2), at
// the back of its group, as if sent now (?4); its first sending time is kept.
static const std::string k_redrive_move =
  "UPDATE messages SET seq = ?2, queue_id = ?3, visible_at = ?4, sent_at = ?4,"
  " first_sent_at = coalesce(first_sent_at, sent_at),"
  " receipt_token = 0, receive_count = 0, first_received_at = 0, failures = 0,"
  " dead_reason = '', dead_at = 0 WHERE seq = ?1";

// Where acmo queue move moved (or is moving) a queue, from its row `q` and the file's row `z`
// (id 0): its own row's moved_to, else the file's, which an older acmo set for every queue of
// the file.
static const std::string k_moved_to =
  "CASE WHEN q.moved_to <> '' THEN q.moved_to ELSE z.moved_to END";

struct SqliteQueue::Impl {
  class Snapshot; // what acmo queue move reads (move_out)
  const Clock& clock;
  QueueOptions options;
  int64_t queue_id = 0;
  int64_t dlq_id = 0;

  // The writer: one connection, used by whichever thread leads the current group commit
  // (group_commit.hpp), which runs its batch with execute_batch().
  std::unique_ptr<sqlite::Database> writer;
  std::unique_ptr<GroupCommit> group_commit;
  std::string wal_path;

  // The reader: stats, DLQ listings and the cheap "is anything ready?" probe of long polls.
  std::unique_ptr<sqlite::Database> reader;
  std::mutex read_mu;

  // Local wake-ups for long polls: bumped after every commit that may make a message visible.
  std::mutex wake_mu;
  std::condition_variable wake_cv;
  uint64_t wake_generation = 0;
  bool interrupted = false;

  // This process's index of the dedup log (see schema.cpp); guarded by the write path, which
  // only the group-commit leader runs.
  DedupIndex dedup_index;
  int64_t dedup_seen_id = 0;
  int64_t dedup_epoch = -1;
  int64_t dedup_pruned_at = 0;

  // What this process's consumers are handling, for the processes that outlive it.
  WorkJournal journal;

  // When this process's current write transaction began (steady µs; 0: none open).
  std::atomic<int64_t> txn_started_us{0};
  // The other process last seen holding the write lock, and since when (steady µs), for "held
  // for N s"; a gap of over 2 s between two looks starts the count again.
  std::mutex holder_mu;
  int64_t holder_pid = 0;
  int64_t holder_since_us = 0;
  int64_t holder_seen_us = 0;
  std::atomic<int64_t> last_wait_warning_us{0};
  // The database's mark of damage (sqlite::mark_damaged), and the last integrity check.
  std::string damage_marker;
  std::mutex integrity_mu;
  int64_t integrity_due_us = 0; // the next integrity check (steady µs)

  // Why the database is marked damaged (by this process or another), or nothing.
  std::optional<Error> damaged() const
  {
    if (::access(damage_marker.c_str(), F_OK) != 0) return std::nullopt;
    std::ifstream in(damage_marker);
    std::string what;
    std::getline(in, what);
    return Error(Errc::unavailable,
                 fmt::format("the queue database {} is damaged ({}); acmo takes no writes to it "
                             "until it is restored: stop every acmo process using it, restore it "
                             "from a backup (docs/operations.md), and start again",
                             db_path, what.empty() ? "found by an integrity check" : what));
  }

  // SQLite's quick_check of the whole file, on a connection of its own (so it reads the file,
  // not pages another connection holds in its cache). Marks the database damaged on failure.
  Expected<void> quick_check()
  {
    try {
      sqlite::Database db(db_path, options.busy_timeout_ms);
      auto stmt = db.prepare("PRAGMA quick_check(3)");
      std::string found;
      while (stmt->step()) {
        const std::string line = stmt->column_text(0);
        if (line != "ok") found += (found.empty() ? "" : "; ") + line;
      }
      if (found.empty()) return {};
      sqlite::mark_damaged(db_path, "quick_check: " + found);
    } catch (const sqlite::SqliteError& e) {
      Error error = e.to_error();
      if (error.code != Errc::internal) return Unexpected(error); // busy, I/O: not a finding
    }
    if (auto d = damaged()) return Unexpected(*d);
    return make_error(Errc::unavailable, "the queue database failed its integrity check");
  }

  // A connection of its own for /health's probe of the write lock, with a short busy timeout.
  std::mutex probe_mu;
  std::unique_ptr<sqlite::Database> probe;

  // The other process that holds the database's write lock, if one does.
  std::optional<LockHolder> lock_holder()
  {
    auto h = wal_write_lock_holder(db_path);
    const int64_t now = steady_us();
    std::lock_guard lock(holder_mu);
    if (!h) {
      holder_pid = 0;
      return std::nullopt;
    }
    if (h->pid != holder_pid || now - holder_seen_us > 2'000'000) {
      holder_pid = h->pid;
      holder_since_us = now;
    }
    holder_seen_us = now;
    h->held_ms = (now - holder_since_us) / 1000;
    return h;
  }

  // A wait for the write lock has lasted a second: say who holds it (at most every 30 s).
  void warn_waiting()
  {
    auto h = lock_holder();
    if (!h) return;
    const int64_t now = steady_us();
    if (now - last_wait_warning_us.load() < 30'000'000) return;
    last_wait_warning_us.store(now);
    h->held_ms = -1;
    log::warn({"queue_write_lock_wait"}, "waiting for the queue database's write lock, held by {}; writes wait up to "
              "queue.busy_timeout ({} s)",
              describe(*h), std::max<int64_t>(1, options.busy_timeout_ms / 1000));
  }

  // A write that gave up waiting for the lock: the error names who held it.
  Error busy_error(Error original)
  {
    auto h = lock_holder();
    if (!h) return original;
    h->held_ms = -1;
    return Error(Errc::busy,
                 fmt::format("the queue database's write lock stayed held for {} s "
                             "(queue.busy_timeout) by {}; {}",
                             std::max<int64_t>(1, options.busy_timeout_ms / 1000), describe(*h),
                             h->frozen() ? "nothing can be written until it runs again"
                                         : "retry later"),
                 original.field);
  }

  std::atomic<int64_t> last_sweep_ms{0};
  std::atomic<int64_t> committed_transactions{0};
  std::atomic<int64_t> committed_requests{0};

  Impl(const Clock& c, QueueOptions o, const std::string& database)
    : clock(c), options(std::move(o)), journal(database + "-work")
  {
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl()
  {
    if (checkpoints) checkpoints->stop();
  }

  std::string db_path;
  // The writer's checkpoints (checkpointer.hpp); set up by open(), stopped before the writer
  // connection closes.
  std::unique_ptr<sqlite_queue::WalCheckpointer> checkpoints;

  // --- the write path ---------------------------------------------------------------------

  Expected<void> write(WriteOp& op, bool wakes)
  {
    auto ok = group_commit->write(op);
    if (ok && wakes) notify_waiters();
    return ok;
  }

  // Run a group commit's batch in one transaction (the leader's thread).
  void execute_batch(const std::vector<WriteOp*>& batch)
  {
    const bool sends = std::any_of(batch.begin(), batch.end(),
                                   [](const WriteOp* o) { return o->durable && !o->bulk; });
    checkpoints->set_consuming(!sends);
    execute(batch);
    checkpoints->set_consuming(false);
  }

  void execute(const std::vector<WriteOp*>& batch)
  {
    // A damaged database takes no writes: what it acknowledged could not be trusted to last.
    if (auto damage = damaged()) {
      for (auto* op : batch) op->error = *damage;
      return;
    }
    try {
      run_transaction(batch);
      return;
    } catch (const sqlite::SqliteError& e) {
      Error error = e.to_error();
      if (error.code == Errc::busy) error = busy_error(std::move(error));
      if (auto damage = damaged()) error = *damage; // it found the damage just now
      // A failure that is not the whole database's (a constraint, say) belongs to one request:
      // commit the others alone so that one bad request cannot fail its neighbours.
      bool per_request = batch.size() > 1 && error.code == Errc::internal;
      if (!per_request) {
        for (auto* op : batch) op->error = error;
        return;
      }
    } catch (const std::exception& e) {
      if (batch.size() == 1) {
        batch[0]->error = Error(Errc::internal, e.what());
        return;
      }
    }
    for (auto* op : batch) {
      try {
        run_transaction({op});
      } catch (const sqlite::SqliteError& e) {
        op->error = e.to_error();
      } catch (const std::exception& e) {
        op->error = Error(Errc::internal, e.what());
      }
    }
  }

  void run_transaction(const std::vector<WriteOp*>& ops)
  {
    static const std::string k_begin = "BEGIN IMMEDIATE";
    static const std::string k_commit = "COMMIT";
    std::shared_lock gate(write_gate());
    writer->prepare(k_begin)->run();
    txn_started_us.store(steady_us());
    struct Ended {
      std::atomic<int64_t>& started;
      ~Ended() { started.store(0); }
    } ended{txn_started_us};
    try {
      Txn txn;
      txn.now = clock.now_ms();
      for (auto* op : ops) {
        op->error.reset();
        txn.handler = op->handler;
        op->fn(txn);
      }
      finish(txn);
      writer->prepare(k_commit)->run();
      ++committed_transactions;
      committed_requests += static_cast<int64_t>(ops.size());
      for (const auto& n : txn.dead_letter_log) log_dead_letter(n);
    } catch (...) {
      try {
        writer->exec("ROLLBACK");
      } catch (const sqlite::SqliteError&) {
        // The transaction may already be gone (SQLite rolls back by itself on some errors).
      }
      // The dedup index may hold entries of the rolled-back transaction: rebuild it.
      dedup_index.clear();
      dedup_seen_id = 0;
      dedup_epoch = -1;
      throw;
    }
  }

  // The error of a write to a queue that acmo queue move moved, or is moving, to PostgreSQL.
  std::optional<Error> moved_error(Txn& txn)
  {
    sync_dedup(txn);
    if (txn.moved_to.empty()) return std::nullopt;
    return Error(Errc::unavailable,
                 fmt::format("this queue was moved to {} (acmo queue move), or is being moved "
                             "there, and takes no more changes: set queue.backend = \"postgres\" "
                             "and queue.url in this process's configuration and restart it",
                             txn.moved_to),
                 "queue.backend");
  }

  // Bring the in-memory dedup index up to date with the log, at most once per transaction.
  void sync_dedup(Txn& txn)
  {
    if (txn.dedup_synced) return;
    txn.dedup_synced = true;
    static const std::string k_epoch = "SELECT z.dedup_epoch, " + k_moved_to
                                       + " FROM queues z, queues q WHERE z.id = 0 AND q.id = ?1";
    static const std::string k_newer =
      "SELECT id, queue_id, key, message_id, expires_at, body_hash FROM dedup WHERE id > ?1"
      " ORDER BY id";
    int64_t epoch = 0;
    {
      auto stmt = writer->prepare(k_epoch);
      stmt->bind(1, queue_id);
      if (stmt->step()) {
        epoch = stmt->column_int(0);
        txn.moved_to = stmt->column_text(1);
      }
      while (stmt->step()) {
      }
    }
    if (epoch != dedup_epoch) {
      dedup_index.clear();
      dedup_seen_id = 0;
      dedup_epoch = epoch;
    }
    auto stmt = writer->prepare(k_newer);
    stmt->bind(1, dedup_seen_id);
    while (stmt->step()) {
      dedup_seen_id = stmt->column_int(0);
      if (stmt->column_int(1) != queue_id || stmt->column_int(4) <= txn.now) continue;
      dedup_index.put(key_from_blob(stmt->column_view(2)),
                      DedupEntry{stmt->column_int(0), id_from_blob(stmt->column_view(3)),
                                 stmt->column_int(4), stmt->column_int(5)});
    }
    // Entries past their window only cost memory; drop them now and then.
    if (txn.now - dedup_pruned_at > 60'000) {
      dedup_pruned_at = txn.now;
      dedup_index.prune(txn.now);
    }
  }

  // The sequence number the next accepted message will get.
  int64_t peek_seq(Txn& txn)
  {
    if (txn.next_seq == 0) {
      static const std::string k_sql = "SELECT next_seq FROM queues WHERE id = 0";
      txn.next_seq = writer->query_int(k_sql);
    }
    return txn.next_seq;
  }

  int64_t take_seq(Txn& txn)
  {
    int64_t seq = peek_seq(txn);
    txn.next_seq = seq + 1;
    txn.seq_dirty = true;
    return seq;
  }

  // Redrive: move the chosen DLQ messages (seq, group), oldest first, each to the back of its
  // group, so that the original order is kept; count them as redriven.
  void move_back(Txn& txn, const std::vector<std::pair<int64_t, std::string>>& chosen)
  {
    for (const auto& [seq, group] : chosen) {
      auto stmt = writer->prepare(k_redrive_move);
      stmt->bind(1, seq).bind(2, take_seq(txn)).bind(3, queue_id).bind(4, txn.now).run();
      txn.touched_groups.emplace(queue_id, group);
    }
    txn.counters[queue_id].redriven += static_cast<int64_t>(chosen.size());
  }

  // Bring the rows of the groups changed so far up to date (before a receive in the same
  // transaction looks at them, and at the end of every transaction).
  void flush_groups(Txn& txn)
  {
    for (const auto& [queue, group] : txn.touched_groups) fix_group(queue, group);
    txn.touched_groups.clear();
  }

  void finish(Txn& txn)
  {
    flush_groups(txn);
    if (txn.seq_dirty) {
      static const std::string k_sql = "UPDATE queues SET next_seq = ?1 WHERE id = 0";
      auto stmt = writer->prepare(k_sql);
      stmt->bind(1, txn.next_seq).run();
    }
    for (const auto& [queue, c] : txn.counters) {
      static const std::string k_sql =
        "UPDATE queues SET sent = sent + ?2, duplicates = duplicates + ?3,"
        " received = received + ?4, deleted = deleted + ?5, retried = retried + ?6,"
        " expired = expired + ?7, dead_lettered = dead_lettered + ?8,"
        " redriven = redriven + ?9, purged = purged + ?10 WHERE id = ?1";
      auto stmt = writer->prepare(k_sql);
      stmt->bind(1, queue).bind(2, c.sent).bind(3, c.duplicates).bind(4, c.received);
      stmt->bind(5, c.deleted).bind(6, c.retried).bind(7, c.expired).bind(8, c.dead_lettered);
      stmt->bind(9, c.redriven).bind(10, c.purged).run();
    }
  }

  // Make the group's row match its messages: head = lowest seq, ready_at = the head's
  // visibility; no row for an empty group.
  void fix_group(int64_t queue, const std::string& group)
  {
    static const std::string k_head =
      "SELECT seq, visible_at FROM messages WHERE queue_id = ?1 AND group_id = ?2"
      " ORDER BY seq LIMIT 1";
    static const std::string k_upsert =
      "INSERT INTO groups(queue_id, group_id, head_seq, ready_at) VALUES (?1, ?2, ?3, ?4)"
      " ON CONFLICT(queue_id, group_id) DO UPDATE SET head_seq = excluded.head_seq,"
      " ready_at = excluded.ready_at"
      " WHERE head_seq != excluded.head_seq OR ready_at != excluded.ready_at";
    static const std::string k_drop = "DELETE FROM groups WHERE queue_id = ?1 AND group_id = ?2";
    int64_t head = 0;
    int64_t ready_at = 0;
    {
      auto stmt = writer->prepare(k_head);
      stmt->bind(1, queue).bind(2, group, false);
      if (stmt->step()) {
        head = stmt->column_int(0);
        ready_at = stmt->column_int(1);
      }
    }
    if (head == 0) {
      auto stmt = writer->prepare(k_drop);
      stmt->bind(1, queue).bind(2, group, false).run();
      return;
    }
    auto stmt = writer->prepare(k_upsert);
    stmt->bind(1, queue).bind(2, group, false).bind(3, head).bind(4, ready_at).run();
  }

  // --- operations run inside a transaction -------------------------------------------------

  // Accept one prepared message.
  Expected<SendResult> do_send(Txn& txn, const PreparedSend& prepared)
  {
    static const std::string k_dedup_append =
      "INSERT INTO dedup(id, queue_id, key, message_id, expires_at, body_hash)"
      " VALUES (?3, ?1, ?2, ?4, ?5, ?6)";
    static const std::string k_insert =
      "INSERT INTO messages(seq, queue_id, group_id, message_id, dedup_id, body, sent_at,"
      " visible_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)";
    const SendRequest& req = *prepared.request;
    SendResult result;
    result.dedup_id = prepared.dedup_id;
    if (auto moved = moved_error(txn)) return Unexpected(*moved);
    if (const DedupEntry* known = dedup_index.find(prepared.key);
        known != nullptr && known->expires_at > txn.now) {
      if (req.same_body && known->body_hash != 0 && known->body_hash != prepared.body_hash) {
        return make_error(Errc::conflict,
                          fmt::format("the deduplication id \"{}\" was used {} s ago for a "
                                      "different message (message {}); a retry must send the same "
                                      "request, and a new request needs a new id",
                                      prepared.dedup_id,
                                      (txn.now - (known->expires_at - options.dedup_window_ms)) / 1000,
                                      format_message_id(known->message_id)),
                          "deduplicationId");
      }
      result.duplicate = true;
      result.message_id = format_message_id(known->message_id);
      result.seq = known->seq;
      ++txn.counters[queue_id].duplicates;
      return result;
    }
    if (req.unless_duplicate) return Unexpected(*req.unless_duplicate);
    const MessageIdBytes id = new_message_id_bytes();
    const int64_t seq = take_seq(txn);
    const int64_t expires_at = txn.now + options.dedup_window_ms;
    {
      std::array<unsigned char, 16> buf{};
      auto stmt = writer->prepare(k_dedup_append);
      stmt->bind(1, queue_id).bind_blob(2, key_blob(prepared.key, buf), false);
      stmt->bind(3, seq).bind_blob(4, id_blob(id), false).bind(5, expires_at);
      stmt->bind(6, prepared.body_hash).run();
    }
    dedup_seen_id = seq;
    dedup_index.put(prepared.key, DedupEntry{seq, id, expires_at, prepared.body_hash});
    {
      auto stmt = writer->prepare(k_insert);
      stmt->bind(1, seq).bind(2, queue_id).bind(3, req.group_id, false);
      stmt->bind_blob(4, id_blob(id), false);
      if (prepared.content_based) {
        stmt->bind_null(5);
      } else {
        stmt->bind(5, prepared.dedup_id, false);
      }
      stmt->bind(6, req.body, false).bind(7, txn.now).run();
    }
    result.message_id = format_message_id(id);
    result.seq = seq;
    ++txn.counters[queue_id].sent;
    txn.touched_groups.emplace(queue_id, req.group_id);
    return result;
  }

  // Take up to `max` messages from the fronts of the ready groups. With `take` they go in
  // flight for `visibility_ms` under a new receipt handle; without, they are only read (for
  // consume, which deletes them in the same transaction).
  //
  // A message delivered queue.max_retries + 1 times and still here goes to the DLQ instead of
  // out once more, as SQS's maxReceiveCount does: its receivers died, hung, or let the
  // visibility timeout run out each time. The consumers that died with work in hand are
  // counted too (recover_orphans). With `isolate`, a suspect (a message some delivery of which
  // ended neither in a deletion nor in a release: it may be what killed its receiver) is
  // delivered on its own, so that a message that kills its handler costs only itself an
  // attempt each time, while the messages taken with it go on.
  std::vector<Message> do_receive(Txn& txn, int max, int64_t visibility_ms, bool take,
                                  bool isolate)
  {
    static const std::string k_groups =
      "SELECT group_id, head_seq FROM groups INDEXED BY groups_by_head"
      " WHERE queue_id = ?1 AND ready_at <= ?2 ORDER BY head_seq LIMIT ?3";
    static const std::string k_messages =
      "SELECT seq, message_id, dedup_id, body, sent_at, visible_at, receive_count,"
      " first_received_at, failures, last_error, coalesce(first_sent_at, sent_at) FROM messages"
      " WHERE queue_id = ?1 AND group_id = ?2 AND seq >= ?3 ORDER BY seq LIMIT ?4";
    static const std::string k_take =
      "UPDATE messages SET visible_at = ?1, receipt_token = ?2, receive_count = receive_count + 1,"
      " first_received_at = CASE WHEN first_received_at = 0 THEN ?3 ELSE first_received_at END"
      " WHERE queue_id = ?4 AND group_id = ?5 AND seq BETWEEN ?6 AND ?7";
    static const std::string k_group_busy =
      "UPDATE groups SET ready_at = ?1 WHERE queue_id = ?2 AND group_id = ?3";

    std::vector<std::pair<std::string, int64_t>> groups;
    {
      auto stmt = writer->prepare(k_groups);
      stmt->bind(1, queue_id).bind(2, txn.now).bind(3, max);
      while (stmt->step()) groups.emplace_back(stmt->column_text(0), stmt->column_int(1));
    }
    std::vector<Message> out;
    const int64_t hidden_until = txn.now + visibility_ms;
    bool alone = false; // out holds one suspect: nothing joins it
    for (const auto& [group, head] : groups) {
      if (static_cast<int>(out.size()) >= max || alone) break;
      const size_t first = out.size();
      bool stopped = false; // the group's run stopped before a message it could deliver
      // Scan the group from `from`; after a message that ran out of deliveries is dead-lettered
      // (not under the scan: rows are not changed under one), go on behind it.
      for (int64_t from = head, rescans = 0; rescans < 16; ++rescans) {
        std::optional<std::pair<Located, std::string>> exhausted; // and its last error
        {
          auto stmt = writer->prepare(k_messages);
          stmt->bind(1, queue_id).bind(2, group, false).bind(3, from);
          stmt->bind(4, max - static_cast<int64_t>(out.size()));
          // A group delivers from its front and stops at its first message that is not visible.
          while (stmt->step() && stmt->column_int(5) <= txn.now) {
            const int64_t received = stmt->column_int(6);
            const int64_t failures = stmt->column_int(8);
            if (received > options.max_retries) {
              exhausted.emplace(Located{stmt->column_int(0), group, failures},
                                stmt->column_text(9));
              break;
            }
            if (isolate && received > failures) {
              stopped = true;
              if (!out.empty()) break;
              alone = true;
            }
            Message m;
            m.seq = stmt->column_int(0);
            m.message_id = format_message_id(id_from_blob(stmt->column_view(1)));
            m.body = stmt->column_text(3);
            // A content-based id is the SHA-256 of the body: worth computing for a receiver,
            // who may show it, but not for consume's work, which never looks at it.
            if (!stmt->column_is_null(2)) {
              m.dedup_id = stmt->column_text(2);
            } else if (take) {
              m.dedup_id = sha256_hex(m.body);
            }
            m.sent_at_ms = stmt->column_int(4);
            m.first_sent_at_ms = stmt->column_int(10);
            m.receive_count = received + 1;
            m.first_received_at_ms = stmt->column_int(7) == 0 ? txn.now : stmt->column_int(7);
            m.failures = failures;
            m.last_error = stmt->column_text(9);
            m.group_id = group;
            out.push_back(std::move(m));
            if (alone) break;
          }
        }
        if (!exhausted) break;
        const auto& [at, last_error] = *exhausted;
        const std::string reason = fmt::format(
          "delivered {} times and never deleted, retries exhausted (queue.max_retries = {}): {}",
          options.max_retries + 1, options.max_retries,
          last_error.empty() ? "its receivers died, hung or let the visibility timeout run out"
                             : last_error);
        do_dead_letter(txn, at, reason, at.failures, last_error);
        stopped = true;
        from = at.seq + 1;
        if (static_cast<int>(out.size()) >= max || alone) break;
      }
      if (out.size() == first) {
        // The row was stale (its head is not visible after all): repair it.
        if (!stopped) fix_group(queue_id, group);
        continue;
      }
      if (!take) continue;
      uint64_t token = 0;
      while (token == 0) token = random_u64();
      {
        auto stmt = writer->prepare(k_take);
        stmt->bind(1, hidden_until).bind(2, static_cast<int64_t>(token)).bind(3, txn.now);
        stmt->bind(4, queue_id).bind(5, group, false).bind(6, out[first].seq);
        stmt->bind(7, out.back().seq).run();
      }
      {
        auto stmt = writer->prepare(k_group_busy);
        stmt->bind(1, hidden_until).bind(2, queue_id).bind(3, group, false).run();
      }
      for (size_t i = first; i < out.size(); ++i) {
        out[i].receipt = encode_receipt(Receipt{out[i].seq, token});
      }
    }
    if (take) txn.counters[queue_id].received += static_cast<int64_t>(out.size());
    return out;
  }

  // Find the message a receipt handle names, or say exactly why it names none.
  Expected<Located> locate(std::string_view receipt_text)
  {
    static const std::string k_sql =
      "SELECT queue_id, group_id, receipt_token, failures FROM messages WHERE seq = ?1";
    auto receipt = decode_receipt(receipt_text);
    if (!receipt) {
      return make_error(Errc::invalid_input,
                        "the receipt handle is not one acmo issued; pass the receiptHandle "
                        "exactly as a receive returned it",
                        "receiptHandle");
    }
    auto stmt = writer->prepare(k_sql);
    stmt->bind(1, receipt->seq);
    if (!stmt->step() || stmt->column_int(0) != queue_id) {
      return make_error(Errc::not_found,
                        "no message in the queue has this receipt handle: it was already "
                        "deleted, purged, dropped by retention, or moved to the DLQ",
                        "receiptHandle");
    }
    auto token = static_cast<uint64_t>(stmt->column_int(2));
    if (token != receipt->token) {
      return make_error(Errc::stale,
                        token == 0 ? "the receipt handle is stale: the message was released for "
                                     "a retry; receive it again to get a new handle"
                                   : "the receipt handle is stale: the message was received again "
                                     "after this handle was issued; use the newest handle",
                        "receiptHandle");
    }
    return Located{receipt->seq, stmt->column_text(1), stmt->column_int(3)};
  }

  // Run `fn(txn, located)` in a write transaction on the message `receipt` names; the result
  // is fn's, or the reason the handle names no message.
  template<typename T, typename Fn>
  Expected<T> with_receipt(std::string_view receipt, Fn fn)
  {
    Expected<T> result;
    WriteOp op;
    op.fn = [&](Txn& txn) {
      auto at = locate(receipt);
      if (at) {
        result = fn(txn, *at);
      } else {
        result = Unexpected(at.error());
      }
    };
    if (auto ok = write(op, true); !ok) return Unexpected(ok.error());
    return result;
  }

  // Delete the message a receipt handle names: a lookup and a delete by rowid when the handle
  // is current (the hot path of every consumer; DELETE ... RETURNING would cost SQLite a
  // temporary table per call), and locate()'s diagnosis of why not otherwise.
  Expected<void> remove_by_receipt(Txn& txn, std::string_view receipt_text)
  {
    static const std::string k_find =
      "SELECT group_id FROM messages WHERE seq = ?1 AND queue_id = ?2 AND receipt_token = ?3";
    if (auto receipt = decode_receipt(receipt_text)) {
      std::optional<std::string> group;
      {
        auto stmt = writer->prepare(k_find);
        stmt->bind(1, receipt->seq).bind(2, queue_id);
        stmt->bind(3, static_cast<int64_t>(receipt->token));
        if (stmt->step()) group = stmt->column_text(0);
      }
      if (group) {
        remove_located(txn, Located{receipt->seq, std::move(*group), 0});
        return {};
      }
    }
    // The handle is not current: locate() says why (garbage, gone, or stale).
    auto at = locate(receipt_text);
    if (!at) return Unexpected(at.error());
    return make_error(Errc::internal, "the message of a current receipt handle was not deleted");
  }

  void remove_located(Txn& txn, const Located& at)
  {
    static const std::string k_sql = "DELETE FROM messages WHERE seq = ?1";
    writer->prepare(k_sql)->bind(1, at.seq).run();
    ++txn.counters[queue_id].deleted;
    txn.touched_groups.emplace(queue_id, at.group_id);
  }

  void do_hide(Txn& txn, const Located& at, int64_t until, bool keep_receipt, int64_t failures,
               std::string_view error)
  {
    static const std::string k_sql =
      "UPDATE messages SET visible_at = ?2,"
      " receipt_token = CASE WHEN ?3 THEN receipt_token ELSE 0 END,"
      " failures = ?4, last_error = CASE WHEN ?5 IS NULL THEN last_error ELSE ?5 END"
      " WHERE seq = ?1";
    auto stmt = writer->prepare(k_sql);
    stmt->bind(1, at.seq).bind(2, until).bind(3, keep_receipt ? 1 : 0).bind(4, failures);
    if (error.data()) {
      stmt->bind(5, error);
    } else {
      stmt->bind_null(5);
    }
    stmt->run();
    txn.touched_groups.emplace(queue_id, at.group_id);
  }

  // Count the deliveries that consumers which died with work in hand made (claimed from the
  // journal): each message they were handling that is still where they took it from counts a
  // receive that ended in neither a deletion nor a release, which makes it a suspect, and
  // dead-lettered by do_receive once there are too many.
  void recover_orphans(const std::vector<WorkJournal::Orphan>& orphans, int64_t now)
  {
    static const std::string k_sql =
      "UPDATE messages SET receive_count = receive_count + 1, last_error = ?3,"
      " first_received_at = CASE WHEN first_received_at = 0 THEN ?4 ELSE first_received_at END"
      " WHERE seq = ?1 AND queue_id = ?2 AND receipt_token = 0";
    for (const auto& orphan : orphans) {
      const std::string why =
        fmt::format("the process handling it (pid {}) died before it was settled", orphan.pid);
      for (const int64_t seq : orphan.seqs) {
        writer->prepare(k_sql)->bind(1, seq).bind(2, queue_id).bind(3, why).bind(4, now).run();
      }
    }
  }

  // Count a receive of message `seq` that never put it in flight (consume).
  void note_received(int64_t seq, int64_t now)
  {
    static const std::string k_sql =
      "UPDATE messages SET receive_count = receive_count + 1,"
      " first_received_at = CASE WHEN first_received_at = 0 THEN ?2 ELSE first_received_at END"
      " WHERE seq = ?1";
    writer->prepare(k_sql)->bind(1, seq).bind(2, now).run();
  }

  // Run `work` in a savepoint and settle the messages `at` by its dispositions: delete each, or
  // dead-letter it with its reason (for consume, `never_in_flight`, counting its receive too).
  // Failed work (an error returned or a SQLite error thrown) undoes only itself, not the other
  // requests sharing the transaction, and leaves the messages as they were.
  Expected<void> settle_located(Txn& txn, const std::vector<Located>& at,
                                const std::function<Expected<std::vector<Disposition>>()>& work,
                                bool never_in_flight)
  {
    writer->exec("SAVEPOINT settle");
    Expected<std::vector<Disposition>> dispositions;
    try {
      dispositions = work();
    } catch (const sqlite::SqliteError& e) {
      dispositions = Unexpected(e.to_error());
    }
    if (dispositions && dispositions->size() != at.size()) {
      dispositions = make_error(Errc::internal, "the work returned a disposition count that "
                                                "differs from the message count");
    }
    if (!dispositions) {
      writer->exec("ROLLBACK TO settle");
      writer->exec("RELEASE settle");
      return Unexpected(dispositions.error());
    }
    writer->exec("RELEASE settle");
    for (size_t i = 0; i < at.size(); ++i) {
      const Disposition& d = (*dispositions)[i];
      if (!d.dead_letter) {
        remove_located(txn, at[i]);
        continue;
      }
      if (never_in_flight) note_received(at[i].seq, txn.now);
      do_dead_letter(txn, at[i], d.reason, at[i].failures + 1, d.reason, d.subject);
    }
    return {};
  }

  // `subject` says what the message is about (an order id) for the log line, if the caller
  // knows.
  void do_dead_letter(Txn& txn, const Located& at, std::string_view reason, int64_t failures,
                      std::string_view error, std::string_view subject = {})
  {
    static const std::string k_sql =
      "UPDATE messages SET queue_id = ?2, dead_reason = ?3, dead_at = ?4, receipt_token = 0,"
      " visible_at = 0, failures = ?5, last_error = ?6 WHERE seq = ?1 RETURNING message_id";
    auto stmt = writer->prepare(k_sql);
    stmt->bind(1, at.seq).bind(2, dlq_id).bind(3, reason).bind(4, txn.now).bind(5, failures);
    stmt->bind(6, error);
    const std::string message_id =
      stmt->step() ? format_message_id(id_from_blob(stmt->column_view(0))) : std::string();
    while (stmt->step()) {
    }
    txn.dead_letter_log.push_back({message_id, at.seq, at.group_id, std::string(subject),
                                   std::string(txn.handler), failures, std::string(reason)});
    ++txn.counters[queue_id].dead_lettered;
    txn.touched_groups.emplace(queue_id, at.group_id);
  }

  void log_dead_letter(const Txn::DeadLetterNote& n) const
  {
    const std::string sequence = format_sequence(n.seq);
    std::string about = n.subject.empty() ? fmt::format("group {}", n.group)
                                          : fmt::format("order {}, group {}", n.subject, n.group);
    log::warn({"dead_lettered",
               {{"message_id", n.message_id},
                {"sequence", sequence},
                {"group", n.group},
                {"order_id", n.subject},
                {"handler", n.handler},
                {"failures", n.failures},
                {"dlq", options.dlq_name},
                {"reason", n.reason}}},
              "message {} (sequence {}, {}) dead-lettered to {} after {} failure{}: {}",
              n.message_id, sequence, about, options.dlq_name, n.failures,
              n.failures == 1 ? "" : "s", n.reason);
  }

  SweepResult do_sweep(Txn& txn)
  {
    static const std::string k_oldest =
      "SELECT seq, queue_id, group_id, sent_at FROM messages ORDER BY seq LIMIT 512";
    static const std::string k_drop_message = "DELETE FROM messages WHERE seq = ?1";
    SweepResult result;
    const int64_t cutoff = txn.now - options.retention_ms;
    // Sequence order is send order, so the expired messages are a prefix of the table. Each
    // sweep is bounded so that a huge backlog cannot hold the write lock for long.
    for (int round = 0; round < 20; ++round) {
      std::vector<std::tuple<int64_t, int64_t, std::string>> doomed;
      bool more = false;
      {
        auto stmt = writer->prepare(k_oldest);
        int rows = 0;
        while (stmt->step()) {
          ++rows;
          if (stmt->column_int(3) >= cutoff) break;
          doomed.emplace_back(stmt->column_int(0), stmt->column_int(1), stmt->column_text(2));
        }
        more = rows == 512 && doomed.size() == 512;
      }
      for (const auto& [seq, queue, group] : doomed) {
        writer->prepare(k_drop_message)->bind(1, seq).run();
        ++txn.counters[queue].expired;
        txn.touched_groups.emplace(queue, group);
      }
      result.expired += static_cast<int64_t>(doomed.size());
      if (!more) break;
    }
    // The dedup log is in expiry order too: find how far its expired prefix goes, then drop
    // that range in one statement.
    int64_t last_expired = 0;
    for (int round = 0; round < 200; ++round) {
      static const std::string k_scan =
        "SELECT id, expires_at FROM dedup WHERE id > ?1 ORDER BY id LIMIT 512";
      int rows = 0;
      bool reached_live = false;
      auto stmt = writer->prepare(k_scan);
      stmt->bind(1, last_expired);
      while (stmt->step()) {
        ++rows;
        if (stmt->column_int(1) > txn.now) {
          reached_live = true;
          break;
        }
        last_expired = stmt->column_int(0);
        ++result.dedup_removed;
      }
      if (reached_live || rows < 512) break;
    }
    if (last_expired > 0) {
      static const std::string k_drop = "DELETE FROM dedup WHERE id <= ?1";
      writer->prepare(k_drop)->bind(1, last_expired).run();
    }
    return result;
  }

  // --- reads --------------------------------------------------------------------------------

  // Whether a group of the queue has a visible head: the cheap probe of an idle long poll.
  bool anything_ready(int64_t now)
  {
    static const std::string k_sql =
      "SELECT 1 FROM groups INDEXED BY groups_by_head WHERE queue_id = ?1 AND ready_at <= ?2"
      " LIMIT 1";
    std::lock_guard lock(read_mu);
    auto stmt = reader->prepare(k_sql);
    stmt->bind(1, queue_id).bind(2, now);
    return stmt->step();
  }

  static Message read_message(sqlite::Statement& stmt)
  {
    Message m;
    m.seq = stmt.column_int(0);
    m.message_id = format_message_id(id_from_blob(stmt.column_view(1)));
    m.group_id = stmt.column_text(2);
    m.body = stmt.column_text(4);
    m.dedup_id = stmt.column_is_null(3) ? sha256_hex(m.body) : stmt.column_text(3);
    m.sent_at_ms = stmt.column_int(5);
    m.receive_count = stmt.column_int(6);
    m.first_received_at_ms = stmt.column_int(7);
    m.failures = stmt.column_int(8);
    m.last_error = stmt.column_text(9);
    m.dead_reason = stmt.column_text(10);
    m.dead_at_ms = stmt.column_int(11);
    m.first_sent_at_ms = stmt.column_int(12);
    m.visible_at_ms = stmt.column_int(13);
    m.in_flight = stmt.column_int(14) != 0;
    return m;
  }

  void notify_waiters()
  {
    {
      std::lock_guard lock(wake_mu);
      ++wake_generation;
    }
    wake_cv.notify_all();
  }

  // Check each request (outside the write lock), then accept the valid ones in one
  // transaction. Entries that break a limit get their own error; a failed transaction fails
  // every entry.
  std::vector<Expected<SendResult>> send_many(const SendRequest* requests, size_t count,
                                              bool bulk = false)
  {
    std::vector<Expected<SendResult>> results(count);
    std::vector<std::pair<size_t, PreparedSend>> valid;
    valid.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      auto prepared = prepare_send(requests[i]);
      if (prepared) {
        valid.emplace_back(i, std::move(*prepared));
      } else {
        results[i] = Unexpected(prepared.error());
      }
    }
    if (valid.empty()) return results;
    WriteOp op;
    op.durable = true;
    op.bulk = bulk;
    op.fn = [&](Txn& txn) {
      for (const auto& [i, prepared] : valid) results[i] = do_send(txn, prepared);
    };
    if (auto ok = write(op, true); !ok) {
      for (const auto& entry : valid) results[entry.first] = Unexpected(ok.error());
    }
    return results;
  }

  // Check a request, fill in its dedup id and compute its dedup key; all outside the lock.
  Expected<PreparedSend> prepare_send(const SendRequest& request) const
  {
    auto checked = limits::check_send(request, options.content_based_dedup);
    if (!checked) return Unexpected(checked.error());
    const DedupKey key = dedup_key(checked->dedup_id);
    return PreparedSend{std::move(*checked), &request, key};
  }

};

// --- opening ---------------------------------------------------------------------------------

Expected<void> check_queue_options(const QueueOptions& options)
{
  auto within = [](int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; };
  if (auto ok = limits::check_id(options.name, "queue.name"); !ok) return ok;
  if (auto ok = limits::check_id(options.dlq_name, "queue.dlq_name"); !ok) return ok;
  if (options.name == options.dlq_name) {
    return make_error(Errc::invalid_input,
                      "queue.dlq_name must differ from queue.name: the queue and its DLQ need "
                      "names of their own",
                      "queue.dlq_name");
  }
  if (!within(options.visibility_timeout_ms, 0, k_max_visibility_ms)) {
    return make_error(Errc::invalid_input, "queue.visibility_timeout must be between 0s and 12h",
                      "queue.visibility_timeout");
  }
  if (options.max_retries < 0) {
    return make_error(Errc::invalid_input, "queue.max_retries must not be negative",
                      "queue.max_retries");
  }
  for (auto d : options.retry_delays_ms) {
    if (!within(d, 0, k_max_visibility_ms)) {
      return make_error(Errc::invalid_input,
                        "each of queue.retry_delays must be between 0s and 12h",
                        "queue.retry_delays");
    }
  }
  if (options.dedup_window_ms < 0) {
    return make_error(Errc::invalid_input, "queue.dedup_window must not be negative",
                      "queue.dedup_window");
  }
  if (options.retention_ms <= 0) {
    return make_error(Errc::invalid_input, "queue.retention must be longer than 0s",
                      "queue.retention");
  }
  if (options.busy_timeout_ms < 0 || options.poll_interval_ms < 1) {
    return make_error(Errc::invalid_input,
                      "queue.busy_timeout must not be negative and queue.poll_interval must be "
                      "at least 1ms",
                      options.busy_timeout_ms < 0 ? "queue.busy_timeout" : "queue.poll_interval");
  }
  return {};
}

namespace {

// "90s", "5m", "2h": a duration in its largest whole unit, as the configuration writes it.
std::string duration_text(int64_t ms)
{
  static const std::pair<int64_t, const char*> k_units[] = {
    {86'400'000, "d"}, {3'600'000, "h"}, {60'000, "m"}, {1'000, "s"}};
  for (const auto& [scale, unit] : k_units) {
    if (ms != 0 && ms % scale == 0) return fmt::format("{}{}", ms / scale, unit);
  }
  return fmt::format("{}ms", ms);
}

} // namespace

Expected<void> check_dlq_filter(const DlqFilter& filter)
{
  if (filter.older_than_ms < -1 || filter.newer_than_ms < -1) {
    return make_error(Errc::invalid_input, "an age of the DLQ filter is negative",
                      filter.older_than_ms < -1 ? "olderThan" : "newerThan");
  }
  if (filter.newer_than_ms == 0) {
    return make_error(Errc::invalid_input,
                      "newer than 0s matches no message; give an age such as \"5m\" or \"2h\"",
                      "newerThan");
  }
  if (filter.older_than_ms >= 0 && filter.newer_than_ms > 0
      && filter.older_than_ms >= filter.newer_than_ms) {
    return make_error(Errc::invalid_input,
                      fmt::format("older than {} and newer than {} match no message; the "
                                  "older-than age must be the smaller of the two",
                                  duration_text(filter.older_than_ms),
                                  duration_text(filter.newer_than_ms)),
                      "olderThan");
  }
  return {};
}


SqliteQueue::SqliteQueue(std::unique_ptr<Impl> impl, QueueOptions options)
  : Queue(std::move(options)), m_impl(std::move(impl))
{
}

SqliteQueue::~SqliteQueue() = default;

int64_t SqliteQueue::now_ms() const { return m_impl->clock.now_ms(); }

Expected<sqlite::Database*> sqlite_connection(QueueTransaction& txn)
{
  if (auto* t = dynamic_cast<SqliteTransaction*>(&txn)) return &t->db();
  return make_error(Errc::internal,
                    fmt::format("work for the embedded queue's database was given a {} queue's "
                                "transaction",
                                txn.backend()));
}

Expected<std::unique_ptr<SqliteQueue>> SqliteQueue::open(const std::string& db_path,
                                                         QueueOptions options, const Clock& clock)
{
  if (auto ok = check_queue_options(options); !ok) return Unexpected(ok.error());
  auto impl = std::make_unique<Impl>(clock, options, db_path);
  try {
    impl->writer = std::make_unique<sqlite::Database>(db_path, options.busy_timeout_ms);
    impl->db_path = db_path;
    impl->wal_path = db_path + "-wal";
    if (auto ok = refuse_foreign(*impl->writer); !ok) return Unexpected(ok.error());
    apply_connection_settings(*impl->writer, options.busy_timeout_ms);
    impl->checkpoints =
      std::make_unique<sqlite_queue::WalCheckpointer>(db_path, options.busy_timeout_ms);
    impl->checkpoints->attach(impl->writer->handle());
    impl->group_commit = std::make_unique<GroupCommit>(
      options.durability_full, impl->wal_path,
      [p = impl.get()](const std::vector<WriteOp*>& batch) { p->execute_batch(batch); });
    if (auto ok = migrate(*impl->writer); !ok) return Unexpected(ok.error());
    impl->queue_id = find_queue(*impl->writer, options.name);
    impl->dlq_id = find_queue(*impl->writer, options.dlq_name);
    if (impl->queue_id == 0 || impl->dlq_id == 0) {
      std::shared_lock gate(write_gate());
      impl->writer->exec("BEGIN IMMEDIATE");
      impl->queue_id = ensure_queue(*impl->writer, options.name, clock.now_ms());
      impl->dlq_id = ensure_queue(*impl->writer, options.dlq_name, clock.now_ms());
      impl->writer->exec("COMMIT");
    }
    impl->writer->on_long_wait(1'000, [p = impl.get()] { p->warn_waiting(); });
    impl->damage_marker = sqlite::damage_marker_path(db_path);
    // Marked damaged, and restored since? The check decides: passed, the mark goes.
    if (::access(impl->damage_marker.c_str(), F_OK) == 0 && impl->quick_check()) {
      log::warn({"database_check_passed"}, "{} was marked damaged, and passes its integrity check now: the mark is removed",
                db_path);
      ::unlink(impl->damage_marker.c_str());
    }
    // The database and its WAL may have just been created: make their directory entries
    // durable too, or a power cut could lose a file whose contents were fsynced.
    sync_directory_of(db_path);
    impl->reader = std::make_unique<sqlite::Database>(db_path, options.busy_timeout_ms);
    impl->reader->exec("PRAGMA query_only=ON");
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
  return std::unique_ptr<SqliteQueue>(new SqliteQueue(std::move(impl), std::move(options)));
}

// --- sending -------------------------------------------------------------------------------------

Expected<SendResult> SqliteQueue::send(const SendRequest& request)
{
  auto prepared = m_impl->prepare_send(request);
  if (!prepared) return Unexpected(prepared.error());
  Expected<SendResult> result;
  WriteOp op;
  op.durable = true;
  op.fn = [&](Txn& txn) { result = m_impl->do_send(txn, *prepared); };
  if (auto ok = m_impl->write(op, true); !ok) return Unexpected(ok.error());
  return result;
}

Expected<std::vector<Expected<SendResult>>>
SqliteQueue::send_batch(const std::vector<SendRequest>& requests)
{
  if (requests.empty() || requests.size() > limits::k_max_batch) {
    return make_error(Errc::invalid_input,
                      fmt::format("a batch holds 1 to {} entries, not {}; split it",
                                  limits::k_max_batch, requests.size()),
                      "entries");
  }
  return m_impl->send_many(requests.data(), requests.size());
}

std::vector<Expected<SendResult>> SqliteQueue::send_bulk(const std::vector<SendRequest>& requests)
{
  std::vector<Expected<SendResult>> results;
  results.reserve(requests.size());
  for (size_t start = 0; start < requests.size(); start += k_bulk_chunk) {
    const size_t count = std::min(requests.size() - start, k_bulk_chunk);
    auto part = m_impl->send_many(requests.data() + start, count, true);
    std::move(part.begin(), part.end(), std::back_inserter(results));
  }
  return results;
}

// --- receiving -----------------------------------------------------------------------------------

Expected<std::vector<Message>> SqliteQueue::receive(int max, std::optional<int64_t> visibility_ms,
                                              int64_t wait_ms, bool isolate_suspects)
{
  std::vector<Expected<void>> none;
  return remove_and_receive({}, none, max, visibility_ms, wait_ms, isolate_suspects);
}

// The limits every receive checks: how many messages it asks for and how long it waits.
static Expected<void> check_receive(int max, int64_t wait_ms)
{
  if (max < 1 || max > k_max_receive) {
    return make_error(Errc::invalid_input,
                      fmt::format("a receive asks for 1 to {} messages, not {}", k_max_receive, max),
                      "maxMessages");
  }
  if (wait_ms < 0 || wait_ms > k_max_wait_ms) {
    return make_error(Errc::invalid_input, "the wait time must be between 0 and 20 s",
                      "waitTimeSeconds");
  }
  return {};
}

Expected<std::vector<Message>> SqliteQueue::remove_and_receive(const std::vector<std::string>& done,
                                                         std::vector<Expected<void>>& deleted,
                                                         int max,
                                                         std::optional<int64_t> visibility_ms,
                                                         int64_t wait_ms, bool isolate_suspects)
{
  deleted.assign(done.size(), Expected<void>{});
  if (auto ok = check_receive(max, wait_ms); !ok) return Unexpected(ok.error());
  const int64_t visibility = visibility_ms.value_or(m_options.visibility_timeout_ms);
  if (visibility < 0 || visibility > k_max_visibility_ms) {
    return make_error(Errc::invalid_input,
                      "the visibility timeout must be between 0 and 43200 s (12 h)",
                      "visibilityTimeout");
  }
  auto& impl = *m_impl;
  std::vector<Message> got;
  auto polled = poll(wait_ms, [&](bool first_try) -> Expected<bool> {
    WriteOp op;
    const bool removing = first_try && !done.empty();
    op.fn = [&](Txn& txn) {
      if (removing) {
        for (size_t i = 0; i < done.size(); ++i) deleted[i] = impl.remove_by_receipt(txn, done[i]);
        impl.flush_groups(txn);
      }
      got = impl.do_receive(txn, max, visibility, true, isolate_suspects);
    };
    if (auto ok = impl.write(op, removing); !ok) {
      if (removing) {
        for (auto& d : deleted) d = Unexpected(ok.error());
      }
      return Unexpected(ok.error());
    }
    return !got.empty();
  });
  if (!polled) return Unexpected(polled.error());
  return got;
}

Expected<void> SqliteQueue::poll(int64_t wait_ms, const std::function<Expected<bool>(bool)>& attempt)
{
  auto& impl = *m_impl;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  bool first_try = true;
  try {
    for (;;) {
      uint64_t generation;
      {
        std::lock_guard lock(impl.wake_mu);
        if (impl.interrupted) return {};
        generation = impl.wake_generation;
      }
      const int64_t now = impl.clock.now_ms();
      if (now - impl.last_sweep_ms.load() >= m_options.housekeeping_interval_ms) {
        impl.last_sweep_ms = now;
        if (auto swept = sweep(); !swept) return Unexpected(swept.error());
      }
      // After the first try, probe with a cheap read before taking the write lock: idle
      // pollers must not queue up behind, or slow down, the processes doing real work.
      if (first_try || impl.anything_ready(now)) {
        auto got = attempt(first_try);
        first_try = false;
        if (!got) return Unexpected(got.error());
        if (*got) return {};
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
      if (left <= 0 || !impl.clock.is_real()) return {};
      const int64_t nap = std::min<int64_t>(m_options.poll_interval_ms, left);
      std::unique_lock lock(impl.wake_mu);
      impl.wake_cv.wait_for(lock, std::chrono::milliseconds(std::max<int64_t>(nap, 1)), [&] {
        return impl.interrupted || impl.wake_generation != generation;
      });
    }
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

Expected<std::vector<Message>> SqliteQueue::consume(int max, int64_t wait_ms, const ConsumeWork& work)
{
  if (auto ok = check_receive(max, wait_ms); !ok) return Unexpected(ok.error());
  auto& impl = *m_impl;
  std::vector<Message> got;
  Expected<void> result;
  auto polled = poll(wait_ms, [&](bool) -> Expected<bool> {
    WriteOp op;
    op.fn = [&](Txn& txn) {
      result = {};
      got = impl.do_receive(txn, max, 0, false, true);
      if (got.empty()) return;
      std::vector<Located> at;
      std::vector<int64_t> seqs;
      at.reserve(got.size());
      seqs.reserve(got.size());
      for (const auto& m : got) {
        at.push_back(Located{m.seq, m.group_id, m.failures});
        seqs.push_back(m.seq);
      }
      // Should the work kill this process, the journal says what it was handling, and the
      // attempt is counted (recover_orphans). Without a journal (it cannot be written) the
      // work still runs: the journal only guards against what should never happen.
      const bool journaled = impl.journal.begin(impl.queue_id, seqs.data(), seqs.size()).has_value();
      result = impl.settle_located(txn, at, [&] {
        SqliteTransaction t(*impl.writer);
        return work(t, got);
      }, true);
      if (journaled) impl.journal.end();
      if (result) txn.counters[impl.queue_id].received += static_cast<int64_t>(got.size());
    };
    if (auto ok = impl.write(op, true); !ok) return Unexpected(ok.error());
    if (!result) return Unexpected(result.error());
    return !got.empty();
  });
  if (!polled) return Unexpected(polled.error());
  return got;
}

Expected<void> SqliteQueue::remove(std::string_view receipt)
{
  Expected<void> result;
  WriteOp op;
  op.fn = [&](Txn& txn) { result = m_impl->remove_by_receipt(txn, receipt); };
  if (auto ok = m_impl->write(op, true); !ok) return ok;
  return result;
}

std::vector<Expected<void>> SqliteQueue::remove_batch(const std::vector<std::string>& receipts)
{
  std::vector<Expected<void>> results(receipts.size());
  WriteOp op;
  op.fn = [&](Txn& txn) {
    for (size_t i = 0; i < receipts.size(); ++i) {
      results[i] = m_impl->remove_by_receipt(txn, receipts[i]);
    }
  };
  if (auto ok = m_impl->write(op, true); !ok) {
    for (auto& r : results) r = Unexpected(ok.error());
  }
  return results;
}

Expected<void> SqliteQueue::change_visibility(std::string_view receipt, int64_t timeout_ms)
{
  if (timeout_ms < 0 || timeout_ms > k_max_visibility_ms) {
    return make_error(Errc::invalid_input,
                      "the visibility timeout must be between 0 and 43200 s (12 h)",
                      "visibilityTimeout");
  }
  return m_impl->with_receipt<void>(receipt, [&](Txn& txn, const Located& at) {
    m_impl->do_hide(txn, at, txn.now + timeout_ms, true, at.failures, {});
    return Expected<void>{};
  });
}

Expected<ReleaseOutcome> SqliteQueue::release(std::string_view receipt, std::string_view error,
                                        std::string_view subject)
{
  return m_impl->with_receipt<ReleaseOutcome>(receipt, [&](Txn& txn, const Located& at) {
    ReleaseOutcome outcome;
    outcome.attempt = at.failures + 1;
    if (outcome.attempt > m_options.max_retries) {
      outcome.dead_lettered = true;
      auto reason = fmt::format("failed {} time{}, retries exhausted (queue.max_retries = {}): {}",
                                outcome.attempt, outcome.attempt == 1 ? "" : "s",
                                m_options.max_retries, error);
      m_impl->do_dead_letter(txn, at, reason, outcome.attempt, error, subject);
    } else {
      const auto& delays = m_options.retry_delays_ms;
      if (!delays.empty()) {
        auto index = std::min(static_cast<size_t>(outcome.attempt - 1), delays.size() - 1);
        outcome.retry_in_ms = delays[index];
      }
      m_impl->do_hide(txn, at, txn.now + outcome.retry_in_ms, false, outcome.attempt, error);
      ++txn.counters[m_impl->queue_id].retried;
    }
    return Expected<ReleaseOutcome>(outcome);
  });
}

Expected<void> SqliteQueue::dead_letter(std::string_view receipt, std::string_view reason,
                                  std::string_view subject)
{
  return m_impl->with_receipt<void>(receipt, [&](Txn& txn, const Located& at) {
    m_impl->do_dead_letter(txn, at, reason, at.failures + 1, reason, subject);
    return Expected<void>{};
  });
}

Expected<void> SqliteQueue::run_write(const std::function<Expected<void>(sqlite::Database&)>& work)
{
  Expected<void> result;
  WriteOp op;
  op.fn = [&](Txn&) {
    auto& writer = *m_impl->writer;
    writer.exec("SAVEPOINT work");
    result = work(writer);
    writer.exec(result ? "RELEASE work" : "ROLLBACK TO work");
    if (!result) writer.exec("RELEASE work");
  };
  if (auto ok = m_impl->write(op, false); !ok) return ok;
  return result;
}

// --- the handler registry ------------------------------------------------------------------

Expected<std::string> SqliteQueue::save_handler(const HandlerRecord& r)
{
  static const std::string k_sql =
    "INSERT INTO handlers(id, pid, host, started_at, heartbeat_at, stopped_at, processed,"
    " dead_lettered, retried, batches, latency_p50_us, latency_p99_us, last_error)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    " ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,"
    " stopped_at = excluded.stopped_at, processed = excluded.processed,"
    " dead_lettered = excluded.dead_lettered, retried = excluded.retried,"
    " batches = excluded.batches, latency_p50_us = excluded.latency_p50_us,"
    " latency_p99_us = excluded.latency_p99_us, last_error = excluded.last_error"
    " RETURNING request";
  std::string request;
  auto ok = run_write([&](sqlite::Database& db) -> Expected<void> {
    auto stmt = db.prepare(k_sql);
    stmt->bind(1, r.id).bind(2, r.pid).bind(3, r.host).bind(4, r.started_at_ms);
    stmt->bind(5, r.heartbeat_at_ms).bind(6, r.stopped_at_ms).bind(7, r.processed);
    stmt->bind(8, r.dead_lettered).bind(9, r.retried).bind(10, r.batches);
    stmt->bind(11, r.latency_p50_us).bind(12, r.latency_p99_us).bind(13, r.last_error);
    request = stmt->step() ? stmt->column_text(0) : std::string();
    while (stmt->step()) {
    }
    return {};
  });
  if (!ok) return Unexpected(ok.error());
  return request;
}

Expected<void> SqliteQueue::request_handler(std::string_view id, std::string_view request)
{
  static const std::string k_sql = "UPDATE handlers SET request = ?2 WHERE id = ?1";
  bool found = false;
  auto ok = run_write([&](sqlite::Database& db) -> Expected<void> {
    db.prepare(k_sql)->bind(1, id).bind(2, request).run();
    found = db.changes() > 0;
    return {};
  });
  if (!ok) return ok;
  if (!found) return make_error(Errc::not_found, fmt::format("no handler {} is registered", id));
  return {};
}

Expected<std::vector<HandlerRecord>> SqliteQueue::handlers(int64_t since_ms)
{
  static const std::string k_sql =
    "SELECT id, pid, host, started_at, heartbeat_at, stopped_at, processed, dead_lettered,"
    " retried, batches, latency_p50_us, latency_p99_us, last_error, request FROM handlers"
    " WHERE heartbeat_at > ?1 ORDER BY started_at DESC, id";
  try {
    std::lock_guard lock(m_impl->read_mu);
    std::vector<HandlerRecord> out;
    auto stmt = m_impl->reader->prepare(k_sql);
    stmt->bind(1, since_ms);
    while (stmt->step()) {
      HandlerRecord r;
      r.id = stmt->column_text(0);
      r.pid = stmt->column_int(1);
      r.host = stmt->column_text(2);
      r.started_at_ms = stmt->column_int(3);
      r.heartbeat_at_ms = stmt->column_int(4);
      r.stopped_at_ms = stmt->column_int(5);
      r.processed = stmt->column_int(6);
      r.dead_lettered = stmt->column_int(7);
      r.retried = stmt->column_int(8);
      r.batches = stmt->column_int(9);
      r.latency_p50_us = stmt->column_int(10);
      r.latency_p99_us = stmt->column_int(11);
      r.last_error = stmt->column_text(12);
      r.request = stmt->column_text(13);
      out.push_back(std::move(r));
    }
    return out;
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

// --- health ------------------------------------------------------------------------------

Expected<void> SqliteQueue::check_integrity()
{
  auto& impl = *m_impl;
  if (auto damage = impl.damaged()) return Unexpected(*damage);
  std::lock_guard lock(impl.integrity_mu);
  const int64_t started = steady_us();
  if (started < impl.integrity_due_us) return {};
  auto result = impl.quick_check();
  // Checked again after 100 times as long as it took, between a second and ten minutes: a
  // small database every second, one that takes 2 s every 200 s.
  const int64_t took = steady_us() - started;
  impl.integrity_due_us = steady_us() + std::clamp<int64_t>(100 * took, 1'000'000, 600'000'000);
  return result;
}

Expected<void> SqliteQueue::check_writable()
{
  // A queue moved to PostgreSQL takes nothing more: a server still on it must not look healthy.
  auto moved = moved_to();
  if (!moved) return Unexpected(moved.error());
  if (!moved->empty()) {
    return make_error(Errc::unavailable,
                      fmt::format("the queue was moved to {} (acmo queue move), or is being "
                                  "moved there: set queue.backend = \"postgres\" and restart",
                                  *moved),
                      "queue.backend");
  }
  constexpr uint64_t k_plenty = 16ull << 20;
  constexpr off_t k_probe = 256 << 10; // more than a batch of sends appends to the WAL
  const std::string& wal = m_impl->wal_path;
  const std::string dir = wal.find('/') == std::string::npos ? "." : wal.substr(0, wal.rfind('/'));
  struct statvfs fs {};
  if (::statvfs(dir.c_str(), &fs) == 0 &&
      static_cast<uint64_t>(fs.f_bavail) * static_cast<uint64_t>(fs.f_frsize) >= k_plenty) {
    return {};
  }
  // Little space left: can the disk still give a commit's worth? (The WAL may have room for a
  // small write that proves nothing; a file of its own allocates for real.)
  const std::string probe = dir + "/.acmo-space-probe";
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  int rc = fd >= 0 ? 0 : errno;
  if (fd >= 0) {
    rc = ::posix_fallocate(fd, 0, k_probe);
    ::close(fd);
    ::unlink(probe.c_str());
  }
  if (rc == ENOSPC || rc == EDQUOT) {
    return make_error(
      Errc::unavailable,
      fmt::format("the disk holding the queue is full ({} kB free in {}); free some space and retry",
                  static_cast<uint64_t>(fs.f_bavail) * static_cast<uint64_t>(fs.f_frsize) / 1024,
                  dir));
  }
  // And a write of the database itself (rewriting a row with its own value dirties its page).
  return run_write([](sqlite::Database& db) -> Expected<void> {
    db.exec("UPDATE queues SET created_at = created_at WHERE id = 0");
    return {};
  });
}

Expected<void> SqliteQueue::settle(const std::vector<std::string>& receipts, const SettleWork& work)
{
  Expected<void> result;
  WriteOp op;
  op.fn = [&](Txn& txn) {
    auto& impl = *m_impl;
    std::vector<Located> located;
    for (const auto& receipt : receipts) {
      auto at = impl.locate(receipt);
      if (!at) {
        result = Unexpected(at.error());
        return;
      }
      located.push_back(std::move(*at));
    }
    result = impl.settle_located(txn, located, [&] {
      SqliteTransaction t(*impl.writer);
      return work(t);
    }, false);
  };
  if (auto ok = m_impl->write(op, true); !ok) return ok;
  return result;
}

// --- the DLQ, purge, housekeeping ----------------------------------------------------------------

static const std::string k_message_columns =
  "seq, message_id, group_id, dedup_id, body, sent_at, receive_count, first_received_at,"
  " failures, last_error, dead_reason, dead_at, coalesce(first_sent_at, sent_at), visible_at,"
  " receipt_token != 0";

// A page of a queue's messages, oldest first (?1 the queue, ?2 LIMIT, ?3 OFFSET).
static const std::string k_dlq_page = "SELECT " + k_message_columns
                               + " FROM messages WHERE queue_id = ?1 ORDER BY seq"
                                 " LIMIT ?2 OFFSET ?3";

// The DLQ's messages that match a DlqFilter: ?1 the DLQ, ?2 the reason ('' any), ?3 the latest
// and ?4 the earliest time of dead-lettering to match (NULL: any). lower() folds ASCII only,
// which every reason acmo writes is.
static const std::string k_dlq_reason_before =
  " AND (?2 = '' OR instr(lower(dead_reason), lower(?2)) > 0) AND (?3 IS NULL OR dead_at <= ?3)";
static const std::string k_dlq_match =
  " queue_id = ?1" + k_dlq_reason_before + " AND (?4 IS NULL OR dead_at > ?4)";

// k_dlq_match for a filter. One with a time since (--newer-than, and every poll of acmo tail)
// names its range and "dead_at > 0", the condition of the partial index messages_dead_by_time,
// so that SQLite reads only the messages dead-lettered since rather than the whole DLQ.
static const std::string& dlq_match(const DlqFilter& filter)
{
  static const std::string k_since =
    " queue_id = ?1 AND dead_at > 0 AND dead_at > ?4" + k_dlq_reason_before;
  return filter.newer_than_ms >= 0 ? k_since : k_dlq_match;
}

// Bind a filter's values to k_dlq_match's ?2 to ?4, its ages measured from `now`.
static void bind_dlq_filter(sqlite::Statement& stmt, const DlqFilter& filter, int64_t now)
{
  stmt.bind(2, filter.reason);
  if (filter.older_than_ms >= 0) {
    stmt.bind(3, now - filter.older_than_ms);
  } else {
    stmt.bind_null(3);
  }
  if (filter.newer_than_ms >= 0) {
    stmt.bind(4, now - filter.newer_than_ms);
  } else {
    stmt.bind_null(4);
  }
}

Expected<std::vector<Message>> SqliteQueue::dlq_list(int64_t limit, int64_t offset)
{
  try {
    std::lock_guard lock(m_impl->read_mu);
    auto stmt = m_impl->reader->prepare(k_dlq_page);
    stmt->bind(1, m_impl->dlq_id).bind(2, limit).bind(3, offset);
    std::vector<Message> out;
    while (stmt->step()) out.push_back(Impl::read_message(*stmt));
    return out;
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

Expected<SqliteQueue::DlqPage> SqliteQueue::dlq_page(int64_t limit, int64_t offset, const DlqFilter& filter)
{
  static const std::string k_count = "SELECT COUNT(*) FROM messages WHERE queue_id = ?1";
  const std::string count_matching = "SELECT COUNT(*) FROM messages WHERE" + dlq_match(filter);
  const std::string page_matching = "SELECT " + k_message_columns + " FROM messages WHERE"
                                      + dlq_match(filter) + " ORDER BY seq LIMIT ?5 OFFSET ?6";
  const bool all = filter.matches_all();
  const int64_t now = m_impl->clock.now_ms();
  try {
    std::lock_guard lock(m_impl->read_mu);
    return in_read_transaction(*m_impl->reader, [&] {
      DlqPage page;
      auto count = m_impl->reader->prepare(all ? k_count : count_matching);
      count->bind(1, m_impl->dlq_id);
      if (!all) bind_dlq_filter(*count, filter, now);
      if (count->step()) page.total = count->column_int(0);
      if (all) {
        auto stmt = m_impl->reader->prepare(k_dlq_page);
        stmt->bind(1, m_impl->dlq_id).bind(2, limit).bind(3, offset);
        while (stmt->step()) page.messages.push_back(Impl::read_message(*stmt));
      } else {
        auto stmt = m_impl->reader->prepare(page_matching);
        stmt->bind(1, m_impl->dlq_id);
        bind_dlq_filter(*stmt, filter, now);
        stmt->bind(5, limit).bind(6, offset);
        while (stmt->step()) page.messages.push_back(Impl::read_message(*stmt));
      }
      return page;
    });
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

Expected<std::string> SqliteQueue::moved_to()
{
  try {
    std::lock_guard lock(m_impl->read_mu);
    auto stmt = m_impl->reader->prepare("SELECT " + k_moved_to
                                        + " FROM queues z, queues q WHERE z.id = 0 AND q.id = ?1");
    stmt->bind(1, m_impl->queue_id);
    return stmt->step() ? stmt->column_text(0) : std::string();
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

Expected<std::optional<Message>> SqliteQueue::find(int64_t seq)
{
  static const std::string k_sql = "SELECT " + k_message_columns
                                   + " FROM messages WHERE seq = ?1 AND queue_id IN (?2, ?3)";
  try {
    std::lock_guard lock(m_impl->read_mu);
    auto stmt = m_impl->reader->prepare(k_sql);
    stmt->bind(1, seq).bind(2, m_impl->queue_id).bind(3, m_impl->dlq_id);
    if (!stmt->step()) return std::optional<Message>();
    return std::optional<Message>(Impl::read_message(*stmt));
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

Expected<std::vector<Message>> SqliteQueue::peek(const PeekFilter& filter)
{
  // json_extract only on valid JSON (it fails on anything else), and only where the value's
  // text is in the body at all.
  static const std::string k_where =
    " FROM messages WHERE queue_id = ?1 AND (?2 = '' OR group_id = ?2) AND (?3 = '' OR"
    " (instr(body, ?4) > 0 AND CASE WHEN json_valid(body) THEN"
    " json_extract(body, '$.\"' || ?3 || '\"') IS ?4 END))";
  static const std::string k_oldest =
    "SELECT " + k_message_columns + k_where + " ORDER BY seq LIMIT ?5";
  static const std::string k_newest =
    "SELECT " + k_message_columns + k_where + " ORDER BY seq DESC LIMIT ?5";
  try {
    std::lock_guard lock(m_impl->read_mu);
    auto stmt = m_impl->reader->prepare(filter.newest_first ? k_newest : k_oldest);
    stmt->bind(1, m_impl->queue_id).bind(2, filter.group_id).bind(3, filter.field);
    stmt->bind(4, filter.value).bind(5, filter.limit);
    std::vector<Message> out;
    while (stmt->step()) out.push_back(Impl::read_message(*stmt));
    return out;
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}

Expected<Message> SqliteQueue::dlq_show(std::string_view message_id)
{
  static const std::string k_sql = "SELECT " + k_message_columns
                                   + " FROM messages WHERE queue_id = ?1 AND message_id = ?2";
  try {
    std::lock_guard lock(m_impl->read_mu);
    auto id = parse_message_id(message_id);
    auto stmt = m_impl->reader->prepare(k_sql);
    stmt->bind(1, m_impl->dlq_id).bind_blob(2, id ? id_blob(*id) : std::string_view(""));
    if (!id || !stmt->step()) {
      return make_error(Errc::not_found,
                        fmt::format("no message {} in the DLQ {}; `acmo dlq list` shows what is "
                                    "there",
                                    message_id, m_options.dlq_name),
                        "messageId");
    }
    return Impl::read_message(*stmt);
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
}


Expected<int64_t> SqliteQueue::redrive(const std::vector<std::string>& message_ids)
{
  static const std::string k_all =
    "SELECT seq, message_id, group_id FROM messages WHERE queue_id = ?1 ORDER BY seq";
  Expected<int64_t> result = 0;
  WriteOp op;
  op.durable = true;
  op.fn = [&](Txn& txn) {
    auto& impl = *m_impl;
    if (auto moved = impl.moved_error(txn)) {
      result = Unexpected(*moved);
      return;
    }
    std::vector<std::pair<int64_t, std::string>> chosen;
    std::set<std::string> wanted;
    for (const auto& id : message_ids) {
      auto parsed = parse_message_id(id);
      wanted.insert(parsed ? format_message_id(*parsed) : id); // any letter case
    }
    // Decided once: `wanted` empties as ids are found, and must not then turn into "all".
    const bool all = message_ids.empty();
    {
      auto stmt = impl.writer->prepare(k_all);
      stmt->bind(1, impl.dlq_id);
      while (stmt->step()) {
        if (!all && wanted.erase(format_message_id(id_from_blob(stmt->column_view(1)))) == 0) {
          continue;
        }
        chosen.emplace_back(stmt->column_int(0), stmt->column_text(2));
      }
    }
    if (!wanted.empty()) {
      result = make_error(Errc::not_found,
                          fmt::format("no message {} in the DLQ {}; nothing was redriven",
                                      *wanted.begin(), m_options.dlq_name),
                          "messageId");
      return;
    }
    impl.move_back(txn, chosen);
    result = static_cast<int64_t>(chosen.size());
  };
  if (auto ok = m_impl->write(op, true); !ok) return Unexpected(ok.error());
  return result;
}

Expected<SqliteQueue::RedriveRun> SqliteQueue::begin_redrive(const DlqFilter& filter)
{
  static const std::string k_last_seq = "SELECT next_seq - 1 FROM queues WHERE id = 0";
  const std::string count_matching = "SELECT COUNT(*) FROM messages WHERE" + dlq_match(filter);
  RedriveRun run;
  run.filter = filter;
  run.begun_ms = m_impl->clock.now_ms();
  try {
    std::lock_guard lock(m_impl->read_mu);
    in_read_transaction(*m_impl->reader, [&] {
      auto last = m_impl->reader->prepare(k_last_seq);
      if (last->step()) run.until_seq = last->column_int(0);
      auto count = m_impl->reader->prepare(count_matching);
      count->bind(1, m_impl->dlq_id);
      bind_dlq_filter(*count, filter, run.begun_ms);
      if (count->step()) run.total = count->column_int(0);
      return 0;
    });
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
  return run;
}

Expected<int64_t> SqliteQueue::redrive_step(RedriveRun& run, int64_t max)
{
  // In sequence order from where the last step stopped: the dead_at bound leaves out what was
  // dead-lettered since the run began, the seq bound what was redriven since and came back.
  // NOT INDEXED keeps SQLite on the range of sequence numbers (the rowid), so that a run reads
  // each row of its range once; through messages_by_group every step would read and sort the
  // whole DLQ (8 ms a step for 20,000 messages, against microseconds).
  static const std::string k_next = "SELECT seq, group_id FROM messages NOT INDEXED WHERE"
                                    + k_dlq_match
                                    + " AND seq > ?5 AND seq <= ?6 AND dead_at <= ?7"
                                      " ORDER BY seq LIMIT ?8";
  int64_t moved = 0;
  int64_t last_seq = run.after_seq;
  std::optional<Error> refused;
  WriteOp op;
  op.durable = true;
  op.fn = [&](Txn& txn) { // may run again, alone, when a shared transaction fails
    auto& impl = *m_impl;
    std::vector<std::pair<int64_t, std::string>> chosen;
    moved = 0;
    last_seq = run.after_seq;
    refused = impl.moved_error(txn);
    if (refused) return;
    {
      auto stmt = impl.writer->prepare(k_next);
      stmt->bind(1, impl.dlq_id);
      bind_dlq_filter(*stmt, run.filter, run.begun_ms);
      stmt->bind(5, run.after_seq).bind(6, run.until_seq).bind(7, run.begun_ms).bind(8, max);
      while (stmt->step()) chosen.emplace_back(stmt->column_int(0), stmt->column_text(1));
    }
    impl.move_back(txn, chosen);
    moved = static_cast<int64_t>(chosen.size());
    if (!chosen.empty()) last_seq = chosen.back().first;
  };
  if (auto ok = m_impl->write(op, true); !ok) return Unexpected(ok.error());
  if (refused) return Unexpected(*refused);
  run.after_seq = last_seq;
  return moved;
}

Expected<GroupsReport> SqliteQueue::groups(const GroupsFilter& filter)
{
  // One pass over the queue's messages in group order (the messages_by_group index). With
  // MIN(seq) as its only aggregate of that kind, SQLite takes the bare columns from the row
  // that holds the minimum: the head's.
  static const std::string k_groups =
    "SELECT group_id, COUNT(*), SUM(visible_at > ?2 AND receipt_token != 0), MIN(seq),"
    " message_id, coalesce(first_sent_at, sent_at), visible_at, receipt_token != 0"
    " FROM messages WHERE queue_id = ?1 GROUP BY group_id";
  const auto worry_first = [](const GroupView& a, const GroupView& b) {
    const bool a_blocked = a.blocked != GroupBlock::none;
    const bool b_blocked = b.blocked != GroupBlock::none;
    if (a_blocked != b_blocked) return a_blocked;
    if (a.head_first_sent_at_ms != b.head_first_sent_at_ms) {
      return a.head_first_sent_at_ms < b.head_first_sent_at_ms;
    }
    return a.group_id < b.group_id;
  };
  const size_t limit = static_cast<size_t>(std::max<int64_t>(filter.limit, 0));
  GroupsReport report;
  report.now_ms = m_impl->clock.now_ms();
  std::vector<GroupView> kept;
  try {
    std::lock_guard lock(m_impl->read_mu);
    auto stmt = m_impl->reader->prepare(k_groups);
    stmt->bind(1, m_impl->queue_id).bind(2, report.now_ms);
    while (stmt->step()) {
      GroupView g;
      g.group_id = stmt->column_text(0);
      g.depth = stmt->column_int(1);
      g.in_flight = stmt->column_int(2);
      g.head_seq = stmt->column_int(3);
      g.head_message_id = format_message_id(id_from_blob(stmt->column_view(4)));
      g.head_first_sent_at_ms = stmt->column_int(5);
      g.head_visible_at_ms = stmt->column_int(6);
      // A group delivers from its head only once the head is visible (docs/queue.md §2).
      if (g.head_visible_at_ms > report.now_ms) {
        g.blocked = stmt->column_int(7) != 0 ? GroupBlock::in_flight : GroupBlock::retry_delay;
      }
      ++report.total_groups;
      report.total_messages += g.depth;
      report.total_in_flight += g.in_flight;
      if (g.blocked != GroupBlock::none) ++report.total_blocked;
      if (filter.blocked_only && g.blocked == GroupBlock::none) continue;
      ++report.matched;
      kept.push_back(std::move(g));
      // Keep the memory bounded by the limit however many groups there are.
      if (kept.size() >= 2 * limit + 64) {
        std::nth_element(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(limit),
                         kept.end(), worry_first);
        kept.resize(limit);
      }
    }
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
  std::sort(kept.begin(), kept.end(), worry_first);
  if (kept.size() > limit) kept.resize(limit);
  report.groups = std::move(kept);
  return report;
}

Expected<int64_t> SqliteQueue::purge(bool dlq)
{
  int64_t removed = 0;
  std::optional<Error> refused;
  WriteOp op;
  op.durable = true;
  op.fn = [&](Txn& txn) {
    auto& impl = *m_impl;
    refused = impl.moved_error(txn);
    if (refused) return;
    const int64_t id = dlq ? impl.dlq_id : impl.queue_id;
    impl.writer->prepare("DELETE FROM messages WHERE queue_id = ?1")->bind(1, id).run();
    removed = impl.writer->changes();
    impl.writer->prepare("DELETE FROM groups WHERE queue_id = ?1")->bind(1, id).run();
    impl.writer->prepare("DELETE FROM dedup WHERE queue_id = ?1")->bind(1, id).run();
    // Every process rebuilds its dedup index when it sees the epoch move.
    impl.writer->exec("UPDATE queues SET dedup_epoch = dedup_epoch + 1 WHERE id = 0");
    txn.counters[id].purged += removed;
  };
  if (auto ok = m_impl->write(op, false); !ok) return Unexpected(ok.error());
  if (refused) return Unexpected(*refused);
  return removed;
}

// The embedded queue's snapshot for acmo queue move, read in pages from the database of the
// write transaction that move_out holds open while move_in reads it.
class SqliteQueue::Impl::Snapshot final : public QueueSnapshot
{
public:
  Snapshot(sqlite::Database& db, int64_t queue_id, int64_t dlq_id, int64_t now,
                 int64_t next_seq)
    : m_db(db), m_queue_id(queue_id), m_dlq_id(dlq_id), m_now(now), m_next_seq(next_seq)
  {
  }

  Expected<std::vector<Message>> messages(bool dead, int64_t after, size_t max) const override
  {
    // In the table's order: "+queue_id" keeps SQLite from reading the queue's rows through
    // messages_by_group and sorting all of them for every page.
    static const std::string k_sql = "SELECT " + k_message_columns
                                     + " FROM messages WHERE +queue_id = ?1 AND seq > ?2"
                                       " ORDER BY seq LIMIT ?3";
    return read([&] {
      std::vector<Message> out;
      auto stmt = m_db.prepare(k_sql);
      stmt->bind(1, dead ? m_dlq_id : m_queue_id).bind(2, after).bind(3, static_cast<int64_t>(max));
      while (stmt->step()) out.push_back(Impl::read_message(*stmt));
      return out;
    });
  }

  Expected<std::vector<MovedDedup>> dedup(int64_t after, size_t max) const override
  {
    static const std::string k_sql =
      "SELECT id, key, message_id, expires_at, body_hash FROM dedup"
      " WHERE queue_id = ?1 AND expires_at > ?2 AND id > ?3 ORDER BY id LIMIT ?4";
    return read([&] {
      std::vector<MovedDedup> out;
      auto stmt = m_db.prepare(k_sql);
      stmt->bind(1, m_queue_id).bind(2, m_now).bind(3, after).bind(4, static_cast<int64_t>(max));
      while (stmt->step()) {
        MovedDedup d;
        d.seq = stmt->column_int(0);
        std::array<unsigned char, 32> key{}; // the blob's 16 bytes, then zeros
        const std::string_view blob = stmt->column_view(1);
        std::copy_n(blob.begin(), std::min<size_t>(blob.size(), 16), key.begin());
        d.key = hex_of(key).substr(0, 32);
        d.message_id = format_message_id(id_from_blob(stmt->column_view(2)));
        d.expires_at_ms = stmt->column_int(3);
        d.body_hash = stmt->column_int(4);
        out.push_back(std::move(d));
      }
      return out;
    });
  }

  Expected<std::vector<std::string>> groups(const std::string& after, size_t max) const override
  {
    return read([&] {
      std::vector<std::string> out;
      // Along messages_by_group, from `after` on (BINARY collation: byte order).
      auto stmt = m_db.prepare("SELECT DISTINCT group_id FROM messages WHERE queue_id = ?1"
                               " AND group_id > ?2 ORDER BY group_id LIMIT ?3");
      stmt->bind(1, m_queue_id).bind(2, after).bind(3, static_cast<int64_t>(max));
      while (stmt->step()) out.push_back(stmt->column_text(0));
      return out;
    });
  }

  int64_t next_seq() const override { return m_next_seq; }

  Expected<Held> held(int64_t now_ms) const override
  {
    return read([&] {
      auto stmt = m_db.prepare("SELECT count(*), coalesce(max(visible_at), 0) FROM messages"
                               " WHERE +queue_id = ?1 AND receipt_token != 0 AND visible_at > ?2");
      stmt->bind(1, m_queue_id).bind(2, now_ms);
      stmt->step();
      return Held{stmt->column_int(0), stmt->column_int(1)};
    });
  }

private:
  // `f()`, or the error of the embedded queue's database it threw.
  template<typename F>
  static auto read(F&& f) -> Expected<decltype(f())>
  {
    try {
      return f();
    } catch (const std::exception& e) {
      return make_error(Errc::internal,
                        fmt::format("reading the embedded queue to move it: {}", e.what()));
    }
  }

  sqlite::Database& m_db;
  int64_t m_queue_id, m_dlq_id, m_now, m_next_seq;
};

Expected<MoveResult>
SqliteQueue::move_out(const std::string& destination,
                      const std::function<Expected<MoveResult>(const QueueSnapshot&)>& move_in)
{
  auto& impl = *m_impl;
  // First, durably, the queue is marked as moving to `destination`: from then on it takes no
  // change (a send, a redrive, a purge) that PostgreSQL would not see, until the move is done.
  // A move stopped after PostgreSQL committed (kill -9) leaves the mark, and is run again to
  // finish; a queue marked for another destination is not moved twice.
  Expected<void> begun;
  bool marked_here = false;
  WriteOp mark;
  mark.durable = true;
  mark.fn = [&](Txn& txn) {
    begun = {};
    marked_here = false;
    impl.sync_dedup(txn);
    if (!txn.moved_to.empty() && txn.moved_to != destination) {
      begun = make_error(Errc::conflict,
                         fmt::format("the queue {} was moved to {}, or a move there did not "
                                     "finish; its messages are there: run acmo queue move again "
                                     "with that --to and --schema to finish it",
                                     m_options.name, txn.moved_to),
                         "to");
      return;
    }
    if (txn.moved_to.empty()) {
      impl.writer->prepare("UPDATE queues SET moved_to = ?1 WHERE id = ?2")
        ->bind(1, destination)
        .bind(2, impl.queue_id)
        .run();
      marked_here = true;
    }
  };
  if (auto ok = impl.write(mark, false); !ok) return Unexpected(ok.error());
  if (!begun) return Unexpected(begun.error());

  Expected<MoveResult> result = MoveResult{};
  bool taken = false;    // PostgreSQL committed the messages
  bool in_doubt = false; // PostgreSQL may have committed them
  WriteOp op;
  op.durable = true;
  op.fn = [&](Txn& txn) {
    auto& db = *impl.writer;
    const Impl::Snapshot snapshot(db, impl.queue_id, impl.dlq_id, txn.now,
                                  db.query_int("SELECT next_seq FROM queues WHERE id = 0"));
    result = move_in(snapshot);
    if (!result) {
      in_doubt = in_doubt || result.error().in_doubt;
      return; // nothing written here: the transaction commits nothing
    }
    taken = true;
    for (const int64_t id : {impl.queue_id, impl.dlq_id}) {
      db.prepare("DELETE FROM messages WHERE queue_id = ?1")->bind(1, id).run();
      db.prepare("DELETE FROM groups WHERE queue_id = ?1")->bind(1, id).run();
      db.prepare("DELETE FROM dedup WHERE queue_id = ?1")->bind(1, id).run();
    }
    db.exec("UPDATE queues SET dedup_epoch = dedup_epoch + 1 WHERE id = 0");
  };
  auto ok = impl.write(op, false);
  if ((!ok || !result) && marked_here && !taken && !in_doubt) {
    // Nothing of this run reached PostgreSQL, and no earlier run had begun: the embedded queue
    // goes on as it was. (Once PostgreSQL took the messages, even if this file's commit then
    // failed, the mark stays, and a new run finishes the move; so it does if this fails.)
    WriteOp undo;
    undo.durable = true;
    undo.fn = [&](Txn&) {
      impl.writer->prepare("UPDATE queues SET moved_to = '' WHERE id = ?1")
        ->bind(1, impl.queue_id)
        .run();
    };
    (void)impl.write(undo, false);
  }
  if (!ok) return Unexpected(ok.error());
  return result;
}

std::unique_lock<std::shared_mutex> SqliteQueue::hold_writes()
{
  return std::unique_lock<std::shared_mutex>(write_gate());
}

Expected<void> SqliteQueue::check_write_lock()
{
  auto& impl = *m_impl;
  // This process's own transaction, open far longer than any should be (a stuck thread).
  if (const int64_t started = impl.txn_started_us.load();
      started != 0 && steady_us() - started > 10'000'000) {
    return make_error(Errc::unavailable,
                      fmt::format("this process (pid {}) has held the queue database's write "
                                  "lock for {} s",
                                  ::getpid(), (steady_us() - started) / 1'000'000));
  }
  auto holder = impl.lock_holder();
  if (!holder) return {};
  if (holder->frozen()) {
    return make_error(Errc::unavailable,
                      fmt::format("the queue database's write lock is held by {}; nothing can be "
                                  "written until it lets go",
                                  describe(*holder)));
  }
  // A running holder: does the lock come free within a second?
  try {
    std::lock_guard lock(impl.probe_mu);
    if (!impl.probe) impl.probe = std::make_unique<sqlite::Database>(impl.db_path, 1'000);
    impl.probe->exec("BEGIN IMMEDIATE");
    impl.probe->exec("ROLLBACK");
  } catch (const sqlite::SqliteError& e) {
    Error error = e.to_error();
    if (error.code != Errc::busy) return Unexpected(error);
    holder = impl.lock_holder();
    if (!holder) return {};
    return make_error(Errc::unavailable,
                      fmt::format("the queue database's write lock stayed held for over a second "
                                  "by {}",
                                  describe(*holder)));
  }
  return {};
}

Expected<SweepResult> SqliteQueue::sweep()
{
  SweepResult result;
  const auto orphans = m_impl->journal.claim_orphans(m_impl->queue_id);
  WriteOp op;
  op.fn = [&](Txn& txn) {
    result = m_impl->do_sweep(txn);
    m_impl->recover_orphans(orphans, txn.now);
  };
  if (auto ok = m_impl->write(op, true); !ok) {
    m_impl->journal.unclaim(orphans);
    return Unexpected(ok.error());
  }
  m_impl->journal.settle(orphans);
  return result;
}

Expected<QueueStats> SqliteQueue::stats()
{
  static const std::string k_states =
    "SELECT COALESCE(SUM(visible_at <= ?2), 0),"
    " COALESCE(SUM(visible_at > ?2 AND receipt_token != 0), 0),"
    " COALESCE(SUM(visible_at > ?2 AND receipt_token = 0), 0), MIN(sent_at)"
    " FROM messages WHERE queue_id = ?1";
  static const std::string k_dlq = "SELECT COUNT(*) FROM messages WHERE queue_id = ?1";
  static const std::string k_dedup =
    "SELECT COUNT(*) FROM dedup WHERE queue_id = ?1 AND expires_at > ?2";
  static const std::string k_counters =
    "SELECT sent, duplicates, received, deleted, retried, expired, dead_lettered, redriven,"
    " purged FROM queues WHERE id = ?1";
  auto& impl = *m_impl;
  QueueStats s;
  s.name = m_options.name;
  s.dlq_name = m_options.dlq_name;
  s.backend = std::string(backend());
  const int64_t now = impl.clock.now_ms();
  try {
    std::lock_guard lock(impl.read_mu);
    // One read transaction, so that the figures agree with each other.
    impl.reader->exec("BEGIN");
    try {
      {
        auto stmt = impl.reader->prepare(k_states);
        stmt->bind(1, impl.queue_id).bind(2, now);
        if (stmt->step()) {
          s.visible = stmt->column_int(0);
          s.in_flight = stmt->column_int(1);
          s.delayed = stmt->column_int(2);
          s.oldest_age_ms = stmt->column_is_null(3) ? 0 : std::max<int64_t>(0, now - stmt->column_int(3));
        }
      }
      {
        auto stmt = impl.reader->prepare(k_dlq);
        stmt->bind(1, impl.dlq_id);
        if (stmt->step()) s.dead_lettered = stmt->column_int(0);
      }
      {
        auto stmt = impl.reader->prepare(k_dedup);
        stmt->bind(1, impl.queue_id).bind(2, now);
        if (stmt->step()) s.dedup_entries = stmt->column_int(0);
      }
      {
        auto stmt = impl.reader->prepare(k_counters);
        stmt->bind(1, impl.queue_id);
        if (stmt->step()) {
          s.sent = stmt->column_int(0);
          s.duplicates = stmt->column_int(1);
          s.received = stmt->column_int(2);
          s.deleted = stmt->column_int(3);
          s.retried = stmt->column_int(4);
          s.expired = stmt->column_int(5);
          s.dead_lettered_total = stmt->column_int(6);
          s.redriven = stmt->column_int(7);
          s.purged = stmt->column_int(8);
        }
      }
      {
        // What left the DLQ other than by a redrive is counted on the DLQ's own row.
        auto stmt = impl.reader->prepare(k_counters);
        stmt->bind(1, impl.dlq_id);
        if (stmt->step()) {
          s.dlq_expired = stmt->column_int(5);
          s.dlq_purged = stmt->column_int(8);
        }
      }
      impl.reader->exec("COMMIT");
    } catch (...) {
      impl.reader->exec("ROLLBACK");
      throw;
    }
  } catch (const sqlite::SqliteError& e) {
    return Unexpected(e.to_error());
  }
  return s;
}

CommitStats SqliteQueue::commit_stats() const
{
  return CommitStats{m_impl->committed_transactions.load(), m_impl->committed_requests.load()};
}

void SqliteQueue::interrupt()
{
  {
    std::lock_guard lock(m_impl->wake_mu);
    m_impl->interrupted = true;
  }
  m_impl->wake_cv.notify_all();
}

void SqliteQueue::resume()
{
  std::lock_guard lock(m_impl->wake_mu);
  m_impl->interrupted = false;
}

} // namespace acmo
