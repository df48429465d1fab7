// The PostgreSQL order store (docs/orders.md §10, store.backend = "postgres"): orders, their audit trail
// and the ids of the applied messages in a PostgreSQL database that acmo creates and migrates.
// The handler writes to it through OrderWriter::apply_batch: a batch of events is applied in
// one transaction together with its message ids, so a message delivered again after a crash
// (applied, but its deletion from the queue lost) is a duplicate and changes nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/store/order_store.hpp"
#include "core/util/error.hpp"

namespace acmo {

struct PgOptions {
  std::string url;                   // a libpq connection URI or key=value string (store.url)
  int pool_size = 4;                 // connections the store keeps at most (store.pool_size)
  int64_t connect_timeout_ms = 5'000; // libpq's connect_timeout (store.connect_timeout), and how
                                      // long a caller waits for a free connection of the pool
};

// Safe to use from many threads: each call takes a connection from a bounded pool, waiting up to
// connect_timeout_ms for one to be free. A connection that broke (the server restarted, or the
// backend was terminated) is dropped and a new one opened, so acmo outlives a server restart.
// A server that does not answer is Errc::unavailable.
class PgOrderStore final : public OrderStore, public OrderWriter
{
public:
  // Connect, and create or migrate the schema (in the database's current schema, the first of
  // its search_path). Several processes may open at once: migrations take an advisory lock.
  static Expected<std::unique_ptr<PgOrderStore>> open(const PgOptions& options);
  ~PgOrderStore() override;
  PgOrderStore(const PgOrderStore&) = delete;
  PgOrderStore& operator=(const PgOrderStore&) = delete;

  Expected<Order> get(std::string_view id) override;
  Expected<OrderList> list(std::string_view status, int64_t limit, int64_t offset) override;
  Expected<std::vector<OrderEventRecord>> events(std::string_view id) override;
  // The mark is a transaction id horizon: the xmin of the snapshot that read the changes.
  Expected<OrderChanges> changes_since(int64_t mark, int64_t max) override;
  // Every row at or above the mark (the oldest transaction id still running at the last call),
  // read in pages of `max` in one snapshot, so possibly more than `max`; rows of that range
  // seen before come again.
  Expected<TrailPage> trail_since(int64_t mark, int64_t max) override;

  // One transaction per batch, in four round trips however large the batch: begin; lock the
  // batch's orders and read which of its messages were applied already; decide every event in
  // memory by the shared rules (apply_event) and write every change in one statement; commit. A conflict
  // with another handler applying the same messages (after a visibility timeout) is retried,
  // and the retry sees them as duplicates.
  Expected<std::vector<ApplyOutcome>> apply_batch(const std::vector<AppliedEvent>& events,
                                                  int64_t now_ms) override;

  // The batch inside a PostgreSQL queue's transaction on this store's database (queue.url is
  // store.url): the changes commit with the deletion of their messages, so no message id is
  // recorded. Ids recorded by apply_batch (a queue moved from SQLite) are still skipped.
  Expected<void> ping() override;
  Expected<std::vector<ApplyOutcome>> apply_in(QueueTransaction& txn,
                                               const std::vector<AppliedEvent>& events,
                                               int64_t now_ms) override;

  // Connections open now (in use or idle); never more than pool_size.
  int open_connections() const;

  // The schema version this acmo writes.
  static int schema_version();

private:
  struct Impl;
  explicit PgOrderStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

} // namespace acmo
