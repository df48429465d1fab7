#include "core/queue/postgres/pg_queue.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <variant>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "core/queue/limits.hpp"
#include "core/queue/postgres/pg_connections.hpp"
#include "core/queue/postgres/pg_sender.hpp"
#include "core/queue/postgres/schema.hpp"
#include "core/queue/postgres/server_time.hpp"
#include "core/store/pg_conninfo.hpp"
#include "core/store/pg_text.hpp"
#include "core/store/pg_order_store.hpp"
#include "core/util/ids.hpp"
#include "core/util/log.hpp"
#include "core/util/sha256.hpp"

namespace acmo {

namespace {

constexpr int64_t k_max_visibility_ms = 12 * 3'600'000; // as SQS: 12 hours
constexpr int64_t k_max_wait_ms = 20'000;               // as SQS: 20 s long poll
constexpr int k_max_receive = 1000;
// How long an idle long poll that hears notifications sleeps at most between looks: the
// notifications wake it for sends; this covers a notification lost while the listening
// connection was being made again.
constexpr int64_t k_listening_nap_ms = 250;

// Per-queue counter deltas gathered during one transaction and appended once at its end.
struct Counters {
  int64_t sent = 0, duplicates = 0, received = 0, deleted = 0, retried = 0, expired = 0,
          dead_lettered = 0, redriven = 0, purged = 0;
  bool any() const
  {
    return sent || duplicates || received || deleted || retried || expired || dead_lettered
           || redriven || purged;
  }
};

// What a receipt handle names, locked.
struct Located {
  int64_t seq = 0;
  std::string group_id;
  int64_t failures = 0;
};

// The columns a Message is read from (read_message).
const std::string k_message_columns =
  "seq, message_id::text, group_id, dedup_id, body, sent_at, receive_count, first_received_at,"
  " failures, last_error, dead_reason, dead_at, coalesce(first_sent_at, sent_at), visible_at,"
  " receipt_token <> 0";

Message read_message(const pqxx::row& row, pqxx::row::size_type first = 0)
{
  const auto col = [&](pqxx::row::size_type i) { return row[first + i]; };
  Message m;
  m.seq = col(0).as<int64_t>();
  m.message_id = col(1).as<std::string>();
  m.group_id = col(2).as<std::string>();
  m.body = col(4).as<std::string>();
  m.dedup_id = col(3).is_null() ? sha256_hex(m.body) : col(3).as<std::string>();
  m.sent_at_ms = col(5).as<int64_t>();
  m.receive_count = col(6).as<int64_t>();
  m.first_received_at_ms = col(7).as<int64_t>();
  m.failures = col(8).as<int64_t>();
  m.last_error = col(9).as<std::string>();
  m.dead_reason = col(10).as<std::string>();
  m.dead_at_ms = col(11).as<int64_t>();
  m.first_sent_at_ms = col(12).as<int64_t>();
  m.visible_at_ms = col(13).as<int64_t>();
  m.in_flight = col(14).as<bool>();
  return m;
}

// The statements of the hot paths (send's is prepared on the sending connection). Every
// connection of the queue prepares them on their first use, so that each is parsed and planned
// once per connection rather than at every execution: with plan_cache_mode =
// force_generic_plan, the plan is kept for the connection's life.
struct Statement {
  const char* name;
  const char* sql;
};

// Only the rows a receive can use come back: those up to the $3-th message that is visible and
// not exhausted ($4 is queue.max_retries), so that a receive of 10 from groups of many messages
// reads 10 bodies rather than 10 of each group it locked. group_rows is how many of its group's
// messages were read (under $3, all of them): consume's receive, which drops the groups it
// empties, counts them in each group's own read, which needs no second sort of all the rows as
// a window partitioned by group would; a plain receive, which needs no count, makes none.
//
// The groups' rows are locked in their newest versions (PostgreSQL checks a row another
// transaction changed meanwhile again), but the messages are read as of the statement's start.
// fresh says whether the group's row is the version that start saw. When another transaction
// changed it in between (took, released, deleted or moved messages of the group), the messages
// read may be gone or hold counts grown since, so the group is left for the next receive. A
// version whose transaction (xmin, widened to an xid8 as the nearest to the snapshot's xmax)
// the snapshot sees is the one it saw; any other (made after the start, or by this very
// transaction) is compared with the version the snapshot reads, by its key. A send to a group
// with messages locks the row without making a version: a message sent as the statement began
// may be missing from what it read, though the row is fresh. It comes after every message read
// (a group's messages commit in order), so the next receive has it; consume, which drops the
// rows of groups it read whole, looks for such a message first (k_consume_done).
#define ACMO_GROUP_FRONT                                                                         \
  "SELECT * FROM messages x WHERE x.queue_id = $1 AND x.group_id = g.group_id"                   \
  " ORDER BY x.seq LIMIT $3"
#define ACMO_RECEIVE_SQL(FRONT, GROUP_ROWS)                                                      \
  "WITH g AS (SELECT ctid, xmin AS row_xmin, group_id, head_seq FROM message_groups"             \
  " WHERE queue_id = $1 AND ready_at <= $2 ORDER BY head_seq LIMIT $3 FOR UPDATE SKIP LOCKED)"   \
  " SELECT group_id, seq, message_id, dedup_id, body, sent_at, visible_at, receive_count,"       \
  " first_received_at, failures, last_error, first_sent_at, row_tid, group_rows, fresh,"         \
  " head_seq FROM ("                                                                             \
  " SELECT g.group_id, g.head_seq, coalesce(f.fresh, false) AS fresh, m.seq,"                    \
  " m.message_id::text, m.dedup_id, m.body, m.sent_at,"                                          \
  " m.visible_at, m.receive_count, m.first_received_at, m.failures, m.last_error,"               \
  " coalesce(m.first_sent_at, m.sent_at) AS first_sent_at, g.ctid::text AS row_tid,"             \
  " count(*) FILTER (WHERE m.visible_at <= $2 AND m.receive_count <= $4)"                        \
  " OVER (ORDER BY g.head_seq, m.seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"          \
  " AS usable_before, " GROUP_ROWS " AS group_rows"                                              \
  " FROM g LEFT JOIN LATERAL (SELECT CASE WHEN pg_visible_in_snapshot(greatest(0, v.xmax"        \
  " + CASE WHEN v.d >= 2147483648 THEN v.d - 4294967296 ELSE v.d END)::text::xid8, v.snap)"      \
  " THEN true ELSE (SELECT o.xmin = g.row_xmin FROM message_groups o WHERE o.queue_id = $1"      \
  " AND o.group_id = g.group_id) END AS fresh FROM (SELECT u.snap, u.xmax,"                      \
  " ((g.row_xmin::text::bigint - (u.xmax & 4294967295)) % 4294967296 + 4294967296)"              \
  " % 4294967296 AS d FROM (SELECT pg_current_snapshot() AS snap,"                               \
  " pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax) u) v) f ON true"              \
  " LEFT JOIN LATERAL (" FRONT ") m ON true) r"                                                  \
  " WHERE usable_before < $3 ORDER BY head_seq, seq"
const Statement k_receive = {
  "acmo_receive", ACMO_RECEIVE_SQL("SELECT *, count(*) OVER () AS n FROM (" ACMO_GROUP_FRONT ") y",
                                   "coalesce(m.n, 0)")};
const Statement k_receive_plain = {"acmo_receive_plain",
                                   ACMO_RECEIVE_SQL(ACMO_GROUP_FRONT, "0")};
// A plain receive in one statement, which needs no transaction around it (one round trip
// rather than four): acmo_receive_take (schema migration 11) locks the ready groups one at a
// time and takes the messages at their fronts (each group's up to its first message not
// visible) under the receipt token $7, unless one of them asks for more than taking it (an
// exhausted message to dead-letter, a suspect to isolate) or a group's row is behind its
// messages (emptied, or its head not visible). Then nothing was changed, and its last row says so
// (column 12, `special`): the caller receives again in a transaction, where do_receive decides
// message by message. Its rows have the first twelve of ACMO_RECEIVE_SQL's columns, those
// delivered() reads.
const Statement k_receive_and_take = {
  "acmo_receive_and_take",
  "SELECT * FROM acmo_receive_take($1, $2, $3::int, $4::bigint, $5, $6, $7)"};
#undef ACMO_RECEIVE_SQL
#undef ACMO_GROUP_FRONT
// A receive's messages in flight, their groups held until then and the count of the messages
// received, in one round trip. The groups' rows by their places, joined (a TID scan a place):
// "group_id = ANY(...)" was planned, before the first ANALYZE, as a filter over every group of
// the queue, and "ctid = ANY(...)" as a read of every group row while the table was small.
const Statement k_take = {
  "acmo_take",
  "WITH taken AS (UPDATE messages m SET visible_at = $1, receipt_token = t.token,"
  " receive_count = m.receive_count + 1,"
  " first_received_at = CASE WHEN m.first_received_at = 0 THEN $2"
  " ELSE m.first_received_at END"
  " FROM unnest($3::bigint[], $4::bigint[]) AS t(seq, token) WHERE m.seq = t.seq),"
  " held AS (UPDATE message_groups g SET ready_at = $1 FROM unnest($5::tid[]) AS h(place)"
  " WHERE g.ctid = h.place)"
  " INSERT INTO queue_counters (queue_id, received) VALUES ($6, $7)"};
const Statement k_fix_groups = {"acmo_fix_groups", "SELECT acmo_fix_groups($1, $2::text[])"};
const Statement k_count = {
  "acmo_count",
  "INSERT INTO queue_counters (queue_id, sent, duplicates, received, deleted, retried,"
  " expired, dead_lettered, redriven, purged) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"};
// The messages by their key: "queue_id + 0" keeps the planner, before the first ANALYZE of
// the table, from reading every message of the queue through messages_by_group.
const Statement k_lock_groups = {
  "acmo_lock_groups",
  "SELECT 1 FROM message_groups g WHERE g.queue_id = $2 AND g.group_id IN"
  " (SELECT group_id FROM messages WHERE seq = ANY($1::bigint[]) AND queue_id + 0 = $2)"
  " ORDER BY g.group_id FOR UPDATE OF g"};
const Statement k_lock_messages = {
  "acmo_lock_messages",
  "SELECT seq, queue_id, group_id, receipt_token, failures FROM messages"
  " WHERE seq = ANY($1::bigint[]) ORDER BY seq FOR UPDATE"};
const Statement k_delete = {"acmo_delete", "DELETE FROM messages WHERE seq = ANY($1::bigint[])"};
const Statement k_remove = {
  "acmo_remove", "SELECT o_seq, o_queue, o_token FROM acmo_remove($1, $2::bigint[], $3::bigint[])"};
const Statement k_probe = {
  "acmo_probe", "SELECT coalesce(min(ready_at), 0) FROM message_groups WHERE queue_id = $1"};
const Statement k_journal_begin = {
  "acmo_journal_begin",
  "INSERT INTO consume_journal (queue_id, pid, started, client_pid, seqs)"
  " SELECT $1, a.pid, a.backend_start, $3, $4::bigint[] FROM pg_stat_activity a"
  " WHERE a.pid = $2 RETURNING id"};
const Statement k_journal_done = {"acmo_journal_done",
                                  "DELETE FROM consume_journal WHERE id = $1"};
// The end of a consume whose messages were all deleted, in one round trip instead of four: its
// messages deleted, its journal row (id 0: none) deleted, the rows of the groups it read whole
// ($4) dropped and its counters added.
//
// A group read whole may not be empty: a send to a group with messages locks the group's row
// without changing it, so one that committed after the receive statement took its snapshot and
// before it locked the row left a message the receive never saw, in a row that looks the
// version it saw. This statement's snapshot, taken after the receive locked the rows, sees
// every such message (any later send waits for the lock): a group with a message beyond the
// batch's keeps its row, with that message as its head. The sub-statements of a WITH share one
// snapshot, so the messages deleted here are still there to the others, and are left out by
// their keys.
const Statement k_consume_done = {
  "acmo_consume_done",
  "WITH gone AS (DELETE FROM messages WHERE seq = ANY($1::bigint[])),"
  " journal AS (DELETE FROM consume_journal WHERE id = $2),"
  " heads AS (SELECT x.name, h.seq, h.visible_at FROM unnest($4::text[]) AS x(name)"
  " LEFT JOIN LATERAL (SELECT m.seq, m.visible_at FROM messages m WHERE m.queue_id = $3"
  " AND m.group_id = x.name AND m.seq <> ALL($1::bigint[]) ORDER BY m.seq LIMIT 1) h ON true),"
  " dropped AS (DELETE FROM message_groups g USING heads x"
  " WHERE g.queue_id = $3 AND g.group_id = x.name AND x.seq IS NULL),"
  " kept AS (UPDATE message_groups g SET head_seq = x.seq, ready_at = x.visible_at FROM heads x"
  " WHERE g.queue_id = $3 AND g.group_id = x.name AND x.seq IS NOT NULL)"
  " INSERT INTO queue_counters (queue_id, sent, duplicates, received, deleted, retried,"
  " expired, dead_lettered, redriven, purged) VALUES ($3, $5, $6, $7, $8, $9, $10, $11, $12, $13)"};

const Statement* const k_statements[] = {
  &k_receive, &k_receive_plain, &k_take,  &k_fix_groups,    &k_count,        &k_lock_groups,
  &k_lock_messages, &k_delete,  &k_probe, &k_journal_begin, &k_journal_done, &k_remove,
  &k_receive_and_take, &k_consume_done};

} // namespace

// One transaction of the queue: the changes it made to groups and counters, applied by
// finish() before it commits, and the dead-letterings to log once it has.
struct PgTxn {
  explicit PgTxn(pqxx::work& t) : tx(t), block(&t) {}
  explicit PgTxn(pqxx::nontransaction& t) : tx(t) {}
  pqxx::transaction_base& tx;
  pqxx::dbtransaction* block = nullptr; // null outside a transaction (Impl::Mode::one_statement)
  int64_t now = 0;
  std::map<int64_t, Counters> counters;
  std::set<std::string> touched_groups; // of the queue (the DLQ keeps no group rows)
  // Groups whose every message this transaction read it deleted or dead-lettered while holding
  // the group's row. A message sent as the receive began may still be there (k_consume_done):
  // finish() drops a row only when its group has none.
  std::set<std::string> emptied_groups;
  // The messages a settle or a consume deletes, deleted by finish() together with a consume's
  // journal row `journal_done` (0: none), in one statement when nothing else needs one of its
  // own.
  std::vector<int64_t> deferred_deletes;
  int64_t journal_done = 0;
  struct DeadLetterNote {
    std::string message_id;
    int64_t seq = 0;
    std::string group;
    std::string subject;
    int64_t failures = 0;
    std::string reason;
  };
  std::vector<DeadLetterNote> dead_letter_log;
};

struct PgQueue::Impl final : PgSender::Host {
  const Clock& clock;
  // The queue's time with a real clock: the server's (server_time.hpp).
  ServerTime server_time;
  QueueOptions options;
  std::string url;
  std::string schema;
  std::string conninfo;
  std::string channel; // the queue's notification channel
  int64_t queue_id = 0;
  int64_t dlq_id = 0;

  std::unique_ptr<PgConnections> pool;
  // Sends, on connections of their own (made once the queue's id is known).
  std::unique_ptr<PgSender> sender;

  // The consume journal's connection (journal_begin, journal_drop).
  std::mutex journal_mu;
  std::unique_ptr<pqxx::connection> journal_conn;
  // The server process of each connection, by the process id libpq has for it
  // (server_pid). Connected directly, the two are the same; through a pooler, libpq's is the
  // pooler's (PgBouncer makes one up for each client) and says nothing of the server process.
  std::mutex pids_mu;
  std::map<int, int> server_pids;

  // Long polls: woken by local commits and by the notifications of sends from any process.
  std::mutex wake_mu;
  std::condition_variable wake_cv;
  uint64_t wake_generation = 0;
  bool interrupted = false;
  std::atomic<int64_t> last_sweep_ms{0};

  // The listening connection's thread, started by the first long poll that waits (a process
  // that never waits, as `acmo send` and `acmo stats`, makes no such connection); stop_fd (an
  // eventfd) ends it.
  std::once_flag listener_started;
  std::thread listener;
  int stop_fd = -1;
  std::atomic<bool> is_listening{false};

  Impl(const Clock& c, QueueOptions o) : clock(c), options(std::move(o)) {}
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl()
  {
    if (stop_fd >= 0) {
      const uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(stop_fd, &one, sizeof one);
    }
    if (listener.joinable()) listener.join();
    if (stop_fd >= 0) ::close(stop_fd);
  }

  // --- time -------------------------------------------------------------------------------

  // The queue's time: the server's clock, which every process sharing the queue reads alike;
  // a Clock that does not run by itself (the tests') is its own time.
  int64_t now_ms() const override { return clock.is_real() ? server_time.now_ms() : clock.now_ms(); }

  // Whether it is time to ask the server its time again (true once each time it is).
  bool time_due() { return clock.is_real() && server_time.claim(); }

  // Ask the server its time on `conn`, outside any transaction of it. A failure leaves the
  // time as it was; a broken connection shows to whoever uses it next.
  void ask_time(pqxx::connection& conn)
  {
    if (!clock.is_real()) return;
    try {
      pqxx::nontransaction tx(conn);
      const int64_t sent = ServerTime::monotonic_us();
      const auto row = tx.exec1("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint");
      const int64_t received = ServerTime::monotonic_us();
      server_time.add(row[0].as<int64_t>(), sent, received);
    } catch (const std::exception&) {
    }
  }

  // The same when due, on a pooled connection, for a path that has none in hand (sends).
  void keep_time()
  {
    if (!time_due()) return;
    auto got = pool->acquire();
    if (auto* lease = std::get_if<PgConnections::Lease>(&got)) ask_time(lease->conn());
  }

  // --- connections and errors -------------------------------------------------------------

  Error unavailable(std::string_view what) const
  {
    return Error(Errc::unavailable, pg_unavailable_message(url, what, "queue.url"), "queue.url");
  }

  // What every connection of the queue is set to: its schema, errors only (notices would reach
  // stderr as libpq's lines), lock waits bounded by queue.busy_timeout, and commits not
  // waiting for the disk unless `synchronous` (an accepted send, a redrive and a purge must be
  // durable; a receive or a delete lost to a crash of the server only causes a redelivery).
  void setup(pqxx::connection& conn, bool synchronous) const
  {
    pqxx::nontransaction(conn).exec0(setup_sql(synchronous));
    prepare(conn);
  }

  // Name the statements (libpqxx sends each to the server the first time it is run).
  static void prepare(pqxx::connection& conn)
  {
    for (const auto* statement : k_statements) conn.prepare(statement->name, statement->sql);
  }

  // The settings of setup, in one round trip (the schema's name needs no quoting inside
  // quotes: valid_queue_schema).
  std::string setup_sql(bool synchronous) const override
  {
    return
      "SET search_path = \"" + schema + "\"; SET client_min_messages = error; "
      + fmt::format("SET lock_timeout = {}; ", std::max<int64_t>(1, options.busy_timeout_ms))
      // A process that stops talking inside a transaction (stopped, hung, its host cut off)
      // holds the groups it locked: a consume's are never in flight, so no visibility timeout
      // frees them. The server ends such a session once it has been silent for a visibility
      // timeout, rolling the transaction back, and the groups go to another receiver.
      + fmt::format("SET idle_in_transaction_session_timeout = {}; ",
                    std::max<int64_t>(1'000, options.visibility_timeout_ms))
      + "SET statement_timeout = 60000; "
      // Every statement of the queue is short: compiling one would cost more than it saves,
      // and so would starting parallel workers (about 50 ms here) for the few that count a
      // whole queue (stats, which /health and /metrics serve).
      "SET jit = off; SET max_parallel_workers_per_gather = 0; "
      // Every statement of the queue's hot paths finds its rows by key. Until autovacuum first
      // analyzes a new table the planner has no statistics and chose to read the whole queue's
      // rows (a bitmap scan on queue_id, a hash join against a sequential scan) for a few
      // keys. With those plans ruled out, one plan per statement and connection serves every
      // execution of a prepared statement (k_statements, acmo_send) and of the statements of
      // the PL/pgSQL functions: planning each of them anew cost a batch of sends about as much
      // as running it.
      "SET plan_cache_mode = force_generic_plan; SET enable_bitmapscan = off; "
      "SET enable_hashjoin = off; SET enable_mergejoin = off; "
      // A backend on glibc hands memory back to the system at the end of a transaction once
      // more than 128 kB of its heap's top is free, and takes it back page by page, a page
      // fault each, in the next: about 300 us of a receive + delete of 10 messages that takes
      // 400 us otherwise, in every session until it has once freed a block over that size (a
      // statement reading pg_stat_activity, such as the sweep's, or a large send). Allocating
      // and freeing 256 kB here, once a session, raises that point to 512 kB for it (glibc's
      // dynamic threshold), for about 2 ms; other C libraries ignore it.
      "SELECT 1 WHERE octet_length(repeat(repeat('.', 1024), 256)) < 0; "
      + (synchronous ? "SET synchronous_commit = on" : "SET synchronous_commit = off");
  }

  // The error a database exception means; `discard` says whether the connection is broken.
  Error error_of(const std::exception& e, bool& discard) const override
  {
    discard = false;
    if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr) {
      discard = true;
      return unavailable(e.what());
    }
    if (dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr) {
      discard = true;
      Error error(Errc::unavailable,
                  fmt::format("the connection to PostgreSQL at {} broke while a transaction "
                              "committed ({}); it may or may not have taken effect",
                              redact_pg_url(url), first_line(e.what())),
                  "queue.url");
      error.in_doubt = true;
      return error;
    }
    if (dynamic_cast<const pqxx::transaction_rollback*>(&e) != nullptr) {
      return Error(Errc::busy, fmt::format("PostgreSQL: {}; retry", first_line(e.what())));
    }
    if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
      const std::string& state = sql->sqlstate();
      if (state.rfind("08", 0) == 0 || state.rfind("57P", 0) == 0) {
        discard = true;
        return unavailable(e.what());
      }
      if (state == "55P03") {
        return Error(Errc::busy,
                     fmt::format("a lock of the queue stayed held for over {} ms "
                                 "(queue.busy_timeout); retry later",
                                 options.busy_timeout_ms));
      }
      if (state.rfind("53", 0) == 0 || state == "57014" || state == "25006") {
        return unavailable(e.what());
      }
      return Error(Errc::internal, pg_refused_message(url, state, e.what(), "queue.url"));
    }
    return Error(Errc::internal, fmt::format("PostgreSQL: {}", first_line(e.what())));
  }

  // Run `body(txn)` in a transaction of a pooled connection and commit it if it succeeds (a
  // returned error or a thrown one rolls it back). A transaction the server rolled back (a
  // deadlock, a serialization failure) or a connection found broken before the commit is tried
  // again, a few times.
  //
  // With Mode::one_statement the body runs exactly one statement, outside a transaction (which
  // saves the round trips of BEGIN and COMMIT): the statement commits by itself, so it must
  // leave nothing for finish(), and a connection lost while it runs leaves its outcome in
  // doubt. Mode::retried_statement is the same for a statement that may simply run again
  // after its connection was lost: a receive, whose messages, had it taken them, come back at
  // the end of their visibility timeout, as when a receive's answer is lost on its way.
  enum class Mode { transaction, synchronous, one_statement, retried_statement };

  template<typename F>
  auto run(F&& body, Mode mode = Mode::transaction)
    -> decltype(body(std::declval<PgTxn&>()))
  {
    using Result = decltype(body(std::declval<PgTxn&>()));
    Error last(Errc::internal, "no attempt made");
    for (int attempt = 0; attempt < 4; ++attempt) {
      auto got = pool->acquire();
      if (auto* failure = std::get_if<std::string>(&got)) return Unexpected(unavailable(*failure));
      auto& lease = std::get<PgConnections::Lease>(got);
      if (time_due()) ask_time(lease.conn());
      const bool outside = mode == Mode::one_statement || mode == Mode::retried_statement;
      bool committing = mode == Mode::one_statement;
      try {
        std::optional<pqxx::work> work;
        std::optional<pqxx::nontransaction> alone;
        std::optional<PgTxn> made;
        if (outside) {
          made.emplace(alone.emplace(lease.conn()));
        } else {
          made.emplace(work.emplace(lease.conn()));
        }
        PgTxn& txn = *made;
        auto& tx = txn.tx;
        if (mode == Mode::synchronous) tx.exec0("SET LOCAL synchronous_commit = on");
        txn.now = now_ms();
        Result result = body(txn);
        if (!result) return result; // tx's destructor rolls back
        if (outside && (!txn.touched_groups.empty() || !txn.emptied_groups.empty()
                        || !txn.counters.empty() || !txn.deferred_deletes.empty()
                        || txn.journal_done != 0)) {
          return Unexpected(Error(Errc::internal, "a one-statement call left work for finish()"));
        }
        finish(txn);
        committing = true;
        tx.commit();
        for (const auto& n : txn.dead_letter_log) log_dead_letter(n);
        return result;
      } catch (const std::exception& e) {
        bool discard = false;
        last = error_of(e, discard);
        if (discard || !lease.conn().is_open()) {
          lease.discard();
          pool->discard_idle();
        }
        const bool rolled_back = dynamic_cast<const pqxx::transaction_rollback*>(&e) != nullptr;
        if (committing && discard) return Unexpected(last); // in doubt
        if (!(rolled_back || (discard && !committing))) return Unexpected(last);
        std::this_thread::sleep_for(std::chrono::milliseconds(2 * (attempt + 1)));
      }
    }
    return Unexpected(last);
  }

  // Delete the messages settled and the journal row, bring the touched groups' rows up to date
  // and append the counters.
  void finish(PgTxn& txn)
  {
    if (!txn.deferred_deletes.empty() || txn.journal_done != 0) {
      PgArray seqs;
      for (int64_t seq : txn.deferred_deletes) seqs.add(seq);
      txn.deferred_deletes.clear();
      const int64_t journal = std::exchange(txn.journal_done, 0);
      const auto own = txn.counters.find(queue_id);
      if (txn.touched_groups.empty() && txn.counters.size() == 1 && own != txn.counters.end()
          && own->second.any()) {
        PgArray groups;
        for (const auto& g : txn.emptied_groups) groups.add(g);
        const Counters& c = own->second;
        txn.tx.exec_prepared(k_consume_done.name, seqs.text(), journal, queue_id, groups.text(),
                             c.sent, c.duplicates, c.received, c.deleted, c.retried, c.expired,
                             c.dead_lettered, c.redriven, c.purged);
        txn.emptied_groups.clear();
        txn.counters.clear();
        return;
      }
      if (!seqs.empty()) txn.tx.exec_prepared(k_delete.name, seqs.text());
      if (journal != 0) txn.tx.exec_prepared(k_journal_done.name, journal);
    }
    // The groups emptied too: acmo_fix_groups drops a row only when its group has no message
    // left, by a statement of its own (a group read whole may have had one sent meanwhile; see
    // k_consume_done).
    if (!txn.touched_groups.empty() || !txn.emptied_groups.empty()) {
      PgArray groups;
      for (const auto& g : txn.touched_groups) groups.add(g);
      for (const auto& g : txn.emptied_groups) groups.add(g);
      txn.tx.exec_prepared(k_fix_groups.name, queue_id, groups.text());
      txn.touched_groups.clear();
      txn.emptied_groups.clear();
    }
    for (const auto& [queue, c] : txn.counters) {
      if (!c.any()) continue;
      txn.tx.exec_prepared(
        k_count.name, queue, c.sent, c.duplicates, c.received, c.deleted, c.retried, c.expired,
        c.dead_lettered, c.redriven, c.purged);
    }
    txn.counters.clear();
  }

  void notify_waiters() override
  {
    {
      std::lock_guard lock(wake_mu);
      ++wake_generation;
    }
    wake_cv.notify_all();
  }

  // --- the listening connection ---------------------------------------------------------------

  struct Receiver final : pqxx::notification_receiver {
    Receiver(pqxx::connection& conn, const std::string& channel, Impl& impl)
      : pqxx::notification_receiver(conn, channel), m_impl(impl)
    {
    }
    void operator()(const std::string&, int) override { m_impl.notify_waiters(); }
    Impl& m_impl;
  };

  // A connection for one role of its own (sending, flushing the WAL, the consume journal): an
  // idle one of the pool, set up alike, or else a new one. `synchronous` as in setup().
  std::unique_ptr<pqxx::connection> own_connection(bool synchronous) override
  {
    if (auto conn = pool->take_idle()) {
      if (synchronous) pqxx::nontransaction(*conn).exec0("SET synchronous_commit = on");
      return conn;
    }
    auto conn = std::make_unique<pqxx::connection>(conninfo);
    setup(*conn, synchronous);
    return conn;
  }

  void start_listening()
  {
    std::call_once(listener_started, [this] {
      if (stop_fd >= 0) listener = std::thread([this] { listen_loop(); });
    });
  }

  // LISTEN on the queue's channel and wake the long polls of this process on each
  // notification; when the connection cannot be made or breaks, make it again every second
  // meanwhile the long polls poll.
  void listen_loop()
  {
    std::unique_ptr<pqxx::connection> conn;
    std::unique_ptr<Receiver> receiver;
    for (;;) {
      if (!conn) {
        try {
          conn = std::make_unique<pqxx::connection>(conninfo);
          receiver = std::make_unique<Receiver>(*conn, channel, *this);
          conn->get_notifs(); // LISTEN is sent when the receiver is made, or here
          is_listening = true;
          notify_waiters(); // a send may have come while nobody listened
        } catch (const std::exception&) {
          receiver.reset();
          conn.reset();
          is_listening = false;
        }
      }
      pollfd fds[2] = {{stop_fd, POLLIN, 0}, {conn ? conn->sock() : -1, POLLIN, 0}};
      const int n = ::poll(fds, fds[1].fd >= 0 ? 2 : 1, 1000);
      if (n > 0 && (fds[0].revents & POLLIN)) break;
      if (!conn) continue;
      try {
        if (conn->sock() < 0) throw pqxx::broken_connection("no socket");
        conn->get_notifs();
      } catch (const std::exception&) {
        is_listening = false;
        receiver.reset();
        conn.reset();
      }
    }
    is_listening = false;
    receiver.reset();
    conn.reset();
  }

  // --- operations inside a transaction ----------------------------------------------------

  // The message a row of the receive statement (ACMO_RECEIVE_SQL) delivers at `now`; its
  // content-based dedup id only when `take` (consume's work does not need it).
  static Message delivered(const pqxx::row& row, int64_t now, bool take)
  {
    Message m;
    m.group_id = row[0].as<std::string>();
    m.seq = row[1].as<int64_t>();
    m.message_id = row[2].as<std::string>();
    m.body = row[4].as<std::string>();
    if (!row[3].is_null()) {
      m.dedup_id = row[3].as<std::string>();
    } else if (take) {
      m.dedup_id = sha256_hex(m.body);
    }
    m.sent_at_ms = row[5].as<int64_t>();
    m.first_sent_at_ms = row[11].as<int64_t>();
    m.receive_count = row[7].as<int64_t>() + 1;
    m.first_received_at_ms = row[8].as<int64_t>() == 0 ? now : row[8].as<int64_t>();
    m.failures = row[9].as<int64_t>();
    m.last_error = row[10].as<std::string>();
    return m;
  }

  // A plain receive (do_receive with `take`) in one statement, k_receive_and_take, outside a
  // transaction; nullopt when a message asks for more than taking it, and nothing was done.
  std::optional<std::vector<Message>> receive_and_take(PgTxn& txn, int max,
                                                       int64_t visibility_ms, bool isolate)
  {
    uint64_t token = 0;
    while (token == 0) token = random_u64();
    auto rows = txn.tx.exec_prepared(k_receive_and_take.name, queue_id, txn.now, max,
                                     options.max_retries, isolate, txn.now + visibility_ms,
                                     static_cast<int64_t>(token));
    std::vector<Message> out;
    if (rows.empty()) return out;
    if (rows[rows.size() - 1][12].as<bool>()) return std::nullopt;
    out.reserve(rows.size());
    for (const auto& row : rows) {
      out.push_back(delivered(row, txn.now, true));
      out.back().receipt = encode_receipt(Receipt{out.back().seq, token});
    }
    return out;
  }

  // Take up to `max` messages from the fronts of the ready groups, whose rows it locks (SKIP
  // LOCKED: groups another transaction holds are passed over). With `take` they go in flight
  // for `visibility_ms` under a new receipt handle; without, they are only read (consume).
  // Exhausted messages are dead-lettered and suspects isolated as in the embedded queue. With
  // `whole`, the groups all of whose messages it returns are added to it.
  std::vector<Message> do_receive(PgTxn& txn, int max, int64_t visibility_ms, bool take,
                                  bool isolate, std::set<std::string>* whole = nullptr)
  {
    auto rows = txn.tx.exec_prepared(whole != nullptr ? k_receive.name : k_receive_plain.name,
                                     queue_id, txn.now, max, options.max_retries);
    std::vector<Message> out;
    const int64_t hidden_until = txn.now + visibility_ms;
    bool alone = false;
    PgArray take_seqs, take_tokens, busy_rows, stale_groups;
    std::string group;
    std::string group_row; // its row's ctid, locked by this transaction, so it stays
    size_t first = 0;
    bool stopped = false; // the group's run stopped before a message it could deliver
    bool group_open = false;
    int64_t group_rows = 0; // the group's messages read, all of them when under max
    uint64_t token = 0;
    auto close_group = [&] {
      if (!group_open) return;
      group_open = false;
      if (out.size() == first) {
        if (!stopped) stale_groups.add(group);
        return;
      }
      if (whole != nullptr && group_rows < max
          && static_cast<int64_t>(out.size() - first) == group_rows) {
        whole->insert(group);
      }
      if (!take) return;
      busy_rows.add(group_row);
      for (size_t i = first; i < out.size(); ++i) {
        out[i].receipt = encode_receipt(Receipt{out[i].seq, token});
        take_seqs.add(out[i].seq);
        take_tokens.add(static_cast<int64_t>(token));
      }
    };
    bool group_done = false; // stop reading this group's rows
    for (const auto& row : rows) {
      const std::string g = row[0].as<std::string>();
      if (!group_open || g != group) {
        close_group();
        if (static_cast<int>(out.size()) >= max || alone) break;
        group = g;
        group_row = row[12].as<std::string>();
        group_rows = row[13].as<int64_t>();
        group_open = true;
        first = out.size();
        stopped = false;
        group_done = false;
        token = 0;
        while (token == 0) token = random_u64();
        // A group whose row changed since the statement's start (ACMO_RECEIVE_SQL) is left
        // for the next receive.
        if (!row[14].as<bool>()) {
          stopped = true;
          group_done = true;
        }
      }
      if (group_done || row[1].is_null()) continue;
      if (static_cast<int>(out.size()) >= max || alone) {
        group_done = true;
        continue;
      }
      // A group delivers from its front and stops at its first message that is not visible.
      if (row[6].as<int64_t>() > txn.now) {
        group_done = true;
        continue;
      }
      const int64_t seq = row[1].as<int64_t>();
      const int64_t received = row[7].as<int64_t>();
      const int64_t failures = row[9].as<int64_t>();
      if (received > options.max_retries) {
        const std::string last_error = row[10].as<std::string>();
        const std::string reason = fmt::format(
          "delivered {} times and never deleted, retries exhausted (queue.max_retries = {}): {}",
          options.max_retries + 1, options.max_retries,
          last_error.empty() ? "its receivers died, hung or let the visibility timeout run out"
                             : last_error);
        const Located here{seq, g, failures};
        do_dead_letter(txn, {{&here, reason, failures, last_error, {}}});
        stopped = true;
        continue; // the messages behind it go on
      }
      if (isolate && received > failures) {
        stopped = true;
        if (!out.empty()) {
          group_done = true;
          continue;
        }
        alone = true;
      }
      out.push_back(delivered(row, txn.now, take));
      if (alone) group_done = true;
    }
    close_group();
    if (!stale_groups.empty()) {
      txn.tx.exec_prepared(k_fix_groups.name, queue_id, stale_groups.text());
    }
    if (take && !out.empty()) {
      txn.tx.exec_prepared(k_take.name, hidden_until, txn.now, take_seqs.text(),
                           take_tokens.text(), busy_rows.text(), queue_id,
                           static_cast<int64_t>(out.size()));
    }
    return out;
  }

  static Error bad_receipt()
  {
    return Error(Errc::invalid_input,
                 "the receipt handle is not one acmo issued; pass the receiptHandle exactly as "
                 "a receive returned it",
                 "receiptHandle");
  }

  static Error gone_receipt()
  {
    return Error(Errc::not_found,
                 "no message in the queue has this receipt handle: it was already deleted, "
                 "purged, dropped by retention, or moved to the DLQ",
                 "receiptHandle");
  }

  // The receipt handles decoded (nullopt for one acmo did not issue), and the sequence numbers
  // (and, when asked, the tokens) of those it did, in their order.
  static std::vector<std::optional<Receipt>> decode_all(const std::vector<std::string>& receipts,
                                                        PgArray& seqs, PgArray* tokens = nullptr)
  {
    std::vector<std::optional<Receipt>> decoded;
    decoded.reserve(receipts.size());
    for (const auto& r : receipts) {
      decoded.push_back(decode_receipt(r));
      if (!decoded.back()) continue;
      seqs.add(decoded.back()->seq);
      if (tokens != nullptr) tokens->add(static_cast<int64_t>(decoded.back()->token));
    }
    return decoded;
  }

  // Lock the messages the receipt handles name, and their groups' rows first (in name order,
  // as every writer does, so that writers never wait for each other in a cycle); each handle
  // gets its message or exactly why it names none.
  std::vector<Expected<Located>> locate_all(PgTxn& txn, const std::vector<std::string>& receipts)
  {
    std::vector<Expected<Located>> out(receipts.size(), Unexpected(bad_receipt()));
    PgArray seqs;
    const auto decoded = decode_all(receipts, seqs);
    if (seqs.empty()) return out;
    txn.tx.exec_prepared(k_lock_groups.name, seqs.text(), queue_id);
    std::map<int64_t, std::tuple<int64_t, std::string, int64_t, int64_t>> found;
    for (const auto& row : txn.tx.exec_prepared(k_lock_messages.name, seqs.text())) {
      found[row[0].as<int64_t>()] = {row[1].as<int64_t>(), row[2].as<std::string>(),
                                     row[3].as<int64_t>(), row[4].as<int64_t>()};
    }
    for (size_t i = 0; i < receipts.size(); ++i) {
      if (!decoded[i]) continue;
      auto it = found.find(decoded[i]->seq);
      if (it == found.end() || std::get<0>(it->second) != queue_id) {
        out[i] = Unexpected(gone_receipt());
        continue;
      }
      if (auto why = receipt_mismatch(static_cast<uint64_t>(std::get<2>(it->second)),
                                      decoded[i]->token)) {
        out[i] = Unexpected(std::move(*why));
        continue;
      }
      out[i] = Located{decoded[i]->seq, std::get<1>(it->second), std::get<3>(it->second)};
    }
    return out;
  }

  Expected<Located> locate(PgTxn& txn, std::string_view receipt)
  {
    return std::move(locate_all(txn, {std::string(receipt)})[0]);
  }

  // Why a receipt handle whose message was found with `token` does not name it, if it does not.
  static std::optional<Error> receipt_mismatch(uint64_t token, uint64_t handle_token)
  {
    if (token == handle_token) return std::nullopt;
    return Error(Errc::stale,
                 token == 0 ? "the receipt handle is stale: the message was released for a "
                              "retry; receive it again to get a new handle"
                            : "the receipt handle is stale: the message was received again "
                              "after this handle was issued; use the newest handle",
                 "receiptHandle");
  }

  // Delete the messages the receipt handles name, in one statement (acmo_remove, which also
  // brings their groups up to date and counts them); each handle's outcome in their order (a
  // handle given twice finds its message gone the second time).
  std::vector<Expected<void>> remove_all(PgTxn& txn, const std::vector<std::string>& receipts)
  {
    std::vector<Expected<void>> out(receipts.size(), Unexpected(bad_receipt()));
    PgArray seqs, tokens;
    const auto decoded = decode_all(receipts, seqs, &tokens);
    if (seqs.empty()) return out;
    // Each message found: its queue and receipt token. acmo_remove deleted those in this queue
    // whose token a handle gave.
    std::map<int64_t, std::pair<int64_t, uint64_t>> found;
    for (const auto& row : txn.tx.exec_prepared(k_remove.name, queue_id, seqs.text(), tokens.text())) {
      found[row[0].as<int64_t>()] = {row[1].as<int64_t>(),
                                     static_cast<uint64_t>(row[2].as<int64_t>())};
    }
    std::set<int64_t> removed;
    for (size_t i = 0; i < receipts.size(); ++i) {
      if (!decoded[i]) continue;
      auto it = found.find(decoded[i]->seq);
      if (it == found.end() || it->second.first != queue_id) {
        out[i] = Unexpected(gone_receipt());
      } else if (auto why = receipt_mismatch(it->second.second, decoded[i]->token)) {
        out[i] = Unexpected(std::move(*why));
      } else if (!removed.insert(decoded[i]->seq).second) {
        out[i] = Unexpected(gone_receipt());
      } else {
        out[i] = Expected<void>{};
      }
    }
    return out;
  }

  // Delete the messages `at` (located, so locked): at the end of the transaction (finish()).
  void remove_located(PgTxn& txn, const std::vector<const Located*>& at)
  {
    if (at.empty()) return;
    for (const auto* l : at) {
      txn.deferred_deletes.push_back(l->seq);
      txn.touched_groups.insert(l->group_id);
    }
    txn.counters[queue_id].deleted += static_cast<int64_t>(at.size());
  }

  void do_hide(PgTxn& txn, const Located& at, int64_t until, bool keep_receipt, int64_t failures,
               const std::optional<std::string>& error)
  {
    txn.tx.exec_params(
      "UPDATE messages SET visible_at = $2,"
      " receipt_token = CASE WHEN $3 THEN receipt_token ELSE 0 END, failures = $4,"
      " last_error = CASE WHEN $5 THEN $6 ELSE last_error END WHERE seq = $1",
      at.seq, until, keep_receipt, failures, error.has_value(), error.value_or(""));
    txn.touched_groups.insert(at.group_id);
  }

  // A message to dead-letter: where it is, why, its failures and last error, and the order it
  // is about (for the log; empty when none).
  struct Dying {
    const Located* at;
    std::string_view reason;
    int64_t failures;
    std::string_view error;
    std::string_view subject;
  };

  // Move `dying` to the DLQ in one statement, whatever their number (a batch of poison events
  // is one round trip, not one a message). `count_receive`: count a receive of each too, for
  // the messages of a consume, which were never in flight.
  void do_dead_letter(PgTxn& txn, const std::vector<Dying>& dying, bool count_receive = false)
  {
    if (dying.empty()) return;
    PgArray seqs, reasons, failures, errors;
    for (const Dying& d : dying) {
      seqs.add(d.at->seq);
      reasons.add(d.reason);
      failures.add(d.failures);
      errors.add(d.error);
    }
    std::map<int64_t, std::string> ids;
    for (const auto& row : txn.tx.exec_params(
           "UPDATE messages m SET queue_id = $2, dead_reason = d.reason, dead_at = $3,"
           " receipt_token = 0, visible_at = 0, failures = d.failures, last_error = d.error,"
           " receive_count = m.receive_count + CASE WHEN $4::boolean THEN 1 ELSE 0 END,"
           " first_received_at = CASE WHEN $4::boolean AND m.first_received_at = 0 THEN $3"
           " ELSE m.first_received_at END"
           " FROM unnest($1::bigint[], $5::text[], $6::bigint[], $7::text[])"
           " AS d(seq, reason, failures, error)"
           " WHERE m.seq = d.seq RETURNING m.seq, m.message_id::text",
           seqs.text(), dlq_id, txn.now, count_receive, reasons.text(), failures.text(),
           errors.text())) {
      ids[row[0].as<int64_t>()] = row[1].as<std::string>();
    }
    for (const Dying& d : dying) {
      txn.dead_letter_log.push_back({ids[d.at->seq], d.at->seq, d.at->group_id,
                                     std::string(d.subject), d.failures, std::string(d.reason)});
      ++txn.counters[queue_id].dead_lettered;
      txn.touched_groups.insert(d.at->group_id);
    }
  }

  void log_dead_letter(const PgTxn::DeadLetterNote& n) const
  {
    const std::string sequence = format_sequence(n.seq);
    std::string about = n.subject.empty() ? fmt::format("group {}", n.group)
                                          : fmt::format("order {}, group {}", n.subject, n.group);
    log::warn({"dead_lettered",
               {{"message_id", n.message_id},
                {"sequence", sequence},
                {"group", n.group},
                {"order_id", n.subject},
                {"handler", log::current_handler()},
                {"failures", n.failures},
                {"dlq", options.dlq_name},
                {"reason", n.reason}}},
              "message {} (sequence {}, {}) dead-lettered to {} after {} failure{}: {}",
              n.message_id, sequence, about, options.dlq_name, n.failures,
              n.failures == 1 ? "" : "s", n.reason);
  }

  // Run `work` and settle the messages `at` by its dispositions: delete each, or dead-letter it
  // with its reason (for consume, `never_in_flight`, counting its receive too). The work runs
  // in the transaction itself, which serves this one request: should the work fail, the error
  // goes back and the caller's transaction is rolled back whole.
  Expected<void> settle_located(PgTxn& txn, const std::vector<Located>& at,
                                const std::function<Expected<std::vector<Disposition>>()>& work,
                                bool never_in_flight)
  {
    Expected<std::vector<Disposition>> dispositions;
    try {
      if (txn.block == nullptr) throw std::logic_error("settle_located outside a transaction");
      dispositions = work();
    } catch (const pqxx::broken_connection&) {
      throw;
    } catch (const pqxx::in_doubt_error&) {
      throw;
    } catch (const pqxx::unique_violation& e) {
      // A writer outside the queue's transactions (a handler of an embedded queue on the same
      // store) made a row the work's made too: the batch is tried again, and sees it.
      dispositions = make_error(Errc::busy, fmt::format("PostgreSQL: {}; retry",
                                                        first_line(e.what())));
    } catch (const pqxx::sql_error& e) {
      bool discard = false;
      dispositions = Unexpected(error_of(e, discard));
      if (discard) throw;
    }
    if (dispositions && dispositions->size() != at.size()) {
      dispositions = make_error(Errc::internal, "the work returned a disposition count that "
                                                "differs from the message count");
    }
    if (!dispositions) return Unexpected(dispositions.error());
    std::vector<const Located*> removing;
    std::vector<Dying> dying;
    for (size_t i = 0; i < at.size(); ++i) {
      const Disposition& d = (*dispositions)[i];
      if (d.dead_letter) {
        dying.push_back({&at[i], d.reason, at[i].failures + 1, d.reason, d.subject});
      } else {
        removing.push_back(&at[i]);
      }
    }
    remove_located(txn, removing);
    do_dead_letter(txn, dying, never_in_flight);
    return {};
  }

  // The statement that locks the rows of the queue's ($1) groups named by `names` (a query of
  // one column), in name order, making rows (head k_none) for those that have none;
  // acmo_fix_groups at the end of the transaction sets them right or drops them.
  static std::string lock_groups_sql(const std::string& names)
  {
    return "INSERT INTO message_groups AS g (queue_id, group_id, head_seq, ready_at)"
           " SELECT $1, s.x, 9223372036854775807, 9223372036854775807"
           " FROM (" + names + ") AS s(x) ORDER BY s.x"
           " ON CONFLICT (queue_id, group_id) DO UPDATE SET head_seq = g.head_seq";
  }

  // Lock the rows of `groups` of the queue (lock_groups_sql).
  void lock_groups_for_insert(PgTxn& txn, const std::set<std::string>& groups)
  {
    if (groups.empty()) return;
    PgArray names;
    for (const auto& g : groups) names.add(g);
    txn.tx.exec_params(lock_groups_sql("SELECT unnest($2::text[])"), queue_id, names.text());
  }

  // acmo queue move: take in a part of the messages of the queue (or, with `dead`, of its DLQ),
  // skipping those an earlier run moved, and count them in `result`.
  Expected<void> move_chunk(PgTxn& txn, const std::vector<Message>& chunk, bool dead,
                            MoveResult& result)
  {
    // What an earlier run moved: skipped, by message id.
    PgArray chunk_ids;
    for (const auto& m : chunk) chunk_ids.add(m.message_id);
    std::set<std::string> moved_before;
    for (const auto& row : txn.tx.exec_params(
           "SELECT message_id::text FROM moved_messages WHERE message_id = ANY($1::uuid[])",
           chunk_ids.text())) {
      moved_before.insert(row[0].as<std::string>());
    }
    PgArray seqs, queues, group_ids, ids, dedup_ids, bodies, sent, first_sent, visible,
      receives, first_received, failures, errors, reasons, dead_at;
    for (const Message& m : chunk) {
      if (moved_before.count(m.message_id)) {
        ++result.skipped;
        continue;
      }
      ++(dead ? result.dead : result.messages);
      seqs.add(m.seq);
      queues.add(dead ? dlq_id : queue_id);
      group_ids.add(m.group_id);
      ids.add(m.message_id);
      // A content-based id (the body's SHA-256) is kept as NULL, as acmo_send keeps it.
      dedup_ids.add(m.dedup_id == sha256_hex(m.body) ? std::string_view() : m.dedup_id);
      bodies.add(m.body);
      sent.add(m.sent_at_ms);
      first_sent.add(m.first_sent_at_ms);
      visible.add(m.visible_at_ms);
      receives.add(m.receive_count);
      first_received.add(m.first_received_at_ms);
      failures.add(m.failures);
      errors.add(m.last_error);
      reasons.add(m.dead_reason);
      // Every message of a DLQ has a time of dead-lettering: messages_dead_by_id holds those.
      dead_at.add(dead ? std::max<int64_t>(m.dead_at_ms, 1) : m.dead_at_ms);
    }
    if (seqs.empty()) return {};
    // A sequence number the queue already uses for another message: this is not the queue
    // the messages came from, or not an empty one.
    const auto taken = txn.tx.exec_params(
      "SELECT m.seq, m.message_id::text FROM messages m WHERE m.seq = ANY($1::bigint[]) LIMIT 1",
      seqs.text());
    if (!taken.empty()) {
      return make_error(Errc::conflict,
                        fmt::format("the PostgreSQL queue already holds sequence number {} "
                                    "(message {}): acmo queue move moves an embedded queue "
                                    "into a schema that has no messages of another queue; "
                                    "name another queue.schema",
                                    format_sequence(taken[0][0].as<int64_t>()),
                                    taken[0][1].as<std::string>()),
                        "queue.schema");
    }
    txn.tx.exec_params(
      "INSERT INTO messages (seq, queue_id, group_id, message_id, dedup_id, body, sent_at,"
      " first_sent_at, visible_at, receive_count, first_received_at, failures, last_error,"
      " dead_reason, dead_at)"
      " SELECT t.seq, t.q, t.g, t.id, NULLIF(t.d, ''), t.b, t.s, NULLIF(t.fs, t.s), t.v, t.rc,"
      " t.fr, t.f, t.e, t.r, t.da"
      " FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::uuid[], $5::text[], $6::text[],"
      " $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[],"
      " $13::text[], $14::text[], $15::bigint[])"
      " AS t(seq, q, g, id, d, b, s, fs, v, rc, fr, f, e, r, da)",
      seqs.text(), queues.text(), group_ids.text(), ids.text(), dedup_ids.text(), bodies.text(),
      sent.text(), first_sent.text(), visible.text(), receives.text(), first_received.text(),
      failures.text(), errors.text(), reasons.text(), dead_at.text());
    txn.tx.exec_params("INSERT INTO moved_messages (message_id, moved_at)"
                       " SELECT x, $2 FROM unnest($1::uuid[]) AS x",
                       ids.text(), txn.now);
    return {};
  }

  // Move the dead-lettered messages `chosen` (seq, group; oldest first) back to the queue,
  // each to the back of its group under a new sequence number.
  void move_back(PgTxn& txn, const std::vector<std::pair<int64_t, std::string>>& chosen)
  {
    if (chosen.empty()) return;
    std::set<std::string> groups;
    for (const auto& c : chosen) groups.insert(c.second);
    lock_groups_for_insert(txn, groups);
    // New sequence numbers, drawn after the groups are locked, oldest message first.
    std::vector<int64_t> fresh;
    for (const auto& row : txn.tx.exec_params(
           "SELECT nextval('message_seq') FROM generate_series(1, $1::bigint)",
           static_cast<int64_t>(chosen.size()))) {
      fresh.push_back(row[0].as<int64_t>());
    }
    std::sort(fresh.begin(), fresh.end());
    PgArray seqs, new_seqs;
    for (size_t i = 0; i < chosen.size(); ++i) {
      seqs.add(chosen[i].first);
      new_seqs.add(fresh[i]);
    }
    txn.tx.exec_params(
      "UPDATE messages m SET seq = t.n, queue_id = $3, visible_at = $4, sent_at = $4,"
      " first_sent_at = coalesce(m.first_sent_at, m.sent_at), receipt_token = 0,"
      " receive_count = 0, first_received_at = 0, failures = 0, dead_reason = '', dead_at = 0"
      " FROM unnest($1::bigint[], $2::bigint[]) AS t(s, n) WHERE m.seq = t.s",
      seqs.text(), new_seqs.text(), queue_id, txn.now);
    for (const auto& g : groups) txn.touched_groups.insert(g);
    txn.counters[queue_id].redriven += static_cast<int64_t>(chosen.size());
  }

  // The server process that runs `tx`'s statements, asked of the server once a connection.
  // A connection keeps its server process for its life, through a pooler in session mode too.
  int server_pid(pqxx::transaction_base& tx)
  {
    const int client_side = tx.conn().backendpid();
    {
      std::lock_guard lock(pids_mu);
      if (auto it = server_pids.find(client_side); it != server_pids.end()) return it->second;
    }
    const int pid = tx.exec1("SELECT pg_backend_pid()")[0].as<int>();
    std::lock_guard lock(pids_mu);
    // One entry a connection ever made: a process makes few, but one that kept losing its
    // server could make many.
    if (server_pids.size() >= 1'000) server_pids.clear();
    server_pids[client_side] = pid;
    return pid;
  }

  // Say, in a transaction of its own committed at once, that the consume whose transaction runs
  // on backend `pid` is handling `got`. The journal row's id, or nothing when it cannot be
  // written (the work runs all the same: the journal only guards against a consumer's death).
  std::optional<int64_t> journal_begin(int pid, const std::vector<Message>& got)
  {
    PgArray seqs;
    for (const auto& m : got) seqs.add(m.seq);
    std::lock_guard lock(journal_mu);
    try {
      if (!journal_conn) journal_conn = own_connection(false);
      pqxx::nontransaction tx(*journal_conn);
      auto rows = tx.exec_prepared(k_journal_begin.name, queue_id, pid, static_cast<int64_t>(::getpid()), seqs.text());
      if (rows.empty()) return std::nullopt;
      return rows[0][0].as<int64_t>();
    } catch (const std::exception&) {
      journal_conn.reset();
      return std::nullopt;
    }
  }

  // Drop the journal row of a consume whose work failed while its process lives on.
  void journal_drop(int64_t id)
  {
    std::lock_guard lock(journal_mu);
    try {
      if (!journal_conn) journal_conn = own_connection(false);
      pqxx::nontransaction tx(*journal_conn);
      tx.exec_prepared(k_journal_done.name, id);
    } catch (const std::exception&) {
      journal_conn.reset(); // the row stays: the sweep counts one delivery too many
    }
  }

  // Count a delivery of each message that a consumer which died with it in hand was handling
  // (its journal row outlived its backend) and that is still where it was taken from: a
  // suspect now, and dead-lettered by a receive once there are too many.
  //
  // A backend is the row's while it runs with the start the row names. PostgreSQL shows the
  // start of another role's backends only to a member of that role or of pg_read_all_stats:
  // a backend of the row's pid whose start this role may not see is taken to be the row's, so
  // that one role's sweep never counts against the messages another role's consumer is
  // handling (a pid reused meanwhile keeps the row until that backend ends).
  void recover_orphans(PgTxn& txn)
  {
    txn.tx.exec_params(
      "WITH dead AS (DELETE FROM consume_journal j WHERE j.queue_id = $1 AND NOT EXISTS"
      " (SELECT 1 FROM pg_stat_activity a WHERE a.pid = j.pid"
      " AND (a.backend_start = j.started OR a.backend_start IS NULL))"
      " RETURNING j.client_pid, j.seqs)"
      " UPDATE messages m SET receive_count = m.receive_count + 1,"
      " last_error = 'the process handling it (pid ' || d.client_pid"
      " || ') died before it was settled',"
      " first_received_at = CASE WHEN m.first_received_at = 0 THEN $2"
      " ELSE m.first_received_at END"
      " FROM (SELECT client_pid, unnest(seqs) AS seq FROM dead) d"
      " WHERE m.seq = d.seq AND m.queue_id = $1 AND m.receipt_token = 0",
      queue_id, txn.now);
  }

  SweepResult do_sweep(PgTxn& txn)
  {
    // Each statement of the sweep reads only what it acts on, through an index: plans made from
    // statistics taken while the tables were small read every message and every dedup row at
    // each sweep (a sequential scan, or all the queue's messages by group and a sort). "queue_id
    // + 0" below keeps the planner off the indexes that lead with queue_id, which hold every
    // row of the queue, for the ones in sequence and expiry order.
    txn.tx.exec0("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off");
    recover_orphans(txn);
    SweepResult result;
    const int64_t cutoff = txn.now - options.retention_ms;
    // Messages past retention, a bounded number at a time, in groups no one holds now.
    // Sequence order is send order (a redrive draws new numbers), so they are the oldest
    // messages up to the first one still within retention: only those are read, through the
    // primary key, where a search by sent_at read every message of the queue at each sweep.
    for (int round = 0; round < 20; ++round) {
      auto rows = txn.tx.exec_params(
        "WITH first AS (SELECT seq, queue_id, group_id, sent_at FROM messages"
        " WHERE queue_id + 0 IN ($1, $2) ORDER BY seq LIMIT 512),"
        " old AS (SELECT seq, queue_id, group_id FROM first WHERE seq < coalesce("
        " (SELECT min(seq) FROM first WHERE sent_at >= $3), 9223372036854775807)),"
        " locked AS (SELECT g.group_id FROM message_groups g WHERE g.queue_id = $1"
        " AND g.group_id IN (SELECT group_id FROM old WHERE queue_id = $1)"
        " ORDER BY g.group_id FOR UPDATE SKIP LOCKED)"
        " DELETE FROM messages m USING old WHERE m.seq = old.seq"
        " AND (old.queue_id = $2 OR old.group_id IN (SELECT group_id FROM locked))"
        " RETURNING m.queue_id, m.group_id",
        queue_id, dlq_id, cutoff);
      for (const auto& row : rows) {
        const int64_t queue = row[0].as<int64_t>();
        ++txn.counters[queue].expired;
        if (queue == queue_id) txn.touched_groups.insert(row[1].as<std::string>());
      }
      result.expired += static_cast<int64_t>(rows.size());
      if (rows.size() < 512) break;
    }
    auto dedup = txn.tx.exec_params(
      "DELETE FROM dedup WHERE queue_id + 0 IN ($1, $2) AND expires_at <= $3", queue_id, dlq_id,
      txn.now);
    result.dedup_removed = static_cast<int64_t>(dedup.affected_rows());
    // Fold the counters' rows into one per queue.
    txn.tx.exec_params(
      "WITH gone AS (DELETE FROM queue_counters WHERE queue_id IN ($1, $2) RETURNING *)"
      " INSERT INTO queue_counters SELECT queue_id, sum(sent), sum(duplicates), sum(received),"
      " sum(deleted), sum(retried), sum(expired), sum(dead_lettered), sum(redriven), sum(purged)"
      " FROM gone GROUP BY queue_id",
      queue_id, dlq_id);
    return result;
  }
};

// --- opening ---------------------------------------------------------------------------------

namespace {

// Create or migrate the schema, one migrator at a time per schema.
Expected<void> migrate(pqxx::connection& conn, const std::string& schema)
{
  pqxx::work tx(conn);
  tx.exec0("SET LOCAL client_min_messages = warning");
  tx.exec_params("SELECT pg_advisory_xact_lock(hashtext('acmo queue schema ' || $1))", schema);
  // CREATE SCHEMA IF NOT EXISTS asks for the right to create schemas even when the schema is
  // there: a role that owns the schema it was given, with no right on the database, could not
  // use it.
  if (tx.exec_params("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema).empty()) {
    tx.exec0("CREATE SCHEMA " + tx.quote_name(schema));
  }
  tx.exec0("SET LOCAL search_path = " + tx.quote_name(schema));
  tx.exec0("CREATE TABLE IF NOT EXISTS queue_schema_version (version integer NOT NULL)");
  const int version =
    tx.exec1("SELECT coalesce(max(version), 0) FROM queue_schema_version")[0].as<int>();
  const auto& steps = pg_schema::migrations();
  const int latest = static_cast<int>(steps.size());
  if (version > latest) {
    return make_error(Errc::conflict,
                      fmt::format("the PostgreSQL schema {} holds acmo queue schema version {}, "
                                  "newer than this acmo knows ({}); upgrade acmo",
                                  schema, version, latest),
                      "queue.schema");
  }
  if (version < latest) {
    for (int v = version; v < latest; ++v) tx.exec0(steps[static_cast<size_t>(v)]);
    tx.exec0("DELETE FROM queue_schema_version");
    tx.exec0(fmt::format("INSERT INTO queue_schema_version (version) VALUES ({})", latest));
  }
  tx.commit();
  return {};
}

// Every open but the first finds the schema current and both queues' rows there: then the
// session's settings, the schema's version and the queues' ids take one round trip, where
// creating or migrating (migrate, ensure_queue) takes about fifteen. False when any of them
// is not so (no schema or table yet: the failed statement changed nothing, its settings
// included), and the caller takes the long way.
bool open_current(pqxx::connection& conn, const std::string& setup, const std::string& queue,
                  const std::string& dlq, int64_t& queue_id, int64_t& dlq_id)
{
  pqxx::nontransaction tx(conn);
  pqxx::result r;
  try {
    r = tx.exec(setup + "; SELECT (SELECT max(version) FROM queue_schema_version), "
                "(SELECT id FROM queues WHERE name = " + tx.quote(queue) + "), "
                "(SELECT id FROM queues WHERE name = " + tx.quote(dlq) + ")");
  } catch (const pqxx::undefined_table&) {
    return false;
  }
  const auto row = r.at(0);
  const int latest = static_cast<int>(pg_schema::migrations().size());
  if (row[0].is_null() || row[0].as<int>() != latest || row[1].is_null() || row[2].is_null()) {
    return false;
  }
  queue_id = row[1].as<int64_t>();
  dlq_id = row[2].as<int64_t>();
  return true;
}

int64_t ensure_queue(pqxx::connection& conn, const std::string& name, int64_t now)
{
  pqxx::work tx(conn);
  tx.exec_params("INSERT INTO queues (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO "
                 "NOTHING",
                 name, now);
  const int64_t id = tx.exec_params1("SELECT id FROM queues WHERE name = $1", name)[0].as<int64_t>();
  tx.commit();
  return id;
}

} // namespace

PgQueue::PgQueue(std::unique_ptr<Impl> impl, QueueOptions options)
  : Queue(std::move(options)), m_impl(std::move(impl))
{
}

PgQueue::~PgQueue() = default;

Expected<pqxx::transaction_base*> pg_transaction(QueueTransaction& txn)
{
  if (auto* t = dynamic_cast<PgTransaction*>(&txn)) return &t->tx();
  return make_error(Errc::internal,
                    fmt::format("work for the PostgreSQL queue's transaction was given a {} "
                                "queue's transaction",
                                txn.backend()));
}

bool valid_queue_schema(std::string_view name)
{
  if (name.empty() || name.size() > 63) return false;
  if (!(std::islower(static_cast<unsigned char>(name[0])) || name[0] == '_')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c))
           || c == '_';
  });
}

Expected<std::unique_ptr<PgQueue>> PgQueue::open(const std::string& url, const std::string& schema,
                                                 QueueOptions options, const Clock& clock)
{
  if (auto ok = check_queue_options(options); !ok) return Unexpected(ok.error());
  if (url.empty()) {
    return make_error(Errc::invalid_input,
                      "queue.url is empty; set it to the PostgreSQL server's URL, e.g. "
                      "postgresql://acmo@127.0.0.1:5432/acmo",
                      "queue.url");
  }
  if (!valid_queue_schema(schema)) {
    return make_error(Errc::invalid_input,
                      fmt::format("queue.schema \"{}\" is not a schema name acmo takes: 1 to 63 "
                                  "lower-case letters, digits and _, not starting with a digit",
                                  schema),
                      "queue.schema");
  }
  auto impl = std::make_unique<Impl>(clock, options);
  impl->url = url;
  impl->schema = schema;
  impl->conninfo = queue_connection_string(url);
  impl->channel = "acmo_queue_" + sha256_hex(schema + "." + options.name).substr(0, 24);
  Impl* raw = impl.get();
  impl->pool = std::make_unique<PgConnections>(
    impl->conninfo, [raw](pqxx::connection& c) { raw->setup(c, false); },
    std::max<int64_t>(options.busy_timeout_ms, 1'000));
  // The connection that migrates becomes the pool's first: each connection costs the server
  // a process and its start, about as long as the rest of a command like `acmo stats`. The
  // queues' rows are committed without waiting for the disk, as a pooled connection does; a
  // send's durable commit covers them.
  try {
    auto conn = std::make_unique<pqxx::connection>(impl->conninfo);
    if (open_current(*conn, impl->setup_sql(false), options.name, options.dlq_name,
                     impl->queue_id, impl->dlq_id)) {
      impl->ask_time(*conn);
      impl->prepare(*conn);
    } else {
      {
        pqxx::nontransaction tx(*conn);
        tx.exec0("SET client_min_messages = error");
      }
      if (auto ok = migrate(*conn, schema); !ok) return Unexpected(ok.error());
      impl->setup(*conn, false);
      impl->ask_time(*conn);
      impl->queue_id = ensure_queue(*conn, options.name, impl->now_ms());
      impl->dlq_id = ensure_queue(*conn, options.dlq_name, impl->now_ms());
    }
    impl->pool->adopt(std::move(conn));
  } catch (const std::exception& e) {
    bool discard = false;
    return Unexpected(impl->error_of(e, discard));
  }
  impl->stop_fd = ::eventfd(0, EFD_CLOEXEC);
  impl->sender = std::make_unique<PgSender>(
    *impl, PgSender::Target{url, impl->conninfo, impl->channel, impl->queue_id, options});
  return std::unique_ptr<PgQueue>(new PgQueue(std::move(impl), std::move(options)));
}

bool PgQueue::listening() const { return m_impl->is_listening.load(); }

int64_t PgQueue::now_ms() const { return m_impl->now_ms(); }

// --- sending -------------------------------------------------------------------------------------

Expected<SendResult> PgQueue::send(const SendRequest& request)
{
  m_impl->keep_time();
  auto results = m_impl->sender->send(&request, 1);
  return std::move(results[0]);
}

Expected<std::vector<Expected<SendResult>>>
PgQueue::send_batch(const std::vector<SendRequest>& requests)
{
  if (requests.empty() || requests.size() > limits::k_max_batch) {
    return make_error(Errc::invalid_input,
                      fmt::format("a batch holds 1 to {} entries, not {}; split it",
                                  limits::k_max_batch, requests.size()),
                      "entries");
  }
  m_impl->keep_time();
  return m_impl->sender->send(requests.data(), requests.size());
}

std::vector<Expected<SendResult>> PgQueue::send_bulk(const std::vector<SendRequest>& requests)
{
  m_impl->keep_time();
  return m_impl->sender->send_bulk(requests);
}

// --- receiving -----------------------------------------------------------------------------------

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

Expected<void> PgQueue::poll(int64_t wait_ms, const std::function<Expected<bool>(bool)>& attempt)
{
  auto& impl = *m_impl;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  bool first_try = true;
  int64_t ready_at = 0; // when the probe found the first group ready; 0 unknown
  for (;;) {
    uint64_t generation;
    {
      std::lock_guard lock(impl.wake_mu);
      if (impl.interrupted) return {};
      generation = impl.wake_generation;
    }
    const int64_t now = impl.now_ms();
    if (now - impl.last_sweep_ms.load() >= impl.options.housekeeping_interval_ms) {
      impl.last_sweep_ms = now;
      if (auto swept = sweep(); !swept) return Unexpected(swept.error());
    }
    bool worth_trying = first_try;
    if (!first_try) {
      auto probed = impl.run([&](PgTxn& txn) -> Expected<int64_t> {
        auto row = txn.tx.exec_prepared1(k_probe.name, impl.queue_id);
        return row[0].as<int64_t>();
      }, Impl::Mode::one_statement);
      if (!probed) return Unexpected(probed.error());
      ready_at = *probed;
      worth_trying = ready_at != 0 && ready_at <= now;
    }
    if (worth_trying) {
      auto got = attempt(first_try);
      first_try = false;
      if (!got) return Unexpected(got.error());
      if (*got) return {};
      ready_at = 0;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now())
                        .count();
    if (left <= 0 || !impl.clock.is_real()) return {};
    impl.start_listening();
    int64_t nap = impl.is_listening ? k_listening_nap_ms : impl.options.poll_interval_ms;
    if (ready_at > now) nap = std::min(nap, ready_at - now);
    nap = std::min<int64_t>(nap, left);
    std::unique_lock lock(impl.wake_mu);
    impl.wake_cv.wait_for(lock, std::chrono::milliseconds(std::max<int64_t>(nap, 1)), [&] {
      return impl.interrupted || impl.wake_generation != generation;
    });
  }
}

Expected<std::vector<Message>> PgQueue::receive(int max, std::optional<int64_t> visibility_ms,
                                                int64_t wait_ms, bool isolate_suspects)
{
  std::vector<Expected<void>> none;
  return remove_and_receive({}, none, max, visibility_ms, wait_ms, isolate_suspects);
}

Expected<std::vector<Message>> PgQueue::remove_and_receive(const std::vector<std::string>& done,
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
    const bool removing = first_try && !done.empty();
    if (!removing) {
      auto fast = impl.run([&](PgTxn& txn) -> Expected<std::optional<std::vector<Message>>> {
        return impl.receive_and_take(txn, max, visibility, isolate_suspects);
      }, Impl::Mode::retried_statement);
      if (!fast) return Unexpected(fast.error());
      if (*fast) {
        got = std::move(**fast);
        return !got.empty();
      }
    }
    auto ok = impl.run([&](PgTxn& txn) -> Expected<void> {
      if (removing) {
        deleted = impl.remove_all(txn, done);
        impl.finish(txn);
      }
      got = impl.do_receive(txn, max, visibility, true, isolate_suspects);
      return {};
    });
    if (!ok) {
      if (removing) {
        for (auto& d : deleted) d = Unexpected(ok.error());
      }
      return Unexpected(ok.error());
    }
    if (removing) impl.notify_waiters();
    return !got.empty();
  });
  if (!polled) return Unexpected(polled.error());
  return got;
}

Expected<std::vector<Message>> PgQueue::consume(int max, int64_t wait_ms, const ConsumeWork& work)
{
  if (auto ok = check_receive(max, wait_ms); !ok) return Unexpected(ok.error());
  auto& impl = *m_impl;
  std::vector<Message> got;
  auto polled = poll(wait_ms, [&](bool) -> Expected<bool> {
    std::optional<int64_t> journaled; // the last attempt's journal row
    bool work_failed = false;         // and its work failed with the process alive
    auto ok = impl.run([&](PgTxn& txn) -> Expected<void> {
      work_failed = false;
      std::set<std::string> whole;
      got = impl.do_receive(txn, max, 0, false, true, &whole);
      if (got.empty()) return {};
      std::vector<Located> at;
      at.reserve(got.size());
      for (const auto& m : got) at.push_back(Located{m.seq, m.group_id, m.failures});
      // Should this process die in the work, its journal row outlives its backend and the
      // attempt is counted (recover_orphans); committing deletes the row with the messages.
      journaled = impl.journal_begin(impl.server_pid(txn.tx), got);
      auto settled = impl.settle_located(txn, at, [&] {
        PgTransaction t(txn.tx);
        return work(t, got);
      }, true);
      if (!settled) {
        work_failed = true;
        return settled;
      }
      if (journaled) txn.journal_done = *journaled;
      txn.counters[impl.queue_id].received += static_cast<int64_t>(got.size());
      // Every message these groups had as the receive read them was deleted or dead-lettered under
      // their rows' locks; finish() looks again before it drops a row.
      for (const auto& g : whole) {
        if (txn.touched_groups.erase(g) > 0) txn.emptied_groups.insert(g);
      }
      return {};
    });
    if (!ok && work_failed && journaled) impl.journal_drop(*journaled);
    if (!ok) return Unexpected(ok.error());
    if (!got.empty()) impl.notify_waiters();
    return !got.empty();
  });
  if (!polled) return Unexpected(polled.error());
  return got;
}

Expected<void> PgQueue::remove(std::string_view receipt)
{
  auto results = remove_batch({std::string(receipt)});
  return results[0];
}

std::vector<Expected<void>> PgQueue::remove_batch(const std::vector<std::string>& receipts)
{
  std::vector<Expected<void>> results(receipts.size());
  auto ok = m_impl->run([&](PgTxn& txn) -> Expected<void> {
    results = m_impl->remove_all(txn, receipts);
    return {};
  }, Impl::Mode::one_statement);
  if (!ok) {
    for (auto& r : results) r = Unexpected(ok.error());
  } else {
    m_impl->notify_waiters();
  }
  return results;
}

Expected<void> PgQueue::change_visibility(std::string_view receipt, int64_t timeout_ms)
{
  if (timeout_ms < 0 || timeout_ms > k_max_visibility_ms) {
    return make_error(Errc::invalid_input,
                      "the visibility timeout must be between 0 and 43200 s (12 h)",
                      "visibilityTimeout");
  }
  auto ok = m_impl->run([&](PgTxn& txn) -> Expected<void> {
    auto at = m_impl->locate(txn, receipt);
    if (!at) return Unexpected(at.error());
    m_impl->do_hide(txn, *at, txn.now + timeout_ms, true, at->failures, std::nullopt);
    return {};
  });
  if (ok) m_impl->notify_waiters();
  return ok;
}

Expected<ReleaseOutcome> PgQueue::release(std::string_view receipt, std::string_view error,
                                          std::string_view subject)
{
  auto result = m_impl->run([&](PgTxn& txn) -> Expected<ReleaseOutcome> {
    auto at = m_impl->locate(txn, receipt);
    if (!at) return Unexpected(at.error());
    ReleaseOutcome outcome;
    outcome.attempt = at->failures + 1;
    if (outcome.attempt > m_options.max_retries) {
      outcome.dead_lettered = true;
      auto reason = fmt::format("failed {} time{}, retries exhausted (queue.max_retries = {}): {}",
                                outcome.attempt, outcome.attempt == 1 ? "" : "s",
                                m_options.max_retries, error);
      m_impl->do_dead_letter(txn, {{&*at, reason, outcome.attempt, error, subject}});
    } else {
      const auto& delays = m_options.retry_delays_ms;
      if (!delays.empty()) {
        auto index = std::min(static_cast<size_t>(outcome.attempt - 1), delays.size() - 1);
        outcome.retry_in_ms = delays[index];
      }
      m_impl->do_hide(txn, *at, txn.now + outcome.retry_in_ms, false, outcome.attempt,
                      std::string(error));
      ++txn.counters[m_impl->queue_id].retried;
    }
    return outcome;
  });
  if (result) m_impl->notify_waiters();
  return result;
}

Expected<void> PgQueue::dead_letter(std::string_view receipt, std::string_view reason,
                                    std::string_view subject)
{
  auto ok = m_impl->run([&](PgTxn& txn) -> Expected<void> {
    auto at = m_impl->locate(txn, receipt);
    if (!at) return Unexpected(at.error());
    m_impl->do_dead_letter(txn, {{&*at, reason, at->failures + 1, reason, subject}});
    return {};
  });
  if (ok) m_impl->notify_waiters();
  return ok;
}

Expected<void> PgQueue::settle(const std::vector<std::string>& receipts, const SettleWork& work)
{
  auto ok = m_impl->run([&](PgTxn& txn) -> Expected<void> {
    auto located = m_impl->locate_all(txn, receipts);
    std::vector<Located> at;
    for (auto& l : located) {
      if (!l) return Unexpected(l.error());
      at.push_back(std::move(*l));
    }
    return m_impl->settle_located(txn, at, [&] {
      PgTransaction t(txn.tx);
      return work(t);
    }, false);
  });
  if (ok) m_impl->notify_waiters();
  return ok;
}

// --- reads ----------------------------------------------------------------------------------

Expected<std::optional<Message>> PgQueue::find(int64_t seq)
{
  return m_impl->run([&](PgTxn& txn) -> Expected<std::optional<Message>> {
    auto rows = txn.tx.exec_params("SELECT " + k_message_columns
                                     + " FROM messages WHERE seq = $1 AND queue_id IN ($2, $3)",
                                   seq, m_impl->queue_id, m_impl->dlq_id);
    if (rows.empty()) return std::optional<Message>();
    return std::optional<Message>(read_message(rows[0]));
  });
}

Expected<std::vector<Message>> PgQueue::peek(const PeekFilter& filter)
{
  // A filter by body field: the bodies that hold the value's text at all are read a page at a
  // time, and parsed here; only a string field equal to the value matches.
  const auto matches = [&](const std::string& body) {
    if (filter.field.empty()) return true;
    auto j = nlohmann::json::parse(body, nullptr, false);
    if (!j.is_object()) return false;
    auto it = j.find(filter.field);
    return it != j.end() && it->is_string() && it->get_ref<const std::string&>() == filter.value;
  };
  const std::string order = filter.newest_first ? "DESC" : "";
  const std::string sql = "SELECT " + k_message_columns
                          + " FROM messages WHERE queue_id = $1 AND ($2::text = '' OR group_id = $2::text)"
                            " AND ($3::text = '' OR strpos(body, $3::text) > 0) AND seq "
                          + (filter.newest_first ? "< $4" : "> $4") + " ORDER BY seq " + order
                          + " LIMIT $5";
  return m_impl->run([&](PgTxn& txn) -> Expected<std::vector<Message>> {
    std::vector<Message> out;
    if (filter.limit <= 0) return out;
    int64_t after = filter.newest_first ? std::numeric_limits<int64_t>::max() : 0;
    const int64_t page = filter.field.empty() ? filter.limit : 500;
    while (static_cast<int64_t>(out.size()) < filter.limit) {
      auto rows = txn.tx.exec_params(sql, m_impl->queue_id, filter.group_id,
                                     filter.field.empty() ? std::string() : filter.value, after,
                                     page);
      for (const auto& row : rows) {
        Message m = read_message(row);
        after = m.seq;
        if (!matches(m.body)) continue;
        out.push_back(std::move(m));
        if (static_cast<int64_t>(out.size()) >= filter.limit) break;
      }
      if (static_cast<int64_t>(rows.size()) < page) break;
    }
    return out;
  });
}

Expected<GroupsReport> PgQueue::groups(const GroupsFilter& filter)
{
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
  report.now_ms = m_impl->now_ms();
  auto ok = m_impl->run([&](PgTxn& txn) -> Expected<void> {
    std::vector<GroupView> kept;
    auto rows = txn.tx.exec_params(
      "SELECT c.group_id, c.depth, c.in_flight, h.seq, h.message_id::text,"
      " coalesce(h.first_sent_at, h.sent_at), h.visible_at, h.receipt_token <> 0"
      " FROM (SELECT group_id, count(*) AS depth,"
      " count(*) FILTER (WHERE visible_at > $2 AND receipt_token <> 0) AS in_flight,"
      " min(seq) AS head FROM messages WHERE queue_id = $1 GROUP BY group_id) c"
      " JOIN messages h ON h.seq = c.head",
      m_impl->queue_id, report.now_ms);
    for (const auto& row : rows) {
      GroupView g;
      g.group_id = row[0].as<std::string>();
      g.depth = row[1].as<int64_t>();
      g.in_flight = row[2].as<int64_t>();
      g.head_seq = row[3].as<int64_t>();
      g.head_message_id = row[4].as<std::string>();
      g.head_first_sent_at_ms = row[5].as<int64_t>();
      g.head_visible_at_ms = row[6].as<int64_t>();
      if (g.head_visible_at_ms > report.now_ms) {
        g.blocked = row[7].as<bool>() ? GroupBlock::in_flight : GroupBlock::retry_delay;
      }
      ++report.total_groups;
      report.total_messages += g.depth;
      report.total_in_flight += g.in_flight;
      if (g.blocked != GroupBlock::none) ++report.total_blocked;
      if (filter.blocked_only && g.blocked == GroupBlock::none) continue;
      ++report.matched;
      kept.push_back(std::move(g));
      if (kept.size() >= 2 * limit + 64) {
        std::nth_element(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(limit),
                         kept.end(), worry_first);
        kept.resize(limit);
      }
    }
    std::sort(kept.begin(), kept.end(), worry_first);
    if (kept.size() > limit) kept.resize(limit);
    report.groups = std::move(kept);
    return {};
  });
  if (!ok) return Unexpected(ok.error());
  return report;
}

// The DLQ's messages that match a DlqFilter: $1 the DLQ, $2 the reason ('' any), $3 the latest
// and $4 the earliest time of dead-lettering to match (-1: any). lower() folds ASCII as the
// embedded queue does for every reason acmo writes.
static const std::string k_dlq_match =
  " queue_id = $1::bigint AND ($2::text = '' OR strpos(lower(dead_reason), lower($2::text)) > 0)"
  " AND ($3::bigint < 0 OR dead_at <= $3::bigint) AND ($4::bigint < 0 OR dead_at > $4::bigint)";

// The DLQ's filters are planned for their arguments: a plan for any arguments (the queue's
// connections keep generic plans) reads the whole DLQ, where one for "dead_at > a time" reads
// only the messages dead-lettered since, by messages_dead_by_time.
static void plan_for_arguments(PgTxn& txn)
{
  txn.tx.exec0("SET LOCAL plan_cache_mode = force_custom_plan");
}

static int64_t latest_of(const DlqFilter& f, int64_t now)
{
  return f.older_than_ms >= 0 ? now - f.older_than_ms : -1;
}

static int64_t earliest_of(const DlqFilter& f, int64_t now)
{
  return f.newer_than_ms >= 0 ? now - f.newer_than_ms : -1;
}

Expected<std::vector<Message>> PgQueue::dlq_list(int64_t limit, int64_t offset)
{
  auto page = dlq_page(limit, offset, {});
  if (!page) return Unexpected(page.error());
  return std::move(page->messages);
}

Expected<PgQueue::DlqPage> PgQueue::dlq_page(int64_t limit, int64_t offset,
                                             const DlqFilter& filter)
{
  const int64_t now = m_impl->now_ms();
  return m_impl->run([&](PgTxn& txn) -> Expected<DlqPage> {
    DlqPage page;
    plan_for_arguments(txn);
    // One statement: the page and the count in one snapshot.
    auto rows = txn.tx.exec_params(
      "SELECT c.total, p.* FROM (SELECT count(*) AS total FROM messages WHERE" + k_dlq_match
        + ") c LEFT JOIN LATERAL (SELECT " + k_message_columns + " FROM messages WHERE"
        + k_dlq_match + " ORDER BY seq LIMIT $5 OFFSET $6) p ON true",
      m_impl->dlq_id, filter.reason, latest_of(filter, now), earliest_of(filter, now), limit,
      offset);
    for (const auto& row : rows) {
      page.total = row[0].as<int64_t>();
      if (row[1].is_null()) continue;
      page.messages.push_back(read_message(row, 1));
    }
    return page;
  });
}

Expected<Message> PgQueue::dlq_show(std::string_view message_id)
{
  auto id = parse_message_id(message_id);
  auto found = m_impl->run([&](PgTxn& txn) -> Expected<std::optional<Message>> {
    if (!id) return std::optional<Message>();
    auto rows = txn.tx.exec_params("SELECT " + k_message_columns
                                     + " FROM messages WHERE message_id = $2::uuid AND dead_at > 0"
                                     " AND queue_id = $1",
                                   m_impl->dlq_id, format_message_id(*id));
    if (rows.empty()) return std::optional<Message>();
    return std::optional<Message>(read_message(rows[0]));
  });
  if (!found) return Unexpected(found.error());
  if (!*found) {
    return make_error(Errc::not_found,
                      fmt::format("no message {} in the DLQ {}; `acmo dlq list` shows what is "
                                  "there",
                                  message_id, m_options.dlq_name),
                      "messageId");
  }
  return std::move(**found);
}

Expected<int64_t> PgQueue::redrive(const std::vector<std::string>& message_ids)
{
  auto moved = m_impl->run([&](PgTxn& txn) -> Expected<int64_t> {
    std::set<std::string> wanted;
    for (const auto& id : message_ids) {
      auto parsed = parse_message_id(id);
      wanted.insert(parsed ? format_message_id(*parsed) : id);
    }
    const bool all = message_ids.empty();
    std::vector<std::pair<int64_t, std::string>> chosen;
    for (const auto& row : txn.tx.exec_params(
           "SELECT seq, message_id::text, group_id FROM messages WHERE queue_id = $1"
           " ORDER BY seq FOR UPDATE",
           m_impl->dlq_id)) {
      if (!all && wanted.erase(row[1].as<std::string>()) == 0) continue;
      chosen.emplace_back(row[0].as<int64_t>(), row[2].as<std::string>());
    }
    if (!wanted.empty()) {
      return make_error(Errc::not_found,
                        fmt::format("no message {} in the DLQ {}; nothing was redriven",
                                    *wanted.begin(), m_options.dlq_name),
                        "messageId");
    }
    m_impl->move_back(txn, chosen);
    return static_cast<int64_t>(chosen.size());
  }, Impl::Mode::synchronous);
  if (moved && *moved > 0) m_impl->notify_waiters();
  return moved;
}

Expected<PgQueue::RedriveRun> PgQueue::begin_redrive(const DlqFilter& filter)
{
  RedriveRun run;
  run.filter = filter;
  run.begun_ms = m_impl->now_ms();
  auto ok = m_impl->run([&](PgTxn& txn) -> Expected<void> {
    // The last sequence number handed out: messages dead-lettered after now keep theirs, and
    // those redriven after now get higher ones, so seq <= until_seq leaves both out.
    plan_for_arguments(txn);
    auto row = txn.tx.exec_params1(
      "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM message_seq),"
      " (SELECT count(*) FROM messages WHERE" + k_dlq_match + ")",
      m_impl->dlq_id, filter.reason, latest_of(filter, run.begun_ms),
      earliest_of(filter, run.begun_ms));
    run.until_seq = row[0].as<int64_t>();
    run.total = row[1].as<int64_t>();
    return {};
  });
  if (!ok) return Unexpected(ok.error());
  return run;
}

Expected<int64_t> PgQueue::redrive_step(RedriveRun& run, int64_t max)
{
  int64_t last_seq = run.after_seq;
  auto moved = m_impl->run([&](PgTxn& txn) -> Expected<int64_t> {
    last_seq = run.after_seq;
    std::vector<std::pair<int64_t, std::string>> chosen;
    for (const auto& row : txn.tx.exec_params(
           "SELECT seq, group_id FROM messages WHERE" + k_dlq_match
             + " AND seq > $5 AND seq <= $6 AND dead_at <= $7 ORDER BY seq LIMIT $8"
               " FOR UPDATE SKIP LOCKED",
           m_impl->dlq_id, run.filter.reason, latest_of(run.filter, run.begun_ms),
           earliest_of(run.filter, run.begun_ms), run.after_seq, run.until_seq, run.begun_ms,
           max)) {
      chosen.emplace_back(row[0].as<int64_t>(), row[1].as<std::string>());
    }
    m_impl->move_back(txn, chosen);
    if (!chosen.empty()) last_seq = chosen.back().first;
    return static_cast<int64_t>(chosen.size());
  }, Impl::Mode::synchronous);
  if (!moved) return moved;
  run.after_seq = last_seq;
  if (*moved > 0) m_impl->notify_waiters();
  return moved;
}

Expected<int64_t> PgQueue::purge(bool dlq)
{
  return m_impl->run([&](PgTxn& txn) -> Expected<int64_t> {
    const int64_t id = dlq ? m_impl->dlq_id : m_impl->queue_id;
    // However many messages there are: the session's statement timeout (60 s) would fail a
    // purge of some ten million. Waits for locks stay bounded by lock_timeout.
    txn.tx.exec0("SET LOCAL statement_timeout = 0");
    // Every group's row first (name order, as every writer), so that no send or receive of the
    // queue is half-way through while its messages go.
    txn.tx.exec_params("SELECT 1 FROM message_groups WHERE queue_id = $1 ORDER BY group_id"
                       " FOR UPDATE",
                       id);
    const auto removed = static_cast<int64_t>(
      txn.tx.exec_params("DELETE FROM messages WHERE queue_id = $1", id).affected_rows());
    txn.tx.exec_params("DELETE FROM message_groups WHERE queue_id = $1", id);
    txn.tx.exec_params("DELETE FROM dedup WHERE queue_id = $1", id);
    txn.counters[id].purged += removed;
    return removed;
  }, Impl::Mode::synchronous); // a purge lost to a crash would bring back what it answered gone
}

Expected<MoveResult> PgQueue::move_in(const QueueSnapshot& snapshot)
{
  return m_impl->run([&](PgTxn& txn) -> Expected<MoveResult> {
    MoveResult result;
    // One move into a schema at a time: a second (another host's) waits for the first to
    // commit, then sees its sequence numbers and is refused as a clash, where both would
    // otherwise pass the check and the loser fail on the primary key.
    txn.tx.exec("SELECT pg_advisory_xact_lock(hashtext('acmo queue move ' || current_schema()))");
    // Read and written in parts of at most 1,000 messages, group names or dedup entries, so
    // that a long queue is never all in memory and makes no huge statement.
    constexpr size_t k_chunk = 1000;
    // Every group of the queue's messages locked first, in one statement (in the order every
    // writer locks groups), from their names gathered in a table of this transaction. A row
    // made for a group whose messages all moved before is dropped again at the end.
    const auto may = txn.tx.exec1("SELECT has_database_privilege(current_database(), 'TEMPORARY'),"
                                  " quote_ident(current_database()), quote_ident(current_user)");
    if (!may[0].as<bool>()) {
      return make_error(Errc::invalid_input,
                        fmt::format("the role {} may not make temporary tables in the database "
                                    "{}, which acmo queue move needs; have its owner run GRANT "
                                    "TEMPORARY ON DATABASE {} TO {}",
                                    may[2].as<std::string>(), may[1].as<std::string>(),
                                    may[1].as<std::string>(), may[2].as<std::string>()),
                        "queue.url");
    }
    txn.tx.exec0("CREATE TEMPORARY TABLE acmo_moving_groups (name text PRIMARY KEY)"
                 " ON COMMIT DROP");
    for (std::string after;;) {
      auto names = snapshot.groups(after, k_chunk);
      if (!names) return Unexpected(names.error());
      if (names->empty()) break;
      after = names->back();
      PgArray page;
      for (const auto& name : *names) page.add(name);
      txn.tx.exec_params("INSERT INTO acmo_moving_groups SELECT unnest($1::text[])"
                         " ON CONFLICT DO NOTHING",
                         page.text());
    }
    txn.tx.exec_params(Impl::lock_groups_sql("SELECT name FROM acmo_moving_groups"),
                       m_impl->queue_id);
    for (const bool dead : {false, true}) {
      auto moved = snapshot.each_page(dead, k_chunk, [&](const std::vector<Message>& chunk) {
        return m_impl->move_chunk(txn, chunk, dead, result);
      });
      if (!moved) return Unexpected(moved.error());
    }
    // The dedup history; a key the queue already knows keeps its entry (it was sent again
    // after an earlier run).
    for (int64_t after = std::numeric_limits<int64_t>::min();;) {
      auto chunk = snapshot.dedup(after, k_chunk);
      if (!chunk) return Unexpected(chunk.error());
      if (chunk->empty()) break;
      after = chunk->back().seq;
      PgArray keys, dedup_seqs, dedup_ids_of, expires, hashes;
      for (const MovedDedup& d : *chunk) {
        if (d.expires_at_ms <= txn.now) continue;
        keys.add(d.key);
        dedup_seqs.add(d.seq);
        dedup_ids_of.add(d.message_id);
        expires.add(d.expires_at_ms);
        hashes.add(d.body_hash);
      }
      if (keys.empty()) continue;
      result.dedup += static_cast<int64_t>(
        txn.tx
          .exec_params("INSERT INTO dedup (queue_id, dedup_key, seq, message_id, expires_at,"
                       " body_hash) SELECT $1, t.k, t.s, t.id, t.x, t.h FROM unnest($2::text[],"
                       " $3::bigint[], $4::uuid[], $5::bigint[], $6::bigint[]) AS t(k, s, id, x, h)"
                       " ORDER BY t.k ON CONFLICT (queue_id, dedup_key) DO NOTHING",
                       m_impl->queue_id, keys.text(), dedup_seqs.text(), dedup_ids_of.text(),
                       expires.text(), hashes.text())
          .affected_rows());
    }
    // Sequence numbers go on above the source's, so that a group's next message follows.
    txn.tx.exec_params("SELECT setval('message_seq', greatest((SELECT last_value FROM message_seq),"
                       " $1::bigint - 1, 1))",
                       snapshot.next_seq());
    // The groups' rows set right (or dropped), a part at a time.
    for (std::string after;;) {
      const auto last = txn.tx.exec_params1(
        "WITH part AS (SELECT name FROM acmo_moving_groups WHERE name > $2 ORDER BY name"
        " LIMIT $3) SELECT (SELECT max(name) FROM part),"
        " acmo_fix_groups($1, ARRAY(SELECT name FROM part))",
        m_impl->queue_id, after, static_cast<int64_t>(k_chunk));
      if (last[0].is_null()) break;
      after = last[0].as<std::string>();
    }
    if (result.messages > 0) txn.tx.exec_params("SELECT pg_notify($1, '')", m_impl->channel);
    return result;
  }, Impl::Mode::synchronous);
}

Expected<SweepResult> PgQueue::sweep()
{
  return m_impl->run([&](PgTxn& txn) -> Expected<SweepResult> { return m_impl->do_sweep(txn); });
}

Expected<QueueStats> PgQueue::stats()
{
  QueueStats s;
  s.name = m_options.name;
  s.backend = std::string(backend());
  s.dlq_name = m_options.dlq_name;
  const int64_t now = m_impl->now_ms();
  auto ok = m_impl->run([&](PgTxn& txn) -> Expected<void> {
    // The queue's messages are counted in one pass (stats serve /health and /metrics, and a
    // backlog makes them long).
    auto row = txn.tx.exec_params1(
      "SELECT m.visible, m.in_flight, m.delayed, m.oldest,"
      " (SELECT count(*) FROM messages WHERE queue_id = $3),"
      " (SELECT count(*) FROM dedup WHERE queue_id = $1 AND expires_at > $2),"
      " c.*, d.* FROM (SELECT coalesce(sum(sent), 0) AS a, coalesce(sum(duplicates), 0) AS b,"
      " coalesce(sum(received), 0) AS c, coalesce(sum(deleted), 0) AS d,"
      " coalesce(sum(retried), 0) AS e, coalesce(sum(expired), 0) AS f,"
      " coalesce(sum(dead_lettered), 0) AS g, coalesce(sum(redriven), 0) AS h,"
      " coalesce(sum(purged), 0) AS i FROM queue_counters WHERE queue_id = $1) c,"
      // What left the DLQ other than by a redrive is counted on the DLQ's own rows.
      " (SELECT coalesce(sum(expired), 0) AS x, coalesce(sum(purged), 0) AS y"
      " FROM queue_counters WHERE queue_id = $3) d,"
      " (SELECT count(*) FILTER (WHERE visible_at <= $2) AS visible,"
      " count(*) FILTER (WHERE visible_at > $2 AND receipt_token <> 0) AS in_flight,"
      " count(*) FILTER (WHERE visible_at > $2 AND receipt_token = 0) AS delayed,"
      " coalesce(min(sent_at), -1) AS oldest FROM messages WHERE queue_id = $1) m",
      m_impl->queue_id, now, m_impl->dlq_id);
    s.visible = row[0].as<int64_t>();
    s.in_flight = row[1].as<int64_t>();
    s.delayed = row[2].as<int64_t>();
    const int64_t oldest = row[3].as<int64_t>();
    s.oldest_age_ms = oldest < 0 ? 0 : std::max<int64_t>(0, now - oldest);
    s.dead_lettered = row[4].as<int64_t>();
    s.dedup_entries = row[5].as<int64_t>();
    s.sent = row[6].as<int64_t>();
    s.duplicates = row[7].as<int64_t>();
    s.received = row[8].as<int64_t>();
    s.deleted = row[9].as<int64_t>();
    s.retried = row[10].as<int64_t>();
    s.expired = row[11].as<int64_t>();
    s.dead_lettered_total = row[12].as<int64_t>();
    s.redriven = row[13].as<int64_t>();
    s.purged = row[14].as<int64_t>();
    s.dlq_expired = row[15].as<int64_t>();
    s.dlq_purged = row[16].as<int64_t>();
    return {};
  });
  if (!ok) return Unexpected(ok.error());
  return s;
}

CommitStats PgQueue::commit_stats() const
{
  return m_impl->sender->commit_stats();
}

// --- the handler registry ------------------------------------------------------------------

Expected<std::string> PgQueue::save_handler(const HandlerRecord& r)
{
  return m_impl->run([&](PgTxn& txn) -> Expected<std::string> {
    auto rows = txn.tx.exec_params(
      "INSERT INTO handlers (id, pid, host, started_at, heartbeat_at, stopped_at, processed,"
      " dead_lettered, retried, batches, latency_p50_us, latency_p99_us, last_error)"
      " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
      " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,"
      " stopped_at = excluded.stopped_at, processed = excluded.processed,"
      " dead_lettered = excluded.dead_lettered, retried = excluded.retried,"
      " batches = excluded.batches, latency_p50_us = excluded.latency_p50_us,"
      " latency_p99_us = excluded.latency_p99_us, last_error = excluded.last_error"
      " RETURNING request",
      r.id, r.pid, r.host, r.started_at_ms, r.heartbeat_at_ms, r.stopped_at_ms, r.processed,
      r.dead_lettered, r.retried, r.batches, r.latency_p50_us, r.latency_p99_us, r.last_error);
    return rows.empty() ? std::string() : rows[0][0].as<std::string>();
  });
}

Expected<void> PgQueue::request_handler(std::string_view id, std::string_view request)
{
  return m_impl->run([&](PgTxn& txn) -> Expected<void> {
    auto r = txn.tx.exec_params("UPDATE handlers SET request = $2 WHERE id = $1",
                                std::string(id), std::string(request));
    if (r.affected_rows() == 0) {
      return make_error(Errc::not_found, fmt::format("no handler {} is registered", id));
    }
    return {};
  });
}

Expected<std::vector<HandlerRecord>> PgQueue::handlers(int64_t since_ms)
{
  return m_impl->run([&](PgTxn& txn) -> Expected<std::vector<HandlerRecord>> {
    std::vector<HandlerRecord> out;
    for (const auto& row : txn.tx.exec_params(
           "SELECT id, pid, host, started_at, heartbeat_at, stopped_at, processed, dead_lettered,"
           " retried, batches, latency_p50_us, latency_p99_us, last_error, request FROM handlers"
           " WHERE heartbeat_at > $1 ORDER BY started_at DESC, id",
           since_ms)) {
      HandlerRecord r;
      r.id = row[0].as<std::string>();
      r.pid = row[1].as<int64_t>();
      r.host = row[2].as<std::string>();
      r.started_at_ms = row[3].as<int64_t>();
      r.heartbeat_at_ms = row[4].as<int64_t>();
      r.stopped_at_ms = row[5].as<int64_t>();
      r.processed = row[6].as<int64_t>();
      r.dead_lettered = row[7].as<int64_t>();
      r.retried = row[8].as<int64_t>();
      r.batches = row[9].as<int64_t>();
      r.latency_p50_us = row[10].as<int64_t>();
      r.latency_p99_us = row[11].as<int64_t>();
      r.last_error = row[12].as<std::string>();
      r.request = row[13].as<std::string>();
      out.push_back(std::move(r));
    }
    return out;
  });
}

// --- health ------------------------------------------------------------------------------

Expected<void> PgQueue::check_integrity()
{
  return m_impl->run([&](PgTxn& txn) -> Expected<void> {
    txn.tx.exec0("SET LOCAL statement_timeout = 2000");
    const int version =
      txn.tx.exec1("SELECT coalesce(max(version), 0) FROM queue_schema_version")[0].as<int>();
    const int latest = static_cast<int>(pg_schema::migrations().size());
    if (version != latest) {
      return make_error(Errc::unavailable,
                        fmt::format("the queue's PostgreSQL schema {} is at version {}, not {}; "
                                    "it was changed behind acmo's back or by another acmo",
                                    m_impl->schema, version, latest));
    }
    txn.tx.exec_params("SELECT 1 FROM queues WHERE id = $1", m_impl->queue_id);
    return {};
  });
}

Expected<void> PgQueue::check_write_lock()
{
  return m_impl->run([&](PgTxn& txn) -> Expected<void> {
    txn.tx.exec0("SET LOCAL statement_timeout = 2000");
    // A transaction open over 10 s that wrote rows of the queue holds them. PostgreSQL shows
    // when another role's transaction started only to members of that role or of
    // pg_read_all_stats: such a one is named once a writer has waited over 10 s for it
    // (pg_locks.waitstart, PostgreSQL 14 and later).
    auto rows = txn.tx.exec_params(
      "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local'),"
      " a.state, extract(epoch FROM now() - a.xact_start)::bigint FROM pg_locks l"
      " JOIN pg_stat_activity a ON a.pid = l.pid JOIN pg_class c ON c.oid = l.relation"
      " JOIN pg_namespace n ON n.oid = c.relnamespace"
      " WHERE n.nspname = $1 AND c.relname IN ('messages', 'message_groups')"
      " AND l.mode = 'RowExclusiveLock' AND a.pid <> pg_backend_pid()"
      " AND a.xact_start < now() - interval '10 seconds' ORDER BY a.xact_start LIMIT 1",
      m_impl->schema);
    if (!rows.empty()) {
      const auto& row = rows[0];
      return make_error(Errc::unavailable,
                        fmt::format("PostgreSQL backend {} ({}, from {}, {}) has held rows of the "
                                    "queue for {} s; writers of those rows wait for it",
                                    row[0].as<int64_t>(), row[1].as<std::string>(),
                                    row[2].as<std::string>(), row[3].as<std::string>(),
                                    row[4].as<int64_t>()));
    }
    if (txn.tx.conn().server_version() < 140000) return {};
    rows = txn.tx.exec_params(
      "SELECT a.pid, coalesce(a.usename, ''), coalesce(a.application_name, ''),"
      " extract(epoch FROM now() - min(w.waitstart))::bigint FROM pg_locks l"
      " JOIN pg_stat_activity a ON a.pid = l.pid JOIN pg_class c ON c.oid = l.relation"
      " JOIN pg_namespace n ON n.oid = c.relnamespace"
      " JOIN pg_locks w ON NOT w.granted AND w.waitstart < now() - interval '10 seconds'"
      " AND a.pid = ANY(pg_blocking_pids(w.pid))"
      " WHERE n.nspname = $1 AND c.relname IN ('messages', 'message_groups')"
      " AND l.mode = 'RowExclusiveLock' AND a.pid <> pg_backend_pid() AND a.xact_start IS NULL"
      " GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 1",
      m_impl->schema);
    if (rows.empty()) return {};
    const auto& row = rows[0];
    return make_error(Errc::unavailable,
                      fmt::format("PostgreSQL backend {} (role {}, {}) holds rows of the queue "
                                  "and has kept a writer of them waiting for {} s; writers of "
                                  "those rows wait for it",
                                  row[0].as<int64_t>(), row[1].as<std::string>(),
                                  row[2].as<std::string>(), row[3].as<int64_t>()));
  });
}

Expected<void> PgQueue::check_writable()
{
  return m_impl->run([&](PgTxn& txn) -> Expected<void> {
    txn.tx.exec0("SET LOCAL statement_timeout = 2000");
    if (txn.tx.exec1("SELECT pg_is_in_recovery()")[0].as<bool>()) {
      return make_error(Errc::unavailable,
                        fmt::format("PostgreSQL at {} is a read-only standby; point queue.url "
                                    "at the primary",
                                    redact_pg_url(m_impl->url)),
                        "queue.url");
    }
    txn.tx.exec_params("UPDATE queues SET created_at = created_at WHERE id = $1",
                       m_impl->queue_id);
    return {};
  });
}

void PgQueue::interrupt()
{
  {
    std::lock_guard lock(m_impl->wake_mu);
    m_impl->interrupted = true;
  }
  m_impl->wake_cv.notify_all();
}

void PgQueue::resume()
{
  std::lock_guard lock(m_impl->wake_mu);
  m_impl->interrupted = false;
}

} // namespace acmo
