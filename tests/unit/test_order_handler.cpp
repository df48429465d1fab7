// The OrderHandler on the embedded store: events applied once, in group order, with the
// ones that can never apply dead-lettered with their reason.
#include <unistd.h>

#include <algorithm>

#include <catch2/catch.hpp>

#include "core/cache/cache.hpp"
#include "core/cache/cached_orders.hpp"
#include "core/handler/handler_registry.hpp"
#include "core/handler/order_handler.hpp"
#include "core/sqlite/sqlite.hpp"
#include "core/store/order_store.hpp"
#include "unit/queue_test_util.hpp"
#include "unit/temp_dir.hpp"

using namespace acmo;
using acmo::test::must;
using acmo::test::must_fail;
using acmo::test::open_queue;
using acmo::test::send_event;
using acmo::test::TempDir;

namespace {

const std::string k_create_a =
  R"({"type":"CREATE","orderId":"ord_a","data":{"customer_name":"Ada","customer_email":"ada@example.com","items":[{"product_id":"p1","quantity":3,"unit_price":19.99}]}})";
const std::string k_create_b =
  R"({"type":"CREATE","orderId":"ord_b","data":{"customer_name":"Bob","customer_email":"bob@example.com","items":[]}})";

} // namespace

TEST_CASE("OrderHandler: events apply in order; the impossible ones go to the DLQ", "[handler]")
{
  TempDir dir;
  ManualClock clock;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path, {}, clock);
  send_event(*q, k_create_a);
  send_event(*q, R"({"type":"UPDATE","orderId":"ord_a","data":{"status":"processing"}})");
  send_event(*q, k_create_b);
  send_event(*q, R"({"type":"UPDATE","orderId":"ord_a","data":{"status":"shipped"}})");
  send_event(*q, R"({"type":"UPDATE","orderId":"ord_a","data":{"status":"pending"}})");
  send_event(*q, R"({"type":"DELETE","orderId":"ord_b","data":{}})");
  send_event(*q, R"({"type":"UPDATE","orderId":"ord_nobody","data":{"status":"processing"}})");
  must(q->send(SendRequest{"this is not an event", "orders", ""}));

  OrderHandler handler(*q, path, HandlerOptions{2, 3, 50}, clock);
  auto stats = must(handler.run_once());
  CHECK(stats.processed == 5);
  CHECK(stats.dead_lettered == 3);
  CHECK(stats.retried == 0);

  auto store = must(SqliteOrderStore::open(path));
  auto a = must(store->get("ord_a"));
  CHECK(a.status == "shipped");
  CHECK(a.version == 3);
  CHECK(a.total_cents == 5997);
  CHECK(must_fail(store->get("ord_b")).code == Errc::not_found);
  auto trail = must(store->events("ord_a"));
  REQUIRE(trail.size() == 3);
  CHECK(trail[0].type == "CREATE");
  CHECK(trail[1].data["status"] == "processing");
  CHECK(trail[2].data["status"] == "shipped");
  CHECK(trail[0].seq < trail[1].seq);
  CHECK(trail[1].seq < trail[2].seq);
  CHECK(must(store->events("ord_b")).size() == 2); // the audit trail outlives the DELETE
  auto shipped = must(store->list("shipped", 10, 0));
  CHECK(shipped.total == 1);

  auto dead = must(q->dlq_list());
  REQUIRE(dead.size() == 3);
  CHECK(dead[0].dead_reason.find("it cannot become pending") != std::string::npos);
  CHECK(dead[1].dead_reason.find("does not exist") != std::string::npos);
  CHECK(dead[2].dead_reason.find("not valid JSON") != std::string::npos);
  auto s = must(q->stats());
  CHECK(s.visible + s.in_flight + s.delayed == 0);
}

TEST_CASE("OrderHandler: a batch larger than an audit statement keeps its audit trail in order",
          "[handler]")
{
  // 150 events in one batch: the audit rows go in statements of up to 64 rows, and an event
  // refused in the middle (every fifth order's second UPDATE) gets none.
  TempDir dir;
  ManualClock clock;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path, {}, clock);
  for (int i = 0; i < 50; ++i) {
    const std::string id = "ord_" + std::to_string(i);
    send_event(*q, R"({"type":"CREATE","orderId":")" + id
                     + R"(","data":{"customer_name":"A","customer_email":"a@example.com","items":[]}})");
    send_event(*q, R"({"type":"UPDATE","orderId":")" + id + R"(","data":{"status":"processing"}})");
    send_event(*q, R"({"type":"UPDATE","orderId":")" + id + R"(","data":{"status":")"
                     + (i % 5 == 0 ? "pending" : "shipped") + R"("}})");
  }
  OrderHandler handler(*q, path, HandlerOptions{1, 150, 50}, clock);
  auto stats = must(handler.run_once());
  CHECK(stats.batches == 1);
  CHECK(stats.processed == 140);
  CHECK(stats.dead_lettered == 10);

  auto store = must(SqliteOrderStore::open(path));
  for (int i = 0; i < 50; ++i) {
    auto trail = must(store->events("ord_" + std::to_string(i)));
    REQUIRE(trail.size() == (i % 5 == 0 ? 2u : 3u));
    CHECK(trail[0].type == "CREATE");
    CHECK(trail[1].data["status"] == "processing");
    if (trail.size() == 3) CHECK(trail[2].data["status"] == "shipped");
    for (size_t k = 1; k < trail.size(); ++k) CHECK(trail[k - 1].seq < trail[k].seq);
  }
  // Across orders too, the trail is in the order the events were applied (their seq here).
  sqlite::Database db(path, 1000);
  auto stmt = db.prepare("SELECT seq FROM order_events ORDER BY id");
  std::vector<int64_t> seqs;
  while (stmt->step()) seqs.push_back(stmt->column_int(0));
  REQUIRE(seqs.size() == 140);
  CHECK(std::is_sorted(seqs.begin(), seqs.end()));
}

TEST_CASE("OrderHandler: a message redelivered while its first handler still works applies once",
          "[handler]")
{
  TempDir dir;
  ManualClock clock;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path, {}, clock);
  send_event(*q, k_create_a);
  // A slow handler took the message and its visibility ran out.
  auto slow = must(q->receive(1, 1000));
  REQUIRE(slow.size() == 1);
  clock.advance_ms(1001);
  OrderHandler handler(*q, path, HandlerOptions{1, 10, 50}, clock);
  CHECK(must(handler.run_once()).processed == 1);
  // The slow handler finishes now: its settle fails on the stale receipt and applies nothing.
  auto late = q->settle({slow[0].receipt}, [&](QueueTransaction& txn) -> Expected<std::vector<Disposition>> {
    auto& db = test::db_of(txn);
    auto event = parse_event(slow[0].body);
    const AppliedEvent applied{slow[0].message_id, slow[0].seq, *event};
    auto ok = std::move(SqliteOrderStore::apply_all(db, {&applied}, 0).front());
    if (!ok) return Unexpected(ok.error());
    return std::vector<Disposition>(1);
  });
  CHECK(must_fail(late).code == Errc::not_found);
  auto store = must(SqliteOrderStore::open(path));
  CHECK(must(store->events("ord_a")).size() == 1);
  CHECK(must(store->get("ord_a")).version == 1);
}

TEST_CASE("OrderHandler: a CREATE for an existing order is a permanent failure", "[handler]")
{
  TempDir dir;
  ManualClock clock;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path, {}, clock);
  send_event(*q, k_create_b);
  auto again = parse_event(k_create_b);
  REQUIRE(again);
  must(q->send(SendRequest{event_body(*again), "orders", "second-create"}));
  OrderHandler handler(*q, path, HandlerOptions{1, 10, 50}, clock);
  auto stats = must(handler.run_once());
  CHECK(stats.processed == 1);
  CHECK(stats.dead_lettered == 1);
  auto dead = must(q->dlq_list());
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].dead_reason.find("already exists") != std::string::npos);
}

TEST_CASE("OrderHandler: a SQLite failure while applying sends the batch back with backoff",
          "[handler]")
{
  TempDir dir;
  ManualClock clock;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path, {}, clock);
  send_event(*q, k_create_a);
  send_event(*q, k_create_b);
  // Something in the database refuses every write to the audit trail for a while.
  sqlite::Database other(path, 5'000);
  other.exec("CREATE TRIGGER refuse BEFORE INSERT ON order_events"
             " BEGIN SELECT RAISE(ABORT, 'the audit trail refuses writes'); END");
  OrderHandler handler(*q, path, HandlerOptions{1, 10, 50}, clock);
  auto stats = must(handler.run_once());
  CHECK(stats.processed == 0);
  CHECK(stats.retried == 2);
  CHECK(stats.last_error.find("the audit trail refuses writes") != std::string::npos);
  auto s = must(q->stats());
  CHECK(s.delayed == 2); // waiting out queue.retry_delays[0]
  auto store = must(SqliteOrderStore::open(path));
  CHECK(must_fail(store->get("ord_a")).code == Errc::not_found);

  // The trouble ends; after the retry delay both apply, once.
  other.exec("DROP TRIGGER refuse");
  clock.advance_ms(1'001);
  stats = must(handler.run_once());
  CHECK(stats.processed == 2);
  CHECK(must(store->get("ord_a")).version == 1);
  CHECK(must(store->events("ord_a")).size() == 1);
  s = must(q->stats());
  CHECK(s.visible + s.in_flight + s.delayed == 0);
}

TEST_CASE("OrderHandler: a run registers the handler with its figures, stopped at the end",
          "[handler]")
{
  TempDir dir;
  ManualClock clock;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path, {}, clock);
  send_event(*q, k_create_a);
  send_event(*q, R"({"type":"UPDATE","orderId":"ord_a","data":{"status":"cancelled"}})");
  OrderHandler handler(*q, path, HandlerOptions{1, 10, 50}, clock);
  auto stats = must(handler.run_once());
  CHECK(stats.batches >= 1);
  CHECK(stats.latency_p99_us >= stats.latency_p50_us);
  // Every batch is in the duration histogram of /metrics once.
  int64_t in_buckets = 0;
  for (int64_t n : stats.batch_buckets) in_buckets += n;
  CHECK(in_buckets == stats.batches);
  CHECK(stats.batch_sum_us >= stats.latency_p50_us);
  auto handlers = must(list_handlers(*q, clock.now_ms()));
  REQUIRE(handlers.size() == 1);
  const auto& h = handlers[0];
  CHECK(h.pid == ::getpid());
  CHECK(h.processed == 2);
  CHECK(h.batches == stats.batches);
  CHECK(h.state(clock.now_ms()) == "stopped");
  CHECK(h.id.find(":" + std::to_string(::getpid()) + ":") != std::string::npos);
}

TEST_CASE("HandlerRecord: running while it beats, gone once the beats stop", "[handler]")
{
  HandlerRecord r;
  r.heartbeat_at_ms = 10'000;
  CHECK(r.state(10'000 + k_heartbeat_timeout_ms) == "running");
  CHECK(r.state(10'001 + k_heartbeat_timeout_ms) == "gone");
  r.stopped_at_ms = 12'000;
  CHECK(r.state(99'000) == "stopped");
}

namespace {

// A stand-in for the PostgreSQL store, to test what the handler does with each outcome of
// OrderWriter::apply_batch (the real store is tested in test_pg_order_store.cpp): orders named
// "ord_bad…" are rejected, "ord_dup…" were applied before, and while `down` the store is
// unavailable (to pings too, unless `pings_answered`).
class ScriptedWriter final : public OrderWriter
{
public:
  bool down = false;
  bool pings_answered = false;
  std::vector<std::string> applied; // order ids, in the order applied
  int calls = 0;
  int pings = 0;

  Expected<void> ping() override
  {
    ++pings;
    if (down && !pings_answered) return make_error(Errc::unavailable, "PostgreSQL at test is not answering");
    return {};
  }

  Expected<std::vector<ApplyOutcome>> apply_batch(const std::vector<AppliedEvent>& events,
                                                  int64_t /*now_ms*/) override
  {
    ++calls;
    if (down) return make_error(Errc::unavailable, "PostgreSQL at test is not answering");
    std::vector<ApplyOutcome> out(events.size());
    for (size_t i = 0; i < events.size(); ++i) {
      const std::string& id = events[i].event.order_id;
      if (id.rfind("ord_bad", 0) == 0) {
        out[i] = {ApplyOutcome::Kind::rejected, "order " + id + " is bad"};
      } else if (id.rfind("ord_dup", 0) == 0) {
        out[i].kind = ApplyOutcome::Kind::duplicate;
      } else {
        applied.push_back(id);
      }
    }
    return out;
  }
};

std::string cancel(const std::string& id)
{
  return R"({"type":"UPDATE","orderId":")" + id + R"(","data":{"status":"cancelled"}})";
}

} // namespace

TEST_CASE("OrderHandler with a writer: applied and duplicate messages are deleted, rejected "
          "ones dead-lettered with the reason, the changed orders dropped from the cache",
          "[handler]")
{
  TempDir dir;
  ManualClock clock;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path, {}, clock);
  send_event(*q, cancel("ord_1"));
  send_event(*q, cancel("ord_bad"));
  send_event(*q, cancel("ord_dup"));
  must(q->send(SendRequest{"not an event", "orders", ""}));
  send_event(*q, cancel("ord_2"));
  MemoryCache cache(100, 60'000, clock);
  for (const char* id : {"ord_1", "ord_2", "ord_dup", "ord_bad", "ord_other"}) {
    cache.put(order_cache_key(id), "{}");
  }
  cache.put(CachedOrders::list_key("", 50, 0), "{}");
  ScriptedWriter writer;
  HandlerOptions options{1, 10, 50};
  options.writer = &writer;
  options.cache = &cache;
  OrderHandler handler(*q, path, options, clock);
  auto stats = must(handler.run_once());
  CHECK(writer.applied == std::vector<std::string>{"ord_1", "ord_2"});
  CHECK(stats.processed == 3); // the duplicate was applied by an earlier run
  CHECK(stats.dead_lettered == 2);
  CHECK(stats.retried == 0);
  auto dead = must(q->dlq_list());
  REQUIRE(dead.size() == 2);
  CHECK(dead[0].dead_reason == "order ord_bad is bad");
  CHECK_THAT(dead[1].dead_reason, Catch::StartsWith("body is not valid JSON: parse error at line 1"));
  auto s = must(q->stats());
  CHECK(s.visible + s.in_flight + s.delayed == 0);
  // Dropped: the orders applied (or applied before), and the lists.
  CHECK_FALSE(cache.get(order_cache_key("ord_1")));
  CHECK_FALSE(cache.get(order_cache_key("ord_2")));
  CHECK_FALSE(cache.get(order_cache_key("ord_dup")));
  CHECK_FALSE(cache.get(CachedOrders::list_key("", 50, 0)));
  CHECK(cache.get(order_cache_key("ord_bad")));
  CHECK(cache.get(order_cache_key("ord_other")));
}

TEST_CASE("OrderHandler with a writer: a batch the store did not take goes back with backoff, "
          "and the handler takes no more until the store answers",
          "[handler]")
{
  TempDir dir;
  ManualClock clock;
  const std::string path = dir.file("acmo.db");
  QueueOptions qo;
  qo.retry_delays_ms = {1'000, 5'000};
  qo.max_retries = 1;
  auto q = open_queue(path, qo, clock);
  send_event(*q, cancel("ord_1"));
  send_event(*q, cancel("ord_2"));
  ScriptedWriter writer;
  writer.down = true;
  HandlerOptions options{1, 10, 50};
  options.writer = &writer;
  OrderHandler handler(*q, path, options, clock);

  // The first batch finds the store down: both go back, one attempt counted; the handler then
  // asks the store before taking more, and stops there (run_once: exit 75).
  auto run = handler.run_once();
  REQUIRE_FALSE(run);
  CHECK(run.error().code == Errc::unavailable);
  auto stats = handler.stats();
  CHECK(stats.retried == 2);
  CHECK(stats.processed == 0);
  CHECK(stats.last_error == "PostgreSQL at test is not answering");
  CHECK(writer.calls == 1);
  CHECK(writer.pings == 1);
  CHECK(must(q->stats()).delayed == 2);

  SECTION("the store stays down past the retry delays: nothing more is taken or counted, and "
          "everything applies once, in order, when it answers")
  {
    for (int i = 0; i < 3; ++i) {
      clock.advance_ms(5'000);
      CHECK_FALSE(handler.run_once());
    }
    CHECK(writer.calls == 1);
    CHECK(writer.pings == 4);
    CHECK(must(q->stats()).visible == 2);
    CHECK(must(q->dlq_list()).empty()); // a second counted attempt would have dead-lettered both
    writer.down = false;
    stats = must(handler.run_once());
    CHECK(stats.processed == 2);
    CHECK(stats.dead_lettered == 0);
    CHECK(writer.applied == std::vector<std::string>{"ord_1", "ord_2"});
    CHECK(must(q->stats()).visible + must(q->stats()).delayed == 0);
  }
  SECTION("a store that answers pings but fails every batch: the DLQ after queue.max_retries "
          "retries, with the reason")
  {
    writer.pings_answered = true;
    clock.advance_ms(1'000);
    stats = must(handler.run_once());
    CHECK(stats.retried == 2);
    CHECK(stats.dead_lettered == 2);
    CHECK(writer.calls == 2);
    auto dead = must(q->dlq_list());
    REQUIRE(dead.size() == 2);
    CHECK(dead[0].dead_reason.find("not answering") != std::string::npos);
    CHECK(writer.applied.empty());
  }
}
