// RedisCache against a real Redis: the shared test server (ACMO_TEST_REDIS_URL) with a key
// prefix of each test's own, and for the outages a redis-server of the test's own.
#include <algorithm>
#include <chrono>
#include <sstream>
#include <thread>

#include <catch2/catch.hpp>
#include <fmt/core.h>

#include "core/cache/redis_cache.hpp"
#include "unit/redis_test_util.hpp"

using namespace acmo;
using namespace acmo::test;

namespace {

RedisCacheOptions options_for(const std::string& url, const std::string& prefix)
{
  RedisCacheOptions o;
  o.url = url;
  o.prefix = prefix;
  o.ttl_ms = 60'000;
  o.timeout_ms = 500;
  return o;
}

std::string list_key(std::string_view rest)
{
  return std::string(k_order_list_prefix) + std::string(rest);
}

int64_t elapsed_ms(std::chrono::steady_clock::time_point since)
{
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               since)
    .count();
}

} // namespace

TEST_CASE("parse_redis_url: the forms acmo accepts, and what it refuses", "[redis]")
{
  auto a = parse_redis_url("redis://127.0.0.1:56379");
  REQUIRE(a);
  CHECK(a->host == "127.0.0.1");
  CHECK(a->port == 56379);
  CHECK(a->db == 0);
  a = parse_redis_url("redis://cache.example");
  REQUIRE(a);
  CHECK(a->host == "cache.example");
  CHECK(a->port == 6379);
  a = parse_redis_url("redis://:s3cret@[::1]:7000/2");
  REQUIRE(a);
  CHECK(a->host == "::1");
  CHECK(a->port == 7000);
  CHECK(a->db == 2);
  CHECK(a->password == "s3cret");
  a = parse_redis_url("unix:///run/redis/redis.sock?db=3");
  REQUIRE(a);
  CHECK(a->unix_path == "/run/redis/redis.sock");
  CHECK(a->db == 3);
  for (const char* bad : {"http://x", "redis://", "redis://host:0", "redis://host:99999",
                          "redis://host:port", "redis://host/x", "unix://relative.sock"}) {
    INFO(bad);
    auto e = parse_redis_url(bad);
    REQUIRE_FALSE(e);
    CHECK(e.error().code == Errc::invalid_input);
    CHECK(e.error().field == "cache.url");
  }
}

TEST_CASE("RedisCache: a put is read back under the prefix, with the TTL as PX", "[redis]")
{
  auto url = test_redis_url();
  if (!url) return;
  const std::string prefix = unique_prefix();
  PrefixCleanup cleanup(*url, prefix);
  RedisCache cache(options_for(*url, prefix));
  RawRedis raw(*url);

  CHECK_FALSE(cache.get(order_cache_key("a")));
  cache.put(order_cache_key("a"), R"({"id":"a"})");
  CHECK(cache.get(order_cache_key("a")) == std::optional<std::string>(R"({"id":"a"})"));
  CHECK(raw.get(prefix + "order:a") == std::optional<std::string>(R"({"id":"a"})"));
  const auto pttl = raw.integer({"PTTL", prefix + "order:a"});
  CHECK(pttl > 59'000);
  CHECK(pttl <= 60'000);
  // Binary-safe: the value is stored as given.
  const std::string odd("a\0b\r\n", 5);
  cache.put("odd", odd);
  CHECK(cache.get("odd") == std::optional<std::string>(odd));
  CHECK(cache.last_error().empty());
}

TEST_CASE("RedisCache: entries expire after the TTL", "[redis][alone]")
{
  auto url = test_redis_url();
  if (!url) return;
  const std::string prefix = unique_prefix();
  PrefixCleanup cleanup(*url, prefix);
  auto o = options_for(*url, prefix);
  o.ttl_ms = 100;
  RedisCache cache(o);
  cache.put("k", "v");
  cache.put(list_key("status=&limit=50&offset=0"), "[]");
  CHECK(cache.get("k"));
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  CHECK_FALSE(cache.get("k"));
  CHECK_FALSE(cache.get(list_key("status=&limit=50&offset=0")));
  CHECK(cache.keys().empty());
  // The index of the lists expires with its newest entry.
  CHECK(RawRedis(*url).keys_under(prefix + "~index:").empty());
}

TEST_CASE("RedisCache: invalidate, invalidate_prefix, invalidate_batch", "[redis]")
{
  auto url = test_redis_url();
  if (!url) return;
  const std::string prefix = unique_prefix();
  PrefixCleanup cleanup(*url, prefix);
  RedisCache cache(options_for(*url, prefix));
  auto fill = [&] {
    cache.put(order_cache_key("a"), "A");
    cache.put(order_cache_key("b"), "B");
    cache.put(order_cache_key("c"), "C");
    cache.put(list_key("status=&limit=50&offset=0"), "[A,B,C]");
    cache.put(list_key("status=pending&limit=50&offset=0"), "[A]");
    cache.put("other:x", "X");
    cache.put("other:y", "Y");
  };
  fill();

  SECTION("one key")
  {
    cache.invalidate(order_cache_key("a"));
    CHECK_FALSE(cache.get(order_cache_key("a")));
    CHECK(cache.get(order_cache_key("b")));
    cache.invalidate(order_cache_key("nobody")); // not there: nothing happens
    CHECK(cache.keys().size() == 6);
  }
  SECTION("the lists, through their index")
  {
    cache.invalidate_prefix(k_order_list_prefix);
    CHECK_FALSE(cache.get(list_key("status=&limit=50&offset=0")));
    CHECK_FALSE(cache.get(list_key("status=pending&limit=50&offset=0")));
    CHECK(cache.get(order_cache_key("a")));
    CHECK(cache.keys().size() == 5);
    // Lists cached afterwards are invalidated the next time too.
    cache.put(list_key("status=shipped&limit=10&offset=0"), "[]");
    cache.invalidate_prefix(k_order_list_prefix);
    CHECK_FALSE(cache.get(list_key("status=shipped&limit=10&offset=0")));
  }
  SECTION("a prefix that is not indexed, by SCAN")
  {
    cache.invalidate_prefix("other:");
    CHECK_FALSE(cache.get("other:x"));
    CHECK_FALSE(cache.get("other:y"));
    CHECK(cache.keys().size() == 5);
  }
  SECTION("what the handler does after a commit: orders and lists at once")
  {
    cache.invalidate_batch({order_cache_key("a"), order_cache_key("c")}, k_order_list_prefix);
    CHECK_FALSE(cache.get(order_cache_key("a")));
    CHECK(cache.get(order_cache_key("b")));
    CHECK_FALSE(cache.get(order_cache_key("c")));
    CHECK_FALSE(cache.get(list_key("status=&limit=50&offset=0")));
    CHECK(cache.keys().size() == 3); // b, other:x, other:y
  }
  CHECK(cache.last_error().empty());
  CHECK(cache.stats().errors == 0);
}

TEST_CASE("RedisCache: keys() lists only the prefix's entries; clear() removes only them",
          "[redis]")
{
  auto url = test_redis_url();
  if (!url) return;
  const std::string prefix = unique_prefix();
  const std::string neighbour = unique_prefix();
  PrefixCleanup cleanup(*url, prefix);
  PrefixCleanup cleanup_neighbour(*url, neighbour);
  RawRedis raw(*url);
  RedisCache cache(options_for(*url, prefix));
  RedisCache other(options_for(*url, neighbour));
  // A prefix that is a glob must match only itself.
  const std::string glob = prefix.substr(0, prefix.size() - 1) + "*:";
  PrefixCleanup cleanup_glob(*url, glob);
  raw.cmd({"SET", glob + "foreign", "keep me"});
  other.put(order_cache_key("x"), "X");

  for (int i = 0; i < 2500; ++i) cache.put(order_cache_key(std::to_string(i)), "v");
  cache.put(list_key("status=&limit=50&offset=0"), "[]");
  CHECK(cache.get(order_cache_key("7")));
  auto keys = cache.keys();
  CHECK(keys.size() == 2501);
  CHECK(std::count(keys.begin(), keys.end(), order_cache_key("2499")) == 1);
  CHECK(cache.stats().keys == 2501);

  CHECK(cache.clear() == 2501);
  CHECK(cache.keys().empty());
  CHECK(cache.stats().keys == 0);
  // Only the figures are left under the prefix.
  CHECK(raw.keys_under(prefix) == std::vector<std::string>{prefix + "~stats"});
  CHECK(other.get(order_cache_key("x")) == std::optional<std::string>("X"));
  CHECK(raw.get(glob + "foreign") == std::optional<std::string>("keep me"));
  CHECK(cache.stats().hits == 1); // the figures outlive a clear
}

TEST_CASE("RedisCache: hits, misses and keys are shared by every process on the prefix",
          "[redis]")
{
  auto url = test_redis_url();
  if (!url) return;
  const std::string prefix = unique_prefix();
  PrefixCleanup cleanup(*url, prefix);
  {
    RedisCache handler_side(options_for(*url, prefix));
    handler_side.put(order_cache_key("a"), "A");
    CHECK(handler_side.get(order_cache_key("a")));
    CHECK(handler_side.get(order_cache_key("a")));
    CHECK_FALSE(handler_side.get(order_cache_key("b")));
  } // a short-lived process adds its counts when it ends
  RedisCache reader(options_for(*url, prefix));
  CHECK(reader.get(order_cache_key("a")));
  auto s = reader.stats();
  CHECK(s.backend == "redis");
  CHECK(s.hits == 3);
  CHECK(s.misses == 1);
  CHECK(s.errors == 0);
  CHECK(s.keys == 1);
  CHECK(s.hit_rate() == Approx(0.75));
}

TEST_CASE("RedisCache: many threads at once share a small pool", "[redis]")
{
  auto url = test_redis_url();
  if (!url) return;
  const std::string prefix = unique_prefix();
  PrefixCleanup cleanup(*url, prefix);
  auto o = options_for(*url, prefix);
  o.max_connections = 3; // fewer than the threads: they wait for a connection in turn
  RedisCache cache(o);
  constexpr int k_threads = 8;
  constexpr int k_rounds = 300;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < k_rounds; ++i) {
        const std::string key = order_cache_key(fmt::format("{}-{}", t, i % 20));
        const std::string value = fmt::format("{}:{}", t, i);
        cache.put(key, value);
        if (cache.get(key) != value) ++wrong;
        if (i % 10 == 0) cache.invalidate_batch({key}, k_order_list_prefix);
        if (i % 7 == 0) cache.put(list_key(fmt::format("t={}", t)), value);
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(wrong == 0);
  auto s = cache.stats();
  CHECK(s.errors == 0);
  CHECK(s.hits == k_threads * k_rounds);
  CHECK(cache.last_error().empty());
}

TEST_CASE("RedisCache: a connection the server killed is replaced without an error",
          "[redis][alone]")
{
  auto url = test_redis_url();
  if (!url) return;
  const std::string prefix = unique_prefix();
  PrefixCleanup cleanup(*url, prefix);
  RedisCache cache(options_for(*url, prefix));
  cache.put("k", "v");
  REQUIRE(cache.get("k"));
  // Kill this process's connections only (by the name the cache gives them): the server is
  // shared with other test runs.
  RawRedis raw(*url);
  const std::string name = "name=acmo-" + std::to_string(::getpid()) + " ";
  auto list = raw.cmd({"CLIENT", "LIST"});
  std::istringstream lines(std::string(list->str, list->len));
  int killed = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.find(name) == std::string::npos) continue;
    const auto id = line.substr(3, line.find(' ') - 3); // "id=N addr=..."
    killed += static_cast<int>(raw.integer({"CLIENT", "KILL", "ID", id}));
  }
  REQUIRE(killed >= 1);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(cache.get("k") == std::optional<std::string>("v"));
  cache.put("k2", "v2");
  CHECK(cache.get("k2") == std::optional<std::string>("v2"));
  CHECK(elapsed_ms(t0) < 400);
  CHECK(cache.stats().errors == 0);
  CHECK(cache.last_error().empty());
}

TEST_CASE("RedisCache: nothing listening: every call answers at once, counted, never thrown",
          "[redis][alone]")
{
  RedisCacheOptions o;
  o.url = "redis://127.0.0.1:" + std::to_string(free_port());
  o.timeout_ms = 200;
  o.retry_after_ms = 300;
  RedisCache cache(o);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 1000; ++i) {
    CHECK_FALSE(cache.get(order_cache_key("a")));
    cache.put(order_cache_key("a"), "A");
  }
  cache.invalidate_batch({order_cache_key("a")}, k_order_list_prefix);
  cache.invalidate_prefix("other:");
  CHECK(cache.keys().empty());
  CHECK(cache.clear() == 0);
  auto s = cache.stats();
  CHECK(elapsed_ms(t0) < 250); // one refused connect, then the back-off answers at once
  CHECK(s.backend == "redis");
  CHECK(s.misses == 1000);
  CHECK(s.hits == 0);
  CHECK(s.errors == 2000 + 5);
  CHECK(cache.last_error().find("127.0.0.1") != std::string::npos);
  // After the back-off it tries again (and fails again).
  std::this_thread::sleep_for(std::chrono::milliseconds(350));
  CHECK_FALSE(cache.get("k"));
  CHECK(cache.last_error().find("cannot connect") != std::string::npos);
}

TEST_CASE("RedisCache: a bad URL counts errors and never connects", "[redis]")
{
  RedisCacheOptions o;
  o.url = "redis://host:notaport";
  RedisCache cache(o);
  CHECK_FALSE(cache.get("k"));
  cache.put("k", "v");
  CHECK(cache.stats().errors == 3);
  CHECK(cache.last_error().find("cache.url") != std::string::npos);
}

TEST_CASE("RedisCache: an outage of its own server, and the return", "[redis][alone]")
{
  OwnRedisServer server;
  RedisCacheOptions o;
  o.url = server.url();
  o.timeout_ms = 200;
  o.retry_after_ms = 200;
  RedisCache cache(o);
  cache.put("k", "v");
  REQUIRE(cache.get("k"));

  server.stop();
  const auto t0 = std::chrono::steady_clock::now();
  int64_t misses = 0;
  for (int i = 0; i < 200; ++i) misses += cache.get("k") ? 0 : 1;
  cache.put("k", "v");
  CHECK(misses == 200);
  CHECK(elapsed_ms(t0) < 200);
  CHECK(cache.stats().errors >= 201);

  server.start(); // empty: no persistence
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  cache.put("k", "v2");
  CHECK(cache.get("k") == std::optional<std::string>("v2"));
  auto s = cache.stats();
  CHECK(s.hits == 2); // the new server has this process's counts, kept through the outage
  CHECK(s.errors >= 201);
}

TEST_CASE("RedisCache: an invalidation that failed is sent first when Redis answers again",
          "[redis][alone]")
{
  // A Redis that comes back with its data (a network cut, a pause, a restart from its dump)
  // must not serve an order the handler changed while it was away.
  OwnRedisServer server;
  RedisCacheOptions o;
  o.url = server.url();
  o.timeout_ms = 100;
  o.retry_after_ms = 100;
  RedisCache cache(o);
  cache.put(order_cache_key("a"), "old A");
  cache.put(list_key("status=&limit=50&offset=0"), "[old A]");
  RawRedis raw(server.url());
  raw.cmd({"CLIENT", "PAUSE", "600", "ALL"});
  cache.invalidate_batch({order_cache_key("a")}, k_order_list_prefix); // times out
  CHECK(cache.last_error().find("no answer within 100 ms") != std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  CHECK_FALSE(cache.get(order_cache_key("a")));
  CHECK_FALSE(cache.get(list_key("status=&limit=50&offset=0")));
  CHECK(cache.keys().empty());
}
