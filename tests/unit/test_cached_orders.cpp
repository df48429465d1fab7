// Cache-aside reads of orders over the embedded store: a read is a miss, then a hit; the
// handler's commit invalidates the order and the lists, so the next read shows the change.
// With the memory cache, and with Redis.
#include <chrono>
#include <functional>
#include <map>
#include <thread>
#include <utility>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/cache/cached_orders.hpp"
#include "core/cache/redis_cache.hpp"
#include "core/store/change_signal.hpp"
#include "core/handler/order_handler.hpp"
#include "core/store/order_store.hpp"
#include "unit/fake_order_store.hpp"
#include "unit/queue_test_util.hpp"
#include "unit/redis_test_util.hpp"
#include "unit/temp_dir.hpp"

using namespace acmo;
using acmo::test::must;
using acmo::test::must_fail;
using acmo::test::open_queue;
using acmo::test::send_event;
using acmo::test::TempDir;

namespace {

std::string create(const std::string& id, const std::string& name)
{
  return R"({"type":"CREATE","orderId":")" + id + R"(","data":{"customer_name":")" + name +
         R"(","customer_email":"x@example.com","items":[{"product_id":"p1","quantity":2,"unit_price":5.25}]}})";
}

std::string update(const std::string& id, const std::string& status)
{
  return R"({"type":"UPDATE","orderId":")" + id + R"(","data":{"status":")" + status + "\"}}";
}

std::string status_of(const std::string& json_text)
{
  return nlohmann::json::parse(json_text).at("status").get<std::string>();
}

int64_t total_of(const std::string& list_text)
{
  return nlohmann::json::parse(list_text).at("total").get<int64_t>();
}

// The whole story on one cache.
void check_cache_aside(Cache& cache)
{
  TempDir dir;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path);
  HandlerOptions options{1, 10, 20};
  options.cache = &cache;
  auto run = [&] { return must(OrderHandler(*q, path, options).run_once()); };

  send_event(*q, create("ord_a", "Ada"));
  send_event(*q, create("ord_b", "Bob"));
  CHECK(run().processed == 2);

  auto store = must(SqliteOrderStore::open(path));
  CachedOrders orders(*store, &cache);
  const CacheStats before = cache.stats();
  auto stats_since = [&] {
    CacheStats s = cache.stats();
    return std::pair{s.hits - before.hits, s.misses - before.misses};
  };

  // An order: a miss that reads the store, then a hit with the same text.
  const std::string first = must(orders.get_json("ord_a"));
  CHECK(status_of(first) == "pending");
  CHECK(stats_since() == std::pair<int64_t, int64_t>{0, 1});
  CHECK(must(orders.get_json("ord_a")) == first);
  CHECK(stats_since() == std::pair<int64_t, int64_t>{1, 1});
  // Lists, each query on its own key.
  CHECK(total_of(must(orders.list_json("pending", 50, 0))) == 2);
  CHECK(total_of(must(orders.list_json("pending", 50, 0))) == 2);
  CHECK(total_of(must(orders.list_json("processing", 50, 0))) == 0);
  CHECK(stats_since() == std::pair<int64_t, int64_t>{2, 3});
  // An order that does not exist is not cached as anything.
  CHECK(must_fail(orders.get_json("ord_nobody")).code == Errc::not_found);

  // The handler applies an UPDATE: the order and every list are invalidated.
  send_event(*q, update("ord_a", "processing"));
  CHECK(run().processed == 1);
  CHECK(status_of(must(orders.get_json("ord_a"))) == "processing");
  CHECK(total_of(must(orders.list_json("pending", 50, 0))) == 1);
  CHECK(total_of(must(orders.list_json("processing", 50, 0))) == 1);

  // A DELETE too.
  CHECK(status_of(must(orders.get_json("ord_b"))) == "pending"); // cached again
  send_event(*q, R"({"type":"DELETE","orderId":"ord_b","data":{}})");
  CHECK(run().processed == 1);
  CHECK(must_fail(orders.get_json("ord_b")).code == Errc::not_found);
  CHECK(total_of(must(orders.list_json("pending", 50, 0))) == 0);

  // The control: a handler that is not told about the cache leaves it stale. This is what
  // the invalidation above prevents.
  CHECK(status_of(must(orders.get_json("ord_a"))) == "processing");
  options.cache = nullptr;
  send_event(*q, update("ord_a", "shipped"));
  CHECK(run().processed == 1);
  CHECK(status_of(must(orders.get_json("ord_a"))) == "processing");
  CHECK(must(store->get("ord_a")).status == "shipped");

  CHECK(cache.stats().errors == 0);
}

} // namespace

TEST_CASE("CachedOrders over the memory cache: miss, hit, and the handler invalidates",
          "[cached_orders]")
{
  MemoryCache cache(1000, 60'000);
  check_cache_aside(cache);
}

TEST_CASE("CachedOrders over Redis: miss, hit, and the handler invalidates",
          "[cached_orders][redis]")
{
  auto url = test::test_redis_url();
  if (!url) return;
  const std::string prefix = test::unique_prefix();
  test::PrefixCleanup cleanup(*url, prefix);
  RedisCacheOptions o;
  o.url = *url;
  o.prefix = prefix;
  RedisCache cache(o);
  check_cache_aside(cache);
}

TEST_CASE("CachedOrders: with the cache's Redis down, reads answer from the store",
          "[cached_orders][redis]")
{
  TempDir dir;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path);
  send_event(*q, create("ord_a", "Ada"));
  must(OrderHandler(*q, path, HandlerOptions{1, 10, 20}).run_once());
  auto store = must(SqliteOrderStore::open(path));
  RedisCacheOptions o;
  o.url = "redis://127.0.0.1:" + std::to_string(test::free_port());
  RedisCache cache(o);
  CachedOrders orders(*store, &cache);
  for (int i = 0; i < 3; ++i) {
    CHECK(status_of(must(orders.get_json("ord_a"))) == "pending");
    CHECK(total_of(must(orders.list_json("", 50, 0))) == 1);
  }
  CHECK(cache.stats().errors >= 12); // each get and each put
}

TEST_CASE("CachedOrders: Redis stopped in the middle of a handler run, and started again",
          "[cached_orders][redis][alone]")
{
  // Issue 3, item 6: no event fails, reads fall back to the store, errors are counted, and
  // caching resumes when Redis returns.
  test::OwnRedisServer server;
  TempDir dir;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path);
  RedisCacheOptions o;
  o.url = server.url();
  o.prefix = "acmo:";
  o.timeout_ms = 100;
  o.retry_after_ms = 200;
  RedisCache cache(o);
  HandlerOptions options{2, 10, 20};
  options.cache = &cache;
  OrderHandler handler(*q, path, options);
  std::thread worker([&] { must(handler.run()); });
  struct Join {
    OrderHandler& h;
    std::thread& t;
    ~Join()
    {
      h.stop();
      if (t.joinable()) t.join();
    }
  } join{handler, worker};

  auto store = must(SqliteOrderStore::open(path));
  CachedOrders orders(*store, &cache);
  constexpr int k_orders = 40;
  auto id = [](int i) { return "ord_" + std::to_string(i); };
  // Wait until the handler has applied everything queued, then read every order twice and
  // check what it says.
  auto settle_and_read = [&](const std::string& status) {
    for (int i = 0; i < 200; ++i) {
      auto s = must(q->stats());
      if (s.visible + s.in_flight + s.delayed == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    int wrong = 0;
    for (int round = 0; round < 2; ++round) {
      for (int i = 0; i < k_orders; ++i) {
        if (status_of(must(orders.get_json(id(i)))) != status) ++wrong;
      }
      if (total_of(must(orders.list_json(status, 100, 0))) != k_orders) ++wrong;
    }
    return wrong;
  };

  for (int i = 0; i < k_orders; ++i) send_event(*q, create(id(i), "Ada"));
  CHECK(settle_and_read("pending") == 0);
  const CacheStats up = cache.stats();
  CHECK(up.hits >= k_orders + 1);
  CHECK(up.errors == 0);

  server.stop();
  // Events keep coming and reads keep answering, from the store, while Redis is away.
  for (int i = 0; i < k_orders; ++i) {
    send_event(*q, update(id(i), "processing"));
    CHECK(status_of(must(orders.get_json(id(i % 5)))) != "");
  }
  CHECK(settle_and_read("processing") == 0);
  const CacheStats down = cache.stats(); // this process's own figures: Redis is away
  CHECK(down.errors > 2 * k_orders);

  server.start(); // empty: it kept nothing
  std::this_thread::sleep_for(std::chrono::milliseconds(250)); // the back-off runs out
  for (int i = 0; i < k_orders; ++i) send_event(*q, update(id(i), "shipped"));
  CHECK(settle_and_read("shipped") == 0);
  const CacheStats back = cache.stats();
  CHECK(back.hits >= k_orders + 1); // caching resumed
  CHECK(back.errors > 0);           // the outage's errors reached the new server
  CHECK(back.keys >= k_orders + 1);

  handler.stop();
  worker.join();
  const HandlerStats hs = handler.stats();
  CHECK(hs.processed == 3 * k_orders);
  CHECK(hs.dead_lettered == 0);
  CHECK(hs.retried == 0);
  CHECK(must(q->dlq_list()).empty());
}

TEST_CASE("Cached orders: a stale value put just after the handler's commit is invalidated again "
          "about a second later",
          "[cached_orders]")
{
  // Cache-aside's race: a reader reads the order before the handler commits, the handler
  // commits and invalidates, then the reader puts what it read. The handler invalidates the
  // ids of each heartbeat again at the next one, so the stale entry lives at most ~2 s.
  TempDir dir;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path);
  MemoryCache cache(100, 60'000);
  HandlerOptions options{1, 10, 20};
  options.cache = &cache;
  OrderHandler handler(*q, path, options);
  std::thread running([&] { must(handler.run()); });

  auto store = must(SqliteOrderStore::open(path));
  CachedOrders orders(*store, &cache);
  send_event(*q, create("ord_r", "Ray"));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!store->get("ord_r") && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const std::string pending = must(orders.get_json("ord_r")); // the reader's read

  send_event(*q, update("ord_r", "processing"));
  while (must(store->get("ord_r")).status != "processing" &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  cache.put(order_cache_key("ord_r"), pending); // the reader's late put, after the commit
  CHECK(status_of(must(orders.get_json("ord_r"))) == "pending"); // stale, for now

  std::this_thread::sleep_for(std::chrono::milliseconds(2'300)); // two heartbeats
  CHECK(status_of(must(orders.get_json("ord_r"))) == "processing");
  handler.stop();
  running.join();
}

TEST_CASE("Cached orders: a memory cache follows the store's change feed, so a handler in another "
          "process is never read stale",
          "[cached_orders]")
{
  TempDir dir;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path);
  // The handler of another process: it cannot reach this cache.
  HandlerOptions options{1, 10, 20};
  auto run = [&] { return must(OrderHandler(*q, path, options).run_once()); };
  send_event(*q, create("ord_a", "Ada"));
  send_event(*q, create("ord_b", "Bob"));
  CHECK(run().processed == 2);

  auto store = must(SqliteOrderStore::open(path));
  MemoryCache cache(1000, 60'000);
  CacheFollower follower(3);
  const bool with_signal = GENERATE(false, true);
  CAPTURE(with_signal); // the signal only spares questions; the answers are the same
  if (with_signal) follower.use_signal(must(ChangeSignal::open(path)));
  CachedOrders orders(*store, &cache, &follower);
  CachedOrders unfollowed(*store, &cache);

  CHECK(status_of(must(orders.get_json("ord_a"))) == "pending");
  CHECK(total_of(must(orders.list_json("", 50, 0))) == 2);
  const int64_t hits = cache.stats().hits;
  CHECK(status_of(must(orders.get_json("ord_a"))) == "pending");
  CHECK(cache.stats().hits == hits + 1); // nothing changed: still served from the cache

  send_event(*q, update("ord_a", "processing"));
  CHECK(run().processed == 1);
  // The control: the same cache read without the feed answers with the old order.
  CHECK(status_of(must(unfollowed.get_json("ord_a"))) == "pending");
  CHECK(status_of(must(orders.get_json("ord_a"))) == "processing");
  CHECK(status_of(must(orders.get_json("ord_a"))) == "processing");

  // A DELETE, and a list.
  CHECK(status_of(must(orders.get_json("ord_b"))) == "pending");
  send_event(*q, R"({"type":"DELETE","orderId":"ord_b","data":{}})");
  CHECK(run().processed == 1);
  CHECK(must_fail(orders.get_json("ord_b")).code == Errc::not_found);
  CHECK(total_of(must(orders.list_json("", 50, 0))) == 1);

  // More changes at once than the follower names: it drops every order.
  CHECK(status_of(must(orders.get_json("ord_a"))) == "processing");
  for (const char* id : {"ord_c", "ord_d", "ord_e", "ord_f"}) send_event(*q, create(id, "Cy"));
  send_event(*q, update("ord_a", "shipped"));
  CHECK(run().processed == 5);
  CHECK(status_of(must(orders.get_json("ord_a"))) == "shipped");
  CHECK(total_of(must(orders.list_json("", 50, 0))) == 5);
}


TEST_CASE("Cached orders: a read that raced a change does not put what it read", "[cached_orders]")
{
  acmo::test::FakeOrders data;
  acmo::test::FakeOrderStore store(data);
  data.change("ord_a", "pending");
  MemoryCache cache(100, 60'000);
  CacheFollower follower;
  CachedOrders orders(store, &cache, &follower);
  CachedOrders other_reader(store, &cache, &follower);

  // The first reader reads "pending"; before it puts, the order changes and a second reader
  // catches up (dropping ord_a) and reads "processing".
  data.on_get = [&] {
    data.change("ord_a", "processing");
    CHECK(status_of(must(other_reader.get_json("ord_a"))) == "processing");
  };
  CHECK(status_of(must(orders.get_json("ord_a"))) == "pending"); // what it read, answered
  // Its late put was refused: the cache holds the second reader's entry, not the stale one.
  CHECK(status_of(must(orders.get_json("ord_a"))) == "processing");
  CHECK(cache.get(order_cache_key("ord_a")).has_value());
}

TEST_CASE("Cached orders: with the change signal, the store is asked only when a change began",
          "[cached_orders]")
{
  TempDir dir;
  const std::string path = dir.file("acmo.db");
  acmo::test::FakeOrders data;
  acmo::test::FakeOrderStore store(data);
  data.change("ord_a", "pending");
  MemoryCache cache(100, 60'000);
  CacheFollower follower;
  follower.use_signal(must(ChangeSignal::open(path)));
  auto writer = must(ChangeSignal::open(path)); // another process's handler
  CachedOrders orders(store, &cache, &follower);

  CHECK(status_of(must(orders.get_json("ord_a"))) == "pending"); // the first read asks
  const int64_t asked = data.questions;
  CHECK(status_of(must(orders.get_json("ord_a"))) == "pending");
  CHECK(status_of(must(orders.get_json("ord_a"))) == "pending");
  CHECK(data.questions == asked); // nothing began: nothing asked

  // A change in flight (begun, not ended): every read asks, and sees it once committed.
  const int64_t ticket = writer->begin();
  CHECK(status_of(must(orders.get_json("ord_a"))) == "pending");
  CHECK(data.questions == asked + 1);
  data.change("ord_a", "processing"); // committed, the end not yet signalled
  CHECK(status_of(must(orders.get_json("ord_a"))) == "processing");
  CHECK(data.questions == asked + 2);
  writer->end(ticket);
  CHECK(status_of(must(orders.get_json("ord_a"))) == "processing");
  const int64_t after = data.questions;
  CHECK(status_of(must(orders.get_json("ord_a"))) == "processing");
  CHECK(data.questions == after); // all ended and seen: quiet again

  // A writer killed between its ticket and its end: the next writer's end covers it.
  writer->begin();
  const int64_t next = writer->begin();
  writer->end(next);
  CHECK(writer->ended() == writer->begun());
}
