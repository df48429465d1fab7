#include <catch2/catch.hpp>

#include "core/cache/cache.hpp"

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

TEST_CASE("MemoryCache: bounded in bytes as well as entries", "[cache]")
{
  // Lists of a thousand orders are megabytes each: distinct queries must not grow the process
  // without bound however few entries they are.
  ManualClock clock;
  const size_t max_bytes = 1 << 20;
  MemoryCache cache(10'000, 60'000, clock, max_bytes);
  const std::string big(100'000, 'x');
  for (int i = 0; i < 100; ++i) cache.put("orders:offset=" + std::to_string(i), big);
  auto keys = cache.keys();
  CHECK(keys.size() <= max_bytes / big.size());
  CHECK(keys.size() >= max_bytes / big.size() - 1);
  // The most recent stay, the oldest went.
  CHECK(cache.get("orders:offset=99"));
  CHECK_FALSE(cache.get("orders:offset=0"));
  // A value that could never fit is not kept, and pushes nothing out.
  const auto before = cache.keys().size();
  cache.put("huge", std::string(2 << 20, 'y'));
  CHECK_FALSE(cache.get("huge"));
  CHECK(cache.keys().size() == before);
  // Replacing a value accounts for the new size, not the sum of both.
  for (int i = 0; i < 50; ++i) cache.put("same", big);
  CHECK(cache.get("same"));
}
