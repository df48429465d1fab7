#include <cstdlib>

#include <catch2/catch.hpp>

#include "core/queue/postgres/server_time.hpp"
#include "core/util/clock.hpp"

using acmo::ServerTime;
using acmo::SystemClock;

namespace {

constexpr int64_t k_hour_us = 3'600'000'000;

// A sample of a server whose clock is `hours` ahead of this host's, asked `from_us` after now
// (of the monotonic clock) with a round trip of `rtt_us`.
void sample(ServerTime& t, int64_t hours, int64_t from_us, int64_t rtt_us)
{
  const int64_t mono = ServerTime::monotonic_us();
  const int64_t wall = SystemClock::instance().now_ms() * 1000;
  const int64_t sent = mono + from_us;
  t.add(wall + hours * k_hour_us + from_us + rtt_us / 2, sent, sent + rtt_us);
}

// How many hours ahead of this host's clock `t` is, to the nearest.
int64_t hours_ahead(const ServerTime& t)
{
  const int64_t ms = t.now_ms() - SystemClock::instance().now_ms();
  return (ms + (ms >= 0 ? 1 : -1) * 1'800'000) / 3'600'000;
}

} // namespace

TEST_CASE("ServerTime is this host's clock until the server is asked, then the server's")
{
  ServerTime t;
  CHECK(std::abs(t.now_ms() - SystemClock::instance().now_ms()) < 1'000);
  sample(t, 1, 0, 200);
  CHECK(hours_ahead(t) == 1);
  sample(t, -2, 0, 300);
  CHECK(hours_ahead(t) == -2);
}

TEST_CASE("ServerTime drops a sample whose round trip was far slower, unless its time is old")
{
  ServerTime t;
  sample(t, 1, 0, 200);
  // Over twice the round trip kept, plus a millisecond: its middle may be far off. Dropped.
  sample(t, 5, 0, 2 * 200 + ServerTime::k_slack_us + 1);
  CHECK(hours_ahead(t) == 1);
  // Within it: kept.
  sample(t, 2, 0, 2 * 200 + ServerTime::k_slack_us);
  CHECK(hours_ahead(t) == 2);
  // A slow one once the time kept is stale: better than an old time.
  sample(t, 3, ServerTime::k_stale_us, 100'000);
  CHECK(hours_ahead(t) == 3);
  // A round trip that ends before it starts is no sample.
  t.add(0, 10, 5);
  CHECK(hours_ahead(t) == 3);
}

TEST_CASE("ServerTime asks the server once when it is due")
{
  ServerTime t;
  CHECK(t.claim());
  CHECK_FALSE(t.claim());
}
