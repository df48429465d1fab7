// Cache-aside reads of orders over the embedded store: a read is a miss, then a hit; the
// handler's commit invalidates the order and the lists, so the next read shows the change.
// With the memory cache, and with Redis.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/cached_orders.hpp"
#include "core/order_handler.hpp"
#include "core/order_store.hpp"
#include "core/redis_cache.hpp"
#include "unit/queue_test_util.hpp"
#include "unit/redis_test_util.hpp"
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
