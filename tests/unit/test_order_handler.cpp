// The OrderHandler on the embedded store: events applied once, in group order, with the
// ones that can never apply dead-lettered with their reason.
#include <unistd.h>

#include <catch2/catch.hpp>

#include "core/order_handler.hpp"
#include "core/handler_registry.hpp"
#include "core/order_store.hpp"
#include "unit/queue_test_util.hpp"
#include "unit/temp_dir.hpp"

using namespace acmo;
using acmo::test::must;
using acmo::test::must_fail;
using acmo::test::open_queue;
using acmo::test::TempDir;

namespace {

void send_event(Queue& q, const std::string& json)
{
  auto event = parse_event(json);
  REQUIRE(event);
  must(q.send(SendRequest{event_body(*event), "orders", ""}));
}

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
  auto late = q->settle({slow[0].receipt}, [&](sqlite::Database& db) -> Expected<std::vector<Disposition>> {
    auto event = parse_event(slow[0].body);
    auto ok = SqliteOrderStore::apply(db, AppliedEvent{slow[0].message_id, slow[0].seq, *event}, 0);
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
  auto handlers = must(list_handlers(path, clock.now_ms()));
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
