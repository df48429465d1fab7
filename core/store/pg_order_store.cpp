#include "core/store/pg_order_store.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <fmt/core.h>
#include <pqxx/pqxx>

#include "core/orders/order.hpp"
#include "core/queue/postgres/pg_queue.hpp"
#include "core/store/pg_binary.hpp"
#include "core/store/pg_conninfo.hpp"
#include "core/store/pg_text.hpp"
#include "core/util/pool.hpp"

namespace acmo {

namespace {

using nlohmann::json;

// The migrations, in order; the version table holds how many have run. Times are milliseconds
// since the epoch, as in the embedded store, so both show exactly the same orders.
const std::vector<std::string> k_migrations = {
  // 1: orders, the audit trail, and the ids of the applied messages.
  R"SQL(
CREATE TABLE orders (
  id text PRIMARY KEY,
  customer_name text NOT NULL,
  customer_email text NOT NULL,
  items jsonb NOT NULL,
  total_cents bigint NOT NULL,
  status text NOT NULL,
  version bigint NOT NULL,
  created_at bigint NOT NULL,
  updated_at bigint NOT NULL
);
CREATE INDEX orders_by_created ON orders (created_at DESC, id);
CREATE INDEX orders_by_status ON orders (status, created_at DESC, id);
-- Every applied event, in the order applied; it outlives a DELETE.
CREATE TABLE order_events (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  order_id text NOT NULL,
  message_id text NOT NULL,
  seq bigint NOT NULL,
  type text NOT NULL,
  data jsonb NOT NULL,
  applied_at bigint NOT NULL
);
CREATE INDEX order_events_by_order ON order_events (order_id, id);
-- Written in the same transaction as the change each message made: a message delivered again
-- is found here and skipped.
CREATE TABLE applied_messages (
  message_id text PRIMARY KEY,
  applied_at bigint NOT NULL
);
-- The first step of applying a batch, in one round trip: lock the batch's orders (in id order,
-- so two batches never wait for each other in a cycle), then say which of its messages were
-- applied already. The batch's transaction is REPEATABLE READ: both queries, and everything
-- after them, see one snapshot.
CREATE FUNCTION acmo_begin_batch(order_ids text[], message_ids text[])
RETURNS TABLE (applied boolean, id text, status text, version bigint, created_at bigint,
               updated_at bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RETURN QUERY SELECT false, o.id, o.status, o.version, o.created_at, o.updated_at
    FROM orders o WHERE o.id = ANY(order_ids) ORDER BY o.id FOR UPDATE;
  RETURN QUERY SELECT true, a.message_id, NULL::text, NULL::bigint, NULL::bigint, NULL::bigint
    FROM applied_messages a WHERE a.message_id = ANY(message_ids);
END
$$;
)SQL",
  // 2: the batch's transaction looks its rows up by index. Every lookup in it (the orders to
  // lock, the applied ids, the orders the write replaces or updates) is by primary key, at most
  // handler.batch_size keys. Until autovacuum first analyzes a table (a minute or more after
  // it fills) the planner has no statistics and chose sequential scans, which read the whole
  // table for every batch: with one group at batch 100, about a sixth of the time of a
  // 40,000-event drain into new tables. set_config(..., true) lasts until the transaction ends, so it also
  // covers the write that follows in the same transaction, and nothing else.
  R"SQL(
CREATE OR REPLACE FUNCTION acmo_begin_batch(order_ids text[], message_ids text[])
RETURNS TABLE (applied boolean, id text, status text, version bigint, created_at bigint,
               updated_at bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM set_config('enable_seqscan', 'off', true);
  RETURN QUERY SELECT false, o.id, o.status, o.version, o.created_at, o.updated_at
    FROM orders o WHERE o.id = ANY(order_ids) ORDER BY o.id FOR UPDATE;
  RETURN QUERY SELECT true, a.message_id, NULL::text, NULL::bigint, NULL::bigint, NULL::bigint
    FROM applied_messages a WHERE a.message_id = ANY(message_ids);
END
$$;
)SQL",
  // 3: the change feed (changes_since). Each audit row keeps the id of the transaction that
  // wrote it; every transaction that commits after a snapshot has an id at or above the
  // snapshot's xmin, so "rows at or above the last xmin seen" misses no commit.
  R"SQL(
ALTER TABLE order_events ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS order_events_by_xid ON order_events (xid);
)SQL",
  // 4: when each applied event was accepted (its message first sent), beside when it was
  // applied; 0 for events applied before.
  R"SQL(
ALTER TABLE order_events ADD COLUMN IF NOT EXISTS accepted_at bigint NOT NULL DEFAULT 0;
)SQL",
  // 5: a message refused for good is recorded too: the reason, and the sequence number it was
  // refused under (NULL for an applied one). Without it, a handler whose visibility timeout ran
  // out while it waited for an order could apply, late and out of order, an event another
  // handler had meanwhile refused and dead-lettered, once a later event had made it allowed.
  // The same message redriven from the DLQ comes under a new sequence number and is decided
  // again. acmo_begin_batch gives the reason and the number in its status and version columns.
  R"SQL(
ALTER TABLE applied_messages ADD COLUMN IF NOT EXISTS rejected text,
  ADD COLUMN IF NOT EXISTS rejected_seq bigint;
CREATE OR REPLACE FUNCTION acmo_begin_batch(order_ids text[], message_ids text[])
RETURNS TABLE (applied boolean, id text, status text, version bigint, created_at bigint,
               updated_at bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM set_config('enable_seqscan', 'off', true);
  RETURN QUERY SELECT false, o.id, o.status, o.version, o.created_at, o.updated_at
    FROM orders o WHERE o.id = ANY(order_ids) ORDER BY o.id FOR UPDATE;
  RETURN QUERY SELECT true, a.message_id, a.rejected, a.rejected_seq, NULL::bigint, NULL::bigint
    FROM applied_messages a WHERE a.message_id = ANY(message_ids);
END
$$;
)SQL",
};

const std::string k_order_columns =
  "id, customer_name, customer_email, items::text, total_cents, status, version, created_at, "
  "updated_at";

// Every change of a batch in one statement. The sets of ids deleted, written whole and
// updated are disjoint; the events keep the order of the batch. An order written whole
// replaces the row the batch locked when it began, or else is inserted ($22 says which): a
// plain INSERT, since a writer that made the order meanwhile fails the batch with a unique
// violation and the batch is tried again. A statement follows it.
const std::string k_write_changes = R"SQL(
WITH deleted AS (DELETE FROM orders WHERE id = ANY($1::text[])),
whole AS (
  SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bigint[],
                       $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $22::boolean[])
    AS w(id, customer_name, customer_email, items, total_cents, status, version, created_at,
         updated_at, existed)),
written AS (
  INSERT INTO orders (id, customer_name, customer_email, items, total_cents, status, version,
                      created_at, updated_at)
  SELECT w.id, w.customer_name, w.customer_email, w.items, w.total_cents, w.status, w.version,
         w.created_at, w.updated_at
  FROM whole w WHERE NOT w.existed),
replaced AS (
  UPDATE orders o SET customer_name = w.customer_name, customer_email = w.customer_email,
    items = w.items, total_cents = w.total_cents, status = w.status, version = w.version,
    created_at = w.created_at, updated_at = w.updated_at
  FROM whole w WHERE w.existed AND o.id = w.id),
updated AS (
  UPDATE orders o SET status = u.status, version = u.version, updated_at = u.updated_at
  FROM unnest($11::text[], $12::text[], $13::bigint[], $14::bigint[])
    AS u(id, status, version, updated_at)
  WHERE o.id = u.id),
audit AS (
  INSERT INTO order_events (order_id, message_id, seq, type, data, applied_at, accepted_at)
  SELECT e.order_id, e.message_id, e.seq, e.type, e.data, $20::bigint, e.accepted_at
  FROM unnest($15::text[], $16::text[], $17::bigint[], $18::text[], $19::jsonb[],
              $21::bigint[])
    WITH ORDINALITY AS e(order_id, message_id, seq, type, data, accepted_at, n)
  ORDER BY e.n)
)SQL";

// Prepared on each connection the first time they are used.
const std::vector<std::pair<std::string, std::string>> k_statements = {
  {"acmo_get", "SELECT " + k_order_columns + " FROM orders WHERE id = $1"},
  // The page and the total in one statement, so in one snapshot.
  {"acmo_list_all",
   "SELECT c.total, o.* FROM (SELECT count(*) AS total FROM orders) c LEFT JOIN LATERAL"
   " (SELECT " + k_order_columns
     + " FROM orders ORDER BY created_at DESC, id LIMIT $1 OFFSET $2) o ON true"},
  {"acmo_list_status",
   "SELECT c.total, o.* FROM (SELECT count(*) AS total FROM orders WHERE status = $3) c"
   " LEFT JOIN LATERAL (SELECT " + k_order_columns
     + " FROM orders WHERE status = $3 ORDER BY created_at DESC, id LIMIT $1 OFFSET $2) o"
       " ON true"},
  {"acmo_events",
   "SELECT message_id, seq, type, data::text, applied_at, accepted_at FROM order_events"
   " WHERE order_id = $1 ORDER BY id"},
  {"acmo_begin_batch", "SELECT * FROM acmo_begin_batch($1::text[], $2::text[])"},
  // The snapshot's xmin and the orders changed at or above the last one, in one snapshot.
  {"acmo_changes",
   "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, e.order_id FROM (SELECT 1) one"
   " LEFT JOIN LATERAL (SELECT order_id FROM order_events WHERE xid >= $1::text::xid8"
   " ORDER BY xid LIMIT $2) e ON true"},
  {"acmo_xmin", "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"},
  // A page of the trail at or above a transaction id, after (xid, id), for acmo tail.
  {"acmo_trail",
   "SELECT id, order_id, message_id, seq, type, data::text, applied_at, accepted_at,"
   " xid::text::bigint FROM order_events WHERE xid >= $1::text::xid8"
   " AND (xid, id) > ($2::text::xid8, $3) ORDER BY xid, id LIMIT $4"},
  {"acmo_write", k_write_changes + R"SQL(
INSERT INTO applied_messages AS a (message_id, applied_at, rejected, rejected_seq)
SELECT m, $20::bigint, NULL, NULL FROM unnest($16::text[]) AS m
UNION ALL
SELECT r.m, $20::bigint, r.why, r.seq FROM unnest($23::text[], $24::text[], $25::bigint[])
  AS r(m, why, seq)
ON CONFLICT (message_id) DO UPDATE SET applied_at = excluded.applied_at,
  rejected = excluded.rejected, rejected_seq = excluded.rejected_seq
  WHERE a.rejected IS NOT NULL
)SQL"},
};

// A batch applied in the queue's own transaction (apply_in) records no message ids: its
// messages are deleted in that transaction, so none can come again. Its last statement puts
// the queue's search_path ($23) and plan_cache_mode ($24) back.
const std::string k_write_in_queue =
  k_write_changes
  + "SELECT set_config('search_path', $23, true), set_config('plan_cache_mode', $24, true)";

// The first statement of apply_in, with the store's schema `schema` (quoted) in it: the
// search_path set to it ($1) for the batch's statements, a transaction-scoped advisory lock
// on each order id ($2, sorted), and then acmo_begin_batch ($2, and the message ids $3), whose
// statements find the store's tables along that search_path; it is called with the locks'
// count, so after them. While the orders table is under ten pages, the batch's statements are
// planned for their arguments and the table as it is (force_custom_plan, as on the store's own
// connections): the queue's connections keep one generic plan per statement, and one made
// while orders was empty and analyzed so thinks it holds one row and reads it whole, by its
// primary key, for every order a batch writes. Made once the table has ten pages, the plan
// finds each order by its key at any size, as it does for a table never analyzed (the planner
// takes that for ten pages). Its rows begin with the queue's search_path and plan_cache_mode,
// to be put back; there is one with those alone when acmo_begin_batch returns none.
std::string store_enter_sql(const std::string& schema)
{
  return "WITH e AS MATERIALIZED (SELECT current_setting('search_path') AS path,"
         " current_setting('plan_cache_mode') AS mode,"
         " set_config('search_path', $1, true),"
         " set_config('plan_cache_mode', CASE WHEN"
         " pg_relation_size(($1::text || '.orders')::regclass)"
         " < 10 * current_setting('block_size')::bigint THEN 'force_custom_plan'"
         " ELSE current_setting('plan_cache_mode') END, true),"
         " (SELECT count(pg_advisory_xact_lock(hashtextextended('acmo order ' || i, 0)))"
         " FROM unnest($2::text[]) WITH ORDINALITY AS u(i, n)) AS locks)"
         " SELECT e.path, e.mode, b.* FROM e LEFT JOIN LATERAL " + schema
         + ".acmo_begin_batch(CASE WHEN e.locks >= 0 THEN $2::text[] END, $3::text[]) b ON true";
}

// The statements of apply_in but the first, prepared on the queue's connections as they are
// used there (prepare_in_queue): parsed and planned once per connection, not at every batch.
// They run with this store's schema first in the search_path; a prepared statement is parsed
// again should the search_path differ from one execution to the next.
const std::vector<std::pair<std::string, std::string>> k_in_queue_statements = {
  {"acmo_store_leave",
   "SELECT set_config('search_path', $1, true), set_config('plan_cache_mode', $2, true)"},
  {"acmo_store_write", k_write_in_queue},
};

void prepare_in_queue(pqxx::transaction_base& tx)
{
  // Registering a statement again with the same text does nothing.
  for (const auto& [name, sql] : k_in_queue_statements) tx.conn().prepare(name, sql);
}

// PostgreSQL keeps no NUL character in text or jsonb; the embedded store does. Such an event
// can never apply here, and must not fail the whole batch.
bool holds_nul(const json& j)
{
  if (j.is_string()) return j.get_ref<const std::string&>().find('\0') != std::string::npos;
  if (j.is_object()) {
    for (const auto& [key, value] : j.items()) {
      if (key.find('\0') != std::string::npos || holds_nul(value)) return true;
    }
  }
  if (j.is_array()) {
    for (const auto& value : j) {
      if (holds_nul(value)) return true;
    }
  }
  return false;
}

Order read_order(const pqxx::row& row, pqxx::row::size_type first = 0)
{
  Order o;
  o.id = row[first].as<std::string>();
  o.customer_name = row[first + 1].as<std::string>();
  o.customer_email = row[first + 2].as<std::string>();
  o.items = stored_items_from_json(row[first + 3].c_str());
  o.total_cents = row[first + 4].as<int64_t>();
  o.status = row[first + 5].as<std::string>();
  o.version = row[first + 6].as<int64_t>();
  o.created_at_ms = row[first + 7].as<int64_t>();
  o.updated_at_ms = row[first + 8].as<int64_t>();
  return o;
}

} // namespace

struct PgOrderStore::Impl {
  Impl(PgOptions options, std::string conninfo)
    : m_options(std::move(options)), m_conninfo(std::move(conninfo)),
      pool(PoolOptions{m_options.pool_size, m_options.connect_timeout_ms,
                       Error(Errc::unavailable,
                             fmt::format("all {} PostgreSQL connections (store.pool_size) "
                                         "stayed busy for {} ms; raise store.pool_size, or run "
                                         "fewer handler workers",
                                         m_options.pool_size, m_options.connect_timeout_ms),
                             "store.pool_size")},
           [this] { return connect(); },
           [](const std::unique_ptr<pqxx::connection>& conn) { return conn->is_open(); })
  {
  }

  Error unavailable(std::string_view what) const
  {
    return Error(Errc::unavailable, pg_unavailable_message(m_options.url, what, "store.url"),
                 "store.url");
  }

  Expected<std::unique_ptr<pqxx::connection>> connect()
  {
    try {
      auto conn = std::make_unique<pqxx::connection>(m_conninfo);
      // The session's settings, in one round trip with the schema's (pin_schema).
      const std::string settings =
        // Plan each execution for its arguments and the tables as they are now. A generic plan
        // is made once per connection, often while the tables are still small, and then scans
        // the whole table for every batch once it has grown.
        "SET plan_cache_mode = force_custom_plan; "
        // A server that hangs (rather than goes away) must not hold a worker for ever: a
        // statement that takes this long fails, and the batch is retried with backoff.
        "SET statement_timeout = 30000; "
        // Notices and warnings would reach stderr as libpq's own lines, outside the log and
        // its format; what acmo must know arrives as an error.
        "SET client_min_messages = error; "
        // A commit of the store is on disk when it returns, whatever the server's, database's
        // or role's default: a handler of the embedded queue deletes an event's message once
        // the store has committed it, so an asynchronous commit lost in a crash of the server
        // would lose the event. (With the queue in PostgreSQL too, the events are applied in
        // the queue's own transaction, on its connection.)
        "SET synchronous_commit = on";
      pin_schema(*conn, settings);
      for (const auto& [name, sql] : k_statements) conn->prepare(name, sql);
      return conn;
    } catch (const pqxx::broken_connection& e) {
      return Unexpected(unavailable(e.what()));
    } catch (const std::exception& e) {
      // A refused login, a server that does not exist: libpq says which.
      return Unexpected(unavailable(e.what()));
    }
  }

  // Keep the store in one schema for good: the one that holds its tables, found along the
  // search_path, or else the first schema of it that exists, where migrate creates them. The
  // search_path of a URL without one is "$user", public: a schema named after the user that
  // comes to exist later (the queue's own, queue.schema = "acmo" for the user acmo) must not
  // hide the orders in public from then on. Every connection is set to that schema alone.
  // `settings` (SET statements) run first, in the same round trip.
  void pin_schema(pqxx::connection& conn, const std::string& settings)
  {
    std::lock_guard lock(m_schema_mu);
    if (m_search_path.empty()) {
      const auto r = pqxx::nontransaction(conn).exec(
        settings + "; SELECT coalesce((SELECT quote_ident(n.nspname) FROM pg_class c JOIN "
        "pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = "
        "to_regclass('acmo_schema_version')), quote_ident(current_schema()))");
      if (r.at(0)[0].is_null()) return; // no schema of the search_path exists: migrate says so
      m_search_path = r.at(0)[0].as<std::string>();
      m_enter_name = "acmo_store_enter " + m_search_path;
      m_enter_sql = store_enter_sql(m_search_path);
      pqxx::nontransaction(conn).exec0("SET search_path = " + m_search_path);
      return;
    }
    pqxx::nontransaction(conn).exec0(settings + "; SET search_path = " + m_search_path);
  }

  // Run `body` on a pooled connection. A broken connection (server restarted, backend
  // terminated, commit in doubt) is dropped and the body tried again on a new one; so are a
  // deadlock, a serialization failure and a unique violation, which a concurrent handler
  // applying the same messages causes. Running a body twice is safe: reads change nothing, and
  // a batch that did commit is found in applied_messages the second time. A conflict is tried
  // again more often than a broken connection: it only says that another transaction got there
  // first, and the next attempt sees what it did.
  template<typename F> auto run(F&& body) -> Expected<decltype(body(std::declval<pqxx::connection&>()))>
  {
    constexpr int k_attempts = 3;
    constexpr int k_conflicts = 10;
    Error last(Errc::internal, "no attempt made");
    for (int attempt = 0, conflicts = 0; attempt < k_attempts && conflicts < k_conflicts;
         ++attempt) {
      auto lease = pool.acquire();
      if (!lease) return Unexpected(lease.error());
      try {
        return body(*lease->conn());
      } catch (const pqxx::broken_connection& e) {
        lease->discard();
        pool.discard_idle();
        last = unavailable(e.what());
      } catch (const pqxx::in_doubt_error& e) {
        lease->discard();
        last = unavailable(e.what());
      } catch (const pqxx::transaction_rollback& e) {
        last = Error(Errc::unavailable, fmt::format("PostgreSQL: {}", first_line(e.what())));
        std::this_thread::sleep_for(std::chrono::milliseconds(2 * ++conflicts));
        --attempt;
      } catch (const pqxx::unique_violation& e) {
        last = Error(Errc::unavailable, fmt::format("PostgreSQL: {}", first_line(e.what())));
        ++conflicts;
        --attempt;
      } catch (const pqxx::sql_error& e) {
        const std::string& state = e.sqlstate();
        // Class 08: connection exception; 57P0x: the server is shutting down or restarting.
        if (state.rfind("08", 0) == 0 || state.rfind("57P", 0) == 0) {
          lease->discard();
          pool.discard_idle();
          last = unavailable(e.what());
          continue;
        }
        // Class 53: out of resources (disk full, too many connections); 57014: a statement
        // cancelled by the server (statement_timeout, pg_cancel_backend).
        if (state.rfind("53", 0) == 0 || state == "57014") {
          return Unexpected(unavailable(e.what()));
        }
        return make_error(Errc::internal,
                          pg_refused_message(m_options.url, state, e.what(), "store.url"));
      } catch (const std::exception& e) {
        if (!lease->conn()->is_open()) {
          lease->discard();
          last = unavailable(e.what());
          continue;
        }
        return make_error(Errc::internal, fmt::format("PostgreSQL: {}", first_line(e.what())));
      }
    }
    return Unexpected(last);
  }

  Expected<void> migrate()
  {
    const int latest = static_cast<int>(k_migrations.size());
    auto done = run([&](pqxx::connection& conn) -> Expected<void> {
      // Every open but the first finds the tables current: one round trip, where the migrator
      // below takes seven. A schema without the tables says so with an error that changes
      // nothing.
      try {
        const auto r =
          pqxx::nontransaction(conn).exec("SELECT max(version) FROM acmo_schema_version");
        if (!r.at(0)[0].is_null() && r.at(0)[0].as<int>() == latest) return {};
      } catch (const pqxx::undefined_table&) {
      }
      pqxx::work tx(conn);
      tx.exec0("SET LOCAL client_min_messages = warning");
      // One migrator at a time per schema: CREATE TABLE IF NOT EXISTS alone is not safe when
      // several processes start at once.
      tx.exec("SELECT pg_advisory_xact_lock(hashtext('acmo schema ' || "
               "coalesce(current_schema(), '')))");
      if (tx.exec1("SELECT current_schema() IS NULL")[0].as<bool>()) {
        return make_error(Errc::invalid_input,
                          "the PostgreSQL search_path names no schema that exists; create it or "
                          "fix store.url",
                          "store.url");
      }
      tx.exec0("CREATE TABLE IF NOT EXISTS acmo_schema_version (version integer NOT NULL)");
      const int version = tx.exec1("SELECT coalesce(max(version), 0) FROM acmo_schema_version")[0]
                            .as<int>();
      if (version > latest) {
        return make_error(Errc::conflict,
                          fmt::format("the PostgreSQL database holds acmo schema version {}, newer "
                                      "than this acmo knows ({}); upgrade acmo",
                                      version, latest),
                          "store.url");
      }
      if (version < latest) {
        for (int v = version; v < latest; ++v) tx.exec0(k_migrations[static_cast<size_t>(v)]);
        tx.exec0("DELETE FROM acmo_schema_version");
        tx.exec0(fmt::format("INSERT INTO acmo_schema_version (version) VALUES ({})", latest));
      }
      tx.commit();
      return {};
    });
    if (!done) return Unexpected(done.error());
    return *done;
  }

  // What a batch does to one order it names.
  struct Touched {
    bool existed = false;      // the order was there when the batch began
    std::optional<Order> now;  // as the events so far left it
    bool whole = false;        // `now` holds the whole order (a CREATE of this batch made it)
    bool changed = false;
  };

  // The batch's transaction is REPEATABLE READ, so that everything it decides rests on one
  // snapshot. Under READ COMMITTED each statement took a new one: a handler that waited on
  // an order's lock for another applying the same messages (its visibility timeout ran out)
  // read the orders as they were before the other committed and the applied ids as they were
  // after, so a CREATE counted as applied while the UPDATEs behind it found no order and were
  // dead-lettered; and a CREATE of an order another batch was creating overwrote it. Now a
  // batch whose snapshot misses a concurrent batch's commit meets that commit in what it
  // writes (an order both change or create, or an applied id both insert) and fails with a
  // serialization failure or a unique violation; run() tries it again in a new snapshot,
  // which sees the other batch whole.
  std::vector<ApplyOutcome> apply_once(pqxx::connection& conn,
                                       const std::vector<AppliedEvent>& events, int64_t now_ms)
  {
    pqxx::transaction<pqxx::isolation_level::repeatable_read> tx(conn);
    auto out = decide_and_write(tx, events, now_ms, false);
    tx.commit();
    return out;
  }

  // Lock the batch's orders, decide every event by the shared rules and write every change, in
  // `tx`, which the caller commits. `in_queue`: the queue's transaction on the queue's
  // connection, where only the statements of apply_in are prepared and no message id is
  // recorded.
  std::vector<ApplyOutcome> decide_and_write(pqxx::transaction_base& tx,
                                             const std::vector<AppliedEvent>& events,
                                             int64_t now_ms, bool in_queue)
  {
    std::map<std::string, Touched> orders;
    PgArray message_ids;
    for (const auto& e : events) {
      orders.emplace(e.event.order_id, Touched{});
      message_ids.add(e.message_id);
    }
    PgArray order_ids; // in id order, as in_queue's locks are taken
    for (const auto& [id, t] : orders) order_ids.add(id);
    std::unordered_set<std::string> applied;
    // Refused before: the reason, and the sequence number the message then had.
    std::unordered_map<std::string, std::pair<std::string, int64_t>> refused;
    // In the queue's transaction: its search_path and plan_cache_mode, which the batch's last
    // statement puts back, and the column where acmo_begin_batch's begin.
    std::string queue_path, queue_mode;
    pqxx::row::size_type c = 0;
    pqxx::result begun;
    if (in_queue) {
      prepare_in_queue(tx);
      tx.conn().prepare(m_enter_name, m_enter_sql);
      begun = tx.exec_prepared(m_enter_name, m_search_path, order_ids.text(), message_ids.text());
      queue_path = begun.at(0)[0].as<std::string>();
      queue_mode = begun.at(0)[1].as<std::string>();
      c = 2;
    } else {
      begun = tx.exec_prepared("acmo_begin_batch", order_ids.text(), message_ids.text());
    }
    for (const auto& row : begun) {
      if (row[c].is_null()) continue; // in_queue: acmo_begin_batch returned nothing
      if (row[c].as<bool>()) {
        if (row[c + 2].is_null()) {
          applied.insert(row[c + 1].as<std::string>());
        } else {
          refused.emplace(row[c + 1].as<std::string>(),
                          std::make_pair(row[c + 2].as<std::string>(), row[c + 3].as<int64_t>()));
        }
        continue;
      }
      Order o;
      o.id = row[c + 1].as<std::string>();
      o.status = row[c + 2].as<std::string>();
      o.version = row[c + 3].as<int64_t>();
      o.created_at_ms = row[c + 4].as<int64_t>();
      o.updated_at_ms = row[c + 5].as<int64_t>();
      auto& t = orders[o.id];
      t.existed = true;
      t.now = std::move(o);
    }

    std::vector<ApplyOutcome> out(events.size());
    // The write's arrays go in binary format, which the server reads without parsing an array
    // literal character by character (each jsonb element is still parsed as JSON).
    using Type = PgBinaryArray::Type;
    PgBinaryArray audit_order(Type::text), audit_message(Type::text), audit_seq(Type::bigint),
      audit_type(Type::text), audit_data(Type::jsonb), audit_accepted(Type::bigint);
    PgBinaryArray refused_ids(Type::text), refused_why(Type::text),
      refused_seq(Type::bigint); // recorded with the batch's changes
    bool any = false;
    for (size_t i = 0; i < events.size(); ++i) {
      const AppliedEvent& a = events[i];
      if (auto was = refused.find(a.message_id);
          was != refused.end() && was->second.second == a.seq) {
        // The same delivery of a message refused before: refused again, for the same reason.
        out[i].kind = ApplyOutcome::Kind::rejected;
        out[i].reason = was->second.first;
        continue;
      }
      if (!applied.insert(a.message_id).second) {
        out[i].kind = ApplyOutcome::Kind::duplicate;
        continue;
      }
      auto reject = [&](std::string reason) {
        out[i].kind = ApplyOutcome::Kind::rejected;
        out[i].reason = std::move(reason);
        applied.erase(a.message_id);
        refused[a.message_id] = {out[i].reason, a.seq};
        // In the queue's transaction the dead-lettering commits with the batch: nothing to
        // record.
        if (in_queue) return;
        refused_ids.add(a.message_id);
        refused_why.add(out[i].reason);
        refused_seq.add(a.seq);
        any = true;
      };
      if (holds_nul(a.event.data)) {
        reject("data: holds a NUL character (\\u0000), which PostgreSQL cannot store; remove it");
        continue;
      }
      auto& t = orders[a.event.order_id];
      if (auto ok = apply_event(t.now, a.event, change_time(a, now_ms)); !ok) {
        reject(ok.error().message);
        continue;
      }
      if (a.event.type == EventType::create) t.whole = true;
      if (a.event.type == EventType::remove) t.whole = false;
      t.changed = true;
      any = true;
      const std::string data = a.event.data.dump();
      audit_order.add(a.event.order_id);
      audit_message.add(a.message_id);
      audit_seq.add(a.seq);
      audit_type.add(std::string_view(event_type_name(a.event.type)));
      audit_data.add_jsonb(data);
      audit_accepted.add(a.accepted_at_ms);
    }
    if (!any) { // nothing to write
      if (in_queue) tx.exec_prepared("acmo_store_leave", queue_path, queue_mode);
      return out;
    }

    PgBinaryArray deleted(Type::text);
    PgBinaryArray w_id(Type::text), w_name(Type::text), w_email(Type::text), w_items(Type::jsonb),
      w_total(Type::bigint), w_status(Type::text), w_version(Type::bigint),
      w_created(Type::bigint), w_updated(Type::bigint), w_existed(Type::boolean);
    PgBinaryArray u_id(Type::text), u_status(Type::text), u_version(Type::bigint),
      u_updated(Type::bigint);
    for (const auto& [id, t] : orders) {
      if (!t.changed) continue;
      if (!t.now) {
        if (t.existed) deleted.add(id);
      } else if (t.whole) {
        const Order& o = *t.now;
        w_id.add(o.id);
        w_name.add(o.customer_name);
        w_email.add(o.customer_email);
        w_items.add_jsonb(stored_items_json(o.items));
        w_total.add(o.total_cents);
        w_status.add(o.status);
        w_version.add(o.version);
        w_created.add(o.created_at_ms);
        w_updated.add(o.updated_at_ms);
        w_existed.add_bool(t.existed);
      } else {
        const Order& o = *t.now;
        u_id.add(o.id);
        u_status.add(o.status);
        u_version.add(o.version);
        u_updated.add(o.updated_at_ms);
      }
    }
    const auto bin = [](PgBinaryArray& a) { return pqxx::binarystring(a.take()); };
    auto write = [&](auto&& exec) {
      exec(bin(deleted), bin(w_id), bin(w_name), bin(w_email), bin(w_items), bin(w_total),
           bin(w_status), bin(w_version), bin(w_created), bin(w_updated), bin(u_id),
           bin(u_status), bin(u_version), bin(u_updated), bin(audit_order), bin(audit_message),
           bin(audit_seq), bin(audit_type), bin(audit_data), now_ms, bin(audit_accepted),
           bin(w_existed));
    };
    if (in_queue) {
      write([&](auto&&... args) {
        tx.exec_prepared("acmo_store_write", args..., queue_path, queue_mode);
      });
    } else {
      write([&](auto&&... args) {
        tx.exec_prepared("acmo_write", args..., bin(refused_ids), bin(refused_why),
                         bin(refused_seq));
      });
    }
    return out;
  }

  const PgOptions m_options;
  const std::string m_conninfo;
  std::mutex m_schema_mu;
  std::string m_search_path; // the schema of the store's tables, quoted (pin_schema)
  // apply_in's first statement, named after that schema (store_enter_sql).
  std::string m_enter_name;
  std::string m_enter_sql;
  Pool<std::unique_ptr<pqxx::connection>> pool;
};

PgOrderStore::PgOrderStore(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}

PgOrderStore::~PgOrderStore() = default;

int PgOrderStore::schema_version() { return static_cast<int>(k_migrations.size()); }

Expected<std::unique_ptr<PgOrderStore>> PgOrderStore::open(const PgOptions& options)
{
  if (options.url.empty()) {
    return make_error(Errc::invalid_input,
                      "store.url is empty; set it to the PostgreSQL server's URL, e.g. "
                      "postgresql://acmo@127.0.0.1:5432/acmo",
                      "store.url");
  }
  // libpq's connect_timeout is in whole seconds.
  const auto seconds = std::max<int64_t>(1, (options.connect_timeout_ms + 999) / 1000);
  auto conninfo = pg_conninfo_with_defaults(options.url, {
    {"connect_timeout", std::to_string(seconds)},
    // A name that shows in pg_stat_activity.
    {"fallback_application_name", "acmo"},
    // A server that vanishes without closing the connection (a host down, a cable pulled) is
    // noticed within about 25 s instead of the kernel's two hours.
    {"keepalives", "1"},
    {"keepalives_idle", "10"},
    {"keepalives_interval", "5"},
    {"keepalives_count", "3"},
  });
  if (!conninfo) return Unexpected(conninfo.error());
  auto impl = std::make_unique<Impl>(options, std::move(*conninfo));
  if (auto ok = impl->migrate(); !ok) return Unexpected(ok.error());
  return std::unique_ptr<PgOrderStore>(new PgOrderStore(std::move(impl)));
}

int PgOrderStore::open_connections() const { return m_impl->pool.open_connections(); }

Expected<Order> PgOrderStore::get(std::string_view id)
{
  auto found = m_impl->run([&](pqxx::connection& conn) -> std::optional<Order> {
    pqxx::nontransaction tx(conn);
    auto r = tx.exec_prepared("acmo_get", std::string(id));
    if (r.empty()) return std::nullopt;
    return read_order(r[0]);
  });
  if (!found) return Unexpected(found.error());
  if (!*found) {
    return make_error(Errc::not_found,
                      fmt::format("no order {}; `acmo orders list` shows the orders", id), "id");
  }
  return std::move(**found);
}

Expected<OrderList> PgOrderStore::list(std::string_view status, int64_t limit, int64_t offset)
{
  return m_impl->run([&](pqxx::connection& conn) {
    pqxx::nontransaction tx(conn);
    auto r = status.empty() ? tx.exec_prepared("acmo_list_all", limit, offset)
                            : tx.exec_prepared("acmo_list_status", limit, offset,
                                               std::string(status));
    OrderList out;
    for (const auto& row : r) {
      out.total = row[0].as<int64_t>();
      if (!row[1].is_null()) out.orders.push_back(read_order(row, 1));
    }
    return out;
  });
}

Expected<std::vector<OrderEventRecord>> PgOrderStore::events(std::string_view id)
{
  return m_impl->run([&](pqxx::connection& conn) {
    pqxx::nontransaction tx(conn);
    std::vector<OrderEventRecord> out;
    for (const auto& row : tx.exec_prepared("acmo_events", std::string(id))) {
      OrderEventRecord r;
      r.message_id = row[0].as<std::string>();
      r.seq = row[1].as<int64_t>();
      r.type = row[2].as<std::string>();
      r.data = json::parse(row[3].c_str(), nullptr, false);
      r.applied_at_ms = row[4].as<int64_t>();
      r.accepted_at_ms = row[5].as<int64_t>();
      out.push_back(std::move(r));
    }
    return out;
  });
}

Expected<TrailPage> PgOrderStore::trail_since(int64_t mark, int64_t max)
{
  return m_impl->run([&](pqxx::connection& conn) {
    // One snapshot for the pages and the new mark: every commit after it has an id at or
    // above its xmin, and every row below that was visible to it.
    pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(conn);
    TrailPage page;
    page.mark = tx.exec_prepared1("acmo_xmin")[0].as<int64_t>();
    const int64_t from = mark < 0 ? page.mark : mark;
    int64_t after_xid = 0;
    int64_t after_id = 0;
    // Every row at or above the mark, however many: a mark that stopped inside a range of
    // transaction ids could skip a transaction of that range not committed yet.
    const int64_t want = std::max<int64_t>(1, std::min<int64_t>(1000, max));
    for (;;) {
      auto rows = tx.exec_prepared("acmo_trail", std::to_string(from), std::to_string(after_xid),
                                   after_id, want);
      for (const auto& row : rows) {
        TrailEntry e;
        e.id = row[0].as<int64_t>();
        e.order_id = row[1].as<std::string>();
        e.event.message_id = row[2].as<std::string>();
        e.event.seq = row[3].as<int64_t>();
        e.event.type = row[4].as<std::string>();
        e.event.data = json::parse(row[5].c_str(), nullptr, false);
        e.event.applied_at_ms = row[6].as<int64_t>();
        e.event.accepted_at_ms = row[7].as<int64_t>();
        after_xid = row[8].as<int64_t>();
        after_id = e.id;
        page.entries.push_back(std::move(e));
      }
      if (static_cast<int64_t>(rows.size()) < want) break;
    }
    tx.commit();
    return page;
  });
}

Expected<OrderChanges> PgOrderStore::changes_since(int64_t mark, int64_t max)
{
  return m_impl->run([&](pqxx::connection& conn) {
    pqxx::nontransaction tx(conn);
    OrderChanges out;
    if (mark >= 0) {
      auto r = tx.exec_prepared("acmo_changes", std::to_string(mark), max + 1);
      for (const auto& row : r) {
        out.mark = row[0].as<int64_t>();
        if (!row[1].is_null()) out.order_ids.push_back(row[1].as<std::string>());
      }
      if (static_cast<int64_t>(out.order_ids.size()) <= max) return out;
    }
    out.all = true;
    out.order_ids.clear();
    out.mark = tx.exec_prepared1("acmo_xmin")[0].as<int64_t>();
    return out;
  });
}

Expected<std::vector<ApplyOutcome>> PgOrderStore::apply_batch(
  const std::vector<AppliedEvent>& events, int64_t now_ms)
{
  if (events.empty()) return std::vector<ApplyOutcome>{};
  return m_impl->run(
    [&](pqxx::connection& conn) { return m_impl->apply_once(conn, events, now_ms); });
}

Expected<void> PgOrderStore::ping()
{
  auto answered = m_impl->run([](pqxx::connection& conn) {
    pqxx::nontransaction tx(conn);
    tx.exec("SELECT 1");
    return true;
  });
  if (!answered) return Unexpected(answered.error());
  return {};
}

Expected<std::vector<ApplyOutcome>> PgOrderStore::apply_in(QueueTransaction& txn,
                                                          const std::vector<AppliedEvent>& events,
                                                          int64_t now_ms)
{
  if (events.empty()) return std::vector<ApplyOutcome>{};
  auto tx = pg_transaction(txn);
  if (!tx) return Unexpected(tx.error());
  // The batch in the queue's transaction, with this store's schema first in its search_path
  // for the batch's statements and the queue's put back after them. The queue's transaction is
  // READ COMMITTED; its receive holds the batch's message groups, so no other handler applies
  // these messages meanwhile. Orders of one batch may be in other groups, and an order a
  // CREATE makes is not there to lock: a transaction-scoped advisory lock on each order id,
  // taken in id order, keeps two batches from deciding on the same order at once, and each
  // statement after the locks sees what the other committed. A database error escapes to the
  // queue, which rolls its transaction back and says why.
  return m_impl->decide_and_write(**tx, events, now_ms, true);
}

} // namespace acmo
