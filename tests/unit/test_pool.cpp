// The bounded connection pool of the PostgreSQL store and the Redis cache, over a fake
// connection that counts how many are alive.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "core/util/pool.hpp"

using namespace acmo;

namespace {

// What the fake connections have done: every one opened and still alive, the most alive at
// once, and whether the next ones open or fail.
struct Server {
  std::atomic<int> opened{0};
  std::atomic<int> alive{0};
  std::atomic<int> most{0};
  std::atomic<bool> refuse{false};
};

class FakeConn
{
public:
  FakeConn(Server& server, int id) : m_server(&server), m_id(id)
  {
    const int now = ++server.alive;
    for (int most = server.most; now > most && !server.most.compare_exchange_weak(most, now);) {
    }
  }
  ~FakeConn() { --m_server->alive; }
  FakeConn(const FakeConn&) = delete;
  FakeConn& operator=(const FakeConn&) = delete;
  int id() const { return m_id; }
  bool broken = false; // as the server closed it

private:
  Server* m_server;
  int m_id;
};

using Conn = std::unique_ptr<FakeConn>;

Pool<Conn> make_pool(Server& server, int size, int64_t wait_ms)
{
  return Pool<Conn>(
    PoolOptions{size, wait_ms, Error(Errc::busy, "all busy")},
    [&server]() -> Expected<Conn> {
      if (server.refuse) return make_error(Errc::unavailable, "refused");
      return std::make_unique<FakeConn>(server, ++server.opened);
    },
    [](Conn& c) { return !c->broken; });
}

int64_t ms_since(std::chrono::steady_clock::time_point t0)
{
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now()
                                                                - t0)
    .count();
}

} // namespace

TEST_CASE("Pool: a connection given back is reused; a new one opens only when none is idle",
          "[pool]")
{
  Server server;
  auto pool = make_pool(server, 2, 1'000);
  {
    auto a = pool.acquire();
    REQUIRE(a);
    CHECK_FALSE(a->reused());
    CHECK(a->conn()->id() == 1);
  }
  CHECK(pool.open_connections() == 1);
  auto a = pool.acquire();
  REQUIRE(a);
  CHECK(a->reused());
  CHECK(a->conn()->id() == 1);
  auto b = pool.acquire();
  REQUIRE(b);
  CHECK_FALSE(b->reused());
  CHECK(b->conn()->id() == 2);
  CHECK(pool.open_connections() == 2);
}

TEST_CASE("Pool: many threads never have more than `size` connections alive", "[pool]")
{
  Server server;
  auto pool = make_pool(server, 3, 5'000);
  std::atomic<int> in_use{0};
  std::atomic<int> most_in_use{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        auto lease = pool.acquire();
        if (!lease) {
          ++failures;
          continue;
        }
        const int now = ++in_use;
        for (int most = most_in_use; now > most && !most_in_use.compare_exchange_weak(most, now);) {
        }
        if ((i + t) % 3 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
        // Now and then the connection breaks in use, one way or the other.
        if (i % 50 == t) lease->discard();
        if (i % 70 == t) lease->conn()->broken = true;
        --in_use;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(most_in_use <= 3);
  CHECK(server.most <= 3);
  CHECK(server.opened > 3); // broken ones were replaced
  CHECK(pool.open_connections() == server.alive);
  CHECK(pool.open_connections() <= 3);
}

TEST_CASE("Pool: a caller waiting for a connection gets the one given back", "[pool]")
{
  Server server;
  auto pool = make_pool(server, 1, 5'000);
  auto held = pool.acquire();
  REQUIRE(held);
  const int id = held->conn()->id();
  std::atomic<bool> got{false};
  int got_id = 0;
  std::thread waiter([&] {
    auto lease = pool.acquire(); // no REQUIRE: Catch2's assertions are for the main thread
    if (lease) got_id = lease->conn()->id();
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_FALSE(got);
  const auto t0 = std::chrono::steady_clock::now();
  { auto giving_back = std::move(*held); }
  waiter.join();
  CHECK(ms_since(t0) < 1'000);
  CHECK(got_id == id);
  CHECK(server.opened == 1);
}

TEST_CASE("Pool: a caller waits up to wait_ms when every connection stays in use", "[pool]")
{
  Server server;
  auto pool = make_pool(server, 2, 200);
  auto a = pool.acquire();
  auto b = pool.acquire();
  REQUIRE(a);
  REQUIRE(b);
  const auto t0 = std::chrono::steady_clock::now();
  auto c = pool.acquire();
  const auto waited = ms_since(t0);
  REQUIRE_FALSE(c);
  CHECK(c.error().code == Errc::busy);
  CHECK(c.error().message == "all busy");
  CHECK(waited >= 190);
  CHECK(waited < 2'000);
  CHECK(server.opened == 2);
}

TEST_CASE("Pool: a connection that failed to open frees its place, and says why", "[pool]")
{
  Server server;
  auto pool = make_pool(server, 1, 5'000);
  server.refuse = true;
  const auto t0 = std::chrono::steady_clock::now();
  auto refused = pool.acquire();
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::unavailable);
  CHECK(refused.error().message == "refused");
  CHECK(ms_since(t0) < 1'000); // no wait: the error is the connect's
  CHECK(pool.open_connections() == 0);
  server.refuse = false;
  auto lease = pool.acquire();
  REQUIRE(lease);
  CHECK(pool.open_connections() == 1);
}

TEST_CASE("Pool: a broken connection is closed, not given back, and a new one replaces it",
          "[pool]")
{
  Server server;
  auto pool = make_pool(server, 1, 1'000);
  SECTION("discarded by the caller")
  {
    {
      auto lease = pool.acquire();
      REQUIRE(lease);
      lease->discard();
    }
  }
  SECTION("refused by `usable`")
  {
    {
      auto lease = pool.acquire();
      REQUIRE(lease);
      lease->conn()->broken = true;
    }
  }
  CHECK(server.alive == 0);
  CHECK(pool.open_connections() == 0);
  auto lease = pool.acquire();
  REQUIRE(lease);
  CHECK_FALSE(lease->reused());
  CHECK(lease->conn()->id() == 2);
}

TEST_CASE("Pool: discard_idle and discard_all close the idle connections; discard_all also "
          "those in use, when they come back",
          "[pool]")
{
  Server server;
  auto pool = make_pool(server, 3, 1'000);
  {
    auto a = pool.acquire();
    auto b = pool.acquire();
  }
  auto in_use = pool.acquire();
  REQUIRE(in_use);
  const int id = in_use->conn()->id();
  CHECK(server.alive == 2);
  SECTION("discard_idle")
  {
    pool.discard_idle();
    CHECK(server.alive == 1);
    CHECK(pool.open_connections() == 1);
    { auto giving_back = std::move(*in_use); }
    auto again = pool.acquire();
    REQUIRE(again);
    CHECK(again->reused());
    CHECK(again->conn()->id() == id);
  }
  SECTION("discard_all")
  {
    pool.discard_all();
    CHECK(server.alive == 1);
    { auto giving_back = std::move(*in_use); }
    CHECK(server.alive == 0);
    CHECK(pool.open_connections() == 0);
    auto fresh = pool.acquire();
    REQUIRE(fresh);
    CHECK_FALSE(fresh->reused());
    { auto giving_back = std::move(*fresh); }
    CHECK(pool.open_connections() == 1); // one opened after discard_all is kept
  }
}

TEST_CASE("Pool: its end closes every idle connection", "[pool]")
{
  Server server;
  {
    auto pool = make_pool(server, 4, 1'000);
    std::vector<Pool<Conn>::Lease> leases;
    for (int i = 0; i < 4; ++i) leases.push_back(std::move(*pool.acquire()));
    CHECK(server.alive == 4);
    leases.pop_back();
    leases.back().discard();
    leases.clear();
    CHECK(server.alive == 3);
    CHECK(pool.open_connections() == 3);
  }
  CHECK(server.alive == 0);
  CHECK(server.opened == 4);
}
