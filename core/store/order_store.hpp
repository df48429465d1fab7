// Where orders live (docs/orders.md §10): the OrderStore port, and its embedded adapter on SQLite, in the
// same database file as the queue so that applying an event and deleting its message commit
// together (Queue::settle).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/orders/order.hpp"
#include "core/orders/order_event.hpp"
#include "core/util/error.hpp"

namespace acmo {

namespace sqlite {
class Database;
}
class QueueTransaction;

// An event as the handler applies it: the event and the message that carried it.
struct AppliedEvent {
  std::string message_id;
  int64_t seq = 0;
  OrderEvent event;
  int64_t accepted_at_ms = 0; // when its message was first sent; 0: not known (the time applied)
};

// The time an event's change is dated with (docs/orders.md §2): when it was accepted.
inline int64_t change_time(const AppliedEvent& e, int64_t applied_at_ms)
{
  return e.accepted_at_ms > 0 ? e.accepted_at_ms : applied_at_ms;
}

// One entry of an order's audit trail.
struct OrderEventRecord {
  std::string message_id;
  int64_t seq = 0;
  std::string type; // "CREATE", "UPDATE", "DELETE"
  nlohmann::json data;
  int64_t accepted_at_ms = 0; // 0: applied before acmo kept it
  int64_t applied_at_ms = 0;
};

// {"events": [{"messageId", "sequenceNumber", "type", "data", "acceptedAt", "appliedAt"}]}: an order's audit
// trail as `acmo orders events --json` and GET /api/orders/ID/events give it.
nlohmann::json order_events_json(const std::vector<OrderEventRecord>& events);

// What changed in a store since a mark (OrderStore::changes_since): the new mark, and the orders
// changed in between, or `all` when they were more than asked for.
struct OrderChanges {
  int64_t mark = 0;
  std::vector<std::string> order_ids;
  bool all = false;
};

// One row of the audit trail, as the trail feed (OrderStore::trail_since) gives it.
struct TrailEntry {
  int64_t id = 0; // the row's id: unique, for a reader to drop rows it has seen
  std::string order_id;
  OrderEventRecord event;
};

struct TrailPage {
  int64_t mark = 0;
  std::vector<TrailEntry> entries;
};

struct OrderList {
  std::vector<Order> orders;
  int64_t total = 0; // matching orders in all, beyond limit and offset
};

// Reading orders; every store answers these.
class OrderStore
{
public:
  virtual ~OrderStore() = default;
  // The order, or Errc::not_found.
  virtual Expected<Order> get(std::string_view id) = 0;
  // Orders, newest first; `status` empty for all.
  virtual Expected<OrderList> list(std::string_view status, int64_t limit, int64_t offset) = 0;
  // The order's applied events in the order they were applied (also after a DELETE).
  virtual Expected<std::vector<OrderEventRecord>> events(std::string_view id) = 0;
  // The store's change feed, for caches in other processes (docs/orders.md §11). A mark orders
  // every change committed: the orders changed by a commit after `mark` are in the answer, at
  // most `max` of them (more: `all`), and the answer's mark covers every commit it saw. An
  // order may be named again by a later call. `mark` < 0: only the current mark, with `all`.
  virtual Expected<OrderChanges> changes_since(int64_t mark, int64_t max) = 0;
  // The audit trail's feed (acmo tail): the rows committed after `mark`, in the order they
  // were applied within each commit, at most `max` of them (PostgreSQL: all of them, read `max`
  // at a time), and the mark to ask from next. A
  // row may come again in a later page (drop it by its id); none committed after `mark` is
  // missed. `mark` < 0: the current mark, with rows that may have been committed just before
  // (a reader takes them as seen). A store without a feed answers Errc::internal.
  virtual Expected<TrailPage> trail_since(int64_t mark, int64_t max);
};

// What became of one event of a batch applied by an OrderWriter.
struct ApplyOutcome {
  enum class Kind { applied, duplicate, rejected };
  Kind kind = Kind::applied;
  std::string reason; // rejected: why the event can never apply
};

// A store outside the queue's database (PostgreSQL) that the handler writes to. Exactly once
// in effect: each applied message id is recorded in the same transaction as its change.
class OrderWriter
{
public:
  virtual ~OrderWriter() = default;
  // Apply the events in order in one transaction. An event whose message id is already
  // recorded is a duplicate and changes nothing; one that can never apply (invalid, unknown
  // order, forbidden change) is rejected with its reason and the others go on. A failure of
  // the store itself (down, timeout) is Errc::unavailable and changes nothing.
  virtual Expected<std::vector<ApplyOutcome>> apply_batch(const std::vector<AppliedEvent>& events,
                                                          int64_t now_ms) = 0;
  // The same inside the queue's transaction `txn`, for a store in the queue's own database:
  // the changes commit with the deletion of the messages. Errc::internal from a store that
  // cannot (the default).
  virtual Expected<std::vector<ApplyOutcome>> apply_in(QueueTransaction& txn,
                                                       const std::vector<AppliedEvent>& events,
                                                       int64_t now_ms);
  // Whether the store answers now: Errc::unavailable, as apply_batch gives it, while it does
  // not. The handler asks before it takes more messages once apply_batch found the store down.
  virtual Expected<void> ping() { return {}; }
};

// An order's items as every store keeps them: a JSON array of {product_id, name, quantity,
// unit_price_cents}. Reading text that is not such an array gives no items.
std::string stored_items_json(const std::vector<OrderItem>& items);
std::vector<OrderItem> stored_items_from_json(std::string_view text);

class SqliteOrderStore final : public OrderStore
{
public:
  // Open the store of the database at `db_path` for reading (the schema is the queue's: open
  // the Queue first, which creates and migrates it).
  static Expected<std::unique_ptr<SqliteOrderStore>> open(const std::string& db_path);
  ~SqliteOrderStore() override;

  // Apply a batch of events on `db`, inside the caller's transaction (the queue's, in
  // Queue::consume or Queue::settle): the events in order, each applied or refused with its
  // reason, and the applied ones appended to the audit trail together, with a statement per 64
  // rows instead of one per event. Errc::invalid_input, not_found and conflict are permanent
  // failures (the event can never apply) and change nothing; SQLite errors are thrown.
  static std::vector<Expected<void>> apply_all(sqlite::Database& db,
                                               const std::vector<const AppliedEvent*>& events,
                                               int64_t now_ms);
  // The same in the queue's transaction `txn`, which must be the embedded queue's
  // (Errc::internal otherwise: the embedded store lives in the embedded queue's database).
  static Expected<std::vector<Expected<void>>>
  apply_all(QueueTransaction& txn, const std::vector<const AppliedEvent*>& events,
            int64_t now_ms);

  Expected<Order> get(std::string_view id) override;
  Expected<OrderList> list(std::string_view status, int64_t limit, int64_t offset) override;
  Expected<std::vector<OrderEventRecord>> events(std::string_view id) override;
  // The mark is the audit trail's last row id: rows are numbered in commit order.
  Expected<OrderChanges> changes_since(int64_t mark, int64_t max) override;
  Expected<TrailPage> trail_since(int64_t mark, int64_t max) override;

private:
  explicit SqliteOrderStore(std::unique_ptr<sqlite::Database> db);
  std::unique_ptr<sqlite::Database> m_db;
};

} // namespace acmo
