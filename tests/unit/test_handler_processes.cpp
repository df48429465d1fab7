// Exactly once in effect, proved by killing real handler processes (docs/orders.md §6): a stream of
// CREATE/UPDATE/DELETE events is applied by OrderHandler processes that are kill -9'ed at
// random moments and restarted; at the end the store equals the state computed from the
// events, and every event is in the audit trail exactly once, in order. The same test runs on
// the embedded store (applied with the message's deletion in one SQLite transaction) and on
// PostgreSQL (applied with the message's id in one PostgreSQL transaction; a message delivered
// again after a kill between that commit and its deletion is a duplicate).
#include <poll.h>
#include <unistd.h>

#include <map>
#include <random>
#include <thread>

#include <catch2/catch.hpp>
#include <fmt/core.h>

#include "core/handler/order_handler.hpp"
#include "core/store/order_store.hpp"
#include "core/store/pg_order_store.hpp"
#include "pg_test_util.hpp"
#include "process_util.hpp"
#include "queue_test_util.hpp"
#include "temp_dir.hpp"

using namespace acmo;
using namespace acmo::test::process;
using acmo::test::must;
using acmo::test::TempDir;

namespace {

struct Expected_ {
  bool exists = false;
  std::string status;
  int64_t version = 0;
  std::vector<std::string> trail; // "CREATE", "UPDATE:processing", "DELETE", in order
};

// A stream of valid events for `orders` orders, interleaved at random, each order's events in
// a valid order; and the state they lead to.
std::vector<OrderEvent> make_stream(int orders, std::mt19937& random,
                                    std::map<std::string, Expected_>& expected)
{
  const std::vector<std::string> path = {"processing", "shipped", "delivered"};
  std::vector<std::vector<OrderEvent>> per_order(static_cast<size_t>(orders));
  for (int o = 0; o < orders; ++o) {
    auto& events = per_order[static_cast<size_t>(o)];
    const std::string id = fmt::format("ord_k{:05}", o);
    auto& want = expected[id];
    OrderEvent create;
    create.type = EventType::create;
    create.order_id = id;
    create.data = {{"customer_name", "Kill"}, {"customer_email", "kill@example.com"},
                   {"items", nlohmann::json::array({{{"product_id", "p"}, {"quantity", 1}, {"unit_price", 1.25}}})}};
    events.push_back(create);
    want = {true, "pending", 1, {"CREATE"}};
    const auto steps = static_cast<size_t>(random() % 4); // 0-3 status changes
    for (size_t s = 0; s < steps; ++s) {
      OrderEvent update;
      update.type = EventType::update;
      update.order_id = id;
      const bool cancel = s == steps - 1 && random() % 4 == 0 && path[s] != "delivered";
      const std::string status = cancel ? "cancelled" : path[s];
      update.data = {{"status", status}};
      events.push_back(update);
      want.status = status;
      want.version += 1;
      want.trail.push_back("UPDATE:" + status);
      if (cancel) break;
    }
    if (random() % 5 == 0) {
      OrderEvent remove;
      remove.type = EventType::remove;
      remove.order_id = id;
      events.push_back(remove);
      want.exists = false;
      want.trail.push_back("DELETE");
    }
  }
  // Interleave: repeatedly take the next event of a random order that has some left.
  std::vector<OrderEvent> stream;
  std::vector<size_t> next(per_order.size(), 0);
  std::vector<size_t> live;
  for (size_t i = 0; i < per_order.size(); ++i) live.push_back(i);
  while (!live.empty()) {
    const size_t pick = random() % live.size();
    const size_t o = live[pick];
    stream.push_back(per_order[o][next[o]++]);
    if (next[o] == per_order[o].size()) {
      live[pick] = live.back();
      live.pop_back();
    }
  }
  return stream;
}

// The order store under test: the embedded one, or PostgreSQL in a schema of the test's own.
struct StoreUnderTest {
  std::string pg_url; // empty: the embedded SQLite store

  // What the handler writes to: null for the embedded store (the queue's database).
  std::unique_ptr<OrderWriter> open_writer() const
  {
    if (pg_url.empty()) return nullptr;
    auto store = PgOrderStore::open(PgOptions{pg_url, 2, 5'000});
    if (!store) throw std::runtime_error(store.error().message);
    return std::move(*store);
  }
  std::unique_ptr<OrderStore> open_reader(const std::string& db_path) const
  {
    if (pg_url.empty()) return must(SqliteOrderStore::open(db_path));
    return must(PgOrderStore::open(PgOptions{pg_url, 2, 5'000}));
  }
};

void run_kill_test(bool group_per_order, const StoreUnderTest& store_under_test = {})
{
  TempDir dir;
  const std::string path = dir.file("acmo.db");
  QueueOptions options;
  options.visibility_timeout_ms = 150; // a killed handler's batch comes back quickly
  // Every kill in the middle of a batch counts an attempt of each of its messages (the journal
  // of work in hand), and this test kills hundreds of times: what it proves is exactly once,
  // not the DLQ, so the attempts never run out and come back at once.
  options.max_retries = 1'000'000;
  options.retry_delays_ms = {0};
  std::mt19937 random(std::random_device{}());
  std::map<std::string, Expected_> expected;
  // Enough events that a fast machine still needs several handler lives for them (PostgreSQL
  // applies them several times slower).
  auto stream = make_stream(store_under_test.pg_url.empty() ? 4000 : 1500, random, expected);
  {
    auto q = acmo::test::open_queue(path, options);
    std::vector<SendRequest> requests;
    for (const auto& e : stream) {
      requests.push_back(SendRequest{event_body(e), group_per_order ? e.order_id : "orders", ""});
    }
    for (const auto& r : q->send_bulk(requests)) must(r);
  }

  int kills = 0;
  int kills_mid_work = 0; // kills that left events to apply
  // The kills stop at a deadline and this process finishes the work. A release build empties
  // the queue long before it; under the sanitizers, whose processes do a fraction of the work
  // in a life, the kills would take minutes, and 20 s of them are a hundred lives.
  const auto deadline =
    std::chrono::steady_clock::now() + std::chrono::seconds(k_sanitized ? 20 : 60);
  for (;;) {
    // The child says when its handler starts, and dies a random time into its work: timed
    // from the fork, a slow start (under the sanitizers, a handler takes longer to open the
    // queue than these times) would have most kills land before any work.
    Pipe started;
    pid_t child = spawn({started.read_fd()}, [&] {
      auto q = SqliteQueue::open(path, options);
      if (!q) return k_child_open_failed;
      auto writer = store_under_test.open_writer();
      HandlerOptions handler_options{2, 10, 100};
      handler_options.writer = writer.get();
      OrderHandler handler(**q, path, handler_options);
      if (::write(started.write_fd(), "s", 1) != 1) return k_child_write_failed;
      return handler.run() ? k_child_ok : k_child_handler_failed;
    });
    started.close_write();
    pollfd p{started.read_fd(), POLLIN, 0};
    (void)::poll(&p, 1, 30'000); // the byte, or end of file from a child that failed
    started.close_read();
    std::this_thread::sleep_for(std::chrono::milliseconds(30 + random() % 100));
    ::kill(child, SIGKILL);
    REQUIRE(wait_child(child) == 128 + SIGKILL);
    ++kills;
    auto q = acmo::test::open_queue(path, options);
    auto s = must(q->stats());
    if (s.visible + s.in_flight + s.delayed == 0) break;
    ++kills_mid_work;
    if (std::chrono::steady_clock::now() > deadline) {
      // Bounded: finish in this process after the kills.
      std::this_thread::sleep_for(std::chrono::milliseconds(400));
      auto writer = store_under_test.open_writer();
      HandlerOptions handler_options{1, 100, 50};
      handler_options.writer = writer.get();
      OrderHandler handler(*q, path, handler_options);
      must(handler.run_once());
      break;
    }
  }
  INFO("handler processes killed: " << kills << " (" << kills_mid_work
                                     << " with events left), events: " << stream.size());
  CHECK(kills_mid_work >= 3);

  auto q = acmo::test::open_queue(path, options);
  auto s = must(q->stats());
  CHECK(s.visible + s.in_flight + s.delayed == 0);
  CHECK(s.dead_lettered == 0);
  auto store = store_under_test.open_reader(path);
  int64_t trail_events = 0;
  for (const auto& [id, want] : expected) {
    INFO(id);
    auto order = store->get(id);
    CHECK(bool(order) == want.exists);
    if (order && want.exists) {
      CHECK(order->status == want.status);
      CHECK(order->version == want.version);
      CHECK(order->total_cents == 125);
    }
    auto trail = must(store->events(id));
    std::vector<std::string> got;
    int64_t last_seq = 0;
    for (const auto& e : trail) {
      got.push_back(e.type == "UPDATE" ? "UPDATE:" + e.data["status"].get<std::string>() : e.type);
      CHECK(e.seq > last_seq); // group order, and no event twice
      last_seq = e.seq;
    }
    CHECK(got == want.trail);
    trail_events += static_cast<int64_t>(trail.size());
  }
  CHECK(trail_events == static_cast<int64_t>(stream.size()));
}

} // namespace

TEST_CASE("OrderHandler processes: kill -9 at random; every event applied exactly once",
          "[process][handler]")
{
  SECTION("one group for every event (the seed's default)") { run_kill_test(false); }
  SECTION("one group per order (queue.group_by = \"order\")") { run_kill_test(true); }
}

TEST_CASE("OrderHandler processes on PostgreSQL: kill -9 at random; every event applied exactly "
          "once",
          "[process][handler][pg]")
{
  ACMO_NEED_PG(url);
  acmo::test::PgSchema schema(url);
  const StoreUnderTest postgres{schema.url()};
  SECTION("one group for every event (the seed's default)") { run_kill_test(false, postgres); }
  SECTION("one group per order (queue.group_by = \"order\")") { run_kill_test(true, postgres); }
}
