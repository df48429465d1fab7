// The queue used by several real processes at once, and killed with SIGKILL mid-work (docs/queue.md §1,
// §11). Children are made with fork(); they open their own Queue on the shared file, report
// through pipes and end with _exit(). Catch2 assertions run only in the parent.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fmt/core.h>
#include <sqlite3.h>

#include "core/queue/sqlite/sqlite_queue.hpp"
#include "core/sqlite/lock_holder.hpp"
#include "core/util/ids.hpp"
#include "process_util.hpp"
#include "queue_test_util.hpp"
#include "temp_dir.hpp"

using namespace acmo;
using acmo::test::must;
using acmo::test::open_queue;
using acmo::test::TempDir;

namespace {

using SteadyClock = std::chrono::steady_clock;

using namespace acmo::test::process;

// Write all of `text`; false if the pipe is gone.
bool write_all(int fd, const std::string& text)
{
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Splits what arrives on a pipe into lines; a trailing partial line (a writer killed mid-write)
// is never returned.
class LineReader
{
public:
  explicit LineReader(int fd) : m_fd(fd) {}

  // Wait up to `timeout_ms` for data; append the complete lines that arrived to `out`.
  // Returns false at end of file.
  bool read_some(std::vector<std::string>& out, int timeout_ms)
  {
    pollfd p{m_fd, POLLIN, 0};
    int ready = ::poll(&p, 1, timeout_ms);
    if (ready <= 0) return true;
    char buf[65536];
    ssize_t n = ::read(m_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) return true;
    if (n <= 0) return false;
    m_pending.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = m_pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      out.push_back(m_pending.substr(start, nl - start));
    }
    m_pending.erase(0, start);
    return true;
  }

  void read_to_eof(std::vector<std::string>& out)
  {
    while (read_some(out, 1000)) {
    }
  }

private:
  int m_fd;
  std::string m_pending;
};

std::vector<std::string> split(const std::string& line)
{
  std::vector<std::string> out;
  std::istringstream in(line);
  for (std::string word; in >> word;) out.push_back(word);
  return out;
}

// What an integrity check of the SQLite file says ("ok" when sound).
std::string integrity_check(const std::string& path)
{
  sqlite3* db = nullptr;
  std::string result = "cannot open";
  if (sqlite3_open(path.c_str(), &db) == SQLITE_OK) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &stmt, nullptr) == SQLITE_OK
        && sqlite3_step(stmt) == SQLITE_ROW) {
      result = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close(db);
  return result;
}

// Receive and delete everything the queue holds; returns the messages in receive order.
std::vector<Message> drain(Queue& queue)
{
  std::vector<Message> all;
  for (;;) {
    auto got = must(queue.receive(1000, 60'000));
    if (got.empty()) break;
    for (const auto& r : queue.remove_batch(acmo::test::receipts_of(got))) must(r);
    all.insert(all.end(), got.begin(), got.end());
  }
  return all;
}

// Parse "<prefix><a>:<b>[:<c>]" into its numbers.
std::vector<int> numbers_after(const std::string& body, const std::string& prefix)
{
  std::vector<int> out;
  if (body.compare(0, prefix.size(), prefix) != 0) return out;
  std::istringstream in(body.substr(prefix.size()));
  for (std::string part; std::getline(in, part, ':');) out.push_back(std::stoi(part));
  return out;
}

} // namespace

TEST_CASE("Queue processes: two senders and two receivers on one file deliver each message once",
          "[process]")
{
  TempDir dir;
  const std::string path = dir.file("acmo.db");
  constexpr int k_senders = 2;
  constexpr int k_receivers = 2;
  constexpr int k_per_sender = 2000;
  constexpr int k_groups_per_sender = 4;
  constexpr int k_total = k_senders * k_per_sender;
  QueueOptions options;
  options.visibility_timeout_ms = 60'000; // no legitimate redelivery during the test

  // Draw an id in this process first: the children must not inherit a generator that then
  // hands all of them the same ids.
  (void)new_message_id();

  Pipe records; // receivers -> parent: one line per received and deleted message
  Pipe stop;    // parent closes its end to tell the receivers to finish
  std::vector<pid_t> children;

  // Receivers first, so that they are already polling when the first messages arrive. Every
  // child opens the file itself; the first ones race to create the schema.
  for (int r = 0; r < k_receivers; ++r) {
    children.push_back(spawn({records.read_fd(), stop.write_fd()}, [&, r] {
      auto q = SqliteQueue::open(path, options);
      if (!q) return k_child_open_failed;
      for (;;) {
        pollfd p{stop.read_fd(), POLLIN, 0};
        if (::poll(&p, 1, 0) > 0) return k_child_ok; // the parent closed its end
        auto got = (*q)->receive(10, {}, 100);
        if (!got) return k_child_receive_failed;
        if (got->empty()) continue;
        std::vector<std::string> receipts;
        for (const auto& m : *got) receipts.push_back(m.receipt);
        for (const auto& res : (*q)->remove_batch(receipts)) {
          if (!res) return k_child_remove_failed;
        }
        // Reported only once deleted. One write of at most 10 short lines stays below
        // PIPE_BUF, so the two receivers' reports never interleave within a line.
        std::string lines;
        for (const auto& m : *got) {
          lines += fmt::format("{} {} {} {} {}\n", r, m.body, m.group_id, m.seq, m.message_id);
        }
        if (!write_all(records.write_fd(), lines)) return k_child_write_failed;
      }
    }));
  }
  for (int s = 0; s < k_senders; ++s) {
    children.push_back(spawn({records.read_fd(), records.write_fd(), stop.write_fd(),
                              stop.read_fd()},
                             [&, s] {
                               auto q = SqliteQueue::open(path, options);
                               if (!q) return k_child_open_failed;
                               for (int i = 0; i < k_per_sender; ++i) {
                                 SendRequest req{fmt::format("s{}:{}", s, i),
                                                 fmt::format("s{}g{}", s, i % k_groups_per_sender),
                                                 ""};
                                 auto sent = (*q)->send(req);
                                 if (!sent || sent->duplicate) return k_child_send_failed;
                               }
                               return k_child_ok;
                             }));
  }
  records.close_write();
  stop.close_read();

  LineReader reader(records.read_fd());
  std::vector<std::string> lines;
  const auto deadline = SteadyClock::now() + std::chrono::seconds(60);
  while (static_cast<int>(lines.size()) < k_total && SteadyClock::now() < deadline) {
    if (!reader.read_some(lines, 100)) break;
  }
  stop.close_write();
  for (size_t i = 0; i < children.size(); ++i) {
    INFO((i < k_receivers ? "receiver " : "sender ") << (i < k_receivers ? i : i - k_receivers));
    CHECK(wait_child(children[i]) == k_child_ok);
  }
  reader.read_to_eof(lines);

  // Every message exactly once, with a distinct message id.
  std::map<std::string, int> times_received;
  std::set<std::string> message_ids;
  std::map<std::string, std::vector<std::pair<int, int64_t>>> by_group; // group -> (index, seq)
  std::map<std::pair<int, std::string>, int> last_index_seen;           // (receiver, group)
  int out_of_order = 0;
  for (const auto& line : lines) {
    auto f = split(line);
    REQUIRE(f.size() == 5);
    const int receiver = std::stoi(f[0]);
    const auto& body = f[1];
    const auto& group = f[2];
    ++times_received[body];
    message_ids.insert(f[4]);
    auto n = numbers_after(body, "s");
    REQUIRE(n.size() == 2);
    by_group[group].emplace_back(n[1], std::stoll(f[3]));
    // Within one receiver, each group arrives in sending order.
    auto [it, fresh] = last_index_seen.try_emplace({receiver, group}, n[1]);
    if (!fresh) {
      if (n[1] <= it->second) ++out_of_order;
      it->second = n[1];
    }
  }
  CHECK(lines.size() == k_total);
  CHECK(times_received.size() == k_total);
  int duplicates = 0;
  for (const auto& [body, times] : times_received) duplicates += times > 1 ? 1 : 0;
  CHECK(duplicates == 0);
  for (int s = 0; s < k_senders; ++s) {
    for (int i = 0; i < k_per_sender; ++i) {
      if (!times_received.count(fmt::format("s{}:{}", s, i))) {
        FAIL_CHECK("message s" << s << ":" << i << " was never received");
        break;
      }
    }
  }
  CHECK(message_ids.size() == k_total);
  CHECK(out_of_order == 0);
  // Across receivers too, a group's sequence numbers follow its sending order.
  for (auto& [group, entries] : by_group) {
    std::sort(entries.begin(), entries.end());
    for (size_t i = 1; i < entries.size(); ++i) {
      if (entries[i].second <= entries[i - 1].second) {
        FAIL_CHECK("group " << group << ": message " << entries[i].first
                            << " has a lower sequence number than message "
                            << entries[i - 1].first);
        break;
      }
    }
  }

  auto q = open_queue(path, options);
  auto s = must(q->stats());
  CHECK(s.visible == 0);
  CHECK(s.in_flight == 0);
  CHECK(s.delayed == 0);
  CHECK(s.sent == k_total);
  CHECK(s.duplicates == 0);
  CHECK(s.received == k_total);
  CHECK(s.deleted == k_total);
}

namespace {

// One round of the crash test: start `child`, let it acknowledge messages (one id per line on
// the pipe) for a random 200-600 ms, SIGKILL it, and return the ids it acknowledged.
std::vector<std::string> run_and_kill(const std::function<int(int ack_fd)>& child,
                                      std::mt19937& random)
{
  Pipe acks;
  pid_t pid = spawn({acks.read_fd()}, [&] { return child(acks.write_fd()); });
  acks.close_write();

  const auto kill_after = std::chrono::milliseconds(std::uniform_int_distribution<int>(200, 600)(random));
  const auto start = SteadyClock::now();
  LineReader reader(acks.read_fd());
  std::vector<std::string> ids;
  bool open = true;
  while (open && (SteadyClock::now() - start < kill_after || ids.size() < 10)) {
    if (SteadyClock::now() - start > std::chrono::seconds(20)) break; // a child that never acknowledges
    open = reader.read_some(ids, 10);
  }
  ::kill(pid, SIGKILL);
  const int status = wait_child(pid);
  INFO("the child ended with " << status << " (" << 128 + SIGKILL << " = killed as planned)");
  REQUIRE(status == 128 + SIGKILL);
  reader.read_to_eof(ids);
  REQUIRE(ids.size() >= 10);
  return ids;
}

} // namespace

TEST_CASE("Queue processes: every acknowledged send survives kill -9 of the sender", "[process]")
{
  TempDir dir;
  const std::string path = dir.file("acmo.db");
  std::mt19937 random(std::random_device{}());
  QueueOptions options; // durability "full"
  REQUIRE(options.durability_full);
  (void)new_message_id();

  SECTION("sends one by one")
  {
    for (int round = 0; round < 5; ++round) {
      INFO("round " << round);
      auto acked = run_and_kill(
        [&](int ack_fd) {
          auto q = SqliteQueue::open(path, options);
          if (!q) return k_child_open_failed;
          for (int i = 0; i < 1'000'000; ++i) {
            auto sent = (*q)->send(
              SendRequest{fmt::format("one{}:{}", round, i), fmt::format("g{}", i % 3), ""});
            if (!sent) return k_child_send_failed;
            if (!write_all(ack_fd, sent->message_id + "\n")) return k_child_write_failed;
          }
          return k_child_ok;
        },
        random);

      REQUIRE(integrity_check(path) == "ok");
      auto q = open_queue(path, options);
      auto present = drain(*q);
      std::set<std::string> ids;
      std::set<int> indexes;
      for (const auto& m : present) {
        ids.insert(m.message_id);
        auto n = numbers_after(m.body, fmt::format("one{}:", round));
        REQUIRE(n.size() == 1);
        indexes.insert(n[0]);
      }
      int lost = 0;
      for (const auto& id : acked) lost += ids.count(id) ? 0 : 1;
      CHECK(lost == 0);
      // Sends are sequential: what is on disk is a prefix of them, at most one past the last
      // acknowledgement (committed, then killed before it was reported).
      CHECK(static_cast<int>(indexes.size()) == *indexes.rbegin() + 1);
      CHECK(present.size() >= acked.size());
      CHECK(present.size() <= acked.size() + 1);
      auto s = must(q->stats());
      CHECK(s.visible + s.in_flight + s.delayed == 0);
    }
  }

  SECTION("send_bulk")
  {
    constexpr int k_batch = 500;
    for (int round = 0; round < 3; ++round) {
      INFO("round " << round);
      auto acked = run_and_kill(
        [&](int ack_fd) {
          auto q = SqliteQueue::open(path, options);
          if (!q) return k_child_open_failed;
          for (int b = 0; b < 100'000; ++b) {
            std::vector<SendRequest> requests;
            for (int j = 0; j < k_batch; ++j) {
              requests.push_back(SendRequest{fmt::format("bulk{}:{}:{}", round, b, j),
                                             fmt::format("g{}", j % 5), ""});
            }
            std::string lines;
            for (auto& r : (*q)->send_bulk(requests)) {
              if (!r) return k_child_send_failed;
              lines += r->message_id + "\n";
            }
            if (!write_all(ack_fd, lines)) return k_child_write_failed;
          }
          return k_child_ok;
        },
        random);

      REQUIRE(integrity_check(path) == "ok");
      auto q = open_queue(path, options);
      auto present = drain(*q);
      std::set<std::string> ids;
      std::map<int, int> per_batch;
      for (const auto& m : present) {
        ids.insert(m.message_id);
        auto n = numbers_after(m.body, fmt::format("bulk{}:", round));
        REQUIRE(n.size() == 2);
        ++per_batch[n[0]];
      }
      int lost = 0;
      for (const auto& id : acked) lost += ids.count(id) ? 0 : 1;
      CHECK(lost == 0);
      // A bulk load of one chunk is one transaction: all of it or none of it.
      int expected_batch = 0;
      for (const auto& [batch, count] : per_batch) {
        INFO("batch " << batch);
        CHECK(batch == expected_batch++);
        CHECK(count == k_batch);
      }
      CHECK(present.size() >= acked.size());
      // At most one chunk was committed but not (fully) acknowledged when the kill came.
      CHECK(present.size() <= acked.size() + k_batch);
    }
  }

  SECTION("8 threads sending at once")
  {
    constexpr int k_threads = 8;
    for (int round = 0; round < 3; ++round) {
      INFO("round " << round);
      auto acked = run_and_kill(
        [&](int ack_fd) {
          auto q = SqliteQueue::open(path, options);
          if (!q) return k_child_open_failed;
          std::atomic<int> failure{k_child_ok};
          std::vector<std::thread> threads;
          for (int t = 0; t < k_threads; ++t) {
            threads.emplace_back([&, t] {
              for (int i = 0; i < 1'000'000 && failure.load() == k_child_ok; ++i) {
                auto sent = (*q)->send(SendRequest{fmt::format("thr{}:{}:{}", round, t, i),
                                                   fmt::format("t{}", t), ""});
                if (!sent) {
                  failure = k_child_send_failed;
                } else if (!write_all(ack_fd, sent->message_id + "\n")) { // short: one write
                  failure = k_child_write_failed;
                }
              }
            });
          }
          for (auto& th : threads) th.join();
          return failure.load();
        },
        random);

      REQUIRE(integrity_check(path) == "ok");
      auto q = open_queue(path, options);
      auto present = drain(*q);
      std::set<std::string> ids;
      std::map<int, std::set<int>> per_thread;
      for (const auto& m : present) {
        ids.insert(m.message_id);
        auto n = numbers_after(m.body, fmt::format("thr{}:", round));
        REQUIRE(n.size() == 2);
        per_thread[n[0]].insert(n[1]);
      }
      int lost = 0;
      for (const auto& id : acked) lost += ids.count(id) ? 0 : 1;
      CHECK(lost == 0);
      // Each thread's sends are sequential: a prefix of them is on disk.
      for (const auto& [t, indexes] : per_thread) {
        INFO("thread " << t);
        CHECK(static_cast<int>(indexes.size()) == *indexes.rbegin() + 1);
      }
      CHECK(present.size() >= acked.size());
      CHECK(present.size() <= acked.size() + k_threads);
    }
  }
}

// Regression: the first processes to open a new file raced to switch it to WAL, and the loser
// failed at once with "database is locked" (SQLite runs no busy handler for that pragma).
TEST_CASE("Queue processes: several processes opening a new file at once all succeed",
          "[process]")
{
  for (int round = 0; round < 5; ++round) {
    TempDir dir;
    const std::string path = dir.file("acmo.db");
    std::vector<pid_t> children;
    for (int c = 0; c < 6; ++c) {
      children.push_back(spawn({}, [&] {
        auto q = SqliteQueue::open(path, QueueOptions{});
        if (!q) return k_child_open_failed;
        return (*q)->send(SendRequest{fmt::format("hello {}", ::getpid()), "g", ""})
                 ? k_child_ok
                 : k_child_send_failed;
      }));
    }
    for (size_t i = 0; i < children.size(); ++i) {
      INFO("round " << round << ", child " << i);
      CHECK(wait_child(children[i]) == k_child_ok);
    }
    auto q = open_queue(path, {});
    CHECK(must(q->stats()).visible == 6);
  }
}

TEST_CASE("Queue processes: asking who holds the write lock leaves this process's WAL-index "
          "locks in place",
          "[process]")
{
  // Closing any descriptor of a file drops every POSIX lock the process holds on it. Were the
  // question (asked by /health and by commands that wait for the lock) to open and close the
  // -shm file, this process would lose SQLite's shared lock on it, and the next process to open
  // the database would truncate the -shm under this one's memory map (SIGBUS at its next read).
  TempDir dir;
  const std::string path = dir.file("acmo.db");
  auto q = open_queue(path);
  must(q->send(SendRequest{"m1", "g", ""}));
  for (int i = 0; i < 2; ++i) CHECK_FALSE(wal_write_lock_holder(path).has_value());

  // Another process still sees this one's lock on the -shm's "in use" byte (128: UNIX_SHM_DMS).
  const pid_t parent = ::getpid();
  const pid_t checker = spawn({}, [&] {
    const int fd = ::open((path + "-shm").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 2;
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 128;
    fl.l_len = 1;
    if (::fcntl(fd, F_GETLK, &fl) != 0) return 3;
    return fl.l_type != F_UNLCK && fl.l_pid == parent ? 0 : 1;
  });
  CHECK(wait_child(checker) == 0);

  // And a process that opens the database and reads it leaves this one working.
  const pid_t reader = spawn({}, [&] {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) return 2;
    const int rc = sqlite3_exec(db, "SELECT count(*) FROM messages", nullptr, nullptr, nullptr);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : 3;
  });
  CHECK(wait_child(reader) == 0);
  must(q->send(SendRequest{"m2", "g", ""}));
  const auto got = must(q->receive(10));
  REQUIRE(got.size() == 2);
  CHECK(got[0].body == "m1");
  CHECK(got[1].body == "m2");
}
