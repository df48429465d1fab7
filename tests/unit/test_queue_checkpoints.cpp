// When the queue checkpoints the WAL: the writer at 1,000 pages after a transaction of single
// or batched sends, and at 8,000 after one that only consumes (or a bulk load's); past each
// 1,000 pages of those a thread of the queue's own checkpoints beside them (see
// core/queue/sqlite/checkpointer.hpp). A checkpoint the writer makes lets the next transaction
// write the WAL from its start again, so the WAL file's size says how far it grew between
// them; the database file changes only when a checkpoint copies pages into it.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "core/queue/queue.hpp"
#include "unit/queue_test_util.hpp"
#include "unit/temp_dir.hpp"

using namespace acmo;
using acmo::test::must;
using acmo::test::open_queue;
using acmo::test::TempDir;

namespace {

constexpr std::uintmax_t k_frame = 4096 + 24; // a WAL frame: its header and a 4 KiB page

std::uintmax_t wal_pages(const std::string& db)
{
  std::error_code ec;
  const auto size = std::filesystem::file_size(db + "-wal", ec);
  return ec ? 0 : size / k_frame;
}

// Send `count` messages in batches of 10, durably, noting the largest the WAL grew.
void send_many(Queue& q, int count, std::uintmax_t& largest, const std::string& db)
{
  std::vector<SendRequest> batch;
  for (int i = 0; i < count; ++i) {
    batch.push_back(SendRequest{"message " + std::to_string(i) + std::string(300, 'x'), "g", ""});
    if (batch.size() == 10) {
      for (const auto& r : must(q.send_batch(batch))) must(r);
      batch.clear();
      largest = std::max(largest, wal_pages(db));
    }
  }
}

// Receive and delete up to `max` messages in batches of 10 (transactions that only consume),
// stopping early once `stop` says so; returns how many.
template <typename Stop>
int consume(Queue& q, int max, std::uintmax_t& largest, const std::string& db, Stop stop)
{
  int consumed = 0;
  while (consumed < max && !stop()) {
    auto got = must(q.receive(10));
    if (got.empty()) break;
    for (const auto& r : q.remove_batch(acmo::test::receipts_of(got))) must(r);
    consumed += static_cast<int>(got.size());
    largest = std::max(largest, wal_pages(db));
  }
  return consumed;
}

} // namespace

TEST_CASE("Queue checkpoints: sends keep the WAL near 1,000 pages; consuming checkpoints in the "
          "background and lets the WAL grow to 8,000 pages, no further",
          "[queue][checkpoint]")
{
  TempDir dir;
  const std::string db = dir.file("acmo.db");
  QueueOptions options;
  options.durability_full = false; // the syncs are not what this test looks at
  auto q = open_queue(db, options);

  std::uintmax_t largest = 0;
  send_many(*q, 12'000, largest, db);
  INFO("largest WAL while sending: " << largest << " pages");
  CHECK(largest > 900);   // it did reach the point of a checkpoint
  CHECK(largest < 1'100); // and each time one happened

  // Transactions that only consume: past 1,000 pages the thread checkpoints beside them,
  // which writes the database file while the WAL is still short of 8,000 pages.
  namespace fs = std::filesystem;
  const auto copied_before = fs::last_write_time(db);
  largest = 0;
  int consumed = consume(*q, 12'000, largest, db, [&] { return wal_pages(db) >= 2'000; });
  INFO("consumed " << consumed << ", the WAL file at " << largest << " pages");
  CHECK(largest < 8'000); // so the writer has not checkpointed
  bool copied = false;
  for (int i = 0; i < 1'000 && !copied; ++i) {
    copied = fs::last_write_time(db) != copied_before;
    if (!copied) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(copied);

  // The rest: the WAL grows no further than about 8,000 pages, where the writer checkpoints.
  consumed += consume(*q, 12'000, largest, db, [] { return false; });
  CHECK(consumed == 12'000);
  INFO("largest WAL while consuming: " << largest << " pages");
  CHECK(largest < 8'100);

  auto s = must(q->stats());
  CHECK(s.visible + s.in_flight == 0);
  CHECK(s.deleted == 12'000);
}
