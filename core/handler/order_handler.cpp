#include "core/handler/order_handler.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/core.h>
#include <unistd.h>

#include "core/cache/cached_orders.hpp"
#include "core/handler/handler_registry.hpp"
#include "core/sqlite/sqlite.hpp"
#include "core/store/order_store.hpp"
#include "core/util/log.hpp"

namespace acmo {

OrderHandler::OrderHandler(Queue& queue, std::string db_path, HandlerOptions options,
                           const Clock& clock)
  : m_queue(queue), m_db_path(std::move(db_path)), m_options(options), m_clock(clock)
{
  if (m_options.writer == nullptr) {
    auto signal = ChangeSignal::open(m_db_path);
    if (signal) {
      m_signal = std::move(*signal);
    } else {
      m_signal_error = signal.error();
    }
  }
}

void OrderHandler::invalidate(const std::vector<std::string>& order_ids)
{
  if (m_options.cache == nullptr || order_ids.empty()) return;
  invalidate_orders(m_options.cache, order_ids);
  std::lock_guard lock(m_again_mu);
  if (m_again.size() < 100'000) m_again.insert(m_again.end(), order_ids.begin(), order_ids.end());
}

void OrderHandler::invalidate_again(bool all)
{
  std::vector<std::string> ids;
  {
    std::lock_guard lock(m_again_mu);
    ids.swap(m_due);
    if (all) {
      ids.insert(ids.end(), m_again.begin(), m_again.end());
      m_again.clear();
    } else {
      m_due.swap(m_again);
    }
  }
  if (ids.empty()) return;
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  invalidate_orders(m_options.cache, ids);
}

void OrderHandler::record_error(const std::string& message)
{
  std::lock_guard lock(m_stats_mu);
  m_stats.last_error = message;
}

void OrderHandler::note_trouble(const std::string& message, bool counted)
{
  using namespace std::chrono;
  std::lock_guard lock(m_trouble_mu);
  const auto now = steady_clock::now();
  const int64_t dead_now = stats().dead_lettered;
  ++m_trouble_count;
  if (!m_in_trouble.load()) {
    m_trouble_since = now;
    m_trouble_count = 1;
    m_trouble_dead = dead_now;
  } else if (message == m_trouble && now - m_trouble_logged < seconds(30)) {
    return;
  }
  // Say what becomes of the events: each failed attempt counts against their retries, and one
  // that runs out of them goes to the DLQ.
  const QueueOptions& q = m_queue.options();
  std::string delays;
  for (int64_t ms : q.retry_delays_ms) {
    delays += fmt::format("{}{}{}", delays.empty() ? "" : ", ", ms % 1000 == 0 ? ms / 1000 : ms,
                          ms % 1000 == 0 ? "s" : "ms");
  }
  const int64_t dead = dead_now - m_trouble_dead;
  const int64_t secs = duration_cast<seconds>(now - m_trouble_since).count();
  if (!counted) {
    // The queue's own database does not answer: nothing was taken, nothing is counted.
    log::warn({"handler_trouble",
               {{"reason", message}, {"failures", m_trouble_count}, {"seconds", secs}}},
              "handler: {}; the events stay in the queue, nothing counts against their "
              "retries, and the handler tries again every 100 ms: {} failure{} in {} s",
              message, m_trouble_count, m_trouble_count == 1 ? "" : "s", secs);
    m_trouble = message;
    m_trouble_logged = now;
    m_in_trouble = true;
    return;
  }
  log::warn({"handler_trouble",
             {{"reason", message},
              {"failures", m_trouble_count},
              {"seconds", secs},
              {"dead_lettered", dead}}},
            "handler: {}; the events of a failed batch go back to the queue and are retried "
            "after queue.retry_delays ({}), and an event whose queue.max_retries ({}) are spent "
            "goes to the DLQ (acmo dlq redrive puts it back): {} failure{} in {} s, {} "
            "dead-lettered so far",
            message, delays.empty() ? "none" : delays, q.max_retries, m_trouble_count,
            m_trouble_count == 1 ? "" : "s", secs, dead);
  m_trouble = message;
  m_trouble_logged = now;
  m_in_trouble = true;
}

void OrderHandler::note_progress()
{
  using namespace std::chrono;
  if (!m_in_trouble.load()) return;
  std::lock_guard lock(m_trouble_mu);
  if (!m_in_trouble.load()) return;
  log::info({"handler_recovered"}, "handler: applying events again after {} s and {} failure{} (the last: {})",
            duration_cast<seconds>(steady_clock::now() - m_trouble_since).count(),
            m_trouble_count, m_trouble_count == 1 ? "" : "s", m_trouble);
  m_in_trouble = false;
}

HandlerStats OrderHandler::stats() const
{
  std::lock_guard lock(m_stats_mu);
  HandlerStats s = m_stats;
  if (!m_latencies_us.empty()) {
    std::vector<int64_t> sorted = m_latencies_us;
    std::sort(sorted.begin(), sorted.end());
    auto at = [&](double p) {
      return sorted[static_cast<size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5)];
    };
    s.latency_p50_us = at(0.50);
    s.latency_p99_us = at(0.99);
  }
  return s;
}

Expected<HandlerStats> OrderHandler::registered(const std::function<Expected<HandlerStats>()>& body)
{
  HandlerRecord record;
  record.id = new_handler_id();
  m_id = record.id;
  log::HandlerScope scope(m_id);
  record.pid = ::getpid();
  record.host = host_name();
  record.started_at_ms = m_queue.now_ms(); // the registry is the queue's: its time
  auto beat = [&](int64_t stopped_at) {
    const HandlerStats s = stats();
    record.heartbeat_at_ms = m_queue.now_ms();
    record.stopped_at_ms = stopped_at;
    record.processed = s.processed;
    record.dead_lettered = s.dead_lettered;
    record.retried = s.retried;
    record.batches = s.batches;
    record.latency_p50_us = s.latency_p50_us;
    record.latency_p99_us = s.latency_p99_us;
    record.last_error = s.last_error;
    // The registry is for monitoring: a failed beat is noted, never fatal to the handler.
    auto request = m_queue.save_handler(record);
    if (!request) return record_error(request.error().message);
    if (stopped_at != 0) return;
    if (*request == "stop" && !m_stopping.load()) {
      log::info({"stop_requested"},
                "acmo handlers stop: stopping after the batches in hand");
      stop();
    } else if (*request == "drain" && !m_draining.exchange(true)) {
      log::info({"drain_requested"},
                "acmo handlers drain: handling what is queued, then stopping");
    }
  };
  beat(0);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread heart([&] {
    log::HandlerScope heart_scope(m_id);
    std::unique_lock lock(mu);
    while (!cv.wait_for(lock, std::chrono::milliseconds(k_heartbeat_interval_ms),
                        [&] { return done; })) {
      lock.unlock();
      beat(0);
      invalidate_again();
      lock.lock();
    }
  });
  auto result = body();
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_all();
  heart.join();
  invalidate_again(true);
  beat(m_queue.now_ms());
  return result;
}

// What applying a batch on the embedded store came to.
struct BatchTally {
  int64_t applied = 0;
  int64_t dead = 0;
  std::string last_reason;
  std::vector<std::string> changed; // order ids whose cache entries go after the commit
};

namespace {

// Apply the events in group order to the embedded store, inside the queue's transaction `txn`;
// one that can never apply goes to the DLQ with its reason, and the group goes on.
Expected<std::vector<Disposition>> apply_embedded(QueueTransaction& txn,
                                                  std::vector<Expected<AppliedEvent>>& events,
                                                  int64_t now_ms, BatchTally& tally)
{
  tally = BatchTally{};
  std::vector<Disposition> out(events.size());
  std::vector<const AppliedEvent*> parsed;
  parsed.reserve(events.size());
  for (const auto& e : events) {
    if (e) parsed.push_back(&*e);
  }
  auto all = SqliteOrderStore::apply_all(txn, parsed, now_ms);
  if (!all) return Unexpected(all.error());
  std::vector<Expected<void>>& applied = *all;
  for (size_t i = 0, next = 0; i < events.size(); ++i) {
    Expected<void> ok = events[i] ? std::move(applied[next++])
                                  : Expected<void>(Unexpected(events[i].error()));
    if (ok) {
      ++tally.applied;
      tally.changed.push_back(events[i]->event.order_id);
    } else {
      out[i] = Disposition{true, ok.error().message,
                           events[i] ? events[i]->event.order_id : std::string()};
      tally.last_reason = ok.error().message;
      ++tally.dead;
    }
  }
  return out;
}

// The events of a batch that parsed, moved out of `events` (which keeps the errors of those
// that did not), with the position each came from: events[index[k]] was valid[k].
struct ValidEvents {
  std::vector<AppliedEvent> valid;
  std::vector<size_t> index;
};
ValidEvents take_valid(std::vector<Expected<AppliedEvent>>& events)
{
  ValidEvents out;
  out.valid.reserve(events.size());
  out.index.reserve(events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    if (!events[i]) continue;
    out.valid.push_back(std::move(*events[i]));
    out.index.push_back(i);
  }
  return out;
}

// Apply the events with `writer` inside the queue's transaction `txn` (a store in the queue's
// own PostgreSQL database); as apply_embedded, one that can never apply goes to the DLQ.
Expected<std::vector<Disposition>> apply_in_writer(OrderWriter& writer, QueueTransaction& txn,
                                                   std::vector<Expected<AppliedEvent>>& events,
                                                   int64_t now_ms, BatchTally& tally)
{
  tally = BatchTally{};
  std::vector<Disposition> out(events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    if (events[i]) continue;
    out[i] = Disposition{true, events[i].error().message, {}};
    tally.last_reason = events[i].error().message;
    ++tally.dead;
  }
  auto [valid, index] = take_valid(events);
  auto outcomes = writer.apply_in(txn, valid, now_ms);
  if (!outcomes) return Unexpected(outcomes.error());
  for (size_t k = 0; k < valid.size(); ++k) {
    const ApplyOutcome& o = (*outcomes)[k];
    if (o.kind == ApplyOutcome::Kind::rejected) {
      out[index[k]] = Disposition{true, o.reason, valid[k].event.order_id};
      tally.last_reason = o.reason;
      ++tally.dead;
    } else {
      ++tally.applied;
      tally.changed.push_back(valid[k].event.order_id);
    }
  }
  return out;
}

std::vector<Expected<AppliedEvent>> parse_events(const std::vector<Message>& messages)
{
  std::vector<Expected<AppliedEvent>> events;
  events.reserve(messages.size());
  for (const auto& m : messages) {
    auto event = parse_event(m.body);
    if (event) {
      events.emplace_back(AppliedEvent{m.message_id, m.seq, std::move(*event), m.first_sent_at_ms});
    } else {
      events.emplace_back(Unexpected(event.error()));
    }
  }
  return events;
}

} // namespace

namespace {

// log.level = "debug": one line per batch settled.
void log_batch(int64_t messages, int64_t applied, int64_t dead, int64_t retried,
               std::chrono::steady_clock::time_point started)
{
  if (!log::enabled(log::Level::debug)) return;
  const double ms = static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(
                                          std::chrono::steady_clock::now() - started)
                                          .count()) /
                    1000.0;
  log::debug({"batch",
              {{"messages", messages},
               {"applied", applied},
               {"dead_lettered", dead},
               {"retried", retried},
               {"duration_ms", ms}}},
             "batch of {}: applied {}, dead-lettered {}, retried {} in {:.3f} ms", messages,
             applied, dead, retried, ms);
}

} // namespace

void OrderHandler::record_applied(const BatchTally& tally, std::chrono::steady_clock::time_point started)
{
  log_batch(tally.applied + tally.dead, tally.applied, tally.dead, 0, started);
  invalidate(tally.changed);
  note_progress();
  std::lock_guard lock(m_stats_mu);
  record_latency_locked(started);
  m_stats.processed += tally.applied;
  m_stats.dead_lettered += tally.dead;
  if (tally.dead > 0) m_stats.last_error = tally.last_reason;
}

Expected<int64_t> OrderHandler::process_batch(int64_t wait_ms)
{
  std::optional<std::string> consume_error;
  if (m_options.writer == nullptr && m_signal == nullptr) {
    record_error(m_signal_error->message);
    note_trouble(m_signal_error->message);
    return Unexpected(*m_signal_error);
  }
  if (m_options.writer == nullptr || m_options.writer_in_queue) {
    // The store in the queue's database: take the messages, apply their events and delete
    // them in one transaction. Should that fail (the disk full, a SQLite error), the batch
    // goes the way below, which puts the messages in flight and releases them with backoff.
    auto consumed = consume_batch(wait_ms);
    if (consumed) return consumed;
    if (m_options.writer_in_queue && consumed.error().code == Errc::unavailable) {
      // The queue's PostgreSQL does not answer: a receive would fail the same way, and the
      // messages were never taken.
      record_error(consumed.error().message);
      note_trouble(consumed.error().message, false);
      return Unexpected(consumed.error());
    }
    consume_error = consumed.error().message;
    wait_ms = 0;
  }
  if (m_options.writer != nullptr && m_store_down.load()) {
    // The store did not answer the last batch: take nothing until it answers.
    if (auto answers = m_options.writer->ping(); !answers) {
      record_error(answers.error().message);
      note_trouble(answers.error().message, false);
      return Unexpected(answers.error());
    }
    m_store_down = false;
  }
  auto got = m_queue.receive(m_options.batch_size, {}, wait_ms, true);
  if (!got) {
    record_error(got.error().message);
    note_trouble(got.error().message);
    return Unexpected(got.error());
  }
  if (got->empty()) {
    // Another handler took the batch meanwhile; the failure still happened.
    if (consume_error) record_error(*consume_error);
    return 0;
  }

  // The handler checks events again: other producers may have put anything on the queue.
  std::vector<Expected<AppliedEvent>> events = parse_events(*got);
  if (m_options.writer != nullptr) return apply_to_writer(*got, events);

  std::vector<std::string> receipts;
  for (const auto& m : *got) receipts.push_back(m.receipt);
  BatchTally tally;
  const auto started = std::chrono::steady_clock::now();
  int64_t ticket = 0;
  auto settled = m_queue.settle(receipts, [&](QueueTransaction& txn) {
    ticket = m_signal->begin();
    return apply_embedded(txn, events, m_clock.now_ms(), tally);
  });
  if (ticket != 0) m_signal->end(ticket);
  if (settled) {
    record_applied(tally, started);
    return static_cast<int64_t>(got->size());
  }
  if (settled.error().code != Errc::stale && settled.error().code != Errc::not_found) {
    note_trouble(settled.error().message);
  }
  std::lock_guard lock(m_stats_mu);
  record_latency_locked(started);
  m_stats.last_error = settled.error().message;
  if (settled.error().code == Errc::stale || settled.error().code == Errc::not_found) {
    // Another handler has these messages now (our visibility ran out): nothing to undo.
    return static_cast<int64_t>(got->size());
  }
  // A transient failure (the database busy or the disk full): retry with backoff.
  for (size_t j = 0; j < receipts.size(); ++j) {
    auto released = m_queue.release(receipts[j], settled.error().message,
                                    events[j] ? std::string_view(events[j]->event.order_id)
                                              : std::string_view());
    if (released && released->dead_lettered) {
      ++m_stats.dead_lettered;
    } else if (released) {
      ++m_stats.retried;
    }
  }
  return static_cast<int64_t>(got->size());
}

Expected<int64_t> OrderHandler::consume_batch(int64_t wait_ms)
{
  BatchTally tally;
  auto started = std::chrono::steady_clock::now();
  int64_t ticket = 0;
  auto got = m_queue.consume(
    m_options.batch_size, wait_ms,
    [&](QueueTransaction& txn, const std::vector<Message>& messages) {
      started = std::chrono::steady_clock::now(); // the batch's latency, not the wait before it
      std::vector<Expected<AppliedEvent>> events = parse_events(messages);
      if (m_options.writer_in_queue) {
        return apply_in_writer(*m_options.writer, txn, events, m_clock.now_ms(), tally);
      }
      ticket = m_signal->begin();
      return apply_embedded(txn, events, m_clock.now_ms(), tally);
    });
  if (ticket != 0) m_signal->end(ticket);
  if (!got) return Unexpected(got.error());
  if (!got->empty()) record_applied(tally, started);
  return static_cast<int64_t>(got->size());
}

void OrderHandler::record_latency_locked(std::chrono::steady_clock::time_point started)
{
  const auto latency_us = std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::steady_clock::now() - started)
                            .count();
  ++m_stats.batches;
  // A bucket and a sum under the lock already held: no cost worth a lock-free scheme.
  const auto bucket = std::lower_bound(k_batch_bounds_us.begin(), k_batch_bounds_us.end(), latency_us);
  ++m_stats.batch_buckets[static_cast<size_t>(bucket - k_batch_bounds_us.begin())];
  m_stats.batch_sum_us += latency_us;
  if (m_latencies_us.size() < 1024) {
    m_latencies_us.push_back(latency_us);
  } else {
    m_latencies_us[m_latency_next++ % 1024] = latency_us;
  }
}

int64_t OrderHandler::apply_to_writer(const std::vector<Message>& messages,
                                      std::vector<Expected<AppliedEvent>>& events)
{
  const auto started = std::chrono::steady_clock::now();
  // Events that failed to parse never reach the store: they go to the DLQ with their reason.
  std::vector<std::pair<size_t, std::string>> rejected;
  std::vector<std::string> rejected_order(messages.size()); // the order ids of valid events
  for (size_t i = 0; i < events.size(); ++i) {
    if (!events[i]) rejected.emplace_back(i, events[i].error().message);
  }
  auto [valid, index] = take_valid(events); // valid[k] came in messages[index[k]]
  Expected<std::vector<ApplyOutcome>> outcomes = std::vector<ApplyOutcome>{};
  if (!valid.empty()) outcomes = m_options.writer->apply_batch(valid, m_clock.now_ms());

  int64_t applied = 0;
  int64_t dead = 0;
  int64_t retried = 0;
  std::string last_error;
  if (outcomes) {
    // Committed: delete what was applied (or had been, by a run that died before deleting it),
    // dead-letter what never can be, then drop the changed orders from the cache.
    std::vector<std::string> done;
    std::vector<std::string> changed;
    for (size_t k = 0; k < valid.size(); ++k) {
      const ApplyOutcome& o = (*outcomes)[k];
      if (o.kind == ApplyOutcome::Kind::rejected) {
        rejected.emplace_back(index[k], o.reason);
        rejected_order[index[k]] = valid[k].event.order_id;
      } else {
        done.push_back(messages[index[k]].receipt);
        changed.push_back(valid[k].event.order_id);
        ++applied;
      }
    }
    // A deletion that fails (our visibility ran out and another handler has the message) is
    // harmless: the other handler finds it applied and deletes it.
    for (const auto& removed : m_queue.remove_batch(done)) {
      if (!removed) last_error = removed.error().message;
    }
    invalidate(changed);
    note_progress();
  } else {
    note_trouble(outcomes.error().message);
    // The store is down or timed out and nothing was applied: every message goes back, to be
    // retried after queue.retry_delays, or dead-lettered once queue.max_retries are spent.
    // Down, the handler takes no more until the store answers again.
    if (outcomes.error().code == Errc::unavailable) m_store_down = true;
    last_error = outcomes.error().message;
    for (size_t k = 0; k < index.size(); ++k) {
      auto released =
        m_queue.release(messages[index[k]].receipt, last_error, valid[k].event.order_id);
      if (released && released->dead_lettered) {
        ++dead;
      } else if (released) {
        ++retried;
      }
    }
  }
  for (const auto& [i, reason] : rejected) {
    if (auto ok = m_queue.dead_letter(messages[i].receipt, reason, rejected_order[i]); ok) ++dead;
    if (outcomes) last_error = reason;
  }

  log_batch(static_cast<int64_t>(messages.size()), applied, dead, retried, started);
  std::lock_guard lock(m_stats_mu);
  record_latency_locked(started);
  m_stats.processed += applied;
  m_stats.dead_lettered += dead;
  m_stats.retried += retried;
  if (!last_error.empty()) m_stats.last_error = last_error;
  return static_cast<int64_t>(messages.size());
}

Expected<HandlerStats> OrderHandler::run_once()
{
  return registered([this] { return run_once_unregistered(); });
}

Expected<HandlerStats> OrderHandler::run_once_unregistered()
{
  std::optional<Error> failure;
  std::mutex failure_mu;
  auto worker = [&] {
    log::HandlerScope scope(m_id);
    while (!m_stopping.load()) {
      // No wait: a worker that finds nothing visible is done. What another worker still holds
      // (in flight, or in its transaction) and what follows it in its groups, that worker takes
      // next; the run ends when the last worker finds nothing, and does not idle before it.
      auto n = process_batch(0);
      if (!n) {
        std::lock_guard lock(failure_mu);
        failure = n.error();
        return;
      }
      if (*n == 0) return;
    }
  };
  std::vector<std::thread> threads;
  for (int i = 1; i < m_options.concurrency; ++i) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (failure) return Unexpected(*failure);
  return stats();
}

Expected<HandlerStats> OrderHandler::run()
{
  return registered([this] { return run_unregistered(); });
}

Expected<HandlerStats> OrderHandler::run_unregistered()
{
  auto worker = [&] {
    log::HandlerScope scope(m_id);
    while (!m_stopping.load()) {
      auto n = process_batch(m_options.wait_ms);
      if (n && *n == 0 && m_draining.load() && drained()) {
        log::info({"drained"}, "drained: nothing is left to handle; stopping");
        stop();
      }
      if (!n && !m_stopping.load()) {
        // Keep going: the failure is counted, and a dependency may come back.
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
  };
  std::vector<std::thread> threads;
  for (int i = 1; i < m_options.concurrency; ++i) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  return stats();
}

bool OrderHandler::drained()
{
  // Nothing visible and nothing waiting out a retry delay; what is in flight is another
  // handler's (ours would be in a worker's hands, and that worker loops again after it).
  auto s = m_queue.stats();
  return s && s->visible == 0 && s->delayed == 0;
}

void OrderHandler::stop()
{
  m_stopping = true;
  m_queue.interrupt(); // wake the workers waiting in a long poll
}

} // namespace acmo
