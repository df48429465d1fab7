// The OrderHandler (docs/orders.md §4): takes order events off the queue, applies them to the order
// store in group order, and settles their messages: deleted when applied, dead-lettered at
// once when they can never apply, released with backoff when a dependency failed.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "core/queue/queue.hpp"
#include "core/store/change_signal.hpp"
#include "core/store/order_store.hpp"
#include "core/util/clock.hpp"
#include "core/util/error.hpp"

namespace acmo {

class Cache;
class OrderWriter;

struct HandlerOptions {
  int concurrency = 1;   // worker threads; they share the queue's group commit
  int batch_size = 100;  // messages per receive
  int64_t wait_ms = 1000; // long poll of an idle worker
  // The store to write to when it is not the queue's database (PostgreSQL); null: the
  // embedded SQLite store, applied in the same transaction as the message's deletion.
  OrderWriter* writer = nullptr;
  // The writer's store is the queue's own PostgreSQL database: a batch is taken, applied
  // (OrderWriter::apply_in) and its messages deleted in one transaction of the queue.
  bool writer_in_queue = false;
  // Invalidated after each commit: the changed orders' entries and every cached list. May be
  // null.
  Cache* cache = nullptr;
};

// The upper bounds of the batch durations' histogram, in microseconds: from a batch of one
// event on a fast disk to one held up by a slow store.
inline constexpr std::array<int64_t, 12> k_batch_bounds_us = {
  1'000, 2'500, 5'000, 10'000, 25'000, 50'000, 100'000, 250'000, 500'000, 1'000'000,
  2'500'000, 5'000'000};

struct HandlerStats {
  int64_t processed = 0;     // events applied
  int64_t dead_lettered = 0; // events that can never apply, moved to the DLQ
  int64_t retried = 0;       // messages released for a retry after a transient failure
  int64_t batches = 0;
  int64_t latency_p50_us = 0; // time to apply and settle one batch, over the last 1,024
  int64_t latency_p99_us = 0;
  // Every batch's time to apply and settle, since the handler started: batch_buckets[i] counts
  // those up to k_batch_bounds_us[i] and over the bound before (the last one: over every
  // bound); they add up to `batches`.
  std::array<int64_t, k_batch_bounds_us.size() + 1> batch_buckets{};
  int64_t batch_sum_us = 0;
  std::string last_error;
};

struct BatchTally;

class OrderHandler
{
public:
  // `db_path` is the queue's database, where the embedded order store lives too.
  OrderHandler(Queue& queue, std::string db_path, HandlerOptions options,
               const Clock& clock = SystemClock::instance());

  // Both runs register the handler in the database (see handler_registry.hpp), beat every
  // second with its figures while they run, and mark it stopped when they return.

  // Process until a receive finds nothing to do, or stop() is called, then return (acmo
  // run-handler --once).
  Expected<HandlerStats> run_once();
  // Process until stop() is called; the batches in hand are finished first.
  Expected<HandlerStats> run();
  // Ask run() to return; safe from any thread.
  void stop();

  HandlerStats stats() const;

private:
  // Receive one batch and settle it; returns how many messages it received.
  Expected<int64_t> process_batch(int64_t wait_ms);
  // process_batch's path on the embedded store: Queue::consume, one transaction per batch.
  Expected<int64_t> consume_batch(int64_t wait_ms);
  // Count a committed batch of the embedded store and drop its orders from the cache.
  void record_applied(const BatchTally& tally, std::chrono::steady_clock::time_point started);
  // process_batch's path when the orders are in an OrderWriter (PostgreSQL): apply the events
  // there, then delete, dead-letter or release their messages by the outcome.
  int64_t apply_to_writer(const std::vector<Message>& messages,
                          std::vector<Expected<AppliedEvent>>& events);
  void record_latency_locked(std::chrono::steady_clock::time_point started);
  void record_error(const std::string& message);
  // A failure that holds events back (the queue's disk full, the store down) goes to the log at
  // once, then again every 30 s or when its reason changes while it lasts; the first event
  // applied after it logs that it is over. Nothing else in the handler logs per event.
  void note_trouble(const std::string& message, bool counted = true);
  void note_progress();
  Expected<HandlerStats> run_once_unregistered();
  Expected<HandlerStats> run_unregistered();
  // Run `body` registered in the handler registry, with a heartbeat.
  Expected<HandlerStats> registered(const std::function<Expected<HandlerStats>()>& body);

  Queue& m_queue;
  std::string m_db_path;
  std::string m_id; // in the registry, while run() or run_once() runs
  // The embedded store's change signal: every batch that changes orders takes a ticket in its
  // transaction and ends it after. Without it (it could not be opened) no batch is applied,
  // since other processes' caches rely on it.
  std::unique_ptr<ChangeSignal> m_signal;
  std::optional<Error> m_signal_error;
  HandlerOptions m_options;
  const Clock& m_clock;
  std::atomic<bool> m_stopping{false};
  // The writer's store did not answer a batch: no message is taken until it answers a ping, so
  // that an outage costs the waiting events one attempt, not all their retries.
  std::atomic<bool> m_store_down{false};
  // Asked to drain (acmo handlers drain): stop once a worker finds nothing to take and the
  // queue holds nothing visible or delayed.
  std::atomic<bool> m_draining{false};
  bool drained();
  mutable std::mutex m_stats_mu;
  HandlerStats m_stats;
  std::vector<int64_t> m_latencies_us; // a ring of the last 1,024 batch latencies
  size_t m_latency_next = 0;
  // Invalidate after a commit, and again about a second later: a reader that read the order
  // just before the commit may put the old version in the cache just after the first
  // invalidation (cache-aside's race); the second one bounds that staleness to about a second.
  void invalidate(const std::vector<std::string>& order_ids);
  // Called every heartbeat: invalidates the ids of the beat before (so at least a second after
  // their first invalidation), or all of them with `all` when the handler stops.
  void invalidate_again(bool all = false);
  std::atomic<bool> m_in_trouble{false};
  std::mutex m_trouble_mu;
  std::string m_trouble; // the reason last logged
  std::chrono::steady_clock::time_point m_trouble_since;
  std::chrono::steady_clock::time_point m_trouble_logged;
  int64_t m_trouble_count = 0;
  int64_t m_trouble_dead = 0; // stats().dead_lettered when the trouble began
  std::mutex m_again_mu;
  std::vector<std::string> m_again; // invalidated since the last heartbeat
  std::vector<std::string> m_due;   // invalidated before the last heartbeat: due now
};

} // namespace acmo
