// What only the embedded queue has: its file (reopened, shared by Queue objects, foreign or
// newer files refused), its options checked at open, its long polls and threads. The queue's
// semantics (docs/queue.md) are in test_queue_contract.cpp, run on both back-ends. Time is a
// ManualClock except in the long-poll and thread tests, so no test sleeps for a timeout.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/core.h>
#include <sqlite3.h>

#include "core/queue/sqlite/sqlite_queue.hpp"
#include "core/util/clock.hpp"
#include "queue_test_util.hpp"
#include "temp_dir.hpp"

using namespace acmo;
using acmo::test::must;
using acmo::test::open_queue;
using acmo::test::TempDir;

namespace {

constexpr int64_t k_second = 1000;
constexpr int64_t k_minute = 60 * k_second;

// A queue in a fresh temp dir on a clock the test moves by hand.
struct QueueFixture {
  TempDir dir;
  ManualClock clock;
  std::string path = dir.file("acmo.db");
  QueueOptions options;
  std::unique_ptr<Queue> queue;

  explicit QueueFixture(QueueOptions o = {}) : options(std::move(o)) { reopen(); }

  // Close the Queue and open the file again, as a restarted process would.
  void reopen()
  {
    queue.reset();
    queue = open_queue(path, options, clock);
  }

  SendResult send(const std::string& body, const std::string& group = "orders",
                  const std::string& dedup = {})
  {
    return must(queue->send(SendRequest{body, group, dedup}));
  }

  std::vector<Message> receive(int max = 10, std::optional<int64_t> visibility_ms = {})
  {
    return must(queue->receive(max, visibility_ms));
  }

  QueueStats stats() { return must(queue->stats()); }
};

std::vector<std::string> bodies_of(const std::vector<Message>& messages)
{
  std::vector<std::string> out;
  for (const auto& m : messages) out.push_back(m.body);
  return out;
}

using Bodies = std::vector<std::string>;

// Write an SQLite file that belongs to some other program.
void write_foreign_sqlite(const std::string& path, const std::string& sql)
{
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  INFO((err ? err : ""));
  sqlite3_free(err);
  sqlite3_close(db);
  REQUIRE(rc == SQLITE_OK);
}

// The names of the tables in an SQLite file.
std::set<std::string> table_names(const std::string& path)
{
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "SELECT name FROM sqlite_master WHERE type = 'table'", -1, &stmt,
                             nullptr)
          == SQLITE_OK);
  std::set<std::string> names;
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    names.insert(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)));
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return names;
}

// Plain stdio: GCC's -Wnull-dereference misfires inside <streambuf> for istreambuf_iterator.
std::string read_file(const std::string& path)
{
  std::string content;
  if (std::FILE* file = std::fopen(path.c_str(), "rb")) {
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, file)) > 0;) content.append(buf, n);
    std::fclose(file);
  }
  return content;
}

int64_t elapsed_ms(std::chrono::steady_clock::time_point since)
{
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now()
                                                               - since)
    .count();
}

} // namespace

// --- deduplication -----------------------------------------------------------------------------

TEST_CASE("Queue: the dedup history survives close and reopen", "[queue]")
{
  QueueFixture f;
  auto original = f.send("body", "A", "persisted");
  auto by_content = f.send("content only");
  f.clock.advance_ms(k_minute);
  f.reopen();
  auto dup = f.send("body", "A", "persisted");
  CHECK(dup.duplicate);
  CHECK(dup.message_id == original.message_id);
  CHECK(dup.seq == original.seq);
  CHECK(f.send("content only").duplicate);
  CHECK(f.stats().dedup_entries == 2);
  CHECK(f.stats().visible == 2);
  (void)by_content;
}

TEST_CASE("Queue: queues in one file keep separate dedup histories", "[queue]")
{
  TempDir dir;
  ManualClock clock;
  QueueOptions a;
  a.name = "alpha";
  a.dlq_name = "alpha-dlq";
  QueueOptions b;
  b.name = "beta";
  b.dlq_name = "beta-dlq";
  auto qa = open_queue(dir.file("acmo.db"), a, clock);
  auto qb = open_queue(dir.file("acmo.db"), b, clock);
  CHECK_FALSE(must(qa->send(SendRequest{"m", "g", "same"})).duplicate);
  CHECK_FALSE(must(qb->send(SendRequest{"m", "g", "same"})).duplicate);
  CHECK(must(qa->send(SendRequest{"m", "g", "same"})).duplicate);
  CHECK(must(qa->receive(10)).size() == 1);
  CHECK(must(qb->receive(10)).size() == 1);
  // A purge of one queue leaves the other's messages and history alone.
  must(qb->send(SendRequest{"m2", "g", "other"}));
  CHECK(must(qa->purge()) == 1);
  CHECK(must(qb->stats()).in_flight == 1);
  CHECK(must(qb->stats()).visible == 1);
  CHECK(must(qb->send(SendRequest{"m", "g", "same"})).duplicate);
}

TEST_CASE("Queue: dedup holds across Queue objects on one file as across processes", "[queue]")
{
  TempDir dir;
  ManualClock clock;
  auto qa = open_queue(dir.file("acmo.db"), {}, clock);
  auto qb = open_queue(dir.file("acmo.db"), {}, clock);
  auto original = must(qa->send(SendRequest{"a", "g", "shared-1"}));
  auto dup = must(qb->send(SendRequest{"b", "g", "shared-1"}));
  CHECK(dup.duplicate);
  CHECK(dup.message_id == original.message_id);
  CHECK(dup.seq == original.seq);
  CHECK(must(qa->send(SendRequest{"content", "g", ""})).duplicate == false);
  CHECK(must(qb->send(SendRequest{"content", "g", ""})).duplicate);

  SECTION("after one of them purged")
  {
    CHECK(must(qb->purge()) == 2);
    CHECK_FALSE(must(qa->send(SendRequest{"a", "g", "shared-1"})).duplicate);
    CHECK(must(qb->send(SendRequest{"a", "g", "shared-1"})).duplicate);
  }
  SECTION("after the whole history expired and was swept")
  {
    // Every entry is past the window; one object's sweep empties the history. What is sent
    // after that must still be seen by the other object.
    clock.advance_ms(5 * k_minute);
    CHECK(must(qb->sweep()).dedup_removed == 2);
    CHECK(must(qb->stats()).dedup_entries == 0);
    auto again = must(qb->send(SendRequest{"c", "g", "shared-2"}));
    CHECK_FALSE(again.duplicate);
    auto dup2 = must(qa->send(SendRequest{"d", "g", "shared-2"}));
    CHECK(dup2.duplicate);
    CHECK(dup2.message_id == again.message_id);
    CHECK(must(qa->stats()).visible == 3);
  }
}

// --- durability across restarts and foreign files ----------------------------------------------

TEST_CASE("Queue: messages and in-flight state survive closing and reopening the file",
          "[queue]")
{
  QueueFixture f;
  auto m1 = f.send("m1", "A");
  f.send("m2", "A");
  f.send("m3", "B");
  f.send("m4", "C");
  f.send("m5", "D");
  auto in_flight = f.receive(1).at(0);
  REQUIRE(in_flight.message_id == m1.message_id);
  auto delayed = f.receive(1).at(0); // m3
  must(f.queue->release(delayed.receipt, "later"));
  auto dead = f.receive(1).at(0); // m4
  must(f.queue->dead_letter(dead.receipt, "bad"));
  auto before = f.stats();

  f.reopen();
  auto after = f.stats();
  CHECK(after.visible == before.visible);
  CHECK(after.in_flight == 1);
  CHECK(after.delayed == 1);
  CHECK(after.dead_lettered == 1);
  CHECK(after.sent == 5);
  CHECK(after.received == 3);
  CHECK(after.retried == 1);

  // Group A is still blocked by m1, group B by m3's delay: only m5 is ready.
  CHECK(bodies_of(f.receive(10)) == Bodies{"m5"});
  // The handle issued before the restart still works.
  must(f.queue->remove(in_flight.receipt));
  CHECK(bodies_of(f.receive(10)) == Bodies{"m2"});
  f.clock.advance_ms(1 * k_second);
  auto again = f.receive(10);
  REQUIRE(bodies_of(again) == Bodies{"m3"});
  CHECK(again[0].failures == 1);
  CHECK(again[0].last_error == "later");
  CHECK(must(f.queue->dlq_list()).at(0).body == "m4");
}

TEST_CASE("Queue: a move marks the queue first; a move whose outcome is not known leaves it "
          "marked, frozen, and finished only by a run to the same place",
          "[queue]")
{
  QueueFixture f;
  f.send("m1", "A");
  f.send("dead", "D");
  auto got = f.receive(10);
  for (const auto& m : got) {
    if (m.body == "dead") must(f.queue->dead_letter(m.receipt, "bad"));
  }
  for (const auto& m : got) {
    if (m.body == "m1") must(f.queue->change_visibility(m.receipt, 0));
  }
  auto& queue = dynamic_cast<SqliteQueue&>(*f.queue);

  // A move that fails for sure (nothing reached PostgreSQL) leaves the queue as it was.
  auto refused = queue.move_out("pg one", [&](const QueueSnapshot&) -> Expected<MoveResult> {
    CHECK(must(queue.moved_to()) == "pg one"); // marked while the move runs
    return make_error(Errc::conflict, "already holds sequence number 1");
  });
  REQUIRE_FALSE(refused);
  CHECK(must(queue.moved_to()).empty());
  f.send("m2", "A");

  // One whose commit's answer was lost may have moved everything: the mark stays, and the
  // embedded queue takes no change PostgreSQL would not see.
  auto lost = queue.move_out("pg one", [&](const QueueSnapshot&) -> Expected<MoveResult> {
    Error e(Errc::unavailable, "the connection broke while a transaction committed");
    e.in_doubt = true;
    return Unexpected(e);
  });
  REQUIRE_FALSE(lost);
  CHECK(must(queue.moved_to()) == "pg one");
  CHECK(queue.send(SendRequest{"m3", "A", ""}).error().code == Errc::unavailable);
  CHECK_FALSE(queue.redrive());
  CHECK_FALSE(queue.purge(true));
  CHECK_FALSE(queue.purge(false));
  auto run = must(queue.begin_redrive(DlqFilter{}));
  CHECK_FALSE(queue.redrive_step(run, 10));
  CHECK_FALSE(queue.check_writable());
  CHECK(f.stats().visible == 2);
  CHECK(f.stats().dead_lettered == 1);
  // Nor is it moved somewhere else meanwhile.
  auto elsewhere = queue.move_out("pg two", [&](const QueueSnapshot&) -> Expected<MoveResult> {
    FAIL("a move to another place must not start");
    return MoveResult{};
  });
  REQUIRE_FALSE(elsewhere);
  CHECK(elsewhere.error().code == Errc::conflict);
  CHECK_THAT(elsewhere.error().message, Catch::Contains("was moved to pg one"));
  // A run to the same place finishes it; a definite failure of such a run keeps the mark too.
  auto failed_again = queue.move_out("pg one", [&](const QueueSnapshot&) -> Expected<MoveResult> {
    return make_error(Errc::unavailable, "PostgreSQL is not answering");
  });
  REQUIRE_FALSE(failed_again);
  CHECK(must(queue.moved_to()) == "pg one");
  auto done = queue.move_out("pg one", [&](const QueueSnapshot& s) -> Expected<MoveResult> {
    MoveResult r;
    must(s.each_page(false, 10, [&](const std::vector<Message>& page) -> Expected<void> {
      r.messages += static_cast<int64_t>(page.size());
      return {};
    }));
    return r;
  });
  REQUIRE(done);
  CHECK(done->messages == 2);
  CHECK(f.stats().visible == 0);
}

TEST_CASE("Queue: moving one queue of a data directory leaves the others working", "[queue]")
{
  QueueFixture f;
  QueueOptions other;
  other.name = "payments";
  other.dlq_name = "payments-dlq";
  auto payments = open_queue(f.path, other, f.clock);
  must(payments->send(SendRequest{"p1", "P", ""}));
  f.send("o1", "O");
  auto& queue = dynamic_cast<SqliteQueue&>(*f.queue);
  must(queue.move_out("pg", [&](const QueueSnapshot&) -> Expected<MoveResult> {
    return MoveResult{};
  }));
  CHECK(must(queue.moved_to()) == "pg");
  CHECK_FALSE(f.queue->send(SendRequest{"o2", "O", ""}));
  CHECK(must(dynamic_cast<SqliteQueue&>(*payments).moved_to()).empty());
  CHECK(must(payments->send(SendRequest{"p2", "P", ""})).seq > 0);
  CHECK(must(payments->stats()).visible == 2);
}

TEST_CASE("Queue: a move's snapshot pages through the queue and tells what handlers hold",
          "[queue]")
{
  QueueFixture f;
  f.send("m1", "A");
  f.send("m2", "A");
  f.send("m3", "B");
  f.send("m4", "C");
  f.send("m5", "D");
  const int64_t now = f.clock.now_ms();
  REQUIRE(bodies_of(f.receive(1, 30 * k_second)) == Bodies{"m1"}); // in a handler's hands
  auto later = f.receive(1).at(0);                                    // m3: given back, delayed
  must(f.queue->release(later.receipt, "later"));
  auto ended = f.receive(1, 1 * k_second).at(0); // m4: its timeout over by the move
  REQUIRE(ended.body == "m4");
  f.clock.advance_ms(2 * k_second);
  const int64_t at = f.clock.now_ms();

  auto& queue = dynamic_cast<SqliteQueue&>(*f.queue);
  auto moved = queue.move_out("nowhere", [&](const QueueSnapshot& s) -> Expected<MoveResult> {
    auto held = must(s.held(at));
    CHECK(held.messages == 1);
    CHECK(held.until_ms == now + 30 * k_second);
    CHECK(must(s.held(now + 30 * k_second)).messages == 0);
    Bodies seen;
    std::vector<size_t> sizes;
    must(s.each_page(false, 2, [&](const std::vector<Message>& page) -> Expected<void> {
      sizes.push_back(page.size());
      for (const auto& m : page) seen.push_back(m.body);
      return {};
    }));
    CHECK(seen == Bodies{"m1", "m2", "m3", "m4", "m5"});
    CHECK(sizes == std::vector<size_t>{2, 2, 1});
    // The first error of the callback ends the pages.
    int pages = 0;
    auto stopped = s.each_page(false, 2, [&](const std::vector<Message>&) -> Expected<void> {
      ++pages;
      return make_error(Errc::busy, "stop here");
    });
    CHECK(pages == 1);
    CHECK((!stopped && stopped.error().message == "stop here"));
    return make_error(Errc::busy, "not moved");
  });
  REQUIRE_FALSE(moved);
  CHECK(moved.error().message == "not moved");
  CHECK(must(f.queue->peek(PeekFilter{})).size() == 5); // a refused move changes nothing

  // The snapshot in memory answers the same.
  SnapshotInMemory copy;
  copy.queued = must(f.queue->peek(PeekFilter{}));
  auto held = must(copy.held(at));
  CHECK(held.messages == 1);
  CHECK(held.until_ms == now + 30 * k_second);
}

TEST_CASE("Queue: an SQLite file of another program is refused, not changed", "[queue]")
{
  TempDir dir;
  const auto path = dir.file("theirs.db");
  SECTION("a file with tables of its own")
  {
    write_foreign_sqlite(path, "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);"
                               "INSERT INTO customers(name) VALUES ('ada');");
  }
  SECTION("a file with another program's application id")
  {
    write_foreign_sqlite(path, "PRAGMA application_id = 1234; CREATE TABLE t(x);");
  }
  const auto tables_before = table_names(path);
  const auto bytes_before = read_file(path);
  auto result = SqliteQueue::open(path, QueueOptions{});
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::invalid_input);
  CHECK_THAT(result.error().message, Catch::Contains(path));
  CHECK_THAT(result.error().message, Catch::Contains("not an acmo database"));
  CHECK(table_names(path) == tables_before);
  // Not a byte of it changed (not even its journal mode).
  // (Compared as a bool: Catch would print both files' bytes on a failure.)
  CHECK((read_file(path) == bytes_before));
}

TEST_CASE("Queue: a file that is not SQLite at all is refused, not changed", "[queue]")
{
  TempDir dir;
  const auto path = dir.file("garbage.db");
  std::string garbage;
  for (int i = 0; i < 256; ++i) garbage += "this is not an SQLite database, it is a text file\n";
  {
    std::ofstream(path, std::ios::binary) << garbage;
  }
  auto result = SqliteQueue::open(path, QueueOptions{});
  REQUIRE_FALSE(result);
  CHECK_FALSE(result.error().message.empty());
  CHECK_THAT(result.error().message, Catch::Contains("not an SQLite file"));
  CHECK((read_file(path) == garbage));
}

TEST_CASE("Queue: a database written by a newer acmo is refused", "[queue]")
{
  TempDir dir;
  const auto path = dir.file("acmo.db");
  open_queue(path).reset();
  write_foreign_sqlite(path, "PRAGMA user_version = 999;");
  auto result = SqliteQueue::open(path, QueueOptions{});
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::conflict);
  CHECK_THAT(result.error().message, Catch::Contains("newer acmo"));
}

TEST_CASE("Queue: a file in a directory that does not exist is refused", "[queue]")
{
  TempDir dir;
  auto result = SqliteQueue::open(dir.file("no/such/dir/acmo.db"), QueueOptions{});
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::unavailable);
}

TEST_CASE("Queue: bad queue options are refused at open", "[queue]")
{
  TempDir dir;
  QueueOptions o;
  SECTION("same name for queue and DLQ") { o.dlq_name = o.name; }
  SECTION("a queue name with a space") { o.name = "my orders"; }
  SECTION("negative retries") { o.max_retries = -1; }
  SECTION("a negative retry delay") { o.retry_delays_ms = {1000, -1}; }
  SECTION("a visibility timeout over 12 h") { o.visibility_timeout_ms = 12 * 3'600'000 + 1; }
  SECTION("no retention") { o.retention_ms = 0; }
  auto result = SqliteQueue::open(dir.file("acmo.db"), o);
  REQUIRE_FALSE(result);
  CHECK(result.error().code == Errc::invalid_input);
  CHECK_FALSE(result.error().field.empty());
}

// --- long polling and threads (real time) ------------------------------------------------------

TEST_CASE("Queue: a long poll is woken by a send from another thread", "[queue]")
{
  TempDir dir;
  auto receiver = open_queue(dir.file("acmo.db"));
  // The same Queue object wakes its waiters directly; a second one on the file (as another
  // process would have) is found by polling.
  const bool same_object = GENERATE(true, false);
  std::unique_ptr<Queue> other;
  if (!same_object) other = open_queue(dir.file("acmo.db"));
  Queue& sender = same_object ? *receiver : *other;
  INFO((same_object ? "sender is the same Queue object" : "sender is another Queue object"));

  Expected<std::vector<Message>> got = std::vector<Message>{};
  int64_t waited = 0;
  std::thread waiter([&] {
    auto start = std::chrono::steady_clock::now();
    got = receiver->receive(1, {}, 2000);
    waited = elapsed_ms(start);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto sent = must(sender.send(SendRequest{"wake up", "g", ""}));
  waiter.join();

  REQUIRE(got);
  REQUIRE(got->size() == 1);
  CHECK(got->at(0).message_id == sent.message_id);
  CHECK(waited < 1000);
}

TEST_CASE("Queue: a long poll with nothing to receive returns empty after its wait", "[queue]")
{
  TempDir dir;
  auto q = open_queue(dir.file("acmo.db"));
  auto start = std::chrono::steady_clock::now();
  auto got = must(q->receive(1, {}, 300));
  auto waited = elapsed_ms(start);
  CHECK(got.empty());
  // The receive rounds its remaining time down to whole milliseconds, so it may end up to 1 ms
  // before the full wait; what matters is that it did wait rather than return at once.
  CHECK(waited >= 299);
  CHECK(waited < 2000);
}

TEST_CASE("Queue: interrupt makes a waiting receive return empty at once", "[queue]")
{
  TempDir dir;
  auto q = open_queue(dir.file("acmo.db"));
  Expected<std::vector<Message>> got = std::vector<Message>{};
  int64_t waited = 0;
  std::thread waiter([&] {
    auto start = std::chrono::steady_clock::now();
    got = q->receive(1, {}, 20'000);
    waited = elapsed_ms(start);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  q->interrupt();
  waiter.join();
  REQUIRE(got);
  CHECK(got->empty());
  CHECK(waited < 1000);

  // Until resume(), receives return empty at once, even when a message is ready.
  must(q->send(SendRequest{"m", "g", ""}));
  auto start = std::chrono::steady_clock::now();
  CHECK(must(q->receive(1, {}, 5000)).empty());
  CHECK(elapsed_ms(start) < 1000);
  q->resume();
  CHECK(must(q->receive(1, {}, 1000)).size() == 1);
}

TEST_CASE("Queue: 16 threads sending at once lose nothing", "[queue]")
{
  TempDir dir;
  auto q = open_queue(dir.file("acmo.db"));
  constexpr int k_threads = 16;
  constexpr int k_per_thread = 200;
  std::vector<std::vector<Expected<SendResult>>> results(k_threads);
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < k_per_thread; ++i) {
        results[static_cast<size_t>(t)].push_back(
          q->send(SendRequest{fmt::format("t{}-{}", t, i), fmt::format("t{}", t), ""}));
      }
    });
  }
  for (auto& th : threads) th.join();

  std::set<int64_t> seqs;
  std::set<std::string> ids;
  for (int t = 0; t < k_threads; ++t) {
    int64_t last = 0;
    for (auto& r : results[static_cast<size_t>(t)]) {
      REQUIRE(r);
      CHECK_FALSE(r->duplicate);
      // One thread's sends are sequential, so their numbers increase.
      if (r->seq <= last) FAIL("thread " << t << ": sequence went from " << last << " to " << r->seq);
      last = r->seq;
      seqs.insert(r->seq);
      ids.insert(r->message_id);
    }
  }
  CHECK(seqs.size() == k_threads * k_per_thread);
  CHECK(ids.size() == k_threads * k_per_thread);

  std::map<std::string, int> next;
  std::set<std::string> received_ids;
  for (;;) {
    auto got = must(q->receive(1000));
    if (got.empty()) break;
    for (const auto& r : q->remove_batch(acmo::test::receipts_of(got))) must(r);
    for (const auto& m : got) {
      int& expect = next[m.group_id];
      if (m.body != fmt::format("{}-{}", m.group_id, expect)) {
        FAIL("group " << m.group_id << ": got " << m.body << ", expected index " << expect);
      }
      ++expect;
      received_ids.insert(m.message_id);
    }
  }
  CHECK(received_ids == ids);
  CHECK(must(q->stats()).sent == k_threads * k_per_thread);
}

TEST_CASE("Queue: threads receiving at once never get the same message", "[queue]")
{
  TempDir dir;
  auto q = open_queue(dir.file("acmo.db"));
  constexpr int k_messages = 2000;
  std::vector<SendRequest> requests;
  for (int i = 0; i < k_messages; ++i) {
    requests.push_back(SendRequest{fmt::format("m{}", i), fmt::format("g{}", i % 20), ""});
  }
  for (auto& r : q->send_bulk(requests)) REQUIRE(r);

  constexpr int k_threads = 4;
  std::vector<std::vector<Message>> got(k_threads);
  std::atomic<int> total{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      while (total.load() < k_messages && !failed.load()) {
        auto batch = q->receive(10, 60'000, 50);
        if (!batch) {
          failed = true;
          return;
        }
        std::vector<std::string> receipts;
        for (auto& m : *batch) receipts.push_back(m.receipt);
        for (auto& r : q->remove_batch(receipts)) {
          if (!r) failed = true;
        }
        total += static_cast<int>(batch->size());
        for (auto& m : *batch) got[static_cast<size_t>(t)].push_back(std::move(m));
      }
    });
  }
  for (auto& th : threads) th.join();
  REQUIRE_FALSE(failed.load());

  std::multiset<std::string> bodies;
  for (const auto& per_thread : got) {
    // Each thread saw every group in order (seq increasing per group).
    std::map<std::string, int64_t> last;
    for (const auto& m : per_thread) {
      CHECK(m.seq > last[m.group_id]);
      last[m.group_id] = m.seq;
      bodies.insert(m.body);
    }
  }
  CHECK(bodies.size() == k_messages);
  CHECK(std::set<std::string>(bodies.begin(), bodies.end()).size() == k_messages);
  auto s = must(q->stats());
  CHECK(s.received == k_messages);
  CHECK(s.deleted == k_messages);
  CHECK(s.visible + s.in_flight + s.delayed == 0);
}
