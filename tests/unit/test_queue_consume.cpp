// Queue::consume: take messages, run work on them and delete them in one transaction.
#include <chrono>
#include <thread>

#include <catch2/catch.hpp>

#include "core/queue/queue.hpp"
#include "core/sqlite/sqlite.hpp"
#include "unit/queue_test_util.hpp"
#include "unit/temp_dir.hpp"

using namespace acmo;
using acmo::test::db_of;
using acmo::test::must;
using acmo::test::must_fail;
using acmo::test::open_queue;
using acmo::test::TempDir;

namespace {

std::vector<std::string> bodies(const std::vector<Message>& messages)
{
  std::vector<std::string> out;
  for (const auto& m : messages) out.push_back(m.body);
  return out;
}

// Work that records each body in the table work_done and keeps every message.
ConsumeWork record_all()
{
  return [](QueueTransaction& txn, const std::vector<Message>& got)
           -> Expected<std::vector<Disposition>> {
    auto& db = db_of(txn);
    db.exec("CREATE TABLE IF NOT EXISTS work_done(body TEXT)");
    for (const auto& m : got) {
      db.prepare("INSERT INTO work_done(body) VALUES (?1)")->bind(1, m.body).run();
    }
    return std::vector<Disposition>(got.size());
  };
}

} // namespace

TEST_CASE("Queue consume: the work and the deletions commit together, in group order",
          "[queue][consume]")
{
  TempDir dir;
  ManualClock clock;
  auto q = open_queue(dir.file("acmo.db"), {}, clock);
  for (int i = 0; i < 5; ++i) must(q->send(SendRequest{"m" + std::to_string(i), "g", ""}));
  auto got = must(q->consume(3, 0, record_all()));
  CHECK(bodies(got) == std::vector<std::string>{"m0", "m1", "m2"});
  for (const auto& m : got) CHECK(m.receipt.empty());
  auto s = must(q->stats());
  CHECK(s.visible == 2);
  CHECK(s.in_flight == 0);
  CHECK(s.received == 3);
  CHECK(s.deleted == 3);
  got = must(q->consume(10, 0, record_all()));
  CHECK(bodies(got) == std::vector<std::string>{"m3", "m4"});
  CHECK(must(q->stats()).visible == 0);
  // Nothing left: no work runs.
  bool ran = false;
  got = must(q->consume(10, 0, [&](QueueTransaction&, const std::vector<Message>&)
                                  -> Expected<std::vector<Disposition>> {
    ran = true;
    return std::vector<Disposition>{};
  }));
  CHECK(got.empty());
  CHECK_FALSE(ran);
}

TEST_CASE("Queue consume: a given dedup id comes with the message; a content-based one is not "
          "computed",
          "[queue][consume]")
{
  TempDir dir;
  ManualClock clock;
  auto q = open_queue(dir.file("acmo.db"), {}, clock);
  must(q->send(SendRequest{"given", "g", "dedup-1"}));
  must(q->send(SendRequest{"content", "g", ""}));
  auto got = must(q->consume(10, 0, record_all()));
  REQUIRE(got.size() == 2);
  CHECK(got[0].dedup_id == "dedup-1");
  CHECK(got[1].dedup_id.empty());
  // A receive still shows the content-based id.
  must(q->send(SendRequest{"content 2", "g", ""}));
  auto received = must(q->receive(10, std::nullopt, 0));
  REQUIRE(received.size() == 1);
  CHECK(received[0].dedup_id.size() == 64);
}

TEST_CASE("Queue consume: a group with a message in flight delivers nothing; others go on",
          "[queue][consume]")
{
  TempDir dir;
  ManualClock clock;
  auto q = open_queue(dir.file("acmo.db"), {}, clock);
  must(q->send(SendRequest{"a1", "a", ""}));
  must(q->send(SendRequest{"a2", "a", ""}));
  must(q->send(SendRequest{"b1", "b", ""}));
  auto taken = must(q->receive(1));
  REQUIRE(bodies(taken) == std::vector<std::string>{"a1"});
  auto got = must(q->consume(10, 0, record_all()));
  CHECK(bodies(got) == std::vector<std::string>{"b1"});
  // a1's visibility runs out: the group delivers from its front again, a1 on its own, since
  // its delivery ended in neither a deletion nor a release (it may have killed its receiver).
  clock.advance_ms(q->options().visibility_timeout_ms + 1);
  got = must(q->consume(10, 0, record_all()));
  CHECK(bodies(got) == std::vector<std::string>{"a1"});
  got = must(q->consume(10, 0, record_all()));
  CHECK(bodies(got) == std::vector<std::string>{"a2"});
  // The first receiver's handle is gone with its message.
  CHECK(must_fail(q->remove(taken[0].receipt)).code == Errc::not_found);
}

TEST_CASE("Queue consume: failed work changes nothing and leaves the messages visible",
          "[queue][consume]")
{
  TempDir dir;
  ManualClock clock;
  auto q = open_queue(dir.file("acmo.db"), {}, clock);
  must(q->send(SendRequest{"m0", "g", ""}));
  must(q->send(SendRequest{"m1", "g", ""}));

  SECTION("an error returned")
  {
    auto error = must_fail(q->consume(10, 0, [](QueueTransaction& txn, const std::vector<Message>&)
                                                -> Expected<std::vector<Disposition>> {
      auto& db = db_of(txn);
      db.exec("CREATE TABLE work_done(body TEXT)");
      return make_error(Errc::unavailable, "the store is down");
    }));
    CHECK(error.code == Errc::unavailable);
  }
  SECTION("a SQLite error thrown")
  {
    auto error = must_fail(q->consume(10, 0, [](QueueTransaction& txn, const std::vector<Message>&)
                                                -> Expected<std::vector<Disposition>> {
      auto& db = db_of(txn);
      db.exec("CREATE TABLE work_done(body TEXT)");
      db.exec("INSERT INTO no_such_table VALUES (1)");
      return std::vector<Disposition>{};
    }));
    CHECK(error.message.find("no_such_table") != std::string::npos);
  }
  SECTION("a disposition count that does not match")
  {
    auto error = must_fail(q->consume(10, 0, [](QueueTransaction& txn, const std::vector<Message>&)
                                                -> Expected<std::vector<Disposition>> {
      auto& db = db_of(txn);
      db.exec("CREATE TABLE work_done(body TEXT)");
      return std::vector<Disposition>(1);
    }));
    CHECK(error.code == Errc::internal);
  }
  auto s = must(q->stats());
  CHECK(s.visible == 2);
  CHECK(s.in_flight == 0);
  CHECK(s.received == 0);
  CHECK(s.deleted == 0);
  // The work's table went with it; the messages are there for the next try, in order.
  auto got = must(q->consume(10, 0, [](QueueTransaction& txn, const std::vector<Message>& taken)
                                        -> Expected<std::vector<Disposition>> {
    auto& db = db_of(txn);
    CHECK(db.query_int("SELECT COUNT(*) FROM sqlite_master WHERE name = 'work_done'") == 0);
    return std::vector<Disposition>(taken.size());
  }));
  CHECK(bodies(got) == std::vector<std::string>{"m0", "m1"});
}

TEST_CASE("Queue consume: a permanent failure goes to the DLQ with its reason", "[queue][consume]")
{
  TempDir dir;
  ManualClock clock;
  auto q = open_queue(dir.file("acmo.db"), {}, clock);
  must(q->send(SendRequest{"good", "g", ""}));
  must(q->send(SendRequest{"bad", "g", ""}));
  must(q->consume(10, 0, [](QueueTransaction&, const std::vector<Message>&)
                            -> Expected<std::vector<Disposition>> {
    return std::vector<Disposition>{{}, {true, "order ord_1 does not exist", "ord_1"}};
  }));
  auto dead = must(q->dlq_list());
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].body == "bad");
  CHECK(dead[0].dead_reason == "order ord_1 does not exist");
  CHECK(dead[0].receive_count == 1);
  CHECK(dead[0].failures == 1);
  auto s = must(q->stats());
  CHECK(s.visible + s.in_flight == 0);
  CHECK(s.deleted == 1);
  CHECK(s.dead_lettered_total == 1);
}

TEST_CASE("Queue consume: a long poll takes a message sent while it waits", "[queue][consume]")
{
  TempDir dir;
  auto q = open_queue(dir.file("acmo.db"));
  std::thread sender([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    must(q->send(SendRequest{"late", "g", ""}));
  });
  const auto start = std::chrono::steady_clock::now();
  auto got = must(q->consume(10, 5'000, record_all()));
  const auto waited = std::chrono::steady_clock::now() - start;
  sender.join();
  CHECK(bodies(got) == std::vector<std::string>{"late"});
  CHECK(waited < std::chrono::seconds(4));
  CHECK(must_fail(q->consume(0, 0, record_all())).code == Errc::invalid_input);
  CHECK(must_fail(q->consume(10, 20'001, record_all())).code == Errc::invalid_input);
}
