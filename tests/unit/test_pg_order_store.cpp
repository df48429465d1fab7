// The PostgreSQL order store against the real test server (ACMO_TEST_PG_URL), each test in a
// schema of its own: migrations, the same answers as the embedded store, duplicates skipped,
// rejections with their reasons, the bounded pool, and reconnecting after the server dropped
// the connections.
#include <algorithm>
#include <atomic>
#include <functional>
#include <set>
#include <tuple>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "core/handler/order_handler.hpp"
#include "core/queue/postgres/pg_queue.hpp"
#include "core/store/order_store.hpp"
#include "core/store/pg_order_store.hpp"
#include "unit/pg_test_util.hpp"
#include "unit/queue_test_util.hpp"
#include "unit/temp_dir.hpp"

using namespace acmo;
using acmo::test::must;
using acmo::test::must_fail;
using acmo::test::PgSchema;
using acmo::test::TempDir;

namespace {

std::unique_ptr<PgOrderStore> open_store(const PgSchema& schema, int pool_size = 4,
                                         int64_t connect_timeout_ms = 5'000)
{
  return must(PgOrderStore::open(PgOptions{schema.url(), pool_size, connect_timeout_ms}));
}

AppliedEvent event(const std::string& message_id, int64_t seq, const std::string& json)
{
  auto e = parse_event(json);
  if (!e) FAIL("bad test event: " << e.error().message);
  return AppliedEvent{message_id, seq, std::move(*e)};
}

std::string create(const std::string& id, const std::string& name = "Ada")
{
  return R"({"type":"CREATE","orderId":")" + id + R"(","data":{"customer_name":")" + name
         + R"(","customer_email":"ada@example.com","items":[{"product_id":"p1","name":"Pen","quantity":3,"unit_price":19.99},{"product_id":"p2","quantity":1,"unit_price":0.1}]}})";
}

std::string update(const std::string& id, const std::string& status)
{
  return R"({"type":"UPDATE","orderId":")" + id + R"(","data":{"status":")" + status + R"("}})";
}

std::string delete_json(const std::string& id)
{
  return R"({"type":"DELETE","orderId":")" + id + R"(","data":{}})";
}

using Kind = ApplyOutcome::Kind;

// Whether a connection of the store under test comes to wait on a lock (within 5 s).
bool waits_on_a_lock(PgSchema& schema)
{
  for (int i = 0; i < 500; ++i) {
    if (schema.exec("SELECT count(*) FROM pg_stat_activity WHERE application_name = '"
                    + schema.name() + "' AND wait_event_type = 'Lock'")[0][0]
          .as<int>()
        == 1) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

std::vector<Kind> kinds(const std::vector<ApplyOutcome>& outcomes)
{
  std::vector<Kind> out;
  for (const auto& o : outcomes) out.push_back(o.kind);
  return out;
}

} // namespace

TEST_CASE("PgOrderStore: the schema is created once; opening again, and at once, is safe", "[pg]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  SECTION("twice in a row")
  {
    open_store(schema);
    open_store(schema);
  }
  SECTION("eight stores at once")
  {
    std::vector<std::thread> threads;
    std::atomic<int> opened{0};
    std::vector<std::string> errors(8);
    for (size_t i = 0; i < 8; ++i) {
      threads.emplace_back([&, i] {
        auto store = PgOrderStore::open(PgOptions{schema.url(), 1, 5'000});
        if (store) {
          ++opened;
        } else {
          errors[i] = store.error().message;
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& e : errors) CHECK(e.empty());
    CHECK(opened == 8);
  }
  auto version = schema.exec("SELECT version FROM acmo_schema_version");
  REQUIRE(version.size() == 1);
  CHECK(version[0][0].as<int>() == PgOrderStore::schema_version());
  CHECK(schema.exec("SELECT 1 FROM pg_tables WHERE schemaname = '" + schema.name()
                    + "' AND tablename IN ('orders', 'order_events', 'applied_messages')")
          .size()
        == 3);
}

TEST_CASE("PgOrderStore: a schema newer than this acmo is refused with what to do", "[pg]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  open_store(schema);
  schema.exec("UPDATE acmo_schema_version SET version = 999");
  auto e = must_fail(PgOrderStore::open(PgOptions{schema.url(), 1, 5'000}));
  CHECK(e.code == Errc::conflict);
  CHECK_THAT(e.message, Catch::Contains("version 999") && Catch::Contains("upgrade acmo"));
}

TEST_CASE("PgOrderStore: a schema of version 1 is migrated to the latest", "[pg]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  open_store(schema);
  schema.exec("UPDATE acmo_schema_version SET version = 1");
  open_store(schema);
  CHECK(schema.exec("SELECT version FROM acmo_schema_version")[0][0].as<int>()
        == PgOrderStore::schema_version());
  auto body = schema.exec("SELECT prosrc FROM pg_proc WHERE proname = 'acmo_begin_batch'"
                          " AND pronamespace = '" + schema.name() + "'::regnamespace");
  REQUIRE(body.size() == 1);
  CHECK_THAT(body[0][0].as<std::string>(), Catch::Contains("enable_seqscan"));
}

TEST_CASE("PgOrderStore: a batch looks its rows up by index in new tables, and only it", "[pg]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  // 5,000 applied ids in a table that no ANALYZE has seen: without statistics the planner
  // read the whole table to find a batch's 100 ids.
  schema.exec("INSERT INTO applied_messages SELECT 'm' || i, 0 FROM generate_series(1, 5000) i");
  std::string ids = "'{";
  for (int i = 1; i <= 100; ++i) ids += (i > 1 ? ",m" : "m") + std::to_string(i * 50);
  ids += "}'::text[]";
  auto plan = [&] {
    std::string text;
    for (const auto& row : schema.exec("EXPLAIN SELECT message_id FROM applied_messages"
                                       " WHERE message_id = ANY(" + ids + ")")) {
      text += row[0].as<std::string>() + "\n";
    }
    return text;
  };
  schema.exec("BEGIN");
  auto applied = schema.exec("SELECT count(*) FROM acmo_begin_batch('{o1}'::text[], " + ids + ")");
  CHECK(applied[0][0].as<int>() == 100);
  const std::string in_batch = plan();
  CHECK_THAT(in_batch, Catch::Contains("applied_messages_pkey") && !Catch::Contains("Seq Scan"));
  schema.exec("COMMIT");
  // The setting ended with the batch's transaction: the session's other queries plan as ever.
  CHECK(schema.exec("SHOW enable_seqscan")[0][0].as<std::string>() == "on");
}

TEST_CASE("PgOrderStore: a schema made later earlier in the search_path does not move the store",
          "[pg]")
{
  // As "$user", public when the queue creates its schema "acmo" for the user acmo: the orders
  // stay where they are, for processes opened before and after.
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  const std::string later = schema.name() + "_later";
  const char sep = url.find('?') == std::string::npos ? '?' : '&';
  const std::string path_url = fmt::format("{}{}options=-csearch_path%3D{}%2C{}&application_name={}",
                                           url, sep, later, schema.name(), schema.name());
  auto store = must(PgOrderStore::open(PgOptions{path_url, 2, 5'000}));
  auto applied = must(store->apply_batch({event("m1", 1, create("ord_p"))}, 1'000));
  CHECK(kinds(applied) == std::vector<Kind>{Kind::applied});
  schema.exec("CREATE SCHEMA " + later);
  auto again = must(PgOrderStore::open(PgOptions{path_url, 2, 5'000}));
  CHECK(must(again->get("ord_p")).customer_name == "Ada");
  must(again->apply_batch({event("m2", 2, update("ord_p", "processing"))}, 2'000));
  CHECK(must(store->get("ord_p")).status == "processing");
  CHECK(schema.exec("SELECT count(*) FROM pg_tables WHERE schemaname = '" + later + "'")[0][0]
          .as<int>() == 0);
  schema.exec("DROP SCHEMA " + later + " CASCADE");
}

TEST_CASE("PgOrderStore: a server that does not answer is unavailable", "[pg]")
{
  // Port 1 on loopback: nothing listens there.
  auto e = must_fail(PgOrderStore::open(PgOptions{"postgresql://acmo:secret@127.0.0.1:1/acmo", 1, 2'000}));
  CHECK(e.code == Errc::unavailable);
  CHECK_THAT(e.message, Catch::Contains("127.0.0.1:1") && Catch::Contains("store.url"));
  CHECK_THAT(e.message, !Catch::Contains("secret"));
}

TEST_CASE("PgOrderStore: a store.url libpq cannot parse is invalid input, and says why",
          "[pg]")
{
  auto e = must_fail(PgOrderStore::open(PgOptions{"postgresql://acmo:secret@db/acmo?colour=blue", 1, 2'000}));
  CHECK(e.code == Errc::invalid_input);
  CHECK(e.field == "store.url");
  CHECK_THAT(e.message, Catch::Contains("invalid URI query parameter: \"colour\""));
  CHECK_THAT(e.message, !Catch::Contains("secret"));
}

TEST_CASE("PgOrderStore: apply_batch, then get, list and events", "[pg]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  auto out = must(store->apply_batch({event("m1", 1, create("ord_a")),
                                      event("m2", 2, create("ord_b", "Bob")),
                                      event("m3", 3, update("ord_a", "processing")),
                                      event("m4", 4, create("ord_c", "Cy"))},
                                     1'000));
  CHECK(kinds(out) == std::vector<Kind>{Kind::applied, Kind::applied, Kind::applied, Kind::applied});
  out = must(store->apply_batch({event("m5", 5, update("ord_a", "shipped")),
                                 event("m6", 6, delete_json("ord_b")),
                                 event("m7", 7, update("ord_c", "cancelled"))},
                                2'000));
  CHECK(kinds(out) == std::vector<Kind>{Kind::applied, Kind::applied, Kind::applied});

  auto a = must(store->get("ord_a"));
  CHECK(a.customer_name == "Ada");
  CHECK(a.status == "shipped");
  CHECK(a.version == 3);
  CHECK(a.total_cents == 5997 + 10);
  CHECK(a.created_at_ms == 1'000);
  CHECK(a.updated_at_ms == 2'000);
  REQUIRE(a.items.size() == 2);
  CHECK(a.items[0].name == "Pen");
  CHECK(a.items[1].unit_price_cents == 10);
  CHECK(must_fail(store->get("ord_b")).code == Errc::not_found);

  auto all = must(store->list("", 50, 0));
  CHECK(all.total == 2);
  REQUIRE(all.orders.size() == 2);
  CHECK(all.orders[0].id == "ord_a"); // same created_at: by id
  auto cancelled = must(store->list("cancelled", 50, 0));
  CHECK(cancelled.total == 1);
  REQUIRE(cancelled.orders.size() == 1);
  CHECK(cancelled.orders[0].id == "ord_c");
  auto page = must(store->list("", 1, 1));
  CHECK(page.total == 2);
  REQUIRE(page.orders.size() == 1);
  CHECK(page.orders[0].id == "ord_c");
  auto past = must(store->list("", 10, 5));
  CHECK(past.total == 2);
  CHECK(past.orders.empty());
  CHECK(must(store->list("delivered", 10, 0)).total == 0);

  auto trail = must(store->events("ord_a"));
  REQUIRE(trail.size() == 3);
  CHECK(trail[0].type == "CREATE");
  CHECK(trail[0].message_id == "m1");
  CHECK(trail[0].data["items"][0]["unit_price"] == 19.99);
  CHECK(trail[1].seq == 3);
  CHECK(trail[2].data == nlohmann::json{{"status", "shipped"}});
  CHECK(trail[2].applied_at_ms == 2'000);
  auto b = must(store->events("ord_b")); // the trail outlives the DELETE
  REQUIRE(b.size() == 2);
  CHECK(b[1].type == "DELETE");
  CHECK(must(store->events("ord_nobody")).empty());
}

TEST_CASE("PgOrderStore: one batch may create, change, delete and create again one order", "[pg]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  must(store->apply_batch({event("m0", 1, create("ord_x"))}, 500));
  auto out = must(store->apply_batch({event("m1", 2, update("ord_x", "processing")),
                                      event("m2", 3, delete_json("ord_x")),
                                      event("m3", 4, create("ord_x", "Again")),
                                      event("m4", 5, update("ord_x", "cancelled")),
                                      event("m5", 6, create("ord_y")),
                                      event("m6", 7, delete_json("ord_y"))},
                                     1'000));
  CHECK(kinds(out) == std::vector<Kind>(6, Kind::applied));
  auto x = must(store->get("ord_x"));
  CHECK(x.customer_name == "Again");
  CHECK(x.status == "cancelled");
  CHECK(x.version == 2);
  CHECK(x.created_at_ms == 1'000);
  CHECK(must_fail(store->get("ord_y")).code == Errc::not_found);
  CHECK(must(store->events("ord_x")).size() == 5);
  CHECK(must(store->list("", 10, 0)).total == 1);
}

TEST_CASE("PgOrderStore: a message applied before is a duplicate and changes nothing", "[pg]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  const std::vector<AppliedEvent> batch = {event("m1", 1, create("ord_a")),
                                           event("m2", 2, update("ord_a", "processing"))};
  must(store->apply_batch(batch, 1'000));
  // Redelivered after a crash between the commit and the deletion of the messages, with a new
  // one behind them.
  auto again = batch;
  again.push_back(event("m3", 3, update("ord_a", "shipped")));
  auto out = must(store->apply_batch(again, 2'000));
  CHECK(kinds(out) == std::vector<Kind>{Kind::duplicate, Kind::duplicate, Kind::applied});
  auto a = must(store->get("ord_a"));
  CHECK(a.version == 3);
  CHECK(a.status == "shipped");
  CHECK(must(store->events("ord_a")).size() == 3);
  // The same message twice in one batch applies once.
  out = must(store->apply_batch({event("m4", 4, update("ord_a", "delivered")),
                                 event("m4", 4, update("ord_a", "delivered"))},
                                3'000));
  CHECK(kinds(out) == std::vector<Kind>{Kind::applied, Kind::duplicate});
  CHECK(schema.exec("SELECT count(*) FROM applied_messages")[0][0].as<int>() == 4);
}

TEST_CASE("PgOrderStore: a refused message delivered again is refused again; redriven, it is "
          "decided anew",
          "[pg]")
{
  // A handler whose visibility ran out while it waited brings back a message another handler
  // refused (and dead-lettered), after a later event made it allowed: it must not apply it.
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  must(store->apply_batch({event("c", 1, create("ord_f"))}, 1'000));
  auto out = must(store->apply_batch({event("ship", 2, update("ord_f", "shipped"))}, 2'000));
  REQUIRE(kinds(out) == std::vector<Kind>{Kind::rejected});
  const std::string reason = out[0].reason;
  must(store->apply_batch({event("proc", 3, update("ord_f", "processing"))}, 3'000));
  out = must(store->apply_batch({event("ship", 2, update("ord_f", "shipped"))}, 4'000));
  CHECK(kinds(out) == std::vector<Kind>{Kind::rejected});
  CHECK(out[0].reason == reason);
  CHECK(must(store->get("ord_f")).status == "processing");
  CHECK(must(store->events("ord_f")).size() == 2);
  // Redriven from the DLQ, the message comes under a new sequence number, and applies now.
  out = must(store->apply_batch({event("ship", 7, update("ord_f", "shipped"))}, 5'000));
  CHECK(kinds(out) == std::vector<Kind>{Kind::applied});
  CHECK(must(store->get("ord_f")).status == "shipped");
  out = must(store->apply_batch({event("ship", 7, update("ord_f", "shipped"))}, 6'000));
  CHECK(kinds(out) == std::vector<Kind>{Kind::duplicate});
  CHECK(must(store->events("ord_f")).size() == 3);
  CHECK(schema.exec("SELECT count(*) FROM applied_messages WHERE rejected IS NOT NULL")[0][0]
          .as<int>() == 0);
}

TEST_CASE("PgOrderStore: events that can never apply are rejected with the reason; the rest "
          "apply",
          "[pg]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  must(store->apply_batch({event("m0", 1, create("ord_a"))}, 1'000));
  auto nul = event("m6", 7, update("ord_a", "shipped"));
  nul.event.data["note"] = std::string("a\0b", 3);
  auto out = must(store->apply_batch({event("m1", 2, create("ord_a")),
                                      event("m2", 3, update("ord_nobody", "shipped")),
                                      event("m3", 4, delete_json("ord_nobody")),
                                      event("m4", 5, update("ord_a", "delivered")),
                                      event("m5", 6, update("ord_a", "processing")),
                                      nul},
                                     2'000));
  REQUIRE(out.size() == 6);
  CHECK(kinds(out)
        == std::vector<Kind>{Kind::rejected, Kind::rejected, Kind::rejected, Kind::rejected,
                             Kind::applied, Kind::rejected});
  CHECK(out[0].reason == "CREATE for order ord_a, which already exists");
  CHECK(out[1].reason
        == "UPDATE for order ord_nobody, which does not exist (never created, or deleted)");
  CHECK(out[2].reason
        == "DELETE for order ord_nobody, which does not exist (never created, or deleted)");
  CHECK(out[3].reason == "order ord_a is pending; it cannot become delivered");
  CHECK_THAT(out[5].reason, Catch::Contains("NUL"));
  auto a = must(store->get("ord_a"));
  CHECK(a.status == "processing");
  CHECK(a.customer_name == "Ada");
  CHECK(must(store->events("ord_a")).size() == 2);
  // A rejected message is not recorded: delivered again, it is rejected again, not a duplicate.
  out = must(store->apply_batch({event("m1", 2, create("ord_a"))}, 3'000));
  CHECK(kinds(out) == std::vector<Kind>{Kind::rejected});
}

TEST_CASE("PgOrderStore: the handler's results equal the embedded store's", "[pg][handler]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  const std::vector<std::string> events = {
    create("ord_a"),
    create("ord_b", "Bob"),
    update("ord_a", "processing"),
    create("ord_a", "Ada again"),       // exists
    update("ord_b", "shipped"),         // forbidden
    delete_json("ord_b"),
    update("ord_b", "processing"),      // gone
    create("ord_c", "Émilie"),
    update("ord_a", "shipped"),
    R"({"type":"UPDATE","orderId":"ord_c","data":{"status":"lost"}})", // not a status
    update("ord_c", "cancelled"),
  };
  struct Result {
    HandlerStats stats;
    std::vector<std::string> dead_reasons;
    std::vector<std::string> orders;
    std::vector<std::string> trails;
    int64_t sent_from = 0;
    Order a;
  };
  // The queue: the embedded one, or (in_queue) a PostgreSQL queue in the store's schema, whose
  // transaction the handler applies in.
  auto run = [&](OrderWriter* writer, const std::function<std::unique_ptr<OrderStore>(const std::string&)>& open,
                 bool in_queue = false) {
    TempDir dir;
    ManualClock clock;
    const std::string path = dir.file("acmo.db");
    std::unique_ptr<Queue> q;
    if (in_queue) {
      q = must(PgQueue::open(schema.url(), schema.name(), QueueOptions{}, clock));
    } else {
      q = acmo::test::open_queue(path, {}, clock);
    }
    Result r;
    r.sent_from = clock.now_ms();
    for (const auto& e : events) {
      // The handler checks events again: a producer that skipped validation sent the bad one.
      must(q->send(SendRequest{e, "orders", ""}));
      clock.advance_ms(1'000); // one a second: each change is dated when it was accepted
    }
    must(q->send(SendRequest{"not an event", "orders", ""}));
    clock.advance_ms(10'000); // applied later
    HandlerOptions options{1, 3, 50};
    options.writer = writer;
    options.writer_in_queue = in_queue;
    OrderHandler handler(*q, path, options, clock);
    r.stats = must(handler.run_once());
    for (const auto& m : must(q->dlq_list())) r.dead_reasons.push_back(m.dead_reason);
    auto store = open(path);
    for (const char* id : {"ord_a", "ord_b", "ord_c"}) {
      auto o = store->get(id);
      r.orders.push_back(o ? order_to_json(*o).dump() : errc_name(o.error().code));
      if (o && o->id == "ord_a") r.a = *o;
      std::string trail;
      for (const auto& e : must(store->events(id))) {
        trail += fmt::format("{} {} {} {} {};", e.seq, e.type, e.data.dump(), e.accepted_at_ms,
                             e.applied_at_ms);
      }
      r.trails.push_back(trail);
    }
    const std::vector<std::tuple<std::string, int, int>> queries = {
      {"", 50, 0}, {"", 1, 1}, {"cancelled", 10, 0}};
    for (const auto& [status, limit, offset] : queries) {
      auto list = must(store->list(status, limit, offset));
      std::string text = std::to_string(list.total);
      for (const auto& o : list.orders) text += " " + order_to_json(o).dump();
      r.orders.push_back(text);
    }
    return r;
  };
  Result sqlite = run(nullptr, [](const std::string& path) {
    return std::unique_ptr<OrderStore>(must(SqliteOrderStore::open(path)));
  });
  auto pg = open_store(schema);
  Result postgres = run(pg.get(), [&](const std::string&) {
    return std::unique_ptr<OrderStore>(open_store(schema));
  });
  // Applied ids, and the refused ones that reached the store (not those that did not parse).
  const int64_t recorded = schema.exec("SELECT count(*) FROM applied_messages WHERE rejected IS NULL")[0][0].as<int64_t>();
  CHECK(recorded == 7);
  CHECK(schema.exec("SELECT count(*) FROM applied_messages WHERE rejected IS NOT NULL")[0][0]
          .as<int64_t>() == 3);
  schema.exec("TRUNCATE orders, order_events, applied_messages");
  Result in_queue = run(pg.get(), [&](const std::string&) {
    return std::unique_ptr<OrderStore>(open_store(schema));
  }, true);
  CHECK(in_queue.stats.processed == sqlite.stats.processed);
  CHECK(in_queue.stats.dead_lettered == sqlite.stats.dead_lettered);
  CHECK(in_queue.stats.retried == 0);
  CHECK(in_queue.dead_reasons == sqlite.dead_reasons);
  CHECK(in_queue.orders == sqlite.orders);
  CHECK(in_queue.trails == sqlite.trails);
  // In the queue's transaction the deletions commit with the changes: no id is recorded.
  CHECK(schema.exec("SELECT count(*) FROM applied_messages")[0][0].as<int64_t>() == 0);
  CHECK(sqlite.stats.processed == 7);
  CHECK(sqlite.stats.dead_lettered == 5);
  CHECK(postgres.stats.processed == sqlite.stats.processed);
  CHECK(postgres.stats.dead_lettered == sqlite.stats.dead_lettered);
  CHECK(postgres.stats.retried == 0);
  CHECK(sqlite.dead_reasons.size() == 5);
  CHECK(postgres.dead_reasons == sqlite.dead_reasons);
  CHECK(postgres.orders == sqlite.orders);
  CHECK(postgres.trails == sqlite.trails);
  // ord_a: created by the first event, last changed by the ninth (shipped), applied 10 s after
  // the last send.
  CHECK(sqlite.a.created_at_ms == sqlite.sent_from);
  CHECK(sqlite.a.updated_at_ms == sqlite.sent_from + 8'000);
  CHECK(sqlite.a.status == "shipped");
  CHECK_THAT(sqlite.trails[0], Catch::Contains(fmt::format(" {} {};", sqlite.sent_from,
                                                           sqlite.sent_from + 21'000)));
}

TEST_CASE("PgOrderStore: two handlers applying the same messages at once apply each once",
          "[pg]")
{
  // What happens when a slow handler's visibility runs out and another receives its messages.
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto first = open_store(schema);
  auto second = open_store(schema);
  for (int round = 0; round < 20; ++round) {
    std::vector<AppliedEvent> batch;
    for (int i = 0; i < 10; ++i) {
      const std::string id = fmt::format("ord_{}_{}", round, i);
      batch.push_back(event(fmt::format("c{}_{}", round, i), i, create(id)));
      batch.push_back(event(fmt::format("u{}_{}", round, i), i, update(id, "processing")));
    }
    Expected<std::vector<ApplyOutcome>> a = std::vector<ApplyOutcome>{};
    Expected<std::vector<ApplyOutcome>> b = std::vector<ApplyOutcome>{};
    std::thread other([&] { b = second->apply_batch(batch, 1'000); });
    a = first->apply_batch(batch, 1'000);
    other.join();
    REQUIRE(a);
    REQUIRE(b);
    for (size_t i = 0; i < batch.size(); ++i) {
      INFO("round " << round << ", event " << i);
      // One of the two applied it; the other found it applied.
      CHECK(((*a)[i].kind == Kind::applied) != ((*b)[i].kind == Kind::applied));
      CHECK((*a)[i].kind != Kind::rejected);
      CHECK((*b)[i].kind != Kind::rejected);
    }
  }
  CHECK(schema.exec("SELECT count(*) FROM order_events")[0][0].as<int>() == 400);
  CHECK(schema.exec("SELECT count(*) FROM orders WHERE version = 2")[0][0].as<int>() == 200);
}

TEST_CASE("PgOrderStore: a handler that waited for another applying its batch sees all of it "
          "(redelivery race)",
          "[pg]")
{
  // Handler A took [u_old, c_new], locked their orders and wrote its changes, then paused past
  // the visibility timeout with its transaction open. Handler B received the batch again, with
  // the next message of the group behind it, and waits for A's locks. Once A commits, B must
  // see A's batch whole: its messages applied, and the order it created there for u_new.
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  must(store->apply_batch({event("c_old", 1, create("ord_old"))}, 1'000));

  pqxx::connection a_conn(schema.url("acmo_test_handler_a"));
  pqxx::work a(a_conn);
  a.exec("SELECT * FROM acmo_begin_batch('{ord_new,ord_old}'::text[], '{u_old,c_new}'::text[])");
  a.exec0("UPDATE orders SET status = 'processing', version = version + 1, updated_at = 2000"
          " WHERE id = 'ord_old'");
  a.exec0("INSERT INTO orders SELECT 'ord_new', customer_name, customer_email, items,"
          " total_cents, 'pending', 1, 2000, 2000 FROM orders WHERE id = 'ord_old'");
  a.exec0("INSERT INTO applied_messages VALUES ('u_old', 2000), ('c_new', 2000)");

  const std::vector<AppliedEvent> batch = {event("u_old", 2, update("ord_old", "processing")),
                                           event("c_new", 3, create("ord_new")),
                                           event("u_new", 4, update("ord_new", "processing"))};
  Expected<std::vector<ApplyOutcome>> b = std::vector<ApplyOutcome>{};
  std::thread handler_b([&] { b = store->apply_batch(batch, 3'000); });
  // B's transaction waits on a lock A holds.
  CHECK(waits_on_a_lock(schema));
  a.commit();
  handler_b.join();
  REQUIRE(b);
  CHECK(kinds(*b) == std::vector<Kind>{Kind::duplicate, Kind::duplicate, Kind::applied});
  for (const auto& o : *b) CHECK(o.reason.empty());
  auto made = must(store->get("ord_new"));
  CHECK(made.status == "processing");
  CHECK(made.version == 2);
}

TEST_CASE("PgOrderStore: a batch waits for another that creates one of its orders", "[pg]")
{
  // Two CREATEs of one order in different messages: the second batch waits for the first's
  // lock on the id, though no row existed to lock, and then finds the order there.
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  pqxx::connection a_conn(schema.url("acmo_test_handler_a"));
  pqxx::work a(a_conn);
  a.exec("SELECT * FROM acmo_begin_batch('{ord_x}'::text[], '{c1}'::text[])");
  a.exec0("INSERT INTO orders VALUES ('ord_x', 'Ada', 'ada@example.com', '[]', 0, 'pending', 1,"
          " 1000, 1000)");
  a.exec0("INSERT INTO applied_messages VALUES ('c1', 1000)");
  Expected<std::vector<ApplyOutcome>> b = std::vector<ApplyOutcome>{};
  std::thread handler_b([&] {
    b = store->apply_batch({event("c2", 2, create("ord_x", "Bob"))}, 2'000);
  });
  CHECK(waits_on_a_lock(schema));
  a.commit();
  handler_b.join();
  REQUIRE(b);
  REQUIRE(b->size() == 1);
  // The order exists once A committed: the second CREATE is refused by the rules, not retried.
  CHECK((*b)[0].kind == Kind::rejected);
  CHECK(must(store->get("ord_x")).customer_name == "Ada");
}

TEST_CASE("PgOrderStore: applied in the queue's transaction, a batch commits or rolls back "
          "with the deletion of its messages",
          "[pg][handler]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  auto q = must(PgQueue::open(schema.url(), schema.name(), QueueOptions{}));
  must(q->send(SendRequest{create("ord_r"), "ord_r", ""}));
  must(q->send(SendRequest{update("ord_r", "processing"), "ord_r", ""}));
  auto apply = [&](QueueTransaction& txn, const std::vector<Message>& got) {
    std::vector<AppliedEvent> events;
    for (const auto& m : got) events.push_back(event(m.message_id, m.seq, m.body));
    auto outcomes = store->apply_in(txn, events, 5'000);
    REQUIRE(outcomes);
    CHECK(kinds(*outcomes) == std::vector<Kind>{Kind::applied, Kind::applied});
  };
  // The work applies, then fails: nothing of it stays, and the messages wait where they were.
  auto failed = q->consume(10, 0, [&](QueueTransaction& txn, const std::vector<Message>& got)
                                    -> Expected<std::vector<Disposition>> {
    apply(txn, got);
    return make_error(Errc::unavailable, "the work failed after applying");
  });
  CHECK_FALSE(failed);
  auto gone = store->get("ord_r");
  REQUIRE_FALSE(gone);
  CHECK(gone.error().code == Errc::not_found);
  CHECK(schema.exec("SELECT count(*) FROM order_events")[0][0].as<int>() == 0);
  CHECK(must(q->stats()).visible == 2);
  // Again, succeeding: the order and the deletions commit together, and the queue's
  // statements after the work still find the queue's tables.
  auto done = must(q->consume(10, 0, [&](QueueTransaction& txn, const std::vector<Message>& got)
                                       -> Expected<std::vector<Disposition>> {
    apply(txn, got);
    return std::vector<Disposition>(got.size());
  }));
  CHECK(done.size() == 2);
  CHECK(must(store->get("ord_r")).status == "processing");
  const auto s = must(q->stats());
  CHECK(s.visible + s.in_flight + s.delayed == 0);
  CHECK(s.deleted == 2);
  // A store that is not on PostgreSQL's transaction cannot be given one.
  TempDir dir;
  auto embedded = acmo::test::open_queue(dir.file("acmo.db"));
  must(embedded->send(SendRequest{create("ord_s"), "g", ""}));
  auto wrong = embedded->consume(10, 0, [&](QueueTransaction& txn, const std::vector<Message>& got)
                                          -> Expected<std::vector<Disposition>> {
    auto outcomes = store->apply_in(txn, {event(got[0].message_id, got[0].seq, got[0].body)}, 1);
    if (!outcomes) return Unexpected(outcomes.error());
    return std::vector<Disposition>(got.size());
  });
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error().code == Errc::internal);
}

TEST_CASE("PgOrderStore: in the queue's transaction, a batch finds its orders by key once the "
          "table has grown, even if it was analyzed empty",
          "[pg][handler]")
{
  // The queue's connections keep one generic plan per statement. Made while orders is empty
  // and analyzed so, the plan of the batch's write takes the table for one row and reads it
  // whole, by its primary key, for every order it writes: 79 ms a batch at 2,800 orders.
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  auto q = must(PgQueue::open(schema.url(), schema.name(), QueueOptions{}));
  schema.exec("ANALYZE orders");
  REQUIRE(schema.exec("SELECT relpages, reltuples FROM pg_class WHERE oid = 'orders'::regclass")
            [0][0].as<int>() == 0);
  constexpr int k_orders = 2'000;
  std::vector<SendRequest> sends;
  for (int i = 0; i < k_orders; ++i) {
    const std::string id = fmt::format("ord_{:05}", i);
    sends.push_back(SendRequest{create(id), id, ""});
  }
  for (const auto& sent : q->send_bulk(sends)) REQUIRE(sent);
  must(q->send(SendRequest{update("ord_00007", "processing"), "ord_00007", ""}));
  // Each batch applied as the handler does; the last, the update, then explains the plan the
  // queue's connection has for the batch's write, as the queue's statements run (generic).
  std::string plan, mode;
  int applied = 0;
  while (applied < k_orders + 1) {
    auto got = must(q->consume(100, 0, [&](QueueTransaction& txn, const std::vector<Message>& batch)
                                         -> Expected<std::vector<Disposition>> {
      std::vector<AppliedEvent> events;
      for (const auto& m : batch) events.push_back(event(m.message_id, m.seq, m.body));
      auto outcomes = store->apply_in(txn, events, 5'000);
      if (!outcomes) return Unexpected(outcomes.error());
      for (const auto& o : *outcomes) CHECK(o.kind == Kind::applied);
      if (applied + static_cast<int>(batch.size()) > k_orders) {
        auto tx = pg_transaction(txn);
        REQUIRE(tx);
        mode = (*tx)->exec1("SHOW plan_cache_mode")[0].as<std::string>();
        std::string no_arrays;
        for (int i = 0; i < 19; ++i) no_arrays += "'{}', ";
        for (const auto& row : (*tx)->exec("EXPLAIN EXECUTE acmo_store_write(" + no_arrays
                                           + "0, '{}', '{}', '', '')")) {
          plan += row[0].as<std::string>() + "\n";
        }
      }
      return std::vector<Disposition>(batch.size());
    }));
    REQUIRE_FALSE(got.empty());
    applied += static_cast<int>(got.size());
  }
  CHECK(must(store->get("ord_00007")).status == "processing");
  CHECK(schema.exec("SELECT count(*) FROM orders")[0][0].as<int>() == k_orders);
  // The queue's own setting is back for its statements after the batch.
  CHECK(mode == "force_generic_plan");
  // Every read of orders is by a key the batch gives: an index condition on each scan.
  INFO(plan);
  std::vector<std::string> lines;
  for (size_t at = 0, end; (end = plan.find('\n', at)) != std::string::npos; at = end + 1) {
    lines.push_back(plan.substr(at, end - at));
  }
  int scans = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find("Scan") == std::string::npos
        || lines[i].find(" on orders ") == std::string::npos) {
      continue;
    }
    ++scans;
    CHECK_THAT(i + 1 < lines.size() ? lines[i + 1] : "", Catch::Contains("Index Cond"));
  }
  CHECK(scans == 3); // the orders deleted, replaced and updated
}

TEST_CASE("PgOrderStore: applied in the transaction of a queue in another schema, a batch "
          "replaces, creates and refuses, and the queue's statements after it find its tables",
          "[pg][handler]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  PgSchema queue_schema(url);
  auto store = open_store(schema);
  auto q = must(PgQueue::open(queue_schema.url(), queue_schema.name(), QueueOptions{}));
  // Apply each batch taken, dead-lettering what the store refuses; the outcomes' kinds.
  const auto consume = [&] {
    std::vector<Kind> seen;
    must(q->consume(10, 0, [&](QueueTransaction& txn, const std::vector<Message>& got)
                             -> Expected<std::vector<Disposition>> {
      std::vector<AppliedEvent> events;
      for (const auto& m : got) events.push_back(event(m.message_id, m.seq, m.body));
      auto outcomes = store->apply_in(txn, events, 5'000);
      if (!outcomes) return Unexpected(outcomes.error());
      std::vector<Disposition> out(got.size());
      for (size_t i = 0; i < got.size(); ++i) {
        seen.push_back((*outcomes)[i].kind);
        if ((*outcomes)[i].kind == Kind::rejected) {
          out[i] = Disposition{true, (*outcomes)[i].reason, ""};
        }
      }
      return out;
    }));
    return seen;
  };
  must(q->send(SendRequest{create("ord_k"), "g", ""}));
  CHECK(consume() == std::vector<Kind>{Kind::applied});
  // One batch: the order there before is deleted and made again (its row replaced), a new one
  // is made, and the one made again changes.
  for (const auto& e : {delete_json("ord_k"), create("ord_k", "Again"), create("ord_n"),
                        update("ord_k", "processing")}) {
    must(q->send(SendRequest{e, "g", ""}));
  }
  CHECK(consume() == std::vector<Kind>(4, Kind::applied));
  const auto k = must(store->get("ord_k"));
  CHECK(k.customer_name == "Again");
  CHECK(k.status == "processing");
  CHECK(k.version == 2);
  CHECK(must(store->get("ord_n")).customer_name == "Ada");
  CHECK(must(store->events("ord_k")).size() == 4);
  CHECK(must(store->list("", 10, 0)).total == 2);
  // A batch the store refuses whole writes nothing, and still gives the queue its schema back.
  must(q->send(SendRequest{update("ord_z", "processing"), "g", ""}));
  CHECK(consume() == std::vector<Kind>{Kind::rejected});
  const auto s = must(q->stats());
  CHECK(s.visible + s.in_flight + s.delayed == 0);
  CHECK(s.deleted == 5);
  CHECK(s.dead_lettered == 1);
  // Each schema holds its own tables only.
  CHECK(schema.exec("SELECT to_regclass('messages') IS NULL")[0][0].as<bool>());
  CHECK(queue_schema.exec("SELECT to_regclass('orders') IS NULL")[0][0].as<bool>());
}

TEST_CASE("PgOrderStore: in queue transactions, a batch waits for another that creates one of "
          "its orders",
          "[pg][handler]")
{
  // Two CREATEs of one order in two groups, applied in two queue transactions at once: the
  // second waits for the first's lock on the id, though no row existed to lock, and then finds
  // the order there (READ COMMITTED alone would let it overwrite the first).
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  auto q = must(PgQueue::open(schema.url(), schema.name(), QueueOptions{}));
  must(q->send(SendRequest{create("ord_x", "Ada"), "g1", ""}));
  must(q->send(SendRequest{create("ord_x", "Bob"), "g2", ""}));
  std::atomic<bool> first_applied{false};
  std::atomic<bool> release_first{false};
  Expected<std::vector<Message>> first = std::vector<Message>{};
  std::thread a([&] {
    first = q->consume(1, 0, [&](QueueTransaction& txn, const std::vector<Message>& got)
                               -> Expected<std::vector<Disposition>> {
      auto outcomes =
        store->apply_in(txn, {event(got[0].message_id, got[0].seq, got[0].body)}, 1'000);
      if (!outcomes) return Unexpected(outcomes.error());
      first_applied = true;
      while (!release_first) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return std::vector<Disposition>(got.size());
    });
  });
  while (!first_applied) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::vector<ApplyOutcome> second_outcomes;
  std::thread b([&] {
    auto second = q->consume(1, 0, [&](QueueTransaction& txn, const std::vector<Message>& got)
                                     -> Expected<std::vector<Disposition>> {
      auto outcomes =
        store->apply_in(txn, {event(got[0].message_id, got[0].seq, got[0].body)}, 2'000);
      if (!outcomes) return Unexpected(outcomes.error());
      second_outcomes = *outcomes;
      std::vector<Disposition> out(got.size());
      if ((*outcomes)[0].kind == Kind::rejected) out[0] = Disposition{true, (*outcomes)[0].reason, "ord_x"};
      return out;
    });
    CHECK(second);
  });
  CHECK(waits_on_a_lock(schema));
  release_first = true;
  a.join();
  b.join();
  REQUIRE(first);
  CHECK(first->size() == 1);
  REQUIRE(second_outcomes.size() == 1);
  CHECK(second_outcomes[0].kind == Kind::rejected);
  CHECK(must(store->get("ord_x")).customer_name == "Ada");
  CHECK(must(q->stats()).dead_lettered == 1);
}

TEST_CASE("PgOrderStore: the pool never opens more than pool_size connections, and a caller "
          "waits for one only up to the timeout",
          "[pg]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  SECTION("eight threads, two connections")
  {
    auto store = open_store(schema, 2);
    must(store->apply_batch({event("m1", 1, create("ord_a"))}, 1'000));
    std::atomic<bool> done{false};
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < 100; ++i) {
          if (!store->get("ord_a") || !store->list("", 10, 0)) ++failures;
        }
      });
    }
    int most = 0;
    std::thread watcher([&] {
      while (!done) {
        most = std::max(most, schema.backends());
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
    for (auto& t : threads) t.join();
    done = true;
    watcher.join();
    CHECK(failures == 0);
    CHECK(most >= 1);
    CHECK(most <= 2);
    CHECK(store->open_connections() <= 2);
  }
  SECTION("one connection, held by a batch waiting on a lock")
  {
    auto store = open_store(schema, 1, 1'000);
    must(store->apply_batch({event("m1", 1, create("ord_a"))}, 1'000));
    // Another session locks the order: the next batch waits, holding the only connection.
    pqxx::connection blocker(schema.url("acmo_test_blocker"));
    pqxx::work lock(blocker);
    lock.exec("SELECT 1 FROM orders WHERE id = 'ord_a' FOR UPDATE");
    Expected<std::vector<ApplyOutcome>> waiting = std::vector<ApplyOutcome>{};
    std::thread slow([&] {
      waiting = store->apply_batch({event("m2", 2, update("ord_a", "processing"))}, 2'000);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const auto started = std::chrono::steady_clock::now();
    auto e = must_fail(store->get("ord_a"));
    const auto waited = std::chrono::steady_clock::now() - started;
    CHECK(e.code == Errc::unavailable);
    CHECK_THAT(e.message, Catch::Contains("store.pool_size"));
    CHECK(waited >= std::chrono::milliseconds(900));
    CHECK(waited < std::chrono::milliseconds(3'000));
    lock.commit();
    slow.join();
    REQUIRE(waiting);
    CHECK(kinds(*waiting) == std::vector<Kind>{Kind::applied});
    CHECK(must(store->get("ord_a")).status == "processing");
  }
}

TEST_CASE("PgOrderStore: connections the server dropped are reopened", "[pg]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema, 3);
  must(store->apply_batch({event("m1", 1, create("ord_a"))}, 1'000));
  CHECK(must(store->get("ord_a")).version == 1);
  // What a server restart does to every connection of the pool.
  CHECK(schema.terminate_backends() >= 1);
  CHECK(must(store->get("ord_a")).version == 1);
  CHECK(schema.terminate_backends() >= 1);
  auto out = must(store->apply_batch({event("m2", 2, update("ord_a", "processing"))}, 2'000));
  CHECK(kinds(out) == std::vector<Kind>{Kind::applied});
  CHECK(schema.terminate_backends() >= 1);
  CHECK(must(store->list("", 10, 0)).total == 1);
  CHECK(schema.terminate_backends() >= 1);
  CHECK(must(store->events("ord_a")).size() == 2);
  CHECK(store->open_connections() <= 3);
}

TEST_CASE("PgOrderStore: the change feed names every order changed since a mark, also by a "
          "transaction that commits after a later one",
          "[pg][alone]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  auto names = [](const OrderChanges& c, const std::string& id) {
    return std::find(c.order_ids.begin(), c.order_ids.end(), id) != c.order_ids.end();
  };
  const OrderChanges first = must(store->changes_since(-1, 100));
  CHECK(first.all);
  must(store->apply_batch({event("m1", 1, create("ord_a"))}, 1'000));
  const OrderChanges second = must(store->changes_since(first.mark, 100));
  CHECK_FALSE(second.all);
  CHECK(names(second, "ord_a"));

  // A transaction writes first and commits last; another batch commits in between. A feed
  // that went by the audit rows' ids would pass over the first one's change for good.
  pqxx::connection a_conn(schema.url("acmo_test_slow_writer"));
  pqxx::work a(a_conn);
  a.exec0("INSERT INTO order_events (order_id, message_id, seq, type, data, applied_at)"
          " VALUES ('ord_z', 'mz', 9, 'UPDATE', '{}', 1000)");
  must(store->apply_batch({event("m2", 2, create("ord_b"))}, 2'000));
  const OrderChanges third = must(store->changes_since(second.mark, 100));
  CHECK(names(third, "ord_b"));
  CHECK_FALSE(names(third, "ord_z"));
  a.commit();
  const OrderChanges fourth = must(store->changes_since(third.mark, 100));
  CHECK(names(fourth, "ord_z"));

  // Nothing since: nothing named once no transaction is open.
  const OrderChanges quiet = must(store->changes_since(must(store->changes_since(fourth.mark, 100)).mark, 100));
  CHECK_FALSE(quiet.all);
  CHECK(quiet.order_ids.empty());
  // More than asked for: all.
  for (int i = 0; i < 5; ++i) {
    must(store->apply_batch({event("n" + std::to_string(i), 10 + i, create("ord_n" + std::to_string(i)))},
                            3'000));
  }
  CHECK(must(store->changes_since(quiet.mark, 3)).all);
}

TEST_CASE("PgOrderStore: the trail feed gives every audit row committed after a mark, also one "
          "a transaction commits after a later one, and pages past a cut",
          "[pg]")
{
  ACMO_NEED_PG(url);
  PgSchema schema(url);
  auto store = open_store(schema);
  // ids SEEN: what a reader has seen, dropping rows that come again.
  std::set<int64_t> seen;
  auto fresh = [&](const TrailPage& page) {
    std::vector<std::string> out;
    for (const auto& e : page.entries) {
      if (seen.insert(e.id).second) out.push_back(e.order_id + " " + e.event.message_id);
    }
    return out;
  };
  must(store->apply_batch({event("m0", 1, create("ord_0"))}, 1'000));
  TrailPage page = must(store->trail_since(-1, 100));
  fresh(page); // the rows of the start: taken as seen
  must(store->apply_batch({event("m1", 2, create("ord_a"))}, 2'000));
  page = must(store->trail_since(page.mark, 100));
  CHECK(fresh(page) == std::vector<std::string>{"ord_a m1"});

  pqxx::connection a_conn(schema.url("acmo_test_slow_writer"));
  pqxx::work a(a_conn);
  a.exec0("INSERT INTO order_events (order_id, message_id, seq, type, data, applied_at)"
          " VALUES ('ord_z', 'mz', 9, 'UPDATE', '{}', 1000)");
  must(store->apply_batch({event("m2", 3, create("ord_b"))}, 3'000));
  page = must(store->trail_since(page.mark, 100));
  CHECK(fresh(page) == std::vector<std::string>{"ord_b m2"});
  a.commit();
  page = must(store->trail_since(page.mark, 100));
  CHECK(fresh(page) == std::vector<std::string>{"ord_z mz"});

  // Five rows of one transaction, read in pages of two: all of them, in order, none twice.
  std::vector<AppliedEvent> batch;
  for (int i = 0; i < 5; ++i) {
    batch.push_back(event("n" + std::to_string(i), 10 + i, create("ord_n" + std::to_string(i))));
  }
  must(store->apply_batch(batch, 4'000));
  std::vector<std::string> got;
  for (int round = 0; round < 10 && got.size() < 5; ++round) {
    page = must(store->trail_since(page.mark, 2));
    for (auto& row : fresh(page)) got.push_back(row);
  }
  CHECK(got == std::vector<std::string>{"ord_n0 n0", "ord_n1 n1", "ord_n2 n2", "ord_n3 n3",
                                        "ord_n4 n4"});
}
