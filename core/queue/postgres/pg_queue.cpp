#include "core/queue/postgres/pg_queue.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "core/queue/limits.hpp"
#include "core/queue/postgres/pg_pipeline.hpp"
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
constexpr int k_pool_size = 16;             // connections for everything but sends and LISTEN
constexpr int64_t k_connect_timeout_ms = 5'000;
// Messages of send_bulk per statement, at most: each statement costs a round trip, a commit
// and the locking of its groups, so small ones send fewer messages a second (50 a statement
// about a fifth fewer); past a few hundred acmo_send's own work per message grows (1,000 a
// statement spent half as long again on each as 200).
constexpr size_t k_bulk_chunk = 200;
constexpr size_t k_bulk_bytes = 16u << 20;  // and their bodies' bytes
// Connections that send_bulk's statements run on at once, when they share no group.
constexpr size_t k_bulk_lanes = 2;
// How many times a statement of sends the server rolled back is sent again (resend).
constexpr int k_send_rollback_retries = 3;
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

// The connection string libpq gets: the URL, with a connect timeout, a name that shows in
// pg_stat_activity and keepalives, unless the URL sets them.
std::string connection_string(const std::string& url)
{
  std::string out = url;
  const bool uri = out.rfind("postgresql://", 0) == 0 || out.rfind("postgres://", 0) == 0;
  auto add = [&](const std::string& key, const std::string& value) {
    if (out.find(key + "=") != std::string::npos) return;
    if (uri) {
      out += out.find('?') == std::string::npos ? '?' : '&';
    } else if (!out.empty()) {
      out += ' ';
    }
    out += key + "=" + value;
  };
  add("connect_timeout", std::to_string(k_connect_timeout_ms / 1000));
  add("fallback_application_name", "acmo");
  add("keepalives", "1");
  add("keepalives_idle", "10");
  add("keepalives_interval", "5");
  add("keepalives_count", "3");
  return out;
}

// The key a dedup id is filed under in the dedup history: the first 16 bytes of its SHA-256, in
// hex. The embedded queue files it under the same 16 bytes (sqlite_queue::dedup_key), which lets
// `acmo queue move` carry its history over.
std::string dedup_key_hex(std::string_view dedup_id) { return sha256_hex(dedup_id).substr(0, 32); }

// A send request, checked, with what can be computed before it goes to the server.
struct PreparedSend {
  const SendRequest* request = nullptr;
  std::string dedup_id;       // the request's, or the body's SHA-256 in hex
  std::string dedup_key;      // the dedup history's key: dedup_key_hex(dedup_id)
  bool content_based = false; // the dedup id is the body's SHA-256
  int64_t body_hash = 0;      // hash_word of the body's SHA-256
  MessageIdBytes message_id;  // the id it gets if accepted
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

// What an error of a send whose outcome is unknown ends with.
constexpr const char* k_send_in_doubt =
  "; the message may or may not be stored: retry with the same deduplication id";

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
// transaction) is compared with the version the snapshot reads, by its key.
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
const Statement k_drop_groups = {
  "acmo_drop_groups",
  "DELETE FROM message_groups g USING unnest($2::text[]) AS x(name)"
  " WHERE g.queue_id = $1 AND g.group_id = x.name"};
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
// The end of a consume whose messages were all deleted and whose groups all emptied, in one
// round trip instead of four: its messages deleted, its journal row (id 0: none) deleted, the
// groups' rows dropped and its counters added. None of the parts reads what another writes
// (the sub-statements of a WITH share one snapshot): a group's row goes without a look at its
// messages, as with acmo_drop_groups.
const Statement k_consume_done = {
  "acmo_consume_done",
  "WITH gone AS (DELETE FROM messages WHERE seq = ANY($1::bigint[])),"
  " journal AS (DELETE FROM consume_journal WHERE id = $2),"
  " dropped AS (DELETE FROM message_groups g USING unnest($4::text[]) AS x(name)"
  " WHERE g.queue_id = $3 AND g.group_id = x.name)"
  " INSERT INTO queue_counters (queue_id, sent, duplicates, received, deleted, retried,"
  " expired, dead_lettered, redriven, purged) VALUES ($3, $5, $6, $7, $8, $9, $10, $11, $12, $13)"};

const Statement* const k_statements[] = {
  &k_receive, &k_receive_plain, &k_take,  &k_fix_groups,    &k_count,        &k_lock_groups,
  &k_lock_messages, &k_delete,  &k_probe, &k_journal_begin, &k_journal_done, &k_remove,
  &k_drop_groups, &k_receive_and_take, &k_consume_done};

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
  // Groups whose every message this transaction deleted or dead-lettered while holding the
  // group's row, so that no message came meanwhile: their rows go without a look.
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

// One request of a group commit of sends.
struct SendOp {
  std::vector<PreparedSend> items;
  std::vector<Expected<SendResult>> results;
  std::optional<Error> error;
  // Answered (under the group commit's mutex). Each op waits on its own condition variable,
  // so that a commit wakes only the senders it answered and the next leader; a leader wakes
  // them after releasing the mutex (one woken while it is held blocks on it straight away),
  // which the op's shared ownership keeps safe once its sender has returned.
  bool done = false;
  // In a leader's batch (under the mutex): it waits for done only, never to lead. Without it,
  // a sender whose op a leader had taken woke when that leader handed the lead on, led a batch
  // of its own, and returned before its op was answered, which the first leader then wrote to
  // on a stack frame that was gone.
  bool taken = false;
  // The commit that make_durable must cover (0 when nothing needs flushing): send_bulk's
  // statements commit without waiting for the disk, and it makes them durable itself once all
  // are committed.
  uint64_t generation = 0;
  // The key of the server process that committed it (SendPipe::key).
  int64_t backend = 0;
  // Set (under the mutex) when the leader, going on to the next batch, hands this op's sender
  // the work of answering its batch (SendBatch::answer).
  std::shared_ptr<struct SendBatch> answer;
  std::condition_variable cv;
};

// A connection that sends with acmo_send (Impl::open_send_pipe), in libpq's pipeline mode, and
// the key of the advisory lock its server process holds. A synchronous one commits each
// statement durably (synchronous_commit on) before it answers.
struct SendPipe {
  std::unique_ptr<PgPipeline> conn;
  bool synchronous = false;
  int64_t key = 0;
  uint64_t epoch = 0; // connections made so far: a statement's result is read on its own
};

// One statement of sends: its ops, and once sent (dispatch), what reading its result (collect)
// needs.
struct SendFlight {
  std::vector<SendOp*> ops;
  size_t count = 0;  // requests
  int64_t now = 0;   // the time it was sent with
  bool sent = false; // and whether it was (then it is in doubt until its result is read)
  uint64_t epoch = 0; // on which of the SendPipe's connections
  bool lost = false;  // that connection broke before its result was read
  bool rolled_back = false; // or the server rolled it back: it took no effect
};

// The ops of one statement of sends, read and waiting for their senders to be woken.
struct SendBatch {
  std::vector<std::shared_ptr<SendOp>> ops;
};

// A pool of connections, opened as they are needed, at most k_pool_size.
class PgConnections
{
public:
  using Setup = std::function<void(pqxx::connection&)>;
  PgConnections(std::string conninfo, Setup setup, int64_t wait_ms)
    : m_conninfo(std::move(conninfo)), m_setup(std::move(setup)), m_wait_ms(wait_ms)
  {
  }

  class Lease
  {
  public:
    Lease(PgConnections& pool, std::unique_ptr<pqxx::connection> conn)
      : m_pool(&pool), m_conn(std::move(conn))
    {
    }
    Lease(Lease&& other) noexcept
      : m_pool(other.m_pool), m_conn(std::move(other.m_conn)), m_broken(other.m_broken)
    {
    }
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease()
    {
      if (m_conn) m_pool->give_back(std::move(m_conn), m_broken);
    }
    pqxx::connection& conn() { return *m_conn; }
    void discard() { m_broken = true; }

  private:
    PgConnections* m_pool;
    std::unique_ptr<pqxx::connection> m_conn;
    bool m_broken = false;
  };

  // A connection, or the error of making one (std::exception's text) when that failed.
  std::variant<Lease, std::string> acquire()
  {
    const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(m_wait_ms);
    std::unique_lock lock(m_mu);
    for (;;) {
      if (!m_idle.empty()) {
        auto conn = std::move(m_idle.back());
        m_idle.pop_back();
        return Lease(*this, std::move(conn));
      }
      if (m_open < k_pool_size) {
        ++m_open;
        lock.unlock();
        try {
          auto conn = std::make_unique<pqxx::connection>(m_conninfo);
          m_setup(*conn);
          return Lease(*this, std::move(conn));
        } catch (const std::exception& e) {
          lock.lock();
          --m_open;
          m_cv.notify_one();
          return std::string(e.what());
        }
      }
      if (m_cv.wait_until(lock, deadline) == std::cv_status::timeout && m_idle.empty()
          && m_open >= k_pool_size) {
        return fmt::format("all {} connections of the queue stayed busy for {} ms", k_pool_size,
                           m_wait_ms);
      }
    }
  }

  // Take in a connection made and set up elsewhere, as an idle one.
  void adopt(std::unique_ptr<pqxx::connection> conn)
  {
    {
      std::lock_guard lock(m_mu);
      ++m_open;
      m_idle.push_back(std::move(conn));
    }
    m_cv.notify_one();
  }

  // An idle connection, no longer the pool's, or null when none is idle.
  std::unique_ptr<pqxx::connection> take_idle()
  {
    std::unique_ptr<pqxx::connection> conn;
    {
      std::lock_guard lock(m_mu);
      if (m_idle.empty()) return conn;
      conn = std::move(m_idle.back());
      m_idle.pop_back();
      --m_open;
    }
    m_cv.notify_one();
    return conn;
  }

  // After a broken connection: the idle ones very likely went with the same server.
  void discard_idle()
  {
    std::vector<std::unique_ptr<pqxx::connection>> closing;
    {
      std::lock_guard lock(m_mu);
      closing.swap(m_idle);
      m_open -= static_cast<int>(closing.size());
    }
    m_cv.notify_all();
  }

private:
  void give_back(std::unique_ptr<pqxx::connection> conn, bool broken)
  {
    if (broken || !conn->is_open()) {
      conn.reset();
      std::lock_guard lock(m_mu);
      --m_open;
    } else {
      std::lock_guard lock(m_mu);
      m_idle.push_back(std::move(conn));
    }
    m_cv.notify_one();
  }

  const std::string m_conninfo;
  const Setup m_setup;
  const int64_t m_wait_ms;
  std::mutex m_mu;
  std::condition_variable m_cv;
  std::vector<std::unique_ptr<pqxx::connection>> m_idle;
  int m_open = 0;
};

struct PgQueue::Impl {
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

  // Group commit of sends: the first sender to find no leader sends every request queued so
  // far in one statement on the sending connection, which only the leader uses. With
  // queue.durability = "full" each statement commits durably: waiting for the disk in the
  // commit, with the next statement already sent behind it, answers sooner than a separate
  // flush of the WAL that a batch would hand to another connection and wait for.
  SendPipe sender;
  // send_bulk's statements, on connections of their own (send_pipelined), one send_bulk at a
  // time.
  std::mutex bulk_mu;
  std::array<SendPipe, k_bulk_lanes> bulk_senders;
  bool bulk_lane_refused = false; // one of them could not be made (under bulk_mu)
  std::mutex send_mu;
  std::vector<std::shared_ptr<SendOp>> send_pending;
  bool send_leading = false;
  // The leader waits for a statement's result, and for ops to queue to send meanwhile: a
  // sender that queues one then writes to send_wake_fd.
  bool send_polling = false;
  int send_wake_fd = -1;
  std::atomic<int64_t> committed_transactions{0};
  std::atomic<int64_t> committed_requests{0};

  // Durability (queue.durability = "full") of send_bulk without holding the groups' locks
  // through the flush of the WAL: its statements commit without waiting for the disk, and it
  // waits for a flush that covers their commits, made by a write that does wait (flush_wal, on
  // a connection of its own). While one statement waits for the disk the next one runs, and one
  // flush covers every commit made before it began.
  //
  // A flush covers a commit only if the server did not crash in between: a crash loses the
  // commits whose WAL was not yet written, and a flush on the restarted server covers none of
  // them. So the sending connection's server process holds an advisory lock of a random key
  // for its life, each batch remembers the key of the process that committed it, and a flush
  // also checks that each such key is still held: a crash ends every process and frees every
  // lock. The commits of a process no longer running are in doubt (failed_through).
  std::unique_ptr<pqxx::connection> flusher;
  std::mutex sync_mu;
  std::condition_variable sync_cv;
  uint64_t committed_generation = 0;
  uint64_t synced_generation = 0;
  uint64_t failed_through = 0; // commits up to this one were made by a backend that ended
  std::map<int64_t, uint64_t> unflushed_backends; // by key: the last commit of each
  bool syncing = false;

  // The consume journal's connection (journal_begin, journal_drop).
  std::mutex journal_mu;
  std::unique_ptr<pqxx::connection> journal_conn;

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

  Impl(const Clock& c, QueueOptions o) : clock(c), options(std::move(o))
  {
    sender.synchronous = options.durability_full;
  }
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
    if (send_wake_fd >= 0) ::close(send_wake_fd);
  }

  // --- time -------------------------------------------------------------------------------

  // The queue's time: the server's clock, which every process sharing the queue reads alike;
  // a Clock that does not run by itself (the tests') is its own time.
  int64_t now_ms() const { return clock.is_real() ? server_time.now_ms() : clock.now_ms(); }

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
  std::string setup_sql(bool synchronous) const
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
  Error error_of(const std::exception& e, bool& discard) const
  {
    discard = false;
    if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr) {
      discard = true;
      return unavailable(e.what());
    }
    if (dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr) {
      discard = true;
      return Error(Errc::unavailable,
                   fmt::format("the connection to PostgreSQL at {} broke while a transaction "
                               "committed ({}); it may or may not have taken effect",
                               redact_pg_url(url), first_line(e.what())),
                   "queue.url");
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
      return Error(Errc::internal,
                   fmt::format("PostgreSQL refused acmo's statement ({}: {}); this is a bug or a "
                               "schema acmo did not make",
                               state, first_line(e.what())));
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
    if (!txn.touched_groups.empty()) {
      PgArray groups;
      for (const auto& g : txn.touched_groups) groups.add(g);
      txn.tx.exec_prepared(k_fix_groups.name, queue_id, groups.text());
      txn.touched_groups.clear();
    }
    if (!txn.emptied_groups.empty()) {
      PgArray groups;
      for (const auto& g : txn.emptied_groups) groups.add(g);
      txn.tx.exec_prepared(k_drop_groups.name, queue_id, groups.text());
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

  void notify_waiters()
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
  std::unique_ptr<pqxx::connection> own_connection(bool synchronous)
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

  // --- sending ----------------------------------------------------------------------------

  // Check a request, fill in its dedup id and body fingerprint; all before the server.
  Expected<PreparedSend> prepare_send(const SendRequest& request) const
  {
    PreparedSend out;
    out.request = &request;
    if (auto ok = limits::check_body(request.body); !ok) return Unexpected(ok.error());
    if (auto ok = limits::check_id(request.group_id, "groupId"); !ok) {
      return Unexpected(ok.error());
    }
    if (request.dedup_id.empty() && !options.content_based_dedup) {
      return make_error(Errc::invalid_input,
                        "deduplicationId is required when queue.content_based_dedup is off",
                        "deduplicationId");
    }
    if (!request.dedup_id.empty()) {
      if (auto ok = limits::check_id(request.dedup_id, "deduplicationId"); !ok) {
        return Unexpected(ok.error());
      }
    }
    const auto digest = sha256_bytes(request.body);
    out.body_hash = hash_word(digest);
    if (request.dedup_id.empty()) {
      out.dedup_id = hex_of(digest);
      out.content_based = true;
    } else {
      out.dedup_id = request.dedup_id;
    }
    out.dedup_key = dedup_key_hex(out.dedup_id);
    out.message_id = new_message_id_bytes();
    return out;
  }

  // Hand `op` to the group commit and wait until it is answered.
  //
  // The sender that finds no leader leads: it sends every op queued so far in one statement.
  // While that statement runs (and waits for the disk in its commit), ops queued meanwhile go
  // in a second one on the same connection, which the server starts as soon as it has finished
  // the first, rather than waiting for the client to read a result and build the next
  // statement. The leader goes on so up to k_max_led statements, and hands the waking of each
  // batch's senders to one of them: handing the lead on instead cost the next statement the
  // wake-up of another thread.
  struct Flying {
    std::shared_ptr<SendBatch> batch;
    SendFlight flight;
    bool read = false;           // its result is read (or it was never sent)
    std::optional<Error> error;  // and that result's error
  };

  void submit(const std::shared_ptr<SendOp>& op_ptr)
  {
    constexpr int k_max_led = 4;   // bounds what the leader's own caller waits for others
    constexpr size_t k_depth = 2;  // statements in flight
    SendOp& op = *op_ptr;
    std::unique_lock lock(send_mu);
    send_pending.push_back(op_ptr);
    if (send_polling) {
      const uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(send_wake_fd, &one, sizeof one);
      send_polling = false;
    }
    op.cv.wait(lock, [&] { return op.done || op.answer || (!op.taken && !send_leading); });
    if (op.done) return;
    if (op.answer) {
      auto batch = std::move(op.answer);
      lock.unlock();
      answer(*batch);
      return; // op is one of the batch's
    }
    send_leading = true;
    std::deque<Flying> flying;
    std::shared_ptr<SendBatch> mine; // a batch of this sender's own op alone, answered last
    std::shared_ptr<SendBatch> last; // the batch read when the leader stops
    int led = 0;
    for (;;) {
      // Nothing new goes while a statement read with an error waits to be sent again.
      const bool room = led < k_max_led && flying.size() < k_depth
                        && std::none_of(flying.begin(), flying.end(),
                                        [](const Flying& f) { return f.read; });
      if (room && !send_pending.empty()) {
        ++led;
        Flying f;
        f.batch = std::make_shared<SendBatch>();
        f.batch->ops.swap(send_pending);
        for (const auto& o : f.batch->ops) {
          o->taken = true;
          f.flight.ops.push_back(o.get());
        }
        lock.unlock();
        auto error = dispatch(sender, f.flight);
        if (error && !f.flight.sent) {
          f.read = true;
          f.error = std::move(error);
        } // else lost, if sending broke the connection: read below
        flying.push_back(std::move(f));
        lock.lock();
        continue;
      }
      if (flying.empty()) break; // never: after a read the loop goes on only when it can send
      // Wait for the oldest statement's result, or, with room for another statement, for ops
      // to queue.
      if (room && !flying.front().read && sender.conn && !sender.conn->ready()) {
        send_polling = true;
        lock.unlock();
        const bool readable = wait_readable(sender.conn->socket());
        lock.lock();
        send_polling = false;
        if (!readable) continue;
      }
      lock.unlock();
      Flying f = std::move(flying.front());
      flying.pop_front();
      if (!f.read) f.error = collect(sender, f.flight);
      if (f.error) {
        // Sending again, alone or on a new connection, needs nothing else in flight.
        for (auto& g : flying) {
          if (g.read) continue;
          g.error = collect(sender, g.flight);
          g.read = true;
        }
      }
      settle(f.flight, std::move(f.error));
      if (std::any_of(f.flight.ops.begin(), f.flight.ops.end(),
                      [](const SendOp* o) { return !o->error; })) {
        notify_waiters();
      }
      lock.lock();
      if (flying.empty() && (send_pending.empty() || led >= k_max_led)) {
        last = std::move(f.batch);
        break;
      }
      // Going on leading: one of the batch's senders (not this one, which answers only once
      // it stops leading) answers it.
      std::shared_ptr<SendOp> deputy;
      for (const auto& o : f.batch->ops) {
        if (o != op_ptr) {
          deputy = o;
          break;
        }
      }
      if (deputy) {
        deputy->answer = std::move(f.batch);
        lock.unlock();
        deputy->cv.notify_one();
        lock.lock();
      } else {
        mine = std::move(f.batch);
      }
    }
    // Hand the lead to the first op queued meanwhile, answer the last batch and any of this
    // sender's own, then wait for this sender's op, which a deputy may still be answering.
    send_leading = false;
    auto next = send_pending.empty() ? nullptr : send_pending.front();
    lock.unlock();
    if (next) next->cv.notify_one();
    if (last) answer(*last);
    if (mine) answer(*mine);
    lock.lock();
    op.cv.wait(lock, [&] { return op.done; });
  }

  // Wait until `socket` has something to read (true) or an op is queued (false).
  bool wait_readable(int socket)
  {
    pollfd fds[2] = {{socket, POLLIN, 0}, {send_wake_fd, POLLIN, 0}};
    for (;;) {
      const int n = ::poll(fds, 2, 1000);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 || (fds[0].revents != 0)) return true;
      if (fds[1].revents != 0) {
        uint64_t count = 0;
        [[maybe_unused]] auto r = ::read(send_wake_fd, &count, sizeof count);
        return false;
      }
      return true; // a second without either: read the result, waiting for it
    }
  }

  // Finish a statement of sends whose result was read with `error`, nothing else being in
  // flight on the sending connection when there is one: one rolled back or lost with its
  // connection is sent again when that is safe (resend), and should it fail for a reason that
  // is not the server's, each of its requests is sent alone, so that one bad request cannot
  // fail its neighbours.
  void settle(SendFlight& flight, std::optional<Error> error)
  {
    error = resend(sender, flight, std::move(error));
    if (error && flight.ops.size() > 1 && error->code == Errc::internal) {
      for (auto* op : flight.ops) {
        SendFlight single{{op}};
        set_error(single, send_statement(sender, single));
      }
    } else {
      set_error(flight, std::move(error));
    }
  }

  // Send `flight` on `pipe`, with nothing else in flight there, and read its result.
  std::optional<Error> send_statement(SendPipe& pipe, SendFlight& flight)
  {
    auto error = dispatch(pipe, flight);
    if (!error) error = collect(pipe, flight);
    return resend(pipe, flight, std::move(error));
  }

  static void set_error(SendFlight& flight, std::optional<Error> error)
  {
    if (!error) return;
    for (auto* o : flight.ops) o->error = error;
  }

  // A commit that make_durable must cover, `op`'s (which remembers the server process that
  // committed it): its generation.
  uint64_t note_commit(const SendOp& op)
  {
    std::lock_guard sync_lock(sync_mu);
    const uint64_t generation = ++committed_generation;
    unflushed_backends[op.backend] = generation;
    return generation;
  }

  // Answer a batch the leader sent: wake its senders.
  void answer(SendBatch& batch)
  {
    std::unique_lock lock(send_mu);
    for (const auto& o : batch.ops) o->done = true;
    lock.unlock();
    for (const auto& o : batch.ops) o->cv.notify_one();
  }

  // Wait until the WAL is on disk up to commit `generation`, flushing it if no one else is.
  std::optional<Error> make_durable(uint64_t generation)
  {
    std::unique_lock lock(sync_mu);
    while (synced_generation < generation && generation > failed_through) {
      if (syncing) {
        sync_cv.wait(lock);
        continue;
      }
      syncing = true;
      const uint64_t target = committed_generation;
      const auto backends = unflushed_backends;
      lock.unlock();
      std::vector<bool> running;
      auto failure = flush_wal(backends, running);
      lock.lock();
      syncing = false;
      sync_cv.notify_all();
      if (failure) return failure;
      size_t i = 0;
      for (const auto& [backend, last] : backends) {
        if (!running[i++]) failed_through = std::max(failed_through, last);
        auto it = unflushed_backends.find(backend);
        if (it != unflushed_backends.end() && it->second == last) unflushed_backends.erase(it);
      }
      synced_generation = std::max(synced_generation, target);
    }
    if (generation <= failed_through) {
      return Error(Errc::unavailable,
                   fmt::format("the PostgreSQL server process that stored the message at {} "
                               "ended before its write reached the disk (the server crashed or "
                               "restarted, or the connection was cut){}",
                               redact_pg_url(url), k_send_in_doubt),
                   "queue.url");
    }
    return std::nullopt;
  }

  // Make every commit so far durable: with synchronous_commit on, the commit of a transaction
  // that wrote to the WAL waits until the WAL is flushed up to its commit record, which covers
  // every commit before it. The transaction writes a logical decoding message (one small WAL
  // record, no table, no lock, for any role; ignored by subscribers that do not ask for
  // messages). A transaction that only takes a transaction id writes no WAL but its commit
  // record, and PostgreSQL commits it without waiting for the disk whatever
  // synchronous_commit says.
  //
  // The same statement says which of `backends` (by key) are still running, in `running`: the
  // flush covers their commits. A connection found broken is made again once.
  std::optional<Error> flush_wal(const std::map<int64_t, uint64_t>& backends,
                                 std::vector<bool>& running)
  {
    PgArray keys;
    for (const auto& [key, last] : backends) keys.add(key);
    for (int attempt = 0;; ++attempt) {
      try {
        if (!flusher) flusher = own_connection(true);
        pqxx::nontransaction tx(*flusher);
        // One letter per backend, in their order: r running (its lock is held, so this
        // transaction cannot take it), g gone.
        auto row = tx.exec_params1(
          "SELECT pg_logical_emit_message(true, 'acmo', ''), array_to_string(ARRAY("
          "SELECT CASE WHEN pg_try_advisory_xact_lock(b.k) THEN 'g' ELSE 'r' END"
          " FROM unnest($1::bigint[]) WITH ORDINALITY AS b(k, n) ORDER BY b.n), '')",
          keys.text());
        running.clear();
        for (char c : row[1].as<std::string>()) running.push_back(c == 'r');
        if (running.size() != backends.size()) {
          return Error(Errc::internal, "the flush of the WAL answered a different number of rows");
        }
        return std::nullopt;
      } catch (const std::exception& e) {
        flusher.reset();
        bool discard = false;
        Error error = error_of(e, discard);
        if (discard && attempt == 0) continue;
        error.message += k_send_in_doubt;
        return error;
      }
    }
  }

  // After `error`, a statement of sends is sent again, alone, when that is safe; nothing else
  // may be in flight on `pipe`'s connection.
  // - One the server rolled back took no effect: up to k_send_rollback_retries times. That is a
  //   serialization failure, or a deadlock with a transaction of another kind (sends never
  //   deadlock with each other: acmo_send takes the groups' rows in name order, and starts
  //   again, letting go of them, when another made one of those it makes), which the server
  //   breaks by failing one of them.
  // - One lost with its connection, once, on a new connection, when the dedup window makes
  //   that safe: had the first attempt committed, its messages are found as duplicates of
  //   themselves (the message ids are the ones this process drew), and reported as sent.
  std::optional<Error> resend(SendPipe& pipe, SendFlight& flight, std::optional<Error> error)
  {
    int rollbacks = 0;
    bool lost_once = false;
    while (error) {
      if (flight.rolled_back && rollbacks < k_send_rollback_retries) {
        ++rollbacks;
      } else if (flight.lost && !lost_once && options.dedup_window_ms > 0) {
        lost_once = true;
      } else {
        break;
      }
      error = dispatch(pipe, flight);
      if (!error) error = collect(pipe, flight);
    }
    return error;
  }

  // Whether `a` and `b` send to a group in common.
  static bool share_a_group(const SendFlight& a, const SendFlight& b)
  {
    std::unordered_set<std::string_view> groups;
    for (const auto* op : a.ops) {
      for (const auto& p : op->items) groups.insert(p.request->group_id);
    }
    for (const auto* op : b.ops) {
      for (const auto& p : op->items) {
        if (groups.count(p.request->group_id) != 0) return true;
      }
    }
    return false;
  }

  // Open `pipe`'s connection: its server process takes the advisory lock of a random key, held
  // for its life (flush_wal), and commits without waiting for the disk (make_durable).
  void open_send_pipe(SendPipe& pipe)
  {
    auto conn = std::make_unique<PgPipeline>(conninfo, setup_sql(pipe.synchronous));
    int64_t key = 0;
    while (key == 0) key = static_cast<int64_t>(random_u64());
    conn->exec("SELECT pg_advisory_lock($1)", {std::to_string(key)});
    conn->prepare("acmo_send",
                  "SELECT o_kind, o_seq, o_id, o_expires FROM acmo_send($1, $2, $3, $4,"
                  " $5::text[], $6::text[], $7::text[], $8::boolean[], $9::text[],"
                  " $10::bigint[], $11::uuid[], $12::boolean[], $13::boolean[])");
    conn->start();
    pipe.conn = std::move(conn);
    pipe.key = key;
    ++pipe.epoch;
  }

  // Send the requests of `flight` on `pipe` in one statement, without waiting for its result
  // (collect reads it), opening the connection first if there is none. A statement not sent
  // is not in doubt.
  std::optional<Error> dispatch(SendPipe& pipe, SendFlight& flight)
  {
    using Type = PgBinaryArray::Type;
    PgBinaryArray groups(Type::text), dedup(Type::text), keys(Type::text),
      content(Type::boolean), bodies(Type::text), hashes(Type::bigint), ids(Type::uuid),
      same(Type::boolean), unless(Type::boolean);
    flight.count = 0;
    flight.sent = false;
    flight.lost = false;
    flight.rolled_back = false;
    try {
      for (const auto* op : flight.ops) {
        for (const auto& p : op->items) {
          groups.add(p.request->group_id);
          dedup.add(p.dedup_id);
          keys.add(p.dedup_key);
          content.add_bool(p.content_based);
          bodies.add(p.request->body);
          hashes.add(p.body_hash);
          ids.add_uuid(p.message_id);
          same.add_bool(p.request->same_body);
          unless.add_bool(p.request->unless_duplicate.has_value());
          ++flight.count;
        }
      }
      if (flight.count == 0) return std::nullopt;
      flight.now = now_ms();
      if (!pipe.conn) open_send_pipe(pipe);
      // Sent, the statement is in doubt until its result is read.
      flight.sent = true;
      flight.epoch = pipe.epoch;
      pipe.conn->send("acmo_send",
                      {std::to_string(queue_id), std::to_string(flight.now),
                       std::to_string(options.dedup_window_ms), channel, std::move(groups),
                       std::move(dedup), std::move(keys), std::move(content), std::move(bodies),
                       std::move(hashes), std::move(ids), std::move(same), std::move(unless)});
      return std::nullopt;
    } catch (const std::exception& e) {
      return pipe_error(pipe, flight, e);
    }
  }

  // The error of a statement of sends on `pipe`: a connection found broken is dropped, and a
  // statement sent on it is lost: it may or may not have committed.
  Error pipe_error(SendPipe& pipe, SendFlight& flight, const std::exception& e)
  {
    bool discard = false;
    Error error = error_of(e, discard);
    flight.rolled_back =
      flight.sent && dynamic_cast<const pqxx::transaction_rollback*>(&e) != nullptr;
    if (discard || (pipe.conn && !pipe.conn->is_open())) {
      pipe.conn.reset();
      if (flight.sent) {
        flight.lost = true;
        error.message += k_send_in_doubt;
      }
    }
    return error;
  }

  // Read the result of `flight`, the oldest statement sent on `pipe` and not yet read, into
  // its ops' results (or return its error, which it sets on no op).
  std::optional<Error> collect(SendPipe& pipe, SendFlight& flight)
  {
    if (!flight.sent) return std::nullopt;
    if (!pipe.conn || pipe.epoch != flight.epoch) {
      // Its connection broke while an earlier statement's result was read.
      flight.lost = true;
      return Error(Errc::unavailable,
                   fmt::format("the connection to PostgreSQL at {} broke{}", redact_pg_url(url),
                               k_send_in_doubt),
                   "queue.url");
    }
    try {
      const PgRows rows = pipe.conn->take();
      if (static_cast<size_t>(rows.size()) != flight.count) {
        return Error(Errc::internal, "acmo_send answered a different number of rows");
      }
      const int64_t now = flight.now;
      int i = 0;
      for (auto* op : flight.ops) {
        op->backend = pipe.key;
        op->results.clear();
        for (const auto& p : op->items) {
          const int row = i++;
          const std::string_view kind = rows.get(row, 0);
          SendResult r;
          r.dedup_id = p.dedup_id;
          r.seq = rows.get_int(row, 1);
          r.message_id = std::string(rows.get(row, 2));
          if (kind == "refused" && p.request->unless_duplicate) {
            op->results.emplace_back(Unexpected(*p.request->unless_duplicate));
          } else if (kind == "refused") {
            op->results.emplace_back(
              make_error(Errc::internal, "acmo_send refused a request that allowed a new message"));
          } else if (kind == "conflict") {
            const int64_t age = (now - (rows.get_int(row, 3) - options.dedup_window_ms)) / 1000;
            op->results.emplace_back(make_error(
              Errc::conflict,
              fmt::format("the deduplication id \"{}\" was used {} s ago for a different "
                          "message (message {}); a retry must send the same request, and a new "
                          "request needs a new id",
                          p.dedup_id, age, r.message_id),
              "deduplicationId"));
          } else {
            r.duplicate =
              kind == "duplicate" && r.message_id != format_message_id(p.message_id);
            op->results.emplace_back(std::move(r));
          }
        }
      }
      ++committed_transactions;
      committed_requests += static_cast<int64_t>(flight.ops.size());
      return std::nullopt;
    } catch (const std::exception& e) {
      return pipe_error(pipe, flight, e);
    }
  }

  // An op of those of `count` requests that pass prepare_send; the others' errors go to
  // `results` (from results[0]), and where[k] is the request of the op's k-th item.
  std::shared_ptr<SendOp> prepare_op(const SendRequest* requests, size_t count,
                                     Expected<SendResult>* results, std::vector<size_t>& where)
  {
    auto op = std::make_shared<SendOp>();
    for (size_t i = 0; i < count; ++i) {
      auto prepared = prepare_send(requests[i]);
      if (prepared) {
        op->items.push_back(std::move(*prepared));
        where.push_back(i);
      } else {
        results[i] = Unexpected(prepared.error());
      }
    }
    return op;
  }

  // Put an op's outcome into `results`, at the places `where` says.
  static void answer_op(SendOp& op, const std::vector<size_t>& where,
                        Expected<SendResult>* results)
  {
    for (size_t k = 0; k < where.size(); ++k) {
      results[where[k]] = op.error ? Expected<SendResult>(Unexpected(*op.error))
                                   : std::move(op.results[k]);
    }
  }

  // Send `count` requests in one op of the group commit, durable when answered.
  std::vector<Expected<SendResult>> send_many(const SendRequest* requests, size_t count)
  {
    keep_time();
    std::vector<Expected<SendResult>> results(count);
    std::vector<size_t> where;
    auto op = prepare_op(requests, count, results.data(), where);
    if (op->items.empty()) return results;
    submit(op);
    answer_op(*op, where, results.data());
    return results;
  }

  // send_bulk's statements, one op each, in order, on the connections of bulk_senders, two in
  // flight on each at a time: the server runs one while this process reads the result of the
  // one before and builds the one after. Each op committed gets the commit make_durable must
  // cover (its generation), unless queue.durability is "normal".
  //
  // Statements that share no group and no deduplication id may commit in either order, and
  // one server process is the limit of a connection: such statements go on separate
  // connections, and run at once. A statement that shares one with a statement in flight goes
  // on that statement's connection, which runs its statements in order; one that shares with
  // statements in flight on two waits until one of them is read. So each group's messages
  // commit in their order and a duplicate after its original, and a send_bulk to one group
  // uses one connection.
  //
  // A connection that breaks loses every statement in flight on it: each is sent again, in
  // order, alone, when the dedup window makes that safe (resend). A statement the server rolled
  // back is sent again once the statements after it on the connection are read, unless one of
  // them committed (or may have) messages to a group of its own, which would come before its
  // messages. A statement the server refuses for a reason of its own (Errc::internal) fails its
  // requests together: the statement after it may have committed already, so sending them
  // again one by one, as the group commit does, would put them behind it.
  void send_pipelined(const std::vector<SendOp*>& ops)
  {
    constexpr size_t k_depth = 2;
    std::lock_guard lock(bulk_mu);
    std::vector<SendFlight> flights;
    flights.reserve(ops.size());
    for (auto* op : ops) flights.push_back(SendFlight{{op}});
    // What a statement's messages must not overtake: its groups and deduplication keys, each
    // hashed once (two that collide only make their statements wait for each other).
    std::vector<std::vector<size_t>> keys(flights.size());
    const std::hash<std::string_view> hash;
    for (size_t k = 0; k < flights.size(); ++k) {
      for (const auto& p : flights[k].ops[0]->items) {
        keys[k].push_back(hash(p.request->group_id));
        keys[k].push_back(hash(p.dedup_key));
      }
    }
    struct Lane {
      std::deque<size_t> flying;
      std::unordered_map<size_t, int> keys; // of the statements in flight
      bool down = false; // its connection could not be made: the others carry its statements
    };
    std::array<Lane, k_bulk_lanes> lanes;
    // The lane statement `k` must go on, or (sharing nothing in flight) the one with the fewest
    // statements in flight; nullopt when it shares keys with statements on two.
    auto lane_for = [&](size_t k) -> std::optional<size_t> {
      std::optional<size_t> shared, idlest;
      for (size_t l = 0; l < lanes.size(); ++l) {
        if (lanes[l].down) continue;
        if (!idlest || lanes[l].flying.size() < lanes[*idlest].flying.size()) idlest = l;
        if (lanes[l].flying.empty()) continue;
        const bool shares = std::any_of(keys[k].begin(), keys[k].end(), [&](auto key) {
          return lanes[l].keys.count(key) != 0;
        });
        if (shares && shared) return std::nullopt;
        if (shares) shared = l;
      }
      return shared ? shared : idlest;
    };
    auto land = [&](Lane& lane, size_t k) {
      for (auto key : keys[k]) {
        auto it = lane.keys.find(key);
        if (--it->second == 0) lane.keys.erase(it);
      }
    };
    bool any = false;
    auto finish = [&](SendFlight& flight, std::optional<Error> error) {
      SendOp& op = *flight.ops[0];
      if (error) {
        op.error = std::move(error);
        return;
      }
      any = true;
      if (options.durability_full) op.generation = note_commit(op);
    };
    size_t next = 0;
    for (;;) {
      // The next statement goes on its lane's connection, or makes one when none is in flight.
      if (next < flights.size()) {
        const auto l = lane_for(next);
        if (l && lanes[*l].flying.size() < k_depth
            && (bulk_senders[*l].conn || lanes[*l].flying.empty())) {
          const size_t k = next;
          auto error = dispatch(bulk_senders[*l], flights[k]);
          // A connection that cannot be made (the server's max_connections reached, say) leaves
          // the statement to the other connections, if one is up.
          if (error && !flights[k].sent && !bulk_senders[*l].conn
              && std::count_if(lanes.begin(), lanes.end(), [](auto& o) { return !o.down; }) > 1) {
            lanes[*l].down = true;
            if (!bulk_lane_refused) { // once a process: each part of a file would say it again
              log::warn({"bulk_send_connection", {{"error", error->message}}},
                        "a bulk send could not make another connection ({}); it sends on the "
                        "others",
                        error->message);
            }
            bulk_lane_refused = true;
            continue;
          }
          ++next;
          if (error && !flights[k].sent) {
            finish(flights[k], std::move(error));
          } else {
            lanes[*l].flying.push_back(k); // lost, if sending broke the connection: read below
            for (auto key : keys[k]) ++lanes[*l].keys[key];
          }
          continue;
        }
      }
      // Else the oldest statement in flight is read.
      Lane* lane = nullptr;
      for (auto& candidate : lanes) {
        if (!candidate.flying.empty()
            && (lane == nullptr || candidate.flying.front() < lane->flying.front())) {
          lane = &candidate;
        }
      }
      if (lane == nullptr) break;
      SendPipe& pipe = bulk_senders[static_cast<size_t>(lane - lanes.data())];
      const size_t k = lane->flying.front();
      lane->flying.pop_front();
      auto error = collect(pipe, flights[k]);
      if (!error || !(flights[k].lost || flights[k].rolled_back)) {
        finish(flights[k], std::move(error));
        land(*lane, k);
        continue;
      }
      // To be sent again: the statements still in flight on its connection are read first
      // (lost, when the connection broke), then each is sent again in order before anything
      // new goes on it.
      std::vector<std::pair<size_t, std::optional<Error>>> read{{k, std::move(error)}};
      while (!lane->flying.empty()) {
        const size_t j = lane->flying.front();
        lane->flying.pop_front();
        read.emplace_back(j, collect(pipe, flights[j]));
      }
      for (size_t i = 0; i < read.size(); ++i) {
        auto& [j, e] = read[i];
        // Overtaken by a later statement that committed, or may have (lost), to a group of its.
        bool overtaken = false;
        for (size_t l = i + 1; e && flights[j].rolled_back && l < read.size(); ++l) {
          const SendFlight& after = flights[read[l].first];
          overtaken = overtaken
                      || ((!read[l].second || after.lost) && share_a_group(flights[j], after));
        }
        finish(flights[j], overtaken ? std::move(e) : resend(pipe, flights[j], std::move(e)));
        land(*lane, j);
      }
    }
    if (any) notify_waiters();
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
  tx.exec0("CREATE SCHEMA IF NOT EXISTS " + tx.quote_name(schema));
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
  impl->conninfo = connection_string(url);
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
  impl->send_wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  return std::unique_ptr<PgQueue>(new PgQueue(std::move(impl), std::move(options)));
}

bool PgQueue::listening() const { return m_impl->is_listening.load(); }

int64_t PgQueue::now_ms() const { return m_impl->now_ms(); }

// --- sending -------------------------------------------------------------------------------------

Expected<SendResult> PgQueue::send(const SendRequest& request)
{
  auto results = m_impl->send_many(&request, 1);
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
  return m_impl->send_many(requests.data(), requests.size());
}

// The statements commit without waiting for the disk, and one flush of the WAL at the end makes
// them all durable before any is answered: a flush after each would stop the sending for one.
// Each statement's results then stand or fall with its own commit (make_durable of its
// generation, already flushed: whether the server process that made it was still running).
std::vector<Expected<SendResult>> PgQueue::send_bulk(const std::vector<SendRequest>& requests)
{
  m_impl->keep_time();
  std::vector<Expected<SendResult>> results(requests.size());
  struct Part {
    size_t start;              // its first request
    size_t end;                // and the one after its last
    std::vector<size_t> where; // its op's items' requests, from start
    std::shared_ptr<SendOp> op;
  };
  std::vector<Part> parts;
  std::vector<SendOp*> ops;
  size_t start = 0;
  while (start < requests.size()) {
    size_t count = 0;
    size_t bytes = 0;
    while (start + count < requests.size() && count < k_bulk_chunk
           && (count == 0 || bytes + requests[start + count].body.size() <= k_bulk_bytes)) {
      bytes += requests[start + count].body.size();
      ++count;
    }
    Part part{start, start + count, {}, nullptr};
    part.op = m_impl->prepare_op(requests.data() + start, count, results.data() + start,
                                 part.where);
    if (!part.op->items.empty()) {
      ops.push_back(part.op.get());
      parts.push_back(std::move(part));
    }
    start += count;
  }
  if (!ops.empty()) m_impl->send_pipelined(ops);
  uint64_t last = 0;
  for (auto& part : parts) {
    Impl::answer_op(*part.op, part.where, results.data() + part.start);
    last = std::max(last, part.op->generation);
  }
  if (last == 0) return results;
  const auto failure = m_impl->make_durable(last);
  for (const auto& part : parts) {
    if (part.op->generation == 0) continue;
    auto error = failure ? failure : m_impl->make_durable(part.op->generation);
    if (!error) continue;
    for (size_t i = part.start; i < part.end; ++i) {
      if (results[i]) results[i] = Unexpected(*error);
    }
  }
  return results;
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
      journaled = impl.journal_begin(txn.tx.conn().backendpid(), got);
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
      // Every message of these groups was deleted or dead-lettered under their rows' locks.
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
      " c.* FROM (SELECT coalesce(sum(sent), 0) AS a, coalesce(sum(duplicates), 0) AS b,"
      " coalesce(sum(received), 0) AS c, coalesce(sum(deleted), 0) AS d,"
      " coalesce(sum(retried), 0) AS e, coalesce(sum(expired), 0) AS f,"
      " coalesce(sum(dead_lettered), 0) AS g, coalesce(sum(redriven), 0) AS h,"
      " coalesce(sum(purged), 0) AS i FROM queue_counters WHERE queue_id = $1) c,"
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
    return {};
  });
  if (!ok) return Unexpected(ok.error());
  return s;
}

CommitStats PgQueue::commit_stats() const
{
  return CommitStats{m_impl->committed_transactions.load(), m_impl->committed_requests.load()};
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
