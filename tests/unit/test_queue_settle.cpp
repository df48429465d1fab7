// Queue::settle: work that commits together with the messages it settles.
#include <catch2/catch.hpp>

#include "core/queue/queue.hpp"
#include "core/sqlite/sqlite.hpp"
#include "unit/queue_test_util.hpp"
#include "unit/temp_dir.hpp"

using namespace acmo;
using acmo::test::db_of;
using acmo::test::must;
using acmo::test::receipts_of;
using acmo::test::must_fail;
using acmo::test::open_queue;
using acmo::test::TempDir;

namespace {

int64_t count_rows(sqlite::Database& db)
{
  return db.query_int("SELECT COUNT(*) FROM work_done");
}

} // namespace

TEST_CASE("Queue settle: the work and the deletions commit together", "[queue][settle]")
{
  TempDir dir;
  ManualClock clock;
  auto q = open_queue(dir.file("acmo.db"), {}, clock);
  for (int i = 0; i < 3; ++i) must(q->send(SendRequest{"m" + std::to_string(i), "g", ""}));
  auto got = must(q->receive(10));
  REQUIRE(got.size() == 3);
  int64_t rows_seen = -1;
  must(q->settle(receipts_of(got), [&](QueueTransaction& txn) -> Expected<std::vector<Disposition>> {
    auto& db = db_of(txn);
    db.exec("CREATE TABLE IF NOT EXISTS work_done(body TEXT)");
    for (const auto& m : got) {
      db.prepare("INSERT INTO work_done(body) VALUES (?1)")->bind(1, m.body).run();
    }
    rows_seen = count_rows(db);
    return std::vector<Disposition>(got.size());
  }));
  CHECK(rows_seen == 3);
  auto s = must(q->stats());
  CHECK(s.visible + s.in_flight + s.delayed == 0);
  CHECK(s.deleted == 3);
}

TEST_CASE("Queue settle: failed work is rolled back and the messages stay in flight",
          "[queue][settle]")
{
  TempDir dir;
  ManualClock clock;
  auto q = open_queue(dir.file("acmo.db"), {}, clock);
  must(q->send(SendRequest{"only", "g", ""}));
  auto got = must(q->receive(10));
  REQUIRE(got.size() == 1);
  auto error = must_fail(q->settle(receipts_of(got), [&](QueueTransaction& txn) -> Expected<std::vector<Disposition>> {
    auto& db = db_of(txn);
    db.exec("CREATE TABLE work_done(body TEXT)");
    db.exec("INSERT INTO work_done VALUES ('half')");
    return make_error(Errc::unavailable, "the store is down");
  }));
  CHECK(error.code == Errc::unavailable);
  CHECK(must(q->stats()).in_flight == 1);
  // The table created by the failed work is gone with it, and the receipt still works.
  bool table_exists = true;
  must(q->settle(receipts_of(got), [&](QueueTransaction& txn) -> Expected<std::vector<Disposition>> {
    auto& db = db_of(txn);
    table_exists = db.query_int("SELECT COUNT(*) FROM sqlite_master WHERE name = 'work_done'") > 0;
    return std::vector<Disposition>(1);
  }));
  CHECK_FALSE(table_exists);
  CHECK(must(q->stats()).in_flight == 0);
}

TEST_CASE("Queue settle: a stale receipt runs no work", "[queue][settle]")
{
  TempDir dir;
  ManualClock clock;
  auto q = open_queue(dir.file("acmo.db"), {}, clock);
  must(q->send(SendRequest{"m", "g", ""}));
  auto first = must(q->receive(1, 1000));
  clock.advance_ms(1001);
  auto second = must(q->receive(1));
  REQUIRE(second.size() == 1);
  bool ran = false;
  auto error = must_fail(q->settle(receipts_of(first), [&](QueueTransaction&) -> Expected<std::vector<Disposition>> {
    ran = true;
    return std::vector<Disposition>(1);
  }));
  CHECK(error.code == Errc::stale);
  CHECK_FALSE(ran);
  CHECK(must(q->stats()).in_flight == 1);
}

TEST_CASE("Queue settle: a permanent failure goes to the DLQ with its reason, the rest is deleted",
          "[queue][settle]")
{
  TempDir dir;
  ManualClock clock;
  auto q = open_queue(dir.file("acmo.db"), {}, clock);
  must(q->send(SendRequest{"good", "g", ""}));
  must(q->send(SendRequest{"bad", "g", ""}));
  auto got = must(q->receive(10));
  REQUIRE(got.size() == 2);
  must(q->settle(receipts_of(got), [&](QueueTransaction&) -> Expected<std::vector<Disposition>> {
    return std::vector<Disposition>{{}, {true, "order ord_1 is delivered; it cannot become pending", "ord_1"}};
  }));
  auto dead = must(q->dlq_list());
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].body == "bad");
  CHECK(dead[0].dead_reason == "order ord_1 is delivered; it cannot become pending");
  auto s = must(q->stats());
  CHECK(s.visible + s.in_flight == 0);
  CHECK(s.deleted == 1);
}

TEST_CASE("Queue settle: work that throws a SQLite error is rolled back like failed work",
          "[queue][settle]")
{
  TempDir dir;
  ManualClock clock;
  auto q = open_queue(dir.file("acmo.db"), {}, clock);
  must(q->send(SendRequest{"only", "g", ""}));
  auto got = must(q->receive(10));
  REQUIRE(got.size() == 1);
  auto error = must_fail(q->settle(receipts_of(got), [&](QueueTransaction& txn) -> Expected<std::vector<Disposition>> {
    auto& db = db_of(txn);
    db.exec("CREATE TABLE work_done(body TEXT)");
    db.exec("INSERT INTO no_such_table VALUES (1)");
    return std::vector<Disposition>(1);
  }));
  CHECK(error.message.find("no_such_table") != std::string::npos);
  CHECK(must(q->stats()).in_flight == 1);
  bool table_exists = true;
  must(q->settle(receipts_of(got), [&](QueueTransaction& txn) -> Expected<std::vector<Disposition>> {
    auto& db = db_of(txn);
    table_exists = db.query_int("SELECT COUNT(*) FROM sqlite_master WHERE name = 'work_done'") > 0;
    return std::vector<Disposition>(1);
  }));
  CHECK_FALSE(table_exists);
  CHECK(must(q->stats()).deleted == 1);
}
