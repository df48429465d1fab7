// The journal of work in hand (core/queue/sqlite/work_journal.*) and what the queue does with it: a message
// whose handling kills the process that took it is counted like any failed attempt, reaches
// the DLQ after queue.max_retries, and the rest of its group goes on. Real processes, really
// killed.
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <csignal>

#include "core/queue/sqlite/work_journal.hpp"
#include "core/sqlite/sqlite.hpp"
#include "process_util.hpp"
#include "queue_test_util.hpp"
#include "temp_dir.hpp"

using namespace acmo;
using namespace acmo::test::process;
using acmo::test::must;
using acmo::test::TempDir;

namespace {

// A child that blocks until the parent closes the pipe (or writes to it).
void wait_for_parent(int fd)
{
  char c = 0;
  [[maybe_unused]] const ssize_t n = ::read(fd, &c, 1);
}

} // namespace

TEST_CASE("WorkJournal: the work of a dead process is claimed, that of a live one is not",
          "[work_journal]")
{
  TempDir dir;
  const std::string path = dir.file("acmo.db-work");
  const int64_t dead_seqs[] = {7, 8, 9};
  const int64_t live_seqs[] = {20};
  const int64_t done_seqs[] = {30};
  // One process dies with work in hand; one finishes its work and exits; one lives on.
  pid_t dead = spawn({}, [&] {
    WorkJournal journal(path);
    if (!journal.begin(1, dead_seqs, 3)) return 1;
    ::raise(SIGKILL);
    return 2;
  });
  CHECK(wait_child(dead) == 128 + SIGKILL);
  pid_t done = spawn({}, [&] {
    WorkJournal journal(path);
    if (!journal.begin(1, done_seqs, 1)) return 1;
    journal.end();
    ::raise(SIGKILL); // dies, but with no work in hand
    return 2;
  });
  CHECK(wait_child(done) == 128 + SIGKILL);
  Pipe hold; // the parent closes its end to let the live process end
  Pipe ready;
  pid_t live = spawn({hold.write_fd(), ready.read_fd()}, [&] {
    WorkJournal journal(path);
    if (!journal.begin(1, live_seqs, 1)) return 1;
    [[maybe_unused]] const ssize_t n = ::write(ready.write_fd(), "x", 1);
    wait_for_parent(hold.read_fd());
    return 0;
  });
  hold.close_read();
  ready.close_write();
  char c = 0;
  REQUIRE(::read(ready.read_fd(), &c, 1) == 1);

  WorkJournal mine(path);
  // Of another queue of the database: not ours to count.
  CHECK(mine.claim_orphans(2).empty());
  auto orphans = mine.claim_orphans(1);
  REQUIRE(orphans.size() == 1);
  CHECK(orphans[0].pid == dead);
  CHECK(orphans[0].seqs == std::vector<int64_t>{7, 8, 9});
  // Claimed: another looker does not see it meanwhile.
  WorkJournal other(path);
  CHECK(other.claim_orphans(1).empty());
  // Given back uncounted, it is there for the next look; counted, it is gone.
  mine.unclaim(orphans);
  auto again = other.claim_orphans(1);
  REQUIRE(again.size() == 1);
  other.settle(again);
  CHECK(mine.claim_orphans(1).empty());
  // A new process takes a slot without taking over the live one's.
  WorkJournal fresh(path);
  const int64_t fresh_seqs[] = {40};
  must(fresh.begin(1, fresh_seqs, 1));

  hold.close_write();
  CHECK(wait_child(live) == 0);
  // The live process ended cleanly: no work left behind.
  CHECK(mine.claim_orphans(1).empty());
}

TEST_CASE("Queue consume: a message whose work kills the consumer reaches the DLQ after "
          "max_retries; the rest of its group goes on",
          "[work_journal][queue][consume]")
{
  TempDir dir;
  const std::string path = dir.file("acmo.db");
  QueueOptions options; // max_retries = 3: four attempts
  {
    auto q = acmo::test::open_queue(path, options);
    for (const char* body : {"a1", "a2", "poison", "a3", "a4"}) {
      must(q->send(SendRequest{body, "a", ""}));
    }
    for (const char* body : {"b1", "b2"}) must(q->send(SendRequest{body, "b", ""}));
  }
  // Consumers in processes of their own, each handling what it can until the queue is empty
  // or the poison kills it. The parent counts the deaths and what each consumer handled.
  int deaths = 0;
  std::multiset<std::string> handled;
  for (int round = 0; round < 12; ++round) {
    Pipe out;
    pid_t child = spawn({out.read_fd()}, [&] {
      auto q = SqliteQueue::open(path, options);
      if (!q) return k_child_open_failed;
      for (;;) {
        auto got = (*q)->consume(10, 0, [&](QueueTransaction&, const std::vector<Message>& batch)
                                          -> Expected<std::vector<Disposition>> {
          for (const auto& m : batch) {
            if (m.body == "poison") {
              std::signal(SIGSEGV, SIG_DFL); // Catch2's handler, inherited, would report it
              ::raise(SIGSEGV);
            }
          }
          for (const auto& m : batch) {
            const std::string line = m.body + "\n";
            [[maybe_unused]] const ssize_t n = ::write(out.write_fd(), line.data(), line.size());
          }
          return std::vector<Disposition>(batch.size());
        });
        if (!got) return k_child_receive_failed;
        if (got->empty()) return k_child_ok;
      }
    });
    out.close_write();
    std::string text;
    char buf[256];
    for (ssize_t n; (n = ::read(out.read_fd(), buf, sizeof buf)) > 0;) {
      text.append(buf, static_cast<size_t>(n));
    }
    const int code = wait_child(child);
    for (size_t start = 0, end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
      handled.insert(text.substr(start, end - start));
    }
    if (code == 128 + SIGSEGV) {
      ++deaths;
      continue;
    }
    REQUIRE(code == k_child_ok);
    auto q = acmo::test::open_queue(path, options);
    auto s = must(q->stats());
    if (s.visible + s.in_flight + s.delayed == 0) break;
  }
  INFO("consumers killed by the poison: " << deaths);
  // The first death took its batch with it; each later one only the poison, alone.
  CHECK(deaths == options.max_retries + 1);
  CHECK(handled == std::multiset<std::string>{"a1", "a2", "a3", "a4", "b1", "b2"});
  auto q = acmo::test::open_queue(path, options);
  auto s = must(q->stats());
  CHECK(s.visible + s.in_flight + s.delayed == 0);
  auto dead = must(q->dlq_list());
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].body == "poison");
  CHECK_THAT(dead[0].dead_reason, Catch::Contains("retries exhausted (queue.max_retries = 3)")
                                    && Catch::Contains("died before it was settled"));
}

TEST_CASE("Queue: a message whose deliveries keep running out of visibility is dead-lettered "
          "after max_retries; a suspect comes alone",
          "[work_journal][queue]")
{
  TempDir dir;
  ManualClock clock;
  QueueOptions options;
  options.max_retries = 2;
  auto q = acmo::test::open_queue(dir.file("acmo.db"), options, clock);
  must(q->send(SendRequest{"m1", "g", ""}));
  must(q->send(SendRequest{"m2", "g", ""}));
  // Delivered with m2; its receiver never answers.
  auto first = must(q->receive(10, std::nullopt, 0, true));
  REQUIRE(first.size() == 2);
  clock.advance_ms(options.visibility_timeout_ms + 1);
  // A plain receive (an SQS client) takes what is visible; the handler's takes m1 alone.
  auto alone = must(q->receive(10, std::nullopt, 0, true));
  REQUIRE(alone.size() == 1);
  CHECK(alone[0].body == "m1");
  CHECK(alone[0].receive_count == 2);
  clock.advance_ms(options.visibility_timeout_ms + 1);
  auto third = must(q->receive(10, std::nullopt, 0, false));
  REQUIRE(third.size() == 2);
  CHECK(third[0].receive_count == 3);
  clock.advance_ms(options.visibility_timeout_ms + 1);
  // m1 was delivered max_retries + 1 = 3 times: to the DLQ, and m2 comes next.
  auto after = must(q->receive(10, std::nullopt, 0, false));
  REQUIRE(after.size() == 1);
  CHECK(after[0].body == "m2");
  auto dead = must(q->dlq_list());
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].body == "m1");
  CHECK_THAT(dead[0].dead_reason,
             Catch::StartsWith("delivered 3 times and never deleted, retries exhausted "
                               "(queue.max_retries = 2)"));
}
