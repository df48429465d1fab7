#include <catch2/catch.hpp>

#include "core/cache.hpp"

using namespace acmo;

TEST_CASE("MemoryCache: a put is read back and counted as a hit; an unknown key is a miss",
          "[cache]")
{
  ManualClock clock;
  MemoryCache cache(10, 60'000, clock);
  CHECK_FALSE(cache.get("order:a"));
  cache.put("order:a", "{\"id\":\"a\"}");
  CHECK(cache.get("order:a") == std::optional<std::string>("{\"id\":\"a\"}"));
  auto s = cache.stats();
  CHECK(s.backend == "memory");
  CHECK(s.hits == 1);
  CHECK(s.misses == 1);
  CHECK(s.keys == 1);
  CHECK(s.hit_rate() == Approx(0.5));
}

TEST_CASE("MemoryCache: entries expire after the TTL", "[cache]")
{
  ManualClock clock;
  MemoryCache cache(10, 1000, clock);
  cache.put("k", "v");
  clock.advance_ms(999);
  CHECK(cache.get("k"));
  clock.advance_ms(1);
  CHECK_FALSE(cache.get("k"));
  CHECK(cache.stats().keys == 0);
}

TEST_CASE("MemoryCache: the least recently used entry goes first when full", "[cache]")
{
  ManualClock clock;
  MemoryCache cache(2, 60'000, clock);
  cache.put("a", "1");
  cache.put("b", "2");
  CHECK(cache.get("a")); // a is now the most recently used
  cache.put("c", "3");   // evicts b
  CHECK(cache.get("a"));
  CHECK_FALSE(cache.get("b"));
  CHECK(cache.get("c"));
  CHECK(cache.stats().keys == 2);
}

TEST_CASE("MemoryCache: invalidation of one key, of the lists, and clear", "[cache]")
{
  ManualClock clock;
  MemoryCache cache(100, 60'000, clock);
  cache.put(order_cache_key("a"), "A");
  cache.put(order_cache_key("b"), "B");
  cache.put(std::string(k_order_list_prefix) + "status=&limit=50&offset=0", "[A,B]");
  cache.put(std::string(k_order_list_prefix) + "status=pending&limit=50&offset=0", "[A]");
  cache.invalidate(order_cache_key("a"));
  CHECK_FALSE(cache.get(order_cache_key("a")));
  CHECK(cache.get(order_cache_key("b")));
  cache.invalidate_prefix(k_order_list_prefix);
  auto keys = cache.keys();
  CHECK(keys == std::vector<std::string>{order_cache_key("b")});
  CHECK(cache.clear() == 1);
  CHECK(cache.keys().empty());
}
